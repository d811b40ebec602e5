//! Exact sliding-window rate limiting. "N per W" means at most N admissions in any window of
//! length W. This module decides which windows a candidate must fit in — its policy's limits and
//! the caps across policies — and turns a store's answer into a [`Permit`] or a refusal; the
//! check-and-consume itself is a [`WindowStore`]'s (in memory, or shared on Redis:
//! `crate::state`). Nothing here touches the network or reads the clock.

use super::decide::{Candidate, Denial};
use super::{LimitScope, RateInfo};
use crate::auth::Operator;
use crate::error::Reason;
use crate::routes::Action;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Proof that policy AND limits admitted this action, for this operator, on this device, under
/// this policy. Private fields and no public constructor: only [`RateLimiter::admit`] makes one,
/// so "forwarded without a decision" cannot be written. The next step (the audit commit) consumes
/// it; an approval step would sit between the two and consume it first.
#[derive(Debug)]
pub struct Permit {
    candidate: Candidate,
    rate: Option<RateInfo>,
}

impl Permit {
    pub fn action(&self) -> &Action {
        self.candidate.action()
    }
    pub fn operator(&self) -> &Operator {
        self.candidate.operator()
    }
    pub fn device(&self) -> &super::DeviceFacts {
        self.candidate.device()
    }
    pub fn policy(&self) -> &str {
        self.candidate.policy()
    }
    /// The operator's `Passgate-Justification`, as accepted by the decision.
    pub fn justification(&self) -> Option<&str> {
        self.candidate.justification()
    }
    /// Admitted through a `break_glass: true` policy (for the audit record, the counter and any
    /// notification).
    pub fn break_glass(&self) -> bool {
        self.candidate.break_glass()
    }
    /// The tightest limit after this admission; None when neither the policy nor the caps set any.
    pub fn rate(&self) -> Option<&RateInfo> {
        self.rate.as_ref()
    }
    /// Gives up the permit (e.g. its audit commit failed), keeping what it was about.
    pub fn into_candidate(self) -> Candidate {
        self.candidate
    }
}

/// A candidate the limits refused (or could not be asked about): nothing was consumed. The
/// candidate comes back so the refusal can be recorded with everything established about it.
#[derive(Debug)]
pub struct RateLimited {
    pub candidate: Candidate,
    pub denial: Denial,
    /// Set when the refusal is `limits_unavailable`: why the store could not answer.
    pub store_error: Option<StoreError>,
    /// The blocking window is one of the top-level caps, not the policy's own limit.
    pub cap: bool,
}

impl RateLimited {
    /// The `policy` label of `passgate_rate_limited_total`: the policy, or [`CAPS_NAMESPACE`]
    /// when a cap across policies refused.
    pub fn metric_policy(&self) -> &str {
        if self.cap {
            CAPS_NAMESPACE
        } else {
            self.candidate.policy()
        }
    }
}

/// Where the top-level caps' windows are kept, in place of a policy name, and their `policy` label
/// in metrics. Policy names are letters, digits, '.', '_' and '-' only (`config::load`), so no
/// policy's windows can ever share it, and renaming or reloading policies never resets the caps.
pub const CAPS_NAMESPACE: &str = "(caps)";

/// Whose admissions one window counts. Keyed by policy *name*, so state survives a reload for
/// policies that keep their name; the caps across policies use [`CAPS_NAMESPACE`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowKey {
    /// The policy name, or [`CAPS_NAMESPACE`].
    pub policy: String,
    pub scope: LimitScope,
    /// The operator's object id or the managed device id (lower case); empty for `global`.
    pub subject: String,
}

/// One window a candidate must fit in: at most `limit` admissions in any `window`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    pub key: WindowKey,
    pub limit: u32,
    pub window: Duration,
}

/// A window after an admission was recorded in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowUse {
    /// Admissions in the window, this one included.
    pub used: u32,
    /// How long ago (by the store's clock) the oldest admission in the window was made.
    pub oldest_age: Duration,
}

/// A window that had no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowBlock {
    /// Index into the specs that were asked about.
    pub index: usize,
    /// When (from the store's now) enough admissions leave the window for one more to fit.
    pub frees_in: Duration,
}

/// A store's answer to "check every window and, if all have room, consume one slot in each".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowVerdict {
    /// Every window had room; one admission was recorded in each. One entry per spec, in order.
    Admitted(Vec<WindowUse>),
    /// At least one window had no room; nothing was recorded anywhere.
    Blocked(Vec<WindowBlock>),
}

/// Why a store could not answer; `kind` is the metric label.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StoreError {
    pub kind: StoreErrorKind,
    /// Never contains a secret (stores build it from their own words and the server's error).
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// No answer within the configured timeout.
    Timeout,
    /// Could not connect, or the connection broke.
    Connection,
    /// The server refused our credentials (wrong password, unknown user, missing ACL rights).
    Auth,
    /// TLS handshake or certificate verification failed.
    Tls,
    /// The server ran the script and it failed, or answered something unexpected.
    Script,
    /// Fewer replicas than `min_replicas_ack` acknowledged the admission.
    Replication,
    Other,
}

impl StoreErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::Connection => "connection",
            StoreErrorKind::Auth => "auth",
            StoreErrorKind::Tls => "tls",
            StoreErrorKind::Script => "script",
            StoreErrorKind::Replication => "replication",
            StoreErrorKind::Other => "other",
        }
    }
    pub const ALL: [StoreErrorKind; 7] = [
        StoreErrorKind::Timeout,
        StoreErrorKind::Connection,
        StoreErrorKind::Auth,
        StoreErrorKind::Tls,
        StoreErrorKind::Script,
        StoreErrorKind::Replication,
        StoreErrorKind::Other,
    ];
}

impl std::fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where admissions are kept. Implementations must check ALL windows and then consume one slot
/// in each, or consume nothing, as one atomic step (no other admission may interleave); time is
/// the store's own clock, never the caller's.
pub trait WindowStore: Send + Sync {
    /// Check-and-consume. `id` is unique per request (a store may use it as the member name).
    fn check_and_consume<'a>(
        &'a self,
        windows: &'a [WindowSpec],
        id: &'a str,
    ) -> StoreFuture<'a, WindowVerdict>;
    /// Whether the store can answer now (`/readyz`).
    fn ping(&self) -> StoreFuture<'_, ()>;
    /// `memory` or `redis`, for metrics and `/readyz`.
    fn backend(&self) -> &'static str;
}

/// Shared across requests and across config reloads; the store is chosen once, at start.
#[derive(Clone)]
pub struct RateLimiter {
    store: Arc<dyn WindowStore>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("backend", &self.store.backend())
            .finish()
    }
}

impl RateLimiter {
    pub fn new(store: Arc<dyn WindowStore>) -> RateLimiter {
        RateLimiter { store }
    }

    pub fn store(&self) -> &Arc<dyn WindowStore> {
        &self.store
    }

    /// Checks and consumes ALL the candidate's limits — its policy's and the caps across policies
    /// — atomically (all-or-nothing). On refusal the
    /// reason is `RateLimited` and `retry_after` is when the blocking key next has room, rounded
    /// up to whole seconds (at least 1). When the store cannot answer the reason is
    /// `LimitsUnavailable` (fail closed) and nothing may be forwarded.
    pub async fn admit(&self, candidate: Candidate, id: &str) -> Result<Permit, Box<RateLimited>> {
        let specs = windows(&candidate);
        if specs.is_empty() {
            return Ok(Permit {
                candidate,
                rate: None,
            });
        }
        let verdict = match self.store.check_and_consume(&specs, id).await {
            Ok(v) => v,
            Err(e) => {
                let denial = Denial {
                    reason: Reason::LimitsUnavailable,
                    message: "the rate-limit state cannot be reached; nothing was forwarded".into(),
                    policy: Some(candidate.policy().to_string()),
                    retry_after: None,
                    rate: None,
                    break_glass: candidate.break_glass(),
                };
                return Err(Box::new(RateLimited {
                    candidate,
                    denial,
                    store_error: Some(e),
                    cap: false,
                }));
            }
        };
        match verdict {
            WindowVerdict::Admitted(uses) => {
                let rate = tightest(&specs, &uses);
                Ok(Permit { candidate, rate })
            }
            WindowVerdict::Blocked(blocks) => {
                let (denial, cap) = refusal(&candidate, &specs, &blocks);
                Err(Box::new(RateLimited {
                    candidate,
                    denial,
                    store_error: None,
                    cap,
                }))
            }
        }
    }
}

/// The windows a candidate must fit in: one per limit of its policy, then one per cap (under
/// [`CAPS_NAMESPACE`], so every policy's admissions count against the same caps).
pub fn windows(candidate: &Candidate) -> Vec<WindowSpec> {
    let policy = candidate.policy();
    let (action, op) = (candidate.action(), candidate.operator());
    let spec = |namespace: &str, l: &super::Limit| WindowSpec {
        key: WindowKey {
            policy: namespace.to_string(),
            scope: l.scope,
            subject: subject(l.scope, action, op),
        },
        limit: l.count,
        window: l.window,
    };
    candidate
        .limits()
        .iter()
        .map(|l| spec(policy, l))
        .chain(candidate.caps().iter().map(|l| spec(CAPS_NAMESPACE, l)))
        .collect()
}

fn subject(scope: LimitScope, action: &Action, op: &Operator) -> String {
    match scope {
        LimitScope::PerOperator => op.oid.to_ascii_lowercase(),
        LimitScope::PerDevice => action.managed_device_id.to_ascii_lowercase(),
        LimitScope::Global => String::new(),
    }
}

/// The tightest window after an admission: fewest remaining, then soonest reset.
fn tightest(specs: &[WindowSpec], uses: &[WindowUse]) -> Option<RateInfo> {
    let mut tightest: Option<RateInfo> = None;
    for (spec, u) in specs.iter().zip(uses) {
        let info = RateInfo {
            limit: spec.limit,
            remaining: spec.limit.saturating_sub(u.used),
            reset: spec.window.saturating_sub(u.oldest_age),
            window: spec.window,
            scope: spec.key.scope,
        };
        let tighter = match &tightest {
            None => true,
            Some(t) => (info.remaining, info.reset) < (t.remaining, t.reset),
        };
        if tighter {
            tightest = Some(info);
        }
    }
    tightest
}

/// The refusal for a blocked candidate: every blocking window must have room before a retry can
/// pass, so the latest is reported (on a tie, the first: the policy's own before a cap). Also
/// whether that window is a cap. The denial names the admitting policy either way; its message
/// says which limit refused.
fn refusal(candidate: &Candidate, specs: &[WindowSpec], blocks: &[WindowBlock]) -> (Denial, bool) {
    let policy = candidate.policy().to_string();
    let mut worst: Option<(Duration, RateInfo, bool)> = None;
    for b in blocks {
        let Some(spec) = specs.get(b.index) else {
            continue;
        };
        let wait = round_up_secs(b.frees_in);
        let info = RateInfo {
            limit: spec.limit,
            remaining: 0,
            reset: wait,
            window: spec.window,
            scope: spec.key.scope,
        };
        if worst.as_ref().is_none_or(|(w, _, _)| wait > *w) {
            worst = Some((wait, info, spec.key.policy == CAPS_NAMESPACE));
        }
    }
    // A store that blocks names at least one window; if it named none, refuse for the first.
    let (wait, info, cap) = worst.unwrap_or_else(|| {
        let spec = &specs[0];
        let info = RateInfo {
            limit: spec.limit,
            remaining: 0,
            reset: Duration::from_secs(1),
            window: spec.window,
            scope: spec.key.scope,
        };
        (
            Duration::from_secs(1),
            info,
            spec.key.policy == CAPS_NAMESPACE,
        )
    });
    let whose = if cap {
        // Which policy would have admitted it is in the audit record; the operator is told that
        // no policy can help here.
        "passgate's limit across all policies (top-level `limits`)".to_string()
    } else {
        format!("policy '{policy}'")
    };
    let denial = Denial {
        reason: Reason::RateLimited,
        message: format!(
            "{whose} allows at most {} {} per {}; retry in {} s",
            info.limit,
            if info.limit == 1 {
                "request"
            } else {
                "requests"
            },
            describe(info.scope, info.window, cap),
            wait.as_secs()
        ),
        policy: Some(policy),
        retry_after: Some(wait),
        rate: Some(info),
        break_glass: candidate.break_glass(),
    };
    (denial, cap)
}

fn round_up_secs(d: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

fn describe(scope: LimitScope, window: Duration, cap: bool) -> String {
    let w = window.as_secs();
    let span = if w.is_multiple_of(86_400) {
        format!("{} d", w / 86_400)
    } else if w.is_multiple_of(3600) {
        format!("{} h", w / 3600)
    } else if w.is_multiple_of(60) {
        format!("{} min", w / 60)
    } else {
        format!("{w} s")
    };
    let whom = match scope {
        LimitScope::PerOperator => "operator",
        LimitScope::PerDevice => "device",
        LimitScope::Global if cap => "passgate (all operators, all policies)",
        LimitScope::Global => "policy (all operators)",
    };
    format!("{whom} per {span}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::decide::tests::{action, operator, policy, DEV, OID};
    use crate::policy::FactsOutcome;
    use crate::policy::Limit;
    use crate::policy::{PolicySet, PolicySettings};
    use crate::routes::RouteForm;
    use crate::state::memory::{MemoryStore, SWEEP_EVERY};
    use std::time::Instant;

    pub(crate) const OTHER_DEV: &str = "22222222-c9c9-40c1-abbd-6997016f4c9e";
    pub(crate) const OTHER_OID: &str = "33333333-6e1f-485b-8b8b-fb86895f0498";

    pub(crate) fn lim(scope: LimitScope, count: u32, secs: u64) -> Limit {
        Limit {
            scope,
            count,
            window: Duration::from_secs(secs),
        }
    }

    /// A Candidate for `policy_name` with `limits`, obtained the only way there is: decide().
    pub(crate) fn candidate(name: &str, limits: Vec<Limit>, oid: &str, device: &str) -> Candidate {
        candidate_with_caps(name, limits, vec![], oid, device)
    }

    /// [`candidate`] from a policy set with top-level `caps`.
    pub(crate) fn candidate_with_caps(
        name: &str,
        limits: Vec<Limit>,
        caps: Vec<Limit>,
        oid: &str,
        device: &str,
    ) -> Candidate {
        let p = PolicySettings {
            users: [oid.to_string()].into_iter().collect(),
            limits,
            ..policy(name)
        };
        let ps = PolicySet::new(vec![p]).with_caps(caps);
        let op = operator(oid);
        let a = action(RouteForm::DeviceManagement, device);
        let facts = crate::policy::DeviceFacts {
            managed_device_id: device.into(),
            azure_ad_device_id: None,
            device_object_id: None,
            operating_system: "Windows".into(),
            user_principal_name: None,
            user_id: None,
            member_of: Default::default(),
        };
        ps.decide(
            &ps.operator_screen(&op),
            &a,
            &op,
            &FactsOutcome::Found(facts),
            &crate::policy::RequestFacts::at(crate::policy::decide::tests::now()),
        )
        .unwrap()
    }

    /// A limiter over a memory store whose clock the test sets: time is driven explicitly.
    struct Rig {
        rl: RateLimiter,
        store: Arc<MemoryStore>,
        now: Arc<std::sync::Mutex<Instant>>,
        t0: Instant,
    }

    impl Rig {
        fn new() -> Rig {
            let t0 = Instant::now();
            let now = Arc::new(std::sync::Mutex::new(t0));
            let clock = now.clone();
            let store = Arc::new(MemoryStore::with_clock(Arc::new(move || {
                *clock.lock().unwrap()
            })));
            Rig {
                rl: RateLimiter::new(store.clone()),
                store,
                now,
                t0,
            }
        }
        fn set(&self, ms: u64) {
            *self.now.lock().unwrap() = self.t0 + Duration::from_millis(ms);
        }
        fn try_at(
            &self,
            secs_ms: u64,
            name: &str,
            limits: &[Limit],
            oid: &str,
            device: &str,
        ) -> Result<Permit, Denial> {
            let c = candidate(name, limits.to_vec(), oid, device);
            // Clock and admission under one lock, so concurrent callers cannot reorder time.
            let mut now = self.now.lock().unwrap();
            *now = self.t0 + Duration::from_millis(secs_ms);
            drop(now);
            block_on(self.rl.admit(c, "req")).map_err(|r| r.denial)
        }
        /// [`Rig::try_at`] for a policy set with top-level caps; the whole refusal comes back.
        fn try_capped(
            &self,
            ms: u64,
            name: &str,
            limits: &[Limit],
            caps: &[Limit],
            device: &str,
        ) -> Result<Permit, Box<RateLimited>> {
            let c = candidate_with_caps(name, limits.to_vec(), caps.to_vec(), OID, device);
            *self.now.lock().unwrap() = self.t0 + Duration::from_millis(ms);
            block_on(self.rl.admit(c, "req"))
        }
    }

    /// The memory store answers at once: a current-thread runtime drives the future.
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn n_of_n_plus_k_are_admitted() {
        let rig = Rig::new();
        let l = [lim(LimitScope::PerOperator, 3, 60)];
        let results: Vec<bool> = (0..7)
            .map(|i| rig.try_at(i * 1000, "p", &l, OID, DEV).is_ok())
            .collect();
        assert_eq!(results, [true, true, true, false, false, false, false]);
    }

    #[test]
    fn retry_after_is_exact_and_rounded_up() {
        let rig = Rig::new();
        let l = [lim(LimitScope::PerDevice, 2, 60)];
        rig.try_at(0, "p", &l, OID, DEV).unwrap();
        rig.try_at(10_000, "p", &l, OID, DEV).unwrap();
        // At t=20.5s the first admission (t=0) leaves the window at t=60 → 39.5 s → 40 s.
        let d = rig.try_at(20_500, "p", &l, OID, DEV).unwrap_err();
        assert_eq!(d.reason, Reason::RateLimited);
        assert_eq!(d.retry_after, Some(Duration::from_secs(40)));
        assert_eq!(d.policy.as_deref(), Some("p"));
        let info = d.rate.unwrap();
        assert_eq!(
            (info.limit, info.remaining, info.scope),
            (2, 0, LimitScope::PerDevice)
        );
        assert!(
            d.message
                .contains("at most 2 requests per device per 1 min"),
            "{}",
            d.message
        );
        // Never below one second, even when room returns within the same second.
        let d = rig.try_at(59_999, "p", &l, OID, DEV).unwrap_err();
        assert_eq!(d.retry_after, Some(Duration::from_secs(1)));
    }

    #[test]
    fn window_slides_exactly() {
        let rig = Rig::new();
        let l = [lim(LimitScope::PerOperator, 1, 600)];
        rig.try_at(0, "p", &l, OID, DEV).unwrap();
        assert!(rig.try_at(599_999, "p", &l, OID, DEV).is_err());
        // At now = t0 + W the first admission is outside (now - W, now].
        assert!(rig.try_at(600_000, "p", &l, OID, DEV).is_ok());
        assert!(rig.try_at(600_001, "p", &l, OID, DEV).is_err());
    }

    #[test]
    fn sliding_not_fixed_windows() {
        // 2 per 10 s: admissions at 0 and 9 s; at 10 s only one slot is free (t=0 left).
        let rig = Rig::new();
        let l = [lim(LimitScope::Global, 2, 10)];
        rig.try_at(0, "p", &l, OID, DEV).unwrap();
        rig.try_at(9_000, "p", &l, OID, DEV).unwrap();
        rig.try_at(10_000, "p", &l, OID, DEV).unwrap();
        let d = rig.try_at(10_000, "p", &l, OID, DEV).unwrap_err();
        assert_eq!(d.retry_after, Some(Duration::from_secs(9)));
    }

    #[test]
    fn all_or_nothing_across_scopes() {
        let rig = Rig::new();
        let l = [
            lim(LimitScope::PerOperator, 5, 60),
            lim(LimitScope::PerDevice, 1, 60),
            lim(LimitScope::Global, 3, 60),
        ];
        rig.try_at(0, "p", &l, OID, DEV).unwrap();
        // The device limit blocks: neither the operator nor the global budget may be consumed.
        for _ in 0..5 {
            let d = rig.try_at(1_000, "p", &l, OID, DEV).unwrap_err();
            assert_eq!(d.rate.unwrap().scope, LimitScope::PerDevice);
        }
        // Other devices: the global budget (3) still has exactly 2 left.
        rig.try_at(2_000, "p", &l, OID, OTHER_DEV).unwrap();
        rig.try_at(
            2_000,
            "p",
            &l,
            OTHER_OID,
            "44444444-c9c9-40c1-abbd-6997016f4c9e",
        )
        .unwrap();
        let d = rig
            .try_at(
                2_000,
                "p",
                &l,
                OTHER_OID,
                "55555555-c9c9-40c1-abbd-6997016f4c9e",
            )
            .unwrap_err();
        assert_eq!(d.rate.unwrap().scope, LimitScope::Global);
    }

    #[test]
    fn retry_after_is_the_latest_of_several_blocking_limits() {
        let rig = Rig::new();
        let l = [
            lim(LimitScope::PerOperator, 1, 30),
            lim(LimitScope::PerDevice, 1, 90),
        ];
        rig.try_at(0, "p", &l, OID, DEV).unwrap();
        let d = rig.try_at(0, "p", &l, OID, DEV).unwrap_err();
        assert_eq!(d.retry_after, Some(Duration::from_secs(90)));
        assert_eq!(d.rate.unwrap().scope, LimitScope::PerDevice);
    }

    #[test]
    fn denied_requests_consume_nothing() {
        let rig = Rig::new();
        let l = [lim(LimitScope::PerOperator, 2, 60)];
        rig.try_at(0, "p", &l, OID, DEV).unwrap();
        rig.try_at(1_000, "p", &l, OID, DEV).unwrap();
        for i in 0..50 {
            assert!(rig.try_at(2_000 + i, "p", &l, OID, DEV).is_err());
        }
        // Had the refusals been recorded, the window would still be full at 61 s.
        assert!(rig.try_at(60_000, "p", &l, OID, DEV).is_ok());
        assert!(rig.try_at(61_000, "p", &l, OID, DEV).is_ok());
    }

    #[test]
    fn keys_and_policies_are_independent() {
        let rig = Rig::new();
        let op = [lim(LimitScope::PerOperator, 1, 60)];
        let dev = [lim(LimitScope::PerDevice, 1, 60)];
        rig.try_at(0, "a", &op, OID, DEV).unwrap();
        assert!(rig.try_at(0, "a", &op, OID, DEV).is_err());
        assert!(
            rig.try_at(0, "a", &op, OTHER_OID, DEV).is_ok(),
            "other operator"
        );
        assert!(rig.try_at(0, "b", &op, OID, DEV).is_ok(), "other policy");
        rig.try_at(0, "a", &dev, OID, DEV).unwrap();
        assert!(rig.try_at(0, "a", &dev, OTHER_OID, DEV).is_err());
        assert!(
            rig.try_at(0, "a", &dev, OID, OTHER_DEV).is_ok(),
            "other device"
        );
    }

    #[test]
    fn permit_reports_the_tightest_limit() {
        let rig = Rig::new();
        let l = [
            lim(LimitScope::PerOperator, 5, 3600),
            lim(LimitScope::Global, 2, 60),
        ];
        let p = rig.try_at(0, "p", &l, OID, DEV).unwrap();
        assert_eq!(p.policy(), "p");
        let r = p.rate().unwrap();
        assert_eq!((r.scope, r.limit, r.remaining), (LimitScope::Global, 2, 1));
        assert_eq!(r.reset, Duration::from_secs(60));
        let p = rig.try_at(15_000, "p", &l, OID, DEV).unwrap();
        let r = p.rate().unwrap();
        assert_eq!((r.remaining, r.reset), (0, Duration::from_secs(45)));
        // No limits: a permit without rate information.
        assert!(rig
            .try_at(0, "free", &[], OID, DEV)
            .unwrap()
            .rate()
            .is_none());
    }

    #[test]
    fn memory_is_bounded_by_live_windows() {
        let rig = Rig::new();
        let l = [lim(LimitScope::PerDevice, 1, 10)];
        for i in 0..100u32 {
            let dev = format!("{i:08x}-c9c9-40c1-abbd-6997016f4c9e");
            rig.try_at(0, "p", &l, OID, &dev).unwrap();
        }
        assert_eq!(rig.store.key_count(), 100);
        rig.set(5_000);
        rig.store.sweep();
        assert_eq!(rig.store.key_count(), 100);
        rig.set(10_000);
        rig.store.sweep();
        assert_eq!(rig.store.key_count(), 0);
    }

    #[test]
    fn automatic_sweep_drops_stale_keys() {
        let rig = Rig::new();
        let l = [lim(LimitScope::PerDevice, 1, 1)];
        for i in 0..(SWEEP_EVERY as u32 + 10) {
            let dev = format!("{i:08x}-c9c9-40c1-abbd-6997016f4c9e");
            // Each admission is 2 s after the previous, so every older key is stale.
            rig.try_at(u64::from(i) * 2_000, "p", &l, OID, &dev)
                .unwrap();
        }
        assert!(rig.store.key_count() <= 11, "{}", rig.store.key_count());
    }

    #[test]
    fn concurrent_admits_never_exceed_the_limit() {
        let rig = std::sync::Arc::new(Rig::new());
        let l = [lim(LimitScope::Global, 37, 60)];
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let rig = rig.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .filter(|_| rig.try_at(0, "p", &l, OID, DEV).is_ok())
                        .count()
                })
            })
            .collect();
        let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(admitted, 37);
    }

    #[test]
    fn state_survives_a_new_policy_set_with_the_same_name() {
        let rig = Rig::new();
        let l = [lim(LimitScope::PerOperator, 1, 60)];
        // Every try_at builds a fresh PolicySet, as a reload would.
        rig.try_at(0, "keep", &l, OID, DEV).unwrap();
        assert!(rig.try_at(1_000, "keep", &l, OID, DEV).is_err());
        assert!(rig.try_at(1_000, "renamed", &l, OID, DEV).is_ok());
    }

    #[test]
    fn a_lowered_limit_after_reload_counts_existing_admissions() {
        let rig = Rig::new();
        rig.try_at(0, "p", &[lim(LimitScope::Global, 3, 60)], OID, DEV)
            .unwrap();
        rig.try_at(10_000, "p", &[lim(LimitScope::Global, 3, 60)], OID, DEV)
            .unwrap();
        rig.try_at(20_000, "p", &[lim(LimitScope::Global, 3, 60)], OID, DEV)
            .unwrap();
        // Now 1 per 60: room only once all three have left, i.e. when t=20 s leaves at t=80 s.
        let d = rig
            .try_at(30_000, "p", &[lim(LimitScope::Global, 1, 60)], OID, DEV)
            .unwrap_err();
        assert_eq!(d.retry_after, Some(Duration::from_secs(50)));
    }

    #[test]
    fn caps_are_one_budget_across_policies() {
        let rig = Rig::new();
        let caps = [lim(LimitScope::PerDevice, 1, 60)];
        let own = [lim(LimitScope::PerDevice, 5, 60)];
        let p = rig.try_capped(0, "helpdesk", &own, &caps, DEV).unwrap();
        assert_eq!(p.rate().unwrap().remaining, 0, "the cap is the tightest");
        // Another policy that would admit the same device on its own budget: the cap refuses.
        let r = rig
            .try_capped(1_000, "security", &own, &caps, DEV)
            .unwrap_err();
        assert!(r.cap);
        assert_eq!(r.metric_policy(), CAPS_NAMESPACE);
        assert_eq!(r.denial.reason, Reason::RateLimited);
        assert_eq!(r.denial.policy.as_deref(), Some("security"));
        assert_eq!(r.denial.retry_after, Some(Duration::from_secs(59)));
        assert!(
            r.denial.message.contains("across all policies")
                && r.denial
                    .message
                    .contains("at most 1 request per device per 1 min"),
            "{}",
            r.denial.message
        );
        // A policy with no limits of its own is capped just the same.
        let r = rig.try_capped(2_000, "free", &[], &caps, DEV).unwrap_err();
        assert!(r.cap);
        // Other devices have their own cap window.
        rig.try_capped(2_000, "security", &own, &caps, OTHER_DEV)
            .unwrap();
        // The cap window slides like any other.
        rig.try_capped(60_000, "security", &own, &caps, DEV)
            .unwrap();
    }

    #[test]
    fn caps_and_policy_limits_are_all_or_nothing() {
        let rig = Rig::new();
        let caps = [lim(LimitScope::Global, 2, 60)];
        let own = [lim(LimitScope::PerDevice, 1, 60)];
        rig.try_capped(0, "p", &own, &caps, DEV).unwrap();
        // The policy's own limit blocks: the cap's budget must not be consumed.
        for _ in 0..3 {
            let r = rig.try_capped(1_000, "p", &own, &caps, DEV).unwrap_err();
            assert!(!r.cap, "{}", r.denial.message);
            assert_eq!(r.metric_policy(), "p");
            assert!(r.denial.message.starts_with("policy 'p'"));
        }
        rig.try_capped(1_000, "p", &own, &caps, OTHER_DEV).unwrap();
        // Now the cap (2 in all) blocks: the policy's per-device window of this new device must
        // stay empty, so once the cap has room again the device is admitted at once.
        let d3 = "44444444-c9c9-40c1-abbd-6997016f4c9e";
        let r = rig.try_capped(2_000, "p", &own, &caps, d3).unwrap_err();
        assert!(r.cap);
        assert!(
            r.denial
                .message
                .contains("per passgate (all operators, all policies)"),
            "{}",
            r.denial.message
        );
        rig.try_capped(60_000, "p", &own, &caps, d3).unwrap();
    }

    #[test]
    fn cap_windows_live_in_their_own_namespace() {
        let caps = vec![lim(LimitScope::PerDevice, 3, 86_400)];
        let c = candidate_with_caps(
            "p",
            vec![lim(LimitScope::PerOperator, 5, 60)],
            caps,
            OID,
            DEV,
        );
        let specs = windows(&c);
        let keys: Vec<(&str, LimitScope, &str)> = specs
            .iter()
            .map(|s| (s.key.policy.as_str(), s.key.scope, s.key.subject.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("p", LimitScope::PerOperator, OID),
                (CAPS_NAMESPACE, LimitScope::PerDevice, DEV)
            ]
        );
        // No valid policy name can collide with the namespace.
        assert!(CAPS_NAMESPACE
            .bytes()
            .any(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))));
    }
}
