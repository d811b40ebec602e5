//! Loads a config file: parse (serde_yaml, unknown keys refused), then validate and resolve into
//! [`Settings`]. Every error names the file, line and column of the offending key and says how to
//! fix it. Validation refuses anything ambiguous and never echoes a secret value.

use super::locate::{KeyPath, Locator, Pos};
use super::schema::{
    Cloud, Config, DeviceMatch, LimitsConfig, OperatorMatch, PolicyConfig, SecretRef,
};
use super::settings::{Endpoints, OperatorAuthSettings, ServerSettings, Settings};
use crate::policy::{BreakGlass, JustificationRule, Limit, LimitScope, Pattern, PolicySettings};
use std::collections::{BTreeSet, HashMap};
use std::ops::RangeInclusive;
use std::time::Duration;

mod console;
pub use console::CALLBACK_PATH;

/// Smallest accepted `audit.rotate_max_bytes`.
const MIN_AUDIT_ROTATE_BYTES: u64 = 65_536;
/// Smallest accepted `audit.rotate_max_age_seconds`.
const MIN_AUDIT_ROTATE_AGE_SECONDS: u64 = 60;

/// A config problem, located when possible. Display is exactly
/// `{origin}:{line}:{column}: {message}` (or `{origin}: {message}`), plus `\n  hint: {hint}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{}:{l}:{c}: {}", self.origin, self.message)?,
            (Some(l), None) => write!(f, "{}:{l}: {}", self.origin, self.message)?,
            _ => write!(f, "{}: {}", self.origin, self.message)?,
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and validates a config file.
pub fn load_file(path: &std::path::Path) -> Result<Settings, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        line: None,
        column: None,
        message: format!("cannot read the config file: {e}"),
        hint: Some(
            "pass the path of a readable YAML file, e.g. `passgate check config/production.yaml`"
                .into(),
        ),
    })?;
    load_str(&text, &origin)
}

/// Parses and validates config text; `origin` names it in errors (usually the file path).
pub fn load_str(text: &str, origin: &str) -> Result<Settings, ConfigError> {
    let has_content = text.lines().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "---"
    });
    if !has_content {
        return Err(ConfigError {
            origin: origin.to_string(),
            line: None,
            column: None,
            message: "the config is empty".into(),
            hint: Some("start from config/production.example.yaml".into()),
        });
    }
    let raw: Config = serde_yaml::from_str(text).map_err(|e| yaml_error(&e, origin, text))?;
    let v = Validator {
        origin,
        loc: Locator::new(text),
    };
    v.settings(raw)
}

/// Turns a serde_yaml error into a located ConfigError with a hint.
fn yaml_error(e: &serde_yaml::Error, origin: &str, text: &str) -> ConfigError {
    let full = e.to_string();
    let mut loc = e.location().map(|l| (l.line(), l.column()));
    // serde_yaml repeats the problem's location in the text; it goes in our prefix instead.
    let message = match loc {
        Some((l, c)) => full.replacen(&format!(" at line {l} column {c}"), "", 1),
        None => full,
    };
    let hint = if message.contains("unknown field") {
        Some("check the spelling: passgate refuses keys it does not know, so a typo cannot silently change a policy")
    } else if message.contains("missing field") {
        Some("add the missing key at this level (see config/production.example.yaml)")
    } else if message.contains("unknown variant") {
        Some("`cloud` is one of: global, usgov, usgov-dod, china")
    } else if message.contains("invalid type") {
        Some("check the value's type: lists are written `[a, b]` or as `- item` lines, text may be quoted")
    } else {
        None
    };
    if message.contains("secrets must be references") {
        // serde_yaml places this custom error on the enclosing mapping; point at the value.
        if let Some(p) = literal_secret_position(text) {
            loc = Some((p.line, p.column));
        }
    }
    ConfigError {
        origin: origin.to_string(),
        line: loc.map(|l| l.0),
        column: loc.map(|l| l.1),
        message,
        hint: hint.map(str::to_string),
    }
}

/// Where a secret key holds something other than an `env:`/`file:` reference.
fn literal_secret_position(text: &str) -> Option<Pos> {
    let loc = Locator::new(text);
    let app = KeyPath::root().key("app");
    [
        app.key("client_secret"),
        app.key("certificate").key("private_key"),
    ]
    .iter()
    .find_map(|path| {
        let v = loc.value_text(path)?;
        let v = v.trim_matches(|c| c == '"' || c == '\'');
        let is_ref = ["env:", "file:"]
            .iter()
            .any(|p| v.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
        (!is_ref).then(|| loc.value(path)).flatten()
    })
}

struct Validator<'a> {
    origin: &'a str,
    loc: Locator<'a>,
}

type R<T> = Result<T, ConfigError>;

const ALGORITHMS: [&str; 6] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"];
const MAX_LEEWAY_SECONDS: u64 = 300;
/// Longest device-facts cache TTL: a device removed from its group must stop being recoverable
/// within this long.
pub const MAX_FACTS_CACHE_TTL_SECONDS: u64 = 3600;
/// Shortest JWKS max age: below it, every unauthenticated request can make passgate fetch keys.
pub const MIN_JWKS_MAX_AGE_SECONDS: u64 = 60;
/// JOSE `typ` values an Entra access token can carry.
const TOKEN_TYPES: [&str; 3] = ["JWT", "at+jwt", "application/at+jwt"];
/// Microsoft Graph's own app id and resource URIs (all clouds): a token for Graph is not a token
/// for passgate, and accepting one would let any Graph token an operator holds act at passgate.
const GRAPH_AUDIENCES: [&str; 6] = [
    "00000003-0000-0000-c000-000000000000",
    "https://graph.microsoft.com",
    "https://graph.microsoft.us",
    "https://dod-graph.microsoft.us",
    "https://microsoftgraph.chinacloudapi.cn",
    "https://canary.graph.microsoft.com",
];
const MAX_WINDOW: Duration = Duration::from_secs(31 * 86_400);

impl Validator<'_> {
    /// An error at `path`; `at_value` points at the value when it sits on the key's line.
    fn err(&self, path: &KeyPath, at_value: bool, message: String, hint: &str) -> ConfigError {
        let pos: Option<Pos> = if at_value {
            self.loc.value(path)
        } else {
            self.loc.key(path)
        };
        ConfigError {
            origin: self.origin.to_string(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            message: format!("{path}: {message}"),
            hint: (!hint.is_empty()).then(|| hint.to_string()),
        }
    }

    /// [`Validator::err`], placed at the nearest enclosing key the locator finds when `path`
    /// itself is not on a line of its own (e.g. inside a flow mapping `{required: true, …}`).
    fn err_near(&self, path: &KeyPath, at_value: bool, message: String, hint: &str) -> ConfigError {
        let mut e = self.err(path, at_value, message, hint);
        let mut up = path.clone();
        while e.line.is_none() && up.0.pop().is_some() {
            if let Some(p) = self.loc.key(&up) {
                e.line = Some(p.line);
                e.column = Some(p.column);
            }
        }
        e
    }

    fn settings(&self, raw: Config) -> R<Settings> {
        let root = KeyPath::root();
        let server = root.key("server");

        let listen = raw.server.listen.trim().to_string();
        if listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(self.err(
                &server.key("listen"),
                true,
                format!("`{listen}` is not a socket address"),
                "write an IP address and port, e.g. `0.0.0.0:8443`, `127.0.0.1:8080` or `[::]:8443` (host names are not resolved here)",
            ));
        }
        let server_settings = self.server(&raw)?;

        let tenant_id = self.guid(&root.key("tenant_id"), &raw.tenant_id, "the Directory (tenant) ID from the Entra admin center (Overview page); not the domain name")?;

        let endpoints = self.endpoints(&raw, &tenant_id)?;
        let operator_auth = self.operator_auth(&raw)?;

        let mut app = raw.app.clone();
        let ap = root.key("app");
        // Not echoed: a client secret pasted into the wrong key must not end up in a log.
        app.client_id = crate::text::guid(raw.app.client_id.trim()).ok_or_else(|| {
            self.err(
                &ap.key("client_id"),
                true,
                "is not a GUID (value not shown: it may be a misplaced secret)".into(),
                "write the Application (client) ID of passgate's privileged app registration: 8-4-4-4-12 hex digits",
            )
        })?;
        match (&raw.app.client_secret, &raw.app.certificate) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    &ap.key("certificate"),
                    false,
                    "both `client_secret` and `certificate` are set".into(),
                    "keep exactly one credential: a certificate (recommended for production) or a client secret",
                ))
            }
            (None, None) => {
                return Err(self.err(
                    &ap,
                    false,
                    "no credential: set `client_secret` or `certificate`".into(),
                    "e.g. `client_secret: env:PASSGATE_CLIENT_SECRET`, or a `certificate:` block with `cert_file` and `private_key: file:/path/key.pem`",
                ))
            }
            _ => {}
        }
        if let Some(c) = &raw.app.certificate {
            self.non_empty(
                &ap.key("certificate").key("cert_file"),
                &c.cert_file,
                "the PEM certificate registered on the app",
            )?;
        }

        let gp = root.key("graph");
        if raw.graph.action_timeout_seconds == 0 {
            return Err(self.err(
                &gp.key("action_timeout_seconds"),
                true,
                "must be at least 1".into(),
                "a zero timeout would fail every forwarded action; the default is 30",
            ));
        }
        self.bounded(
            &gp.key("max_concurrent_requests"),
            raw.graph.max_concurrent_requests,
            1..=10_000,
            "the default is 64; requests over it wait for a slot (graph.queue_timeout_seconds)",
        )?;
        self.bounded(
            &gp.key("queue_timeout_seconds"),
            raw.graph.queue_timeout_seconds,
            1..=300,
            "the default is 5; a request waiting longer for a slot to Graph is refused upstream_busy",
        )?;
        if raw.graph.read_timeout_seconds == 0 {
            return Err(self.err(
                &gp.key("read_timeout_seconds"),
                true,
                "must be at least 1".into(),
                "a zero timeout would fail every device-facts read; the default is 10",
            ));
        }

        self.non_empty(
            &root.key("audit").key("path"),
            &raw.audit.path,
            "the JSON Lines audit file, e.g. /var/lib/passgate/audit.jsonl",
        )?;
        self.audit_rotation(&raw.audit)?;
        if let Err((message, hint)) = parse_rate(&raw.graph.facts_lookups_per_operator) {
            return Err(self.err(
                &root.key("graph").key("facts_lookups_per_operator"),
                true,
                message,
                &hint,
            ));
        }
        self.bounded(
            &root.key("graph").key("facts_cache_max_entries"),
            raw.graph.facts_cache_max_entries,
            1..=1_000_000,
            "the default is 10000",
        )?;
        if raw.graph.facts_cache_ttl_seconds > MAX_FACTS_CACHE_TTL_SECONDS {
            return Err(self.err(&root.key("graph").key("facts_cache_ttl_seconds"), true, format!("{} s is more than the {MAX_FACTS_CACHE_TTL_SECONDS} s allowed", raw.graph.facts_cache_ttl_seconds), "a device removed from its group stays recoverable for this long; the default is 300"));
        }

        let (policies, report_policies) = self.policies(&raw.policies)?;
        let approvals = self.approvals(&raw.policies)?;
        if let Some(SecretRef::Inline(_)) = raw.notify.as_ref().map(|n| &n.webhook) {
            return Err(self.err(
                &root.key("notify").key("webhook"),
                true,
                "the webhook URL must not be written inline".into(),
                "write env:NAME or file:PATH: the URL usually carries a token",
            ));
        }
        let caps = self.limits(&root.key("limits"), &raw.limits)?;
        let state = match &raw.state {
            Some(st) => Some(self.redis(&root.key("state").key("redis"), &st.redis)?),
            None => None,
        };

        let admin_listen = if raw.admin.enabled {
            let a = raw.admin.listen.trim().to_string();
            if a.parse::<std::net::SocketAddr>().is_err() {
                return Err(self.err(
                    &root.key("admin").key("listen"),
                    true,
                    format!("`{a}` is not a socket address"),
                    "write host:port with an IP address, e.g. 127.0.0.1:9090 (loopback) or 0.0.0.0:9090 inside a pod",
                ));
            }
            Some(a)
        } else {
            None
        };

        let console = match &raw.console {
            Some(c) => Some(self.console(c)?),
            None => None,
        };
        if let Some(c) = &console {
            // Port 0 (any free port) never clashes.
            let clash = !c.listen.ends_with(":0")
                && [Some(&listen), admin_listen.as_ref()]
                    .into_iter()
                    .flatten()
                    .any(|a| *a == c.listen);
            if clash {
                return Err(self.err(
                    &root.key("console").key("listen"),
                    true,
                    format!(
                        "`{}` is already the gateway's or the admin listener's address",
                        c.listen
                    ),
                    "give the console a port of its own, e.g. 8443 (gateway) and 8444 (console)",
                ));
            }
        }

        Ok(Settings {
            console,
            listen,
            admin_listen,
            tls: raw.server.tls.clone(),
            server: server_settings,
            tenant_id,
            endpoints,
            operator_auth,
            app,
            graph: raw.graph.clone(),
            audit: raw.audit.clone(),
            policies,
            report_policies,
            approvals,
            caps,
            state,
            raw,
        })
    }

    fn endpoints(&self, raw: &Config, tenant: &str) -> R<Endpoints> {
        let ep = KeyPath::root().key("endpoints");
        let o = &raw.endpoints;
        // graph-notes §7. China's Entra host per the Entra docs (login.chinacloudapi.cn is an alias).
        let (authority_default, graph_default) = match raw.cloud {
            Cloud::Global => (
                "https://login.microsoftonline.com",
                "https://graph.microsoft.com",
            ),
            Cloud::Usgov => (
                "https://login.microsoftonline.us",
                "https://graph.microsoft.us",
            ),
            Cloud::UsgovDod => (
                "https://login.microsoftonline.us",
                "https://dod-graph.microsoft.us",
            ),
            Cloud::China => (
                "https://login.partner.microsoftonline.cn",
                "https://microsoftgraph.chinacloudapi.cn",
            ),
        };
        let root_url = |key: &str, v: &Option<String>, default: &str| -> R<String> {
            match v {
                Some(s) => Ok(self.url(&ep.key(key), s)?.trim_end_matches('/').to_string()),
                None => Ok(default.to_string()),
            }
        };
        let graph = root_url("graph", &o.graph, graph_default)?;
        let authority = root_url("authority", &o.authority, authority_default)?;
        let exact_url = |key: &str, v: &Option<String>, default: String| -> R<String> {
            match v {
                Some(s) => self.url(&ep.key(key), s),
                None => Ok(default),
            }
        };
        let token_url = exact_url(
            "token_url",
            &o.token_url,
            format!("{authority}/{tenant}/oauth2/v2.0/token"),
        )?;
        let oidc_discovery_url = exact_url(
            "oidc_discovery_url",
            &o.oidc_discovery_url,
            format!("{authority}/{tenant}/v2.0/.well-known/openid-configuration"),
        )?;
        let graph_scope = match &o.graph_scope {
            Some(s) => {
                self.non_empty(
                    &ep.key("graph_scope"),
                    s,
                    "the scope for the app-only token, e.g. https://graph.microsoft.com/.default",
                )?;
                s.trim().to_string()
            }
            None => format!("{graph}/.default"),
        };
        // v1 tokens carry the cloud's STS issuer. Global's is documented and verified against a
        // decoded sample (graph-notes §6). China's (sts.chinacloudapi.cn) and US Gov's
        // (login.microsoftonline.us/{tid}/) follow MSAL's instance metadata but are UNVERIFIED
        // against real tokens: operators in those clouds should confirm and set `v1_issuer`.
        let v1_default = match raw.cloud {
            Cloud::Global => format!("https://sts.windows.net/{tenant}/"),
            Cloud::China => format!("https://sts.chinacloudapi.cn/{tenant}/"),
            Cloud::Usgov | Cloud::UsgovDod => format!("https://login.microsoftonline.us/{tenant}/"),
        };
        let v1_issuer = match &raw.operator_auth.v1_issuer {
            Some(s) => self.url(&KeyPath::root().key("operator_auth").key("v1_issuer"), s)?,
            None => v1_default,
        };
        let extra_ca_file = match &o.extra_ca_file {
            Some(f) => {
                self.non_empty(
                    &ep.key("extra_ca_file"),
                    f,
                    "a PEM bundle of extra CA certificates for outbound TLS",
                )?;
                Some(f.trim().to_string())
            }
            None => None,
        };
        Ok(Endpoints {
            graph,
            authority,
            token_url,
            oidc_discovery_url,
            graph_scope,
            v1_issuer,
            extra_ca_file,
        })
    }

    fn operator_auth(&self, raw: &Config) -> R<OperatorAuthSettings> {
        let oa = &raw.operator_auth;
        let p = KeyPath::root().key("operator_auth");

        let ap = p.key("audiences");
        if oa.audiences.is_empty() {
            return Err(self.err(&ap, false, "no audience: every operator token would be refused".into(), "list passgate API's Application (client) ID and/or its Application ID URI, e.g. [\"api://passgate\"]"));
        }
        let mut audiences = Vec::new();
        for (i, a) in oa.audiences.iter().enumerate() {
            self.non_empty(
                &ap.index(i),
                a,
                "an Application (client) ID or Application ID URI",
            )?;
            let a = a.trim();
            let bare = a.trim_end_matches('/').to_ascii_lowercase();
            if GRAPH_AUDIENCES.contains(&bare.as_str()) {
                return Err(self.err(&ap.index(i), true, format!("`{a}` is Microsoft Graph itself, not passgate's API"), "a token for Graph would then be accepted as an operator token; list passgate API's own Application (client) ID or Application ID URI"));
            }
            audiences.push(crate::text::guid(a).unwrap_or_else(|| a.to_string()));
        }

        let vp = p.key("token_versions");
        if oa.token_versions.is_empty() {
            return Err(self.err(
                &vp,
                false,
                "no token version: every operator token would be refused".into(),
                "write [\"2.0\", \"1.0\"] or a subset",
            ));
        }
        let (mut accept_v1, mut accept_v2) = (false, false);
        for (i, v) in oa.token_versions.iter().enumerate() {
            match v.trim() {
                "1.0" => accept_v1 = true,
                "2.0" => accept_v2 = true,
                other => return Err(self.err(
                    &vp.index(i),
                    true,
                    format!("`{other}` is not a token version"),
                    "token versions are \"1.0\" and \"2.0\" (quote them so YAML keeps the \".0\")",
                )),
            }
        }

        let algp = p.key("algorithms");
        if oa.algorithms.is_empty() {
            return Err(self.err(
                &algp,
                false,
                "no algorithm: every operator token would be refused".into(),
                "Entra ID signs access tokens with RS256: write [RS256]",
            ));
        }
        let mut algorithms = Vec::new();
        for (i, a) in oa.algorithms.iter().enumerate() {
            let up = a.trim().to_ascii_uppercase();
            if up == "NONE" {
                return Err(self.err(&algp.index(i), true, "`none` is never accepted".into(), "`none` means unsigned tokens: anyone could write one naming any operator. Entra ID signs with RS256"));
            }
            if up.starts_with("HS") {
                return Err(self.err(&algp.index(i), true, format!("`{}` is a shared-secret (HMAC) algorithm and is never accepted", a.trim()), "Entra ID signs access tokens with RSA keys (RS256); accepting HS* would let a published RSA public key be used as an HMAC secret to forge tokens"));
            }
            if !ALGORITHMS.contains(&up.as_str()) {
                return Err(self.err(
                    &algp.index(i),
                    true,
                    format!("`{}` is not a supported algorithm", a.trim()),
                    "supported: RS256, RS384, RS512, PS256, PS384, PS512 (Entra ID uses RS256)",
                ));
            }
            if !algorithms.contains(&up) {
                algorithms.push(up);
            }
        }

        let tp = p.key("token_types");
        if oa.token_types.is_empty() {
            return Err(self.err(
                &tp,
                false,
                "no token type: every operator token would be refused".into(),
                "Entra ID access tokens carry `typ: JWT`; write [JWT, at+jwt]",
            ));
        }
        let mut token_types = Vec::new();
        for (i, t) in oa.token_types.iter().enumerate() {
            self.non_empty(&tp.index(i), t, "a JOSE `typ` value such as JWT or at+jwt")?;
            let Some(known) = TOKEN_TYPES
                .iter()
                .find(|k| k.eq_ignore_ascii_case(t.trim()))
            else {
                return Err(self.err(&tp.index(i), true, format!("`{}` is not a type an Entra access token carries", t.trim()), "Entra ID access tokens carry `typ: JWT`; the allowed values are JWT, at+jwt and application/at+jwt"));
            };
            token_types.push(known.to_string());
        }

        if oa.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(self.err(&p.key("leeway_seconds"), true, format!("{} s of clock skew is more than the {MAX_LEEWAY_SECONDS} s allowed", oa.leeway_seconds), "leeway lets expired tokens through; fix the clock (NTP) instead. The default is 60"));
        }
        if oa.jwks_max_age_seconds < MIN_JWKS_MAX_AGE_SECONDS {
            return Err(self.err(&p.key("jwks_max_age_seconds"), true, format!("{} s is below the {MIN_JWKS_MAX_AGE_SECONDS} s minimum", oa.jwks_max_age_seconds), "a short max age lets every unauthenticated request make passgate fetch Entra's keys; the default is 86400"));
        }
        let required_scope = match &oa.required_scope {
            Some(s) => {
                let t = s.trim();
                if t.is_empty() || t.contains(char::is_whitespace) {
                    return Err(self.err(&p.key("required_scope"), true, "must be one scope name".into(), "write the scope value exactly as exposed by passgate's API, e.g. `Passgate.Recover`"));
                }
                Some(t.to_string())
            }
            None => None,
        };
        Ok(OperatorAuthSettings {
            audiences,
            accept_v1,
            accept_v2,
            algorithms,
            token_types,
            leeway: Duration::from_secs(oa.leeway_seconds),
            required_scope,
            jwks_refresh_floor: Duration::from_secs(oa.jwks_refresh_floor_seconds),
            jwks_max_age: Duration::from_secs(oa.jwks_max_age_seconds),
        })
    }

    /// The enforced policies and the `mode: report` ones, each in config order.
    #[allow(clippy::type_complexity)]
    fn policies(&self, raw: &[PolicyConfig]) -> R<(Vec<PolicySettings>, Vec<PolicySettings>)> {
        let pp = KeyPath::root().key("policies");
        if raw.is_empty() {
            return Err(self.err(
                &pp,
                false,
                "no policy: passgate would refuse every request".into(),
                "add at least one policy with `name`, `operators` and `devices`",
            ));
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::new();
        let mut report = Vec::new();
        for (i, p) in raw.iter().enumerate() {
            let path = pp.index(i);
            let np = path.key("name");
            let name = p.name.trim();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(self.err(&np, true, format!("`{name}` is not a valid policy name"), "use letters, digits, '.', '_' and '-' only, e.g. `helpdesk-windows-phone`: the name appears in audit records and metrics"));
            }
            // Case-insensitive: two names differing only in case would read as one in audit.
            if let Some(first) = seen.insert(name.to_ascii_lowercase(), i) {
                let at = self.loc.key(&pp.index(first).key("name"));
                let where_ = at
                    .map(|p| format!(" (line {})", p.line))
                    .unwrap_or_default();
                return Err(self.err(
                    &np,
                    true,
                    format!("policy name `{name}` is already used by policies[{first}]{where_}"),
                    "policy names must be unique: they key the rate limits and the audit trail",
                ));
            }
            let compiled = self.policy(&path, name, p)?;
            if p.mode == super::schema::PolicyMode::Report {
                if p.approval.is_some() {
                    return Err(self.err(&path.key("mode"), true, format!("report-mode policy `{name}` has an `approval:` block"), "a report-mode policy never admits, so nobody could approve anything under it; remove `approval:` or `mode: report`"));
                }
                report.push(compiled);
                continue;
            }
            out.push(compiled);
        }
        Ok((out, report))
    }

    fn policy(&self, path: &KeyPath, name: &str, p: &PolicyConfig) -> R<PolicySettings> {
        let (users, groups, app_roles) =
            self.operators(&path.key("operators"), name, &p.operators)?;
        let (device_groups, any_device, platforms) =
            self.devices(&path.key("devices"), name, &p.devices)?;
        let limits = self.limits(&path.key("limits"), &p.limits)?;
        let justification = match &p.justification {
            Some(j) => Some(self.justification(&path.key("justification"), name, j)?),
            None => None,
        };
        let break_glass = self.break_glass(path, name, p, justification.as_ref(), &limits)?;
        Ok(PolicySettings {
            name: name.to_string(),
            description: p.description.clone(),
            users,
            groups,
            app_roles,
            device_groups,
            any_device,
            platforms,
            limits,
            justification,
            allow_own_device: p.allow_own_device,
            break_glass,
        })
    }

    /// A number within `range`, or a located error ("N is outside A..=B") with `hint`.
    fn bounded<T>(&self, at: &KeyPath, value: T, range: RangeInclusive<T>, hint: &str) -> R<()>
    where
        T: PartialOrd + std::fmt::Display,
    {
        if range.contains(&value) {
            return Ok(());
        }
        Err(self.err(
            at,
            true,
            format!("{value} is outside {}..={}", range.start(), range.end()),
            hint,
        ))
    }

    /// A duration (`30m`, `24h`) within `min..=max`, or a located error with `hint`.
    fn bounded_duration(
        &self,
        at: &KeyPath,
        text: &str,
        min: Duration,
        max: Duration,
        hint: &str,
    ) -> R<Duration> {
        let d = parse_duration(text).map_err(|(m, h)| self.err(at, true, m, &h))?;
        if d < min || d > max {
            return Err(self.err(
                at,
                true,
                format!(
                    "`{}` is outside {}..={}",
                    text.trim(),
                    show_duration(min),
                    show_duration(max)
                ),
                hint,
            ));
        }
        Ok(d)
    }

    /// Each policy's `approval:` block, by policy name.
    fn approvals(
        &self,
        raw: &[PolicyConfig],
    ) -> R<std::collections::BTreeMap<String, crate::approval::ApprovalRule>> {
        let mut out = std::collections::BTreeMap::new();
        for (i, p) in raw.iter().enumerate() {
            let Some(a) = &p.approval else { continue };
            let path = KeyPath::root().key("policies").index(i).key("approval");
            let ap = path.key("approvers");
            let o = &a.approvers;
            if o.users.is_empty() && o.groups.is_empty() && o.app_roles.is_empty() {
                return Err(self.err(&ap, false, format!("policy `{}` names no approvers", p.name.trim()), "list at least one of `users` (object ids), `groups` (group object ids) or `app_roles` (app role values) who may approve"));
            }
            let (users, groups, app_roles) = self.operators(&ap, p.name.trim(), o)?;
            let bounded = |key: &str, text: &str, min: Duration, max: Duration, what: &str| {
                self.bounded_duration(&path.key(key), text, min, max, what)
            };
            let valid_for = bounded(
                "valid_for",
                &a.valid_for,
                Duration::from_secs(60),
                Duration::from_secs(86_400),
                "how long a granted approval can be used; the default is 30m",
            )?;
            let pending_for = bounded(
                "pending_for",
                &a.pending_for,
                Duration::from_secs(60),
                Duration::from_secs(30 * 86_400),
                "how long a request waits for an approver; the default is 24h",
            )?;
            if let Some(n) = &a.notify {
                if let SecretRef::Inline(_) = n.webhook {
                    return Err(self.err(
                        &path.key("notify").key("webhook"),
                        true,
                        "the webhook URL must not be written inline".into(),
                        "write env:NAME or file:PATH: the URL usually carries a token",
                    ));
                }
            }
            out.insert(
                p.name.trim().to_string(),
                crate::approval::ApprovalRule {
                    approvers: crate::approval::ApproverSet {
                        users,
                        groups,
                        app_roles,
                    },
                    valid_for,
                    pending_for,
                    webhook: a.notify.as_ref().map(|n| n.webhook.clone()),
                },
            );
        }
        Ok(out)
    }

    /// A `limits:` block (a policy's, or the top-level caps): `"N per DURATION"` per scope.
    fn limits(&self, lp: &KeyPath, l: &LimitsConfig) -> R<Vec<Limit>> {
        let mut limits = Vec::new();
        for (key, scope, v) in [
            ("per_operator", LimitScope::PerOperator, &l.per_operator),
            ("per_device", LimitScope::PerDevice, &l.per_device),
            ("global", LimitScope::Global, &l.global),
        ] {
            if let Some(text) = v {
                let (count, window) =
                    parse_rate(text).map_err(|(m, h)| self.err_near(&lp.key(key), true, m, &h))?;
                limits.push(Limit {
                    scope,
                    count,
                    window,
                });
            }
        }
        Ok(limits)
    }

    /// `justification:`: `required` and/or a `pattern`, compiled here so a bad one is a config
    /// error, never a request-time surprise.
    fn justification(
        &self,
        path: &KeyPath,
        name: &str,
        j: &super::schema::JustificationConfig,
    ) -> R<JustificationRule> {
        if !j.required && j.pattern.is_none() {
            return Err(self.err_near(path, false, format!("policy `{name}` has a `justification` block that asks for nothing"), "write `required: true` (the Passgate-Justification header must be sent) and/or a `pattern` its value must match, or remove the block"));
        }
        let pattern = match &j.pattern {
            Some(text) => Some(Pattern::new(text).map_err(|e| {
                self.err_near(
                    &path.key("pattern"),
                    true,
                    e.to_string(),
                    "a regular expression (Rust `regex` syntax: no look-around, no backreferences) that the WHOLE header value must match — passgate anchors it, e.g. `(INC|CHG)[0-9]{7}`; quote it in YAML",
                )
            })?),
            None => None,
        };
        Ok(JustificationRule {
            required: j.required,
            pattern,
        })
    }

    /// `break_glass: true` needs a required justification, limits of its own and `active_until`;
    /// `active_until` means nothing on any other policy.
    fn break_glass(
        &self,
        path: &KeyPath,
        name: &str,
        p: &PolicyConfig,
        justification: Option<&JustificationRule>,
        limits: &[Limit],
    ) -> R<Option<BreakGlass>> {
        let bp = path.key("break_glass");
        let ap = path.key("active_until");
        if !p.break_glass {
            if p.active_until.is_some() {
                return Err(self.err_near(&ap, false, format!("policy `{name}` sets `active_until` but is not a break-glass policy"), "`active_until` only applies with `break_glass: true`; remove it, or mark the policy as break-glass"));
            }
            return Ok(None);
        }
        if !justification.is_some_and(|j| j.required) {
            return Err(self.err_near(&bp, false, format!("break-glass policy `{name}` does not require a justification"), "add `justification: {required: true, pattern: \"...\"}`: every emergency use must say why (e.g. the incident number)"));
        }
        if limits.is_empty() {
            return Err(self.err_near(&bp, false, format!("break-glass policy `{name}` has no limits of its own"), "add `limits:` (e.g. `per_operator: \"2 per 1d\"`, `global: \"5 per 1d\"`): an emergency policy must still be bounded"));
        }
        let Some(text) = &p.active_until else {
            return Err(self.err_near(&bp, false, format!("break-glass policy `{name}` has no `active_until`"), "add `active_until: \"2026-12-01T18:00:00Z\"` (RFC 3339): the policy admits nothing after it, so a forgotten emergency policy closes by itself"));
        };
        let t = text.trim();
        let active_until = chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| {
                self.err_near(
                    &ap,
                    true,
                    format!("`{t}` is not an RFC 3339 time: {e}"),
                    "write a date, time and zone, e.g. \"2026-12-01T18:00:00Z\" or \"2026-12-01T19:00:00+01:00\"",
                )
            })?
            .with_timezone(&chrono::Utc);
        Ok(Some(BreakGlass { active_until }))
    }

    #[allow(clippy::type_complexity)]
    fn operators(
        &self,
        path: &KeyPath,
        name: &str,
        o: &OperatorMatch,
    ) -> R<(BTreeSet<String>, BTreeSet<String>, BTreeSet<String>)> {
        if o.users.is_empty() && o.groups.is_empty() && o.app_roles.is_empty() {
            return Err(self.err(path, false, format!("policy `{name}` names no operators"), "list at least one of `users` (object ids), `groups` (group object ids) or `app_roles` (app role values)"));
        }
        let users = self.guid_set(
            &path.key("users"),
            &o.users,
            "a user's or service principal's Object ID (oid), not a UPN",
        )?;
        let groups = self.guid_set(&path.key("groups"), &o.groups, "an Entra group's Object ID")?;
        let mut app_roles = BTreeSet::new();
        for (i, r) in o.app_roles.iter().enumerate() {
            let t = r.trim();
            if t.is_empty() || t.contains(char::is_whitespace) {
                return Err(self.err(
                    &path.key("app_roles").index(i),
                    true,
                    format!("`{t}` is not an app role value"),
                    "write the role's Value (e.g. `Passgate.Recover`), not its display name",
                ));
            }
            app_roles.insert(t.to_string());
        }
        Ok((users, groups, app_roles))
    }

    fn devices(
        &self,
        path: &KeyPath,
        name: &str,
        d: &DeviceMatch,
    ) -> R<(BTreeSet<String>, bool, Option<Vec<String>>)> {
        if d.any_device && !d.groups.is_empty() {
            return Err(self.err(&path.key("any_device"), false, format!("policy `{name}` sets both `any_device: true` and device `groups`"), "keep one: `groups` to restrict the policy to devices in those Entra groups, or `any_device: true` to allow every device"));
        }
        if !d.any_device && d.groups.is_empty() {
            let at = if self.loc.key(&path.key("groups")).is_some() {
                path.key("groups")
            } else {
                path.clone()
            };
            return Err(self.err(&at, false, format!("policy `{name}` names no device groups"), "list Entra device group object ids under `groups`, or write `any_device: true` to allow every device: \"any device\" is never implied"));
        }
        let groups = self.guid_set(&path.key("groups"), &d.groups, "an Entra group's Object ID")?;
        let platforms = match &d.platforms {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(self.err(&path.key("platforms"), false, format!("policy `{name}` has an empty `platforms` list, which would allow no device"), "remove `platforms` to allow every platform, or list Intune operatingSystem values, e.g. [\"Windows Phone\"]"));
            }
            Some(list) => {
                let mut v = Vec::new();
                for (i, s) in list.iter().enumerate() {
                    self.non_empty(
                        &path.key("platforms").index(i),
                        s,
                        "an Intune operatingSystem value such as \"Windows Phone\"",
                    )?;
                    v.push(s.trim().to_string());
                }
                Some(v)
            }
        };
        Ok((groups, d.any_device, platforms))
    }

    fn guid_set(&self, path: &KeyPath, list: &[String], what: &str) -> R<BTreeSet<String>> {
        list.iter()
            .enumerate()
            .map(|(i, s)| self.guid(&path.index(i), s, what))
            .collect()
    }

    fn guid(&self, path: &KeyPath, s: &str, what: &str) -> R<String> {
        let t = s.trim();
        crate::text::guid(t).ok_or_else(|| {
            self.err(path, true, format!("`{t}` is not a GUID"), &format!("write {what}: 8-4-4-4-12 hex digits, e.g. 00000000-0000-0000-0000-000000000000"))
        })
    }

    /// Rotation limits small enough to spray thousands of files are almost surely a unit mistake.
    fn audit_rotation(&self, a: &super::schema::AuditConfig) -> R<()> {
        let ap = KeyPath::root().key("audit");
        if a.rotate_max_bytes
            .is_some_and(|b| b < MIN_AUDIT_ROTATE_BYTES)
        {
            return Err(self.err(
                &ap.key("rotate_max_bytes"),
                true,
                format!("must be at least {MIN_AUDIT_ROTATE_BYTES} bytes"),
                "the value is in bytes, e.g. 104857600 for 100 MiB; leave it out to never rotate by size",
            ));
        }
        if a.rotate_max_age_seconds
            .is_some_and(|s| s < MIN_AUDIT_ROTATE_AGE_SECONDS)
        {
            return Err(self.err(
                &ap.key("rotate_max_age_seconds"),
                true,
                format!("must be at least {MIN_AUDIT_ROTATE_AGE_SECONDS} seconds"),
                "the value is in seconds, e.g. 86400 for daily files; leave it out to never rotate by age",
            ));
        }
        Ok(())
    }

    /// `server:` beyond `listen`: TLS or explicit plaintext, limits, trusted proxies.
    fn server(&self, raw: &Config) -> R<ServerSettings> {
        let server = KeyPath::root().key("server");
        let sc = &raw.server;
        let mut reload = Duration::from_secs(10);
        match (&sc.tls, sc.plaintext) {
            (Some(_), true) => {
                return Err(self.err(
                    &server.key("plaintext"),
                    false,
                    "both `tls` and `plaintext: true` are set".into(),
                    "keep `tls` (production) or `plaintext: true` (sandbox, loopback sidecar), not both",
                ))
            }
            (None, false) => {
                return Err(self.err(
                    &server,
                    false,
                    "no `tls` block and no `plaintext: true`".into(),
                    "add `tls:` with `cert_file` and `key_file`; plain HTTP must be asked for explicitly with `plaintext: true`",
                ))
            }
            (Some(tls), false) => {
                let tp = server.key("tls");
                self.non_empty(
                    &tp.key("cert_file"),
                    &tls.cert_file,
                    "the PEM certificate chain file for the listener",
                )?;
                self.non_empty(
                    &tp.key("key_file"),
                    &tls.key_file,
                    "the PEM private key file for the listener",
                )?;
                if let Some(ca) = &tls.client_ca_file {
                    self.non_empty(
                        &tp.key("client_ca_file"),
                        ca,
                        "the PEM CA bundle client certificates must chain to, or remove the key",
                    )?;
                }
                if tls.reload_interval_seconds == 0 {
                    return Err(self.err(
                        &tp.key("reload_interval_seconds"),
                        true,
                        "must be at least 1".into(),
                        "how often the certificate files are re-read; the default is 10",
                    ));
                }
                reload = Duration::from_secs(tls.reload_interval_seconds);
            }
            (None, true) => {}
        }
        let lp = server.key("limits");
        let l = &sc.limits;
        let positive = |key: &str, v: u64, hint: &str| -> R<Duration> {
            if v == 0 {
                return Err(self.err(&lp.key(key), true, "must be at least 1".into(), hint));
            }
            Ok(Duration::from_secs(v))
        };
        let header_read_timeout = positive(
            "header_read_timeout_seconds",
            l.header_read_timeout_seconds,
            "seconds a client has to send a request head; the default is 10",
        )?;
        let tls_handshake_timeout = positive(
            "tls_handshake_timeout_seconds",
            l.tls_handshake_timeout_seconds,
            "seconds a client has to finish the TLS handshake; the default is 10",
        )?;
        let idle_timeout = positive(
            "idle_timeout_seconds",
            l.idle_timeout_seconds,
            "seconds an idle connection is kept open; the default is 60",
        )?;
        let write_timeout = positive(
            "write_timeout_seconds",
            l.write_timeout_seconds,
            "seconds a response write may make no progress before the connection is closed; the default is 10",
        )?;
        let max_connection_age = positive(
            "max_connection_age_seconds",
            l.max_connection_age_seconds,
            "seconds after which a connection is closed at its next idle moment; the default is 300",
        )?;
        // hyper refuses (panics on) a read buffer below 8 KiB; 16 MiB is far past any real head.
        self.bounded(
            &lp.key("max_header_bytes"),
            l.max_header_bytes,
            8192..=16 * 1024 * 1024,
            "the default 65536 fits an Entra token with many group claims",
        )?;
        self.bounded(
            &lp.key("max_headers"),
            l.max_headers,
            1..=1024,
            "the default is 64",
        )?;
        self.bounded(
            &lp.key("max_connections"),
            l.max_connections,
            1..=1_000_000,
            "the default is 256",
        )?;
        self.bounded(
            &lp.key("max_requests_in_flight"),
            l.max_requests_in_flight,
            1..=1_000_000,
            "requests served at once, HTTP/2 streams and requests whose client hung up included; over it requests are answered 503 gateway_busy at once; the default is 1024",
        )?;
        let unauthenticated_per_client = parse_rate(&l.unauthenticated_per_client).map_err(
            |(message, hint)| self.err(&lp.key("unauthenticated_per_client"), true, message, &format!("{hint}; refusals before authentication past it are answered 429 and summarised, the default is `20 per 1s`")),
        )?;
        self.bounded(
            &lp.key("unauthenticated_summary_seconds"),
            l.unauthenticated_summary_seconds,
            1..=3600,
            "how long throttled refusals are counted before one summary record per client and reason is written; the default is 60",
        )?;
        if l.h2_max_concurrent_streams == 0 {
            return Err(self.err(
                &lp.key("h2_max_concurrent_streams"),
                true,
                "must be at least 1".into(),
                "the default is 16",
            ));
        }
        let mut trusted_proxies = Vec::new();
        for (i, c) in sc.trusted_proxies.iter().enumerate() {
            let cidr = crate::config::cidr::Cidr::parse(c).map_err(|e| {
                self.err(
                    &server.key("trusted_proxies").index(i),
                    true,
                    e.to_string(),
                    "write the reverse proxy's address or network, e.g. `10.0.0.5` or `10.0.0.0/24`",
                )
            })?;
            if cidr.prefix_len() == 0 {
                return Err(self.err(&server.key("trusted_proxies").index(i), true, format!("`{}` trusts every address", c.trim()), "then any client can name any client address in X-Forwarded-For (and so escape per-client limits and fake the audit trail); list only the reverse proxies' own addresses"));
            }
            trusted_proxies.push(cidr);
        }
        Ok(ServerSettings {
            plaintext: sc.plaintext,
            header_read_timeout,
            tls_handshake_timeout,
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            max_connections: l.max_connections,
            max_requests_in_flight: l.max_requests_in_flight,
            idle_timeout,
            h2_max_concurrent_streams: l.h2_max_concurrent_streams,
            write_timeout,
            max_connection_age,
            tls_reload_interval: reload,
            trusted_proxies,
            unauthenticated_per_client,
            unauthenticated_summary: Duration::from_secs(l.unauthenticated_summary_seconds),
        })
    }

    /// `state.redis`: a `redis://`/`rediss://` URL without credentials (or Sentinel nodes), a
    /// sane timeout and key prefix.
    fn redis(
        &self,
        path: &KeyPath,
        r: &super::schema::RedisConfig,
    ) -> R<super::schema::RedisConfig> {
        let mut out = r.clone();
        match (&r.url, &r.sentinel) {
            (Some(_), Some(_)) => {
                return Err(self.err(
                    &path.key("sentinel"),
                    false,
                    "both `url` and `sentinel` are set".into(),
                    "with Sentinel the primary is discovered: remove `url` (the nodes' scheme, redis:// or rediss://, also applies to the primary)",
                ))
            }
            (None, None) => {
                return Err(self.err(
                    path,
                    false,
                    "no server: set `url` or `sentinel`".into(),
                    "e.g. `url: \"rediss://redis.internal:6380/0\"`",
                ))
            }
            (Some(u), None) => {
                out.url = Some(self.redis_url(&path.key("url"), u)?);
            }
            (None, Some(s)) => {
                let sp = path.key("sentinel");
                self.non_empty(&sp.key("master_name"), &s.master_name, "the master name the Sentinels monitor, e.g. `passgate`")?;
                if s.nodes.is_empty() {
                    return Err(self.err(
                        &sp.key("nodes"),
                        false,
                        "no Sentinel nodes".into(),
                        "list at least one, better three: `nodes: [\"redis://10.0.0.5:26379\"]`",
                    ));
                }
                let mut nodes = Vec::new();
                let mut schemes = std::collections::BTreeSet::new();
                for (i, n) in s.nodes.iter().enumerate() {
                    let u = self.redis_url(&sp.key("nodes").index(i), n)?;
                    schemes.insert(u.split(':').next().unwrap_or("").to_string());
                    nodes.push(u);
                }
                if schemes.len() > 1 {
                    return Err(self.err(
                        &sp.key("nodes"),
                        false,
                        "mixes redis:// and rediss:// nodes".into(),
                        "use one scheme for every node",
                    ));
                }
                out.sentinel = Some(super::schema::SentinelConfig {
                    master_name: s.master_name.trim().to_string(),
                    nodes,
                });
            }
        }
        if let Some(u) = &r.username {
            self.non_empty(
                &path.key("username"),
                u,
                "the ACL user name, or remove the key for the `default` user",
            )?;
        }
        if let Some(ca) = &r.ca_file {
            self.non_empty(&path.key("ca_file"), ca, "a PEM CA bundle path")?;
        }
        let prefix = r.key_prefix.trim();
        if prefix.is_empty() || prefix.contains(['{', '}', ' ']) {
            return Err(self.err(
                &path.key("key_prefix"),
                true,
                "must be non-empty, without spaces or braces".into(),
                "e.g. `passgate` or `passgate-prod` (braces are reserved for the cluster hash tag)",
            ));
        }
        out.key_prefix = prefix.to_string();
        if r.timeout_ms == 0 || r.timeout_ms > 10_000 {
            return Err(self.err(
                &path.key("timeout_ms"),
                true,
                "must be between 1 and 10000".into(),
                "every admission waits at most this long for Redis; the default is 200",
            ));
        }
        if r.min_replicas_ack > 16 {
            return Err(self.err(
                &path.key("min_replicas_ack"),
                true,
                "must be at most 16".into(),
                "the number of replicas that must acknowledge each admission; 0 (default) does not wait",
            ));
        }
        Ok(out)
    }

    fn redis_url(&self, path: &KeyPath, s: &str) -> R<String> {
        let (t, u) = self.bare_url(
            path,
            s,
            "write e.g. redis://127.0.0.1:6379/0 or rediss://redis.internal:6380/0",
            "remove `user:password@`; use `username:` and `password: env:NAME`",
        )?;
        if !matches!(u.scheme(), "redis" | "rediss") || u.host().is_none() {
            return Err(self.err(
                path,
                true,
                format!("`{t}` is not a redis:// or rediss:// URL with a host"),
                "write e.g. redis://127.0.0.1:6379/0 (unix sockets are not supported)",
            ));
        }
        let db = u.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(self.err(
                path,
                true,
                format!("`{t}`: the path must be a database number"),
                "e.g. redis://host:6379/0",
            ));
        }
        Ok(t)
    }

    /// An absolute URL without user info (never echoed: it may be a credential), query or
    /// fragment; the scheme rules are the caller's.
    fn bare_url(
        &self,
        path: &KeyPath,
        s: &str,
        example: &str,
        credentials_hint: &str,
    ) -> R<(String, url::Url)> {
        let t = s.trim();
        let u = url::Url::parse(t)
            .map_err(|e| self.err(path, true, format!("`{t}` is not a URL: {e}"), example))?;
        if !u.username().is_empty() || u.password().is_some() {
            return Err(self.err(
                path,
                true,
                "the URL must not carry a user name or password (value not shown)".into(),
                credentials_hint,
            ));
        }
        if u.query().is_some() || u.fragment().is_some() {
            return Err(self.err(
                path,
                true,
                format!("`{t}` has a query or fragment"),
                "write the URL without `?…` or `#…`",
            ));
        }
        Ok((t.to_string(), u))
    }

    fn non_empty(&self, path: &KeyPath, s: &str, what: &str) -> R<()> {
        if s.trim().is_empty() {
            return Err(self.err(
                path,
                true,
                "must not be empty".into(),
                &format!("write {what}"),
            ));
        }
        Ok(())
    }

    /// `https://` URLs, or `http://` to a loopback host (the sandbox, a local test double).
    fn url(&self, path: &KeyPath, s: &str) -> R<String> {
        let (t, u) = self.bare_url(
            path,
            s,
            "write an absolute URL such as https://login.microsoftonline.com",
            "remove the `user:password@` part; credentials belong in `app`",
        )?;
        let t = t.as_str();
        let loopback = match u.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        };
        match u.scheme() {
            "https" if u.host().is_some() => Ok(t.to_string()),
            "http" if loopback => Ok(t.to_string()),
            "http" => Err(self.err(path, true, format!("`{t}` is plain http to a non-loopback host"), "use https://; http:// is only allowed to 127.0.0.0/8, [::1] or localhost (the sandbox)")),
            _ => Err(self.err(path, true, format!("`{t}` is not an https URL"), "use an https:// URL")),
        }
    }
}

/// Parses a duration: an integer and one unit (`s`, `m`, `h`, `d`), e.g. `30m`, `24h`.
pub fn parse_duration(text: &str) -> Result<Duration, (String, String)> {
    let hint = "write an integer and a unit, e.g. `90s`, `30m`, `24h`, `7d`".to_string();
    let t = text.trim();
    let unit_at = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(unit_at);
    let mult: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err((format!("`{t}` is not a duration"), hint)),
    };
    let amount: u64 = digits
        .parse()
        .map_err(|_| (format!("`{t}` is not a duration"), hint.clone()))?;
    Ok(Duration::from_secs(amount.saturating_mul(mult)))
}

/// A duration the way the config writes it.
pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Parses `"N per DURATION"`: N ≥ 1, DURATION an integer and one unit (`s`, `m`, `h`, `d`),
/// between 1 s and 31 d. Returns (message, hint) on error.
pub fn parse_rate(text: &str) -> Result<(u32, Duration), (String, String)> {
    let hint =
        "write `N per DURATION`, e.g. `5 per 1h`, `1 per 10m`, `100 per 1d`; units s, m, h, d"
            .to_string();
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [n, per, dur] = parts.as_slice() else {
        return Err((format!("`{text}` is not a rate limit"), hint));
    };
    if !per.eq_ignore_ascii_case("per") {
        return Err((format!("`{text}` is not a rate limit"), hint));
    }
    let count: u32 = match n.parse() {
        Ok(c) if c >= 1 => c,
        Ok(_) => return Err((
            "the count must be at least 1".into(),
            "to forbid the action, remove the operators from the policy instead of a zero limit"
                .into(),
        )),
        Err(_) => return Err((format!("`{n}` is not a whole number"), hint)),
    };
    let window = parse_duration(dur).map_err(|(message, _)| (message, hint.clone()))?;
    if window < Duration::from_secs(1) {
        return Err(("the window must be at least 1s".into(), hint));
    }
    if window > MAX_WINDOW {
        return Err((
            "the window must be at most 31d".into(),
            "limits are kept in memory; use at most 31d".into(),
        ));
    }
    Ok((count, window))
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
