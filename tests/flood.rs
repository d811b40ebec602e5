//! Unauthenticated floods (hardening round 2, finding 2): refusals before authentication past a
//! client's budget are answered 429 without a record each and summarised per client and reason;
//! authenticated requests from the same address are untouched; the audit disk's free space is
//! watched by `/readyz` and the metrics.

use crate::common::*;
use passgate::dev::DEV_CONFIG;
use serde_json::Value;
use std::time::{Duration, Instant};

/// The dev config with a budget of 5 refusals before authentication per hour (a window long
/// enough that the test never straddles two) and summaries written only at shutdown.
fn flood_config() -> String {
    DEV_CONFIG.replacen(
        "  plaintext: true\n",
        "  plaintext: true\n  limits:\n    unauthenticated_per_client: \"5 per 1h\"\n    unauthenticated_summary_seconds: 3600\n",
        1,
    )
}

#[tokio::test]
async fn a_flood_before_authentication_is_throttled_and_summarised_while_operators_are_served() {
    let env = start_with(Some(flood_config())).await;
    let url = action_url(&env, "kiosk-phone");
    let garbage = vec![("authorization", "Bearer not.a.token".to_string())];
    for i in 0..5 {
        let r = send("POST", &url, &garbage, b"").await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "token_malformed"),
            "refusal {i} is within the budget"
        );
    }
    for _ in 0..30 {
        let r = send("POST", &url, &garbage, b"").await;
        assert_eq!(r.status, 429);
        assert_eq!(r.code(), "unauthenticated_throttled");
        let retry: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!((1..=3600).contains(&retry), "Retry-After {retry}");
        assert!(r.header("www-authenticate").is_none());
    }
    let unknown = format!("{}/v1.0/me/messages", env.gateway_url);
    for _ in 0..10 {
        let r = send("GET", &unknown, &[], b"").await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (429, "unauthenticated_throttled")
        );
    }
    // Authenticated requests from the same (spent) address are decided and audited as ever.
    let alice = send("POST", &url, &[bearer(&token(&env, "alice"))], b"").await;
    assert_eq!(
        alice.status,
        204,
        "an approved operator is served: {:?}",
        alice.json()
    );
    let bob = send("POST", &url, &[bearer(&token(&env, "bob"))], b"").await;
    assert_eq!(
        (bob.status, bob.code().as_str()),
        (403, "operator_not_approved")
    );

    let m = scrape(&env).await;
    assert_eq!(
        metric_value(
            &m,
            "passgate_unauthenticated_throttled_total",
            &["reason=\"token_malformed\""]
        ),
        30.0
    );
    assert_eq!(
        metric_value(
            &m,
            "passgate_unauthenticated_throttled_total",
            &["reason=\"route_not_found\""]
        ),
        10.0
    );
    assert_eq!(
        metric_value(
            &m,
            "passgate_requests_total",
            &["reason=\"unauthenticated_throttled\""]
        ),
        40.0
    );
    assert_eq!(
        metric_value(&m, "passgate_unauthenticated_throttled_clients", &[]),
        1.0
    );

    // Before shutdown: one record per request within the budget and per authenticated request,
    // none for the 40 throttled ones.
    let decisions = decision_records(&env);
    let malformed = decisions
        .iter()
        .filter(|d| d["reason"] == "token_malformed")
        .count();
    assert_eq!(malformed, 5);
    assert_eq!(
        decisions.len(),
        7,
        "5 refusals, alice's allow, bob's denial"
    );
    assert!(!audit_records(&env).iter().any(|r| r["kind"] == "throttled"));

    let (set, records, summaries) = stop_and_read_summaries(env).await;
    assert_eq!(
        summaries.len(),
        2,
        "one per (client, reason): {summaries:?}"
    );
    let of = |reason: &str| {
        summaries
            .iter()
            .find(|s| s["reason"] == reason)
            .unwrap_or_else(|| panic!("a summary for {reason}"))
    };
    let tokens = of("token_malformed");
    assert_eq!(tokens["count"], 30);
    assert_eq!(tokens["client_ip"], "127.0.0.1");
    assert_eq!(
        (tokens["status"].as_u64(), tokens["answered"].as_str()),
        (Some(429), Some("unauthenticated_throttled"))
    );
    assert!(tokens["first_time"].as_str().unwrap() <= tokens["last_time"].as_str().unwrap());
    assert_eq!(of("route_not_found")["count"], 10);
    let total: u64 = records
        .iter()
        .map(|r| match r["kind"].as_str() {
            Some("decision") => 1,
            Some("throttled") => r["count"].as_u64().unwrap(),
            _ => 0,
        })
        .sum();
    assert_eq!(total, 47, "every request is accounted for in the chain");
    passgate::audit::verify_set(&set, &passgate::audit::VerifyOptions::default())
        .expect("the chain with summaries verifies");
    let filter = passgate::audit::SearchFilter {
        reason: Some("unauthenticated_throttled".into()),
        ..Default::default()
    };
    let found = passgate::audit::search(&set, &filter).unwrap();
    assert_eq!(
        found.hits.len(),
        2,
        "search finds the summaries by the code clients got"
    );
    let filter = passgate::audit::SearchFilter {
        operator: Some("alice@contoso.onmicrosoft.com".into()),
        ..Default::default()
    };
    let found = passgate::audit::search(&set, &filter).unwrap();
    assert!(found.hits.iter().all(|h| h.record["kind"] == "decision"));
}

#[tokio::test]
async fn readyz_fails_and_the_gauges_show_it_when_the_audit_disk_is_below_its_floor() {
    let healthy = start().await;
    let admin = healthy.admin_url.clone().unwrap();
    let r = send("GET", &format!("{admin}/readyz"), &[], b"").await;
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(r.status, 200, "{body}");
    assert!(body.contains("ok   audit_disk"), "{body}");
    let m = scrape(&healthy).await;
    assert!(metric_value(&m, "passgate_audit_free_bytes", &[]) > 0.0);
    assert_eq!(
        metric_value(&m, "passgate_audit_min_free_bytes", &[]),
        536_870_912.0
    );

    // A floor no disk here can meet (1 EB) stands in for a disk that is filling up.
    let config = DEV_CONFIG.replacen(
        "  rotate_max_bytes: 1048576",
        "  rotate_max_bytes: 1048576\n  min_free_bytes: 1000000000000000000",
        1,
    );
    let low = start_with(Some(config)).await;
    let admin = low.admin_url.clone().unwrap();
    let r = send("GET", &format!("{admin}/readyz"), &[], b"").await;
    let body = String::from_utf8_lossy(&r.body).to_string();
    assert_eq!(r.status, 503, "{body}");
    assert!(body.contains("FAIL audit_disk"), "{body}");
    assert!(
        body.contains("audit.min_free_bytes"),
        "the failure names the setting: {body}"
    );
    let m = scrape(&low).await;
    assert_eq!(metric_value(&m, "passgate_audit_min_free_bytes", &[]), 1e18);
    assert!(metric_value(&m, "passgate_audit_free_bytes", &[]) < 1e18);
}

/// The request cap (`server.limits.max_requests_in_flight`) bounds request tasks, not streams or
/// connections: an HTTP/2 client that resets its stream frees the stream while its action goes on
/// in its own task, and that task keeps its slot. A request over the cap is answered `503
/// gateway_busy` at once, reads nothing, forwards nothing, has no record of its own and is
/// counted into its client's `throttled` summary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_request_cap_are_shed_at_once_even_after_their_http2_stream_was_reset() {
    use http_body_util::{BodyExt, Empty};
    let env = start_with(Some(DEV_CONFIG.replacen(
        "  plaintext: true\n",
        "  plaintext: true\n  limits:\n    max_requests_in_flight: 1\n",
        1,
    )))
    .await;
    // Long enough for everything below to happen while "Graph" still works on the first action.
    env.sandbox
        .set_fault(passgate::sandbox::Fault::ActionDelay(Duration::from_secs(
            8,
        )));
    let action = || {
        http::Request::post(format!(
            "http://passgate{}",
            action_path(&env, "kiosk-phone")
        ))
        .header("authorization", format!("Bearer {}", token(&env, "alice")))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap()
    };
    // alice's action over HTTP/2 (prior knowledge on the plain listener), reset by its client as
    // soon as Graph has it.
    let io = hyper_util::rt::TokioIo::new(
        tokio::net::TcpStream::connect(gateway_addr(&env))
            .await
            .unwrap(),
    );
    let (h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let mut first = h2.clone();
    let req = action();
    let stream = tokio::spawn(async move { first.send_request(req).await.map(|r| r.status()) });
    let deadline = Instant::now() + Duration::from_secs(15);
    while env.sandbox.recover_passcode_calls().is_empty() {
        assert!(Instant::now() < deadline, "the action never reached Graph");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stream.abort();
    assert!(stream.await.unwrap_err().is_cancelled());

    // The next request on the same connection comes after the reset (HTTP/2 frames are read in
    // order), and the reset action's task still holds the only slot: shed without waiting.
    let mut second = h2.clone();
    second.ready().await.unwrap();
    let started = Instant::now();
    let resp = second.send_request(action()).await.unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "gateway_busy");
    assert!(
        took < Duration::from_secs(2),
        "answered at once, not after the action it waited behind: {took:?}"
    );
    // And over HTTP/1.1 on a connection of its own.
    let r = alice(&env).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "gateway_busy");
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(r.header("request-id").is_some());
    assert_eq!(
        env.sandbox.recover_passcode_calls().len(),
        1,
        "nothing of the shed requests was forwarded"
    );
    let decisions = decision_records(&env);
    assert_eq!(
        decisions.len(),
        1,
        "only the reset request's allow: {decisions:?}"
    );
    assert_eq!(decisions[0]["decision"], "allow");
    let m = scrape(&env).await;
    assert_eq!(
        metric_value(
            &m,
            "passgate_requests_total",
            &["route=\"-\"", "reason=\"gateway_busy\""]
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &m,
            "passgate_shed_requests_total",
            &["listener=\"gateway\""]
        ),
        2.0
    );
    assert_eq!(
        metric_value(&m, "passgate_shed_requests_total", &["listener=\"admin\""]),
        0.0,
        "the admin listener has a slot of its own"
    );
    assert_eq!(
        metric_value(&m, "passgate_max_requests_in_flight", &[]),
        1.0
    );
    assert_eq!(metric_value(&m, "passgate_in_flight_requests", &[]), 1.0);

    // The reset request's action completes and is recorded; its slot is then free again.
    let outcome = first_record_of_kind(
        &env,
        "outcome",
        "no outcome record for the reset request's action",
    )
    .await;
    assert_eq!(outcome["status"], 204);
    env.sandbox.set_fault(passgate::sandbox::Fault::None);
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&env, "passgate_in_flight_requests", &[]).await != 0.0 {
        assert!(
            Instant::now() < deadline,
            "the reset request's task never ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = alice(&env).await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    conn.abort();

    // At shutdown the shed requests are accounted for in the chain by their summary.
    let (set, _, summaries) = stop_and_read_summaries(env).await;
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    let s = &summaries[0];
    assert_eq!(s["reason"], "gateway_busy");
    assert_eq!(s["answered"], "gateway_busy");
    assert_eq!(s["status"], 503);
    assert_eq!(s["count"], 2);
    assert_eq!(s["client_ip"], "127.0.0.1");
    passgate::audit::verify_set(&set, &passgate::audit::VerifyOptions::default())
        .expect("the chain with the summary verifies");
}
