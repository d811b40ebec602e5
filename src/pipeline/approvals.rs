//! The approvals API's HTTP side on the gateway listener: read at most a small body, authenticate
//! the caller's Entra token exactly like an operator's, run the call, answer JSON or a Graph-shaped
//! error. Refusals before authentication count against the client's flood budget like the
//! action's. It must never forward anything to Graph.

use super::answer;
use super::Gateway;
use crate::approval::api::{self, ApiError, Call};
use crate::error::Reason;
use crate::lifecycle::Inbound;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

impl Gateway {
    /// Serves one approvals API call (`parsed` from [`api::parse`]).
    pub(super) async fn serve_approvals<B>(
        &self,
        inbound: &Inbound,
        parsed: Result<Call, ApiError>,
        headers: &HeaderMap,
        body: B,
    ) -> (Response<Full<Bytes>>, Reason)
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let body = match Limited::new(body, api::MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return self.api_refusal(
                    inbound,
                    ApiError {
                        reason: Reason::ApprovalRequestInvalid,
                        message: format!(
                            "the body could not be read or is larger than {} bytes",
                            api::MAX_BODY
                        ),
                    },
                    true,
                )
            }
        };
        let call = match parsed {
            Ok(c) => c,
            Err(e) => return self.api_refusal(inbound, e, true),
        };
        let operator = match self.auth.authenticate(headers).await {
            Ok(op) => op,
            Err(e) => {
                let scope = self.auth.settings().required_scope.as_deref();
                let (mut resp, reason) = self.api_refusal(
                    inbound,
                    ApiError {
                        reason: e.reason,
                        message: e.description.clone(),
                    },
                    true,
                );
                if resp.status() == StatusCode::UNAUTHORIZED {
                    if let Ok(v) = HeaderValue::from_str(&e.challenge(scope)) {
                        resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
                    }
                }
                return (resp, reason);
            }
        };
        let a = &self.approvals;
        let result = match call {
            Call::List { state } => a.list(&operator, state).await,
            Call::Show { id } => a.show(&operator, &id).await,
            Call::Decide { id, approve } => match api::comment_of(&body) {
                Ok(comment) => a.decide(&operator, &id, approve, comment).await,
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(json) => {
                let mut resp = Response::new(Full::new(Bytes::from(json.to_string())));
                let h = resp.headers_mut();
                h.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                if let Ok(v) = HeaderValue::from_str(&inbound.request_id) {
                    h.insert("request-id", v);
                }
                (resp, Reason::Allowed)
            }
            Err(e) => self.api_refusal(inbound, e, false),
        }
    }

    /// A Graph-shaped error; before authentication it is charged to the client's flood budget.
    fn api_refusal(
        &self,
        inbound: &Inbound,
        e: ApiError,
        unauthenticated: bool,
    ) -> (Response<Full<Bytes>>, Reason) {
        if unauthenticated && e.reason.status().is_client_error() {
            if let Some(resp) = self.charge_unauthenticated(inbound, e.reason) {
                return (resp, Reason::UnauthenticatedThrottled);
            }
        }
        let mut h = HeaderMap::new();
        if e.reason == Reason::MethodNotAllowed {
            h.insert(http::header::ALLOW, HeaderValue::from_static("GET, POST"));
        }
        (answer::error(inbound, e.reason, &e.message, h), e.reason)
    }
}
