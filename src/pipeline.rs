//! One request, in order: route → authenticate → screen operator → device facts → decide →
//! rate-limit → audit (durable) → swap token and forward → record outcome → answer.
//! Every exit before the forward is a refusal with a reason code and an audit record; if the
//! audit record cannot be written the request fails closed. No token ever reaches a log line.

use crate::audit::{
    AuditLog, AuditReceipt, Decision, DecisionRecord, DeviceRecord, OperatorRecord, OutcomeRecord,
    TargetRecord,
};
use crate::auth::{AuthError, Authenticator, Operator, OperatorKind};
use crate::error::{graph_error_json, Reason};
use crate::graph::facts::{FactsClient, FactsError};
use crate::graph::forward::{ForwardError, Forwarder};
use crate::graph::token::AppTokenProvider;
use crate::policy::{Denial, FactsOutcome, PolicySet, RateInfo, RateLimiter};
use crate::routes::{self, Action, RouteForm};
use crate::telemetry::{Metrics, Stage};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response};
use http_body_util::{BodyExt, Full, Limited};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// How long a request waits for its decision record to be durable before failing closed.
const AUDIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
}

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client address passgate trusts (the TCP peer unless configured otherwise).
    pub client_ip: IpAddr,
    /// Subject of a verified mTLS client certificate.
    pub client_cert_subject: Option<String>,
}

impl From<IpAddr> for ConnInfo {
    fn from(client_ip: IpAddr) -> ConnInfo {
        ConnInfo {
            client_ip,
            client_cert_subject: None,
        }
    }
}

/// What the pipeline knows so far about a request, for the audit record.
struct Trail {
    request_id: String,
    client_request_id: String,
    conn: ConnInfo,
    method: String,
    path: String,
    action: Option<Action>,
    operator: Option<Operator>,
    device: Option<DeviceRecord>,
    policy: Option<String>,
}

/// A refusal on its way out: the reason, a human message and extra headers.
struct Refusal {
    reason: Reason,
    message: String,
    headers: HeaderMap,
}

impl Refusal {
    fn new(reason: Reason, message: impl Into<String>) -> Refusal {
        Refusal {
            reason,
            message: message.into(),
            headers: HeaderMap::new(),
        }
    }
}

impl From<Denial> for Refusal {
    fn from(d: Denial) -> Refusal {
        let mut r = Refusal::new(d.reason, d.message);
        if let Some(after) = d.retry_after {
            let secs = after.as_secs().max(1);
            r.headers
                .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(rate) = &d.rate {
            rate_headers(&mut r.headers, rate);
        }
        r
    }
}

/// `RateLimit-*` fields (draft-ietf-httpapi-ratelimit-headers) for the tightest limit.
fn rate_headers(h: &mut HeaderMap, rate: &RateInfo) {
    h.insert("ratelimit-limit", HeaderValue::from(rate.limit));
    h.insert("ratelimit-remaining", HeaderValue::from(rate.remaining));
    h.insert(
        "ratelimit-reset",
        HeaderValue::from(
            rate.reset
                .as_secs()
                .max(if rate.remaining == 0 { 1 } else { 0 }),
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{};w={}", rate.limit, rate.window.as_secs())) {
        h.insert("ratelimit-policy", v);
    }
}

/// The reason code for a forward that got no answer from Graph.
fn forward_reason(e: &ForwardError) -> Reason {
    match e {
        ForwardError::AppToken(_) => Reason::AppTokenUnavailable,
        ForwardError::Timeout(_) => Reason::UpstreamTimeout,
        ForwardError::Unreachable(_) => Reason::UpstreamUnreachable,
    }
}

/// Accepts the operator's `client-request-id` only if it is a GUID (it is echoed and logged).
fn client_request_id(headers: &HeaderMap, fallback: &str) -> String {
    headers
        .get("client-request-id")
        .and_then(|v| v.to_str().ok())
        .and_then(routes::guid)
        .unwrap_or_else(|| fallback.to_string())
}

/// The target as recorded in the audit trail: the path, and of a query string only that there
/// was one. Queries are refused anyway, and one may carry a credential (`?access_token=`).
fn audit_path(target: &str) -> String {
    match target.split_once('?') {
        Some((path, query)) => format!("{path}?<query of {} bytes redacted>", query.len()),
        None => target.to_string(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

impl Gateway {
    /// Serves one request. Never panics on input; every path ends in a response.
    pub async fn handle<B>(
        &self,
        req: http::Request<B>,
        conn: impl Into<ConnInfo>,
    ) -> Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let started = Instant::now();
        let request_id = uuid::Uuid::new_v4().to_string();
        let (parts, body) = req.into_parts();
        let target = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| parts.uri.to_string());
        let mut trail = Trail {
            client_request_id: client_request_id(&parts.headers, &request_id),
            request_id,
            conn: conn.into(),
            method: truncate(parts.method.as_str(), 16),
            path: truncate(&audit_path(&target), 2048),
            action: None,
            operator: None,
            device: None,
            policy: None,
        };
        // Absolute-form targets (`POST http://host/...`) carry a scheme; refuse them as unknown.
        let raw_target = if parts.uri.scheme().is_some() {
            parts.uri.to_string()
        } else {
            target
        };
        self.metrics.in_flight.inc();
        let (resp, decision, reason) = match self
            .decide_and_forward(
                &mut trail,
                &parts.method,
                &raw_target,
                &parts.headers,
                body,
                started,
            )
            .await
        {
            Ok(resp) => (resp, "allow", Reason::Allowed),
            Err(refusal) => {
                let (resp, reason) = self.refuse(&trail, refusal).await;
                (resp, "deny", reason)
            }
        };
        let route = trail
            .action
            .as_ref()
            .map(|a| a.form.label())
            .unwrap_or("unmatched");
        self.metrics
            .requests
            .with_label_values(&[route, decision, reason.as_str()])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[decision])
            .observe(started.elapsed().as_secs_f64());
        self.metrics.in_flight.dec();
        resp
    }

    /// Brings the counters kept by components (token, keys, cache, audit) into the registry.
    pub fn sync_metrics(&self) {
        let m = &self.metrics;
        let sync = Metrics::sync_counter;
        let t = self.tokens.stats();
        sync(
            &m.app_token_refreshes.with_label_values(&["success"]),
            t.refresh_ok,
        );
        sync(
            &m.app_token_refreshes.with_label_values(&["failure"]),
            t.refresh_failed,
        );
        let k = self.auth.keys().stats();
        sync(
            &m.jwks_refreshes.with_label_values(&["success"]),
            k.refresh_ok,
        );
        sync(
            &m.jwks_refreshes.with_label_values(&["failure"]),
            k.refresh_failed,
        );
        let f = self.facts.stats();
        sync(&m.facts_cache.with_label_values(&["hit"]), f.hits);
        sync(&m.facts_cache.with_label_values(&["miss"]), f.misses);
        let a = self.audit.stats();
        sync(&m.audit_records, a.records_written);
        for (kind, n) in a.write_failures_by_kind.iter() {
            sync(
                &m.audit_write_failures.with_label_values(&[kind.as_str()]),
                n,
            );
        }
    }

    async fn decide_and_forward<B>(
        &self,
        trail: &mut Trail,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: B,
        started: Instant,
    ) -> Result<Response<Full<Bytes>>, Refusal>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let action =
            routes::parse(method, target).map_err(|e| Refusal::new(e.reason, e.message))?;
        trail.action = Some(action.clone());
        // "Do not supply a request body for this method": refuse any, rather than drop it silently.
        let body = Limited::new(body, 1024).collect().await;
        if !body.map(|b| b.to_bytes().is_empty()).unwrap_or(false) {
            return Err(Refusal::new(
                Reason::RequestBodyNotAllowed,
                "recoverPasscode takes no request body",
            ));
        }

        let t = Instant::now();
        let authenticated = self.auth.authenticate(headers).await;
        self.metrics.observe_stage(Stage::Auth, t.elapsed());
        let operator = authenticated.map_err(|e| {
            let mut r = Refusal::new(e.reason, e.description.clone());
            self.challenge(&mut r, &e);
            r
        })?;
        trail.operator = Some(operator.clone());

        let screen = self.policies.operator_screen(&operator);
        if let Some(denial) = screen.denial() {
            // Not approved anywhere: deny without touching Graph.
            return Err(denial.into());
        }
        let groups = self.policies.groups_to_check(&screen);
        let t = Instant::now();
        let fetched = self.facts.facts(&action.managed_device_id, &groups).await;
        self.metrics.observe_stage(Stage::Facts, t.elapsed());
        let facts = match fetched {
            Ok(f) => {
                trail.device = Some(DeviceRecord {
                    azure_ad_device_id: f.azure_ad_device_id.clone(),
                    device_object_id: f.device_object_id.clone(),
                    operating_system: f.operating_system.clone(),
                    user_principal_name: f.user_principal_name.clone(),
                    user_id: f.user_id.clone(),
                    member_of: f.member_of.iter().cloned().collect(),
                });
                FactsOutcome::Found(f)
            }
            Err(FactsError::NotFound) => FactsOutcome::NotFound,
            Err(FactsError::Unavailable(why)) => {
                tracing::warn!(request_id = %trail.request_id, error = %why, "device facts unavailable");
                FactsOutcome::Unavailable
            }
            Err(FactsError::AppToken(why)) => {
                // Same answer as when the forward itself cannot get a token: the operator sees
                // one code for "Entra will not give passgate a token", cached facts or not.
                tracing::warn!(request_id = %trail.request_id, error = %why, "app token unavailable for device facts");
                return Err(Refusal::new(
                    Reason::AppTokenUnavailable,
                    "passgate could not obtain its app token from Entra ID; nothing was forwarded, retry later",
                ));
            }
        };
        let t = Instant::now();
        let decided = self.policies.decide(&screen, &action, &operator, &facts);
        self.metrics.observe_stage(Stage::Decide, t.elapsed());
        let candidate = decided.map_err(|d| {
            trail.policy = d.policy.clone();
            Refusal::from(d)
        })?;
        let t = Instant::now();
        let admitted = self.limiter.admit(candidate, &action, &operator, t);
        self.metrics.observe_stage(Stage::RateLimit, t.elapsed());
        let permit = admitted.map_err(|d| {
            trail.policy = d.policy.clone();
            if let (Some(rate), Some(policy)) = (&d.rate, &d.policy) {
                self.metrics
                    .rate_limited
                    .with_label_values(&[policy.as_str(), rate.scope.as_str()])
                    .inc();
            }
            Refusal::from(d)
        })?;
        trail.policy = Some(permit.policy().to_string());
        let rate = permit.rate().cloned();

        let t = Instant::now();
        let recorded = self
            .durable(self.record(trail, Decision::Allow, Reason::Allowed, None, None))
            .await;
        self.metrics.observe_stage(Stage::Audit, t.elapsed());
        let receipt = recorded.map_err(|e| {
                tracing::error!(request_id = %trail.request_id, error = %e, "audit write failed; refusing (fail closed)");
                Refusal::new(Reason::AuditUnavailable, "the audit log cannot be written; nothing was forwarded")
            })?;
        tracing::debug!(request_id = %trail.request_id, oid = %operator.oid, target = %action.target(), "allowed");

        // The forward and its outcome record run in their own task: if the operator hangs up,
        // hyper drops this future, but a POST Graph may already have acted on must still get its
        // outcome written (and the upstream metrics counted).
        let forwarder = self.forwarder.clone();
        let audit = self.audit.clone();
        let metrics = self.metrics.clone();
        let request_id = trail.request_id.clone();
        let crid = trail.client_request_id.clone();
        let forwarded_action = action.clone();
        let detached = tokio::spawn(async move {
            let t = Instant::now();
            let result = forwarder
                .forward(permit, &receipt, &forwarded_action, &crid)
                .await;
            metrics.observe_stage(Stage::Upstream, t.elapsed());
            let class = match &result {
                Ok(up) => Metrics::upstream_class(up.status.as_u16()),
                Err(_) => "error",
            };
            metrics.upstream_responses.with_label_values(&[class]).inc();
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            let outcome = match &result {
                Ok(up) => OutcomeRecord {
                    request_id: request_id.clone(),
                    status: up.status.as_u16(),
                    graph_request_id: up.graph_request_id.clone(),
                    latency_ms,
                    error: None,
                },
                Err(e) => {
                    let reason = forward_reason(e);
                    OutcomeRecord {
                        request_id: request_id.clone(),
                        status: reason.status().as_u16(),
                        graph_request_id: None,
                        latency_ms,
                        error: Some(reason.as_str().to_string()),
                    }
                }
            };
            if let Err(e) = audit.record_outcome(outcome).await {
                // The action already happened (or not) at Graph; the decision record is durable.
                tracing::error!(request_id = %request_id, error = %e, "audit outcome write failed");
            }
            result
        });
        let result = match detached.await {
            Ok(r) => r,
            Err(e) => {
                // A panic in the forward task: whether Graph acted is unknown, as on a timeout.
                tracing::error!(request_id = %trail.request_id, error = %e, "forward task failed");
                Err(ForwardError::Unreachable("forward task failed".into()))
            }
        };
        let response = match result {
            Ok(up) => {
                let mut resp = Response::new(Full::new(up.body));
                *resp.status_mut() = up.status;
                *resp.headers_mut() = up.headers;
                if let Some(rate) = &rate {
                    rate_headers(resp.headers_mut(), rate);
                }
                resp
            }
            Err(e) => {
                tracing::warn!(request_id = %trail.request_id, error = %e, "forward failed");
                self.error_response(trail, forward_reason(&e), &e.to_string(), HeaderMap::new())
            }
        };
        Ok(response)
    }

    /// Writes a decision record, bounded in time: a disk that hangs fails the request closed
    /// instead of holding it forever.
    async fn durable(&self, rec: DecisionRecord) -> Result<AuditReceipt, String> {
        match tokio::time::timeout(AUDIT_TIMEOUT, self.audit.record_decision(rec)).await {
            Ok(Ok(receipt)) => Ok(receipt),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no fsync within {AUDIT_TIMEOUT:?}")),
        }
    }

    fn challenge(&self, r: &mut Refusal, e: &AuthError) {
        let scope = self.auth.settings().required_scope.as_deref();
        if let Ok(v) = HeaderValue::from_str(&e.challenge(scope)) {
            r.headers.insert(http::header::WWW_AUTHENTICATE, v);
        }
    }

    fn record(
        &self,
        trail: &Trail,
        decision: Decision,
        reason: Reason,
        status: Option<u16>,
        message: Option<String>,
    ) -> DecisionRecord {
        DecisionRecord {
            request_id: trail.request_id.clone(),
            client_request_id: Some(trail.client_request_id.clone()),
            client_ip: trail.conn.client_ip.to_string(),
            client_cert_subject: trail.conn.client_cert_subject.clone(),
            method: trail.method.clone(),
            path: trail.path.clone(),
            action: trail.action.as_ref().map(|a| a.kind.as_str().to_string()),
            api_version: trail
                .action
                .as_ref()
                .map(|a| a.version.as_str().to_string()),
            operator: trail.operator.as_ref().map(|o| OperatorRecord {
                oid: o.oid.clone(),
                tid: o.tid.clone(),
                upn: o.upn.clone(),
                kind: match o.kind {
                    OperatorKind::User => "user".into(),
                    OperatorKind::App => "app".into(),
                },
                client_app_id: o.client_app_id.clone(),
            }),
            target: trail.action.as_ref().map(|a| TargetRecord {
                managed_device_id: a.managed_device_id.clone(),
                route_form: a.form.label().to_string(),
                user_id: match &a.form {
                    RouteForm::User { user_id } => Some(user_id.clone()),
                    _ => None,
                },
                detected_app_id: match &a.form {
                    RouteForm::DetectedApp { detected_app_id } => Some(detected_app_id.clone()),
                    _ => None,
                },
            }),
            device: trail.device.clone(),
            decision,
            reason: reason.as_str().to_string(),
            policy: trail.policy.clone(),
            status,
            message,
        }
    }

    /// Records a refusal, then answers it. If even that record cannot be written, answers 503.
    async fn refuse(&self, trail: &Trail, refusal: Refusal) -> (Response<Full<Bytes>>, Reason) {
        let status = refusal.reason.status().as_u16();
        tracing::info!(
            request_id = %trail.request_id,
            reason = refusal.reason.as_str(),
            status,
            oid = trail.operator.as_ref().map(|o| o.oid.as_str()).unwrap_or("-"),
            "denied"
        );
        let rec = self.record(
            trail,
            Decision::Deny,
            refusal.reason,
            Some(status),
            Some(truncate(&refusal.message, 512)),
        );
        if let Err(e) = self.durable(rec).await {
            tracing::error!(request_id = %trail.request_id, error = %e, "audit write failed for a denial");
            let resp = self.error_response(
                trail,
                Reason::AuditUnavailable,
                "the audit log cannot be written",
                HeaderMap::new(),
            );
            return (resp, Reason::AuditUnavailable);
        }
        let resp = self.error_response(trail, refusal.reason, &refusal.message, refusal.headers);
        (resp, refusal.reason)
    }

    fn error_response(
        &self,
        trail: &Trail,
        reason: Reason,
        message: &str,
        extra: HeaderMap,
    ) -> Response<Full<Bytes>> {
        let body = graph_error_json(
            reason.as_str(),
            message,
            &trail.request_id,
            &trail.client_request_id,
            chrono::Utc::now(),
        );
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = reason.status();
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::from_str(&trail.request_id) {
            h.insert("request-id", v);
        }
        if let Ok(v) = HeaderValue::from_str(&trail.client_request_id) {
            h.insert("client-request-id", v);
        }
        if reason == Reason::MethodNotAllowed {
            h.insert(http::header::ALLOW, HeaderValue::from_static("POST"));
        }
        for (k, v) in extra.iter() {
            h.insert(k.clone(), v.clone());
        }
        resp
    }
}
