//! The approvals API on the gateway listener, for approvers and requesters, authenticated with
//! their own Entra access token exactly like operators:
//!
//! - `GET /passgate/v1/approvals?state=pending|approved|denied|expired|consumed|all` — requests
//!   the caller may approve (their policy's approvers) or asked for themselves; newest first;
//! - `GET /passgate/v1/approvals/{id}`;
//! - `POST /passgate/v1/approvals/{id}/approve` and `…/deny`, optional body `{"comment": "…"}`.
//!
//! It never shows a request to someone who is neither its requester nor one of its approvers
//! (that is a 404), and every approve or deny, taken or refused, is an audit record.

use super::state::DecideRefusal;
use super::{ApprovalRequest, Approvals, Event, Person, State, MAX_COMMENT_BYTES};
use crate::auth::Operator;
use crate::error::Reason;
use serde::Serialize;

/// The path prefix of the API.
pub const PREFIX: &str = "/passgate/v1/approvals";
/// Most requests a list returns.
pub const MAX_LIST: usize = 500;
/// Longest body read.
pub const MAX_BODY: usize = 4096;

/// What the API was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    List { state: Option<State> },
    Show { id: String },
    Decide { id: String, approve: bool },
}

/// A refusal of the API: reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub reason: Reason,
    pub message: String,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError {
        reason: Reason::ApprovalRequestInvalid,
        message: message.into(),
    }
}

/// Parses method, path and query. `None`: not an approvals path at all.
pub fn parse(
    method: &http::Method,
    path: &str,
    query: Option<&str>,
) -> Option<Result<Call, ApiError>> {
    let rest = path.strip_prefix(PREFIX)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let call = match (method.as_str(), segs.as_slice()) {
        ("GET", []) => {
            let mut state = None;
            for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
                match (k.as_ref(), v.as_ref()) {
                    ("state", "all") => state = None,
                    ("state", s) => {
                        state = Some(match s {
                            "pending" => State::Pending,
                            "approved" => State::Approved,
                            "denied" => State::Denied,
                            "expired" => State::Expired,
                            "consumed" => State::Consumed,
                            _ => return Some(Err(invalid("state must be one of pending, approved, denied, expired, consumed, all"))),
                        })
                    }
                    _ => return Some(Err(invalid("the only query parameter is state"))),
                }
            }
            Ok(Call::List { state })
        }
        ("GET", [id]) => id_of(id).map(|id| Call::Show { id }),
        ("POST", [id, verb @ ("approve" | "deny")]) => id_of(id).map(|id| Call::Decide {
            id,
            approve: *verb == "approve",
        }),
        (_, []) | (_, [_]) => Err(ApiError {
            reason: Reason::MethodNotAllowed,
            message: "use GET on approvals and on one approval, POST on …/approve and …/deny"
                .into(),
        }),
        _ => Err(ApiError {
            reason: Reason::RouteNotFound,
            message: "no such approvals endpoint".into(),
        }),
    };
    Some(call)
}

fn id_of(s: &str) -> Result<String, ApiError> {
    crate::text::guid(s).ok_or_else(|| ApiError {
        reason: Reason::ApprovalNotFound,
        message: "approval ids are GUIDs".into(),
    })
}

/// The optional JSON body of approve and deny.
pub fn comment_of(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        comment: Option<String>,
    }
    let b: Body = serde_json::from_slice(body)
        .map_err(|_| invalid("the body must be JSON like {\"comment\": \"…\"} (or empty)"))?;
    match b.comment {
        Some(c) if c.len() > MAX_COMMENT_BYTES => Err(invalid(format!(
            "the comment is longer than {MAX_COMMENT_BYTES} bytes"
        ))),
        Some(c) if c.chars().any(|ch| ch.is_control() && ch != '\n') => {
            Err(invalid("the comment contains control characters"))
        }
        Some(c) if c.trim().is_empty() => Ok(None),
        c => Ok(c),
    }
}

/// A request as the API shows it: its state as of now.
#[derive(Debug, Serialize)]
pub struct View<'a> {
    #[serde(flatten)]
    pub request: &'a ApprovalRequest,
    /// Whether the caller may approve or deny it now.
    pub can_decide: bool,
}

fn me(op: &Operator) -> Person {
    Person {
        oid: op.oid.to_ascii_lowercase(),
        upn: op.upn.clone(),
    }
}

impl Approvals {
    fn is_approver(&self, op: &Operator, r: &ApprovalRequest) -> bool {
        self.rules
            .get(&r.policy)
            .is_some_and(|rule| rule.approvers.matches(op))
    }

    fn visible(&self, op: &Operator, r: &ApprovalRequest) -> bool {
        r.requester.oid.eq_ignore_ascii_case(&op.oid) || self.is_approver(op, r)
    }

    fn at_now(&self, mut r: ApprovalRequest) -> ApprovalRequest {
        r.state = r.state_at(self.now());
        r
    }

    fn can_decide(&self, op: &Operator, r: &ApprovalRequest) -> bool {
        r.state == State::Pending
            && !r.requester.oid.eq_ignore_ascii_case(&op.oid)
            && self.is_approver(op, r)
    }

    /// `GET …/approvals`: what the caller may see, newest first, at most [`MAX_LIST`].
    pub async fn list(
        &self,
        op: &Operator,
        state: Option<State>,
    ) -> Result<serde_json::Value, ApiError> {
        let all = self
            .store
            .recent(super::store::MAX_REQUESTS)
            .await
            .map_err(|e| unavailable(&e))?;
        let mut value = Vec::new();
        for json in all {
            let Some(r) = super::parse(&json).map(|r| self.at_now(r)) else {
                continue;
            };
            if !self.visible(op, &r) || state.is_some_and(|s| s != r.state) {
                continue;
            }
            let can_decide = self.can_decide(op, &r);
            value.push(
                serde_json::to_value(View {
                    request: &r,
                    can_decide,
                })
                .unwrap_or_default(),
            );
            if value.len() >= MAX_LIST {
                break;
            }
        }
        Ok(serde_json::json!({ "value": value }))
    }

    /// `GET …/approvals/{id}`.
    pub async fn show(&self, op: &Operator, id: &str) -> Result<serde_json::Value, ApiError> {
        let r = self.visible_request(op, id).await?.1;
        let can_decide = self.can_decide(op, &r);
        Ok(serde_json::to_value(View {
            request: &r,
            can_decide,
        })
        .unwrap_or_default())
    }

    async fn visible_request(
        &self,
        op: &Operator,
        id: &str,
    ) -> Result<(String, ApprovalRequest), ApiError> {
        let json = self.store.get(id).await.map_err(|e| unavailable(&e))?;
        let found = json.and_then(|j| super::parse(&j).map(|r| (j, r)));
        match found {
            Some((j, r)) if self.visible(op, &r) => Ok((j, self.at_now(r))),
            _ => Err(not_found(id)),
        }
    }

    /// `POST …/approvals/{id}/approve|deny`: the decision, durable in the audit log before the
    /// answer. A refused decision is recorded too (event `refused`).
    pub async fn decide(
        &self,
        op: &Operator,
        id: &str,
        approve: bool,
        comment: Option<String>,
    ) -> Result<serde_json::Value, ApiError> {
        let approver = me(op);
        for _ in 0..super::CAS_TRIES {
            let json = self.store.get(id).await.map_err(|e| unavailable(&e))?;
            let Some((json, r)) = json.and_then(|j| super::parse(&j).map(|r| (j, r))) else {
                return Err(not_found(id));
            };
            let now = self.now();
            let refusal = if r.requester.oid.eq_ignore_ascii_case(&op.oid) {
                Some((
                    Reason::SelfApprovalNotAllowed,
                    "nobody approves or denies their own request".to_string(),
                ))
            } else if !self.is_approver(op, &r) {
                Some((
                    Reason::ApproverNotAllowed,
                    format!("you are not among the approvers of policy '{}'", r.policy),
                ))
            } else {
                None
            };
            let valid_for = self
                .rules
                .get(&r.policy)
                .map(|rule| rule.valid_for)
                .unwrap_or_default();
            let next = match refusal {
                Some(x) => Err(x),
                None => r
                    .decided(&approver, approve, comment.clone(), valid_for, now)
                    .map_err(|e| match e {
                        DecideRefusal::SelfApproval => (
                            Reason::SelfApprovalNotAllowed,
                            "nobody approves or denies their own request".to_string(),
                        ),
                        DecideRefusal::NotPending(s) => (
                            Reason::ApprovalNotPending,
                            format!(
                                "approval {id} is {} and can no longer be decided",
                                s.as_str()
                            ),
                        ),
                    }),
            };
            let next = match next {
                Ok(n) => n,
                Err((reason, message)) => {
                    let shown = self.at_now(r);
                    self.record(
                        Event::Refused,
                        &shown,
                        None,
                        Some(&approver),
                        Some(reason.as_str()),
                    )
                    .await
                    .map_err(|d| ApiError {
                        reason: d.reason,
                        message: d.message,
                    })?;
                    return Err(ApiError { reason, message });
                }
            };
            let Ok(new) = serde_json::to_string(&next) else {
                break;
            };
            if !self
                .store
                .replace(id, &json, &new)
                .await
                .map_err(|e| unavailable(&e))?
            {
                continue;
            }
            let event = if approve {
                Event::Approved
            } else {
                Event::Denied
            };
            self.record(event, &next, None, Some(&approver), None)
                .await
                .map_err(|d| ApiError {
                    reason: d.reason,
                    message: d.message,
                })?;
            tracing::info!(approval_id = %id, approver = %approver.oid, event = event.as_str(), "approval decided");
            return Ok(serde_json::to_value(View {
                request: &next,
                can_decide: false,
            })
            .unwrap_or_default());
        }
        Err(ApiError {
            reason: Reason::LimitsUnavailable,
            message: "the approval changed under this call too often; retry".into(),
        })
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError {
        reason: Reason::ApprovalNotFound,
        message: format!("no approval {id} that you requested or may approve"),
    }
}

fn unavailable(e: &crate::policy::limiter::StoreError) -> ApiError {
    tracing::error!(error = %e, "approval state unavailable");
    ApiError {
        reason: Reason::LimitsUnavailable,
        message: "approval state could not be read or written; retry later".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn paths_parse_exactly() {
        let id = "0b5d5ae6-39a4-4c5b-a0f5-2b3c0a3f9d11";
        assert_eq!(parse(&Method::GET, "/v1.0/me", None), None);
        assert_eq!(parse(&Method::GET, "/passgate/v1/approvalsx", None), None);
        assert_eq!(
            parse(&Method::GET, PREFIX, Some("state=pending")),
            Some(Ok(Call::List {
                state: Some(State::Pending)
            }))
        );
        assert_eq!(
            parse(&Method::GET, PREFIX, None),
            Some(Ok(Call::List { state: None }))
        );
        assert_eq!(
            parse(&Method::GET, &format!("{PREFIX}/{id}"), None),
            Some(Ok(Call::Show { id: id.into() }))
        );
        assert_eq!(
            parse(
                &Method::POST,
                &format!("{PREFIX}/{}/approve", id.to_uppercase()),
                None
            ),
            Some(Ok(Call::Decide {
                id: id.into(),
                approve: true
            }))
        );
        assert_eq!(
            parse(&Method::POST, &format!("{PREFIX}/{id}/deny"), None),
            Some(Ok(Call::Decide {
                id: id.into(),
                approve: false
            }))
        );
        let code =
            |m: Method, p: &str, q: Option<&str>| parse(&m, p, q).unwrap().unwrap_err().reason;
        assert_eq!(
            code(Method::GET, PREFIX, Some("state=weird")),
            Reason::ApprovalRequestInvalid
        );
        assert_eq!(
            code(Method::GET, PREFIX, Some("top=5")),
            Reason::ApprovalRequestInvalid
        );
        assert_eq!(
            code(Method::DELETE, &format!("{PREFIX}/{id}"), None),
            Reason::MethodNotAllowed
        );
        assert_eq!(
            code(Method::POST, &format!("{PREFIX}/{id}/cancel"), None),
            Reason::RouteNotFound
        );
        assert_eq!(
            code(Method::GET, &format!("{PREFIX}/not-a-guid"), None),
            Reason::ApprovalNotFound
        );
    }

    #[test]
    fn comments_are_optional_bounded_json() {
        assert_eq!(comment_of(b""), Ok(None));
        assert_eq!(comment_of(b"{}"), Ok(None));
        assert_eq!(
            comment_of(br#"{"comment":"INC0001 ok"}"#),
            Ok(Some("INC0001 ok".into()))
        );
        assert!(comment_of(br#"{"comment":"a\u0007b"}"#).is_err());
        assert!(comment_of(br#"{"other":1}"#).is_err());
        assert!(comment_of(b"not json").is_err());
        let long = format!(r#"{{"comment":"{}"}}"#, "x".repeat(MAX_COMMENT_BYTES + 1));
        assert!(comment_of(long.as_bytes()).is_err());
    }
}
