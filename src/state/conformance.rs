//! One behaviour, two backends: the same table of cases runs against the memory store and
//! against a real `redis-server` (started here on a free loopback port). Time is real in both
//! (Redis reads its own clock), so windows are short and the only waits are for a window to pass.

use crate::config::RedisConfig;
use crate::error::Reason;
use crate::policy::decide::tests::{DEV, OID};
use crate::policy::limiter::tests::{candidate, candidate_with_caps, OTHER_DEV, OTHER_OID};
use crate::policy::limiter::{RateLimiter, WindowStore};
use crate::policy::{Limit, LimitScope};
use crate::state::memory::MemoryStore;
use crate::state::redis::RedisStore;
use crate::state::test_support::{self, RedisOptions, RedisServer};
use std::sync::Arc;
use std::time::Duration;

const D3: &str = "44444444-c9c9-40c1-abbd-6997016f4c9e";
const D4: &str = "55555555-c9c9-40c1-abbd-6997016f4c9e";

fn l(scope: LimitScope, count: u32, ms: u64) -> Limit {
    Limit {
        scope,
        count,
        window: Duration::from_millis(ms),
    }
}

/// What one attempt must produce.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Admitted; the tightest window then has this many left and is of this scope.
    Admit(u32, LimitScope),
    /// Refused by this scope, with `Retry-After` of this many seconds.
    Block(LimitScope, u64),
    /// Admitted, nothing more checked (no limits).
    Free,
}

#[derive(Debug, Clone)]
enum Step {
    Try {
        policy: &'static str,
        limits: Vec<Limit>,
        /// Top-level caps of the policy set the candidate comes from.
        caps: Vec<Limit>,
        oid: &'static str,
        device: &'static str,
        want: Want,
    },
    /// Let a window pass (the behaviour under test, not synchronisation).
    Pass(Duration),
}

fn t(
    policy: &'static str,
    limits: &[Limit],
    oid: &'static str,
    device: &'static str,
    want: Want,
) -> Step {
    Step::Try {
        policy,
        limits: limits.to_vec(),
        caps: Vec::new(),
        oid,
        device,
        want,
    }
}

/// [`t`] for a policy set with top-level caps.
fn tc(
    policy: &'static str,
    limits: &[Limit],
    caps: &[Limit],
    device: &'static str,
    want: Want,
) -> Step {
    Step::Try {
        policy,
        limits: limits.to_vec(),
        caps: caps.to_vec(),
        oid: OID,
        device,
        want,
    }
}

fn cases() -> Vec<(&'static str, Vec<Step>)> {
    use LimitScope::*;
    use Want::*;
    let op3 = [l(PerOperator, 3, 60_000)];
    let mixed = [
        l(PerOperator, 5, 60_000),
        l(PerDevice, 1, 60_000),
        l(Global, 3, 60_000),
    ];
    let short = [l(PerOperator, 2, 700)];
    let two = [l(PerOperator, 1, 30_000), l(PerDevice, 1, 90_000)];
    let tight = [l(PerOperator, 5, 3_600_000), l(Global, 2, 60_000)];
    let dev1 = [l(PerDevice, 1, 60_000)];
    let cap_dev2 = [l(PerDevice, 2, 60_000)];
    let own5 = [l(PerDevice, 5, 60_000)];
    vec![
        (
            "n of n+k are admitted",
            vec![
                t("p", &op3, OID, DEV, Admit(2, PerOperator)),
                t("p", &op3, OID, DEV, Admit(1, PerOperator)),
                t("p", &op3, OID, DEV, Admit(0, PerOperator)),
                t("p", &op3, OID, DEV, Block(PerOperator, 60)),
                t("p", &op3, OID, DEV, Block(PerOperator, 60)),
            ],
        ),
        (
            "all or nothing across scopes",
            vec![
                t("p", &mixed, OID, DEV, Admit(0, PerDevice)),
                t("p", &mixed, OID, DEV, Block(PerDevice, 60)),
                t("p", &mixed, OID, DEV, Block(PerDevice, 60)),
                t("p", &mixed, OID, DEV, Block(PerDevice, 60)),
                // Had the refusals consumed the global budget (3), these would fail.
                t("p", &mixed, OID, OTHER_DEV, Admit(0, PerDevice)),
                // Device and global both at 0: the global window resets sooner, so it is tighter.
                t("p", &mixed, OTHER_OID, D3, Admit(0, Global)),
                t("p", &mixed, OTHER_OID, D4, Block(Global, 60)),
            ],
        ),
        (
            "refusals consume nothing and the window slides",
            vec![
                t("p", &short, OID, DEV, Admit(1, PerOperator)),
                t("p", &short, OID, DEV, Admit(0, PerOperator)),
                t("p", &short, OID, DEV, Block(PerOperator, 1)),
                t("p", &short, OID, DEV, Block(PerOperator, 1)),
                Step::Pass(Duration::from_millis(750)),
                t("p", &short, OID, DEV, Admit(1, PerOperator)),
                t("p", &short, OID, DEV, Admit(0, PerOperator)),
                t("p", &short, OID, DEV, Block(PerOperator, 1)),
            ],
        ),
        (
            "retry-after is the latest of several blocking windows",
            vec![
                t("p", &two, OID, DEV, Admit(0, PerOperator)),
                t("p", &two, OID, DEV, Block(PerDevice, 90)),
            ],
        ),
        (
            "the tightest window is reported",
            vec![
                t("p", &tight, OID, DEV, Admit(1, Global)),
                t("p", &tight, OID, DEV, Admit(0, Global)),
                t("free", &[], OID, DEV, Free),
            ],
        ),
        (
            "keys and policies are independent",
            vec![
                t("a", &dev1, OID, DEV, Admit(0, PerDevice)),
                t("a", &dev1, OTHER_OID, DEV, Block(PerDevice, 60)),
                t("a", &dev1, OID, OTHER_DEV, Admit(0, PerDevice)),
                t("b", &dev1, OID, DEV, Admit(0, PerDevice)),
            ],
        ),
        (
            "caps are one budget across policies, all or nothing with their limits",
            vec![
                tc("a", &own5, &cap_dev2, DEV, Admit(1, PerDevice)),
                tc("b", &own5, &cap_dev2, DEV, Admit(0, PerDevice)),
                // A third policy, or one without limits: the cap refuses for the device.
                tc("c", &own5, &cap_dev2, DEV, Block(PerDevice, 60)),
                tc("free", &[], &cap_dev2, DEV, Block(PerDevice, 60)),
                // The policy's own window blocks: the cap's is not consumed for the new device…
                tc("d", &dev1, &cap_dev2, OTHER_DEV, Admit(0, PerDevice)),
                tc("d", &dev1, &cap_dev2, OTHER_DEV, Block(PerDevice, 60)),
                // …so the cap still has exactly one slot left for it, through another policy.
                tc("e", &own5, &cap_dev2, OTHER_DEV, Admit(0, PerDevice)),
                tc("f", &own5, &cap_dev2, OTHER_DEV, Block(PerDevice, 60)),
            ],
        ),
    ]
}

/// Runs every case against a store built by `make` (a fresh one per case, or fresh key prefix).
async fn run_table(backend: &str, make: &dyn Fn() -> Arc<dyn WindowStore>) {
    for (name, steps) in cases() {
        let limiter = RateLimiter::new(make());
        for (i, step) in steps.into_iter().enumerate() {
            let Step::Try {
                policy,
                limits,
                caps,
                oid,
                device,
                want,
            } = step
            else {
                if let Step::Pass(d) = step {
                    tokio::time::sleep(d).await;
                }
                continue;
            };
            let c = candidate_with_caps(policy, limits, caps, oid, device);
            let id = uuid::Uuid::new_v4().to_string();
            let got = limiter.admit(c, &id).await;
            let ctx = format!("[{backend}] {name}, step {i}");
            match (want, got) {
                (Want::Free, Ok(p)) => assert!(p.rate().is_none(), "{ctx}"),
                (Want::Admit(remaining, scope), Ok(p)) => {
                    let r = p.rate().unwrap_or_else(|| panic!("{ctx}: no rate info"));
                    assert_eq!((r.remaining, r.scope), (remaining, scope), "{ctx}");
                    assert!(r.reset <= r.window, "{ctx}: {r:?}");
                }
                (Want::Block(scope, secs), Err(refused)) => {
                    let d = refused.denial;
                    assert_eq!(d.reason, Reason::RateLimited, "{ctx}");
                    assert_eq!(d.rate.map(|r| r.scope), Some(scope), "{ctx}");
                    assert_eq!(d.retry_after, Some(Duration::from_secs(secs)), "{ctx}");
                }
                (want, Ok(p)) => panic!("{ctx}: wanted {want:?}, admitted with {:?}", p.rate()),
                (want, Err(r)) => panic!("{ctx}: wanted {want:?}, refused: {:?}", r.denial),
            }
        }
    }
}

/// Concurrent admissions through one store never exceed the limit.
async fn run_concurrency(backend: &str, store: Arc<dyn WindowStore>) {
    let limiter = RateLimiter::new(store);
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let c = candidate("burst", vec![l(LimitScope::Global, 7, 60_000)], OID, DEV);
                limiter.admit(c, &format!("req-{i}")).await.is_ok()
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.expect("task"));
    }
    assert_eq!(admitted, 7, "[{backend}] 60 concurrent against 7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_holds_for_the_memory_store() {
    run_table("memory", &|| Arc::new(MemoryStore::new())).await;
    run_concurrency("memory", Arc::new(MemoryStore::new())).await;
}

pub(crate) fn redis_config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: Some(url.to_string()),
        username: None,
        password: None,
        ca_file: None,
        key_prefix: prefix.to_string(),
        timeout_ms: 2000,
        min_replicas_ack: 0,
        sentinel: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_holds_for_the_redis_store() {
    if !test_support::available() {
        return;
    }
    let server = RedisServer::start(RedisOptions::default());
    let url = server.url();
    // A fresh key prefix per case stands for a fresh store.
    run_table("redis", &|| {
        let cfg = redis_config(&url, &format!("t{}", uuid::Uuid::new_v4().simple()));
        Arc::new(RedisStore::build(&cfg).expect("redis store builds"))
    })
    .await;
    let cfg = redis_config(&url, "burst");
    run_concurrency("redis", Arc::new(RedisStore::build(&cfg).expect("builds"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_share_one_hash_tag_and_expire() {
    if !test_support::available() {
        return;
    }
    let server = RedisServer::start(RedisOptions::default());
    let store = RedisStore::build(&redis_config(&server.url(), "pg")).expect("builds");
    let limits = vec![
        l(LimitScope::PerOperator, 5, 60_000),
        l(LimitScope::PerDevice, 5, 60_000),
        l(LimitScope::Global, 5, 60_000),
    ];
    let c = candidate("p", limits, OID, DEV);
    let specs = crate::policy::limiter::windows(&c);
    let keys: Vec<String> = specs.iter().map(|s| store.key(s)).collect();
    assert_eq!(
        keys,
        [
            format!("{{pg:p}}:rl:op:{OID}"),
            format!("{{pg:p}}:rl:dev:{DEV}"),
            "{pg:p}:rl:global".to_string()
        ]
    );
    let limiter = RateLimiter::new(Arc::new(store));
    limiter.admit(c, "r1").await.expect("admitted");
    let client = ::redis::Client::open(server.url()).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    for k in &keys {
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(k)
            .query_async(&mut con)
            .await
            .expect("pttl");
        assert!(ttl > 0 && ttl <= 60_000, "{k}: pttl {ttl}");
        let members: Vec<String> = ::redis::cmd("ZRANGE")
            .arg(k)
            .arg(0)
            .arg(-1)
            .query_async(&mut con)
            .await
            .expect("zrange");
        assert_eq!(members, ["r1"], "{k}: the member is the request id");
    }
}

/// Slower than `timeout_ms` is an error of kind `timeout`, answered within about the timeout;
/// the store answers again once Redis does. A flushed script cache is reloaded (NOSCRIPT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_out_and_a_flushed_script_is_reloaded() {
    use crate::policy::limiter::StoreErrorKind;
    if !test_support::available() {
        return;
    }
    let server = RedisServer::start(RedisOptions::default());
    let cfg = RedisConfig {
        timeout_ms: 300,
        ..redis_config(&server.url(), "slow")
    };
    let limiter = RateLimiter::new(Arc::new(RedisStore::build(&cfg).expect("builds")));
    let limits = vec![l(LimitScope::PerOperator, 100, 60_000)];
    let c = || candidate("p", limits.clone(), OID, DEV);
    limiter.admit(c(), "a").await.expect("admitted");
    server.freeze(true);
    let t = std::time::Instant::now();
    let refused = limiter
        .admit(c(), "b")
        .await
        .expect_err("refused while frozen");
    let took = t.elapsed();
    server.freeze(false);
    assert_eq!(refused.denial.reason, Reason::LimitsUnavailable);
    assert_eq!(
        refused.store_error.as_ref().map(|e| e.kind),
        Some(StoreErrorKind::Timeout)
    );
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    // Thawed: service resumes (bounded retries; the first call may still see the old connection).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        match limiter.admit(c(), &format!("c{n}")).await {
            Ok(p) => {
                assert!(p.rate().is_some());
                break;
            }
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "never recovered: {:?}",
                e.store_error
            ),
        }
    }
    // The script cache emptied behind our back: EVALSHA fails with NOSCRIPT, the script is sent again.
    let client = ::redis::Client::open(server.url()).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connects");
    let _: () = ::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut con)
        .await
        .expect("flushed");
    limiter
        .admit(c(), "after-flush")
        .await
        .expect("admitted after SCRIPT FLUSH");
}

/// `min_replicas_ack` with no replica to acknowledge: the admission is refused (kind
/// `replication`), never silently accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_replicas_ack_without_replicas_fails_closed() {
    use crate::policy::limiter::StoreErrorKind;
    if !test_support::available() {
        return;
    }
    let server = RedisServer::start(RedisOptions::default());
    // Generous: the server waits half of it for acknowledgements; on a loaded machine a tight
    // bound turned the expected `replication` answer into a client-side timeout.
    let cfg = RedisConfig {
        timeout_ms: 2000,
        min_replicas_ack: 1,
        ..redis_config(&server.url(), "ack")
    };
    let limiter = RateLimiter::new(Arc::new(RedisStore::build(&cfg).expect("builds")));
    let c = candidate("p", vec![l(LimitScope::Global, 5, 60_000)], OID, DEV);
    let refused = limiter
        .admit(c, "r")
        .await
        .expect_err("no replica acknowledged");
    assert_eq!(refused.denial.reason, Reason::LimitsUnavailable);
    let e = refused.store_error.expect("store error");
    assert_eq!(e.kind, StoreErrorKind::Replication, "{e}");
    assert!(e.message.contains("0 of the 1 replicas"), "{e}");
}

/// The caps' windows get keys of their own, under a hash tag no policy name can produce.
#[tokio::test]
async fn cap_keys_are_named_apart_from_every_policy() {
    // Nothing is asked of this address: keys are computed without a connection.
    let store = RedisStore::build(&redis_config("redis://127.0.0.1:1/0", "pg")).expect("builds");
    let c = candidate_with_caps(
        "p",
        vec![l(LimitScope::PerDevice, 5, 60_000)],
        vec![
            l(LimitScope::PerDevice, 3, 86_400_000),
            l(LimitScope::Global, 100, 86_400_000),
        ],
        OID,
        DEV,
    );
    let keys: Vec<String> = crate::policy::limiter::windows(&c)
        .iter()
        .map(|s| store.key(s))
        .collect();
    assert_eq!(
        keys,
        [
            format!("{{pg:p}}:rl:dev:{DEV}"),
            format!("{{pg:(caps)}}:rl:dev:{DEV}"),
            "{pg:(caps)}:rl:global".to_string(),
        ]
    );
}
