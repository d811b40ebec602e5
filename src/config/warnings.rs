//! Settings that load but that an operator of a gateway like this should not run unknowingly:
//! each is a `WARNING` with its reason in `passgate check` (and in the log at start), and
//! `passgate check --strict` fails on any of them, for CI pipelines. Hard limits are errors in
//! `load.rs`; this module only names what is allowed but risky.

use super::settings::Settings;

/// Above this the facts cache is allowed but worth a word (the hard limit is in `load.rs`).
const WARN_FACTS_CACHE_TTL_SECONDS: u64 = 900;
/// Above this the clock-skew leeway is allowed but worth a word.
const WARN_LEEWAY_SECONDS: u64 = 120;
/// Below this, tokens with unknown key ids can make passgate refetch the JWKS that often.
const WARN_JWKS_REFRESH_FLOOR_SECONDS: u64 = 10;
/// A break-glass policy open for longer than this is a standing grant, not an emergency one: a
/// quarterly access review is the longest cadence it should outlive.
const WARN_BREAK_GLASS_DAYS: i64 = 90;

/// One risky setting: the config key and why it matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub key: String,
    pub reason: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

fn loopback(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

/// A `redis://` (not `rediss://`) URL whose host is not loopback.
fn plain_remote_redis(u: &str) -> bool {
    url::Url::parse(u).is_ok_and(|u| {
        u.scheme() == "redis"
            && !match u.host() {
                // redis:// is not a "special" scheme: an IPv4 host stays a domain string.
                Some(url::Host::Domain(d)) => {
                    d.eq_ignore_ascii_case("localhost")
                        || d.parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            }
    })
}

/// Every warning for these settings now, in a stable order.
pub fn warnings(s: &Settings) -> Vec<Warning> {
    warnings_at(s, chrono::Utc::now())
}

/// Every warning for these settings at `now` (break-glass expiry depends on it).
pub fn warnings_at(s: &Settings, now: chrono::DateTime<chrono::Utc>) -> Vec<Warning> {
    let mut w = Vec::new();
    let mut add = |key: &str, reason: String| {
        w.push(Warning {
            key: key.to_string(),
            reason,
        })
    };
    if s.tls.is_none() && !loopback(&s.listen) {
        add(
            "server.listen",
            "plain HTTP on a non-loopback address: operator tokens cross the network unencrypted"
                .into(),
        );
    }
    if let Some(a) = &s.admin_listen {
        if !loopback(a) {
            add(
                "admin.listen",
                format!("{a} is not loopback: /metrics, /readyz and /reload have no authentication or TLS"),
            );
        }
    }
    if let Some(c) = &s.console {
        if s.tls.is_none() && !loopback(&c.listen) && !c.secure_cookies {
            add(
                "console.listen",
                "plain HTTP on a non-loopback address without an https redirect_uri: sessions cross the network unencrypted".into(),
            );
        }
        if s.approvals.is_empty()
            && c.auditors.users.is_empty()
            && c.auditors.groups.is_empty()
            && c.auditors.app_roles.is_empty()
        {
            add(
                "console.auditors",
                "no auditors and no policy with approval: nobody can use the console".into(),
            );
        }
    }
    for p in &s.server.trusted_proxies {
        let broad = if p.is_ipv4() {
            p.prefix_len() < 16
        } else {
            p.prefix_len() < 48
        };
        if broad {
            add(
                "server.trusted_proxies",
                format!("{p} is a wide network: every address in it may name any client address in X-Forwarded-For"),
            );
        }
    }
    let a = &s.operator_auth;
    if a.required_scope.is_none() {
        add(
            "operator_auth.required_scope",
            "not set: a user token passgate's API issued for any scope (or for another client's consent) is accepted".into(),
        );
    }
    if a.leeway.as_secs() > WARN_LEEWAY_SECONDS {
        add(
            "operator_auth.leeway_seconds",
            format!(
                "{} s: expired tokens stay usable that long; fix the clock (NTP) instead",
                a.leeway.as_secs()
            ),
        );
    }
    if a.jwks_refresh_floor.as_secs() < WARN_JWKS_REFRESH_FLOOR_SECONDS {
        add(
            "operator_auth.jwks_refresh_floor_seconds",
            format!(
                "{} s: unauthenticated requests with unknown key ids can make passgate fetch Entra's keys that often",
                a.jwks_refresh_floor.as_secs()
            ),
        );
    }
    if s.graph.facts_cache_ttl_seconds > WARN_FACTS_CACHE_TTL_SECONDS {
        add(
            "graph.facts_cache_ttl_seconds",
            format!(
                "{} s: a device removed from its group stays recoverable that long",
                s.graph.facts_cache_ttl_seconds
            ),
        );
    }
    if let Some(r) = &s.state {
        let (key, urls): (&str, Vec<&str>) = match (&r.url, &r.sentinel) {
            (Some(u), _) => ("state.redis.url", vec![u.as_str()]),
            (None, Some(sn)) => (
                "state.redis.sentinel.nodes",
                sn.nodes.iter().map(String::as_str).collect(),
            ),
            (None, None) => ("state.redis", vec![]),
        };
        if urls.iter().any(|u| plain_remote_redis(u)) {
            add(
                key,
                "plain redis:// to a non-loopback host: the Redis password and limit state cross the network unencrypted; use rediss://"
                    .into(),
            );
        }
    }
    if s.audit.min_free_bytes == 0 {
        add(
            "audit.min_free_bytes",
            "0: nothing warns before the audit disk is full, and then every request is refused audit_unavailable".into(),
        );
    }
    for p in &s.policies {
        if p.any_device && p.limits.is_empty() {
            add(
                &format!("policies.{}", p.name),
                "any_device without limits: its operators can recover every device, without bound"
                    .into(),
            );
        }
        if let Some(bg) = &p.break_glass {
            let until = bg
                .active_until
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            if bg.active_until < now {
                add(
                    &format!("policies.{}.active_until", p.name),
                    format!("{until} has passed: this break-glass policy admits nothing; remove it, or set a new active_until for a new emergency"),
                );
            } else if bg.active_until - now > chrono::Duration::days(WARN_BREAK_GLASS_DAYS) {
                add(
                    &format!("policies.{}.active_until", p.name),
                    format!("{until} is more than {WARN_BREAK_GLASS_DAYS} days away: a break-glass policy that long is a standing grant; keep the window short and renew it when needed"),
                );
            }
        }
    }
    w
}
