//! `passgate dev`: the embedded sandbox (Entra + Graph emulator on loopback) with the real gateway
//! in front of it, configured by `config/dev.yaml`. Tests start the same thing in-process.
//! The sandbox's endpoints replace the config's; nothing here is ever used by `serve`.

use crate::config::{self, SecretRef, Settings};
use crate::runtime::{self, Live, Shared, StartError};
use crate::sandbox::{SampleTenant, Sandbox};
use crate::server;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The dev config shipped in the repo, embedded so `passgate dev` needs no files.
pub const DEV_CONFIG: &str = include_str!("../config/dev.yaml");

/// Operator tokens handed out by the sandbox live this long (≥ 12 h, so a day's work needs one start).
pub const DEV_TOKEN_LIFETIME: Duration = Duration::from_secs(13 * 3600);

pub struct DevOptions {
    /// Gateway listener; `127.0.0.1:0` picks a free port.
    pub listen: String,
    /// Audit log file; default: a fresh file in a temporary directory.
    pub audit_log: Option<PathBuf>,
    /// Config text to use instead of the embedded `config/dev.yaml` (tests tweak limits this way).
    pub config_text: Option<String>,
    /// Admin listener; `None` runs without one.
    pub admin_listen: Option<String>,
    /// Console listener (when the config has `console:`); `None` runs without the console.
    pub console_listen: Option<String>,
}

impl Default for DevOptions {
    fn default() -> Self {
        DevOptions {
            listen: "127.0.0.1:8080".into(),
            audit_log: None,
            config_text: None,
            admin_listen: Some("127.0.0.1:9090".into()),
            console_listen: Some("127.0.0.1:8081".into()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("sandbox: {0}")]
    Sandbox(std::io::Error),
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Start(#[from] runtime::StartError),
    #[error("temporary directory: {0}")]
    TempDir(std::io::Error),
}

/// A running sandbox + gateway. Dropping it stops the gateway.
pub struct DevEnv {
    pub sandbox: Sandbox,
    pub gateway_url: String,
    pub audit_log: PathBuf,
    pub settings: Settings,
    /// Admin endpoints (`/metrics`, `/healthz`, `/readyz`), when started.
    pub admin_url: Option<String>,
    /// The web console (`http://127.0.0.1:PORT`), when started.
    pub console_url: Option<String>,
    /// The listener's TLS configuration when the config has `server.tls` (tests call `reload_now`).
    pub tls: Option<Arc<server::TlsReloader>>,
    /// The running gateway (tests read its metrics; `live.get()`).
    pub live: Arc<Live>,
    shutdown: tokio::sync::watch::Sender<bool>,
    pub served: tokio::task::JoinHandle<()>,
}

impl DevEnv {
    /// The gateway currently in force.
    pub fn gateway(&self) -> Arc<crate::pipeline::Gateway> {
        self.live.get()
    }

    /// Stops accepting and waits for in-flight requests to finish.
    /// Then writes the pending summaries of throttled refusals, as a served process does.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let _ = (&mut self.served).await;
        let gw = self.live.get();
        let _ = gw.preauth.flush(&gw.audit, true).await;
    }
}

impl Drop for DevEnv {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Points a dev config at a running sandbox.
pub fn bind_to_sandbox(settings: &mut Settings, sandbox: &Sandbox, audit_log: &std::path::Path) {
    let authority = sandbox.authority_url();
    let tid = &sandbox.tenant().tenant_id;
    let ep = &mut settings.endpoints;
    ep.graph = sandbox.graph_url();
    ep.authority = authority.clone();
    ep.token_url = format!("{authority}/{tid}/oauth2/v2.0/token");
    ep.oidc_discovery_url = format!("{authority}/{tid}/v2.0/.well-known/openid-configuration");
    // The emulated Graph is a stand-in for graph.microsoft.com and wants that resource's scope.
    ep.graph_scope = "https://graph.microsoft.com/.default".into();
    // A config that names a certificate keeps it (tests register it with the emulator);
    // otherwise the emulator's client secret is handed over in memory.
    if settings.app.certificate.is_none() {
        settings.app.client_secret = Some(SecretRef::Inline(sandbox.client_secret()));
    }
    if let Some(c) = settings.console.as_mut() {
        c.client_id = sandbox.tenant().console_client_id.clone();
        if c.certificate.is_none() {
            c.client_secret = Some(SecretRef::Inline(sandbox.console_client_secret()));
        }
    }
    settings.audit.path = audit_log.display().to_string();
}

/// Writes a file only its owner can read (mode 0600), for the dev tokens and state file: never
/// through a symbolic link (`O_NOFOLLOW`), never into something other than a regular file, and
/// an existing file is narrowed to 0600 before anything is written into it.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.set_len(0)?;
    f.write_all(bytes)?;
    f.sync_all()
}

pub async fn start(opts: DevOptions) -> Result<DevEnv, DevError> {
    let sandbox = Sandbox::start(SampleTenant::contoso())
        .await
        .map_err(DevError::Sandbox)?;
    let text = opts.config_text.as_deref().unwrap_or(DEV_CONFIG);
    let mut settings = config::load_str(text, "config/dev.yaml")?;
    let audit_log = match opts.audit_log {
        Some(p) => p,
        None => {
            let dir = std::env::temp_dir().join(format!(
                "passgate-dev-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ));
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(DevError::TempDir)?;
            }
            dir.join("audit.jsonl")
        }
    };
    bind_to_sandbox(&mut settings, &sandbox, &audit_log);
    // The console's address is known once bound: its redirect URI follows (loopback http, so
    // cookies without `Secure`), and the emulated app registration learns it.
    let console_listener = match (&opts.console_listen, settings.console.is_some()) {
        (Some(a), true) => {
            let l = server::bind(a).await.map_err(StartError::from)?;
            let addr = l
                .local_addr()
                .map_err(|source| server::ListenError {
                    addr: a.clone(),
                    source,
                })
                .map_err(StartError::from)?;
            if let Some(c) = settings.console.as_mut() {
                c.listen = addr.to_string();
                c.public_origin = format!("http://{addr}");
                c.redirect_uri = format!("http://{addr}{}", config::load::CALLBACK_PATH);
                c.secure_cookies = false;
                sandbox.register_console_redirect_uri(&c.redirect_uri);
            }
            Some((l, format!("http://{addr}")))
        }
        _ => {
            settings.console = None;
            None
        }
    };
    let shared = Shared::open(&settings).await?;
    let live = Live::new(runtime::build_gateway(&settings, &shared).await?);
    let serve_opts = server::ServeOptions::from_settings(&settings).map_err(StartError::from)?;
    let listener = server::bind(&opts.listen).await.map_err(StartError::from)?;
    let addr = listener
        .local_addr()
        .map_err(|source| server::ListenError {
            addr: opts.listen.clone(),
            source,
        })
        .map_err(StartError::from)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin_url = match &opts.admin_listen {
        Some(a) => {
            let admin = server::bind(a).await.map_err(StartError::from)?;
            let admin_addr = admin
                .local_addr()
                .map_err(|source| server::ListenError {
                    addr: a.clone(),
                    source,
                })
                .map_err(StartError::from)?;
            tokio::spawn(crate::admin::serve(
                live.clone(),
                admin,
                serve_opts.clone(),
                stopped(rx.clone()),
            ));
            Some(format!("http://{admin_addr}"))
        }
        None => None,
    };
    let console_url = match console_listener {
        Some((l, url)) => {
            let copts =
                crate::console::serve_options(&serve_opts, &settings).map_err(StartError::from)?;
            tokio::spawn(crate::console::serve(
                live.clone(),
                l,
                copts,
                stopped(rx.clone()),
            ));
            Some(url)
        }
        None => None,
    };
    let tls = serve_opts.tls.clone();
    let served = tokio::spawn(server::serve(
        live.clone(),
        listener,
        serve_opts,
        stopped(rx),
    ));
    let scheme = if tls.is_some() { "https" } else { "http" };
    Ok(DevEnv {
        sandbox,
        gateway_url: format!("{scheme}://{addr}"),
        tls,
        admin_url,
        console_url,
        audit_log,
        settings,
        live,
        shutdown: tx,
        served,
    })
}

/// The `--state-file` JSON: everything a script needs to drive the sandbox.
pub fn state_json(env: &DevEnv) -> serde_json::Value {
    let t = env.sandbox.tenant();
    let operators: serde_json::Map<String, serde_json::Value> = t
        .operators
        .iter()
        .map(|o| {
            (
                o.name.clone(),
                serde_json::json!({
                    "upn": o.upn,
                    "oid": o.oid,
                    "token": env.sandbox.operator_token(&o.name, DEV_TOKEN_LIFETIME),
                }),
            )
        })
        .collect();
    let name_of = |id: &str| {
        t.groups
            .iter()
            .find(|g| g.id == id)
            .map(|g| g.name.clone())
            .unwrap_or_else(|| id.to_string())
    };
    let devices: serde_json::Map<String, serde_json::Value> = t
        .devices
        .iter()
        .map(|d| {
            (
                d.name.clone(),
                serde_json::json!({
                    "managed_device_id": d.managed_device_id,
                    "user_id": d.user_id,
                    "operating_system": d.operating_system,
                    "groups": d.groups.iter().map(|g| name_of(g)).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    serde_json::json!({
        "gateway": env.gateway_url,
        "admin": env.admin_url,
        "console": env.console_url,
        "graph": env.sandbox.graph_url(),
        "authority": env.sandbox.authority_url(),
        "tenant": t.tenant_id,
        "audit_log": env.audit_log.display().to_string(),
        "operators": operators,
        "devices": devices,
    })
}

/// The start-up banner: where things are and two ready-to-paste calls.
pub fn banner(
    env: &DevEnv,
    token_dir: &std::path::Path,
    state_file: Option<&std::path::Path>,
) -> String {
    let t = env.sandbox.tenant();
    let dev_id = |n: &str| {
        t.device(n)
            .map(|d| d.managed_device_id.clone())
            .unwrap_or_default()
    };
    let url = &env.gateway_url;
    let td = token_dir.display();
    let allowed = dev_id("kiosk-phone");
    let mut s = String::new();
    s.push_str(
        "passgate dev — sandbox tenant \"contoso\" (emulated Entra ID + Graph on loopback)\n\n",
    );
    s.push_str(&format!("  gateway    {url}\n"));
    s.push_str(&format!(
        "  graph      {} (emulator)\n",
        env.sandbox.graph_url()
    ));
    s.push_str(&format!(
        "  authority  {} (emulator)\n",
        env.sandbox.authority_url()
    ));
    if let Some(a) = &env.admin_url {
        s.push_str(&format!(
            "  admin      {a}/metrics  {a}/healthz  {a}/readyz\n"
        ));
    }
    if let Some(c) = &env.console_url {
        s.push_str(&format!(
            "  console    {c}/  (sign in as dana — approver — or erin — auditor)\n"
        ));
    }
    s.push_str(&format!("  audit log  {}\n", env.audit_log.display()));
    if let Some(p) = state_file {
        s.push_str(&format!("  state      {}\n", p.display()));
    }
    s.push_str("\nAllowed — alice (Helpdesk Tier 2) on kiosk-phone (Kiosk Devices), expect 204:\n");
    s.push_str(&format!(
        "  curl -i -X POST -H \"Authorization: Bearer $(cat {td}/alice.token)\" \\\n    {url}/v1.0/deviceManagement/managedDevices/{allowed}/recoverPasscode\n"
    ));
    s.push_str("\nDenied — bob is not an approved operator, expect 403 operator_not_approved:\n");
    s.push_str(&format!(
        "  curl -i -X POST -H \"Authorization: Bearer $(cat {td}/bob.token)\" \\\n    {url}/v1.0/deviceManagement/managedDevices/{allowed}/recoverPasscode\n"
    ));
    let exec = dev_id("exec-phone");
    let api = format!("{url}/passgate/v1/approvals");
    s.push_str(
        "\nTwo-person approval — alice on exec-phone (Executive Devices) needs carol's approval:\n",
    );
    s.push_str(&format!(
        "  curl -i -X POST -H \"Authorization: Bearer $(cat {td}/alice.token)\" \\\n    {url}/v1.0/deviceManagement/managedDevices/{exec}/recoverPasscode\n"
    ));
    s.push_str("  # 403 approval_required; the request's id is in the Passgate-Approval-Id header. Then carol:\n");
    s.push_str(&format!(
        "  curl -s -H \"Authorization: Bearer $(cat {td}/carol.token)\" '{api}?state=pending'\n"
    ));
    s.push_str(&format!(
        "  curl -s -X POST -H \"Authorization: Bearer $(cat {td}/carol.token)\" -H 'Content-Type: application/json' \\\n    -d '{{\"comment\":\"verified by phone\"}}' {api}/<approval id>/approve\n"
    ));
    s.push_str(&format!(
        "  # or: passgate approvals list --gateway {url} --token-file {td}/carol.token\n"
    ));
    s.push_str("  # then alice's same call again: 204, once.\n");
    if env.console_url.is_some() {
        let wh = dev_id("warehouse-phone");
        s.push_str("\nNeeds approval — alice on warehouse-phone, expect 403 approval_required; dana approves in the console, then retry:\n");
        s.push_str(&format!(
            "  curl -i -X POST -H \"Authorization: Bearer $(cat {td}/alice.token)\" \\\n    {url}/v1.0/deviceManagement/managedDevices/{wh}/recoverPasscode\n"
        ));
    }
    s.push_str("\nVerify the audit chain:  passgate audit verify ");
    s.push_str(&env.audit_log.display().to_string());
    s.push_str("\nCtrl-C stops.");
    s
}
