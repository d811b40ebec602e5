//! Signing keys for operator tokens: OIDC discovery (issuer, jwks_uri) and the JWKS, cached and
//! refetched on an unknown `kid` no more often than a floor, and on age. A failed refresh keeps
//! the keys already held; keys are never taken from the token itself (`jku`, `jwk`, `x5u`).

use crate::outbound::{self, HttpsClient};
use openidconnect::core::{CoreJsonWebKey, CoreJsonWebKeySet, CoreProviderMetadata};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const MAX_DOC_BYTES: usize = 512 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("fetching {what} from {url}: {source}")]
    Fetch {
        what: &'static str,
        url: String,
        source: outbound::FetchError,
    },
    #[error("{what} at {url} answered HTTP {status}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
    },
    #[error("{what} at {url} is not valid: {detail}")]
    Invalid {
        what: &'static str,
        url: String,
        detail: String,
    },
}

/// One published key plus the per-key `issuer` Entra attaches (template form kept as published).
#[derive(Clone, Debug)]
pub struct PublishedKey {
    pub jwk: CoreJsonWebKey,
    pub issuer: Option<String>,
    /// The RSA modulus and exponent (big-endian), decoded once at fetch, for `ring`'s verifier.
    /// `None` for a key that is not RSA (then it can verify nothing passgate accepts).
    pub rsa: Option<RsaComponents>,
}

/// An RSA public key as `ring` takes it.
#[derive(Clone, Debug)]
pub struct RsaComponents {
    pub n: Vec<u8>,
    pub e: Vec<u8>,
}

impl RsaComponents {
    /// From a JWK's `kty: RSA`, `n` and `e` (base64url, no padding).
    pub fn from_jwk(raw: &serde_json::Value) -> Option<RsaComponents> {
        use base64::Engine;
        if raw.get("kty")?.as_str()? != "RSA" {
            return None;
        }
        let b64 = |k: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(raw.get(k)?.as_str()?.trim_end_matches('='))
                .ok()
        };
        Some(RsaComponents {
            n: b64("n")?,
            e: b64("e")?,
        })
    }

    /// Verifies an RS256/384/512 or PS256/384/512 signature (keys of 2048 to 8192 bits).
    pub fn verify(&self, alg: &str, message: &[u8], signature: &[u8]) -> bool {
        use ring::signature as s;
        let params: &s::RsaParameters = match alg {
            "RS256" => &s::RSA_PKCS1_2048_8192_SHA256,
            "RS384" => &s::RSA_PKCS1_2048_8192_SHA384,
            "RS512" => &s::RSA_PKCS1_2048_8192_SHA512,
            "PS256" => &s::RSA_PSS_2048_8192_SHA256,
            "PS384" => &s::RSA_PSS_2048_8192_SHA384,
            "PS512" => &s::RSA_PSS_2048_8192_SHA512,
            _ => return false,
        };
        s::RsaPublicKeyComponents {
            n: &self.n,
            e: &self.e,
        }
        .verify(params, message, signature)
        .is_ok()
    }
}

#[derive(Default)]
struct Snapshot {
    /// Shared, so a lookup per request costs a reference count, not a copy of the key (its JWK
    /// with the certificate chain). A refresh replaces every entry with a new `Arc`.
    keys: HashMap<String, Arc<PublishedKey>>,
    issuer: Option<String>,
    fetched_at: Option<Instant>,
}

/// Refresh outcome counters (read by metrics).
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyStats {
    pub refresh_ok: u64,
    pub refresh_failed: u64,
}

pub struct KeyStore {
    client: HttpsClient,
    discovery_url: String,
    timeout: Duration,
    refresh_floor: Duration,
    max_age: Duration,
    state: RwLock<Snapshot>,
    stats: RwLock<KeyStats>,
    /// Whether the most recent fetch failed (Entra unreachable): an unknown `kid` is then a
    /// retryable outage, not proof that the token is forged.
    last_failed: std::sync::atomic::AtomicBool,
    /// Serialises refreshes: one fetch in flight, others wait and then read the result.
    refreshing: tokio::sync::Mutex<Option<Instant>>,
}

impl KeyStore {
    pub fn new(
        client: HttpsClient,
        discovery_url: String,
        timeout: Duration,
        refresh_floor: Duration,
        max_age: Duration,
    ) -> Arc<KeyStore> {
        Arc::new(KeyStore {
            client,
            discovery_url,
            timeout,
            refresh_floor,
            max_age,
            state: RwLock::new(Snapshot::default()),
            stats: RwLock::new(KeyStats::default()),
            last_failed: std::sync::atomic::AtomicBool::new(false),
            refreshing: tokio::sync::Mutex::new(None),
        })
    }

    pub fn stats(&self) -> KeyStats {
        self.stats.read().map(|s| *s).unwrap_or_default()
    }

    /// The issuer from the discovery document, once fetched.
    pub fn issuer(&self) -> Option<String> {
        self.state.read().ok().and_then(|s| s.issuer.clone())
    }

    /// True when the latest key fetch failed.
    pub fn refresh_failing(&self) -> bool {
        self.last_failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn has_keys(&self) -> bool {
        self.state
            .read()
            .map(|s| !s.keys.is_empty())
            .unwrap_or(false)
    }

    fn lookup(&self, kid: &str) -> Option<Arc<PublishedKey>> {
        self.state
            .read()
            .ok()
            .and_then(|s| s.keys.get(kid).cloned())
    }

    fn is_stale(&self) -> bool {
        self.state
            .read()
            .map(|s| s.fetched_at.is_none_or(|t| t.elapsed() >= self.max_age))
            .unwrap_or(true)
    }

    /// Finds the key for `kid`, refreshing (rate-limited) when it is unknown or the set is old.
    pub async fn key(&self, kid: &str) -> Option<Arc<PublishedKey>> {
        if !self.is_stale() {
            if let Some(k) = self.lookup(kid) {
                return Some(k);
            }
        }
        let _ = self.refresh_if_allowed().await;
        self.lookup(kid)
    }

    /// Refreshes unless another refresh happened less than the floor ago.
    pub async fn refresh_if_allowed(&self) -> Result<(), KeyError> {
        let mut last = self.refreshing.lock().await;
        // The floor bounds how hard a stream of unknown `kid`s can make us hit Entra.
        if last.is_some_and(|t| t.elapsed() < self.refresh_floor) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let result = self.fetch().await;
        self.last_failed
            .store(result.is_err(), std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut s) = self.stats.write() {
            match result {
                Ok(_) => s.refresh_ok += 1,
                Err(_) => s.refresh_failed += 1,
            }
        }
        match result {
            Ok((issuer, keys)) => {
                if let Ok(mut st) = self.state.write() {
                    st.issuer = Some(issuer);
                    st.keys = keys;
                    st.fetched_at = Some(Instant::now());
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "operator-token key refresh failed; keeping cached keys");
                Err(e)
            }
        }
    }

    async fn get_json(&self, what: &'static str, url: &str) -> Result<bytes::Bytes, KeyError> {
        let req = outbound::get(url, None).map_err(|e| KeyError::Invalid {
            what,
            url: url.to_string(),
            detail: e.to_string(),
        })?;
        let resp = outbound::fetch(&self.client, req, self.timeout, MAX_DOC_BYTES)
            .await
            .map_err(|source| KeyError::Fetch {
                what,
                url: url.to_string(),
                source,
            })?;
        if !resp.status.is_success() {
            return Err(KeyError::Status {
                what,
                url: url.to_string(),
                status: resp.status.as_u16(),
            });
        }
        Ok(resp.body)
    }

    async fn fetch(&self) -> Result<(String, HashMap<String, Arc<PublishedKey>>), KeyError> {
        let url = self.discovery_url.as_str();
        let doc = self.get_json("OIDC discovery document", url).await?;
        let meta: CoreProviderMetadata =
            serde_json::from_slice(&doc).map_err(|e| KeyError::Invalid {
                what: "OIDC discovery document",
                url: url.to_string(),
                detail: e.to_string(),
            })?;
        let issuer = meta.issuer().as_str().to_string();
        let jwks_url = meta.jwks_uri().url().as_str().to_string();
        if !crate::outbound::url_is_acceptable(&jwks_url) {
            return Err(KeyError::Invalid {
                what: "OIDC discovery document",
                url: url.to_string(),
                detail: "jwks_uri must be https (http only on loopback)".into(),
            });
        }
        let body = self.get_json("JWKS", &jwks_url).await?;
        let set: CoreJsonWebKeySet =
            serde_json::from_slice(&body).map_err(|e| KeyError::Invalid {
                what: "JWKS",
                url: jwks_url.clone(),
                detail: e.to_string(),
            })?;
        // openidconnect's key type drops Entra's per-key `issuer`; read it alongside.
        let raw: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let mut issuers: HashMap<String, String> = HashMap::new();
        let mut components = HashMap::new();
        if let Some(keys) = raw.get("keys").and_then(|k| k.as_array()) {
            for k in keys {
                if let (Some(kid), Some(c)) = (
                    k.get("kid").and_then(|v| v.as_str()),
                    RsaComponents::from_jwk(k),
                ) {
                    components.insert(kid.to_string(), c);
                }
                if let (Some(kid), Some(iss)) = (
                    k.get("kid").and_then(|v| v.as_str()),
                    k.get("issuer").and_then(|v| v.as_str()),
                ) {
                    issuers.insert(kid.to_string(), iss.to_string());
                }
            }
        }
        let mut keys = HashMap::new();
        for jwk in set.keys() {
            use openidconnect::JsonWebKey;
            if let Some(kid) = jwk.key_id() {
                let kid = kid.as_str().to_string();
                keys.insert(
                    kid.clone(),
                    Arc::new(PublishedKey {
                        jwk: jwk.clone(),
                        issuer: issuers.get(&kid).cloned(),
                        rsa: components.get(&kid).cloned(),
                    }),
                );
            }
        }
        if keys.is_empty() {
            return Err(KeyError::Invalid {
                what: "JWKS",
                url: jwks_url,
                detail: "no signing keys with a kid".into(),
            });
        }
        Ok((issuer, keys))
    }
}
