//! One request as named phases, each a small function with a typed output:
//!
//! ```text
//! request_filter → route → read_body → authenticate → gather_facts → decide → admit
//!   → (approval) → commit → forward → outcome → record_metrics
//!                 any refusal on the way → refuse (commit_deny) → record_metrics
//! ```
//!
//! The outputs are the lifecycle's proofs (see [`crate::lifecycle`]): only a `Permit` can be
//! committed and only an `Authorized` forwarded. Every exit before the forward is a [`Refusal`]
//! with a reason code and an audit record; if that record cannot be written the request fails
//! closed. Stage timing lives in [`Gateway::timed`] alone. No token ever reaches a log line.

mod answer;
mod approvals;
#[cfg(test)]
mod footprint;
mod inputs;

use crate::approval::Cleared;
use crate::audit::{AuditLog, Authorized, DenialNote, InputsRecord, OutcomeRecord, Uncommitted};
use crate::auth::{Authenticator, Operator};
use crate::error::{self, BodyError, Reason};
use crate::flood::{Charge, PreAuthBudget};
use crate::graph::facts::{FactsClient, FactsError};
use crate::graph::forward::{ForwardError, Forwarder, Upstream};
use crate::graph::token::AppTokenProvider;
use crate::headers as hdr;
pub use crate::lifecycle::ConnInfo;
use crate::lifecycle::{Inbound, Known};
use crate::policy::{
    Candidate, FactsOutcome, Justification, OperatorScreen, Permit, PolicySet, RateInfo,
    RateLimiter, RequestFacts,
};
use crate::routes::{self, Action};
use crate::telemetry::{Metrics, Stage};
use answer::Refusal;
use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// Longest body passgate reads before refusing it; the action takes none at all.
const MAX_BODY_READ: usize = 1024;

/// Everything a request needs, built once from the config.
pub struct Gateway {
    pub auth: Authenticator,
    pub policies: PolicySet,
    pub limiter: Arc<RateLimiter>,
    pub facts: FactsClient,
    pub forwarder: Forwarder,
    pub tokens: Arc<AppTokenProvider>,
    pub audit: AuditLog,
    pub metrics: Metrics,
    /// Budgets for refusals before authentication, per client (outlives reloads).
    pub preauth: Arc<PreAuthBudget>,
    /// The two-person approval step and API.
    pub approvals: crate::approval::Approvals,
    /// `audit.min_free_bytes`: `/readyz` fails below it (0: no floor).
    pub audit_min_free_bytes: u64,
    /// The web console of this configuration (`console:`), served on its own listener.
    pub console: Option<Arc<crate::console::Site>>,
}

/// The operator, established from their token, and the action they asked for.
struct Authenticated {
    action: Action,
    operator: Operator,
}

/// Everything the decision needs: who, what, which policies name them, and the device facts.
struct Assessed {
    action: Action,
    operator: Operator,
    screen: OperatorScreen,
    facts: FactsOutcome,
    /// For the record; completed (justification) and set on the request by `decide`.
    inputs: InputsRecord,
}

/// Counts a request as in flight until dropped, so a panic or a dropped task cannot leak the gauge.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> InFlight<'a> {
        metrics.in_flight.inc();
        InFlight(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// How a request ended, for the requests metric.
struct Verdict {
    route: &'static str,
    decision: &'static str,
    reason: Reason,
}

impl Verdict {
    fn of(action: Option<&Action>, decision: &'static str, reason: Reason) -> Verdict {
        Verdict {
            route: action.map(|a| a.form.label()).unwrap_or("unmatched"),
            decision,
            reason,
        }
    }
}

/// request_filter: the request as the audit trail and the answer will name it. Checks nothing.
fn request_filter(parts: &http::request::Parts, conn: ConnInfo) -> Inbound {
    let request_id = new_request_id();
    let client_request_id = parts
        .headers
        .get(hdr::CLIENT_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::text::guid)
        .unwrap_or_else(|| request_id.clone());
    // The target as received: an absolute-form (`http://host/path`) or authority-form
    // (`host:port`) target keeps its scheme and authority, so it never reads as origin-form.
    let target = if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        parts.uri.to_string()
    } else {
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default()
    };
    let target = target.as_str();
    Inbound {
        request_id,
        client_request_id,
        conn,
        method: crate::text::truncated(parts.method.as_str(), 16).to_string(),
        path: crate::text::truncated(&audit_path(target), crate::audit::MAX_PATH_BYTES).to_string(),
        report: std::sync::OnceLock::new(),
        inputs: std::sync::OnceLock::new(),
    }
}

/// A fresh request id: a random (version 4) UUID, lower-case and hyphenated. The bytes come from
/// the thread's CSPRNG (`rand`'s ThreadRng, seeded from the OS) instead of one `getrandom`
/// system call per request; an id needs to be unique, not secret.
fn new_request_id() -> String {
    let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
    id.hyphenated()
        .encode_lower(&mut uuid::Uuid::encode_buffer())
        .to_owned()
}

/// The target as recorded in the audit trail: the path, and of a query string only that there
/// was one. Queries are refused anyway, and one may carry a credential (`?access_token=`).
fn audit_path(target: &str) -> String {
    match target.split_once('?') {
        Some((path, query)) => format!("{path}?<query of {} bytes redacted>", query.len()),
        None => target.to_string(),
    }
}

/// The request fields the action pipeline reads (the bearer token and the justification), as
/// owned copies that do not keep hyper's read buffer alive.
fn detached(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(2);
    for name in [http::header::AUTHORIZATION, hdr::PASSGATE_JUSTIFICATION] {
        for v in headers.get_all(&name) {
            if let Ok(mut copy) = http::HeaderValue::from_bytes(v.as_bytes()) {
                copy.set_sensitive(v.is_sensitive());
                out.append(name.clone(), copy);
            }
        }
    }
    out
}

/// The target the router judges. Absolute-form targets (`POST http://host/...`) keep their
/// scheme, so the router refuses them as unknown routes.
fn route_target(uri: &http::Uri) -> String {
    if uri.scheme().is_some() {
        return uri.to_string();
    }
    uri.path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.to_string())
}

/// route: exactly the recoverPasscode forms, or a refusal.
fn route(method: &Method, target: &str) -> Result<Action, Box<Refusal>> {
    routes::parse(method, target).map_err(|e| Refusal::new(e.reason, e.message, Known::default()))
}

/// read_body: "Do not supply a request body for this method". Any body is refused rather than
/// dropped silently; at most [`MAX_BODY_READ`] bytes are read. A body that cannot be read (the
/// client hung up, broke the framing or was too slow) is refused as what it is.
async fn read_body<B>(action: Action, body: B) -> Result<Action, Box<Refusal>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (reason, message) = match Limited::new(body, MAX_BODY_READ).collect().await {
        Ok(b) => {
            if b.to_bytes().is_empty() {
                return Ok(action);
            }
            (
                Reason::RequestBodyNotAllowed,
                "recoverPasscode takes no request body".to_string(),
            )
        }
        Err(e) => body_failure(e.as_ref()),
    };
    Err(Refusal::new(reason, message, Known::routed(action)))
}

fn body_failure(e: &(dyn std::error::Error + 'static)) -> (Reason, String) {
    if e.is::<LengthLimitError>() {
        return (
            Reason::RequestBodyNotAllowed,
            "recoverPasscode takes no request body".into(),
        );
    }
    match e.downcast_ref::<BodyError>() {
        Some(BodyError::TransferEncoding) => (
            Reason::RequestBodyNotAllowed,
            "recoverPasscode takes no request body (Transfer-Encoding is not accepted)".into(),
        ),
        Some(BodyError::Timeout(d)) => (
            Reason::RequestBodyTimeout,
            format!("the request body did not arrive within {} s", d.as_secs()),
        ),
        _ => (
            Reason::RequestBodyUnreadable,
            "the request body could not be read".into(),
        ),
    }
}

impl Gateway {
    /// Serves one request; every path ends in a response and none panics on input. Must run in
    /// a task of its own (the listener spawns one per request, which is why this is not public):
    /// once the allow record is durable, an operator who hangs up must not cancel the forward or
    /// its outcome record.
    pub(crate) async fn handle<B>(
        &self,
        req: http::Request<B>,
        conn: impl Into<ConnInfo>,
    ) -> Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let received = Instant::now();
        let _in_flight = InFlight::enter(&self.metrics);
        let (parts, body) = req.into_parts();
        let inbound = request_filter(&parts, conn.into());
        if parts.uri.scheme().is_none() {
            if let Some(parsed) =
                crate::approval::api::parse(&parts.method, parts.uri.path(), parts.uri.query())
            {
                // Boxed: the approvals API is the rare path; its future must not size every
                // action request's.
                let (resp, reason) =
                    Box::pin(self.serve_approvals(&inbound, parsed, &parts.headers, body)).await;
                let decision = if reason == Reason::Allowed {
                    "allow"
                } else {
                    "deny"
                };
                self.record_metrics(
                    &Verdict {
                        route: "approvals_api",
                        decision,
                        reason,
                    },
                    received,
                );
                return resp;
            }
        }
        let target = route_target(&parts.uri);
        // Keep only the fields the action pipeline reads, copied out: hyper's URI and header
        // values are slices of the connection's read buffer, which would otherwise stay
        // allocated next to the buffer hyper reads the next request into, for the whole life of
        // this request (tens of KB per busy connection at 1,000 connections).
        let method = parts.method;
        let headers = detached(&parts.headers);
        drop(parts.uri);
        drop(parts.headers);
        drop(parts.extensions);
        let (resp, verdict) = match self
            .run(&inbound, received, &method, &target, &headers, body)
            .await
        {
            Ok(served) => served,
            Err(refusal) => match self.throttle(&inbound, &refusal) {
                Some(throttled) => throttled,
                None => self.refuse(&inbound, refusal).await,
            },
        };
        self.record_metrics(&verdict, received);
        resp
    }

    /// The phases in order; the first refusal ends the request.
    async fn run<B>(
        &self,
        inbound: &Inbound,
        received: Instant,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: B,
    ) -> Result<(Response<Full<Bytes>>, Verdict), Box<Refusal>>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Each stage's future is boxed: a request in flight then holds only the stage it is in,
        // not space for the largest of them all (the Graph lookup, the forward), and the
        // typed values move between stages instead of whole futures being copied into wrappers.
        // `pipeline::footprint` keeps the request future within its budget.
        let action = route(method, target)?;
        let action = read_body(action, body).await?;
        let authenticated = self
            .timed(Stage::Auth, Box::pin(self.authenticate(action, headers)))
            .await?;
        let assessed = Box::pin(self.gather_facts(inbound, authenticated)).await?;
        let candidate = self
            .timed(Stage::Decide, async {
                self.decide(inbound, assessed, headers)
            })
            .await?;
        let screened = Box::pin(self.screen_approval(inbound, &candidate)).await;
        let screened = match screened {
            Ok(s) => s,
            Err(d) => return Err(approval_refusal(*d, Known::from(candidate))),
        };
        let permit = self
            .timed(Stage::RateLimit, Box::pin(self.admit(inbound, candidate)))
            .await?;
        let cleared =
            Box::pin(
                self.approvals
                    .clear(inbound, permit, screened, self.approvals.now()),
            )
            .await
            .map_err(|(permit, d)| approval_refusal(*d, Known::from(permit)))?;
        let authorized = self
            .timed(Stage::Audit, Box::pin(self.commit(inbound, cleared)))
            .await?;
        let route = authorized.action().form.label();
        let rate = authorized.rate().cloned();
        let answer = self
            .timed(
                Stage::Upstream,
                Box::pin(self.forwarder.forward(authorized)),
            )
            .await;
        Ok(self.outcome(inbound, received, route, answer, rate).await)
    }

    /// The one place stage durations are measured; a stage's time counts whether it passed or not.
    async fn timed<T>(&self, stage: Stage, phase: impl Future<Output = T>) -> T {
        let t = Instant::now();
        let out = phase.await;
        self.metrics.observe_stage(stage, t.elapsed());
        out
    }

    /// authenticate: the operator's own Entra ID access token, validated.
    async fn authenticate(
        &self,
        action: Action,
        headers: &HeaderMap,
    ) -> Result<Authenticated, Box<Refusal>> {
        match self.auth.authenticate(headers).await {
            Ok(operator) => Ok(Authenticated { action, operator }),
            Err(e) => {
                let scope = self.auth.settings().required_scope.as_deref();
                let challenge = http::HeaderValue::from_str(&e.challenge(scope));
                let mut r = Refusal::new(e.reason, e.description, Known::routed(action));
                if let Ok(v) = challenge {
                    r.headers.insert(http::header::WWW_AUTHENTICATE, v);
                }
                Err(r)
            }
        }
    }

    /// gather_facts: which policies name the operator, then (only if some do) what Graph says
    /// about the device. An operator no policy names is refused without touching Graph.
    async fn gather_facts(
        &self,
        inbound: &Inbound,
        who: Authenticated,
    ) -> Result<Assessed, Box<Refusal>> {
        let Authenticated { action, operator } = who;
        let screen = self.policies.operator_screen(&operator);
        let mut inputs = inputs::screened(&self.policies, &operator);
        if let Some(denial) = screen.denial() {
            // A report-mode policy naming this operator is still evaluated (on the facts), so a
            // trial policy shows whom it would admit; the enforced decision stays this denial.
            if !self.policies.report_names(&operator) {
                let _ = inbound.inputs.set(inputs);
                return Err(Refusal::denied(
                    denial,
                    Known::authenticated(action, operator),
                ));
            }
        }
        let mut groups = self.policies.groups_to_check(&screen);
        for g in self.policies.report_groups(&operator) {
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let lookup = self
            .facts
            .facts_for(&operator.oid, &action.managed_device_id, &groups);
        let facts = match self.timed(Stage::Facts, lookup).await {
            Ok(f) => FactsOutcome::Found(f),
            Err(FactsError::Budget { retry_after }) => {
                inputs::looked_up(&mut inputs, &groups, InputsRecord::FACTS_LOOKUP_BUDGET);
                let _ = inbound.inputs.set(inputs);
                let mut r = Refusal::new(
                    Reason::RateLimited,
                    "too many device lookups by this operator; nothing was asked of Graph, retry later",
                    Known::authenticated(action, operator),
                );
                let secs = retry_after.as_secs().max(1);
                r.headers
                    .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
                self.metrics
                    .rate_limited
                    .with_label_values(&["-", "facts_lookups"])
                    .inc();
                return Err(r);
            }
            Err(FactsError::NotFound) => FactsOutcome::NotFound,
            Err(e @ FactsError::Unavailable { .. }) => {
                tracing::warn!(request_id = %inbound.request_id, error = %error::chain(&e), "device facts unavailable");
                FactsOutcome::Unavailable
            }
            Err(e @ FactsError::AppToken(_)) => {
                // Same answer as when the forward itself cannot get a token: the operator sees
                // one code for "Entra will not give passgate a token", cached facts or not.
                tracing::warn!(request_id = %inbound.request_id, error = %error::chain(&e), "app token unavailable");
                inputs::looked_up(&mut inputs, &groups, InputsRecord::FACTS_APP_TOKEN);
                let _ = inbound.inputs.set(inputs);
                return Err(Refusal::new(
                    Reason::AppTokenUnavailable,
                    "passgate could not obtain its app token from Entra ID; nothing was forwarded, retry later",
                    Known::authenticated(action, operator),
                ));
            }
        };
        let outcome = match &facts {
            FactsOutcome::Found(_) => InputsRecord::FACTS_FOUND,
            FactsOutcome::NotFound => InputsRecord::FACTS_NOT_FOUND,
            FactsOutcome::Unavailable => InputsRecord::FACTS_UNAVAILABLE,
        };
        inputs::looked_up(&mut inputs, &groups, outcome);
        Ok(Assessed {
            action,
            operator,
            screen,
            facts,
            inputs,
        })
    }

    /// decide: the pure policy decision on the gathered facts, the justification header and
    /// the time (read here, so the decision itself reads neither headers nor the clock).
    fn decide(
        &self,
        inbound: &Inbound,
        a: Assessed,
        headers: &HeaderMap,
    ) -> Result<Candidate, Box<Refusal>> {
        let justification = Justification::from_values(
            headers
                .get_all(hdr::PASSGATE_JUSTIFICATION)
                .iter()
                .map(|v| v.as_bytes()),
        );
        let request = RequestFacts {
            justification,
            now: chrono::Utc::now(),
        };
        let report = self
            .policies
            .report(&a.action, &a.operator, &a.facts, &request);
        for v in &report {
            self.metrics
                .report_decisions
                .with_label_values(&[v.policy.as_str(), v.decision, v.reason])
                .inc();
        }
        let _ = inbound.report.set(report);
        let mut inputs = a.inputs;
        inputs.justification_malformed = inputs::malformed(&request.justification);
        let _ = inbound.inputs.set(inputs);
        self.policies
            .decide(&a.screen, &a.action, &a.operator, &a.facts, &request)
            .map_err(|denial| {
                let device = match a.facts {
                    FactsOutcome::Found(f) => Some(f),
                    _ => None,
                };
                let known = Known {
                    action: Some(a.action),
                    operator: Some(a.operator),
                    device,
                    policy: None,
                    justification: request.justification.recorded().map(str::to_string),
                    break_glass: false,
                };
                Refusal::denied(denial, known)
            })
    }

    /// admit: every rate limit of the admitting policy, checked and consumed atomically.
    /// A store that cannot answer refuses with `limits_unavailable` (fail closed).
    async fn admit(&self, inbound: &Inbound, candidate: Candidate) -> Result<Permit, Box<Refusal>> {
        self.limiter
            .admit(candidate, &inbound.request_id)
            .await
            .map_err(|refused| {
                let refused = *refused;
                if let Some(e) = &refused.store_error {
                    tracing::error!(request_id = %inbound.request_id, error = %e, "rate-limit state unavailable; refusing (fail closed)");
                }
                if let Some(rate) = &refused.denial.rate {
                    self.metrics
                        .rate_limited
                        .with_label_values(&[refused.metric_policy(), rate.scope.as_str()])
                        .inc();
                }
                Refusal::denied(refused.denial, Known::from(refused.candidate))
            })
    }

    /// approval (before the limits): a policy with `approval:` needs a usable approval; without
    /// one a request is opened (or the open one named) and the call refused.
    async fn screen_approval(
        &self,
        inbound: &Inbound,
        candidate: &Candidate,
    ) -> Result<crate::approval::Screened, Box<crate::approval::ApprovalDenial>> {
        self.approvals
            .screen(inbound, candidate, self.approvals.now())
            .await
    }

    /// commit: the allow record, durable before anything is forwarded (fail closed).
    async fn commit(
        &self,
        inbound: &Inbound,
        cleared: Cleared,
    ) -> Result<Authorized, Box<Refusal>> {
        let failed = match self.audit.commit_allow(inbound, cleared).await {
            Ok(a) => {
                let (operator, action) = (a.permit().operator(), a.action());
                tracing::debug!(request_id = %inbound.request_id, oid = %operator.oid, target = %action.target(), audit_seq = a.seq(), "allowed");
                if a.permit().break_glass() {
                    // Counted once the allow record is durable, i.e. once the action will be sent.
                    self.metrics
                        .break_glass
                        .with_label_values(&[a.permit().policy()])
                        .inc();
                    self.approvals
                        .notifier()
                        .break_glass(a.permit(), &inbound.request_id);
                    tracing::warn!(request_id = %inbound.request_id, oid = %operator.oid, policy = a.permit().policy(), target = %action.target(), "break-glass policy used");
                }
                return Ok(a);
            }
            Err(failed) => failed,
        };
        let Uncommitted { cleared, error: e } = *failed;
        tracing::error!(request_id = %inbound.request_id, error = %error::chain(&e), "audit write failed; refusing (fail closed)");
        if !e.may_land_as_submitted() {
            // Nothing is forwarded and no allow record stands: an approval it used is usable
            // again. One whose record may still land stays used.
            self.approvals
                .give_back(&cleared, &inbound.request_id)
                .await;
        }
        let mut r = Refusal::new(
            Reason::AuditUnavailable,
            "the audit log cannot be written; nothing was forwarded",
            Known::from(cleared.into_permit()),
        );
        if e.may_land_as_submitted() {
            // The allow record may still land: say in an outcome what the client got.
            self.audit.note_abandoned(&inbound.request_id);
        }
        // Abandoned or stalled, this request's decision record already says (or will say,
        // with its outcome) what the client gets: no second decision record for it.
        r.recorded = matches!(
            e,
            crate::audit::CommitError::Abandoned(_) | crate::audit::CommitError::Stalled(_)
        );
        Err(r)
    }

    /// outcome: the outcome record and metrics of a forward, and the operator's answer.
    async fn outcome(
        &self,
        inbound: &Inbound,
        received: Instant,
        route: &'static str,
        answer: Result<Upstream, ForwardError>,
        rate: Option<RateInfo>,
    ) -> (Response<Full<Bytes>>, Verdict) {
        let class = match &answer {
            Ok(up) => Metrics::upstream_class(up.status.as_u16()),
            Err(_) => "error",
        };
        self.metrics
            .upstream_responses
            .with_label_values(&[class])
            .inc();
        let latency_ms = received.elapsed().as_secs_f64() * 1000.0;
        let (status, graph_request_id, failure) = match &answer {
            Ok(up) => (up.status.as_u16(), up.graph_request_id.clone(), None),
            Err(e) => {
                let reason = forward_reason(e);
                (reason.status().as_u16(), None, Some(reason))
            }
        };
        let outcome = OutcomeRecord {
            request_id: inbound.request_id.clone(),
            status,
            graph_request_id,
            latency_ms,
            error: failure.map(|r| r.as_str().to_string()),
        };
        if let Err(e) = self.audit.record_outcome(outcome).await {
            // The action already happened (or not) at Graph; the decision record is durable.
            tracing::error!(request_id = %inbound.request_id, error = %error::chain(&e), "audit outcome write failed");
        }
        match answer {
            Ok(up) => (
                answer::upstream(up, rate.as_ref()),
                Verdict {
                    route,
                    decision: "allow",
                    reason: Reason::Allowed,
                },
            ),
            Err(e) => {
                tracing::warn!(request_id = %inbound.request_id, error = %error::chain(&e), "forward failed");
                let reason = forward_reason(&e);
                let resp = answer::error(inbound, reason, forward_message(&e), HeaderMap::new());
                // Allowed by policy, but not served: counted under the failure, not "allowed".
                (
                    resp,
                    Verdict {
                        route,
                        decision: "allow",
                        reason,
                    },
                )
            }
        }
    }

    /// A refusal before authentication (nobody established, the client's fault: 4xx) is charged
    /// to the client's budget; past it, the answer is 429 with no record of its own, counted in
    /// the client's `throttled` summary instead (see [`crate::flood`]). `None`: refuse as usual.
    fn throttle(
        &self,
        inbound: &Inbound,
        refusal: &Refusal,
    ) -> Option<(Response<Full<Bytes>>, Verdict)> {
        let unauthenticated = refusal.known.operator.is_none()
            && !refusal.recorded
            && refusal.reason.status().is_client_error();
        if !unauthenticated {
            return None;
        }
        let resp = self.charge_unauthenticated(inbound, refusal.reason)?;
        let verdict = Verdict::of(
            refusal.known.action.as_ref(),
            "deny",
            Reason::UnauthenticatedThrottled,
        );
        Some((resp, verdict))
    }

    /// Answers a request that found every request slot taken (`gateway_busy`, 503): nothing of
    /// it is read beyond the ids in its head, it gets no record of its own and is counted into
    /// its client's `throttled` summary, whatever the client's budget. It runs on the
    /// connection's task (there was no slot for one of its own), so it must never wait.
    pub(crate) fn shed<B>(&self, req: http::Request<B>, conn: ConnInfo) -> Response<Full<Bytes>> {
        let received = Instant::now();
        let (parts, _body) = req.into_parts();
        let inbound = request_filter(&parts, conn);
        self.metrics.count_shed(crate::telemetry::Listener::Gateway);
        let opened = self.preauth.summarise_shed(inbound.conn.client_ip);
        if opened {
            // One line per client per summary interval, never one per request.
            tracing::warn!(client_ip = %inbound.conn.client_ip, "every request slot is taken (server.limits.max_requests_in_flight); answering 503 gateway_busy and summarising");
        }
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(1u32));
        let resp = answer::error(
            &inbound,
            Reason::GatewayBusy,
            crate::server::BUSY_MESSAGE,
            headers,
        );
        self.record_metrics(
            &Verdict {
                route: "-",
                decision: "deny",
                reason: Reason::GatewayBusy,
            },
            received,
        );
        resp
    }

    /// Charges one refusal before authentication to the client's budget; past it, the 429 that
    /// replaces the refusal (counted, no record of its own). Shared by the action and the
    /// approvals API.
    pub(super) fn charge_unauthenticated(
        &self,
        inbound: &Inbound,
        reason: Reason,
    ) -> Option<Response<Full<Bytes>>> {
        let Charge::Throttled {
            retry_after,
            opened,
        } = self.preauth.charge(inbound.conn.client_ip, reason)
        else {
            return None;
        };
        self.metrics
            .unauthenticated_throttled
            .with_label_values(&[reason.as_str()])
            .inc();
        if opened {
            // One line per client and reason per summary interval, never one per request.
            tracing::warn!(client_ip = %inbound.conn.client_ip, reason = reason.as_str(), "too many refusals before authentication from this client; answering 429 and summarising");
        }
        let secs = retry_after.as_secs().max(1);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
        Some(answer::error(
            inbound,
            Reason::UnauthenticatedThrottled,
            &format!("too many unauthenticated or malformed requests from this client address; retry in {secs} s"),
            headers,
        ))
    }

    /// Records a refusal, then answers it. If even that record cannot be written, answers 503.
    async fn refuse(
        &self,
        inbound: &Inbound,
        refusal: Box<Refusal>,
    ) -> (Response<Full<Bytes>>, Verdict) {
        let status = refusal.reason.status().as_u16();
        let known = &refusal.known;
        tracing::info!(
            request_id = %inbound.request_id,
            reason = refusal.reason.as_str(),
            status,
            oid = known.operator.as_ref().map(|o| o.oid.as_str()).unwrap_or("-"),
            "denied"
        );
        let note = DenialNote {
            reason: refusal.reason,
            status,
            message: &refusal.message,
        };
        let verdict = |reason| Verdict::of(known.action.as_ref(), "deny", reason);
        if refusal.recorded {
            let resp = answer::error(inbound, refusal.reason, &refusal.message, refusal.headers);
            return (resp, verdict(refusal.reason));
        }
        if let Err(e) = self.audit.commit_deny(inbound, known, note).await {
            tracing::error!(request_id = %inbound.request_id, error = %error::chain(&e), "audit write failed for a denial");
            if e.may_land_as_submitted() {
                // The denial lands with its original status: an outcome says the client got 503.
                self.audit.note_abandoned(&inbound.request_id);
            }
            let resp = answer::error(
                inbound,
                Reason::AuditUnavailable,
                "the audit log cannot be written",
                HeaderMap::new(),
            );
            return (resp, verdict(Reason::AuditUnavailable));
        }
        let v = verdict(refusal.reason);
        (
            answer::error(inbound, refusal.reason, &refusal.message, refusal.headers),
            v,
        )
    }

    /// The request's metrics, once, however it ended.
    fn record_metrics(&self, v: &Verdict, received: Instant) {
        self.metrics
            .requests
            .with_label_values(&[v.route, v.decision, v.reason.as_str()])
            .inc();
        self.metrics.observe_request(v.decision, received.elapsed());
    }
}

/// An approval-step refusal, with the request's id in `Passgate-Approval-Id`.
fn approval_refusal(d: crate::approval::ApprovalDenial, known: Known) -> Box<Refusal> {
    let mut r = Refusal::new(d.reason, d.message, known);
    if let Some(id) = d
        .approval_id
        .and_then(|id| http::HeaderValue::from_str(&id).ok())
    {
        r.headers.insert(hdr::PASSGATE_APPROVAL_ID, id);
    }
    r
}

/// What the operator is told when Graph gave no answer: fixed sentences, never a cause's text.
fn forward_message(e: &ForwardError) -> &'static str {
    match e {
        ForwardError::AppToken(_) => {
            "passgate could not obtain its app token from Entra ID; nothing was forwarded, retry later"
        }
        ForwardError::Busy(_) => {
            "passgate's connections to Microsoft Graph stayed busy; nothing was forwarded, retry later"
        }
        ForwardError::Timeout(_) => {
            "Microsoft Graph did not answer in time; the action may or may not have run, check the device before retrying"
        }
        ForwardError::Unreachable(_) | ForwardError::Request(_) => {
            "Microsoft Graph could not be reached; the action may or may not have run, check the device before retrying"
        }
    }
}

/// The reason code for a forward that got no answer from Graph.
fn forward_reason(e: &ForwardError) -> Reason {
    match e {
        ForwardError::AppToken(_) => Reason::AppTokenUnavailable,
        ForwardError::Timeout(_) => Reason::UpstreamTimeout,
        ForwardError::Busy(_) => Reason::UpstreamBusy,
        ForwardError::Unreachable(_) | ForwardError::Request(_) => Reason::UpstreamUnreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_lower_case_version_4_uuids() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = new_request_id();
            let parsed = uuid::Uuid::parse_str(&id).expect("a UUID");
            assert_eq!(parsed.get_version_num(), 4, "{id}");
            assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(
                id,
                parsed.hyphenated().to_string(),
                "lower-case, hyphenated"
            );
            assert!(
                crate::text::guid(&id).is_some(),
                "what request_filter accepts"
            );
            assert!(seen.insert(id), "unique");
        }
    }
}
