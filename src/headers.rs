//! The non-standard header names passgate reads and writes, as constants: a `HeaderName` built
//! at compile time is used as is, where a `&str` name is parsed again on every lookup. Names
//! only; nothing here decides what is read, written or forwarded.

use http::HeaderName;

/// Graph's and passgate's id of one request (`request-id`).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
/// The caller's own id, echoed back (`client-request-id`).
pub const CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("client-request-id");
/// Asks Graph to echo `client-request-id`.
pub const RETURN_CLIENT_REQUEST_ID: HeaderName =
    HeaderName::from_static("return-client-request-id");
/// The operator's justification (`Passgate-Justification`).
pub const PASSGATE_JUSTIFICATION: HeaderName = HeaderName::from_static("passgate-justification");
/// The approval request an answer concerns.
pub const PASSGATE_APPROVAL_ID: HeaderName = HeaderName::from_static("passgate-approval-id");
/// The rate-limit headers of an allowed answer (draft-ietf-httpapi-ratelimit-headers).
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

#[cfg(test)]
mod tests {
    #[test]
    fn the_justification_name_is_the_documented_header() {
        assert!(super::PASSGATE_JUSTIFICATION
            .as_str()
            .eq_ignore_ascii_case(crate::policy::JUSTIFICATION_HEADER));
    }
}
