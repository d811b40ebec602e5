//! Cross-site request forgery defences for the console's POSTs: a per-session synchronizer token
//! in every form, compared in constant time, and a same-origin check on the browser's `Origin` /
//! `Sec-Fetch-Site` headers. A POST that fails either changes nothing; this module never logs
//! or echoes a token.

use http::HeaderMap;
use sha2::{Digest, Sha256};

/// Why a POST was refused before it was looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    #[error("the form carries no CSRF token")]
    Missing,
    #[error("the form's CSRF token is not this session's")]
    Wrong,
    #[error("the request comes from another origin")]
    CrossOrigin,
}

impl CsrfError {
    /// The reason code in the console audit record.
    pub fn reason(self) -> &'static str {
        match self {
            CsrfError::Missing | CsrfError::Wrong => "csrf_token_invalid",
            CsrfError::CrossOrigin => "origin_mismatch",
        }
    }
}

/// A fresh random token (256 bits, base64url).
pub fn new_token() -> String {
    super::session::random_b64(32)
}

/// Whether `given` is the session's token: equal SHA-256 digests, so the comparison time does
/// not depend on a common prefix.
pub fn check(expected: &str, given: Option<&str>) -> Result<(), CsrfError> {
    let given = given.filter(|g| !g.is_empty()).ok_or(CsrfError::Missing)?;
    if Sha256::digest(expected.as_bytes()) == Sha256::digest(given.as_bytes()) {
        Ok(())
    } else {
        Err(CsrfError::Wrong)
    }
}

/// A POST must come from the console's own pages: `Origin`, when the browser sends it, is the
/// console's public origin, and `Sec-Fetch-Site`, when sent, says `same-origin`. (SameSite=Strict
/// cookies and the token already stop a cross-site form; this refuses it before the body is read.)
pub fn same_origin(headers: &HeaderMap, public_origin: &str) -> Result<(), CsrfError> {
    if let Some(o) = headers.get(http::header::ORIGIN) {
        if o.to_str().ok() != Some(public_origin) {
            return Err(CsrfError::CrossOrigin);
        }
    }
    if let Some(s) = headers.get("sec-fetch-site") {
        if !matches!(s.to_str().ok(), Some("same-origin") | Some("none")) {
            return Err(CsrfError::CrossOrigin);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        let t = new_token();
        assert_eq!(t.len(), 43);
        assert_ne!(t, new_token());
        assert_eq!(check(&t, Some(&t)), Ok(()));
        assert_eq!(check(&t, None), Err(CsrfError::Missing));
        assert_eq!(check(&t, Some("")), Err(CsrfError::Missing));
        assert_eq!(check(&t, Some(&t[..42])), Err(CsrfError::Wrong));
    }

    #[test]
    fn origins_must_be_the_console() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h, "https://c.example").is_ok());
        h.insert("origin", "https://c.example".parse().unwrap());
        h.insert("sec-fetch-site", "same-origin".parse().unwrap());
        assert!(same_origin(&h, "https://c.example").is_ok());
        h.insert("origin", "https://evil.example".parse().unwrap());
        assert_eq!(
            same_origin(&h, "https://c.example"),
            Err(CsrfError::CrossOrigin)
        );
        let mut h = HeaderMap::new();
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert_eq!(
            same_origin(&h, "https://c.example"),
            Err(CsrfError::CrossOrigin)
        );
    }
}
