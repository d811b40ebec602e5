//! Fuzzes the JWT front: Authorization header extraction, compact-JWS decoding, header rules and
//! claim rules. All are pure, so any panic is a bug. The input is an Authorization header value;
//! the claims of whatever decodes are then checked against fixed rules at a fuzzer-chosen time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use passgate::auth::token::{bearer_from_headers, check_claims, check_header, decode, ClaimRules};
use std::time::Duration;

const TID: &str = "cdd6998a-1fe9-48f6-915d-b7a5b7552116";

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (clock, value) = data.split_at(8);
    let now = i64::from_le_bytes(clock.try_into().unwrap_or([0; 8]));
    let Ok(value) = http::HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::AUTHORIZATION, value);
    let Ok(raw) = bearer_from_headers(&headers) else {
        return;
    };
    let Ok(t) = decode(raw) else {
        return;
    };
    assert!(raw.as_bytes().starts_with(t.signing_input));
    let _ = check_header(
        &t.header,
        &["RS256".to_string()],
        &["JWT".to_string(), "at+jwt".to_string()],
    );
    let rules = ClaimRules {
        tenant_id: TID.into(),
        audiences: vec!["api://passgate".into()],
        accept_v1: true,
        accept_v2: true,
        v1_issuer: format!("https://sts.windows.net/{TID}/"),
        v2_issuer: format!("https://login.microsoftonline.com/{TID}/v2.0"),
        leeway: Duration::from_secs(300),
        required_scope: Some("RecoverPasscode.Request".into()),
    };
    if let Ok(op) = check_claims(&t.claims, &rules, now) {
        assert_eq!(op.tid, TID);
        assert_eq!(op.oid.len(), 36);
    }
});
