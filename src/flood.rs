//! The per-client budget for refusals that happen before authentication succeeds, and the
//! summaries of those past it (`server.limits.unauthenticated_per_client`). It holds client
//! addresses, reason codes and counts only: it must never hold anything a request carried (a
//! token, a path), and it never applies to a request whose operator was authenticated.
//!
//! Within the budget a refusal is audited on its own as always. Past it the refusal is answered
//! `429 unauthenticated_throttled` without a record of its own; instead it is counted, per
//! (client, reason), and one `throttled` record with the count and the first and last time is
//! written when the summary interval ends (or at shutdown). So a flood of garbage costs one
//! fsynced line per client and reason per interval instead of one per request, and every request
//! is still accounted for in the chain. Requests shed because every request slot was taken
//! (`server.limits.max_requests_in_flight`, reason `gateway_busy`) are summarised the same way,
//! without a budget: shedding must stay cheap exactly when the gateway is overloaded.

use crate::audit::{AuditError, AuditLog, ThrottledRecord};
use crate::error::Reason;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most client budgets (and, separately, pending summaries) kept; past it, new clients share
/// one overflow bucket, so memory stays bounded however many addresses a flood comes from.
pub const MAX_CLIENTS: usize = 65_536;

/// Who a budget belongs to: an IPv4 address, an IPv6 /64 (one host usually owns a whole /64,
/// so per-address budgets would not bind), or the shared overflow bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    V4(Ipv4Addr),
    V6Net([u8; 8]),
    Overflow,
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> ClientKey {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4),
                None => {
                    let mut net = [0u8; 8];
                    net.copy_from_slice(&v6.octets()[..8]);
                    ClientKey::V6Net(net)
                }
            },
        }
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientKey::V4(v4) => write!(f, "{v4}"),
            ClientKey::V6Net(net) => {
                let mut o = [0u8; 16];
                o[..8].copy_from_slice(net);
                write!(f, "{}/64", std::net::Ipv6Addr::from(o))
            }
            ClientKey::Overflow => f.write_str("*"),
        }
    }
}

/// What to do with one refusal before authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Within the budget: refuse and audit it as usual.
    Record,
    /// Past the budget: answer 429 with `Retry-After`, no record of its own. `opened` is true for
    /// the first one of a new summary (worth one log line; the rest are not).
    Throttled { retry_after: Duration, opened: bool },
}

impl Summary {
    /// What each request it counts was answered: `gateway_busy` for requests shed because every
    /// request slot was taken, else `unauthenticated_throttled`.
    pub fn answered(&self) -> Reason {
        match self.reason {
            Reason::GatewayBusy => Reason::GatewayBusy,
            _ => Reason::UnauthenticatedThrottled,
        }
    }
}

/// Throttled refusals of one client and reason, not yet written.
#[derive(Debug, Clone)]
struct Pending {
    opened: Instant,
    count: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

/// A summary ready to be written as a `throttled` audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub client: String,
    pub reason: Reason,
    pub count: u64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
}

struct Inner {
    limit: u32,
    window: Duration,
    summary_every: Duration,
    /// client → (window start, refusals in it).
    clients: HashMap<ClientKey, (Instant, u32)>,
    pending: HashMap<(ClientKey, Reason), Pending>,
}

impl Inner {
    /// Adds one request to the pending summary of `(key, reason)`, opening it if need be (past
    /// [`MAX_CLIENTS`] summaries, in the overflow bucket). True if it was opened now.
    fn count_pending(
        &mut self,
        mut key: ClientKey,
        reason: Reason,
        now: Instant,
        wall: DateTime<Utc>,
    ) -> bool {
        if !self.pending.contains_key(&(key, reason)) && self.pending.len() >= MAX_CLIENTS {
            key = ClientKey::Overflow;
        }
        let mut opened = false;
        let p = self.pending.entry((key, reason)).or_insert_with(|| {
            opened = true;
            Pending {
                opened: now,
                count: 0,
                first: wall,
                last: wall,
            }
        });
        p.count += 1;
        p.last = wall;
        opened
    }
}

/// The budgets and pending summaries; outlives reloads (a reload changes the rate only).
pub struct PreAuthBudget {
    inner: Mutex<Inner>,
}

impl PreAuthBudget {
    pub fn new(limit: u32, window: Duration, summary_every: Duration) -> PreAuthBudget {
        PreAuthBudget {
            inner: Mutex::new(Inner {
                limit: limit.max(1),
                window,
                summary_every,
                clients: HashMap::new(),
                pending: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Counts only: a panic elsewhere cannot leave them in a state worse than slightly off.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies a reloaded rate; counts already made stand.
    pub fn set_rate(&self, limit: u32, window: Duration, summary_every: Duration) {
        let mut i = self.lock();
        i.limit = limit.max(1);
        i.window = window;
        i.summary_every = summary_every;
    }

    /// Charges one refusal before authentication from `ip` for `reason`.
    pub fn charge(&self, ip: IpAddr, reason: Reason) -> Charge {
        self.charge_at(ip, reason, Instant::now(), Utc::now())
    }

    fn charge_at(&self, ip: IpAddr, reason: Reason, now: Instant, wall: DateTime<Utc>) -> Charge {
        let mut i = self.lock();
        let (limit, window) = (i.limit, i.window);
        let mut key = ClientKey::from(ip);
        if !i.clients.contains_key(&key) && i.clients.len() >= MAX_CLIENTS {
            i.clients
                .retain(|_, (start, _)| now.duration_since(*start) < window);
            if i.clients.len() >= MAX_CLIENTS {
                key = ClientKey::Overflow;
            }
        }
        let slot = i.clients.entry(key).or_insert((now, 0));
        if now.duration_since(slot.0) >= window {
            *slot = (now, 0);
        }
        if slot.1 < limit {
            slot.1 += 1;
            return Charge::Record;
        }
        let retry_after = window.saturating_sub(now.duration_since(slot.0));
        let opened = i.count_pending(key, reason, now, wall);
        Charge::Throttled {
            retry_after,
            opened,
        }
    }

    /// Counts one request refused `gateway_busy` (every request slot taken) from `ip` into its
    /// summary, with no budget: such a refusal never gets a record of its own, whoever sends it.
    /// True for the first of a new summary (worth one log line; the rest are not).
    pub fn summarise_shed(&self, ip: IpAddr) -> bool {
        self.lock().count_pending(
            ClientKey::from(ip),
            Reason::GatewayBusy,
            Instant::now(),
            Utc::now(),
        )
    }

    /// Clients whose budget is spent right now (for the flood gauge).
    pub fn throttled_clients(&self) -> usize {
        let i = self.lock();
        let now = Instant::now();
        i.clients
            .values()
            .filter(|(start, used)| now.duration_since(*start) < i.window && *used >= i.limit)
            .count()
    }

    /// Takes the summaries whose interval has ended (all of them with `all`), oldest first.
    pub fn take(&self, all: bool) -> Vec<Summary> {
        self.take_at(Instant::now(), all)
    }

    fn take_at(&self, now: Instant, all: bool) -> Vec<Summary> {
        let mut i = self.lock();
        let every = i.summary_every;
        let mut out = Vec::new();
        i.pending.retain(|(client, reason), p| {
            if all || now.duration_since(p.opened) >= every {
                out.push(Summary {
                    client: client.to_string(),
                    reason: *reason,
                    count: p.count,
                    first: p.first,
                    last: p.last,
                });
                false
            } else {
                true
            }
        });
        // Windows long past are dropped here too, so an idle gateway forgets old clients.
        let window = i.window;
        i.clients
            .retain(|_, (start, _)| now.duration_since(*start) < window);
        out.sort_by_key(|s| s.first);
        out
    }

    /// Writes the due summaries (all of them with `all`, at shutdown) as `throttled` records.
    /// A summary that cannot be written is logged with its count and dropped: the requests it
    /// counted were answered 429 (or 503 `gateway_busy`) and forwarded nothing.
    pub async fn flush(&self, audit: &AuditLog, all: bool) -> Result<usize, AuditError> {
        let mut written = 0;
        let mut failure = None;
        for s in self.take(all) {
            let rec = ThrottledRecord::from(&s);
            match audit.record_throttled(rec).await {
                Ok(()) => written += 1,
                Err(e) => {
                    tracing::error!(client = %s.client, reason = s.reason.as_str(), count = s.count, error = %crate::error::chain(&e), "throttled-refusal summary could not be written");
                    failure = Some(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// Writes due summaries every second until the task is dropped.
    pub async fn run_flusher(self: std::sync::Arc<Self>, audit: AuditLog) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = self.flush(&audit, false).await;
        }
    }
}

impl From<&Summary> for ThrottledRecord {
    fn from(s: &Summary) -> ThrottledRecord {
        let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        ThrottledRecord {
            client_ip: s.client.clone(),
            reason: s.reason.as_str().to_string(),
            status: s.answered().status().as_u16(),
            answered: s.answered().as_str().to_string(),
            count: s.count,
            first_time: at(s.first),
            last_time: at(s.last),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "192.0.2.7";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn within_the_budget_every_refusal_is_recorded_then_throttled_until_the_window_ends() {
        let b = PreAuthBudget::new(3, Duration::from_secs(10), Duration::from_secs(60));
        let t0 = Instant::now();
        let w = Utc::now();
        for _ in 0..3 {
            assert_eq!(
                b.charge_at(ip(A), Reason::TokenMalformed, t0, w),
                Charge::Record
            );
        }
        let later = t0 + Duration::from_secs(4);
        assert_eq!(
            b.charge_at(ip(A), Reason::TokenMalformed, later, w),
            Charge::Throttled {
                retry_after: Duration::from_secs(6),
                opened: true
            }
        );
        assert!(matches!(
            b.charge_at(ip(A), Reason::TokenMalformed, later, w),
            Charge::Throttled { opened: false, .. }
        ));
        // Another client has its own budget.
        assert_eq!(
            b.charge_at(ip("192.0.2.8"), Reason::TokenMalformed, later, w),
            Charge::Record
        );
        // A new window starts afresh.
        let next = t0 + Duration::from_secs(10);
        assert_eq!(
            b.charge_at(ip(A), Reason::TokenMalformed, next, w),
            Charge::Record
        );
    }

    #[test]
    fn summaries_are_per_client_and_reason_with_count_and_first_and_last_time() {
        let b = PreAuthBudget::new(1, Duration::from_secs(100), Duration::from_secs(60));
        let t0 = Instant::now();
        let w0 = Utc::now();
        let w1 = w0 + chrono::Duration::seconds(5);
        b.charge_at(ip(A), Reason::TokenMalformed, t0, w0);
        for k in 0..4 {
            let wall = if k == 3 { w1 } else { w0 };
            b.charge_at(ip(A), Reason::TokenMalformed, t0, wall);
        }
        b.charge_at(ip(A), Reason::RouteNotFound, t0, w0);
        assert!(
            b.take_at(t0 + Duration::from_secs(59), false).is_empty(),
            "not due yet"
        );
        let mut due = b.take_at(t0 + Duration::from_secs(60), false);
        due.sort_by_key(|s| s.reason.as_str());
        assert_eq!(due.len(), 2);
        assert_eq!(due[0].reason, Reason::RouteNotFound);
        assert_eq!(due[0].count, 1);
        assert_eq!(due[1].reason, Reason::TokenMalformed);
        assert_eq!((due[1].count, due[1].first, due[1].last), (4, w0, w1));
        assert_eq!(due[1].client, A);
        assert!(b.take_at(t0, true).is_empty(), "taken summaries are gone");
    }

    #[test]
    fn ipv6_clients_share_a_budget_per_64_and_mapped_v4_is_v4() {
        assert_eq!(
            ClientKey::from(ip("2001:db8:1:2::1")),
            ClientKey::from(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            ClientKey::from(ip("2001:db8:1:2::1")),
            ClientKey::from(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::from(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(ClientKey::from(ip("::ffff:192.0.2.7")).to_string(), A);
    }

    #[test]
    fn past_max_clients_new_addresses_share_the_overflow_bucket() {
        let b = PreAuthBudget::new(1, Duration::from_secs(100), Duration::from_secs(60));
        let t0 = Instant::now();
        let w = Utc::now();
        for n in 0..MAX_CLIENTS as u32 {
            let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            assert_eq!(b.charge_at(a, Reason::TokenMissing, t0, w), Charge::Record);
        }
        let fresh = ip("203.0.113.1");
        assert_eq!(
            b.charge_at(fresh, Reason::TokenMissing, t0, w),
            Charge::Record
        );
        assert!(
            matches!(
                b.charge_at(ip("203.0.113.2"), Reason::TokenMissing, t0, w),
                Charge::Throttled { .. }
            ),
            "a second new address shares the spent overflow budget"
        );
        let s = b.take_at(t0, true);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].client, "*");
        assert_eq!(b.lock().clients.len(), MAX_CLIENTS + 1, "bounded");
    }

    #[test]
    fn shed_requests_are_summarised_without_a_budget_and_recorded_as_gateway_busy() {
        // A budget that has never been charged: shedding neither needs nor spends it.
        let b = PreAuthBudget::new(5, Duration::from_secs(100), Duration::from_secs(60));
        assert!(b.summarise_shed(ip(A)), "the first opens a summary");
        assert!(!b.summarise_shed(ip(A)));
        assert!(b.summarise_shed(ip("2001:db8::1")));
        assert_eq!(
            b.charge(ip(A), Reason::TokenMissing),
            Charge::Record,
            "the client's own budget is untouched"
        );
        let mut s = b.take(true);
        s.sort_by(|x, y| x.client.cmp(&y.client));
        assert_eq!(s.len(), 2);
        let rec = ThrottledRecord::from(&s[0]);
        assert_eq!(rec.client_ip, A);
        assert_eq!(rec.count, 2);
        assert_eq!(
            (rec.reason.as_str(), rec.status, rec.answered.as_str()),
            ("gateway_busy", 503, "gateway_busy")
        );
        assert_eq!(s[1].client, "2001:db8::/64");
        // A throttled refusal still says 429 unauthenticated_throttled.
        let t = Summary {
            client: A.into(),
            reason: Reason::TokenMissing,
            count: 1,
            first: Utc::now(),
            last: Utc::now(),
        };
        let rec = ThrottledRecord::from(&t);
        assert_eq!(
            (rec.status, rec.answered.as_str()),
            (429, "unauthenticated_throttled")
        );
    }
}
