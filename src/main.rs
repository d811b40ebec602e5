//! passgate command line: `serve`, `check`, `dev`, `audit verify`.
//! Errors go to stderr in one actionable sentence and exit non-zero; secrets are never printed.

use clap::{Parser, Subcommand};
use passgate::{config, dev, policy::RateLimiter, server, telemetry::Metrics};
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
        /// Admin listen address for /metrics, /healthz, /readyz (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: String,
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
            admin_listen,
        } => {
            init_tracing();
            run_dev(state_file, listen, audit_log, admin_listen).await
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
        let metrics = Metrics::new();
        let gateway = Arc::new(
            server::build_gateway(&settings, Arc::new(RateLimiter::new()), metrics).await?,
        );
        let tls = match &settings.tls {
            Some(t) => Some(server::tls_acceptor(&t.cert_file, &t.key_file)?),
            None => None,
        };
        let listener = server::bind(&settings.listen).await?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        if let Some(admin_addr) = &settings.admin_listen {
            let admin = server::bind(admin_addr).await?;
            let mut rx = stop_rx.clone();
            tokio::spawn(passgate::admin::serve(gateway.clone(), admin, async move {
                let _ = rx.wait_for(|s| *s).await;
            }));
            tracing::info!(admin = %admin_addr, "admin endpoints serving");
        }
        tracing::info!(listen = %settings.listen, tls = tls.is_some(), "passgate serving");
        server::serve(gateway.clone(), listener, tls, shutdown_signal()).await;
        let _ = stop_tx.send(true);
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
    admin_listen: String,
) -> ExitCode {
    let env = match dev::start(dev::DevOptions {
        listen,
        audit_log,
        config_text: None,
        admin_listen: Some(admin_listen),
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
