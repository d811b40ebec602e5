//! The gateway's lifetime: the parts that outlive a configuration (rate-limit state, the audit
//! writer, the metrics registry), assembling a [`Gateway`] from settings, and swapping it
//! atomically on reload. A reload never reopens the audit file and never resets limits; an
//! invalid new configuration leaves the running one untouched.

use crate::audit::AuditLog;
use crate::auth::{keys::KeyStore, AuthSettings, Authenticator};
use crate::config::{self, AssertionFormat, Settings};
use crate::graph::facts::FactsClient;
use crate::graph::forward::Forwarder;
use crate::graph::token::{AppCredential, AppTokenProvider};
use crate::outbound;
use crate::pipeline::Gateway;
use crate::policy::{PolicySet, RateLimiter};
use crate::server::StartError;
use crate::telemetry::Metrics;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A key store and the source (discovery URL and fetch settings) it was built for.
type KeySlot = (String, Arc<KeyStore>);

/// What survives a reload.
#[derive(Clone)]
pub struct Shared {
    pub limiter: Arc<RateLimiter>,
    pub metrics: Metrics,
    pub audit: AuditLog,
    /// Operator-token keys, reused by a reload whose key source is unchanged.
    keys: Arc<std::sync::Mutex<Option<KeySlot>>>,
}

impl Shared {
    /// Opens the audit log named by the settings and creates fresh limiter and metrics.
    pub fn open(settings: &Settings) -> Result<Shared, StartError> {
        // The error names the env var or file of the HMAC key, never the key.
        let opts = crate::audit::AuditOptions::from_config(&settings.audit)
            .map_err(|e| StartError::Audit(e.to_string()))?;
        let audit = AuditLog::open_with(Path::new(&settings.audit.path), opts)
            .map_err(|e| StartError::Audit(format!("{}: {e}", settings.audit.path)))?;
        let metrics = Metrics::new();
        let fsync = metrics.audit_fsync.clone();
        audit.set_fsync_observer(Arc::new(move |d: Duration| fsync.observe(d.as_secs_f64())));
        Ok(Shared {
            limiter: Arc::new(RateLimiter::new()),
            metrics,
            audit,
            keys: Arc::default(),
        })
    }
}

/// The gateway currently in force. Each request takes its own `Arc`, so a request that started
/// under one configuration finishes under it even if a reload swaps in another meanwhile.
pub struct Live {
    current: RwLock<Arc<Gateway>>,
}

impl Live {
    pub fn new(gateway: Gateway) -> Arc<Live> {
        Arc::new(Live {
            current: RwLock::new(Arc::new(gateway)),
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
        match self.current.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Start(#[from] StartError),
}

/// Re-reads the config file and swaps in a new gateway when it is valid.
pub struct Reloader {
    path: PathBuf,
    live: Arc<Live>,
    shared: Shared,
    running: RwLock<Settings>,
    /// Serialises reloads (SIGHUP and the file watcher may fire together).
    busy: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(path: PathBuf, live: Arc<Live>, shared: Shared, running: Settings) -> Arc<Reloader> {
        Arc::new(Reloader {
            path,
            live,
            shared,
            running: RwLock::new(running),
            busy: tokio::sync::Mutex::new(()),
        })
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
        {
            let running = self.running.read().unwrap_or_else(|p| p.into_inner());
            for (what, old, new) in [
                ("server.listen", &running.listen, &next.listen),
                ("audit.path", &running.audit.path, &next.audit.path),
            ] {
                if old != new {
                    tracing::warn!(
                        key = what,
                        "changed in the config file but only takes effect after a restart"
                    );
                }
            }
            if running.admin_listen != next.admin_listen {
                tracing::warn!(
                    key = "admin.listen",
                    "changed in the config file but only takes effect after a restart"
                );
            }
        }
        let gateway = build_gateway(&next, &self.shared).await?;
        self.live.swap(gateway);
        *self.running.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    /// Polls the file every `interval` and reloads when its bytes change.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut last = std::fs::read(&self.path).ok();
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = std::fs::read(&self.path).ok();
            if now.is_some() && now != last {
                last = now;
                let _ = self.reload().await;
            }
        }
    }
}

fn app_credential(settings: &Settings) -> Result<AppCredential, StartError> {
    if let Some(secret) = &settings.app.client_secret {
        let s = secret.resolve().map_err(|e| StartError::Secret {
            what: "app.client_secret",
            detail: e.to_string(),
        })?;
        return Ok(AppCredential::Secret(s.expose().to_string()));
    }
    let cert = settings.app.certificate.as_ref().ok_or_else(|| {
        StartError::Certificate("neither client_secret nor certificate set".into())
    })?;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rustls_pki_types::pem::PemObject;
    let cert_der = rustls_pki_types::CertificateDer::from_pem_file(&cert.cert_file)
        .map_err(|e| StartError::Certificate(format!("{}: {e}", cert.cert_file)))?
        .to_vec();
    let pem = cert.private_key.resolve().map_err(|e| StartError::Secret {
        what: "app.certificate.private_key",
        detail: e.to_string(),
    })?;
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem.expose())
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem.expose()))
        .map_err(|_| {
            StartError::Certificate("private key is not an RSA PKCS#8 or PKCS#1 PEM key".into())
        })?;
    Ok(AppCredential::Certificate {
        cert_der,
        key: Box::new(key),
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
    );
    let forwarder = Forwarder::new(
        client,
        ep.graph.clone(),
        tokens.clone(),
        Duration::from_secs(settings.graph.action_timeout_seconds),
    );
    Ok(Gateway {
        auth,
        policies: PolicySet::new(settings.policies.clone()),
        limiter: shared.limiter.clone(),
        facts,
        forwarder,
        tokens,
        audit: shared.audit.clone(),
        metrics: shared.metrics.clone(),
    })
}
