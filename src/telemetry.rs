//! Prometheus metrics: one registry owned by the gateway (never the global default), handed in
//! explicitly. Labels are low-cardinality by construction: route form, decision, reason code,
//! policy name, stage, status class. Never an operator, a device id or a token.
//!
//! Counts kept by components a reload replaces (the app-token provider, the facts cache, the
//! signing-key store) reach the registry through a [`CounterFeed`], which adds each object's
//! growth since it was last read: a counter never stalls or jumps when a reload starts a new
//! object at zero.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::any::Any;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Latency buckets in seconds: sub-millisecond through Graph's slow tail.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const FSYNC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Every metric passgate exports. Cheap to clone (the prometheus types are handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Handles of the per-request histograms, resolved once (see [`Resolved`]).
    resolved: std::sync::Arc<Resolved>,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub stage_duration: HistogramVec,
    pub upstream_responses: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub app_token_refreshes: IntCounterVec,
    pub jwks_refreshes: IntCounterVec,
    pub facts_cache: IntCounterVec,
    pub audit_records: IntCounter,
    pub audit_fsync: Histogram,
    pub audit_write_failures: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: Gauge,
    /// 1 while the config file differs from the running process on a restart-only key.
    pub config_restart_required: IntGauge,
    pub in_flight: IntGauge,
    /// Requests shed at a listener's request cap, by listener.
    shed: IntCounterVec,
    /// `server.limits.max_requests_in_flight` in force.
    pub max_requests_in_flight: IntGauge,
    /// Requests the action pipeline has in flight to Graph (device facts, forwards).
    pub graph_in_flight: IntGauge,
    /// `graph.max_concurrent_requests` in force.
    pub graph_max_concurrent: IntGauge,
    pub build_info: IntGaugeVec,
    /// Round trips to the rate-limit state backend, by backend and operation (admit, ping).
    pub state_latency: HistogramVec,
    /// Failed state-backend calls (the request failed closed), by backend and kind.
    pub state_errors: IntCounterVec,
    /// Refusals before authentication answered 429 without their own record, by the reason.
    pub unauthenticated_throttled: IntCounterVec,
    /// Client addresses whose budget for refusals before authentication is spent right now.
    pub unauthenticated_throttled_clients: IntGauge,
    /// Free bytes on the audit file's filesystem (for the unprivileged user), at the last scrape.
    pub audit_free_bytes: IntGauge,
    /// `audit.min_free_bytes` in force; `/readyz` fails below it.
    pub audit_min_free_bytes: IntGauge,
    /// What `mode: report` policies would have decided, by policy, decision and reason.
    pub report_decisions: IntCounterVec,
    /// Two-person approval events: requested, approved, denied, expired, consumed, refused.
    pub approval_events: IntCounterVec,
    /// Webhook deliveries of new approval requests, by result.
    pub approval_notifications: IntCounterVec,
    /// Admissions through `break_glass: true` policies whose allow record is durable, by policy.
    pub break_glass: IntCounterVec,
    /// Web console actions, by event and result (`crate::console::EVENTS`).
    pub console_events: IntCounterVec,
}

/// The histogram series every request observes, each resolved on its first use: a series still
/// appears with its first observation (as with `with_label_values`), but later requests skip
/// the label hashing and map lookup.
#[derive(Default)]
struct Resolved {
    stages: [std::sync::OnceLock<Histogram>; Stage::COUNT],
    /// `passgate_request_duration_seconds{decision}` for `allow` and `deny`.
    decisions: [std::sync::OnceLock<Histogram>; 2],
}

/// A listener, for `passgate_shed_requests_total{listener}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Gateway,
    Admin,
    Console,
}

impl Listener {
    const ALL: [Listener; 3] = [Listener::Gateway, Listener::Admin, Listener::Console];

    fn as_str(self) -> &'static str {
        match self {
            Listener::Gateway => "gateway",
            Listener::Admin => "admin",
            Listener::Console => "console",
        }
    }
}

/// A pipeline stage, for `passgate_stage_duration_seconds{stage}`.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    Auth,
    Facts,
    Decide,
    RateLimit,
    Audit,
    Upstream,
}

impl Stage {
    /// One past the last variant (`Upstream`): the number of slots in [`Resolved::stages`].
    const COUNT: usize = Stage::Upstream as usize + 1;

    fn label(self) -> &'static str {
        match self {
            Stage::Auth => "auth",
            Stage::Facts => "facts",
            Stage::Decide => "decide",
            Stage::RateLimit => "rate_limit",
            Stage::Audit => "audit",
            Stage::Upstream => "upstream",
        }
    }
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    reg.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("static metric definition");
    reg.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let requests = counter(
            &r,
            "passgate_requests_total",
            "Requests that reached passgate, by route form, decision and reason code.",
            &["route", "decision", "reason"],
        );
        let request_duration = histogram(
            &r,
            "passgate_request_duration_seconds",
            "End-to-end time passgate spent on a request, by decision.",
            &["decision"],
            LATENCY_BUCKETS,
        );
        let stage_duration = histogram(
            &r,
            "passgate_stage_duration_seconds",
            "Time spent per pipeline stage (auth, facts, decide, rate_limit, audit, upstream).",
            &["stage"],
            LATENCY_BUCKETS,
        );
        let upstream_responses = counter(
            &r,
            "passgate_upstream_responses_total",
            "Answers from Graph to forwarded actions by status class; Graph's own 429s are class 429, transport failures class error.",
            &["class"],
        );
        let rate_limited = counter(
            &r,
            "passgate_rate_limited_total",
            "Requests refused by passgate's own rate limits, by policy and limit scope.",
            &["policy", "scope"],
        );
        let app_token_refreshes = counter(
            &r,
            "passgate_app_token_refreshes_total",
            "App-only token requests to Entra, by result.",
            &["result"],
        );
        let jwks_refreshes = counter(
            &r,
            "passgate_jwks_refreshes_total",
            "Operator-token signing key (discovery + JWKS) fetches, by result.",
            &["result"],
        );
        let facts_cache = counter(
            &r,
            "passgate_device_facts_cache_total",
            "Device-facts lookups by cache result.",
            &["result"],
        );
        let audit_records = IntCounter::new(
            "passgate_audit_records_total",
            "Audit records written and fsynced.",
        )
        .expect("static metric definition");
        r.register(Box::new(audit_records.clone()))
            .expect("metric registered once");
        let audit_fsync = Histogram::with_opts(
            HistogramOpts::new(
                "passgate_audit_fsync_duration_seconds",
                "Duration of each audit group-commit fsync.",
            )
            .buckets(FSYNC_BUCKETS.to_vec()),
        )
        .expect("static metric definition");
        r.register(Box::new(audit_fsync.clone()))
            .expect("metric registered once");
        let audit_write_failures = counter(
            &r,
            "passgate_audit_write_failures_total",
            "Audit batches that could not be written or fsynced (requests in them failed closed), by cause: disk_full, permission, fsync, io.",
            &["kind"],
        );
        let config_reloads = counter(
            &r,
            "passgate_config_reloads_total",
            "Configuration reload attempts, by result.",
            &["result"],
        );
        let config_last_reload_success = Gauge::new(
            "passgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
        )
        .expect("static metric definition");
        r.register(Box::new(config_last_reload_success.clone()))
            .expect("metric registered once");
        let config_restart_required = IntGauge::new(
            "passgate_config_restart_required",
            "1 while the config file changes a key that only takes effect after a restart (the process runs with the old value), else 0.",
        )
        .expect("static metric definition");
        r.register(Box::new(config_restart_required.clone()))
            .expect("metric registered once");
        let in_flight = IntGauge::new(
            "passgate_in_flight_requests",
            "Requests currently being processed.",
        )
        .expect("static metric definition");
        r.register(Box::new(in_flight.clone()))
            .expect("metric registered once");
        let max_requests_in_flight = IntGauge::new(
            "passgate_max_requests_in_flight",
            "server.limits.max_requests_in_flight in force: requests over it are answered 503 gateway_busy at once.",
        )
        .expect("static metric definition");
        r.register(Box::new(max_requests_in_flight.clone()))
            .expect("metric registered once");
        let graph_in_flight = IntGauge::new(
            "passgate_graph_requests_in_flight",
            "Requests the action pipeline has in flight to Graph (device facts and forwards), counted against graph.max_concurrent_requests.",
        )
        .expect("static metric definition");
        r.register(Box::new(graph_in_flight.clone()))
            .expect("metric registered once");
        let graph_max_concurrent = IntGauge::new(
            "passgate_graph_max_concurrent_requests",
            "graph.max_concurrent_requests in force: requests over it queue for a slot, then are refused upstream_busy.",
        )
        .expect("static metric definition");
        r.register(Box::new(graph_max_concurrent.clone()))
            .expect("metric registered once");
        let build_info = IntGaugeVec::new(
            Opts::new("passgate_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("static metric definition");
        r.register(Box::new(build_info.clone()))
            .expect("metric registered once");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for result in ["success", "failure"] {
            app_token_refreshes.with_label_values(&[result]);
            jwks_refreshes.with_label_values(&[result]);
            config_reloads.with_label_values(&[result]);
        }
        for result in ["hit", "miss"] {
            facts_cache.with_label_values(&[result]);
        }
        for kind in crate::audit::FailureKind::ALL {
            audit_write_failures.with_label_values(&[kind.as_str()]);
        }
        for class in ["2xx", "3xx", "4xx", "429", "5xx", "error"] {
            upstream_responses.with_label_values(&[class]);
        }
        let state_latency = histogram(
            &r,
            "passgate_state_duration_seconds",
            "Round trips to the rate-limit state backend (memory or redis), by operation: admit (the check-and-consume script) or ping (readiness).",
            &["backend", "op"],
            LATENCY_BUCKETS,
        );
        let state_errors = counter(
            &r,
            "passgate_state_errors_total",
            "State-backend calls that failed (an admit failing is a 503 limits_unavailable), by backend and kind: timeout, connection, auth, tls, script, replication, other.",
            &["backend", "kind"],
        );
        let unauthenticated_throttled = counter(
            &r,
            "passgate_unauthenticated_throttled_total",
            "Refusals before authentication past the client's budget (server.limits.unauthenticated_per_client), answered 429 and summarised instead of audited one by one, by the reason each would have had.",
            &["reason"],
        );
        let shed = counter(
            &r,
            "passgate_shed_requests_total",
            "Requests answered 503 gateway_busy at once because their listener already served server.limits.max_requests_in_flight requests, by listener.",
            &["listener"],
        );
        // At 0 from the start, so the alert's increase() sees the very first shed request.
        for listener in Listener::ALL {
            shed.with_label_values(&[listener.as_str()]);
        }
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition");
            r.register(Box::new(g.clone()))
                .expect("metric registered once");
            g
        };
        let unauthenticated_throttled_clients = int_gauge(
            "passgate_unauthenticated_throttled_clients",
            "Client addresses (IPv6: /64 networks) whose budget for refusals before authentication is spent right now.",
        );
        let audit_free_bytes = int_gauge(
            "passgate_audit_free_bytes",
            "Free bytes on the audit log's filesystem, as available to passgate, at the last scrape.",
        );
        let audit_min_free_bytes = int_gauge(
            "passgate_audit_min_free_bytes",
            "audit.min_free_bytes in force (0: no floor); /readyz fails while free space is below it.",
        );
        let report_decisions = counter(
            &r,
            "passgate_report_policy_decisions_total",
            "What mode: report policies would have decided (they never admit), by policy, decision (allow, deny) and reason.",
            &["policy", "decision", "reason"],
        );
        let approval_events = counter(
            &r,
            "passgate_approval_events_total",
            "Two-person approval events, by event: requested, approved, denied, expired, consumed, refused (an approve or deny that was not taken).",
            &["event"],
        );
        for e in crate::approval::Event::ALL {
            approval_events.with_label_values(&[e.as_str()]);
        }
        let approval_notifications = counter(
            &r,
            "passgate_approval_notifications_total",
            "Webhook deliveries announcing new approval requests, by result: success, failure.",
            &["result"],
        );
        for result in ["success", "failure"] {
            approval_notifications.with_label_values(&[result]);
        }
        let break_glass = counter(
            &r,
            "passgate_break_glass_total",
            "Actions admitted through a break_glass policy (counted once the allow record is durable), by policy. Every increase should page someone.",
            &["policy"],
        );
        let console_events = counter(
            &r,
            "passgate_console_events_total",
            "Web console actions, by event (sign_in, sign_out, approve, deny, export) and result: ok, refused (audited), failed (a sign-in that failed before an identity was established; logged, not audited).",
            &["event", "result"],
        );
        for (event, results) in crate::console::EVENTS {
            for result in *results {
                console_events.with_label_values(&[event, result]);
            }
        }
        config_last_reload_success.set(chrono::Utc::now().timestamp() as f64);
        config_reloads.with_label_values(&["success"]).inc();
        Metrics {
            registry: r,
            resolved: std::sync::Arc::new(Resolved::default()),
            requests,
            request_duration,
            stage_duration,
            upstream_responses,
            rate_limited,
            app_token_refreshes,
            jwks_refreshes,
            facts_cache,
            audit_records,
            audit_fsync,
            audit_write_failures,
            config_reloads,
            config_last_reload_success,
            config_restart_required,
            in_flight,
            shed,
            max_requests_in_flight,
            graph_in_flight,
            graph_max_concurrent,
            build_info,
            state_latency,
            state_errors,
            unauthenticated_throttled,
            unauthenticated_throttled_clients,
            audit_free_bytes,
            audit_min_free_bytes,
            approval_events,
            approval_notifications,
            report_decisions,
            break_glass,
            console_events,
        }
    }

    /// Exports `passgate_break_glass_total{policy}` at 0 for each break-glass policy before its
    /// first use, so the alert's `increase()` sees the very first one (a series that appears
    /// with its first increment has no earlier sample to increase from).
    pub fn declare_break_glass_policies<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        for name in names {
            self.break_glass.with_label_values(&[name]);
        }
    }

    /// One request answered `gateway_busy` at `listener`'s request cap.
    pub fn count_shed(&self, listener: Listener) {
        self.shed.with_label_values(&[listener.as_str()]).inc();
    }

    pub fn observe_stage(&self, stage: Stage, d: Duration) {
        self.resolved.stages[stage as usize]
            .get_or_init(|| self.stage_duration.with_label_values(&[stage.label()]))
            .observe(d.as_secs_f64());
    }

    /// One request's end-to-end time under its decision (`allow` or `deny`).
    pub fn observe_request(&self, decision: &'static str, d: Duration) {
        let slot = match decision {
            "allow" => &self.resolved.decisions[0],
            "deny" => &self.resolved.decisions[1],
            other => {
                self.request_duration
                    .with_label_values(&[other])
                    .observe(d.as_secs_f64());
                return;
            }
        };
        slot.get_or_init(|| self.request_duration.with_label_values(&[decision]))
            .observe(d.as_secs_f64());
    }

    /// Status class of a Graph answer; 429 counted apart from other 4xx.
    pub fn upstream_class(status: u16) -> &'static str {
        match status {
            429 => "429",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        }
    }

    /// Brings a monotonic counter up to an absolute value read from a component's stats. Only for
    /// components that live as long as the registry (the audit log); for ones a reload replaces,
    /// use a [`CounterFeed`].
    pub fn sync_counter(c: &prometheus::IntCounter, absolute: u64) {
        let current = c.get();
        if absolute > current {
            c.inc_by(absolute - current);
        }
    }

    /// Text exposition format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// One source object the feed has read, and its count at that read. The `Weak` pins the
/// object's allocation, so its address cannot be reused by a newer object while the entry lives.
struct Seen {
    source: Weak<dyn Any + Send + Sync>,
    last: u64,
}

/// Feeds one registry counter from the absolute counts of objects that come and go with reloads.
///
/// Each object is tracked by identity: the counter grows by what that object counted since the
/// feed last read it, so a fresh object starting at zero adds its own counts instead of having
/// to overtake the old object's total first. An object read for the first time contributes its
/// whole count; an object no longer alive anywhere is forgotten (read it once more before
/// dropping it to keep its last increments).
#[derive(Default)]
pub struct CounterFeed {
    seen: Mutex<Vec<Seen>>,
}

impl CounterFeed {
    pub fn new() -> CounterFeed {
        CounterFeed::default()
    }

    /// Adds to `counter` what `source` counted since the last call for the same object.
    pub fn feed<T: Any + Send + Sync>(&self, counter: &IntCounter, source: &Arc<T>, absolute: u64) {
        let mut seen = match self.seen.lock() {
            Ok(s) => s,
            // Entries are updated in one step each; a poisoned list is still coherent.
            Err(p) => p.into_inner(),
        };
        seen.retain(|s| s.source.strong_count() > 0);
        let key = Arc::as_ptr(source).cast::<()>();
        match seen
            .iter_mut()
            .find(|s| std::ptr::eq(s.source.as_ptr().cast::<()>(), key))
        {
            Some(s) => {
                // Component counts only grow; a smaller number is ignored rather than trusted.
                if absolute > s.last {
                    counter.inc_by(absolute - s.last);
                    s.last = absolute;
                }
            }
            None => {
                counter.inc_by(absolute);
                let weak: Weak<dyn Any + Send + Sync> = Arc::downgrade(source) as Weak<T>;
                seen.push(Seen {
                    source: weak,
                    last: absolute,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_keeps_counting_across_replaced_sources() {
        let c = IntCounter::new("t_total", "test").unwrap();
        let feed = CounterFeed::new();
        let old = Arc::new(());
        feed.feed(&c, &old, 5);
        feed.feed(&c, &old, 7);
        assert_eq!(c.get(), 7);
        // A reload: a new object starts at zero while the old one is still finishing requests.
        let new = Arc::new(());
        feed.feed(&c, &new, 1);
        assert_eq!(
            c.get(),
            8,
            "the new object's first count adds, it need not pass 7 first"
        );
        feed.feed(&c, &old, 9);
        assert_eq!(c.get(), 10, "the old object's late increments still count");
        drop(old);
        feed.feed(&c, &new, 3);
        assert_eq!(c.get(), 12);
        feed.feed(&c, &new, 3);
        assert_eq!(c.get(), 12, "no growth, no increment");
    }

    #[test]
    fn audit_write_failures_are_exported_by_kind_from_the_start() {
        let m = Metrics::new();
        let text = m.encode();
        for kind in ["disk_full", "permission", "fsync", "io"] {
            let series = format!("passgate_audit_write_failures_total{{kind=\"{kind}\"}} 0\n");
            assert!(text.contains(&series), "missing {series:?} in:\n{text}");
        }
        Metrics::sync_counter(&m.audit_write_failures.with_label_values(&["disk_full"]), 3);
        assert!(m
            .encode()
            .contains("passgate_audit_write_failures_total{kind=\"disk_full\"} 3\n"));
    }

    #[test]
    fn resolved_histograms_appear_with_their_first_observation_and_count_every_one() {
        let m = Metrics::new();
        let stages = [
            Stage::Auth,
            Stage::Facts,
            Stage::Decide,
            Stage::RateLimit,
            Stage::Audit,
            Stage::Upstream,
        ];
        assert_eq!(stages.len(), Stage::COUNT);
        for (i, s) in stages.iter().enumerate() {
            assert_eq!(*s as usize, i, "each stage has its own slot");
        }
        let text = m.encode();
        assert!(!text.contains("passgate_stage_duration_seconds_count"));
        assert!(!text.contains("passgate_request_duration_seconds_count"));
        m.observe_stage(Stage::Audit, Duration::from_millis(3));
        m.observe_stage(Stage::Audit, Duration::from_millis(5));
        m.observe_stage(Stage::Upstream, Duration::from_millis(7));
        m.observe_request("allow", Duration::from_millis(9));
        m.observe_request("deny", Duration::from_millis(1));
        m.observe_request("deny", Duration::from_millis(1));
        let clone = m.clone();
        clone.observe_request("deny", Duration::from_millis(1));
        let text = m.encode();
        for (series, n) in [
            ("passgate_stage_duration_seconds_count{stage=\"audit\"}", 2),
            (
                "passgate_stage_duration_seconds_count{stage=\"upstream\"}",
                1,
            ),
            (
                "passgate_request_duration_seconds_count{decision=\"allow\"}",
                1,
            ),
            (
                "passgate_request_duration_seconds_count{decision=\"deny\"}",
                3,
            ),
        ] {
            assert!(
                text.contains(&format!("{series} {n}\n")),
                "{series} {n} in\n{text}"
            );
        }
        assert!(
            !text.contains("stage=\"auth\""),
            "a stage never observed has no series"
        );
    }
}
