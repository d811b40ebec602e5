//! The `console:` block (the web console for approvers and auditors, docs/console.md): its YAML
//! shape and its validated form. Plain data: it holds secret *references* only, and must never
//! resolve a secret or decide who may sign in (the console does, from these settings).

use super::schema::{CertificateCredential, OperatorMatch, SecretRef};
use crate::approval::ApproverSet;
use serde::Deserialize;
use std::time::Duration;

/// `console:` as written. Absent: no console listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// `host:port` of the console listener (its own port, never the gateway's).
    pub listen: String,
    /// Application (client) id of the console's app registration (a Web platform app).
    pub client_id: String,
    /// `env:NAME` or `file:PATH`. Exactly one of this and `certificate`.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// `private_key_jwt`, configured exactly like `app.certificate`.
    #[serde(default)]
    pub certificate: Option<CertificateCredential>,
    /// The redirect URI registered on the app, ending in `/auth/callback`, e.g.
    /// `https://passgate.example.com:8443/auth/callback`. Its origin is the console's public
    /// address: https sets `Secure` cookies; http is allowed only to a loopback host.
    pub redirect_uri: String,
    /// Who may search and export the audit trail; same shape as a policy's `operators`.
    #[serde(default)]
    pub auditors: OperatorMatch,
    /// A session unused this long ends, e.g. `15m` (1m..=12h). Default `15m`.
    #[serde(default = "default_idle")]
    pub session_idle_timeout: String,
    /// A session ends this long after sign-in however busy, e.g. `8h` (5m..=24h). Default `8h`.
    #[serde(default = "default_max_age")]
    pub session_max_age: String,
    /// Rows per page in audit search and history (10..=500). Default 50.
    #[serde(default = "default_page_size")]
    pub page_size: usize,
}

fn default_idle() -> String {
    "15m".into()
}
fn default_max_age() -> String {
    "8h".into()
}
fn default_page_size() -> usize {
    50
}

/// `console:` validated.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    pub listen: String,
    /// Lower-case GUID.
    pub client_id: String,
    pub client_secret: Option<SecretRef>,
    pub certificate: Option<CertificateCredential>,
    pub redirect_uri: String,
    /// `scheme://host[:port]` of `redirect_uri`: where browsers reach the console.
    pub public_origin: String,
    /// The public origin is https: cookies get `Secure` (and the `__Host-` name prefix).
    pub secure_cookies: bool,
    pub auditors: ApproverSet,
    pub idle_timeout: Duration,
    pub max_age: Duration,
    pub page_size: usize,
}
