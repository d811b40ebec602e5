//! Exact sliding-window rate limiting, in memory. "N per W" means at most N admissions in any
//! window of length W. All of a candidate's limits are checked and consumed atomically; a refused
//! request consumes nothing. Time is passed in: this module never reads the clock.

use super::decide::{Candidate, Denial};
use super::{DeviceFacts, Limit, LimitScope, RateInfo};
use crate::auth::Operator;
use crate::error::Reason;
use crate::routes::Action;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    pub fn device(&self) -> &DeviceFacts {
        self.candidate.device()
    }
    pub fn policy(&self) -> &str {
        self.candidate.policy()
    }
    /// The tightest limit after this admission; None when the policy has no limits.
    pub fn rate(&self) -> Option<&RateInfo> {
        self.rate.as_ref()
    }
    /// Gives up the permit (e.g. its audit commit failed), keeping what it was about.
    pub fn into_candidate(self) -> Candidate {
        self.candidate
    }
}

/// A candidate the limits refused: nothing was consumed. The candidate comes back so the refusal
/// can be recorded with everything that was established about the request.
#[derive(Debug)]
pub struct RateLimited {
    pub candidate: Candidate,
    pub denial: Denial,
}

/// A limiter key. Keyed by policy *name*, so state survives a reload for policies that keep it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Operator { policy: String, oid: String },
    Device { policy: String, device: String },
    Global { policy: String },
}

#[derive(Debug)]
struct Window {
    /// The window last used for this key, so a sweep can prune it without the config.
    length: Duration,
    /// Admission times, oldest first.
    stamps: VecDeque<Instant>,
}

impl Window {
    /// Drops admissions outside `(now - length, now]`.
    fn prune(&mut self, now: Instant) {
        while let Some(&t) = self.stamps.front() {
            // t is outside the window iff t + length <= now.
            if t + self.length <= now {
                self.stamps.pop_front();
            } else {
                break;
            }
        }
    }
}

/// Sweep every key once this many admits have happened since the last sweep, so keys that are
/// never touched again (one-off devices) do not pile up.
const SWEEP_EVERY: u64 = 1024;

#[derive(Debug, Default)]
struct State {
    windows: HashMap<Key, Window>,
    calls_since_sweep: u64,
}

/// Shared across requests and across config reloads.
#[derive(Debug, Default)]
pub struct RateLimiter {
    state: Mutex<State>,
}

impl RateLimiter {
    pub fn new() -> RateLimiter {
        RateLimiter::default()
    }

    /// Checks and consumes ALL the candidate's limits atomically (all-or-nothing). On refusal the
    /// reason is `RateLimited` and `retry_after` is when the blocking key next has room, rounded
    /// up to whole seconds (at least 1).
    pub fn admit(&self, candidate: Candidate, now: Instant) -> Result<Permit, Box<RateLimited>> {
        let policy = candidate.policy().to_string();
        let (action, op) = (candidate.action(), candidate.operator());
        let limits = candidate.limits();
        // A poisoned lock only means another thread panicked mid-update; the timestamps are
        // still a consistent set, so keep enforcing rather than failing every request.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.calls_since_sweep += 1;
        if state.calls_since_sweep >= SWEEP_EVERY {
            sweep(&mut state, now);
        }

        let keys: Vec<(Limit, Key)> = limits
            .iter()
            .map(|l| (*l, key(l.scope, &policy, action, op)))
            .collect();

        // Phase 1: check every limit; nothing is recorded yet.
        let mut blocked: Option<(Duration, RateInfo)> = None;
        for (limit, k) in &keys {
            let Some(w) = state.windows.get_mut(k) else {
                continue;
            };
            w.length = limit.window;
            w.prune(now);
            let count = w.stamps.len();
            if count >= limit.count as usize {
                // Room returns when enough of the oldest admissions have left the window that
                // fewer than N remain: the (count - N + 1)-th oldest must expire.
                let idx = count - limit.count as usize;
                let frees_at = w.stamps[idx] + limit.window;
                let wait = round_up_secs(frees_at.saturating_duration_since(now));
                let info = RateInfo {
                    limit: limit.count,
                    remaining: 0,
                    reset: wait,
                    window: limit.window,
                    scope: limit.scope,
                };
                // Every blocking limit must have room before a retry can pass: report the latest.
                if blocked.as_ref().is_none_or(|(b, _)| wait > *b) {
                    blocked = Some((wait, info));
                }
            }
        }
        if let Some((wait, info)) = blocked {
            drop_empty(&mut state, &keys);
            let denial = Denial {
                reason: Reason::RateLimited,
                message: format!(
                    "policy '{policy}' allows at most {} {} per {}; retry in {} s",
                    info.limit,
                    if info.limit == 1 {
                        "request"
                    } else {
                        "requests"
                    },
                    describe(info.scope, info.window),
                    wait.as_secs()
                ),
                policy: Some(policy),
                retry_after: Some(wait),
                rate: Some(info),
            };
            drop(state);
            return Err(Box::new(RateLimited { candidate, denial }));
        }

        // Phase 2: consume all, then report the tightest (fewest remaining, then soonest reset).
        let mut tightest: Option<RateInfo> = None;
        for (limit, k) in keys {
            let w = state.windows.entry(k).or_insert_with(|| Window {
                length: limit.window,
                stamps: VecDeque::new(),
            });
            w.stamps.push_back(now);
            let used = w.stamps.len() as u32;
            let oldest = w.stamps.front().copied().unwrap_or(now);
            let info = RateInfo {
                limit: limit.count,
                remaining: limit.count.saturating_sub(used),
                reset: (oldest + limit.window).saturating_duration_since(now),
                window: limit.window,
                scope: limit.scope,
            };
            let tighter = match &tightest {
                None => true,
                Some(t) => (info.remaining, info.reset) < (t.remaining, t.reset),
            };
            if tighter {
                tightest = Some(info);
            }
        }
        drop(state);
        Ok(Permit {
            candidate,
            rate: tightest,
        })
    }

    /// Prunes every key and drops the empty ones.
    pub fn sweep(&self, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        sweep(&mut state, now);
    }

    /// How many keys hold state (for metrics and the memory-bound tests).
    pub fn key_count(&self) -> usize {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.windows.len()
    }
}

fn sweep(state: &mut State, now: Instant) {
    state.windows.retain(|_, w| {
        w.prune(now);
        !w.stamps.is_empty()
    });
    state.calls_since_sweep = 0;
}

fn drop_empty(state: &mut State, keys: &[(Limit, Key)]) {
    for (_, k) in keys {
        if state.windows.get(k).is_some_and(|w| w.stamps.is_empty()) {
            state.windows.remove(k);
        }
    }
}

fn key(scope: LimitScope, policy: &str, action: &Action, op: &Operator) -> Key {
    let policy = policy.to_string();
    match scope {
        LimitScope::PerOperator => Key::Operator {
            policy,
            oid: op.oid.to_ascii_lowercase(),
        },
        LimitScope::PerDevice => Key::Device {
            policy,
            device: action.managed_device_id.to_ascii_lowercase(),
        },
        LimitScope::Global => Key::Global { policy },
    }
}

fn round_up_secs(d: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

fn describe(scope: LimitScope, window: Duration) -> String {
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
        LimitScope::Global => "policy (all operators)",
    };
    format!("{whom} per {span}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::decide::tests::{action, operator, policy, DEV, OID};
    use crate::policy::FactsOutcome;
    use crate::policy::{PolicySet, PolicySettings};
    use crate::routes::RouteForm;

    const OTHER_DEV: &str = "22222222-c9c9-40c1-abbd-6997016f4c9e";
    const OTHER_OID: &str = "33333333-6e1f-485b-8b8b-fb86895f0498";

    fn lim(scope: LimitScope, count: u32, secs: u64) -> Limit {
        Limit {
            scope,
            count,
            window: Duration::from_secs(secs),
        }
    }

    /// A Candidate for `policy_name` with `limits`, obtained the only way there is: decide().
    fn candidate(name: &str, limits: Vec<Limit>, oid: &str, device: &str) -> Candidate {
        let p = PolicySettings {
            users: [oid.to_string()].into_iter().collect(),
            limits,
            ..policy(name)
        };
        let ps = PolicySet::new(vec![p]);
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
        )
        .unwrap()
    }

    struct Rig {
        rl: RateLimiter,
        t0: Instant,
    }

    impl Rig {
        fn new() -> Rig {
            Rig {
                rl: RateLimiter::new(),
                t0: Instant::now(),
            }
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
            let now = self.t0 + Duration::from_millis(secs_ms);
            self.rl.admit(c, now).map_err(|r| r.denial)
        }
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
        assert_eq!(rig.rl.key_count(), 100);
        rig.rl.sweep(rig.t0 + Duration::from_secs(5));
        assert_eq!(rig.rl.key_count(), 100);
        rig.rl.sweep(rig.t0 + Duration::from_secs(10));
        assert_eq!(rig.rl.key_count(), 0);
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
        assert!(rig.rl.key_count() <= 11, "{}", rig.rl.key_count());
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
}
