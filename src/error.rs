//! Stable reason codes and the Graph-shaped error body that carries them to operators.
//! Every refusal passgate produces goes through here, so SDKs and scripts see one shape:
//! `{"error":{"code","message","innerError":{"date","request-id","client-request-id"}}}`.
//! Nothing here may ever echo a token or secret back into a message.

use http::StatusCode;
use serde::Serialize;

/// Why a request was refused. The string form (`as_str`) is a stable contract: it appears in
/// the error body's `code`, in audit records and in metric labels. Never rename a variant's string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    // --- routing (nothing was authenticated yet) ---
    RouteNotFound,
    MethodNotAllowed,
    MeRouteNotSupported,
    RequestBodyNotAllowed,
    /// The body could not be read (the client broke the framing or hung up mid-body).
    RequestBodyUnreadable,
    /// The body did not arrive within the server's deadline.
    RequestBodyTimeout,
    QueryNotAllowed,
    // --- operator token ---
    TokenMissing,
    TokenMalformed,
    TokenTypeNotAllowed,
    TokenAlgorithmNotAllowed,
    TokenUnknownKey,
    TokenBadSignature,
    TokenExpired,
    TokenNotYetValid,
    TokenWrongAudience,
    TokenWrongIssuer,
    TokenWrongTenant,
    TokenMissingClaim,
    /// The token's type signals (`idtyp`, `sub` vs `oid`, `scp`) disagree: neither clearly a
    /// user's delegated token nor an app-only token.
    TokenKindAmbiguous,
    TokenScopeMissing,
    KeysUnavailable,
    // --- policy ---
    OperatorNotApproved,
    DeviceNotFound,
    DeviceUserMismatch,
    DeviceNotRegistered,
    DeviceNotInAllowedGroup,
    PlatformNotAllowed,
    /// The policy requires a `Passgate-Justification` header and none was sent.
    JustificationRequired,
    /// The header does not match the policy's pattern, or cannot be recorded as sent (repeated,
    /// not UTF-8, too long, control characters).
    JustificationInvalid,
    /// Separation of duty: the operator is the device's primary user (`allow_own_device` unset).
    OwnDeviceNotAllowed,
    /// The break-glass policy's `active_until` has passed.
    BreakGlassExpired,
    DeviceFactsUnavailable,
    RateLimited,
    /// The rate-limit state backend (Redis) could not be asked: fail closed.
    LimitsUnavailable,
    /// Too many refusals before authentication from one client address
    /// (`server.limits.unauthenticated_per_client`): answered without an individual record.
    UnauthenticatedThrottled,
    // --- two-person approval ---
    /// The policy needs a second person's approval; a request for one was opened.
    ApprovalRequired,
    /// An approval was requested and is still waiting for an approver.
    ApprovalPending,
    ApprovalDenied,
    ApprovalExpired,
    /// Approval API: nobody approves their own request.
    SelfApprovalNotAllowed,
    /// Approval API: the caller is not among the policy's approvers.
    ApproverNotAllowed,
    /// Approval API: no such request visible to the caller.
    ApprovalNotFound,
    /// Approval API: the request is no longer pending.
    ApprovalNotPending,
    /// Approval API: a malformed request (body, query, method).
    ApprovalRequestInvalid,
    // --- local and upstream failures (fail closed) ---
    AuditUnavailable,
    AppTokenUnavailable,
    UpstreamUnreachable,
    UpstreamTimeout,
    UpstreamBusy,
    /// Every request slot of the listener was taken (`server.limits.max_requests_in_flight`):
    /// answered at once, before anything was read, and summarised in the audit trail.
    GatewayBusy,
    // --- not a refusal: the policy admitted the request ---
    Allowed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RouteNotFound => "route_not_found",
            Reason::MethodNotAllowed => "method_not_allowed",
            Reason::MeRouteNotSupported => "me_route_not_supported",
            Reason::RequestBodyNotAllowed => "request_body_not_allowed",
            Reason::RequestBodyUnreadable => "request_body_unreadable",
            Reason::RequestBodyTimeout => "request_body_timeout",
            Reason::QueryNotAllowed => "query_not_allowed",
            Reason::TokenMissing => "token_missing",
            Reason::TokenMalformed => "token_malformed",
            Reason::TokenTypeNotAllowed => "token_type_not_allowed",
            Reason::TokenAlgorithmNotAllowed => "token_algorithm_not_allowed",
            Reason::TokenUnknownKey => "token_unknown_key",
            Reason::TokenBadSignature => "token_bad_signature",
            Reason::TokenExpired => "token_expired",
            Reason::TokenNotYetValid => "token_not_yet_valid",
            Reason::TokenWrongAudience => "token_wrong_audience",
            Reason::TokenWrongIssuer => "token_wrong_issuer",
            Reason::TokenWrongTenant => "token_wrong_tenant",
            Reason::TokenMissingClaim => "token_missing_claim",
            Reason::TokenKindAmbiguous => "token_kind_ambiguous",
            Reason::TokenScopeMissing => "token_scope_missing",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::OperatorNotApproved => "operator_not_approved",
            Reason::DeviceNotFound => "device_not_found",
            Reason::DeviceUserMismatch => "device_user_mismatch",
            Reason::DeviceNotRegistered => "device_not_registered",
            Reason::DeviceNotInAllowedGroup => "device_not_in_allowed_group",
            Reason::PlatformNotAllowed => "platform_not_allowed",
            Reason::JustificationRequired => "justification_required",
            Reason::JustificationInvalid => "justification_invalid",
            Reason::OwnDeviceNotAllowed => "own_device_not_allowed",
            Reason::BreakGlassExpired => "break_glass_expired",
            Reason::DeviceFactsUnavailable => "device_facts_unavailable",
            Reason::RateLimited => "rate_limited",
            Reason::LimitsUnavailable => "limits_unavailable",
            Reason::UnauthenticatedThrottled => "unauthenticated_throttled",
            Reason::ApprovalRequired => "approval_required",
            Reason::ApprovalPending => "approval_pending",
            Reason::ApprovalDenied => "approval_denied",
            Reason::ApprovalExpired => "approval_expired",
            Reason::SelfApprovalNotAllowed => "self_approval_not_allowed",
            Reason::ApproverNotAllowed => "approver_not_allowed",
            Reason::ApprovalNotFound => "approval_not_found",
            Reason::ApprovalNotPending => "approval_not_pending",
            Reason::ApprovalRequestInvalid => "approval_request_invalid",
            Reason::AuditUnavailable => "audit_unavailable",
            Reason::AppTokenUnavailable => "app_token_unavailable",
            Reason::UpstreamUnreachable => "upstream_unreachable",
            Reason::UpstreamTimeout => "upstream_timeout",
            Reason::UpstreamBusy => "upstream_busy",
            Reason::GatewayBusy => "gateway_busy",
            Reason::Allowed => "allowed",
        }
    }

    /// The HTTP status an operator sees for this refusal.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::RouteNotFound | Reason::DeviceNotFound | Reason::DeviceUserMismatch => {
                StatusCode::NOT_FOUND
            }
            Reason::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Reason::MeRouteNotSupported | Reason::QueryNotAllowed => StatusCode::BAD_REQUEST,
            Reason::RequestBodyNotAllowed | Reason::RequestBodyUnreadable => {
                StatusCode::BAD_REQUEST
            }
            Reason::JustificationRequired | Reason::JustificationInvalid => StatusCode::BAD_REQUEST,
            Reason::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Reason::TokenMissing
            | Reason::TokenMalformed
            | Reason::TokenTypeNotAllowed
            | Reason::TokenAlgorithmNotAllowed
            | Reason::TokenUnknownKey
            | Reason::TokenBadSignature
            | Reason::TokenExpired
            | Reason::TokenNotYetValid
            | Reason::TokenWrongAudience
            | Reason::TokenWrongIssuer
            | Reason::TokenWrongTenant
            | Reason::TokenMissingClaim
            | Reason::TokenKindAmbiguous => StatusCode::UNAUTHORIZED,
            Reason::TokenScopeMissing
            | Reason::OperatorNotApproved
            | Reason::DeviceNotRegistered
            | Reason::DeviceNotInAllowedGroup
            | Reason::PlatformNotAllowed
            | Reason::OwnDeviceNotAllowed
            | Reason::BreakGlassExpired => StatusCode::FORBIDDEN,
            Reason::ApprovalRequired
            | Reason::ApprovalPending
            | Reason::ApprovalDenied
            | Reason::ApprovalExpired
            | Reason::SelfApprovalNotAllowed
            | Reason::ApproverNotAllowed => StatusCode::FORBIDDEN,
            Reason::ApprovalNotFound => StatusCode::NOT_FOUND,
            Reason::ApprovalNotPending => StatusCode::CONFLICT,
            Reason::ApprovalRequestInvalid => StatusCode::BAD_REQUEST,
            Reason::RateLimited | Reason::UnauthenticatedThrottled => StatusCode::TOO_MANY_REQUESTS,
            Reason::KeysUnavailable
            | Reason::DeviceFactsUnavailable
            | Reason::AuditUnavailable
            | Reason::LimitsUnavailable
            | Reason::AppTokenUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Reason::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            Reason::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Reason::UpstreamBusy | Reason::GatewayBusy => StatusCode::SERVICE_UNAVAILABLE,
            Reason::Allowed => StatusCode::OK,
        }
    }

    pub fn is_allowed(self) -> bool {
        self == Reason::Allowed
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the request body could not be read. The listener's body wrapper produces these; the
/// pipeline maps each to its own reason, so a hang-up is never reported as a refused body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body not received within {0:?}")]
    Timeout(std::time::Duration),
    #[error("Transfer-Encoding is not accepted: the action takes no request body")]
    TransferEncoding,
    #[error("{0}")]
    Inner(String),
}

/// An error and its causes on one line (`outer: cause: root cause`), for logs. A cause whose
/// text the line already holds is not repeated: some types (start-up and audit errors, whose
/// Display is shown to people on its own) name their source in their message as well.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(rename = "innerError")]
    inner_error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    date: String,
    #[serde(rename = "request-id")]
    request_id: &'a str,
    #[serde(rename = "client-request-id")]
    client_request_id: &'a str,
}

/// Graph's `innerError.date` format: `YYYY-MM-DDTHH:MM:SS`, UTC, no zone suffix.
pub fn graph_date(now: chrono::DateTime<chrono::Utc>) -> String {
    now.format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Serialises a Graph-shaped error body. `code` is a stable machine code (a [`Reason`] string
/// for passgate's own refusals); `message` is for humans and must never contain a credential.
pub fn graph_error_json(
    code: &str,
    message: &str,
    request_id: &str,
    client_request_id: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let env = Envelope {
        error: Body {
            code,
            message,
            inner_error: Inner {
                date: graph_date(now),
                request_id,
                client_request_id,
            },
        },
    };
    serde_json::to_string(&env).unwrap_or_else(|_| {
        // Serialising plain strings cannot fail; keep a fixed fallback rather than panic.
        r#"{"error":{"code":"internal_error","message":"error body could not be built"}}"#
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_graph_shape() {
        let now = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let body = graph_error_json("operator_not_approved", "no", "rid", "crid", now);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "operator_not_approved");
        assert_eq!(v["error"]["innerError"]["request-id"], "rid");
        assert_eq!(v["error"]["innerError"]["client-request-id"], "crid");
        assert_eq!(v["error"]["innerError"]["date"], "2023-11-14T22:13:20");
    }

    #[test]
    fn chain_names_every_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(chain(&e), "outer: disk on fire");

        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Repeats(#[source] std::io::Error);
        let e = Repeats(std::io::Error::other("disk on fire"));
        assert_eq!(
            chain(&e),
            "outer: disk on fire",
            "a cause already named is not repeated"
        );
    }

    #[test]
    fn serde_name_matches_as_str() {
        for r in [
            Reason::OperatorNotApproved,
            Reason::TokenWrongAudience,
            Reason::RateLimited,
            Reason::JustificationRequired,
            Reason::JustificationInvalid,
            Reason::OwnDeviceNotAllowed,
            Reason::BreakGlassExpired,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }

    #[test]
    fn control_refusals_have_their_statuses() {
        for (r, code, status) in [
            (Reason::JustificationRequired, "justification_required", 400),
            (Reason::JustificationInvalid, "justification_invalid", 400),
            (Reason::OwnDeviceNotAllowed, "own_device_not_allowed", 403),
            (Reason::BreakGlassExpired, "break_glass_expired", 403),
        ] {
            assert_eq!((r.as_str(), r.status().as_u16()), (code, status));
        }
    }
}
