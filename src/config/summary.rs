//! One-screen human summary of validated settings, printed by `passgate check`. It shows secret
//! *references* (`env:NAME`, `file:PATH`) and never a secret value.

use super::schema::{AssertionFormat, Cloud, SecretRef};
use super::settings::Settings;
use crate::policy::{Limit, LimitScope, PolicySettings};
use std::fmt::Write;

/// The summary text; ends with a newline.
pub fn summary(s: &Settings) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail; ignore the fmt::Result rather than unwrap.
    let _ = write_summary(&mut o, s);
    o
}

fn write_summary(o: &mut String, s: &Settings) -> std::fmt::Result {
    let cloud = match s.raw.cloud {
        Cloud::Global => "global",
        Cloud::Usgov => "usgov",
        Cloud::UsgovDod => "usgov-dod",
        Cloud::China => "china",
    };
    let tls = match &s.tls {
        Some(t) => format!(
            "TLS (cert {}, key {}){}",
            t.cert_file,
            t.key_file,
            t.client_ca_file
                .as_ref()
                .map(|ca| format!(", client certificates required (CA {ca})"))
                .unwrap_or_default()
        ),
        None => "plain HTTP (no TLS)".into(),
    };
    writeln!(o, "listen        {} — {tls}", s.listen)?;
    match &s.admin_listen {
        Some(a) => writeln!(o, "admin         {a} (HTTP without TLS or authentication)")?,
        None => writeln!(o, "admin         disabled")?,
    }
    match &s.console {
        Some(c) => writeln!(
            o,
            "console       {} — {}, sign-in as {} (redirect {}), {} auditor entries, sessions {}s idle / {}s max",
            c.listen,
            if s.tls.is_some() { "TLS (server.tls certificate)" } else { "plain HTTP" },
            c.client_id,
            c.redirect_uri,
            c.auditors.users.len() + c.auditors.groups.len() + c.auditors.app_roles.len(),
            c.idle_timeout.as_secs(),
            c.max_age.as_secs()
        )?,
        None => writeln!(o, "console       disabled")?,
    }
    if !s.server.trusted_proxies.is_empty() {
        let p: Vec<String> = s
            .server
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        writeln!(
            o,
            "proxies       X-Forwarded-For trusted from {}",
            p.join(", ")
        )?;
    }
    let (n, per) = s.server.unauthenticated_per_client;
    writeln!(
        o,
        "unauth        {n} refusals before authentication per client per {}s audited one by one, then 429 and a summary every {}s",
        per.as_secs(),
        s.server.unauthenticated_summary.as_secs()
    )?;
    writeln!(o, "tenant        {} (cloud {cloud})", s.tenant_id)?;
    let e = &s.endpoints;
    writeln!(o, "graph         {}  scope {}", e.graph, e.graph_scope)?;
    writeln!(o, "token url     {}", e.token_url)?;
    writeln!(o, "oidc          {}", e.oidc_discovery_url)?;
    if let Some(ca) = &e.extra_ca_file {
        writeln!(o, "extra CA      {ca}")?;
    }
    let a = &s.operator_auth;
    let mut versions = Vec::new();
    if a.accept_v2 {
        versions.push("2.0".to_string());
    }
    if a.accept_v1 {
        versions.push(format!("1.0 (issuer {})", e.v1_issuer));
    }
    writeln!(o, "operators     audiences {}", a.audiences.join(", "))?;
    writeln!(
        o,
        "              tokens {}; alg {}; typ {}; leeway {}s{}",
        versions.join(", "),
        a.algorithms.join(","),
        a.token_types.join(","),
        a.leeway.as_secs(),
        a.required_scope
            .as_ref()
            .map(|sc| format!("; scope {sc} required"))
            .unwrap_or_default()
    )?;
    let cred = match (&s.app.client_secret, &s.app.certificate) {
        (Some(r), _) => format!("client secret from {}", reference(r)),
        (None, Some(c)) => format!(
            "certificate {} (key from {}, {})",
            c.cert_file,
            reference(&c.private_key),
            match c.assertion_format {
                AssertionFormat::Ps256 => "PS256 + x5t#S256",
                AssertionFormat::Rs256 => "RS256 + x5t",
            }
        ),
        (None, None) => "no credential".into(),
    };
    writeln!(o, "app           {} — {cred}", s.app.client_id)?;
    let g = &s.graph;
    writeln!(
        o,
        "graph calls   action timeout {}s, read timeout {}s, facts cache {}, token refresh {}s ahead, at most {} in flight (queue {}s)",
        g.action_timeout_seconds,
        g.read_timeout_seconds,
        if g.facts_cache_ttl_seconds == 0 {
            "off".to_string()
        } else {
            format!("{}s", g.facts_cache_ttl_seconds)
        },
        g.token_refresh_ahead_seconds,
        g.max_concurrent_requests,
        g.queue_timeout_seconds
    )?;
    let mut audit_extra = Vec::new();
    if let Some(b) = s.audit.rotate_max_bytes {
        audit_extra.push(format!("rotate at {b} bytes"));
    }
    if let Some(a) = s.audit.rotate_max_age_seconds {
        audit_extra.push(format!("rotate every {a}s"));
    }
    if s.audit.min_free_bytes > 0 {
        audit_extra.push(format!(
            "/readyz fails below {} MiB free",
            s.audit.min_free_bytes / (1024 * 1024)
        ));
    }
    if let Some(k) = &s.audit.hmac_key {
        // The reference only (env:NAME / file:PATH); never the key.
        audit_extra.push(format!("HMAC-keyed chain ({k:?})"));
    }
    let extra = if audit_extra.is_empty() {
        String::new()
    } else {
        format!(" ({})", audit_extra.join(", "))
    };
    writeln!(o, "audit         {}{extra}", s.audit.path)?;
    write_state(o, s)?;
    if !s.caps.is_empty() {
        let l: Vec<String> = s.caps.iter().map(limit).collect();
        writeln!(
            o,
            "caps          {} — across all policies, charged on every admission",
            l.join("; ")
        )?;
    }
    writeln!(o, "policies      {} (first match wins)", s.policies.len())?;
    for (i, p) in s.policies.iter().enumerate() {
        write_policy(o, i + 1, p)?;
        if let Some(a) = s.approvals.get(&p.name) {
            write_approval(o, a)?;
        }
    }
    if !s.report_policies.is_empty() {
        writeln!(
            o,
            "report-only   {} (mode: report — evaluated and recorded, never admitting)",
            s.report_policies.len()
        )?;
        for (i, p) in s.report_policies.iter().enumerate() {
            write_policy(o, i + 1, p)?;
        }
    }
    for w in super::warnings::warnings(s) {
        writeln!(o, "WARNING       {w}")?;
    }
    Ok(())
}

/// The `approval:` line of a policy: who approves, for how long; the webhook by reference only.
fn write_approval(o: &mut String, a: &crate::approval::ApprovalRule) -> std::fmt::Result {
    let mut who = Vec::new();
    let r = &a.approvers;
    if !r.users.is_empty() {
        who.push(format!("{} user(s)", r.users.len()));
    }
    if !r.groups.is_empty() {
        who.push(format!("{} group(s)", r.groups.len()));
    }
    if !r.app_roles.is_empty() {
        let roles: Vec<&str> = r.app_roles.iter().map(String::as_str).collect();
        who.push(format!("app roles {}", roles.join(", ")));
    }
    let show = super::load::show_duration;
    writeln!(
        o,
        "     approval: a second person must approve each use — approvers {}; approval valid {}, request waits {}{}",
        who.join(", "),
        show(a.valid_for),
        show(a.pending_for),
        match &a.webhook {
            Some(w) => format!("; webhook {w:?}"),
            None => String::new(),
        }
    )
}

fn write_policy(o: &mut String, n: usize, p: &PolicySettings) -> std::fmt::Result {
    writeln!(o, "  {n}. {}", p.name)?;
    if let Some(d) = &p.description {
        let first = d.lines().next().unwrap_or("").trim();
        if !first.is_empty() {
            writeln!(o, "     {first}")?;
        }
    }
    let mut who = Vec::new();
    if !p.users.is_empty() {
        who.push(format!("{} user(s)", p.users.len()));
    }
    if !p.groups.is_empty() {
        who.push(format!("{} group(s)", p.groups.len()));
    }
    if !p.app_roles.is_empty() {
        let roles: Vec<&str> = p.app_roles.iter().map(String::as_str).collect();
        who.push(format!("app roles {}", roles.join(", ")));
    }
    writeln!(o, "     who:     {}", who.join(", "))?;
    let devices = if p.any_device {
        "ANY device".to_string()
    } else {
        format!("devices in {} group(s)", p.device_groups.len())
    };
    let platforms = match &p.platforms {
        Some(v) => format!("; platforms {}", v.join(", ")),
        None => "; any platform".into(),
    };
    writeln!(o, "     where:   {devices}{platforms}")?;
    if p.limits.is_empty() {
        writeln!(o, "     limits:  none")?;
    } else {
        let l: Vec<String> = p.limits.iter().map(limit).collect();
        writeln!(o, "     limits:  {}", l.join("; "))?;
    }
    let mut controls = Vec::new();
    if let Some(bg) = &p.break_glass {
        controls.push(format!(
            "BREAK-GLASS until {}",
            bg.active_until
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ));
    }
    if let Some(j) = &p.justification {
        let pattern = j
            .pattern
            .as_ref()
            .map(|pt| format!(" matching `{}`", pt.as_str()))
            .unwrap_or_default();
        controls.push(if j.required {
            format!("justification required{pattern}")
        } else {
            format!("justification optional, if sent{pattern}")
        });
    }
    if p.allow_own_device {
        controls.push("allow_own_device: true (operators may act on their own devices)".into());
    }
    if !controls.is_empty() {
        writeln!(o, "     controls: {}", controls.join("; "))?;
    }
    Ok(())
}

fn limit(l: &Limit) -> String {
    let w = l.window.as_secs();
    let span = if w.is_multiple_of(86_400) {
        format!("{}d", w / 86_400)
    } else if w.is_multiple_of(3600) {
        format!("{}h", w / 3600)
    } else if w.is_multiple_of(60) {
        format!("{}m", w / 60)
    } else {
        format!("{w}s")
    };
    let scope = match l.scope {
        LimitScope::PerOperator => "per operator",
        LimitScope::PerDevice => "per device",
        LimitScope::Global => "global",
    };
    format!("{} per {span} {scope}", l.count)
}

/// The reference, never the value (an inline secret exists only in the sandbox).
fn reference(r: &SecretRef) -> String {
    format!("{r:?}")
}

/// The `state:` line: where limits live, and a warning for plain `redis://` off loopback.
fn write_state(o: &mut String, s: &Settings) -> std::fmt::Result {
    let Some(r) = &s.state else {
        return writeln!(
            o,
            "state         in this process (limits not shared between replicas, lost on restart)"
        );
    };
    let mut extra = String::new();
    if let Some(u) = &r.username {
        extra.push_str(&format!(", user {u}"));
    }
    if let Some(p) = &r.password {
        extra.push_str(&format!(", password {p:?}"));
    }
    if let Some(ca) = &r.ca_file {
        extra.push_str(&format!(", CA {ca}"));
    }
    if r.min_replicas_ack > 0 {
        extra.push_str(&format!(", WAIT for {} replica(s)", r.min_replicas_ack));
    }
    let target = match (&r.url, &r.sentinel) {
        (Some(u), _) => u.clone(),
        (None, Some(sn)) => format!(
            "sentinel master {} via {}",
            sn.master_name,
            sn.nodes.join(", ")
        ),
        (None, None) => String::new(),
    };
    writeln!(
        o,
        "state         redis {target} (prefix {}, timeout {} ms{extra})",
        r.key_prefix, r.timeout_ms
    )?;
    Ok(())
}
