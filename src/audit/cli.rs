//! `passgate audit …` subcommands for security teams: read-only tools over audit files.
//! They never modify an audit file and never print an HMAC key.
//!
//! Exit codes: 0 success; 1 the chain does not verify; 2 nothing could be checked (unreadable
//! file, bad `--hmac-key` reference, keyed records without a key, bad arguments).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Deserialize;

use super::search::{self, Format, SearchFilter};
use super::verify::{verify_set, BreakKind, SetError, VerifyOptions};
use super::Decision;
use crate::config::SecretRef;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain of an audit file or a whole rotation set (files in any order, e.g.
    /// `audit.jsonl*`); report the first break with file and line, exit 1 if any.
    Verify(VerifyArgs),
    /// Find decisions by operator, device, decision, reason, justification, break-glass or time,
    /// joined with their outcomes.
    Search(SearchArgs),
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Audit files: the current file and any rotated ones, in any order.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Key of a keyed chain (the `audit.hmac_key` the writer used): `env:NAME` or `file:PATH`.
    #[arg(long, value_name = "env:NAME|file:PATH")]
    pub hmac_key: Option<String>,
    /// Accept a set that does not start at the chain's first record (only the newest files);
    /// the starting seq and prev are printed to be matched against an external anchor.
    #[arg(long)]
    pub allow_partial: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecisionArg {
    Allow,
    Deny,
}

#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Audit files: the current file and any rotated ones, in any order.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Operator object id (oid) or UPN, case-insensitive.
    #[arg(long, value_name = "OID|UPN")]
    pub operator: Option<String>,
    /// Intune managed device id.
    #[arg(long, value_name = "ID")]
    pub device: Option<String>,
    #[arg(long, value_enum)]
    pub decision: Option<DecisionArg>,
    /// Reason code, e.g. allowed, no_policy, rate_limited.
    #[arg(long, value_name = "CODE")]
    pub reason: Option<String>,
    /// From this time on (inclusive): RFC 3339 or YYYY-MM-DD (UTC midnight).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Before this time (exclusive): RFC 3339, or YYYY-MM-DD meaning the end of that day.
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// The operator's Passgate-Justification, exactly (case-insensitive), e.g. a ticket number.
    #[arg(long, value_name = "TEXT")]
    pub justification: Option<String>,
    /// Only decisions under break-glass policies (uses and refusals).
    #[arg(long)]
    pub break_glass: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

const EXIT_BROKEN: u8 = 1;
const EXIT_UNCHECKED: u8 = 2;

pub fn run(cmd: AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Verify(args) => verify(args),
        AuditCommand::Search(args) => search_cmd(args),
    }
}

/// Parses `env:NAME` / `file:PATH` exactly as the config does; the message never echoes the
/// value, which may be a pasted key.
fn parse_secret_ref(s: &str) -> Result<SecretRef, String> {
    SecretRef::deserialize(serde_json::Value::String(s.to_owned())).map_err(|e| e.to_string())
}

fn verify(args: VerifyArgs) -> ExitCode {
    let hmac_key = match args.hmac_key.as_deref().map(parse_secret_ref) {
        None => None,
        Some(Err(e)) => {
            eprintln!("passgate audit verify: --hmac-key: {e}");
            return ExitCode::from(EXIT_UNCHECKED);
        }
        Some(Ok(r)) => match r.resolve() {
            Ok(secret) => Some(secret.expose().as_bytes().to_vec()),
            Err(e) => {
                eprintln!("passgate audit verify: --hmac-key: {e}");
                return ExitCode::from(EXIT_UNCHECKED);
            }
        },
    };
    let keyed = hmac_key.is_some();
    let opts = VerifyOptions {
        hmac_key,
        allow_partial: args.allow_partial,
    };
    match verify_set(&args.files, &opts) {
        Ok(s) => {
            let alg = if keyed {
                format!("hmac-sha256 ({} keyed records)", s.keyed_records)
            } else {
                "sha256".to_owned()
            };
            let start = if s.records == 0 {
                "empty".to_owned()
            } else if s.partial {
                format!(
                    "PARTIAL: starts at seq {} with prev {} (match it against your anchor)",
                    s.first_seq, s.first_prev
                )
            } else {
                "from genesis".to_owned()
            };
            println!(
                "OK: {} records in {} file(s), seq {}..{}, {start}, {alg}, last hash {}",
                s.records,
                s.files.len(),
                s.first_seq,
                s.last_seq,
                s.last_hash
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("FAILED: {e}");
            match &e {
                SetError::Break { brk, .. } => match brk.kind {
                    BreakKind::BadStart if !args.allow_partial => {
                        eprintln!("  hint: if these are only the newest files of a rotation set, add --allow-partial and match the printed start against your anchor");
                        ExitCode::from(EXIT_BROKEN)
                    }
                    BreakKind::KeyRequired => {
                        eprintln!("  hint: the log is keyed; add --hmac-key env:NAME or --hmac-key file:PATH with the writer's audit.hmac_key");
                        ExitCode::from(EXIT_UNCHECKED)
                    }
                    _ => ExitCode::from(EXIT_BROKEN),
                },
                SetError::Io { .. } | SetError::NoFiles => ExitCode::from(EXIT_UNCHECKED),
            }
        }
    }
}

fn search_cmd(args: SearchArgs) -> ExitCode {
    let bound = |v: &Option<String>, until: bool| {
        v.as_deref()
            .map(|t| search::parse_time_bound(t, until))
            .transpose()
    };
    let (since, until) = match (bound(&args.since, false), bound(&args.until, true)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("passgate audit search: {e}");
            return ExitCode::from(EXIT_UNCHECKED);
        }
    };
    let filter = SearchFilter {
        operator: args.operator,
        device: args.device,
        decision: args.decision.map(|d| match d {
            DecisionArg::Allow => Decision::Allow,
            DecisionArg::Deny => Decision::Deny,
        }),
        reason: args.reason,
        since,
        until,
        justification: args.justification,
        break_glass: args.break_glass,
    };
    let result = match search::search(&args.files, &filter) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("passgate audit search: {e}");
            return ExitCode::from(EXIT_UNCHECKED);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if let Err(e) = search::render(&result, args.format, &mut out).and_then(|()| out.flush()) {
        // A closed pipe (`| head`) is not an error worth a message.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("passgate audit search: cannot write output: {e}");
            return ExitCode::from(EXIT_UNCHECKED);
        }
    }
    if result.unreadable_lines > 0 {
        eprintln!(
            "warning: {} line(s) could not be read as records and were skipped; run `passgate audit verify` on these files",
            result.unreadable_lines
        );
    }
    ExitCode::SUCCESS
}
