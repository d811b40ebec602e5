//! The validated, resolved configuration the gateway runs on: ids lower-cased, cloud endpoints
//! filled in, limits parsed, policies compiled. Only `config::load` builds one; it holds secret
//! *references*, never secret values (those are resolved at start-up).

use super::schema::{AppCredentialConfig, AuditConfig, Config, GraphConfig, TlsConfig};
use crate::policy::{Limit, PolicySettings};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Settings {
    /// The parsed file, as written (for `passgate check` and for anything not resolved here).
    pub raw: Config,
    /// Socket address to listen on, validated as `host:port`.
    pub listen: String,
    pub tls: Option<TlsConfig>,
    /// Admin listener address, `None` when `admin.enabled: false`.
    pub admin_listen: Option<String>,
    /// Listener hygiene and client-address settings, resolved.
    pub server: ServerSettings,
    /// Lower-case GUID.
    pub tenant_id: String,
    pub endpoints: Endpoints,
    pub operator_auth: OperatorAuthSettings,
    /// `client_id` lower-cased; secrets still as `SecretRef`.
    pub app: AppCredentialConfig,
    pub graph: GraphConfig,
    pub audit: AuditConfig,
    /// Where rate-limit state lives; `None` is this process's memory.
    pub state: Option<super::schema::RedisConfig>,
    /// In config order: the first policy that admits a request is the one recorded.
    pub policies: Vec<PolicySettings>,
    /// `mode: report` policies, in config order: evaluated and recorded, never admitting.
    pub report_policies: Vec<PolicySettings>,
    /// Approval rules by policy name (policies without `approval:` have none).
    pub approvals: std::collections::BTreeMap<String, crate::approval::ApprovalRule>,
    /// Top-level `limits:`: caps charged on every admission, whichever policy admits.
    pub caps: Vec<Limit>,
    /// The web console; `None` when the config has no `console:` block.
    pub console: Option<super::console::ConsoleSettings>,
}

/// Every URL passgate talks to, resolved from the cloud defaults and the overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Graph root without version and without trailing slash: `https://graph.microsoft.com`.
    pub graph: String,
    /// Login authority host, no trailing slash: `https://login.microsoftonline.com`.
    pub authority: String,
    pub token_url: String,
    pub oidc_discovery_url: String,
    /// Scope for the app-only token: `{graph}/.default` unless overridden.
    pub graph_scope: String,
    /// Expected `iss` of v1.0 operator tokens (trailing slash kept: it is compared exactly).
    pub v1_issuer: String,
    pub extra_ca_file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorAuthSettings {
    /// Accepted `aud` values; GUIDs lower-cased, App ID URIs as written.
    pub audiences: Vec<String>,
    pub accept_v1: bool,
    pub accept_v2: bool,
    /// Upper-case JWS algorithm names, a subset of RS256/384/512 and PS256/384/512.
    pub algorithms: Vec<String>,
    /// Accepted JOSE `typ` values, as written (compare case-insensitively: RFC 7515 §4.1.9).
    pub token_types: Vec<String>,
    pub leeway: Duration,
    pub required_scope: Option<String>,
    pub jwks_refresh_floor: Duration,
    pub jwks_max_age: Duration,
}

/// The `server:` block, validated: durations resolved, proxy CIDRs parsed.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// `server.plaintext: true` was written (and `tls` is absent).
    pub plaintext: bool,
    pub header_read_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_connections: usize,
    /// Request tasks one listener runs at once; over it, `503 gateway_busy` at once.
    pub max_requests_in_flight: usize,
    pub idle_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    /// A stalled response write closes the connection after this long.
    pub write_timeout: Duration,
    /// Connections are closed at their next idle moment past this age.
    pub max_connection_age: Duration,
    /// How often TLS files are re-read.
    pub tls_reload_interval: Duration,
    pub trusted_proxies: Vec<crate::config::cidr::Cidr>,
    /// Refusals before authentication each client may cause per window, individually audited.
    pub unauthenticated_per_client: (u32, Duration),
    /// How long throttled refusals are counted before their summary record is written.
    pub unauthenticated_summary: Duration,
}

impl Default for ServerSettings {
    /// The schema defaults, for plain HTTP (used by tests that build a listener by hand).
    fn default() -> Self {
        let l = super::schema::ServerLimitsConfig::default();
        ServerSettings {
            plaintext: true,
            header_read_timeout: Duration::from_secs(l.header_read_timeout_seconds),
            tls_handshake_timeout: Duration::from_secs(l.tls_handshake_timeout_seconds),
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            max_connections: l.max_connections,
            max_requests_in_flight: l.max_requests_in_flight,
            idle_timeout: Duration::from_secs(l.idle_timeout_seconds),
            h2_max_concurrent_streams: l.h2_max_concurrent_streams,
            write_timeout: Duration::from_secs(l.write_timeout_seconds),
            max_connection_age: Duration::from_secs(l.max_connection_age_seconds),
            tls_reload_interval: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
            unauthenticated_per_client: super::load::parse_rate(&l.unauthenticated_per_client)
                .unwrap_or((20, Duration::from_secs(1))),
            unauthenticated_summary: Duration::from_secs(l.unauthenticated_summary_seconds),
        }
    }
}
