//! Console sessions: an opaque random id in an `HttpOnly; Secure; SameSite=Strict` cookie, the
//! session's data in the state backend under the SHA-256 of that id (so a copy of the store holds
//! no usable session), idle and absolute timeouts checked on every request, and the one-use
//! state of a sign-in in progress. It must never log a session id, put one in a URL, or accept a
//! session id the server did not issue (no fixation: ids are minted only after sign-in).

use super::store::SessionStore;
use crate::policy::limiter::StoreError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How long a sign-in may take between leaving for Entra and coming back.
pub const SIGN_IN_LIFETIME: Duration = Duration::from_secs(600);
/// A session's last use is written back at most this often (not on every page view).
const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// `n` random bytes from the OS, base64url.
pub fn random_b64(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// The store key of a browser secret: its SHA-256, never the secret.
fn store_key(kind: &str, secret: &str) -> String {
    format!("{kind}:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

/// What the audit record shows of a session: 32 hex digits of the id's SHA-256.
pub fn audit_hash(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..16])
}

/// The names of the cookies: `__Host-` prefixed (Secure, Path=/, no Domain) over https.
#[derive(Debug, Clone, Copy)]
pub struct Cookies {
    pub secure: bool,
}

impl Cookies {
    pub fn session_name(self) -> &'static str {
        if self.secure {
            "__Host-passgate_session"
        } else {
            "passgate_session"
        }
    }
    pub fn sign_in_name(self) -> &'static str {
        if self.secure {
            "__Host-passgate_signin"
        } else {
            "passgate_signin"
        }
    }
    fn attrs(self) -> &'static str {
        if self.secure {
            "; Path=/; HttpOnly; Secure"
        } else {
            // Only for a loopback http:// console (config validation allows nothing else).
            "; Path=/; HttpOnly"
        }
    }
    /// The session cookie: no Max-Age (a browser session), the server ends it anyway.
    pub fn session(self, id: &str) -> String {
        format!(
            "{}={id}{}; SameSite=Strict",
            self.session_name(),
            self.attrs()
        )
    }
    /// The sign-in cookie must come back on Entra's cross-site redirect, so it is Lax, and short.
    pub fn sign_in(self, id: &str) -> String {
        format!(
            "{}={id}{}; SameSite=Lax; Max-Age={}",
            self.sign_in_name(),
            self.attrs(),
            SIGN_IN_LIFETIME.as_secs()
        )
    }
    pub fn clear_session(self) -> String {
        format!(
            "{}={}; SameSite=Strict; Max-Age=0",
            self.session_name(),
            self.attrs()
        )
    }
    pub fn clear_sign_in(self) -> String {
        format!(
            "{}={}; SameSite=Lax; Max-Age=0",
            self.sign_in_name(),
            self.attrs()
        )
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        // Our ids are base64url; anything else was not issued here.
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A sign-in between the redirect to Entra and the callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignIn {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    /// A console path to show after sign-in (validated local path).
    pub return_to: String,
}

/// A signed-in person's session, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionData {
    /// Who signed in, as their ID token said (stored flattened: the same JSON as before).
    #[serde(flatten)]
    pub who: super::oidc::Identity,
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// A session found valid for this request.
#[derive(Debug, Clone)]
pub struct Session {
    /// The cookie value; only ever compared, hashed or cleared.
    pub id: String,
    pub data: SessionData,
}

impl Session {
    pub fn audit_hash(&self) -> String {
        audit_hash(&self.id)
    }
}

/// Why a request has no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSession {
    /// No cookie, or one the store does not know (ended, signed out, never issued).
    Absent,
    /// Unused for longer than the idle timeout.
    Idle,
    /// Older than the maximum age.
    Expired,
}

/// Sessions over a store, with the timeouts in force.
pub struct Sessions<'a> {
    pub store: &'a dyn SessionStore,
    pub idle: Duration,
    pub max_age: Duration,
}

fn ttl(d: chrono::TimeDelta) -> Duration {
    d.to_std()
        .unwrap_or(Duration::from_millis(1))
        .max(Duration::from_millis(1))
}

impl Sessions<'_> {
    /// How long the store should keep a session last used at `last_seen`: until the earlier of
    /// its idle and absolute ends.
    fn keep_for(&self, d: &SessionData, now: DateTime<Utc>) -> Duration {
        let idle_end = d.last_seen + chrono::TimeDelta::from_std(self.idle).unwrap_or_default();
        let abs_end = d.created_at + chrono::TimeDelta::from_std(self.max_age).unwrap_or_default();
        ttl(idle_end.min(abs_end) - now)
    }

    /// Stores a new session and returns its id (fresh randomness: never one the browser chose).
    pub async fn create(&self, data: SessionData) -> Result<Session, StoreError> {
        let now = data.created_at;
        let json = serde_json::to_string(&data).unwrap_or_default();
        for _ in 0..3 {
            let id = random_b64(32);
            let keep = self.keep_for(&data, now);
            if self
                .store
                .put_new(&store_key("session", &id), &json, keep)
                .await?
            {
                return Ok(Session { id, data });
            }
        }
        Err(StoreError {
            kind: crate::policy::limiter::StoreErrorKind::Other,
            message: "could not store a new console session".into(),
        })
    }

    /// The session named by `id`, if it is valid at `now`; records its use (at most every 30 s).
    /// An idle or expired session is removed on the spot.
    pub async fn load(&self, id: &str, now: DateTime<Utc>) -> Result<Session, NoSessionOr> {
        let key = store_key("session", id);
        let Some(json) = self.store.get(&key).await.map_err(NoSessionOr::Store)? else {
            return Err(NoSessionOr::No(NoSession::Absent));
        };
        let Ok(mut data) = serde_json::from_str::<SessionData>(&json) else {
            let _ = self.store.remove(&key).await;
            return Err(NoSessionOr::No(NoSession::Absent));
        };
        let max_age = chrono::TimeDelta::from_std(self.max_age).unwrap_or_default();
        let idle = chrono::TimeDelta::from_std(self.idle).unwrap_or_default();
        let why = if now - data.created_at >= max_age {
            Some(NoSession::Expired)
        } else if now - data.last_seen >= idle {
            Some(NoSession::Idle)
        } else {
            None
        };
        if let Some(why) = why {
            self.store.remove(&key).await.map_err(NoSessionOr::Store)?;
            return Err(NoSessionOr::No(why));
        }
        if now - data.last_seen >= TOUCH_EVERY {
            data.last_seen = now;
            let new = serde_json::to_string(&data).unwrap_or_default();
            // Losing this race to a concurrent request of the same session is fine: it wrote a
            // last use just as recent.
            let _ = self
                .store
                .replace(&key, &json, &new, self.keep_for(&data, now))
                .await
                .map_err(NoSessionOr::Store)?;
        }
        Ok(Session {
            id: id.to_string(),
            data,
        })
    }

    /// Ends a session server-side: its cookie is worthless from now on, on every replica.
    pub async fn destroy(&self, id: &str) -> Result<(), StoreError> {
        self.store.remove(&store_key("session", id)).await
    }

    /// Stores a sign-in in progress; returns the id for the sign-in cookie.
    pub async fn begin_sign_in(&self, s: &SignIn) -> Result<String, StoreError> {
        let json = serde_json::to_string(s).unwrap_or_default();
        for _ in 0..3 {
            let id = random_b64(32);
            if self
                .store
                .put_new(&store_key("signin", &id), &json, SIGN_IN_LIFETIME)
                .await?
            {
                return Ok(id);
            }
        }
        Err(StoreError {
            kind: crate::policy::limiter::StoreErrorKind::Other,
            message: "could not store a console sign-in".into(),
        })
    }

    /// Takes the sign-in named by the cookie: one use, whatever the outcome.
    pub async fn take_sign_in(&self, id: &str) -> Result<Option<SignIn>, StoreError> {
        let json = self.store.take(&store_key("signin", id)).await?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }
}

/// [`Sessions::load`]'s failure: no valid session, or the store could not be asked.
#[derive(Debug)]
pub enum NoSessionOr {
    No(NoSession),
    Store(StoreError),
}

/// The store key of a session id, for tests that age a session in the store.
#[doc(hidden)]
pub fn session_store_key(id: &str) -> String {
    store_key("session", id)
}

#[cfg(test)]
mod tests {
    use super::super::store::MemorySessions;
    use super::*;

    fn data(now: DateTime<Utc>) -> SessionData {
        SessionData {
            who: crate::console::oidc::Identity {
                oid: "o".into(),
                tid: "t".into(),
                upn: None,
                name: None,
                groups: vec![],
                groups_overage: false,
                roles: vec![],
            },
            csrf: "c".into(),
            created_at: now,
            last_seen: now,
        }
    }

    #[tokio::test]
    async fn idle_and_absolute_timeouts_end_sessions_server_side() {
        let store = MemorySessions::new();
        let s = Sessions {
            store: &store,
            idle: Duration::from_secs(600),
            max_age: Duration::from_secs(3600),
        };
        let t0 = Utc::now();
        let sess = s.create(data(t0)).await.unwrap();
        assert_eq!(sess.id.len(), 43);
        let m = |n| t0 + chrono::TimeDelta::minutes(n);
        // Used every 9 minutes it lives up to the absolute limit, then ends.
        for n in [9, 18, 27, 36, 45, 54] {
            assert!(s.load(&sess.id, m(n)).await.is_ok(), "minute {n}");
        }
        assert!(matches!(
            s.load(&sess.id, m(61)).await,
            Err(NoSessionOr::No(NoSession::Expired))
        ));
        assert!(matches!(
            s.load(&sess.id, m(62)).await,
            Err(NoSessionOr::No(NoSession::Absent))
        ));
        // Left alone past the idle timeout it ends.
        let sess = s.create(data(t0)).await.unwrap();
        assert!(matches!(
            s.load(&sess.id, m(11)).await,
            Err(NoSessionOr::No(NoSession::Idle))
        ));
        // Destroyed, it is gone.
        let sess = s.create(data(t0)).await.unwrap();
        s.destroy(&sess.id).await.unwrap();
        assert!(s.load(&sess.id, m(1)).await.is_err());
        // A made-up id is nothing.
        assert!(s.load("made-up", m(1)).await.is_err());
    }

    #[tokio::test]
    async fn a_sign_in_is_taken_once() {
        let store = MemorySessions::new();
        let s = Sessions {
            store: &store,
            idle: Duration::from_secs(600),
            max_age: Duration::from_secs(3600),
        };
        let id = s
            .begin_sign_in(&SignIn {
                state: "s".into(),
                nonce: "n".into(),
                pkce_verifier: "v".into(),
                return_to: "/".into(),
            })
            .await
            .unwrap();
        assert_eq!(s.take_sign_in(&id).await.unwrap().unwrap().state, "s");
        assert!(s.take_sign_in(&id).await.unwrap().is_none());
    }

    #[test]
    fn cookies_are_strict_httponly_and_secure_unless_loopback_http() {
        let c = Cookies { secure: true };
        let s = c.session("abc");
        assert!(s.starts_with("__Host-passgate_session=abc;"));
        for a in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(s.contains(a), "{a} in {s}");
        }
        assert!(!s.contains("Domain"));
        let l = Cookies { secure: false }.session("abc");
        assert!(l.contains("HttpOnly") && l.contains("SameSite=Strict") && !l.contains("Secure"));
        let mut h = http::HeaderMap::new();
        h.insert(
            "cookie",
            "a=1; passgate_session=x_y-z; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&h, "passgate_session"), Some("x_y-z"));
        h.insert("cookie", "passgate_session=<script>".parse().unwrap());
        assert_eq!(cookie(&h, "passgate_session"), None);
        assert_eq!(audit_hash("abc").len(), 32);
    }
}
