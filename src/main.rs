//! passgate command line: `serve`, `check`, `dev`, `audit verify`.
//! Errors go to stderr in one actionable sentence and exit non-zero; secrets are never printed.

use clap::{Parser, Subcommand};
use passgate::{config, dev, policy::RateLimiter, server};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "passgate",
    version,
    about = "Authorizing reverse proxy for Microsoft Graph's privileged recoverPasscode action"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with a config file.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file and print what it allows. Exit 1 on any error.
    Check {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Start the embedded sandbox (Entra + Graph emulator) with the gateway in front of it.
    Dev {
        /// Write URLs, operator tokens and device ids as JSON to this file.
        #[arg(long, value_name = "FILE")]
        state_file: Option<PathBuf>,
        /// Gateway listen address (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Audit log file (default: a fresh file in a temporary directory).
        #[arg(long, value_name = "FILE")]
        audit_log: Option<PathBuf>,
    },
    /// Audit trail tools.
    Audit {
        #[command(subcommand)]
        command: passgate::audit::cli::AuditCommand,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PASSGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("passgate=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Serve { config } => {
            init_tracing();
            serve(&config).await
        }
        Command::Dev {
            state_file,
            listen,
            audit_log,
        } => {
            init_tracing();
            run_dev(state_file, listen, audit_log).await
        }
        Command::Audit { command } => passgate::audit::cli::run(command),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load_file(path) {
        Ok(settings) => {
            print!("{}", config::summary(&settings));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn serve(path: &std::path::Path) -> ExitCode {
    let settings = match config::load_file(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        let gateway = server::build_gateway(&settings, Arc::new(RateLimiter::new())).await?;
        let opts = server::ServeOptions::from_settings(&settings)?;
        let listener = server::bind(&settings.listen).await?;
        tracing::info!(listen = %settings.listen, tls = opts.tls.is_some(), "passgate serving");
        let gateway = Arc::new(gateway);
        server::serve(gateway.clone(), listener, opts, shutdown_signal()).await;
        gateway.audit.close();
        Ok::<(), server::StartError>(())
    };
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("passgate: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_dev(
    state_file: Option<PathBuf>,
    listen: String,
    audit_log: Option<PathBuf>,
) -> ExitCode {
    let env = match dev::start(dev::DevOptions {
        listen,
        audit_log,
        config_text: None,
    })
    .await
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("passgate dev: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state = dev::state_json(&env);
    // Tokens go to files next to the audit log, so the banner never prints a credential.
    let token_dir = env
        .audit_log
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_else(std::env::temp_dir);
    for name in ["alice", "bob"] {
        if let Some(tok) = state["operators"][name]["token"].as_str() {
            let _ = std::fs::write(token_dir.join(format!("{name}.token")), tok);
        }
    }
    if let Some(path) = &state_file {
        let text = serde_json::to_string_pretty(&state).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!(
                "passgate dev: cannot write state file {}: {e}",
                path.display()
            );
            return ExitCode::FAILURE;
        }
    }
    println!("{}", dev::banner(&env, &token_dir, state_file.as_deref()));
    shutdown_signal().await;
    env.stop().await;
    ExitCode::SUCCESS
}
