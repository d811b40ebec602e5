//! The YAML schema, as serde types. Every struct denies unknown fields: a misspelt key in a
//! security policy is an error, never a silently ignored line.

use serde::Deserialize;

/// Top level of a passgate config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Gateway listener.
    pub server: ServerConfig,
    /// Admin listener: `/metrics`, `/healthz`, `/readyz`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Which Microsoft cloud; fills in `endpoints` defaults (graph-notes §7).
    #[serde(default)]
    pub cloud: Cloud,
    /// Entra tenant id (GUID) that both operators and passgate's app belong to.
    pub tenant_id: String,
    /// Overrides for the cloud's endpoints (all optional).
    #[serde(default)]
    pub endpoints: EndpointOverrides,
    /// How operators' tokens are validated.
    pub operator_auth: OperatorAuthConfig,
    /// passgate's own privileged app registration (client credentials).
    pub app: AppCredentialConfig,
    /// Graph calls: timeouts and the device-facts cache.
    #[serde(default)]
    pub graph: GraphConfig,
    pub audit: AuditConfig,
    /// Where rate-limit state lives. Absent: in this process (lost on restart, not shared).
    #[serde(default)]
    pub state: Option<StateConfig>,
    /// Evaluated in order; the first policy that admits the request is the one recorded.
    pub policies: Vec<PolicyConfig>,
    /// Caps across policies: charged on every admission, whichever policy admits it, together
    /// with that policy's own limits (all-or-nothing). Same keys as a policy's `limits`.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The default webhook: break-glass uses, and new approval requests of policies without an
    /// `approval.notify` of their own.
    #[serde(default)]
    pub notify: Option<NotifyConfig>,
    /// The web console for approvers and auditors (docs/console.md). Absent: no console.
    #[serde(default)]
    pub console: Option<super::console::ConsoleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `host:port`, e.g. `0.0.0.0:8443`.
    pub listen: String,
    /// TLS for the gateway listener. Exactly one of `tls` and `plaintext: true` must be set.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish. Default 20.
    #[serde(default = "default_drain")]
    pub drain_timeout_seconds: u64,
    /// How often the config file is checked for changes (0 = only reload on SIGHUP). Default 5.
    #[serde(default = "default_watch")]
    pub config_watch_seconds: u64,
    /// Serve plain HTTP. Must be written out explicitly (sandbox, or behind a TLS-terminating
    /// sidecar on loopback); `passgate check` warns when it is on a non-loopback address.
    #[serde(default)]
    pub plaintext: bool,
    /// Connection hygiene; every key has a default.
    #[serde(default)]
    pub limits: ServerLimitsConfig,
    /// CIDRs of reverse proxies whose `X-Forwarded-For` is believed. Default: none (XFF ignored).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

fn default_drain() -> u64 {
    20
}

fn default_watch() -> u64 {
    5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` of the admin listener. Default `127.0.0.1:9090` (loopback only).
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Set to false to run without an admin listener.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            enabled: true,
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9090".into()
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// PEM CA bundle; when set, every client must present a certificate issued by it (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<String>,
    /// How often the files are re-read; a changed, valid set replaces the served one. Default 10.
    #[serde(default = "default_tls_reload")]
    pub reload_interval_seconds: u64,
}

fn default_tls_reload() -> u64 {
    10
}

/// Listener limits (slowloris, oversized heads, connection floods). Defaults suit an internal API
/// called by a service desk: few clients, tiny requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerLimitsConfig {
    /// Time allowed to receive a complete request head (and, for HTTP/1.1 keep-alive, to start
    /// the next one). Default 10.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_seconds: u64,
    /// Time allowed for the TLS handshake. Default 10.
    #[serde(default = "default_handshake_timeout")]
    pub tls_handshake_timeout_seconds: u64,
    /// Upper bound on one request head in bytes (HTTP/1.1 read buffer, HTTP/2 header list).
    /// Default 65536 (an Entra token with many groups is ~10 KiB); minimum 8192.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Upper bound on the number of header fields in an HTTP/1.1 request head. Default 64.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Connections served at once; further clients wait in the kernel's accept queue. Default 256
    /// (each served HTTP/1.1 connection costs ~45 KB; see docs/performance.md).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Requests being served at once on one listener, each in its own task (HTTP/2 streams
    /// included, and requests whose client has gone while their work goes on). Over it a
    /// request is answered `503 gateway_busy` at once. Default 1024.
    #[serde(default = "default_max_requests_in_flight")]
    pub max_requests_in_flight: usize,
    /// A connection with no request in flight for this long is closed. Default 60.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_seconds: u64,
    /// Concurrent HTTP/2 streams per connection. Default 16.
    #[serde(default = "default_h2_streams")]
    pub h2_max_concurrent_streams: u32,
    /// A response write that makes no progress for this long closes the connection (a client
    /// that does not read its answers). Default 10.
    #[serde(default = "default_write_timeout")]
    pub write_timeout_seconds: u64,
    /// A connection is closed at its next idle moment once it is this old. Default 300.
    #[serde(default = "default_max_connection_age")]
    pub max_connection_age_seconds: u64,
    /// Refusals before authentication (unknown route, body, bad or missing token) one client
    /// address may cause, as `N per DURATION`, each with its own audit record. Past it, such
    /// refusals are answered `429 unauthenticated_throttled` and summarised. Default `20 per 1s`.
    #[serde(default = "default_unauthenticated_per_client")]
    pub unauthenticated_per_client: String,
    /// How long throttled refusals of one client and reason are counted before their summary
    /// record is written. Default 60.
    #[serde(default = "default_unauthenticated_summary")]
    pub unauthenticated_summary_seconds: u64,
}

impl Default for ServerLimitsConfig {
    fn default() -> Self {
        ServerLimitsConfig {
            header_read_timeout_seconds: default_header_read_timeout(),
            tls_handshake_timeout_seconds: default_handshake_timeout(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
            max_connections: default_max_connections(),
            max_requests_in_flight: default_max_requests_in_flight(),
            idle_timeout_seconds: default_idle_timeout(),
            h2_max_concurrent_streams: default_h2_streams(),
            write_timeout_seconds: default_write_timeout(),
            max_connection_age_seconds: default_max_connection_age(),
            unauthenticated_per_client: default_unauthenticated_per_client(),
            unauthenticated_summary_seconds: default_unauthenticated_summary(),
        }
    }
}

fn default_unauthenticated_per_client() -> String {
    "20 per 1s".into()
}
fn default_unauthenticated_summary() -> u64 {
    60
}
fn default_header_read_timeout() -> u64 {
    10
}
fn default_handshake_timeout() -> u64 {
    10
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_headers() -> usize {
    64
}
fn default_max_connections() -> usize {
    256
}
fn default_max_requests_in_flight() -> usize {
    1024
}
fn default_idle_timeout() -> u64 {
    60
}
fn default_facts_max_entries() -> usize {
    10_000
}
fn default_facts_lookups() -> String {
    "60 per 1m".into()
}
fn default_h2_streams() -> u32 {
    16
}
fn default_write_timeout() -> u64 {
    10
}
fn default_max_connection_age() -> u64 {
    300
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cloud {
    #[default]
    Global,
    Usgov,
    UsgovDod,
    China,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointOverrides {
    /// Graph root, no version: `https://graph.microsoft.com`.
    pub graph: Option<String>,
    /// Login authority host: `https://login.microsoftonline.com`.
    pub authority: Option<String>,
    /// Token endpoint; default `{authority}/{tenant_id}/oauth2/v2.0/token`.
    pub token_url: Option<String>,
    /// OIDC discovery document; default `{authority}/{tenant_id}/v2.0/.well-known/openid-configuration`.
    pub oidc_discovery_url: Option<String>,
    /// Scope requested for the app token; default `{graph}/.default`.
    pub graph_scope: Option<String>,
    /// Extra PEM CA bundle trusted for outbound TLS (in addition to the webpki roots).
    pub extra_ca_file: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorAuthConfig {
    /// Accepted `aud` values: passgate API's client id (GUID) and/or App ID URI.
    pub audiences: Vec<String>,
    /// Accepted token versions: `"2.0"`, `"1.0"`. Default: both.
    #[serde(default = "default_token_versions")]
    pub token_versions: Vec<String>,
    /// JWS algorithms accepted. Default `[RS256]`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Accepted JOSE header `typ` values. Default `[JWT, at+jwt]`.
    #[serde(default = "default_typ")]
    pub token_types: Vec<String>,
    /// Clock skew tolerated on `exp`/`nbf`, seconds. Default 60.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// If set, delegated (user) tokens must carry this scope in `scp`.
    #[serde(default)]
    pub required_scope: Option<String>,
    /// v1 token issuer; default `https://sts.windows.net/{tenant_id}/` (global) or the cloud's.
    #[serde(default)]
    pub v1_issuer: Option<String>,
    /// Minimum seconds between two JWKS fetches triggered by an unknown `kid`. Default 60.
    #[serde(default = "default_jwks_refresh_floor")]
    pub jwks_refresh_floor_seconds: u64,
    /// Keys are refetched after this many seconds even without an unknown `kid`. Default 86400.
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age_seconds: u64,
}

fn default_token_versions() -> Vec<String> {
    vec!["2.0".into(), "1.0".into()]
}
fn default_algorithms() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_typ() -> Vec<String> {
    vec!["JWT".into(), "at+jwt".into()]
}
fn default_leeway() -> u64 {
    60
}
fn default_jwks_refresh_floor() -> u64 {
    60
}
fn default_jwks_max_age() -> u64 {
    86_400
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppCredentialConfig {
    /// Application (client) id of passgate's privileged app registration.
    pub client_id: String,
    /// Secret reference: `env:NAME` or `file:PATH`. Exactly one of this and `certificate`.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    #[serde(default)]
    pub certificate: Option<CertificateCredential>,
}

/// `private_key_jwt` client authentication (graph-notes §5).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateCredential {
    /// PEM certificate registered on the app.
    pub cert_file: String,
    /// PEM (PKCS#8) private key, as a secret reference (`file:PATH` or `env:NAME`).
    pub private_key: SecretRef,
    /// `ps256` (current Entra docs: PS256 + `x5t#S256`, default) or `rs256` (older MSAL: RS256 + SHA-1 `x5t`).
    #[serde(default)]
    pub assertion_format: AssertionFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AssertionFormat {
    #[default]
    Ps256,
    Rs256,
}

/// A reference to a secret, never the secret itself. `Inline` exists only for the embedded
/// sandbox (`passgate dev`) and cannot be written in YAML.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(String),
    Inline(String),
}

impl std::fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretRef::Env(n) => write!(f, "env:{n}"),
            SecretRef::File(p) => write!(f, "file:{p}"),
            SecretRef::Inline(_) => f.write_str("<inline secret>"),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Some(name) = s.strip_prefix("env:") {
            if !name.is_empty() {
                return Ok(SecretRef::Env(name.to_string()));
            }
        }
        if let Some(path) = s.strip_prefix("file:") {
            if !path.is_empty() {
                return Ok(SecretRef::File(path.to_string()));
            }
        }
        // Deliberately do not echo the value: it may be a pasted secret.
        Err(serde::de::Error::custom(
            "secrets must be references: write `env:VARIABLE_NAME` or `file:/path/to/secret`, never the secret itself",
        ))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphConfig {
    /// Timeout for the forwarded action, seconds. Default 30.
    #[serde(default = "default_action_timeout")]
    pub action_timeout_seconds: u64,
    /// Timeout for each read (facts, token, JWKS) call, seconds. Default 10.
    #[serde(default = "default_read_timeout")]
    pub read_timeout_seconds: u64,
    /// How long device facts are cached, seconds. Default 300. 0 disables caching.
    #[serde(default = "default_facts_ttl")]
    pub facts_cache_ttl_seconds: u64,
    /// Most device-facts cache entries kept. Default 10000.
    #[serde(default = "default_facts_max_entries")]
    pub facts_cache_max_entries: usize,
    /// Device lookups (with the app token) each operator may cause, as `N per DURATION`.
    /// Default `60 per 1m`.
    #[serde(default = "default_facts_lookups")]
    pub facts_lookups_per_operator: String,
    /// Refresh the app token this many seconds before it expires. Default 300.
    #[serde(default = "default_refresh_ahead")]
    pub token_refresh_ahead_seconds: u64,
    /// Most requests the action pipeline has in flight to Graph at once (device facts and
    /// forwards). Default 64.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// How long a request waits for one of those slots before it is refused, seconds. Default 5.
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout_seconds: u64,
}

impl Default for GraphConfig {
    fn default() -> Self {
        GraphConfig {
            action_timeout_seconds: default_action_timeout(),
            read_timeout_seconds: default_read_timeout(),
            facts_cache_ttl_seconds: default_facts_ttl(),
            facts_cache_max_entries: default_facts_max_entries(),
            facts_lookups_per_operator: default_facts_lookups(),
            token_refresh_ahead_seconds: default_refresh_ahead(),
            max_concurrent_requests: default_max_concurrent_requests(),
            queue_timeout_seconds: default_queue_timeout(),
        }
    }
}

fn default_max_concurrent_requests() -> usize {
    crate::graph::slots::DEFAULT_MAX_CONCURRENT
}
fn default_queue_timeout() -> u64 {
    crate::graph::slots::DEFAULT_QUEUE_TIMEOUT.as_secs()
}

fn default_action_timeout() -> u64 {
    30
}
fn default_read_timeout() -> u64 {
    10
}
fn default_facts_ttl() -> u64 {
    300
}
fn default_refresh_ahead() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// JSON Lines audit file; created if missing, appended to otherwise.
    pub path: String,
    /// Rotate before the file would grow past this many bytes (e.g. 104857600). Unset: never.
    #[serde(default)]
    pub rotate_max_bytes: Option<u64>,
    /// Rotate once the file's first record is this many seconds old (e.g. 86400). Unset: never.
    #[serde(default)]
    pub rotate_max_age_seconds: Option<u64>,
    /// Key for an HMAC-SHA256 keyed chain (`env:NAME` or `file:PATH`). Unset: plain SHA-256.
    #[serde(default)]
    pub hmac_key: Option<SecretRef>,
    /// Below this much free space on the audit file's filesystem `/readyz` fails (and the shipped
    /// alert fires), before a full disk refuses every request. Bytes; 0 turns the check off.
    /// Default 536870912 (512 MiB).
    #[serde(default = "default_audit_min_free_bytes")]
    pub min_free_bytes: u64,
}

fn default_audit_min_free_bytes() -> u64 {
    512 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Unique, stable name; recorded in audit and used as the rate-limit namespace.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Who may act. At least one list must be non-empty.
    pub operators: OperatorMatch,
    /// On which devices.
    pub devices: DeviceMatch,
    /// Rate limits; all that are set must admit the request.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Two-person approval: a second person must approve each use (see docs/policies.md).
    #[serde(default)]
    pub approval: Option<ApprovalConfig>,
    /// `enforce` (default) or `report`: a report-mode policy is evaluated on every request and
    /// its verdict recorded, but it never admits anything (trial a policy in production).
    #[serde(default)]
    pub mode: PolicyMode,
    /// A statement the operator gives in the `Passgate-Justification` header.
    #[serde(default)]
    pub justification: Option<JustificationConfig>,
    /// Let operators act on a device whose Intune primary user (`userId`) they are themselves.
    /// Default false: separation of duty.
    #[serde(default)]
    pub allow_own_device: bool,
    /// An emergency policy: needs `justification.required: true`, its own `limits` and
    /// `active_until`; every use is flagged, counted and alerted on.
    #[serde(default)]
    pub break_glass: bool,
    /// RFC 3339 time after which a break-glass policy admits nothing.
    #[serde(default)]
    pub active_until: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JustificationConfig {
    /// The header must be sent (non-empty). Default false.
    #[serde(default)]
    pub required: bool,
    /// Regular expression the whole header value must match when sent.
    #[serde(default)]
    pub pattern: Option<String>,
}

/// Whether a policy admits requests or only reports what it would have decided.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    #[default]
    Enforce,
    Report,
}

/// `approval:` of a policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalConfig {
    /// Who may approve; same shape as `operators`. At least one list must be non-empty.
    pub approvers: OperatorMatch,
    /// How long a granted approval can be used, e.g. `30m` (1m..=24h). Default `30m`.
    #[serde(default = "default_valid_for")]
    pub valid_for: String,
    /// How long a request waits for an approver, e.g. `24h` (1m..=30d). Default `24h`.
    #[serde(default = "default_pending_for")]
    pub pending_for: String,
    /// Where new pending requests are announced.
    #[serde(default)]
    pub notify: Option<NotifyConfig>,
}

fn default_valid_for() -> String {
    "30m".into()
}
fn default_pending_for() -> String {
    "24h".into()
}

/// A notification target. The webhook URL is a secret (it often embeds a token).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// `env:NAME` or `file:PATH` holding an https:// URL (http:// only to loopback).
    pub webhook: SecretRef,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorMatch {
    /// Object ids (`oid`) of users or service principals.
    #[serde(default)]
    pub users: Vec<String>,
    /// Entra group object ids, matched against the token's `groups` claim.
    #[serde(default)]
    pub groups: Vec<String>,
    /// App role values, matched against the token's `roles` claim.
    #[serde(default)]
    pub app_roles: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceMatch {
    /// Entra group object ids; the device must be a transitive member of at least one.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Must be written explicitly to allow every device; exclusive with `groups`.
    #[serde(default)]
    pub any_device: bool,
    /// Optional allow-list on Intune `operatingSystem` (case-insensitive). Absent = any platform.
    #[serde(default)]
    pub platforms: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// e.g. `"5 per 1h"`: at most 5 admitted per operator in any 1-hour window.
    #[serde(default)]
    pub per_operator: Option<String>,
    /// e.g. `"1 per 10m"` per managed device.
    #[serde(default)]
    pub per_device: Option<String>,
    /// e.g. `"100 per 1h"` across everyone under this policy.
    #[serde(default)]
    pub global: Option<String>,
}

/// Shared state for replicas. Only Redis for now; the block is required to name it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    pub redis: RedisConfig,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `rediss://` (TLS). Required unless `sentinel` is set. Must not
    /// carry a user name or password: use `username` and `password`.
    #[serde(default)]
    pub url: Option<String>,
    /// ACL user (Redis 6+). Absent: the `default` user.
    #[serde(default)]
    pub username: Option<String>,
    /// Secret reference (`env:NAME` or `file:PATH`), never inline.
    #[serde(default)]
    pub password: Option<SecretRef>,
    /// Extra PEM CA bundle trusted for `rediss://`, in addition to the webpki roots.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Prefix of every key passgate writes. Default `passgate`.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Upper bound on one round trip (script, PING, WAIT), milliseconds. Default 200.
    #[serde(default = "default_redis_timeout")]
    pub timeout_ms: u64,
    /// After each admission, `WAIT` for this many replicas to acknowledge it; fewer in time is
    /// `limits_unavailable`. Default 0 (asynchronous replication, no wait).
    #[serde(default)]
    pub min_replicas_ack: u32,
    /// Find the primary through Redis Sentinel instead of `url`.
    #[serde(default)]
    pub sentinel: Option<SentinelConfig>,
}

fn default_key_prefix() -> String {
    "passgate".into()
}
fn default_redis_timeout() -> u64 {
    200
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The name the Sentinels monitor the primary under.
    pub master_name: String,
    /// Sentinel addresses as URLs, e.g. `redis://10.0.0.5:26379` (`rediss://` for TLS; the
    /// primary is then reached with TLS too).
    pub nodes: Vec<String>,
}
