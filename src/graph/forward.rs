//! The one forward of an authorised action to Graph. Its single entry point demands an
//! [`Authorized`] — a policy permit whose allow record is durable — so "forwarded without being
//! authorised and recorded" cannot be written. It never retries the POST and never passes an
//! inbound header through.

use super::slots::{Busy, GraphSlots};
use super::token::{AppTokenProvider, TokenError};
use crate::audit::Authorized;
use crate::headers as hdr;
use crate::outbound::{self, HttpsClient};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body_util::Full;
use std::sync::Arc;
use std::time::Duration;

const MAX_UPSTREAM_BODY: usize = 1024 * 1024;
/// Response headers from Graph that reach the operator; everything else is dropped.
/// passgate's `User-Agent` towards Graph.
const USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("passgate/", env!("CARGO_PKG_VERSION")));

const RETURNED_HEADERS: [HeaderName; 4] = [
    http::header::CONTENT_TYPE,
    hdr::REQUEST_ID,
    hdr::CLIENT_REQUEST_ID,
    http::header::RETRY_AFTER,
];

/// Why Graph gave no answer. Display never repeats the source; log with
/// [`crate::error::chain`].
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("app token unavailable")]
    AppToken(#[from] TokenError),
    /// Every slot to Graph stayed busy for the queue timeout: nothing was sent.
    #[error("no request slot to Graph came free")]
    Busy(#[source] Busy),
    #[error("Graph did not answer within {0:?}; the action may or may not have run")]
    Timeout(Duration),
    #[error("Graph unreachable")]
    Unreachable(#[source] outbound::FetchError),
    #[error("the request to Graph could not be built")]
    Request(#[source] http::Error),
}

/// Graph's answer, reduced to what goes back to the operator.
#[derive(Debug)]
pub struct Upstream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub graph_request_id: Option<String>,
}

/// Cheap to clone (shared client and token provider): the pipeline moves a clone into a task
/// that outlives an operator who hangs up.
#[derive(Clone)]
pub struct Forwarder {
    client: HttpsClient,
    graph_root: String,
    tokens: Arc<AppTokenProvider>,
    timeout: Duration,
    slots: GraphSlots,
}

impl Forwarder {
    pub fn new(
        client: HttpsClient,
        graph_root: String,
        tokens: Arc<AppTokenProvider>,
        timeout: Duration,
        slots: GraphSlots,
    ) -> Forwarder {
        Forwarder {
            client,
            graph_root,
            tokens,
            timeout,
            slots,
        }
    }

    /// Sends the action with the app token. Consumes the authorization: one approval of one
    /// action, one call.
    pub async fn forward(&self, authorized: Authorized) -> Result<Upstream, ForwardError> {
        let token = self.tokens.token().await?;
        let url = format!("{}{}", self.graph_root, authorized.action().upstream_path());
        tracing::debug!(
            request_id = authorized.request_id(),
            policy = authorized.permit().policy(),
            audit_seq = authorized.seq(),
            "forwarding"
        );
        let req = http::Request::post(url)
            .header(http::header::AUTHORIZATION, token.bearer())
            .header(
                http::header::ACCEPT,
                HeaderValue::from_static("application/json"),
            )
            .header(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"))
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(hdr::CLIENT_REQUEST_ID, authorized.client_request_id())
            .header(
                hdr::RETURN_CLIENT_REQUEST_ID,
                HeaderValue::from_static("true"),
            )
            .body(Full::new(Bytes::new()))
            .map_err(ForwardError::Request)?;
        drop(authorized);
        // The action timeout starts once a slot is taken: queueing has its own bound, and a
        // request refused for want of a slot was certainly never sent.
        let _slot = self.slots.take().await.map_err(ForwardError::Busy)?;
        let resp = outbound::fetch(&self.client, req, self.timeout, MAX_UPSTREAM_BODY)
            .await
            .map_err(|e| match e {
                outbound::FetchError::Timeout(d) => ForwardError::Timeout(d),
                other => ForwardError::Unreachable(other),
            })?;
        let mut headers = HeaderMap::new();
        for name in RETURNED_HEADERS {
            if let Some(v) = resp.headers.get(&name) {
                headers.insert(name, v.clone());
            }
        }
        let graph_request_id = resp
            .headers
            .get(hdr::REQUEST_ID)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(|s| crate::text::truncated(s, 64).to_owned());
        Ok(Upstream {
            status: resp.status,
            headers,
            body: resp.body,
            graph_request_id,
        })
    }
}
