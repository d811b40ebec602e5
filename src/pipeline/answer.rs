//! What the operator gets back: Graph-shaped error bodies with passgate's reason codes, the
//! `RateLimit-*` fields, and Graph's own answer passed through. Builds responses only; it must
//! never decide anything or put a credential into a header or body.

use crate::error::{graph_error_json, Reason};
use crate::graph::forward::Upstream;
use crate::headers as hdr;
use crate::lifecycle::{Inbound, Known};
use crate::policy::{Denial, RateInfo};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body_util::Full;

/// A refusal on its way out: the reason, a message safe for the operator, extra headers, and
/// what the request had established by then (for its audit record).
#[derive(Debug)]
pub(super) struct Refusal {
    pub reason: Reason,
    pub message: String,
    pub headers: HeaderMap,
    pub known: Known,
    /// The request's decision record is already in the log (or on its way), saying what the
    /// client gets: `refuse` answers without queueing another.
    pub recorded: bool,
}

impl Refusal {
    /// Boxed: a refusal travels through every phase's `Err`, which stays small.
    pub fn new(reason: Reason, message: impl Into<String>, known: Known) -> Box<Refusal> {
        Box::new(Refusal {
            reason,
            message: message.into(),
            headers: HeaderMap::new(),
            known,
            recorded: false,
        })
    }

    /// A policy or limit denial; `known.policy` becomes the policy the denial names (and
    /// `known.break_glass` whether that is a break-glass policy).
    pub fn denied(d: Denial, mut known: Known) -> Box<Refusal> {
        known.policy = d.policy;
        known.break_glass = d.break_glass;
        let mut r = Refusal::new(d.reason, d.message, known);
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
pub(super) fn rate_headers(h: &mut HeaderMap, rate: &RateInfo) {
    h.insert(hdr::RATELIMIT_LIMIT, HeaderValue::from(rate.limit));
    h.insert(hdr::RATELIMIT_REMAINING, HeaderValue::from(rate.remaining));
    h.insert(
        hdr::RATELIMIT_RESET,
        HeaderValue::from(
            rate.reset
                .as_secs()
                .max(if rate.remaining == 0 { 1 } else { 0 }),
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{};w={}", rate.limit, rate.window.as_secs())) {
        h.insert(hdr::RATELIMIT_POLICY, v);
    }
}

/// Graph's answer as the operator sees it, with the rate state of the permit that allowed it.
pub(super) fn upstream(up: Upstream, rate: Option<&RateInfo>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(up.body));
    *resp.status_mut() = up.status;
    *resp.headers_mut() = up.headers;
    if let Some(rate) = rate {
        rate_headers(resp.headers_mut(), rate);
    }
    resp
}

/// Longest `error.message` in an answer, in bytes.
const MAX_ERROR_MESSAGE_BYTES: usize = 512;

/// A Graph-shaped error with passgate's reason code as `error.code`.
pub(super) fn error(
    inbound: &Inbound,
    reason: Reason,
    message: &str,
    extra: HeaderMap,
) -> Response<Full<Bytes>> {
    // Messages may quote what the client sent: never more than this much of it comes back.
    let message = crate::text::truncated(message, MAX_ERROR_MESSAGE_BYTES);
    let body = graph_error_json(
        reason.as_str(),
        message,
        &inbound.request_id,
        &inbound.client_request_id,
        chrono::Utc::now(),
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = reason.status();
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&inbound.request_id) {
        h.insert(hdr::REQUEST_ID, v);
    }
    if let Ok(v) = HeaderValue::from_str(&inbound.client_request_id) {
        h.insert(hdr::CLIENT_REQUEST_ID, v);
    }
    if reason == Reason::MethodNotAllowed {
        h.insert(http::header::ALLOW, HeaderValue::from_static("POST"));
    }
    for (k, v) in extra.iter() {
        h.insert(k.clone(), v.clone());
    }
    resp
}
