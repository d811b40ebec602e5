//! The validated, resolved configuration the gateway runs on: ids lower-cased, cloud endpoints
//! filled in, limits parsed, policies compiled. Only `config::load` builds one; it holds secret
//! *references*, never secret values (those are resolved at start-up).

use super::schema::{AppCredentialConfig, AuditConfig, Config, GraphConfig, TlsConfig};
use crate::policy::PolicySettings;
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
    /// Lower-case GUID.
    pub tenant_id: String,
    pub endpoints: Endpoints,
    pub operator_auth: OperatorAuthSettings,
    /// `client_id` lower-cased; secrets still as `SecretRef`.
    pub app: AppCredentialConfig,
    pub graph: GraphConfig,
    pub audit: AuditConfig,
    /// In config order: the first policy that admits a request is the one recorded.
    pub policies: Vec<PolicySettings>,
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
