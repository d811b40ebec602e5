//! Policy as code: `passgate policy test` runs test cases through the gateway's own decision code
//! (no network), like `opa test` for OPA users; `passgate policy replay` re-decides the recorded
//! requests of an audit file set under a candidate config. They must never reach Graph or Entra
//! or write an audit file, and they decide only with the code the gateway runs.
//!
//! [`cases`] (the case file) · [`run`] (one case through screen, decision, limits, approval) ·
//! [`replay`] (one record again) · [`replay_report`] (counts and examples).

pub mod cases;
pub mod replay;
pub mod replay_report;
pub mod run;

use cases::{Case, CaseFile};
use std::path::PathBuf;
use std::process::ExitCode;

/// Output formats of `policy test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TestFormat {
    /// A line per case and a summary.
    #[default]
    Text,
    /// JUnit XML, for CI systems.
    Junit,
}

#[derive(clap::Subcommand, Debug)]
pub enum PolicyCommand {
    /// Run policy test cases against a config: a line per case, `N passed, M failed`; exit 1 on
    /// any failure.
    Test {
        /// The config whose policies are tested.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Case files (YAML, `cases:`); see docs/policy-as-code.md.
        #[arg(required = true, value_name = "CASES.yaml")]
        cases: Vec<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        format: TestFormat,
    },
    /// Re-decide every recorded decision of an audit file set under a candidate config and show
    /// what would change; exit 1 when an allow would become a deny or the other way round
    /// (unless --allow-changes), 2 when the config or an audit line cannot be read.
    Replay {
        /// The candidate config.
        #[arg(long, value_name = "CANDIDATE")]
        config: PathBuf,
        /// Audit files: the current file and any rotated ones, in any order (`audit.jsonl*`).
        #[arg(required = true, value_name = "AUDIT_FILE")]
        audit: Vec<PathBuf>,
        /// Exit 0 even when decisions would flip (the change is intended).
        #[arg(long)]
        allow_changes: bool,
        #[arg(long, value_enum, default_value_t)]
        format: ReplayFormat,
        /// Examples shown per change kind.
        #[arg(long, value_name = "N", default_value_t = 10)]
        examples: usize,
    },
}

/// Output formats of `policy replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ReplayFormat {
    /// Counts, reasons and examples for reading.
    #[default]
    Text,
    /// One JSON object with the same counts and examples.
    Json,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Read(#[from] crate::audit::SearchError),
    #[error("{}:{line}: {why}", file.display())]
    Line {
        file: PathBuf,
        line: u64,
        why: String,
    },
    /// The replay stopped taking records (it failed); the reader stops too.
    #[error("replay stopped")]
    Stopped,
}

/// A decision record read for the replay: line version, time, the record.
struct ReadDecision {
    version: u64,
    time: String,
    at: chrono::DateTime<chrono::Utc>,
    record: Box<crate::audit::DecisionRecord>,
}

/// Reads one audit line strictly: a JSON object of a readable version with a kind; `Some` for a
/// decision record.
fn read_line(
    file: &std::path::Path,
    line: u64,
    bytes: &[u8],
) -> Result<Option<ReadDecision>, ReplayError> {
    let bad = |why: String| ReplayError::Line {
        file: file.to_path_buf(),
        line,
        why,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a JSON record: {e}")))?;
    let version = value["v"].as_u64().unwrap_or(0);
    if !crate::audit::readable_version(version) {
        return Err(bad(format!("unsupported record version v={}", value["v"])));
    }
    match value["kind"].as_str() {
        Some("decision") => {}
        Some(_) => return Ok(None),
        None => return Err(bad("no kind".into())),
    }
    let time = value["time"].as_str().unwrap_or("").to_string();
    let at = chrono::DateTime::parse_from_rfc3339(&time)
        .map_err(|_| bad("time is not RFC 3339".into()))?
        .with_timezone(&chrono::Utc);
    let record =
        serde_json::from_value(value).map_err(|e| bad(format!("not a decision record: {e}")))?;
    Ok(Some(ReadDecision {
        version,
        time,
        at,
        record: Box::new(record),
    }))
}

/// Replays the audit set under `settings`. The files are read on a blocking thread and handed
/// over in order through a bounded channel, so a long history is never held in memory.
pub async fn replay_files(
    settings: &crate::config::Settings,
    audit: &[PathBuf],
    examples: usize,
) -> Result<replay_report::Summary, ReplayError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Option<ReadDecision>>(256);
    let paths = audit.to_vec();
    let reader = tokio::task::spawn_blocking(move || {
        crate::audit::search::read_set(&paths, |file, line, bytes| -> Result<(), ReplayError> {
            let read = read_line(file, line, bytes)?;
            tx.blocking_send(read).map_err(|_| ReplayError::Stopped)
        })
    });
    let mut replayer = replay::Replayer::new(settings);
    let mut summary = replay_report::Summary::new(examples);
    while let Some(item) = rx.recv().await {
        summary.lines += 1;
        if let Some(d) = item {
            let replayed = replayer.replay(d.version, d.at, &d.record).await;
            summary.add(&d.time, &d.record, replayed);
        }
    }
    match reader.await {
        Ok(result) => result?,
        Err(e) => {
            return Err(ReplayError::Line {
                file: PathBuf::from("-"),
                line: 0,
                why: format!("the reader failed: {e}"),
            })
        }
    }
    Ok(summary)
}

async fn replay_cmd(
    config: PathBuf,
    audit: Vec<PathBuf>,
    allow_changes: bool,
    format: ReplayFormat,
    examples: usize,
) -> ExitCode {
    let settings = match crate::config::load_file(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let summary = match replay_files(&settings, &audit, examples).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("passgate policy replay: {e}");
            return ExitCode::from(2);
        }
    };
    let name = config.display().to_string();
    match format {
        ReplayFormat::Text => print!("{}", summary.text(&name)),
        ReplayFormat::Json => println!("{}", summary.json(&name)),
    }
    if summary.flips() > 0 && !allow_changes {
        if format == ReplayFormat::Text {
            println!("decisions would flip: exit 1 (pass --allow-changes if that is the intent)");
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// One case's result.
struct Ran {
    file: String,
    name: String,
    /// `None`: passed; `Some(why)`: failed (or could not run).
    failure: Option<String>,
}

fn load_cases(path: &PathBuf) -> Result<Vec<Case>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file: CaseFile =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(file.cases)
}

pub async fn run(cmd: PolicyCommand) -> ExitCode {
    match cmd {
        PolicyCommand::Test {
            config,
            cases,
            format,
        } => test_cmd(config, cases, format).await,
        PolicyCommand::Replay {
            config,
            audit,
            allow_changes,
            format,
            examples,
        } => replay_cmd(config, audit, allow_changes, format, examples).await,
    }
}

async fn test_cmd(config: PathBuf, cases: Vec<PathBuf>, format: TestFormat) -> ExitCode {
    let settings = match crate::config::load_file(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut results = Vec::new();
    for path in &cases {
        let list = match load_cases(path) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("passgate policy test: {e}");
                return ExitCode::from(2);
            }
        };
        for case in list {
            let failure = match run::decide(&settings, &case).await {
                Ok(got) if run::matches(&case, &got) => None,
                Ok(got) => Some(format!(
                    "expected {}{}{}, got {got}",
                    case.expect.decision.as_str(),
                    case.expect
                        .reason
                        .as_deref()
                        .map(|r| format!(" {r}"))
                        .unwrap_or_default(),
                    case.expect
                        .policy
                        .as_deref()
                        .map(|p| format!(" (policy {p})"))
                        .unwrap_or_default(),
                )),
                Err(e) => Some(format!("cannot run: {e}")),
            };
            results.push(Ran {
                file: path.display().to_string(),
                name: case.name.clone(),
                failure,
            });
        }
    }
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    match format {
        TestFormat::Text => print!("{}", text_report(&results)),
        TestFormat::Junit => print!("{}", junit_report(&results)),
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn text_report(results: &[Ran]) -> String {
    let mut out = String::new();
    for r in results {
        match &r.failure {
            None => out.push_str(&format!("ok    {}\n", r.name)),
            Some(why) => out.push_str(&format!("FAIL  {}: {why}\n", r.name)),
        }
    }
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    out.push_str(&format!(
        "{} passed, {failed} failed\n",
        results.len() - failed
    ));
    out
}

fn xml(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c if c.is_control() && c != '\n' && c != '\t' => "?".to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn junit_report(results: &[Ran]) -> String {
    let failed = results.iter().filter(|r| r.failure.is_some()).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites tests=\"{}\" failures=\"{failed}\">\n  <testsuite name=\"passgate policy test\" tests=\"{}\" failures=\"{failed}\">\n",
        results.len(),
        results.len()
    ));
    for r in results {
        out.push_str(&format!(
            "    <testcase classname=\"{}\" name=\"{}\"",
            xml(&r.file),
            xml(&r.name)
        ));
        match &r.failure {
            None => out.push_str("/>\n"),
            Some(why) => out.push_str(&format!(
                ">\n      <failure message=\"{}\"/>\n    </testcase>\n",
                xml(why)
            )),
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junit_escapes_and_counts() {
        let r = vec![
            Ran {
                file: "a.yaml".into(),
                name: "ok <one>".into(),
                failure: None,
            },
            Ran {
                file: "a.yaml".into(),
                name: "bad & \"two\"".into(),
                failure: Some("expected allow, got deny x".into()),
            },
        ];
        let x = junit_report(&r);
        assert!(x.contains("tests=\"2\" failures=\"1\""));
        assert!(x.contains("name=\"ok &lt;one&gt;\"/>"));
        assert!(x.contains("name=\"bad &amp; &quot;two&quot;\""));
        assert!(x.contains("<failure message=\"expected allow, got deny x\"/>"));
        assert_eq!(text_report(&r).lines().last(), Some("1 passed, 1 failed"));
    }
}
