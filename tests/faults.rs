//! Faults around the gateway — Graph, Entra, the local audit disk — and what each looks like to an
//! operator (status, Graph-shaped code), to the security team (audit records) and to monitoring
//! (metrics). After every fault the same gateway must answer a healthy request again.

use crate::common::*;
use passgate::dev::DevEnv;
use passgate::sandbox::Fault;
use std::time::{Duration, Instant};

/// The dev config with room for several allowed calls on one device and the given `graph:` keys.
fn config(graph_extra: &str, auth_extra: &str) -> String {
    passgate::dev::DEV_CONFIG
        .replace("per_device: \"3 per 10m\"", "per_device: \"100 per 10m\"")
        .replace(
            "per_operator: \"20 per 1h\"",
            "per_operator: \"100 per 1h\"",
        )
        .replace(
            "  facts_cache_ttl_seconds: 60",
            &format!("  facts_cache_ttl_seconds: 60\n{graph_extra}"),
        )
        .replace(
            "  required_scope: \"RecoverPasscode.Request\"",
            &format!("  required_scope: \"RecoverPasscode.Request\"\n{auth_extra}"),
        )
}

async fn start_cfg(graph_extra: &str, auth_extra: &str) -> DevEnv {
    start_with(Some(config(graph_extra, auth_extra))).await
}

/// The gateway survived the fault: a healthy request is forwarded and answered 204.
async fn still_healthy(env: &DevEnv) {
    let before = env.sandbox.recover_passcode_calls().len();
    let r = alice(env).await;
    assert_eq!(
        r.status,
        204,
        "healthy request after the fault: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(env.sandbox.recover_passcode_calls().len(), before + 1);
    verify_audit(env);
}

fn last_decision(env: &DevEnv) -> serde_json::Value {
    decision_records(env).pop().expect("a decision record")
}

/// The outcome record that belongs to the last decision record.
fn last_outcome(env: &DevEnv) -> serde_json::Value {
    let d = last_decision(env);
    audit_records(env)
        .into_iter()
        .find(|r| r["kind"] == "outcome" && r["request_id"] == d["request_id"])
        .expect("an outcome record for the last decision")
}

fn assert_denied(env: &DevEnv, r: &Resp, status: u16, code: &str) {
    assert_eq!(
        r.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.code(), code);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let d = last_decision(env);
    assert_eq!(d["decision"], "deny");
    assert_eq!(d["reason"], code);
    assert_eq!(d["status"], status);
    assert_eq!(
        d["request_id"].as_str(),
        r.json()["error"]["innerError"]["request-id"].as_str(),
        "the operator's request-id finds the audit record"
    );
}

// ---------------------------------------------------------------- Graph

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_refusing_connections_during_facts_is_503_device_facts_unavailable() {
    let env = start().await;
    env.sandbox.stop_graph().await;
    let r = alice(&env).await;
    assert_denied(&env, &r, 503, "device_facts_unavailable");
    assert!(env.sandbox.recover_passcode_calls().is_empty());
    assert_eq!(
        metric(
            &env,
            "passgate_requests_total",
            &["reason=\"device_facts_unavailable\""]
        )
        .await,
        1.0
    );
    env.sandbox.restart_graph().await.unwrap();
    still_healthy(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_refusing_the_action_is_502_upstream_unreachable_with_an_outcome_record() {
    let env = start_cfg("", "").await;
    // Prime the facts cache (TTL 60 s) so the next request gets past facts without Graph.
    assert_eq!(alice(&env).await.status, 204);
    env.sandbox.stop_graph().await;
    let r = alice(&env).await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "upstream_unreachable");
    let d = last_decision(&env);
    assert_eq!(d["decision"], "allow", "the decision was made and recorded");
    let o = last_outcome(&env);
    assert_eq!(o["status"], 502);
    assert_eq!(o["error"], "upstream_unreachable");
    assert_eq!(
        env.sandbox.recover_passcode_calls().len(),
        1,
        "only the primer"
    );
    // Allowed by policy but never served: counted under the failure, not as "allowed".
    let served = |reason: &'static str| {
        let env = &env;
        async move {
            let labels = ["decision=\"allow\"", reason];
            metric(env, "passgate_requests_total", &labels).await
        }
    };
    assert_eq!(served("reason=\"allowed\"").await, 1.0, "only the primer");
    assert_eq!(served("reason=\"upstream_unreachable\"").await, 1.0);
    assert_eq!(
        metric(
            &env,
            "passgate_upstream_responses_total",
            &["class=\"error\""]
        )
        .await,
        1.0
    );
    env.sandbox.restart_graph().await.unwrap();
    still_healthy(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_action_is_504_upstream_timeout_and_the_post_is_sent_exactly_once() {
    let env = start_cfg("  action_timeout_seconds: 1", "").await;
    env.sandbox
        .set_fault(Fault::ActionDelay(Duration::from_secs(5)));
    let t = Instant::now();
    let r = alice(&env).await;
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "upstream_timeout");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "answered at the 1 s action timeout, took {took:?}"
    );
    // The gateway has answered: any retry would have been sent before that.
    assert_eq!(
        env.sandbox.recover_passcode_calls().len(),
        1,
        "a privileged POST is never retried"
    );
    assert_eq!(last_decision(&env)["decision"], "allow");
    let o = last_outcome(&env);
    assert_eq!(o["status"], 504);
    assert_eq!(o["error"], "upstream_timeout");
    assert_eq!(
        metric(
            &env,
            "passgate_upstream_responses_total",
            &["class=\"error\""]
        )
        .await,
        1.0
    );
    env.sandbox.set_fault(Fault::None);
    still_healthy(&env).await;
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_that_finds_every_graph_slot_busy_is_503_upstream_busy_and_nothing_is_sent() {
    let env = start_cfg(
        "  max_concurrent_requests: 1\n  queue_timeout_seconds: 1\n  action_timeout_seconds: 20",
        "",
    )
    .await;
    env.sandbox
        .set_fault(Fault::ActionDelay(Duration::from_secs(4)));
    // The first action takes the only slot and holds it while "Graph" works on it.
    let (url, tok) = (action_url(&env, "kiosk-phone"), token(&env, "alice"));
    let first = tokio::spawn(async move { send("POST", &url, &[bearer(&tok)], b"").await });
    let deadline = Instant::now() + Duration::from_secs(15);
    while env.sandbox.recover_passcode_calls().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first action never reached Graph"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The second (facts cached by the first) queues for the slot and is refused after 1 s.
    let t = Instant::now();
    let r = alice(&env).await;
    let took = t.elapsed();
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "upstream_busy");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "refused at the 1 s queue timeout, took {took:?}"
    );
    assert_eq!(
        env.sandbox.recover_passcode_calls().len(),
        1,
        "a request refused for want of a slot was never sent"
    );
    // The allow record was durable before the wait: its outcome says what the operator got.
    assert_eq!(last_decision(&env)["decision"], "allow");
    let o = last_outcome(&env);
    assert_eq!(o["status"], 503);
    assert_eq!(o["error"], "upstream_busy");
    // The first still holds the only slot; the operator's dashboard shows it at the cap.
    assert_eq!(
        metric(&env, "passgate_graph_requests_in_flight", &[]).await,
        1.0
    );
    assert_eq!(
        metric(&env, "passgate_graph_max_concurrent_requests", &[]).await,
        1.0
    );
    let first = first.await.expect("first request task");
    assert_eq!(
        metric(&env, "passgate_graph_requests_in_flight", &[]).await,
        0.0
    );
    assert_eq!(
        first.status,
        204,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    env.sandbox.set_fault(Fault::None);
    still_healthy(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_hanging_up_mid_forward_still_gets_an_outcome_record() {
    let env = start().await;
    env.sandbox
        .set_fault(Fault::ActionDelay(Duration::from_secs(2)));
    // The operator gives up while Graph is still working on the action.
    let gave_up = tokio::time::timeout(Duration::from_millis(800), alice(&env)).await;
    assert!(gave_up.is_err(), "the client hung up before the answer");
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 1);
    assert_eq!(last_decision(&env)["decision"], "allow");
    // Graph acted; its answer must still be recorded. Wait for the record, bounded.
    let outcome = first_record_of_kind(
        &env,
        "outcome",
        "no outcome record for a forwarded action whose operator hung up",
    )
    .await;
    assert_eq!(outcome["status"], 204);
    assert_eq!(outcome["request_id"], last_decision(&env)["request_id"]);
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 1, "not retried");
    env.sandbox.set_fault(Fault::None);
    still_healthy(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_429_passes_through_with_retry_after_and_its_own_code() {
    let env = start().await;
    env.sandbox.set_fault(Fault::ActionStatus {
        status: 429,
        retry_after: Some(7),
    });
    let r = alice(&env).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "TooManyRequests", "Graph's code, not passgate's");
    assert_eq!(r.header("retry-after").as_deref(), Some("7"));
    assert_eq!(last_decision(&env)["decision"], "allow");
    let o = last_outcome(&env);
    assert_eq!(o["status"], 429);
    assert!(o["error"].is_null());
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 1, "not retried");
    assert_eq!(
        metric(
            &env,
            "passgate_upstream_responses_total",
            &["class=\"429\""]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&env, "passgate_rate_limited_total", &[]).await,
        0.0,
        "Graph's throttling is not counted as passgate's own"
    );
    env.sandbox.set_fault(Fault::None);
    still_healthy(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_500_and_503_pass_through_unchanged() {
    let env = start_cfg("", "").await;
    for (status, code) in [(500, "InternalError"), (503, "ServiceUnavailable")] {
        env.sandbox.set_fault(Fault::ActionStatus {
            status,
            retry_after: None,
        });
        let r = alice(&env).await;
        assert_eq!(r.status, status);
        assert_eq!(r.code(), code);
        let o = last_outcome(&env);
        assert_eq!(o["status"], status);
        assert!(o["error"].is_null());
    }
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 2, "each once");
    assert_eq!(
        metric(
            &env,
            "passgate_upstream_responses_total",
            &["class=\"5xx\""]
        )
        .await,
        2.0
    );
    env.sandbox.set_fault(Fault::None);
    still_healthy(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_facts_body_is_503_device_facts_unavailable() {
    let env = start().await;
    env.sandbox.set_fault(Fault::MalformedReads);
    let r = alice(&env).await;
    assert_denied(&env, &r, 503, "device_facts_unavailable");
    assert!(env.sandbox.recover_passcode_calls().is_empty());
    assert_eq!(
        metric(
            &env,
            "passgate_requests_total",
            &["decision=\"deny\"", "reason=\"device_facts_unavailable\""]
        )
        .await,
        1.0
    );
    // The failure was not cached: the next lookup reads Graph again.
    env.sandbox.set_fault(Fault::None);
    still_healthy(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_gone_between_facts_and_action_passes_graphs_404() {
    let env = start().await;
    env.sandbox.set_fault(Fault::DeviceGoneForAction);
    let r = alice(&env).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "ResourceNotFound", "Graph's 404, passed through");
    assert_eq!(last_decision(&env)["decision"], "allow");
    assert_eq!(last_outcome(&env)["status"], 404);
    assert_eq!(
        metric(
            &env,
            "passgate_upstream_responses_total",
            &["class=\"4xx\""]
        )
        .await,
        1.0
    );
    env.sandbox.set_fault(Fault::None);
    still_healthy(&env).await;
}

// ---------------------------------------------------------------- Entra

/// With Entra's token endpoint failing, nothing at all reaches Graph and the operator sees
/// `app_token_unavailable` (the first request of a fresh gateway needs a token for the facts).
async fn assert_app_token_unavailable(env: &DevEnv, r: &Resp) {
    assert_denied(env, r, 503, "app_token_unavailable");
    assert!(env.sandbox.graph_calls().is_empty(), "nothing forwarded");
    assert!(
        metric(
            env,
            "passgate_app_token_refreshes_total",
            &["result=\"failure\""]
        )
        .await
            >= 1.0
    );
    let secret = env.sandbox.client_secret();
    assert!(!String::from_utf8_lossy(&r.body).contains(&secret));
    assert!(!std::fs::read_to_string(&env.audit_log)
        .unwrap()
        .contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_down_is_503_app_token_unavailable() {
    let env = start().await;
    // 400 (a refusal such as a bad scope), 500 and 503 (an outage) all mean: no token.
    for status in [400, 500, 503] {
        env.sandbox.set_fault(Fault::TokenEndpointStatus(status));
        let r = alice(&env).await;
        assert_app_token_unavailable(&env, &r).await;
    }
    assert_eq!(
        metric(
            &env,
            "passgate_app_token_refreshes_total",
            &["result=\"failure\""]
        )
        .await,
        3.0,
        "a failed token request is not cached: each request asks again"
    );
    env.sandbox.set_fault(Fault::None);
    still_healthy(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_rejecting_the_client_secret_is_503_app_token_unavailable() {
    let env = start().await;
    env.sandbox.set_fault(Fault::ClientSecretRejected);
    let r = alice(&env).await;
    assert_app_token_unavailable(&env, &r).await;
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("app token"),
        "the message says what failed"
    );
    env.sandbox.set_fault(Fault::None);
    still_healthy(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_token_endpoint_is_503_app_token_unavailable_at_the_read_timeout() {
    let env = start_cfg("  read_timeout_seconds: 1", "").await;
    env.sandbox
        .set_fault(Fault::TokenEndpointDelay(Duration::from_secs(5)));
    let t = Instant::now();
    let r = alice(&env).await;
    let took = t.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_app_token_unavailable(&env, &r).await;
    env.sandbox.set_fault(Fault::None);
    still_healthy(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_down_with_keys_cached_still_authenticates() {
    let env = start().await;
    let key_fetches = || {
        env.sandbox
            .entra_calls()
            .iter()
            .filter(|c| c.path_and_query.contains("keys"))
            .count()
    };
    let fetched_at_start = key_fetches();
    assert!(fetched_at_start >= 1, "keys are fetched at start-up");
    env.sandbox.set_fault(Fault::JwksDown);
    assert_eq!(alice(&env).await.status, 204);
    assert_eq!(key_fetches(), fetched_at_start, "served from the cache");
    still_healthy(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_rotation_is_followed_without_restart() {
    let env = start_cfg("", "  jwks_refresh_floor_seconds: 0").await;
    let first = token(&env, "alice");
    let kid1 = env.sandbox.current_kid();

    // A new key is published next to the old: a token signed with it works at once.
    let kid2 = env.sandbox.rotate_signing_key(false);
    assert_ne!(kid1, kid2);
    let second = token(&env, "alice");
    let url = action_url(&env, "kiosk-phone");
    assert_eq!(
        send("POST", &url, &[bearer(&second)], b"").await.status,
        204
    );
    assert_eq!(send("POST", &url, &[bearer(&first)], b"").await.status, 204);

    // Old keys retired: once a refresh has happened (triggered by the newest kid), tokens
    // signed with retired keys are refused.
    env.sandbox.rotate_signing_key(true);
    let third = token(&env, "alice");
    assert_eq!(send("POST", &url, &[bearer(&third)], b"").await.status, 204);
    for old in [&first, &second] {
        let r = send("POST", &url, &[bearer(old)], b"").await;
        assert_denied(&env, &r, 401, "token_unknown_key");
        assert!(r.header("www-authenticate").is_some());
    }
    assert!(
        metric(
            &env,
            "passgate_jwks_refreshes_total",
            &["result=\"success\""]
        )
        .await
            >= 3.0
    );
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 3);
    still_healthy(&env).await;
}

// ---------------------------------------------------------------- local disk

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_unwritable_fails_closed_with_nothing_recorded_or_forwarded_then_recovers() {
    let env = start().await;
    // Both the allow record and the refusal's own record fail (a full disk stays full).
    env.gateway().audit.fail_next_writes(2);
    let r = alice(&env).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "audit_unavailable");
    assert!(
        env.sandbox.recover_passcode_calls().is_empty(),
        "fail closed"
    );
    assert!(
        decision_records(&env).is_empty(),
        "failed batches are cut off"
    );
    assert_eq!(
        metric(&env, "passgate_audit_write_failures_total", &[]).await,
        2.0
    );
    assert_eq!(
        metric(
            &env,
            "passgate_requests_total",
            &["reason=\"audit_unavailable\""]
        )
        .await,
        1.0
    );
    // Writable again: the next request goes through without a restart.
    still_healthy(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_failure_on_the_allow_record_is_refused_and_the_refusal_recorded() {
    let env = start().await;
    env.gateway().audit.fail_next_writes(1);
    let r = alice(&env).await;
    assert_denied(&env, &r, 503, "audit_unavailable");
    assert!(
        env.sandbox.recover_passcode_calls().is_empty(),
        "fail closed"
    );
    assert!(
        decision_records(&env)
            .iter()
            .all(|d| d["decision"] == "deny"),
        "no allow record survives a failed write"
    );
    assert_eq!(
        metric(&env, "passgate_audit_write_failures_total", &[]).await,
        1.0
    );
    still_healthy(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_while_jwks_is_down_is_a_retryable_503_not_a_forgery() {
    let env = start_cfg("", "  jwks_refresh_floor_seconds: 0").await;
    env.sandbox.rotate_signing_key(false);
    env.sandbox.set_fault(Fault::JwksDown);
    // Signed with the new key, which passgate cannot fetch while Entra's key endpoint is down.
    let fresh = token(&env, "alice");
    let r = send(
        "POST",
        &action_url(&env, "kiosk-phone"),
        &[bearer(&fresh)],
        b"",
    )
    .await;
    assert_denied(&env, &r, 503, "keys_unavailable");
    env.sandbox.set_fault(Fault::None);
    let r = send(
        "POST",
        &action_url(&env, "kiosk-phone"),
        &[bearer(&fresh)],
        b"",
    )
    .await;
    assert_eq!(r.status, 204, "recovers once the keys can be fetched");
}
