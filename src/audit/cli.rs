//! `passgate audit …` subcommands for security teams: read-only tools over audit files.
//! They never modify an audit file.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain of an audit file; report the first break and exit 1 if any.
    Verify {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

pub fn run(cmd: AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Verify { file } => match super::verify_file(&file) {
            Ok(s) => {
                println!(
                    "{}: chain intact: {} records (seq {}..{}), last hash {}",
                    file.display(),
                    s.records,
                    s.first_seq,
                    s.last_seq,
                    s.last_hash
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::FAILURE
            }
        },
    }
}
