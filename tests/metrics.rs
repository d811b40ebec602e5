//! Metrics move as they should under real traffic, and the exposition is valid Prometheus text.

use crate::common::*;
use passgate::sandbox::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_follow_real_traffic() {
    let cfg =
        passgate::dev::DEV_CONFIG.replace("per_device: \"3 per 10m\"", "per_device: \"1 per 10m\"");
    let env = start_with(Some(cfg)).await;
    let alice = token(&env, "alice");
    let before = scrape(&env).await;
    assert_eq!(metric_value(&before, "passgate_build_info", &[]), 1.0);
    assert_eq!(metric_value(&before, "passgate_requests_total", &[]), 0.0);

    // One allowed call, then our own 429 for the same device.
    assert_eq!(
        send(
            "POST",
            &action_url(&env, "kiosk-phone"),
            &[bearer(&alice)],
            b""
        )
        .await
        .status,
        204
    );
    let limited = send(
        "POST",
        &action_url(&env, "kiosk-phone"),
        &[bearer(&alice)],
        b"",
    )
    .await;
    assert_eq!(limited.status, 429);
    // Each denial reason once.
    let bob = token(&env, "bob");
    assert_eq!(
        send(
            "POST",
            &action_url(&env, "kiosk-phone"),
            &[bearer(&bob)],
            b""
        )
        .await
        .status,
        403
    );
    assert_eq!(
        send(
            "POST",
            &action_url(&env, "finance-laptop"),
            &[bearer(&alice)],
            b""
        )
        .await
        .status,
        403
    );
    assert_eq!(
        send(
            "POST",
            &action_url(&env, "lobby-ipad"),
            &[bearer(&alice)],
            b""
        )
        .await
        .status,
        403
    );
    assert_eq!(
        send("POST", &action_url(&env, "kiosk-phone"), &[], b"")
            .await
            .status,
        401
    );
    assert_eq!(
        send("GET", &format!("{}/v1.0/users", env.gateway_url), &[], b"")
            .await
            .status,
        404
    );
    // Graph throttles the action (its own 429), then fails (503): counted apart from ours.
    let automation = token(&env, "automation");
    env.sandbox.set_fault(Fault::ActionStatus {
        status: 429,
        retry_after: Some(7),
    });
    let graph_429 = send(
        "POST",
        &action_url(&env, "kiosk-phone"),
        &[bearer(&automation)],
        b"",
    )
    .await;
    assert_eq!(graph_429.status, 429);
    assert_eq!(
        graph_429.header("retry-after").as_deref(),
        Some("7"),
        "Graph's Retry-After passes through"
    );
    assert_ne!(
        graph_429.code(),
        "rate_limited",
        "Graph's 429 is not passgate's"
    );
    env.sandbox.set_fault(Fault::ActionStatus {
        status: 503,
        retry_after: None,
    });
    assert_eq!(
        send(
            "POST",
            &action_url(&env, "kiosk-phone"),
            &[bearer(&automation)],
            b""
        )
        .await
        .status,
        503
    );
    env.sandbox.set_fault(Fault::None);
    // Outcome records are answered once written; wait for their fsync before counting.
    env.gateway().audit.sync().await.expect("audit sync");

    let m = scrape(&env).await;
    let req = |labels: &[&str]| metric_value(&m, "passgate_requests_total", labels);
    assert_eq!(req(&["decision=\"allow\""]), 3.0, "{m}");
    assert_eq!(req(&["reason=\"rate_limited\""]), 1.0);
    assert_eq!(req(&["reason=\"operator_not_approved\""]), 1.0);
    assert_eq!(req(&["reason=\"device_not_in_allowed_group\""]), 1.0);
    assert_eq!(req(&["reason=\"platform_not_allowed\""]), 1.0);
    assert_eq!(req(&["reason=\"token_missing\""]), 1.0);
    assert_eq!(
        req(&["route=\"unmatched\"", "reason=\"route_not_found\""]),
        1.0
    );
    assert_eq!(req(&["route=\"device_management\""]), 8.0);
    assert_eq!(
        metric_value(
            &m,
            "passgate_rate_limited_total",
            &["policy=\"helpdesk-kiosk-phones\"", "scope=\"per_device\""]
        ),
        1.0
    );
    let up = |class: &str| {
        metric_value(
            &m,
            "passgate_upstream_responses_total",
            &[&format!("class=\"{class}\"")],
        )
    };
    assert_eq!(
        (up("2xx"), up("429"), up("5xx"), up("4xx")),
        (1.0, 1.0, 1.0, 0.0)
    );
    assert_eq!(
        metric_value(&m, "passgate_request_duration_seconds_count", &[]),
        9.0
    );
    for stage in ["auth", "facts", "decide", "rate_limit", "audit", "upstream"] {
        let n = metric_value(
            &m,
            "passgate_stage_duration_seconds_count",
            &[&format!("stage=\"{stage}\"")],
        );
        assert!(n >= 1.0, "stage {stage} observed: {n}");
    }
    assert_eq!(
        metric_value(
            &m,
            "passgate_stage_duration_seconds_count",
            &["stage=\"upstream\""]
        ),
        3.0
    );
    assert_eq!(
        metric_value(
            &m,
            "passgate_app_token_refreshes_total",
            &["result=\"success\""]
        ),
        1.0,
        "token cached"
    );
    assert!(metric_value(&m, "passgate_jwks_refreshes_total", &["result=\"success\""]) >= 1.0);
    assert!(metric_value(&m, "passgate_device_facts_cache_total", &["result=\"hit\""]) >= 1.0);
    assert!(
        metric_value(
            &m,
            "passgate_device_facts_cache_total",
            &["result=\"miss\""]
        ) >= 1.0
    );
    // 9 decision records + 3 outcome records, all durable.
    assert_eq!(metric_value(&m, "passgate_audit_records_total", &[]), 12.0);
    assert_eq!(
        metric_value(&m, "passgate_audit_write_failures_total", &[]),
        0.0
    );
    let fsyncs = metric_value(&m, "passgate_audit_fsync_duration_seconds_count", &[]);
    assert!((1.0..=12.0).contains(&fsyncs), "fsyncs observed: {fsyncs}");
    assert_eq!(metric_value(&m, "passgate_in_flight_requests", &[]), 0.0);
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        for secret in [alice.as_str(), bob.as_str()] {
            assert!(!line.contains(secret));
        }
        assert!(
            !line.contains(&device_id(&env, "kiosk-phone")),
            "no device id as a label"
        );
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_endpoints() {
    let env = start().await;
    let admin = env.admin_url.clone().expect("admin listener");
    let h = send("GET", &format!("{admin}/healthz"), &[], b"").await;
    assert_eq!(h.status, 200);
    let r = send("GET", &format!("{admin}/readyz"), &[], b"").await;
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(r.status, 200, "{body}");
    for check in ["config", "jwks", "app_token", "audit"] {
        assert!(body.contains(check), "readyz names {check}: {body}");
    }
    // The token endpoint starts failing and no token is cached yet in a fresh gateway: not ready.
    let env2 = start().await;
    env2.sandbox.set_fault(Fault::TokenEndpointStatus(500));
    let admin2 = env2.admin_url.clone().unwrap();
    let r = send("GET", &format!("{admin2}/readyz"), &[], b"").await;
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(r.status, 503, "{body}");
    assert!(body.contains("FAIL app_token"), "{body}");
    assert_eq!(
        send("GET", &format!("{admin2}/nope"), &[], b"")
            .await
            .status,
        404
    );
    env.stop().await;
    env2.stop().await;
}

/// `promtool check metrics` must print nothing. promtool comes from Debian's `prometheus`
/// package; `.ci/run` installs it and sets PASSGATE_REQUIRE_TOOLS=1 so its absence fails there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_exposition() {
    if !tool_available("promtool") {
        return;
    }
    let env = start().await;
    let alice = token(&env, "alice");
    send(
        "POST",
        &action_url(&env, "kiosk-phone"),
        &[bearer(&alice)],
        b"",
    )
    .await;
    send(
        "POST",
        &action_url(&env, "finance-laptop"),
        &[bearer(&alice)],
        b"",
    )
    .await;
    let m = scrape(&env).await;
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
    env.stop().await;
}
