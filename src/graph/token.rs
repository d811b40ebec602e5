//! The privileged app-only token: client credentials against Entra's v2 token endpoint, by client
//! secret or by certificate (`private_key_jwt`). Cached, refreshed ahead of expiry, one refresh in
//! flight. The secret, the private key and the token never appear in logs or error messages.

use crate::outbound::{self, HttpsClient};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How passgate proves its identity to Entra.
pub enum AppCredential {
    Secret(String),
    Certificate {
        cert_der: Vec<u8>,
        /// Signs with `ring` (constant-time); parsed from PKCS#8 or PKCS#1 at start.
        key: Arc<ring::rsa::KeyPair>,
        /// true: PS256 + `x5t#S256` (current docs); false: RS256 + SHA-1 `x5t` (older MSAL form).
        ps256: bool,
    },
}

impl std::fmt::Debug for AppCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppCredential::Secret(_) => f.write_str("AppCredential::Secret(<redacted>)"),
            AppCredential::Certificate { ps256, .. } => {
                write!(f, "AppCredential::Certificate(ps256={ps256})")
            }
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    #[error("token endpoint unreachable: {0}")]
    Unreachable(String),
    /// Entra refused: carries its `error` and AADSTS codes, never the request.
    #[error("token endpoint refused (HTTP {status}): {error} {codes}")]
    Refused {
        status: u16,
        error: String,
        codes: String,
    },
    #[error("token endpoint answered something that is not a token response")]
    BadResponse,
    #[error("cannot build client assertion: {0}")]
    Assertion(String),
}

/// An app token. Debug is redacted so it cannot leak through `{:?}`.
#[derive(Clone)]
pub struct AppToken {
    secret: Arc<str>,
    /// `Bearer <token>`, built and checked once per token rather than on every call that sends
    /// it; marked sensitive (never indexed by HPACK, redacted in the header map's Debug).
    bearer: http::HeaderValue,
}

impl AppToken {
    /// None if the token cannot be sent in a header (Entra's tokens are base64url JWTs, so
    /// never in practice): such an answer is not a usable token.
    fn new(secret: &str) -> Option<AppToken> {
        let mut bearer = http::HeaderValue::from_str(&format!("Bearer {secret}")).ok()?;
        bearer.set_sensitive(true);
        Some(AppToken {
            secret: Arc::from(secret),
            bearer,
        })
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The `Authorization` header value that sends this token.
    pub fn bearer(&self) -> http::HeaderValue {
        self.bearer.clone()
    }
}

impl std::fmt::Debug for AppToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppToken(<redacted>)")
    }
}

#[derive(Clone)]
struct Cached {
    token: AppToken,
    refresh_at: Instant,
    expires_at: Instant,
}

/// Outcome counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenStats {
    pub refresh_ok: u64,
    pub refresh_failed: u64,
}

pub struct AppTokenProvider {
    client: HttpsClient,
    token_url: String,
    client_id: String,
    scope: String,
    credential: AppCredential,
    timeout: Duration,
    refresh_ahead: Duration,
    cached: RwLock<Option<Cached>>,
    stats: RwLock<TokenStats>,
    refreshing: tokio::sync::Mutex<()>,
}

impl AppTokenProvider {
    pub fn new(
        client: HttpsClient,
        token_url: String,
        client_id: String,
        scope: String,
        credential: AppCredential,
        timeout: Duration,
        refresh_ahead: Duration,
    ) -> Arc<AppTokenProvider> {
        Arc::new(AppTokenProvider {
            client,
            token_url,
            client_id,
            scope,
            credential,
            timeout,
            refresh_ahead,
            cached: RwLock::new(None),
            stats: RwLock::new(TokenStats::default()),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    pub fn stats(&self) -> TokenStats {
        self.stats.read().map(|s| *s).unwrap_or_default()
    }

    fn fresh(&self, now: Instant) -> Option<AppToken> {
        let c = self.cached.read().ok()?.clone()?;
        (now < c.refresh_at).then_some(c.token)
    }

    /// A token valid for a while yet; fetches (one request in flight) when none is.
    pub async fn token(&self) -> Result<AppToken, TokenError> {
        if let Some(t) = self.fresh(Instant::now()) {
            return Ok(t);
        }
        let _guard = self.refreshing.lock().await;
        // Another caller may have refreshed while we waited.
        if let Some(t) = self.fresh(Instant::now()) {
            return Ok(t);
        }
        let result = self.request().await;
        if let Ok(mut s) = self.stats.write() {
            match &result {
                Ok(_) => s.refresh_ok += 1,
                Err(_) => s.refresh_failed += 1,
            }
        }
        match result {
            Ok(c) => {
                let t = c.token.clone();
                if let Ok(mut slot) = self.cached.write() {
                    *slot = Some(c);
                }
                Ok(t)
            }
            Err(e) => {
                // A token that is due for refresh but not yet expired is still good to use.
                let still_valid = self
                    .cached
                    .read()
                    .ok()
                    .and_then(|c| c.clone())
                    .filter(|c| Instant::now() + Duration::from_secs(5) < c.expires_at);
                match still_valid {
                    Some(c) => {
                        tracing::warn!(error = %e, "app token refresh failed; using the current token until it expires");
                        Ok(c.token)
                    }
                    None => Err(e),
                }
            }
        }
    }

    /// The form body; built in a sync fn so the (non-Send) serializer never crosses an await.
    fn form_body(&self) -> Result<String, TokenError> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.client_id)
            .append_pair("scope", &self.scope);
        match &self.credential {
            AppCredential::Secret(s) => {
                form.append_pair("client_secret", s);
            }
            AppCredential::Certificate {
                cert_der,
                key,
                ps256,
            } => {
                let assertion = client_assertion(
                    &self.client_id,
                    &self.token_url,
                    cert_der,
                    key,
                    *ps256,
                    chrono::Utc::now().timestamp(),
                )?;
                form.append_pair(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                )
                .append_pair("client_assertion", &assertion);
            }
        }
        Ok(form.finish())
    }

    async fn request(&self) -> Result<Cached, TokenError> {
        let body = self.form_body()?;
        let req = http::Request::post(&self.token_url)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| TokenError::Unreachable("invalid token URL".into()))?;
        let started = Instant::now();
        let resp = outbound::fetch(&self.client, req, self.timeout, 64 * 1024)
            .await
            .map_err(|e| TokenError::Unreachable(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&resp.body).map_err(|_| TokenError::BadResponse)?;
        if !resp.status.is_success() {
            return Err(TokenError::Refused {
                status: resp.status.as_u16(),
                error: v
                    .get("error")
                    .and_then(|e| e.as_str())
                    .unwrap_or("unknown")
                    .chars()
                    .take(64)
                    .collect(),
                codes: v
                    .get("error_codes")
                    .and_then(|c| c.as_array())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_u64())
                            .map(|x| format!("AADSTS{x}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
            });
        }
        let token = v
            .get("access_token")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::BadResponse)?;
        let expires_in = v
            .get("expires_in")
            .and_then(|e| {
                e.as_u64()
                    .or_else(|| e.as_str().and_then(|s| s.parse().ok()))
            })
            .ok_or(TokenError::BadResponse)?;
        // Entra issues 60-90 minute tokens; clamp so an absurd value cannot overflow an Instant.
        let lifetime = Duration::from_secs(expires_in.min(24 * 3600));
        let expires_at = started + lifetime;
        // Refresh ahead of expiry, but never so early that a short-lived token is refreshed on every call.
        let ahead = self.refresh_ahead.min(lifetime / 2);
        Ok(Cached {
            token: AppToken::new(token).ok_or(TokenError::BadResponse)?,
            refresh_at: expires_at - ahead,
            expires_at,
        })
    }
}

/// Builds the `private_key_jwt` client assertion Entra accepts (graph-notes §5).
pub fn client_assertion(
    client_id: &str,
    token_url: &str,
    cert_der: &[u8],
    key: &ring::rsa::KeyPair,
    ps256: bool,
    now: i64,
) -> Result<String, TokenError> {
    use sha2::Digest;
    let header = if ps256 {
        serde_json::json!({"alg":"PS256","typ":"JWT",
            "x5t#S256": URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(cert_der))})
    } else {
        serde_json::json!({"alg":"RS256","typ":"JWT",
            "x5t": URL_SAFE_NO_PAD.encode(sha1::Sha1::digest(cert_der))})
    };
    let claims = serde_json::json!({
        "aud": token_url, "iss": client_id, "sub": client_id,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": now, "iat": now, "exp": now + 600,
    });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let padding: &dyn ring::signature::RsaEncoding = if ps256 {
        &ring::signature::RSA_PSS_SHA256
    } else {
        &ring::signature::RSA_PKCS1_SHA256
    };
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        padding,
        &ring::rand::SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| TokenError::Assertion("RSA signing failed".into()))?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_token_carries_its_sensitive_bearer_header_and_never_prints_itself() {
        let t = AppToken::new("eyJ0eXAi.eyJhdWQi.c2ln").expect("a JWT is a header value");
        assert_eq!(t.secret(), "eyJ0eXAi.eyJhdWQi.c2ln");
        let v = t.bearer();
        assert_eq!(v.to_str().unwrap(), "Bearer eyJ0eXAi.eyJhdWQi.c2ln");
        assert!(v.is_sensitive());
        assert!(!format!("{t:?}").contains("eyJ"));
        // An answer that cannot be sent in a header is not a usable token.
        assert!(AppToken::new("abc\r\nX-Injected: 1").is_none());
    }
}
