//! Where console sessions and sign-ins in progress live: a small key–value shape with TTLs and
//! compare-and-set, in this process or in Redis (so any replica can serve any browser). Keys
//! are hashes of the browser's secrets, never the secrets; stores keep opaque JSON and must
//! never interpret it or decide whether a session is valid (the console does).

use crate::policy::limiter::{StoreError, StoreFuture};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most entries the in-process store keeps; past it the entry closest to expiry goes first, so
/// a flood of abandoned sign-ins costs bounded memory.
pub const MAX_MEMORY_ENTRIES: usize = 50_000;

pub trait SessionStore: Send + Sync {
    /// Stores `json` under `key` for `ttl` unless the key exists (ids are random; a clash is
    /// refused rather than overwritten). True if stored.
    fn put_new<'a>(&'a self, key: &'a str, json: &'a str, ttl: Duration) -> StoreFuture<'a, bool>;
    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>>;
    /// Replaces `key` with `new` and a new `ttl`, only if it is still exactly `old`.
    fn replace<'a>(
        &'a self,
        key: &'a str,
        old: &'a str,
        new: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;
    /// Removes `key` and returns what it held: one use (a sign-in's state).
    fn take<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>>;
    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()>;
}

/// The in-process store (no `state:` configured): lost on restart, not shared between replicas.
#[derive(Default)]
pub struct MemorySessions {
    inner: Mutex<HashMap<String, (Instant, String)>>,
}

impl MemorySessions {
    pub fn new() -> MemorySessions {
        MemorySessions::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, String)>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> StoreFuture<'a, T> {
    Box::pin(async move { Ok::<T, StoreError>(v) })
}

fn live(m: &HashMap<String, (Instant, String)>, key: &str, now: Instant) -> Option<String> {
    m.get(key)
        .filter(|(until, _)| *until > now)
        .map(|(_, j)| j.clone())
}

impl SessionStore for MemorySessions {
    fn put_new<'a>(&'a self, key: &'a str, json: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        let now = Instant::now();
        let mut m = self.lock();
        if live(&m, key, now).is_some() {
            return ready(false);
        }
        m.retain(|_, (until, _)| *until > now);
        while m.len() >= MAX_MEMORY_ENTRIES {
            let Some(first) = m
                .iter()
                .min_by_key(|(_, (u, _))| *u)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            m.remove(&first);
        }
        m.insert(key.to_string(), (now + ttl, json.to_string()));
        ready(true)
    }

    fn get<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>> {
        ready(live(&self.lock(), key, Instant::now()))
    }

    fn replace<'a>(
        &'a self,
        key: &'a str,
        old: &'a str,
        new: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        let now = Instant::now();
        let mut m = self.lock();
        if live(&m, key, now).as_deref() != Some(old) {
            return ready(false);
        }
        m.insert(key.to_string(), (now + ttl, new.to_string()));
        ready(true)
    }

    fn take<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<String>> {
        let now = Instant::now();
        let taken = self
            .lock()
            .remove(key)
            .filter(|(until, _)| *until > now)
            .map(|(_, j)| j);
        ready(taken)
    }

    fn remove<'a>(&'a self, key: &'a str) -> StoreFuture<'a, ()> {
        self.lock().remove(key);
        ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract every store keeps, memory and Redis alike.
    pub(crate) async fn conformance(s: &dyn SessionStore, prefix: &str) {
        let k = |n: &str| format!("{prefix}{n}");
        let hour = Duration::from_secs(3600);
        assert!(s.put_new(&k("a"), "1", hour).await.unwrap());
        assert!(
            !s.put_new(&k("a"), "2", hour).await.unwrap(),
            "no overwrite"
        );
        assert_eq!(s.get(&k("a")).await.unwrap().as_deref(), Some("1"));
        assert!(!s.replace(&k("a"), "x", "3", hour).await.unwrap(), "CAS");
        assert!(s.replace(&k("a"), "1", "3", hour).await.unwrap());
        assert_eq!(s.take(&k("a")).await.unwrap().as_deref(), Some("3"));
        assert_eq!(s.take(&k("a")).await.unwrap(), None, "one use");
        assert!(s.put_new(&k("b"), "1", hour).await.unwrap());
        s.remove(&k("b")).await.unwrap();
        assert_eq!(s.get(&k("b")).await.unwrap(), None);
        assert!(!s.replace(&k("b"), "1", "2", hour).await.unwrap());
        // Expiry: an entry past its TTL is gone for every operation.
        assert!(s
            .put_new(&k("c"), "1", Duration::from_millis(1))
            .await
            .unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while s.get(&k("c")).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "entry never expired");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(s.take(&k("c")).await.unwrap(), None);
        assert!(
            s.put_new(&k("c"), "2", hour).await.unwrap(),
            "expired key reusable"
        );
    }

    #[tokio::test]
    async fn memory_store_keeps_the_contract() {
        conformance(&MemorySessions::new(), "").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_store_keeps_the_contract_under_one_hash_tag() {
        use crate::state::test_support::{available, RedisOptions, RedisServer};
        if !available() {
            return;
        }
        let redis = RedisServer::start(RedisOptions::default());
        let url = format!("redis://127.0.0.1:{}/0", redis.port);
        let cfg = crate::state::conformance_config(&url, "pg");
        let store = crate::state::redis::RedisStore::build(&cfg).expect("redis store builds");
        conformance(&store, "session:").await;
        // Everything lives under one hash tag, with a TTL: nothing is kept for ever.
        assert!(store
            .put_new("session:ttl", "1", Duration::from_secs(600))
            .await
            .unwrap());
        let client = redis::Client::open(url).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(!keys.is_empty());
        for k in &keys {
            assert!(k.starts_with("{pg:console}:"), "{k}");
            let ttl: i64 = redis::cmd("PTTL").arg(k).query_async(&mut c).await.unwrap();
            assert!(ttl > 0, "{k} has a TTL");
        }
    }
}
