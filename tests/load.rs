//! Bounded load on loopback: many concurrent allowed + denied calls, no error other than the
//! intended denials, one decision record per request, and a chain that verifies.

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn run_load(total: usize, concurrency: usize) {
    let cfg = passgate::dev::DEV_CONFIG
        .replace(
            "per_operator: \"20 per 1h\"",
            "per_operator: \"10000000 per 1h\"",
        )
        .replace(
            "per_device: \"3 per 10m\"",
            "per_device: \"10000000 per 1h\"",
        )
        .replace("global: \"200 per 1h\"", "global: \"10000000 per 1h\"")
        // One operator drives the whole load: lift the per-operator device-lookup budget too.
        .replace(
            "  facts_cache_ttl_seconds: 60\n",
            "  facts_cache_ttl_seconds: 60\n  facts_lookups_per_operator: \"10000000 per 1h\"\n",
        );
    let env = start_with(Some(cfg)).await;
    let url = action_url(&env, "kiosk-phone");
    // Every third call is bob's: authenticated, not approved, refused with 403.
    let alice = token(&env, "alice");
    let bob = token(&env, "bob");

    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    let client: TestClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build(conn);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, url, alice, bob) = (
            client.clone(),
            next.clone(),
            url.clone(),
            alice.clone(),
            bob.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut seen: BTreeMap<(u16, String), usize> = BTreeMap::new();
            let mut slowest = Duration::ZERO;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let tok = if i % 3 == 2 { &bob } else { &alice };
                let req = http::Request::post(&url)
                    .header("authorization", format!("Bearer {tok}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let t = Instant::now();
                let resp = client.request(req).await.expect("gateway answered");
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                slowest = slowest.max(t.elapsed());
                let code = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(String::from))
                    .unwrap_or_default();
                *seen.entry((status, code)).or_default() += 1;
            }
            (seen, slowest)
        }));
    }
    let mut seen: BTreeMap<(u16, String), usize> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    for w in workers {
        let (s, slow) = w.await.unwrap();
        slowest = slowest.max(slow);
        for (k, v) in s {
            *seen.entry(k).or_default() += v;
        }
    }
    let took = started.elapsed();
    let denied = total / 3;
    let allowed = total - denied;
    let mut expected = BTreeMap::new();
    expected.insert((204, String::new()), allowed);
    expected.insert((403, "operator_not_approved".to_string()), denied);
    assert_eq!(seen, expected, "only 204s and the intended denials");
    assert_eq!(env.sandbox.recover_passcode_calls().len(), allowed);

    let records = audit_records(&env);
    let decisions = records.iter().filter(|r| r["kind"] == "decision").count();
    let outcomes = records.iter().filter(|r| r["kind"] == "outcome").count();
    assert_eq!(decisions, total, "one decision record per request");
    assert_eq!(outcomes, allowed, "one outcome record per forward");
    let verified = verify_audit(&env);
    assert_eq!(verified as usize, total + allowed);
    eprintln!(
        "load: {total} requests at {concurrency} concurrent in {took:?} ({:.0} req/s), slowest {slowest:?}",
        total as f64 / took.as_secs_f64()
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_2000_requests_at_64_concurrent() {
    run_load(2_000, 64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_20000_requests_at_256_concurrent() {
    run_load(20_000, 256).await;
}
