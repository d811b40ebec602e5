//! The gateway's lifetime: the parts that outlive a configuration (rate-limit state, the audit
//! writer, the metrics registry), assembling a [`Gateway`] from settings, and applying a reload:
//! the new gateway swapped in atomically, the listener settings and TLS files replaced for new
//! connections, and every key a reload cannot apply ([`RESTART_ONLY`]) reported by name. A reload
//! never reopens the audit file and never resets limits; an invalid new configuration leaves the
//! running one untouched, and a changed restart-only key is never silently ignored.

use crate::approval::store::{ApprovalStore, MemoryApprovals};
use crate::approval::Approvals;
use crate::audit::{AuditError, AuditLog, AuditOptionsError};
use crate::auth::{keys::KeyStore, AuthSettings, Authenticator};
use crate::config::{self, AssertionFormat, SecretError, Settings};
use crate::console::store::{MemorySessions, SessionStore};
use crate::flood::PreAuthBudget;
use crate::graph::facts::FactsClient;
use crate::graph::forward::Forwarder;
use crate::graph::slots::GraphSlots;
use crate::graph::token::{AppCredential, AppTokenProvider};
use crate::lifecycle::ConnInfo;
use crate::outbound;
use crate::pipeline::Gateway;
use crate::policy::limiter::{StoreErrorKind, WindowStore};
use crate::policy::{PolicySet, RateLimiter};
use crate::server::{self, ListenError, ServeOptions, TlsError, TlsFiles};
use crate::state::{memory::MemoryStore, redis::RedisStore, Instrumented};
use crate::telemetry::{CounterFeed, Metrics};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

/// Why passgate could not start (or a reload could not build its gateway).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("secret {what}: {source}")]
    Secret {
        what: &'static str,
        #[source]
        source: SecretError,
    },
    #[error("certificate credential: neither client_secret nor certificate set")]
    NoCredential,
    #[error("certificate credential: {path}: {source}")]
    CertificateFile {
        path: String,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("certificate credential: private key is not an RSA PKCS#8 or PKCS#1 PEM key")]
    CertificateKey,
    #[error("outbound client: {0}")]
    Client(#[from] outbound::ClientBuildError),
    #[error("audit log: {0}")]
    AuditOptions(#[from] AuditOptionsError),
    #[error("audit log: {path}: {source}")]
    Audit {
        path: String,
        #[source]
        source: AuditError,
    },
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error(transparent)]
    State(#[from] crate::state::redis::RedisStartError),
    /// The URL itself is never shown: it is a secret.
    #[error("notify webhook of {policy}: {why}")]
    Webhook { policy: String, why: &'static str },
}

/// A key a reload cannot apply to the running process.
pub struct RestartOnly {
    /// The key as written in the config file.
    pub key: &'static str,
    /// Whether two configurations differ on it.
    differs: fn(&Settings, &Settings) -> bool,
}

/// Every restart-only key, and the one place that says so: a reload compares the file with the
/// values the process started with on each of these, warns by key name, sets
/// `passgate_config_restart_required` and lists them in `/readyz`. Every other key takes effect
/// on reload.
pub const RESTART_ONLY: &[RestartOnly] = &[
    RestartOnly {
        key: "server.listen",
        differs: |a, b| a.listen != b.listen,
    },
    // Turning TLS on or off (its file paths and intervals reload).
    RestartOnly {
        key: "server.tls",
        differs: |a, b| a.tls.is_some() != b.tls.is_some(),
    },
    RestartOnly {
        key: "server.plaintext",
        differs: |a, b| a.server.plaintext != b.server.plaintext,
    },
    RestartOnly {
        key: "admin.enabled",
        differs: |a, b| a.admin_listen.is_some() != b.admin_listen.is_some(),
    },
    // Only while the admin listener is on in both (switching it is `admin.enabled`).
    RestartOnly {
        key: "admin.listen",
        differs: |a, b| match (&a.admin_listen, &b.admin_listen) {
            (Some(x), Some(y)) => x != y,
            _ => false,
        },
    },
    RestartOnly {
        key: "audit.path",
        differs: |a, b| a.audit.path != b.audit.path,
    },
    // The reference (env var or file name) is compared, not the key it resolves to.
    RestartOnly {
        key: "audit.hmac_key",
        differs: |a, b| a.audit.hmac_key != b.audit.hmac_key,
    },
    RestartOnly {
        key: "audit.rotate_max_bytes",
        differs: |a, b| a.audit.rotate_max_bytes != b.audit.rotate_max_bytes,
    },
    RestartOnly {
        key: "audit.rotate_max_age_seconds",
        differs: |a, b| a.audit.rotate_max_age_seconds != b.audit.rotate_max_age_seconds,
    },
    // The console listener is bound once, like the others (adding or removing the `console:`
    // block); its other keys reload.
    RestartOnly {
        key: "console",
        differs: |a, b| a.console.is_some() != b.console.is_some(),
    },
    RestartOnly {
        key: "console.listen",
        differs: |a, b| match (&a.console, &b.console) {
            (Some(x), Some(y)) => x.listen != y.listen,
            _ => false,
        },
    },
    // The state backend is built once: the limits' memory must not be swapped mid-flight.
    RestartOnly {
        key: "state",
        differs: |a, b| a.state != b.state,
    },
];

/// The restart-only keys on which `file` differs from the process started with `running`.
pub fn restart_required(running: &Settings, file: &Settings) -> Vec<&'static str> {
    RESTART_ONLY
        .iter()
        .filter(|r| (r.differs)(running, file))
        .map(|r| r.key)
        .collect()
}

/// A key store and the source (discovery URL and fetch settings) it was built for.
type KeySlot = (String, Arc<KeyStore>);

/// What survives a reload.
#[derive(Clone)]
pub struct Shared {
    pub limiter: Arc<RateLimiter>,
    /// Budgets for refusals before authentication; its flusher writes their summaries.
    pub preauth: Arc<PreAuthBudget>,
    /// Approval requests: in this process, or in Redis with the limits.
    pub approvals: Arc<dyn ApprovalStore>,
    /// Console sessions and sign-ins in progress: in this process, or in Redis with the limits.
    pub sessions: Arc<dyn SessionStore>,
    pub metrics: Metrics,
    pub audit: AuditLog,
    /// Operator-token keys, reused by a reload whose key source is unchanged.
    keys: Arc<std::sync::Mutex<Option<KeySlot>>>,
}

impl Shared {
    /// Writes every pending summary of throttled refusals (at shutdown, before the audit log
    /// closes), so the chain accounts for them.
    pub async fn flush_summaries(&self) {
        if let Err(e) = self.preauth.flush(&self.audit, true).await {
            tracing::error!(error = %crate::error::chain(&e), "throttled-refusal summaries lost at shutdown");
        }
    }

    /// Opens the audit log named by the settings, creates the metrics and the limiter over the
    /// configured state backend (checking that Redis answers: a wrong password or TLS failure is
    /// a start-up error; Redis merely unreachable is logged and refused per request until back).
    pub async fn open(settings: &Settings) -> Result<Shared, StartError> {
        // The error names the env var or file of the HMAC key, never the key.
        let opts = crate::audit::AuditOptions::from_config(&settings.audit)?;
        let audit =
            AuditLog::open_with(Path::new(&settings.audit.path), opts).map_err(|source| {
                StartError::Audit {
                    path: settings.audit.path.clone(),
                    source,
                }
            })?;
        let metrics = Metrics::new();
        let fsync = metrics.audit_fsync.clone();
        audit.set_fsync_observer(Arc::new(move |d: Duration| fsync.observe(d.as_secs_f64())));
        let (store, approvals, sessions): (
            Arc<dyn WindowStore>,
            Arc<dyn ApprovalStore>,
            Arc<dyn SessionStore>,
        ) = match &settings.state {
            None => (
                Arc::new(MemoryStore::new()),
                Arc::new(MemoryApprovals::new()),
                Arc::new(MemorySessions::new()),
            ),
            Some(redis) => {
                let (store, down) = RedisStore::connect(redis).await?;
                if let Some(e) = down {
                    tracing::error!(error = %e, "Redis (state.redis) is not answering; requests get 503 limits_unavailable until it does");
                }
                let store = Arc::new(store);
                (store.clone(), store.clone(), store)
            }
        };
        for kind in StoreErrorKind::ALL {
            metrics
                .state_errors
                .with_label_values(&[store.backend(), kind.as_str()]);
        }
        let store = Arc::new(Instrumented::new(
            store,
            metrics.state_latency.clone(),
            metrics.state_errors.clone(),
        ));
        let s = &settings.server;
        let (n, per) = s.unauthenticated_per_client;
        let preauth = Arc::new(PreAuthBudget::new(n, per, s.unauthenticated_summary));
        tokio::spawn(preauth.clone().run_flusher(audit.clone()));
        Ok(Shared {
            approvals,
            sessions,
            preauth,
            limiter: Arc::new(RateLimiter::new(store)),
            metrics,
            audit,
            keys: Arc::default(),
        })
    }
}

/// Feeds for the counts kept by per-gateway components (see [`CounterFeed`]).
#[derive(Default)]
struct Feeds {
    token_ok: CounterFeed,
    token_failed: CounterFeed,
    jwks_ok: CounterFeed,
    jwks_failed: CounterFeed,
    facts_hit: CounterFeed,
    facts_miss: CounterFeed,
}

/// Copies one gateway's component statistics into the registry. The app-token provider, the
/// facts cache and the key store may be replaced by a reload, so their counts go through
/// per-object feeds; the audit log lives as long as the registry and is synced absolutely.
fn sync_metrics(gw: &Arc<Gateway>, feeds: &Feeds) {
    let m = &gw.metrics;
    let t = gw.tokens.stats();
    let refreshes = |r| m.app_token_refreshes.with_label_values(&[r]);
    feeds
        .token_ok
        .feed(&refreshes("success"), &gw.tokens, t.refresh_ok);
    feeds
        .token_failed
        .feed(&refreshes("failure"), &gw.tokens, t.refresh_failed);
    let keys = gw.auth.keys();
    let k = keys.stats();
    let jwks = |r| m.jwks_refreshes.with_label_values(&[r]);
    feeds.jwks_ok.feed(&jwks("success"), keys, k.refresh_ok);
    feeds
        .jwks_failed
        .feed(&jwks("failure"), keys, k.refresh_failed);
    // The facts client is the gateway's own: the gateway stands for it.
    let f = gw.facts.stats();
    let facts = |r| m.facts_cache.with_label_values(&[r]);
    feeds.facts_hit.feed(&facts("hit"), gw, f.hits);
    feeds.facts_miss.feed(&facts("miss"), gw, f.misses);
    let sync = Metrics::sync_counter;
    let a = gw.audit.stats();
    sync(&m.audit_records, a.records_written);
    for (kind, n) in a.write_failures_by_kind.iter() {
        sync(
            &m.audit_write_failures.with_label_values(&[kind.as_str()]),
            n,
        );
    }
    m.unauthenticated_throttled_clients
        .set(gw.preauth.throttled_clients() as i64);
    if let Ok(free) = gw.audit.free_bytes() {
        m.audit_free_bytes
            .set(i64::try_from(free).unwrap_or(i64::MAX));
    }
    m.audit_min_free_bytes
        .set(i64::try_from(gw.audit_min_free_bytes).unwrap_or(i64::MAX));
}

/// The gateway currently in force. Each request takes its own `Arc`, so a request that started
/// under one configuration finishes under it even if a reload swaps in another meanwhile.
pub struct Live {
    current: RwLock<Arc<Gateway>>,
    /// Gateways a reload replaced, while requests may still hold them: their counts still count.
    retired: Mutex<Vec<Weak<Gateway>>>,
    feeds: Feeds,
    /// Restart-only keys on which the config file differs from the running process.
    restart_pending: RwLock<Vec<&'static str>>,
}

impl Live {
    pub fn new(gateway: Gateway) -> Arc<Live> {
        Arc::new(Live {
            current: RwLock::new(Arc::new(gateway)),
            retired: Mutex::default(),
            feeds: Feeds::default(),
            restart_pending: RwLock::default(),
        })
    }

    pub fn get(&self) -> Arc<Gateway> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn swap(&self, next: Gateway) {
        let next = Arc::new(next);
        let old = match self.current.write() {
            Ok(mut g) => std::mem::replace(&mut *g, next),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), next),
        };
        // Read the old gateway's counts now; it is read again while requests still hold it.
        sync_metrics(&old, &self.feeds);
        self.retired_lock().push(Arc::downgrade(&old));
    }

    fn retired_lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Gateway>>> {
        let mut r = match self.retired.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        r.retain(|w| w.strong_count() > 0);
        r
    }

    /// Brings the registry's component counters up to date with every gateway still alive.
    pub fn sync_metrics(&self) {
        let alive: Vec<Arc<Gateway>> = self
            .retired_lock()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for gw in alive.iter().chain([&self.get()]) {
            sync_metrics(gw, &self.feeds);
        }
    }

    /// Restart-only keys the config file changed since the process started (see
    /// [`RESTART_ONLY`]); empty when the file matches the running process on all of them.
    pub fn restart_pending(&self) -> Vec<&'static str> {
        match self.restart_pending.read() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set_restart_pending(&self, keys: Vec<&'static str>) {
        match self.restart_pending.write() {
            Ok(mut p) => *p = keys,
            Err(p) => *p.into_inner() = keys,
        }
    }
}

impl server::App for Live {
    fn call(
        &self,
        req: server::Request,
        conn: ConnInfo,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = server::Reply> + Send>> {
        // The gateway in force when the request arrived serves it to the end, across reloads.
        let gw = self.get();
        Box::pin(async move { gw.handle(req, conn).await })
    }

    fn shed(&self, req: server::Request, conn: ConnInfo) -> server::Reply {
        self.get().shed(req, conn)
    }
}

impl Live {
    /// The shed answer of a listener that keeps no per-request records (admin, console): counted
    /// under its name, then the plain `503 gateway_busy`.
    pub(crate) fn shed_unrecorded(&self, listener: crate::telemetry::Listener) -> server::Reply {
        self.get().metrics.count_shed(listener);
        server::busy_reply()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Start(#[from] StartError),
}

/// Re-reads the config file and applies it when it is valid.
pub struct Reloader {
    path: PathBuf,
    live: Arc<Live>,
    shared: Shared,
    /// The listener settings (shared with the admin listener) and TLS files.
    listener: ServeOptions,
    /// What the process started with: restart-only keys are compared against it, not against
    /// the previous reload, so a key stays reported until the file matches the process again.
    started: Settings,
    running: RwLock<Settings>,
    /// Woken after each successful reload (the file watcher's interval may have changed).
    applied: tokio::sync::Notify,
    /// Serialises reloads (SIGHUP and the file watcher may fire together).
    busy: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        live: Arc<Live>,
        shared: Shared,
        running: Settings,
        listener: ServeOptions,
    ) -> Arc<Reloader> {
        Arc::new(Reloader {
            path,
            live,
            shared,
            listener,
            started: running.clone(),
            running: RwLock::new(running),
            applied: tokio::sync::Notify::new(),
            busy: tokio::sync::Mutex::new(()),
        })
    }

    /// The settings in force (the last valid file; restart-only keys as listed in `/readyz`).
    pub fn settings(&self) -> Settings {
        self.running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Parse + validate + build + swap. On any error the running gateway stays in force.
    pub async fn reload(&self) -> Result<(), ReloadError> {
        let _one_at_a_time = self.busy.lock().await;
        let m = &self.shared.metrics;
        let result = self.try_reload().await;
        match &result {
            Ok(()) => {
                m.config_reloads.with_label_values(&["success"]).inc();
                m.config_last_reload_success
                    .set(chrono::Utc::now().timestamp() as f64);
                tracing::info!(config = %self.path.display(), "configuration reloaded");
                self.applied.notify_waiters();
            }
            Err(e) => {
                m.config_reloads.with_label_values(&["failure"]).inc();
                tracing::error!(config = %self.path.display(), error = %e, "configuration reload failed; keeping the running configuration");
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<(), ReloadError> {
        let next = config::load_file(&self.path)?;
        // Everything that can fail comes first; nothing is applied until all of it succeeded.
        let tls = match (&self.listener.tls, &next.tls) {
            (Some(served), Some(t)) => {
                let files = TlsFiles::from(t);
                if files != served.files() {
                    let staged = served.stage(files).map_err(StartError::from)?;
                    Some((served, staged))
                } else {
                    None
                }
            }
            // Turning TLS on or off is restart-only.
            _ => None,
        };
        let gateway = build_gateway(&next, &self.shared).await?;
        self.live.swap(gateway);
        let (n, per) = next.server.unauthenticated_per_client;
        self.shared
            .preauth
            .set_rate(n, per, next.server.unauthenticated_summary);
        if let Some((served, staged)) = tls {
            served.install(staged);
            tracing::info!(cert = %served.files().cert_file.display(), "TLS files changed by the reload; new connections get them");
        }
        self.listener.set_server(next.server.clone());
        let pending = restart_required(&self.started, &next);
        for key in &pending {
            tracing::warn!(
                key,
                "changed in the config file but only takes effect after a restart; still running with the value it started with"
            );
        }
        self.shared
            .metrics
            .config_restart_required
            .set(i64::from(!pending.is_empty()));
        self.live.set_restart_pending(pending);
        *self.running.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// Polls the file every `server.config_watch_seconds` (as in force: a reload may change it;
    /// 0 waits for a reload by signal instead) and reloads when its bytes change.
    pub async fn watch(self: Arc<Self>) {
        let mut last = std::fs::read(&self.path).ok();
        loop {
            let applied = self.applied.notified();
            let every = self.settings().raw.server.config_watch_seconds;
            let due = async {
                if every == 0 {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_secs(every)).await;
            };
            tokio::select! {
                _ = due => {}
                _ = applied => {
                    // A reload (perhaps by signal) just read the file: start over from it.
                    last = std::fs::read(&self.path).ok();
                    continue;
                }
            }
            let now = std::fs::read(&self.path).ok();
            if now.is_some() && now != last {
                last = now;
                let _ = self.reload().await;
            }
        }
    }
}

/// A webhook URL from its reference: https, or http to loopback. Errors never show the URL.
fn webhook_url(policy: &str, r: &crate::config::SecretRef) -> Result<String, StartError> {
    let url = r.resolve().map_err(|source| StartError::Secret {
        what: "notify.webhook",
        source,
    })?;
    let url = url.expose().trim().to_string();
    let bad = |why| StartError::Webhook {
        policy: policy.to_string(),
        why,
    };
    let parsed = url::Url::parse(&url).map_err(|_| bad("not a URL"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(bad("must be an https:// URL (http:// only to loopback)")),
    }
}

fn app_credential(settings: &Settings) -> Result<AppCredential, StartError> {
    credential(
        settings.app.client_secret.as_ref(),
        settings.app.certificate.as_ref(),
        ("app.client_secret", "app.certificate.private_key"),
    )
}

/// A confidential client's credential (`app:` or `console:`): the secret, or the certificate
/// and its private key, resolved. `what` names the two secret keys in errors.
fn credential(
    secret: Option<&config::SecretRef>,
    certificate: Option<&config::CertificateCredential>,
    what: (&'static str, &'static str),
) -> Result<AppCredential, StartError> {
    if let Some(secret) = secret {
        let s = secret.resolve().map_err(|source| StartError::Secret {
            what: what.0,
            source,
        })?;
        return Ok(AppCredential::Secret(s.expose().to_string()));
    }
    let cert = certificate.ok_or(StartError::NoCredential)?;
    use rustls_pki_types::pem::PemObject;
    let cert_der = rustls_pki_types::CertificateDer::from_pem_file(&cert.cert_file)
        .map_err(|source| StartError::CertificateFile {
            path: cert.cert_file.clone(),
            source,
        })?
        .to_vec();
    let pem = cert
        .private_key
        .resolve()
        .map_err(|source| StartError::Secret {
            what: what.1,
            source,
        })?;
    // PKCS#8 or PKCS#1 ("BEGIN RSA PRIVATE KEY"), parsed and checked by ring.
    let der = rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.expose().as_bytes())
        .map_err(|_| StartError::CertificateKey)?;
    let key = match &der {
        rustls_pki_types::PrivateKeyDer::Pkcs8(k) => {
            ring::rsa::KeyPair::from_pkcs8(k.secret_pkcs8_der())
        }
        rustls_pki_types::PrivateKeyDer::Pkcs1(k) => {
            ring::rsa::KeyPair::from_der(k.secret_pkcs1_der())
        }
        _ => return Err(StartError::CertificateKey),
    }
    .map_err(|_| StartError::CertificateKey)?;
    Ok(AppCredential::Certificate {
        cert_der,
        key: Arc::new(key),
        ps256: cert.assertion_format == AssertionFormat::Ps256,
    })
}

/// Builds every component from settings. Fetches the signing keys once (a failure is logged and
/// retried on demand: requests get `keys_unavailable` until Entra answers).
pub async fn build_gateway(settings: &Settings, shared: &Shared) -> Result<Gateway, StartError> {
    let ep = &settings.endpoints;
    let client = outbound::build_client(ep.extra_ca_file.as_deref())?;
    let read_timeout = Duration::from_secs(settings.graph.read_timeout_seconds);
    let oa = &settings.operator_auth;
    // A reload that keeps the key source keeps the keys already fetched: a brief Entra outage
    // during a reload must not leave the new gateway without keys for a refresh-floor period.
    let key_source = format!(
        "{}|{:?}|{:?}|{:?}|{:?}",
        ep.oidc_discovery_url,
        ep.extra_ca_file,
        read_timeout,
        oa.jwks_refresh_floor,
        oa.jwks_max_age
    );
    let reusable = shared.keys.lock().ok().and_then(|k| {
        k.as_ref()
            .filter(|(src, _)| *src == key_source)
            .map(|(_, ks)| ks.clone())
    });
    let keys = match reusable {
        Some(k) => k,
        None => {
            let k = KeyStore::new(
                client.clone(),
                ep.oidc_discovery_url.clone(),
                read_timeout,
                oa.jwks_refresh_floor,
                oa.jwks_max_age,
            );
            if let Err(e) = k.refresh_if_allowed().await {
                tracing::error!(error = %e, "could not fetch operator-token signing keys");
            }
            if let Ok(mut slot) = shared.keys.lock() {
                *slot = Some((key_source, k.clone()));
            }
            k
        }
    };
    let auth = Authenticator::new(
        AuthSettings {
            tenant_id: settings.tenant_id.clone(),
            audiences: oa.audiences.clone(),
            accept_v1: oa.accept_v1,
            accept_v2: oa.accept_v2,
            v1_issuer: ep.v1_issuer.clone(),
            algorithms: oa.algorithms.clone(),
            token_types: oa.token_types.clone(),
            leeway: oa.leeway,
            required_scope: oa.required_scope.clone(),
        },
        keys,
    );
    let tokens = AppTokenProvider::new(
        client.clone(),
        ep.token_url.clone(),
        settings.app.client_id.clone(),
        ep.graph_scope.clone(),
        app_credential(settings)?,
        read_timeout,
        Duration::from_secs(settings.graph.token_refresh_ahead_seconds),
    );
    let facts = FactsClient::new(
        client.clone(),
        ep.graph.clone(),
        tokens.clone(),
        read_timeout,
        Duration::from_secs(settings.graph.facts_cache_ttl_seconds),
    )
    .with_max_entries(settings.graph.facts_cache_max_entries);
    // Validated when the config was loaded; a value that somehow fails still gets a budget.
    let (n, per) = crate::config::parse_rate(&settings.graph.facts_lookups_per_operator)
        .unwrap_or((60, Duration::from_secs(60)));
    // One cap on the pipeline's requests to Graph, shared by the facts reads and the forwards.
    let slots = GraphSlots::new(
        settings.graph.max_concurrent_requests,
        Duration::from_secs(settings.graph.queue_timeout_seconds),
    )
    .with_gauge(shared.metrics.graph_in_flight.clone());
    let facts = facts.with_operator_budget(n, per).with_slots(slots.clone());
    let mut webhooks = std::collections::BTreeMap::new();
    for (policy, rule) in &settings.approvals {
        if let Some(r) = &rule.webhook {
            webhooks.insert(policy.clone(), webhook_url(policy, r)?);
        }
    }
    let default_webhook = match &settings.raw.notify {
        Some(n) => Some(webhook_url("(notify)", &n.webhook)?),
        None => None,
    };
    let approvals = Approvals::new(
        shared.approvals.clone(),
        settings.approvals.clone(),
        shared.audit.clone(),
        shared.metrics.approval_events.clone(),
        crate::approval::notify::Notifier::new(
            client.clone(),
            webhooks,
            default_webhook,
            shared.metrics.approval_notifications.clone(),
        ),
    );
    let console = match &settings.console {
        Some(c) => {
            let credential = credential(
                c.client_secret.as_ref(),
                c.certificate.as_ref(),
                ("console.client_secret", "console.certificate.private_key"),
            )?;
            let hmac_key = settings
                .audit
                .hmac_key
                .as_ref()
                .map(|k| {
                    k.resolve()
                        .map(|s| s.expose().as_bytes().to_vec())
                        .map_err(|source| StartError::Secret {
                            what: "audit.hmac_key",
                            source,
                        })
                })
                .transpose()?;
            Some(Arc::new(crate::console::Site::build(
                c,
                settings,
                crate::console::SiteParts {
                    client: client.clone(),
                    tokens: tokens.clone(),
                    sessions: shared.sessions.clone(),
                    audit: shared.audit.clone(),
                    credential,
                    hmac_key,
                    events: shared.metrics.console_events.clone(),
                },
            )))
        }
        None => None,
    };
    let forwarder = Forwarder::new(
        client,
        ep.graph.clone(),
        tokens.clone(),
        Duration::from_secs(settings.graph.action_timeout_seconds),
        slots,
    );
    // Set last, once nothing can fail: a reload that is refused leaves the gauges as they were.
    shared
        .metrics
        .graph_max_concurrent
        .set(settings.graph.max_concurrent_requests as i64);
    shared
        .metrics
        .max_requests_in_flight
        .set(settings.server.max_requests_in_flight as i64);
    shared.metrics.declare_break_glass_policies(
        settings
            .policies
            .iter()
            .filter(|p| p.break_glass.is_some())
            .map(|p| p.name.as_str()),
    );
    Ok(Gateway {
        auth,
        policies: PolicySet::new(settings.policies.clone())
            .with_caps(settings.caps.clone())
            .with_report(settings.report_policies.clone()),
        limiter: shared.limiter.clone(),
        facts,
        forwarder,
        tokens,
        audit: shared.audit.clone(),
        metrics: shared.metrics.clone(),
        preauth: shared.preauth.clone(),
        approvals,
        audit_min_free_bytes: settings.audit.min_free_bytes,
        console,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One change to a configuration.
    type Edit = fn(&mut Settings);

    fn dev() -> Settings {
        config::load_str(crate::dev::DEV_CONFIG, "config/dev.yaml").expect("dev config loads")
    }

    #[test]
    fn each_restart_only_key_is_detected_by_name_and_live_keys_are_not() {
        let base = dev();
        assert!(restart_required(&base, &base).is_empty());
        let edits: Vec<(&str, Edit)> = vec![
            ("server.listen", (|s| s.listen = "127.0.0.1:1".into())),
            ("audit.path", (|s| s.audit.path = "/elsewhere".into())),
            (
                "audit.rotate_max_bytes",
                (|s| s.audit.rotate_max_bytes = Some(1)),
            ),
            (
                "audit.rotate_max_age_seconds",
                (|s| s.audit.rotate_max_age_seconds = Some(1)),
            ),
            (
                "audit.hmac_key",
                (|s| s.audit.hmac_key = Some(config::SecretRef::Env("K".into()))),
            ),
            (
                "admin.listen",
                (|s| s.admin_listen = Some("127.0.0.1:1".into())),
            ),
            ("admin.enabled", (|s| s.admin_listen = None)),
            (
                "state",
                (|s| {
                    s.state = Some(crate::state::conformance_config(
                        "redis://127.0.0.1:6379/0",
                        "passgate",
                    ))
                }),
            ),
            ("server.plaintext", (|s| s.server.plaintext = false)),
            ("console", (|s| s.console = None)),
            (
                "console.listen",
                (|s| {
                    if let Some(c) = s.console.as_mut() {
                        c.listen = "127.0.0.1:1".into();
                    }
                }),
            ),
            (
                "server.tls",
                (|s| {
                    s.tls = Some(config::TlsConfig {
                        cert_file: "c.pem".into(),
                        key_file: "k.pem".into(),
                        client_ca_file: None,
                        reload_interval_seconds: 10,
                    })
                }),
            ),
        ];
        for (key, edit) in &edits {
            let mut next = base.clone();
            edit(&mut next);
            assert_eq!(restart_required(&base, &next), [*key]);
            assert!(RESTART_ONLY.iter().any(|r| r.key == *key));
        }
        // Keys that take effect on reload are never reported.
        let mut next = base.clone();
        next.server.max_connections = 1;
        next.server.trusted_proxies =
            vec![crate::server::client_ip::Cidr::parse("10.0.0.0/8").expect("a network")];
        next.raw.server.drain_timeout_seconds = 1;
        next.raw.server.config_watch_seconds = 1;
        next.policies.clear();
        next.caps = vec![crate::policy::Limit {
            scope: crate::policy::LimitScope::PerDevice,
            count: 1,
            window: Duration::from_secs(60),
        }];
        assert!(restart_required(&base, &next).is_empty());
    }
}
