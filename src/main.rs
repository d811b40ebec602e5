//! passgate command line: `serve`, `check`, `dev`, `audit verify`.
//! Errors go to stderr in one actionable sentence and exit non-zero; secrets are never printed.

use clap::{Parser, Subcommand};
use passgate::runtime::{self, Live, Reloader, Shared};
use passgate::{config, dev, server};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// jemalloc instead of glibc's malloc (the default `jemalloc` feature, Linux glibc targets).
#[cfg(all(feature = "jemalloc", target_os = "linux", not(target_env = "musl")))]
mod allocator {
    /// Allocation is a fifth of passgate's CPU per request under glibc (`malloc`/`free`/
    /// `malloc_consolidate` in the profile); with jemalloc the bench spends 20–30 % less CPU per
    /// request. See docs/performance.md.
    #[global_allocator]
    static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// jemalloc's own `malloc_conf` (prefixed `_rjem_` by tikv-jemalloc-sys): give freed pages
    /// back to the kernel after a second instead of ten, so a burst of connections does not leave
    /// the process holding its peak (measured: peak RSS at 1,000 connections back to glibc's
    /// level, most of the CPU gain kept). `_RJEM_MALLOC_CONF` in the environment still overrides it.
    #[export_name = "_rjem_malloc_conf"]
    static JEMALLOC_CONF: JemallocConf =
        JemallocConf(c"dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

    /// A C string pointer jemalloc reads at start-up (`const char *malloc_conf`).
    #[repr(transparent)]
    struct JemallocConf(*const std::ffi::c_char);

    // SAFETY: the pointer is to an immutable, NUL-terminated static byte string; nothing writes
    // it, and jemalloc only reads it.
    unsafe impl Sync for JemallocConf {}
}

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
        /// Also fail (exit 1) on any WARNING, for CI pipelines.
        #[arg(long)]
        strict: bool,
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
        /// Web console listen address (port 0 picks a free one).
        #[arg(long, default_value = "127.0.0.1:8081")]
        console_listen: String,
    },
    /// Two-person approvals: list, show, approve or deny requests through a gateway.
    Approvals {
        #[command(subcommand)]
        command: passgate::approval::cli::ApprovalsCommand,
    },
    /// Policy as code: test cases run through the gateway's own decision (no network).
    Policy {
        #[command(subcommand)]
        command: passgate::policy_tools::PolicyCommand,
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
        // Colour codes only for a terminal: log collectors and tests read plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, strict } => check(&config, strict),
        Command::Serve { config } => {
            init_tracing();
            serve(&config).await
        }
        Command::Dev {
            state_file,
            listen,
            audit_log,
            admin_listen,
            console_listen,
        } => {
            init_tracing();
            run_dev(state_file, listen, audit_log, admin_listen, console_listen).await
        }
        Command::Audit { command } => passgate::audit::cli::run(command),
        Command::Approvals { command } => passgate::approval::cli::run(command).await,
        Command::Policy { command } => passgate::policy_tools::run(command).await,
    }
}

fn check(path: &std::path::Path, strict: bool) -> ExitCode {
    match config::load_file(path) {
        Ok(settings) => {
            print!("{}", config::summary(&settings));
            let warnings = config::warnings(&settings).len();
            if strict && warnings > 0 {
                eprintln!("passgate check --strict: {warnings} warning(s); failing");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// What a process signal asks for.
enum Signal {
    Reload,
    Stop,
}

/// SIGHUP reloads; SIGTERM and SIGINT stop (a second one forces the exit).
struct Signals {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Signals {
                hup: signal(SignalKind::hangup()).ok(),
                term: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            let hup = async {
                match self.hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = hup => Signal::Reload,
                _ = Self::stop(self.term.as_mut()) => Signal::Stop,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }

    async fn next_stop(&mut self) {
        #[cfg(unix)]
        Self::stop(self.term.as_mut()).await;
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }

    #[cfg(unix)]
    async fn stop(term: Option<&mut tokio::signal::unix::Signal>) {
        let term = async {
            match term {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = term => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
}

async fn shutdown_signal() {
    Signals::new().next_stop().await;
}

async fn serve(path: &std::path::Path) -> ExitCode {
    let settings = match config::load_file(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Registered before anything else so an early SIGTERM/SIGHUP is never the default action.
    let mut signals = Signals::new();
    for w in config::warnings(&settings) {
        tracing::warn!(key = %w.key, "config warning: {}", w.reason);
    }
    let run = async {
        let shared = Shared::open(&settings).await?;
        let live = Live::new(runtime::build_gateway(&settings, &shared).await?);
        let opts = server::ServeOptions::from_settings(&settings)?;
        let tls = opts.tls.is_some();
        let listener = server::bind(&settings.listen).await?;
        let bound = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| settings.listen.clone());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Some(admin_addr) = &settings.admin_listen {
            let admin = server::bind(admin_addr).await?;
            let admin_bound = admin
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| admin_addr.clone());
            tokio::spawn(passgate::admin::serve(
                live.clone(),
                admin,
                opts.clone(),
                stopped(stop_rx.clone()),
            ));
            tracing::info!(admin = %admin_bound, "admin endpoints serving");
        }
        if let Some(c) = &settings.console {
            let console = server::bind(&c.listen).await?;
            let console_opts = passgate::console::serve_options(&opts, &settings)?;
            let bound = console
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| c.listen.clone());
            tokio::spawn(passgate::console::serve(
                live.clone(),
                console,
                console_opts,
                stopped(stop_rx.clone()),
            ));
            tracing::info!(console = %bound, url = %c.public_origin, "web console serving");
        }
        let reloader = Reloader::new(
            path.to_path_buf(),
            live.clone(),
            shared.clone(),
            settings,
            opts.clone(),
        );
        // Always running: it reads `config_watch_seconds` as in force, and idles while it is 0.
        tokio::spawn(reloader.clone().watch());
        let mut serving = tokio::spawn(server::serve(
            live.clone(),
            listener,
            opts,
            stopped(stop_rx),
        ));
        tracing::info!(listen = %bound, tls, pid = std::process::id(), "passgate serving");

        while let Signal::Reload = signals.next().await {
            let _ = reloader.reload().await;
        }
        // Stop accepting; let in-flight requests finish up to the deadline (as last reloaded).
        let drain = Duration::from_secs(reloader.settings().raw.server.drain_timeout_seconds);
        tracing::info!(deadline = ?drain, "shutting down: draining in-flight requests");
        let _ = stop_tx.send(true);
        let forced = tokio::select! {
            _ = &mut serving => false,
            _ = tokio::time::sleep(drain) => {
                tracing::warn!("drain deadline passed; abandoning the remaining requests");
                true
            }
            _ = signals.next_stop() => {
                tracing::warn!("second signal: exiting now");
                true
            }
        };
        // Summaries of throttled refusals still counting go into the chain first.
        if forced {
            let _ = tokio::time::timeout(Duration::from_secs(2), shared.flush_summaries()).await;
        } else {
            shared.flush_summaries().await;
        }
        // Flush and close the audit log. Its writer finishes the batch in progress and the queue,
        // so no record is torn; bounded so a hung disk cannot hold the exit forever.
        let audit = shared.audit.clone();
        let closing = tokio::task::spawn_blocking(move || audit.close());
        let bound = if forced {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(30)
        };
        if tokio::time::timeout(bound, closing).await.is_err() {
            tracing::error!("audit log did not close in time");
        }
        Ok::<(), runtime::StartError>(())
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
    console_listen: String,
) -> ExitCode {
    let env = match dev::start(dev::DevOptions {
        listen,
        audit_log,
        config_text: None,
        admin_listen: Some(admin_listen),
        console_listen: Some(console_listen),
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
            let path = token_dir.join(format!("{name}.token"));
            if let Err(e) = dev::write_private(&path, tok.as_bytes()) {
                eprintln!(
                    "passgate dev: cannot write token file {}: {e}",
                    path.display()
                );
            }
        }
    }
    if let Some(path) = &state_file {
        let text = serde_json::to_string_pretty(&state).unwrap_or_default();
        if let Err(e) = dev::write_private(path, text.as_bytes()) {
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
