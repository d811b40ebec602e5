//! Operator authentication: validates the Entra ID access token an operator presents to
//! passgate's own API and turns it into a typed [`Operator`]. It must never accept a token it
//! could not verify end to end, and never log or echo the token itself.

use serde::Serialize;

/// Which token format the operator presented (Entra `ver` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TokenVersion {
    #[serde(rename = "1.0")]
    V1,
    #[serde(rename = "2.0")]
    V2,
}

/// Whether a person (delegated token with `scp`) or an application (app-only token) is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorKind {
    User,
    App,
}

/// An authenticated caller. Identity is `oid`; `upn` is display-only (mutable, never authorised on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operator {
    /// Entra object id (user or service principal), lower-case GUID.
    pub oid: String,
    /// Tenant id, lower-case GUID.
    pub tid: String,
    pub kind: OperatorKind,
    /// `upn` (v1) or `preferred_username` (v2); for display and audit only.
    pub upn: Option<String>,
    /// Client application that obtained the token (`azp` v2 / `appid` v1).
    pub client_app_id: Option<String>,
    /// Group object ids from the `groups` claim, lower-cased.
    pub groups: Vec<String>,
    /// True when the token signalled group overage (`_claim_names.groups`) instead of listing groups.
    pub groups_overage: bool,
    /// App roles (`roles` claim), exact strings.
    pub roles: Vec<String>,
    /// Delegated scopes (`scp`, space separated), exact strings.
    pub scopes: Vec<String>,
    pub token_version: TokenVersion,
}

pub mod keys;
pub mod token;

use crate::error::Reason;
use openidconnect::core::CoreJwsSigningAlgorithm;
use openidconnect::JsonWebKey;
use std::sync::Arc;
use std::time::Duration;

/// Why a token was refused: a stable reason and a description safe to put in
/// `WWW-Authenticate` (it never contains the token or any claim value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {description}")]
pub struct AuthError {
    pub reason: Reason,
    pub description: String,
}

impl AuthError {
    pub fn new(reason: Reason, description: impl Into<String>) -> AuthError {
        AuthError {
            reason,
            description: description.into(),
        }
    }

    /// The `WWW-Authenticate` challenge for this refusal (RFC 6750 §3).
    pub fn challenge(&self, required_scope: Option<&str>) -> String {
        let desc = self.description.replace(['"', '\\'], "'");
        match self.reason {
            Reason::TokenScopeMissing => format!(
                "Bearer realm=\"passgate\", error=\"insufficient_scope\", error_description=\"{desc}\", scope=\"{}\"",
                required_scope.unwrap_or("")
            ),
            _ => format!(
                "Bearer realm=\"passgate\", error=\"invalid_token\", error_description=\"{desc}\""
            ),
        }
    }
}

/// Settings for operator authentication, resolved from the config.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub tenant_id: String,
    pub audiences: Vec<String>,
    pub accept_v1: bool,
    pub accept_v2: bool,
    pub v1_issuer: String,
    pub algorithms: Vec<String>,
    pub token_types: Vec<String>,
    pub leeway: Duration,
    pub required_scope: Option<String>,
}

/// Validates operator tokens end to end: header rules, key lookup, signature, then claims.
pub struct Authenticator {
    settings: AuthSettings,
    keys: Arc<keys::KeyStore>,
    /// Tokens accepted before, by SHA-256 of the whole token: a token is re-presented for its
    /// whole lifetime, and decoding, the signature check and the claim rules dominate its CPU.
    /// Positive results only. Every hit re-checks what can change after acceptance — the
    /// signing key must still be the very key object that verified it (any key refresh, which
    /// also brings the issuer, replaces every key) and `exp`/`nbf` against the clock — and the
    /// claim rules are this authenticator's own (a reload builds a new one with an empty cache).
    accepted: std::sync::Mutex<std::collections::HashMap<[u8; 32], Accepted>>,
}

/// A token that passed every check, as [`Authenticator::authenticate`] remembers it.
struct Accepted {
    kid: String,
    key: Arc<keys::PublishedKey>,
    exp: i64,
    nbf: Option<i64>,
    operator: Operator,
}

impl Accepted {
    /// Whether the acceptance still holds at `now` (unix seconds) with `current` the key now
    /// published under its kid: the very key object that verified it, and within `exp`/`nbf`
    /// with the leeway — the same comparisons `token::check_claims` makes.
    fn stands(
        &self,
        current: Option<&Arc<keys::PublishedKey>>,
        now: i64,
        leeway: Duration,
    ) -> bool {
        let leeway = i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX);
        current.is_some_and(|k| Arc::ptr_eq(k, &self.key))
            && now <= self.exp.saturating_add(leeway)
            && self.nbf.is_none_or(|nbf| now.saturating_add(leeway) >= nbf)
    }
}

/// Most tokens remembered; past it the cache starts over (tokens are re-verified, never refused).
const ACCEPTED_CACHE_MAX: usize = 10_000;

fn jws_alg(name: &str) -> Option<CoreJwsSigningAlgorithm> {
    Some(match name {
        "RS256" => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        "RS384" => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
        "RS512" => CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
        "PS256" => CoreJwsSigningAlgorithm::RsaSsaPssSha256,
        "PS384" => CoreJwsSigningAlgorithm::RsaSsaPssSha384,
        "PS512" => CoreJwsSigningAlgorithm::RsaSsaPssSha512,
        _ => return None,
    })
}

impl Authenticator {
    pub fn new(settings: AuthSettings, keys: Arc<keys::KeyStore>) -> Authenticator {
        Authenticator {
            settings,
            keys,
            accepted: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    pub fn keys(&self) -> &Arc<keys::KeyStore> {
        &self.keys
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// Authenticates the request's bearer token.
    pub async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Operator, AuthError> {
        let raw = token::bearer_from_headers(headers)?;
        let digest: [u8; 32] = {
            use sha2::{Digest, Sha256};
            Sha256::digest(raw.as_bytes()).into()
        };
        if let Some(op) = self.remembered(&digest).await {
            return Ok(op);
        }
        let t = token::decode(raw)?;
        token::check_header(
            &t.header,
            &self.settings.algorithms,
            &self.settings.token_types,
        )?;
        let alg = jws_alg(&t.header.alg).ok_or_else(|| {
            AuthError::new(
                Reason::TokenAlgorithmNotAllowed,
                "unsupported signing algorithm",
            )
        })?;
        let kid = t.header.kid.as_deref().unwrap_or_default();
        let key = match self.keys.key(kid).await {
            Some(k) => k,
            None if !self.keys.has_keys() || self.keys.refresh_failing() => {
                return Err(AuthError::new(
                    Reason::KeysUnavailable,
                    "signing keys could not be fetched; try again later",
                ))
            }
            None => {
                return Err(AuthError::new(
                    Reason::TokenUnknownKey,
                    "token is signed with a key that is not published for this tenant",
                ))
            }
        };
        // ring (rustls' provider) for RSA; a key without RSA components verifies nothing
        // passgate accepts (the algorithm allow-list is RS*/PS* only).
        let valid = match &key.rsa {
            Some(rsa) => rsa.verify(&t.header.alg, t.signing_input, &t.signature),
            None => key
                .jwk
                .verify_signature(&alg, t.signing_input, &t.signature)
                .is_ok(),
        };
        if !valid {
            return Err(AuthError::new(
                Reason::TokenBadSignature,
                "token signature is invalid",
            ));
        }
        let v2_issuer = self
            .keys
            .issuer()
            .unwrap_or_default()
            .replace("{tenantid}", &self.settings.tenant_id);
        let rules = token::ClaimRules {
            tenant_id: self.settings.tenant_id.clone(),
            audiences: self.settings.audiences.clone(),
            accept_v1: self.settings.accept_v1,
            accept_v2: self.settings.accept_v2,
            v1_issuer: self.settings.v1_issuer.clone(),
            v2_issuer,
            leeway: self.settings.leeway,
            required_scope: self.settings.required_scope.clone(),
        };
        let op = token::check_claims(&t.claims, &rules, chrono::Utc::now().timestamp())?;
        // Entra publishes an issuer per key; a v2 token must come from the issuer its key serves.
        if op.token_version == TokenVersion::V2 {
            if let Some(key_iss) = &key.issuer {
                let key_iss = key_iss.replace("{tenantid}", &op.tid);
                if Some(key_iss.as_str()) != t.claims.get("iss").and_then(|v| v.as_str()) {
                    return Err(AuthError::new(
                        Reason::TokenWrongIssuer,
                        "token issuer does not match its signing key's issuer",
                    ));
                }
            }
        }
        // check_claims has just read both as valid numbers (exp is required).
        if let Ok(Some(exp)) = token::numeric(&t.claims, "exp") {
            let nbf = token::numeric(&t.claims, "nbf").ok().flatten();
            if let Ok(mut c) = self.accepted.lock() {
                if c.len() >= ACCEPTED_CACHE_MAX {
                    c.clear();
                }
                c.insert(
                    digest,
                    Accepted {
                        kid: kid.to_string(),
                        key,
                        exp,
                        nbf,
                        operator: op.clone(),
                    },
                );
            }
        }
        Ok(op)
    }

    /// The operator of a token accepted before, if it still stands: same key object published
    /// under its kid, and within `exp`/`nbf` (with the leeway). `None` sends the token through
    /// the full checks (which give the precise refusal); an expired one is forgotten.
    async fn remembered(&self, digest: &[u8; 32]) -> Option<Operator> {
        let (kid, key) = match self.accepted.lock() {
            Ok(c) => match c.get(digest) {
                Some(a) => (a.kid.clone(), a.key.clone()),
                None => return None,
            },
            Err(_) => return None,
        };
        let current = self.keys.key(&kid).await;
        let now = chrono::Utc::now().timestamp();
        let mut c = self.accepted.lock().ok()?;
        let a = c.get(digest)?;
        if Arc::ptr_eq(&a.key, &key) && a.stands(current.as_ref(), now, self.settings.leeway) {
            return Some(a.operator.clone());
        }
        c.remove(digest);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Arc<keys::PublishedKey> {
        let jwk: openidconnect::core::CoreJsonWebKey = serde_json::from_value(serde_json::json!({
            "kty": "RSA", "kid": "k1", "use": "sig", "n": "sXch", "e": "AQAB"
        }))
        .expect("jwk");
        Arc::new(keys::PublishedKey {
            jwk,
            issuer: None,
            rsa: None,
        })
    }

    fn accepted(key: &Arc<keys::PublishedKey>, exp: i64, nbf: Option<i64>) -> Accepted {
        Accepted {
            kid: "k1".into(),
            key: key.clone(),
            exp,
            nbf,
            operator: Operator {
                oid: "o".into(),
                tid: "t".into(),
                kind: OperatorKind::User,
                upn: None,
                client_app_id: None,
                groups: vec![],
                groups_overage: false,
                roles: vec![],
                scopes: vec![],
                token_version: TokenVersion::V2,
            },
        }
    }

    #[test]
    fn a_remembered_token_stands_only_with_its_own_key_and_within_its_times() {
        let k = key();
        let leeway = Duration::from_secs(60);
        let a = accepted(&k, 1_000, Some(500));
        assert!(a.stands(Some(&k), 900, leeway));
        // exp and nbf with the leeway, at and past the edges (check_claims' comparisons).
        assert!(a.stands(Some(&k), 1_060, leeway));
        assert!(!a.stands(Some(&k), 1_061, leeway));
        assert!(a.stands(Some(&k), 440, leeway));
        assert!(!a.stands(Some(&k), 439, leeway));
        // The kid withdrawn, or re-published by a refresh (a new key object, maybe another
        // key or issuer under the same kid): the token goes through every check again.
        assert!(!a.stands(None, 900, leeway));
        assert!(!a.stands(Some(&key()), 900, leeway));
        assert!(accepted(&k, 1_000, None).stands(Some(&k), 0, leeway));
    }
}
