//! Tests for config loading: every validation error (message, hint, location), cloud defaults,
//! and that every shipped `config/*.yaml` loads.

use super::*;
use crate::config::schema::SecretRef;

const BASE: &str = r#"server:
  listen: "127.0.0.1:8443"
  plaintext: true
tenant_id: "00000000-1111-2222-3333-444444444444"
operator_auth:
  audiences: ["api://passgate"]
app:
  client_id: "11111111-2222-3333-4444-555555555555"
  client_secret: env:PASSGATE_CLIENT_SECRET
audit:
  path: /tmp/audit.jsonl
policies:
  - name: helpdesk
    operators:
      users: ["44444444-5555-6666-7777-888888888888"]
    devices:
      groups: ["33333333-4444-5555-6666-777777777777"]
    limits:
      per_device: "1 per 10m"
"#;

const SECOND: &str = r#"  - name: second
    operators:
      app_roles: [Passgate.Recover]
    devices:
      any_device: true
"#;

fn with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "BASE lacks {from:?}");
    BASE.replacen(from, to, 1)
}

fn ok(text: &str) -> Settings {
    load_str(text, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> ConfigError {
    match load_str(text, "test.yaml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts the message contains `needle`, a hint exists, and (if given) the location.
fn check(e: &ConfigError, needle: &str, at: Option<(usize, usize)>) {
    assert!(e.message.contains(needle), "{e}\n(wanted {needle:?})");
    assert!(e.hint.is_some(), "no hint: {e}");
    if let Some((l, c)) = at {
        assert_eq!((e.line, e.column), (Some(l), Some(c)), "{e}");
    }
    assert_eq!(e.origin, "test.yaml");
}

#[test]
fn base_config_loads_and_resolves() {
    let s = ok(BASE);
    assert_eq!(s.listen, "127.0.0.1:8443");
    assert_eq!(s.tenant_id, "00000000-1111-2222-3333-444444444444");
    assert_eq!(s.policies.len(), 1);
    let p = &s.policies[0];
    assert_eq!(p.name, "helpdesk");
    assert!(!p.any_device);
    assert_eq!(
        p.limits,
        vec![Limit {
            scope: LimitScope::PerDevice,
            count: 1,
            window: Duration::from_secs(600)
        }]
    );
    let a = &s.operator_auth;
    assert!(a.accept_v1 && a.accept_v2);
    assert_eq!(a.algorithms, ["RS256"]);
    assert_eq!(a.token_types, ["JWT", "at+jwt"]);
    assert_eq!(a.leeway, Duration::from_secs(60));
    assert_eq!(a.jwks_refresh_floor, Duration::from_secs(60));
    assert_eq!(a.jwks_max_age, Duration::from_secs(86_400));
    assert_eq!(
        s.app.client_secret,
        Some(SecretRef::Env("PASSGATE_CLIENT_SECRET".into()))
    );
}

#[test]
fn display_is_origin_line_column_message_hint() {
    let e = ConfigError {
        origin: "a.yaml".into(),
        line: Some(3),
        column: Some(7),
        message: "bad".into(),
        hint: Some("fix it".into()),
    };
    assert_eq!(e.to_string(), "a.yaml:3:7: bad\n  hint: fix it");
    let e = ConfigError {
        line: None,
        column: None,
        hint: None,
        ..e
    };
    assert_eq!(e.to_string(), "a.yaml: bad");
}

#[test]
fn ids_are_lower_cased() {
    let text = with(
        "00000000-1111-2222-3333-444444444444",
        "00000000-1111-2222-3333-44444444ABCD",
    )
    .replace(
        "44444444-5555-6666-7777-888888888888",
        "44444444-5555-6666-7777-88888888ABCD",
    )
    .replace(
        "33333333-4444-5555-6666-777777777777",
        "33333333-4444-5555-6666-77777777ABCD",
    )
    .replace(
        "11111111-2222-3333-4444-555555555555",
        "11111111-2222-3333-4444-55555555ABCD",
    );
    let s = ok(&text);
    assert_eq!(s.tenant_id, "00000000-1111-2222-3333-44444444abcd");
    assert_eq!(s.app.client_id, "11111111-2222-3333-4444-55555555abcd");
    assert!(s.policies[0]
        .users
        .contains("44444444-5555-6666-7777-88888888abcd"));
    assert!(s.policies[0]
        .device_groups
        .contains("33333333-4444-5555-6666-77777777abcd"));
    let s = ok(&with(
        "[\"api://passgate\"]",
        "[\"AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE\", api://Passgate]",
    ));
    assert_eq!(
        s.operator_auth.audiences,
        ["aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", "api://Passgate"]
    );
}

#[test]
fn yaml_syntax_errors_are_located() {
    let e = err(&with(
        "  listen: \"127.0.0.1:8443\"",
        "  listen: \"127.0.0.1:8443",
    ));
    assert_eq!(e.origin, "test.yaml");
    let (l, c) = (e.line.unwrap(), e.column.unwrap());
    assert_eq!(l, 4, "{e}");
    // The problem's own location is in the prefix only (a context location may remain).
    assert!(
        !e.message.contains(&format!("at line {l} column {c}")),
        "{e}"
    );
    for empty in ["", "# only a comment\n\n", "---\n"] {
        let e = err(empty);
        assert_eq!(
            e.to_string(),
            "test.yaml: the config is empty\n  hint: start from config/production.example.yaml"
        );
    }
}

#[test]
fn unknown_keys_are_refused_where_they_are() {
    let e = err(&with("      groups: [\"3333", "      group: [\"3333"));
    check(&e, "unknown field `group`", Some((17, 7)));
    assert!(e.to_string().starts_with("test.yaml:17:7: "), "{e}");
    let e = err(&with("audit:", "auditt:"));
    check(&e, "unknown field `auditt`", Some((10, 1)));
    let e = err(&format!("{BASE}  - name: x\n    operators: {{users: []}}\n    devices: {{any_device: true}}\n    limit: {{}}\n"));
    check(&e, "unknown field `limit`", None);
}

#[test]
fn missing_keys_and_bad_enums() {
    let e = err(&with("audit:\n  path: /tmp/audit.jsonl\n", ""));
    check(&e, "missing field `audit`", None);
    let e = err(&format!("cloud: mars\n{BASE}"));
    check(&e, "unknown variant `mars`", Some((1, 8)));
}

#[test]
fn literal_secrets_are_refused_without_echoing_them() {
    let e = err(&with("env:PASSGATE_CLIENT_SECRET", "Zx8Q~verysecretvalue"));
    assert!(e.message.contains("must be references"), "{e}");
    assert!(!e.to_string().contains("verysecret"), "{e}");
    assert_eq!((e.line, e.column), (Some(9), Some(18)), "{e}");
    let e = err(&with(
        "  client_secret: env:PASSGATE_CLIENT_SECRET\n",
        "  certificate:\n    cert_file: /c.pem\n    private_key: \"-----BEGIN PRIVATE KEY-----\"\n",
    ));
    assert!(!e.to_string().contains("BEGIN"), "{e}");
    assert_eq!((e.line, e.column), (Some(11), Some(18)), "{e}");
}

#[test]
fn guids_are_required() {
    let e = err(&with(
        "\"00000000-1111-2222-3333-444444444444\"",
        "contoso.onmicrosoft.com",
    ));
    check(
        &e,
        "tenant_id: `contoso.onmicrosoft.com` is not a GUID",
        Some((4, 12)),
    );
    assert!(e.hint.unwrap().contains("not the domain name"));
    let e = err(&with(
        "\"11111111-2222-3333-4444-555555555555\"",
        "Zx8Q~pastedSecretValue",
    ));
    check(&e, "app.client_id: is not a GUID", Some((8, 14)));
    assert!(!e.to_string().contains("pastedSecret"), "{e}");
    let e = err(&with(
        "[\"44444444-5555-6666-7777-888888888888\"]",
        "[\"44444444-5555-6666-7777-888888888888\", ada@contoso.com]",
    ));
    check(
        &e,
        "policies[0].operators.users[1]: `ada@contoso.com` is not a GUID",
        Some((15, 55)),
    );
    let e = err(&with(
        "groups: [\"33333333-4444-5555-6666-777777777777\"]",
        "groups:\n        - \"not-a-guid\"",
    ));
    check(&e, "policies[0].devices.groups[0]", Some((18, 11)));
    let e = err(&with("users: [", "groups: [\"x\"]\n      users: ["));
    check(&e, "policies[0].operators.groups[0]", Some((15, 16)));
}

#[test]
fn policy_names_are_checked_and_unique() {
    for bad in ["\"\"", "\"has space\"", "naïve", "a/b"] {
        let e = err(&with("name: helpdesk", &format!("name: {bad}")));
        check(&e, "is not a valid policy name", Some((13, 11)));
    }
    ok(&with("name: helpdesk", "name: Help.desk_2-b"));
    let dup = format!("{BASE}{}", SECOND.replace("name: second", "name: HelpDesk"));
    let e = err(&dup);
    check(&e, "already used by policies[0] (line 13)", Some((20, 11)));
}

#[test]
fn at_least_one_policy() {
    let text = BASE.split("policies:").next().unwrap().to_string() + "policies: []\n";
    let e = err(&text);
    check(&e, "no policy", Some((12, 1)));
}

#[test]
fn operators_need_at_least_one_non_empty_list() {
    let e = err(&with(
        "      users: [\"44444444-5555-6666-7777-888888888888\"]",
        "      users: []\n      groups: []",
    ));
    check(&e, "policy `helpdesk` names no operators", Some((14, 5)));
    let text = format!(
        "{BASE}{}",
        SECOND.replace("[Passgate.Recover]", "[\"Passgate Recover\"]")
    );
    let e = err(&text);
    check(&e, "policies[1].operators.app_roles[0]", Some((22, 19)));
}

#[test]
fn any_device_must_be_explicit_and_exclusive() {
    // groups missing entirely
    let e = err(&with(
        "      groups: [\"33333333-4444-5555-6666-777777777777\"]\n",
        "      platforms: [\"Windows Phone\"]\n",
    ));
    check(&e, "names no device groups", Some((16, 5)));
    assert!(e.hint.as_deref().unwrap().contains("any_device: true"));
    // an empty list is not "any device"
    let e = err(&with("[\"33333333-4444-5555-6666-777777777777\"]", "[]"));
    check(&e, "names no device groups", Some((17, 7)));
    // any_device: false is not "any device" either
    let e = err(&with(
        "      groups: [\"33333333-4444-5555-6666-777777777777\"]\n",
        "      any_device: false\n",
    ));
    check(&e, "names no device groups", None);
    // both
    let e = err(&with(
        "      groups: [\"33333333-4444-5555-6666-777777777777\"]\n",
        "      groups: [\"33333333-4444-5555-6666-777777777777\"]\n      any_device: true\n",
    ));
    check(
        &e,
        "both `any_device: true` and device `groups`",
        Some((18, 7)),
    );
    // explicit any_device alone is fine
    let s = ok(&format!("{BASE}{SECOND}"));
    assert!(s.policies[1].any_device);
    assert!(s.policies[1].device_groups.is_empty());
}

#[test]
fn platforms_if_present_are_non_empty() {
    let e = err(&with("    limits:", "      platforms: []\n    limits:"));
    check(&e, "empty `platforms` list", Some((18, 7)));
    let e = err(&with(
        "    limits:",
        "      platforms: [\"Windows Phone\", \" \"]\n    limits:",
    ));
    check(&e, "platforms[1]: must not be empty", Some((18, 36)));
    let s = ok(&with(
        "    limits:",
        "      platforms: [\" Windows Phone \"]\n    limits:",
    ));
    assert_eq!(
        s.policies[0].platforms,
        Some(vec!["Windows Phone".to_string()])
    );
}

#[test]
fn rate_limits_parse() {
    let good = [
        ("1 per 1s", 1, 1),
        ("5 per 30s", 5, 30),
        ("10 per 10m", 10, 600),
        ("3 per 1h", 3, 3600),
        ("2 per 1d", 2, 86_400),
        ("7 per 90m", 7, 5400),
        ("1 per 31d", 1, 31 * 86_400),
        ("  4   PER 2h ", 4, 7200),
    ];
    for (text, n, secs) in good {
        assert_eq!(
            parse_rate(text),
            Ok((n, Duration::from_secs(secs))),
            "{text}"
        );
    }
    let bad = [
        ("0 per 1h", "at least 1"),
        ("-1 per 1h", "not a whole number"),
        ("five per 1h", "not a whole number"),
        ("5 per 0s", "at least 1s"),
        ("5 per 32d", "at most 31d"),
        ("5 per 1w", "not a duration"),
        ("5 per h", "not a duration"),
        ("5 per 1h30m", "not a duration"),
        ("5 per 1.5h", "not a duration"),
        ("5/1h", "not a rate limit"),
        ("5 in 1h", "not a rate limit"),
        ("5 per", "not a rate limit"),
        ("", "not a rate limit"),
        ("99999999999 per 1h", "not a whole number"),
    ];
    for (text, want) in bad {
        let (m, h) = parse_rate(text).unwrap_err();
        assert!(m.contains(want), "{text}: {m}");
        assert!(!h.is_empty());
    }
    let e = err(&with("\"1 per 10m\"", "\"1 per 0m\""));
    check(
        &e,
        "policies[0].limits.per_device: the window must be at least 1s",
        Some((19, 19)),
    );
    let e = err(&with(
        "      per_device: \"1 per 10m\"",
        "      per_operator: 5 per hour",
    ));
    check(&e, "policies[0].limits.per_operator", Some((19, 21)));
    let s = ok(&with(
        "      per_device: \"1 per 10m\"",
        "      global: 100 per 1h\n      per_operator: 5 per 1h",
    ));
    let scopes: Vec<LimitScope> = s.policies[0].limits.iter().map(|l| l.scope).collect();
    assert_eq!(scopes, [LimitScope::PerOperator, LimitScope::Global]);
}

#[test]
fn exactly_one_app_credential() {
    let e = err(&with("  client_secret: env:PASSGATE_CLIENT_SECRET\n", ""));
    check(&e, "no credential", Some((7, 1)));
    let e = err(&with(
        "  client_secret: env:PASSGATE_CLIENT_SECRET\n",
        "  client_secret: env:PASSGATE_CLIENT_SECRET\n  certificate:\n    cert_file: /c.pem\n    private_key: file:/k.pem\n",
    ));
    check(&e, "both `client_secret` and `certificate`", Some((10, 3)));
    let s = ok(&with(
        "  client_secret: env:PASSGATE_CLIENT_SECRET\n",
        "  certificate:\n    cert_file: /c.pem\n    private_key: file:/k.pem\n    assertion_format: rs256\n",
    ));
    let c = s.app.certificate.unwrap();
    assert_eq!(c.private_key, SecretRef::File("/k.pem".into()));
}

#[test]
fn urls_must_be_https_or_loopback_http() {
    let ep = |v: &str| format!("{BASE}endpoints:\n  graph: {v}\n");
    for good in [
        "https://graph.example.com/",
        "http://127.0.0.1:9000",
        "http://127.8.9.10:9000",
        "http://[::1]:9000",
        "http://localhost:9000",
    ] {
        let s = ok(&ep(good));
        assert_eq!(s.endpoints.graph, good.trim_end_matches('/'));
    }
    let e = err(&ep("http://graph.example.com"));
    check(
        &e,
        "endpoints.graph: `http://graph.example.com` is plain http to a non-loopback host",
        Some((21, 10)),
    );
    let e = err(&ep("http://10.0.0.1"));
    check(&e, "plain http", None);
    let e = err(&ep("ftp://x.example.com"));
    check(&e, "not an https URL", None);
    let e = err(&ep("graph.microsoft.com"));
    check(&e, "not a URL", None);
    let e = err(&ep("https://user:hunter2@graph.example.com"));
    check(&e, "user name or password", None);
    assert!(!e.to_string().contains("hunter2"));
    let e = err(&ep("https://graph.example.com/?x=1"));
    check(&e, "query or fragment", None);
    let e = err(&with(
        "  audiences:",
        "  v1_issuer: http://sts.example.com/\n  audiences:",
    ));
    check(&e, "operator_auth.v1_issuer", Some((6, 14)));
}

#[test]
fn operator_auth_lists_are_checked() {
    let e = err(&with("[\"api://passgate\"]", "[]"));
    check(&e, "operator_auth.audiences: no audience", Some((6, 3)));
    let oa = |extra: &str| {
        with(
            "  audiences: [\"api://passgate\"]",
            &format!("  audiences: [\"api://passgate\"]\n  {extra}"),
        )
    };
    let e = err(&oa("token_versions: []"));
    check(&e, "no token version", Some((7, 3)));
    let e = err(&oa("token_versions: [\"2.0\", 1]"));
    check(
        &e,
        "token_versions[1]: `1` is not a token version",
        Some((7, 27)),
    );
    let s = ok(&oa("token_versions: [2.0]"));
    assert!(s.operator_auth.accept_v2 && !s.operator_auth.accept_v1);
    let s = ok(&oa("token_versions: [\"1.0\"]"));
    assert!(!s.operator_auth.accept_v2 && s.operator_auth.accept_v1);

    let e = err(&oa("algorithms: [RS256, none]"));
    check(&e, "`none` is never accepted", Some((7, 23)));
    assert!(e.hint.unwrap().contains("unsigned"));
    let e = err(&oa("algorithms: [HS256]"));
    check(&e, "shared-secret (HMAC)", Some((7, 16)));
    assert!(e.hint.unwrap().contains("forge"));
    let e = err(&oa("algorithms: [ES256]"));
    check(&e, "not a supported algorithm", None);
    let e = err(&oa("algorithms: []"));
    check(&e, "no algorithm", None);
    let s = ok(&oa("algorithms: [rs256, PS256, RS256]"));
    assert_eq!(s.operator_auth.algorithms, ["RS256", "PS256"]);

    let e = err(&oa("token_types: []"));
    check(&e, "no token type", None);
    let e = err(&oa("leeway_seconds: 3600"));
    check(&e, "more than the 300 s allowed", Some((7, 19)));
    let e = err(&oa("required_scope: \"a b\""));
    check(&e, "one scope name", None);
    let s = ok(&oa("required_scope: Passgate.Recover"));
    assert_eq!(
        s.operator_auth.required_scope.as_deref(),
        Some("Passgate.Recover")
    );
}

#[test]
fn listen_must_be_a_socket_address() {
    for bad in ["8443", "localhost:8443", "0.0.0.0", "[::]"] {
        let e = err(&with("\"127.0.0.1:8443\"", &format!("\"{bad}\"")));
        check(&e, "is not a socket address", Some((2, 11)));
    }
    ok(&with("\"127.0.0.1:8443\"", "\"[::]:8443\""));
}

#[test]
fn misc_values_are_checked() {
    let e = err(&with("/tmp/audit.jsonl", "\"\""));
    check(&e, "audit.path: must not be empty", Some((11, 9)));
    let e = err(&format!("{BASE}graph:\n  action_timeout_seconds: 0\n"));
    check(&e, "graph.action_timeout_seconds", Some((21, 27)));
    for bad in [
        "max_concurrent_requests: 0",
        "max_concurrent_requests: 10001",
    ] {
        let e = err(&format!("{BASE}graph:\n  {bad}\n"));
        check(&e, "graph.max_concurrent_requests", Some((21, 28)));
    }
    for bad in ["queue_timeout_seconds: 0", "queue_timeout_seconds: 301"] {
        let e = err(&format!("{BASE}graph:\n  {bad}\n"));
        check(&e, "graph.queue_timeout_seconds", Some((21, 26)));
    }
    let s = ok(&format!(
        "{BASE}graph:\n  max_concurrent_requests: 8\n  queue_timeout_seconds: 2\n"
    ));
    assert_eq!(s.graph.max_concurrent_requests, 8);
    assert_eq!(s.graph.queue_timeout_seconds, 2);
    let s = ok(BASE);
    assert_eq!(s.graph.max_concurrent_requests, 64);
    assert_eq!(s.graph.queue_timeout_seconds, 5);
    let e = err(&format!("{BASE}server2: 1\n"));
    check(&e, "unknown field", None);
}

#[test]
fn cloud_defaults() {
    let t = "00000000-1111-2222-3333-444444444444";
    let cases = [
        (
            "global",
            "https://login.microsoftonline.com",
            "https://graph.microsoft.com",
            format!("https://sts.windows.net/{t}/"),
        ),
        (
            "usgov",
            "https://login.microsoftonline.us",
            "https://graph.microsoft.us",
            format!("https://login.microsoftonline.us/{t}/"),
        ),
        (
            "usgov-dod",
            "https://login.microsoftonline.us",
            "https://dod-graph.microsoft.us",
            format!("https://login.microsoftonline.us/{t}/"),
        ),
        (
            "china",
            "https://login.partner.microsoftonline.cn",
            "https://microsoftgraph.chinacloudapi.cn",
            format!("https://sts.chinacloudapi.cn/{t}/"),
        ),
    ];
    for (cloud, authority, graph, v1) in cases {
        let s = ok(&format!("cloud: {cloud}\n{BASE}"));
        let e = &s.endpoints;
        assert_eq!(e.authority, authority, "{cloud}");
        assert_eq!(e.graph, graph, "{cloud}");
        assert_eq!(e.token_url, format!("{authority}/{t}/oauth2/v2.0/token"));
        assert_eq!(
            e.oidc_discovery_url,
            format!("{authority}/{t}/v2.0/.well-known/openid-configuration")
        );
        assert_eq!(e.graph_scope, format!("{graph}/.default"));
        assert_eq!(e.v1_issuer, v1);
        assert_eq!(e.extra_ca_file, None);
    }
    // No `cloud:` key means global.
    assert_eq!(ok(BASE).endpoints.graph, "https://graph.microsoft.com");
}

#[test]
fn endpoint_overrides_feed_the_derived_defaults() {
    let text = format!(
        "{BASE}endpoints:\n  graph: http://127.0.0.1:7001/\n  authority: http://127.0.0.1:7002\n  extra_ca_file: /ca.pem\n"
    );
    let s = ok(&text);
    let e = &s.endpoints;
    let t = "00000000-1111-2222-3333-444444444444";
    assert_eq!(e.graph, "http://127.0.0.1:7001");
    assert_eq!(
        e.token_url,
        format!("http://127.0.0.1:7002/{t}/oauth2/v2.0/token")
    );
    assert_eq!(e.graph_scope, "http://127.0.0.1:7001/.default");
    assert_eq!(e.extra_ca_file.as_deref(), Some("/ca.pem"));
    let text = format!(
        "{BASE}endpoints:\n  token_url: https://t.example/tok\n  oidc_discovery_url: https://t.example/d\n  graph_scope: https://graph.microsoft.com/.default\n"
    );
    let s = ok(&text.replace(
        "  audiences:",
        "  v1_issuer: https://sts.example/x/\n  audiences:",
    ));
    assert_eq!(s.endpoints.token_url, "https://t.example/tok");
    assert_eq!(s.endpoints.oidc_discovery_url, "https://t.example/d");
    assert_eq!(
        s.endpoints.graph_scope,
        "https://graph.microsoft.com/.default"
    );
    assert_eq!(s.endpoints.v1_issuer, "https://sts.example/x/");
}

#[test]
fn load_file_reports_unreadable_files_without_location() {
    let e = load_file(std::path::Path::new("/nonexistent/passgate.yaml")).unwrap_err();
    assert_eq!(e.origin, "/nonexistent/passgate.yaml");
    assert_eq!((e.line, e.column), (None, None));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/passgate.yaml: cannot read"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, with("name: helpdesk", "name: \"no spaces\"")).unwrap();
    let e = load_file(&path).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("{}:13:11: ", path.display())),
        "{e}"
    );
}

#[test]
fn summary_shows_the_essentials_and_no_secret() {
    std::env::set_var("PASSGATE_TEST_SUMMARY_SECRET", "topsecretvalue");
    let text = format!("{BASE}{SECOND}").replace(
        "env:PASSGATE_CLIENT_SECRET",
        "env:PASSGATE_TEST_SUMMARY_SECRET",
    );
    let s = ok(&text);
    let out = crate::config::summary(&s);
    for want in [
        "127.0.0.1:8443",
        "plain HTTP",
        "00000000-1111-2222-3333-444444444444",
        "https://graph.microsoft.com",
        "api://passgate",
        "client secret from env:PASSGATE_TEST_SUMMARY_SECRET",
        "/tmp/audit.jsonl",
        "policies      2",
        "1. helpdesk",
        "devices in 1 group(s)",
        "1 per 10m per device",
        "2. second",
        "app roles Passgate.Recover",
        "ANY device",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(!out.contains("topsecretvalue"));
    assert!(out.lines().count() <= 30, "one screen:\n{out}");
}

#[test]
fn every_shipped_config_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            load_file(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 1, "no config/*.yaml found in {}", dir.display());
}

#[test]
fn production_example_says_what_it_promises() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.yaml");
    let s = load_file(&path).unwrap();
    assert!(s.tls.is_some());
    assert_eq!(s.raw.cloud, Cloud::Global);
    assert_eq!(
        s.app.client_secret,
        Some(SecretRef::Env("PASSGATE_CLIENT_SECRET".into()))
    );
    assert_eq!(s.policies.len(), 2);
    for p in &s.policies {
        assert_eq!(p.platforms, Some(vec!["Windows Phone".to_string()]));
        assert!(!p.limits.is_empty());
    }
}

#[test]
fn errors_in_the_commented_example_point_at_the_right_line() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let line_of = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;

    let bad = text.replace("per_device: \"1 per 1h\"", "per_device: \"1 per 0h\"");
    let e = err(&bad);
    check(&e, "policies[1].limits.per_device", None);
    assert_eq!(e.line, Some(line_of("per_device: \"1 per 1h\"")), "{e}");

    let bad = text.replace(
        "- \"33333333-4444-5555-6666-777777777777\"",
        "- \"33333333-4444-5555-6666-77777777777\"",
    );
    let e = err(&bad);
    check(&e, "policies[0].devices.groups[0]", None);
    assert_eq!(
        e.line,
        Some(line_of("33333333-4444-5555-6666-777777777777")),
        "{e}"
    );

    // Windows line endings do not move anything.
    let crlf = text
        .replace('\n', "\r\n")
        .replace("global: \"100 per 1h\"", "global: \"0 per 1h\"");
    let e = err(&crlf);
    check(&e, "policies[0].limits.global", None);
    assert_eq!(e.line, Some(line_of("global: \"100 per 1h\"")), "{e}");
}

#[test]
fn summary_names_certificate_and_tls_by_reference() {
    let text = with(
        "  client_secret: env:PASSGATE_CLIENT_SECRET\n",
        "  certificate:\n    cert_file: /etc/passgate/app.pem\n    private_key: file:/etc/passgate/app.key\n",
    )
    .replace(
        "  plaintext: true\n",
        "  tls:\n    cert_file: /tls/cert.pem\n    key_file: /tls/key.pem\n    client_ca_file: /tls/clients.pem\n",
    );
    let out = crate::config::summary(&ok(&text));
    assert!(
        out.contains("TLS (cert /tls/cert.pem, key /tls/key.pem), client certificates required (CA /tls/clients.pem)"),
        "{out}"
    );
    assert!(
        out.contains("certificate /etc/passgate/app.pem (key from file:/etc/passgate/app.key, PS256 + x5t#S256)"),
        "{out}"
    );
}

#[test]
fn listener_needs_tls_or_explicit_plaintext() {
    let e = err(&with("  plaintext: true\n", ""));
    check(&e, "no `tls` block and no `plaintext: true`", Some((1, 1)));
    let e = err(&with(
        "  plaintext: true\n",
        "  plaintext: true\n  tls:\n    cert_file: /c.pem\n    key_file: /k.pem\n",
    ));
    check(&e, "both `tls` and `plaintext: true`", Some((3, 3)));
    let e = err(&with("  plaintext: true\n", "  plaintext: false\n"));
    check(&e, "no `tls` block", None);
    let s = ok(&with(
        "  plaintext: true\n",
        "  tls:\n    cert_file: /c.pem\n    key_file: /k.pem\n    client_ca_file: /ca.pem\n    reload_interval_seconds: 30\n",
    ));
    let t = s.tls.unwrap();
    assert_eq!(t.client_ca_file.as_deref(), Some("/ca.pem"));
    assert_eq!(
        s.server.tls_reload_interval,
        std::time::Duration::from_secs(30)
    );
    assert!(!s.server.plaintext);
    let e = err(&with(
        "  plaintext: true\n",
        "  tls:\n    cert_file: /c.pem\n    key_file: \"\"\n",
    ));
    check(&e, "server.tls.key_file: must not be empty", Some((5, 15)));
}

#[test]
fn server_limits_default_and_are_checked() {
    let s = ok(BASE);
    assert_eq!(
        s.server.header_read_timeout,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(s.server.max_header_bytes, 65536);
    assert_eq!(s.server.max_headers, 64);
    assert_eq!(s.server.max_connections, 256);
    assert_eq!(s.server.max_requests_in_flight, 1024);
    assert_eq!(s.server.idle_timeout, std::time::Duration::from_secs(60));
    assert_eq!(s.server.h2_max_concurrent_streams, 16);
    assert!(s.server.trusted_proxies.is_empty());
    let limits = |l: &str| {
        with(
            "  plaintext: true\n",
            &format!("  plaintext: true\n  limits:\n    {l}\n"),
        )
    };
    let e = err(&limits("header_read_timeout_seconds: 0"));
    check(
        &e,
        "server.limits.header_read_timeout_seconds",
        Some((5, 34)),
    );
    let e = err(&limits("max_header_bytes: 4096"));
    check(&e, "outside 8192", Some((5, 23)));
    let e = err(&limits("max_connections: 0"));
    check(&e, "server.limits.max_connections", None);
    let e = err(&limits("max_header: 10"));
    check(&e, "unknown field `max_header`", None);
    let s = ok(&limits("max_connections: 3"));
    assert_eq!(s.server.max_connections, 3);
    let e = err(&limits("max_requests_in_flight: 0"));
    check(&e, "server.limits.max_requests_in_flight", Some((5, 29)));
    check(&e, "outside 1..=1000000", None);
    let e = err(&limits("max_requests_in_flight: 1000001"));
    check(&e, "is outside 1..=1000000", None);
    assert!(e.hint.as_deref().unwrap_or("").contains("503 gateway_busy"));
    let s = ok(&limits("max_requests_in_flight: 1"));
    assert_eq!(s.server.max_requests_in_flight, 1);
}

#[test]
fn trusted_proxies_are_cidrs() {
    let p = |v: &str| {
        with(
            "  plaintext: true\n",
            &format!("  plaintext: true\n  trusted_proxies: [{v}]\n"),
        )
    };
    let s = ok(&p("\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\""));
    assert_eq!(s.server.trusted_proxies.len(), 3);
    let e = err(&p("\"10.0.0.0/8\", \"10.1.2.3/8\""));
    check(&e, "server.trusted_proxies[1]", Some((4, 35)));
    assert!(e.message.contains("bits set after the prefix"), "{e}");
    let e = err(&p("\"proxy.corp\""));
    check(&e, "is not an IP address", None);
}

#[test]
fn summary_warns_about_plaintext_off_loopback() {
    let out = crate::config::summary(&ok(BASE));
    assert!(
        !out.lines()
            .any(|l| l.starts_with("WARNING") && l.contains("plain HTTP")),
        "{out}"
    );
    let out = crate::config::summary(&ok(&with("127.0.0.1:8443", "0.0.0.0:8443")));
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARNING") && l.contains("plain HTTP")),
        "{out}"
    );
    let text = with("127.0.0.1:8443", "0.0.0.0:8443").replace(
        "  plaintext: true\n",
        "  tls:\n    cert_file: /c.pem\n    key_file: /k.pem\n  trusted_proxies: [\"10.0.0.0/8\"]\n",
    );
    let out = crate::config::summary(&ok(&text));
    assert!(
        !out.lines()
            .any(|l| l.starts_with("WARNING") && l.contains("plain HTTP")),
        "{out}"
    );
    assert!(
        out.contains("X-Forwarded-For trusted from 10.0.0.0/8"),
        "{out}"
    );
}

fn with_state(block: &str) -> String {
    format!("{BASE}state:\n  redis:\n{block}")
}

#[test]
fn state_redis_loads_with_defaults_and_check_warns_on_plain_remote_redis() {
    let s = ok(&with_state(
        "    url: \"redis://10.0.0.7:6379/0\"\n    username: passgate\n    password: env:PASSGATE_REDIS_PASSWORD\n",
    ));
    let r = s.state.clone().expect("state");
    assert_eq!(
        (r.key_prefix.as_str(), r.timeout_ms, r.min_replicas_ack),
        ("passgate", 200, 0)
    );
    assert_eq!(
        r.password,
        Some(SecretRef::Env("PASSGATE_REDIS_PASSWORD".into()))
    );
    let text = crate::config::summary(&s);
    assert!(
        text.contains("WARNING       state.redis.url: plain redis://"),
        "{text}"
    );
    assert!(
        crate::config::warnings(&s)
            .iter()
            .any(|w| w.key == "state.redis.url"),
        "--strict fails on it"
    );
    assert!(text.contains("env:PASSGATE_REDIS_PASSWORD"), "{text}");
    // Loopback plain and rediss:// anywhere: no warning.
    for url in ["redis://127.0.0.1:6379/0", "rediss://redis.internal:6380/0"] {
        let s = ok(&with_state(&format!("    url: \"{url}\"\n")));
        assert!(!crate::config::summary(&s).contains("plain redis://"));
    }
    // No state: memory, said so.
    assert!(crate::config::summary(&ok(BASE)).contains("state         in this process"));
}

#[test]
fn state_redis_is_validated_where_it_is_written() {
    let base_lines = BASE.lines().count();
    let e = err(&with_state("    url: \"redis://:hunter2@10.0.0.7:6379\"\n"));
    check(&e, "state.redis.url", Some((base_lines + 3, 10)));
    assert!(!format!("{e}").contains("hunter2"), "{e}");
    check(
        &err(&with_state("    url: \"http://10.0.0.7\"\n")),
        "not a redis:// or rediss:// URL",
        None,
    );
    check(&err(&with_state("    username: x\n")), "no server", None);
    check(
        &err(&with_state("    url: \"redis://a:1\"\n    sentinel:\n      master_name: m\n      nodes: [\"redis://b:26379\"]\n")),
        "both `url` and `sentinel`",
        None,
    );
    check(
        &err(&with_state(
            "    sentinel:\n      master_name: m\n      nodes: []\n",
        )),
        "no Sentinel nodes",
        None,
    );
    check(
        &err(&with_state("    url: \"redis://a:1\"\n    timeout_ms: 0\n")),
        "between 1 and 10000",
        None,
    );
    check(
        &err(&with_state(
            "    url: \"redis://a:1\"\n    key_prefix: \"a{b}\"\n",
        )),
        "braces",
        None,
    );
    // Inline passwords are refused like every other secret, without echoing them.
    let e = err(&with_state(
        "    url: \"redis://a:1\"\n    password: hunter2\n",
    ));
    assert!(!format!("{e}").contains("hunter2"), "{e}");
    // Unknown keys are refused.
    check(
        &err(&with_state(
            "    url: \"redis://a:1\"\n    pasword: env:X\n",
        )),
        "pasword",
        None,
    );
    // Sentinel with one scheme loads.
    let s = ok(&with_state("    sentinel:\n      master_name: passgate\n      nodes: [\"redis://10.0.0.5:26379\", \"redis://10.0.0.6:26379\"]\n"));
    assert_eq!(
        s.state.and_then(|r| r.sentinel).map(|s| s.nodes.len()),
        Some(2)
    );
}

/// Finding 5: each unsafe setting `check` used to accept without a word is now refused with a
/// bound or named in a WARNING with its reason.
#[test]
fn unsafe_settings_are_bounded_or_warned() {
    let oa = |extra: &str| {
        with(
            "  audiences: [\"api://passgate\"]\n",
            &format!(
                "  audiences: [\"api://passgate\"]\n  required_scope: Passgate.Recover\n{extra}"
            ),
        )
    };
    // Bounds (errors).
    for (text, key) in [
        (
            oa("  jwks_refresh_floor_seconds: 0\n  jwks_max_age_seconds: 0\n"),
            "operator_auth.jwks_max_age_seconds",
        ),
        (
            oa("  leeway_seconds: 600\n"),
            "operator_auth.leeway_seconds",
        ),
        (
            oa("  token_types: [JWT, anything]\n"),
            "operator_auth.token_types[1]",
        ),
        (
            with(
                "  audiences: [\"api://passgate\"]\n",
                "  audiences: [\"api://passgate\", \"https://graph.microsoft.com/\"]\n",
            ),
            "operator_auth.audiences[1]",
        ),
        (
            with(
                "  audiences: [\"api://passgate\"]\n",
                "  audiences: [\"00000003-0000-0000-c000-000000000000\"]\n",
            ),
            "operator_auth.audiences[0]",
        ),
        (
            format!("{}graph:\n  facts_cache_ttl_seconds: 31536000\n", oa("")),
            "graph.facts_cache_ttl_seconds",
        ),
        (
            oa("").replace(
                "  plaintext: true\n",
                "  plaintext: true\n  trusted_proxies: [\"0.0.0.0/0\"]\n",
            ),
            "server.trusted_proxies[0]",
        ),
        (
            oa("").replace(
                "  plaintext: true\n",
                "  plaintext: true\n  trusted_proxies: [\"::/0\"]\n",
            ),
            "server.trusted_proxies[0]",
        ),
        (
            oa("").replace(
                "  plaintext: true\n",
                "  plaintext: true\n  limits:\n    unauthenticated_per_client: \"0 per 1s\"\n",
            ),
            "server.limits.unauthenticated_per_client",
        ),
        (
            oa("").replace(
                "  plaintext: true\n",
                "  plaintext: true\n  limits:\n    unauthenticated_per_client: plenty\n",
            ),
            "server.limits.unauthenticated_per_client",
        ),
        (
            oa("").replace(
                "  plaintext: true\n",
                "  plaintext: true\n  limits:\n    unauthenticated_summary_seconds: 0\n",
            ),
            "server.limits.unauthenticated_summary_seconds",
        ),
        (
            oa("").replace(
                "  plaintext: true\n",
                "  plaintext: true\n  limits:\n    unauthenticated_summary_seconds: 3601\n",
            ),
            "server.limits.unauthenticated_summary_seconds",
        ),
    ] {
        let e = err(&text);
        check(&e, key, None);
    }
    let budget = ok(&oa("").replace(
        "  plaintext: true\n",
        "  plaintext: true\n  limits:\n    unauthenticated_per_client: \"100 per 1m\"\n",
    ));
    assert_eq!(
        budget.server.unauthenticated_per_client,
        (100, std::time::Duration::from_secs(60))
    );
    assert_eq!(
        budget.server.unauthenticated_summary,
        std::time::Duration::from_secs(60)
    );
    assert_eq!(
        ok(&oa("")).server.unauthenticated_per_client.0,
        20,
        "default 20 per 1s"
    );
    // Warnings, each with its key; a clean config has none.
    let warned = |text: &str| -> Vec<String> {
        crate::config::warnings(&ok(text))
            .into_iter()
            .map(|w| w.key)
            .collect()
    };
    assert_eq!(warned(&oa("")), Vec::<String>::new());
    assert_eq!(warned(BASE), ["operator_auth.required_scope"]);
    assert_eq!(
        warned(&oa("  jwks_refresh_floor_seconds: 0\n")),
        ["operator_auth.jwks_refresh_floor_seconds"]
    );
    assert_eq!(
        warned(&oa("  leeway_seconds: 300\n")),
        ["operator_auth.leeway_seconds"]
    );
    assert_eq!(
        warned(&format!(
            "{}graph:\n  facts_cache_ttl_seconds: 3600\n",
            oa("")
        )),
        ["graph.facts_cache_ttl_seconds"]
    );
    assert_eq!(
        warned(&oa("").replace(
            "  plaintext: true\n",
            "  plaintext: true\n  trusted_proxies: [\"10.0.0.0/8\"]\n"
        )),
        ["server.trusted_proxies"]
    );
    let admin = format!("{}admin:\n  listen: \"0.0.0.0:9090\"\n", oa(""));
    assert_eq!(warned(&admin), ["admin.listen"]);
    let out = crate::config::summary(&ok(&admin));
    assert!(
        out.contains("admin         0.0.0.0:9090"),
        "admin shown: {out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARNING") && l.contains("admin.listen")),
        "{out}"
    );
    assert_eq!(
        warned(&oa("").replace(
            "  path: /tmp/audit.jsonl\n",
            "  path: /tmp/audit.jsonl\n  min_free_bytes: 0\n"
        )),
        ["audit.min_free_bytes"]
    );
    let unlimited = format!("{}{SECOND}", oa(""));
    assert_eq!(warned(&unlimited), ["policies.second"]);
}

/// BASE with `extra` (policy keys, 4-space indent) added to its `helpdesk` policy, from line 20.
fn with_controls(extra: &str) -> String {
    with(
        "      per_device: \"1 per 10m\"\n",
        &format!("      per_device: \"1 per 10m\"\n{extra}"),
    )
}

const GLASS: &str = "    justification:\n      required: true\n    break_glass: true\n    active_until: \"2026-12-01T19:00:00+01:00\"\n";

#[test]
fn controls_load_and_compile() {
    let s = ok(&format!(
        "{}limits:\n  per_device: \"3 per 1d\"\n  global: \"500 per 1d\"\n",
        with_controls(
            "    justification:\n      required: true\n      pattern: \"(INC|CHG)[0-9]{7}\"\n    allow_own_device: true\n"
        )
    ));
    let p = &s.policies[0];
    let j = p.justification.as_ref().unwrap();
    assert!(j.required);
    let pattern = j.pattern.as_ref().unwrap();
    assert_eq!(pattern.as_str(), "(INC|CHG)[0-9]{7}");
    assert!(pattern.matches("CHG0000001") && !pattern.matches("CHG0000001x"));
    assert!(p.allow_own_device);
    assert_eq!(p.break_glass, None);
    assert_eq!(
        s.caps,
        vec![
            Limit {
                scope: LimitScope::PerDevice,
                count: 3,
                window: Duration::from_secs(86_400)
            },
            Limit {
                scope: LimitScope::Global,
                count: 500,
                window: Duration::from_secs(86_400)
            }
        ]
    );
    // Defaults: no rule, separation of duty on, not break-glass, no caps.
    let s = ok(BASE);
    let p = &s.policies[0];
    assert_eq!(
        (&p.justification, p.allow_own_device, &p.break_glass),
        (&None, false, &None)
    );
    assert!(s.caps.is_empty());
    // Break-glass: the time is resolved to UTC; a pattern-less required justification is enough.
    let s = ok(&with_controls(GLASS));
    let bg = s.policies[0].break_glass.unwrap();
    assert_eq!(bg.active_until.to_rfc3339(), "2026-12-01T18:00:00+00:00");
    // Optional justification with a pattern.
    let s = ok(&with_controls(
        "    justification: {pattern: \"INC[0-9]+\"}\n",
    ));
    let j = s.policies[0].justification.as_ref().unwrap();
    assert!(!j.required && j.pattern.is_some());
}

#[test]
fn controls_are_validated_where_they_are_written() {
    for (extra, needle, line) in [
        ("    justification: {}\n", "asks for nothing", 20),
        (
            "    justification:\n      required: false\n",
            "asks for nothing",
            20,
        ),
        (
            "    justification:\n      required: true\n      pattern: \"(INC\"\n",
            "not a valid regular expression",
            22,
        ),
        (
            "    justification:\n      pattern: \"\"\n",
            "pattern is empty",
            21,
        ),
        // A flow mapping: placed at the enclosing key.
        (
            "    justification: {required: true, pattern: \"[0-9\"}\n",
            "not a valid regular expression",
            20,
        ),
        (
            "    break_glass: true\n    active_until: \"2026-12-01T18:00:00Z\"\n",
            "does not require a justification",
            20,
        ),
        (
            "    justification: {pattern: \"x\"}\n    break_glass: true\n    active_until: \"2026-12-01T18:00:00Z\"\n",
            "does not require a justification",
            21,
        ),
        (
            "    justification:\n      required: true\n    break_glass: true\n",
            "has no `active_until`",
            22,
        ),
        (
            "    justification:\n      required: true\n    break_glass: true\n    active_until: \"next tuesday\"\n",
            "is not an RFC 3339 time",
            23,
        ),
        (
            "    justification:\n      required: true\n    break_glass: true\n    active_until: \"2026-12-01T18:00:00\"\n",
            "is not an RFC 3339 time",
            23,
        ),
        (
            "    active_until: \"2026-12-01T18:00:00Z\"\n",
            "is not a break-glass policy",
            20,
        ),
    ] {
        let e = err(&with_controls(extra));
        check(&e, needle, None);
        assert_eq!(e.line, Some(line), "{extra:?}: {e}");
        assert!(e.message.starts_with("policies[0]."), "{e}");
    }
    // The pattern error points at the value, with a hint about the syntax and the anchoring.
    let e = err(&with_controls(
        "    justification:\n      required: true\n      pattern: \"(INC\"\n",
    ));
    assert_eq!((e.line, e.column), (Some(22), Some(16)), "{e}");
    assert!(e.hint.as_deref().unwrap().contains("WHOLE"), "{e}");
    assert!(!e.message.contains('\n'), "{e}");
    // Break-glass without limits of its own (the second policy has none).
    let e = err(&format!(
        "{BASE}{}",
        SECOND.replace(
            "      any_device: true\n",
            &format!("      any_device: true\n{GLASS}")
        )
    ));
    check(&e, "has no limits of its own", Some((27, 5)));
    // Unknown keys under `justification` are refused like everywhere else.
    let e = err(&with_controls("    justification:\n      requried: true\n"));
    assert!(e.message.contains("unknown field"), "{e}");
    // Top-level caps use the limits parser, located.
    let e = err(&format!("{BASE}limits:\n  per_device: \"0 per 1h\"\n"));
    check(&e, "limits.per_device", Some((21, 15)));
    let e = err(&format!(
        "{BASE}limits:\n  per_device_total: \"1 per 1h\"\n"
    ));
    assert!(e.message.contains("unknown field"), "{e}");
}

#[test]
fn check_shows_the_controls_and_warns_about_break_glass_windows() {
    let text = format!(
        "{}limits:\n  per_device: \"3 per 1d\"\n",
        with_controls(&format!(
            "    allow_own_device: true\n{}",
            GLASS.replace(
                "      required: true\n",
                "      required: true\n      pattern: \"INC[0-9]{7}\"\n"
            )
        ))
    );
    let s = ok(&text);
    let out = crate::config::summary(&s);
    for want in [
        "caps          3 per 1d per device — across all policies",
        "controls: BREAK-GLASS until 2026-12-01T18:00:00Z; justification required matching `INC[0-9]{7}`; allow_own_device: true",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    let optional = ok(&with_controls(
        "    justification: {pattern: \"INC[0-9]+\"}\n",
    ));
    assert!(crate::config::summary(&optional)
        .contains("controls: justification optional, if sent matching `INC[0-9]+`"));
    assert!(!crate::config::summary(&ok(BASE)).contains("controls:"));
    assert!(!crate::config::summary(&ok(BASE)).contains("caps "));

    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc();
    let keys = |now| -> Vec<String> {
        crate::config::warnings_at(&s, now)
            .into_iter()
            .map(|w| w.key)
            .filter(|k| k.starts_with("policies."))
            .collect()
    };
    let key = "policies.helpdesk.active_until";
    assert_eq!(keys(at("2026-11-30T18:00:00Z")), Vec::<String>::new());
    assert_eq!(keys(at("2026-12-01T18:00:01Z")), [key], "expired");
    assert_eq!(keys(at("2026-08-01T00:00:00Z")), [key], "over 90 days away");
    let w = crate::config::warnings_at(&s, at("2026-12-02T00:00:00Z"));
    assert!(
        w.iter()
            .any(|w| w.reason.contains("has passed") && w.reason.contains("admits nothing")),
        "{w:?}"
    );
}
