//! Where approval requests live: a key–value shape with compare-and-set, so every transition is
//! one atomic step in the in-process store and in Redis alike (replicas share requests). Stores
//! keep opaque JSON; they must never interpret a request or decide a transition.

use crate::policy::limiter::{StoreError, StoreFuture};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

/// How long a request is kept after it was opened (history for the API and the console).
pub const RETENTION: std::time::Duration = std::time::Duration::from_secs(35 * 86_400);
/// Most requests kept in the index; the oldest go first.
pub const MAX_REQUESTS: usize = 10_000;

/// A request as stored: its id and JSON.
pub type Stored = (String, String);

pub trait ApprovalStore: Send + Sync {
    /// The request the key (operator, device, action, policy) currently points at.
    fn current<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Stored>>;
    /// Stores `json` as request `id` and points `key` at it, only if `key` still points at
    /// `expected` (`None`: at nothing). `created_ms` orders the index.
    fn create<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a str>,
        id: &'a str,
        json: &'a str,
        created_ms: i64,
    ) -> StoreFuture<'a, bool>;
    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>>;
    /// Replaces request `id` with `new` only if it is still exactly `old`.
    fn replace<'a>(&'a self, id: &'a str, old: &'a str, new: &'a str) -> StoreFuture<'a, bool>;
    /// The newest requests first, at most `limit`.
    fn recent(&self, limit: usize) -> StoreFuture<'_, Vec<String>>;
}

#[derive(Default)]
struct Inner {
    keys: HashMap<String, String>,
    requests: HashMap<String, String>,
    /// (created_ms, id) → () : the index, oldest first.
    index: BTreeMap<(i64, String), ()>,
}

/// The in-process store (no `state:` configured): lost on restart, not shared.
#[derive(Default)]
pub struct MemoryApprovals {
    inner: Mutex<Inner>,
}

impl MemoryApprovals {
    pub fn new() -> MemoryApprovals {
        MemoryApprovals::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> StoreFuture<'a, T> {
    Box::pin(async move { Ok::<T, StoreError>(v) })
}

impl ApprovalStore for MemoryApprovals {
    fn current<'a>(&'a self, key: &'a str) -> StoreFuture<'a, Option<Stored>> {
        let i = self.lock();
        let found = i
            .keys
            .get(key)
            .and_then(|id| i.requests.get(id).map(|j| (id.clone(), j.clone())));
        ready(found)
    }

    fn create<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a str>,
        id: &'a str,
        json: &'a str,
        created_ms: i64,
    ) -> StoreFuture<'a, bool> {
        let mut i = self.lock();
        if i.keys.get(key).map(String::as_str) != expected {
            return ready(false);
        }
        i.keys.insert(key.to_string(), id.to_string());
        i.requests.insert(id.to_string(), json.to_string());
        i.index.insert((created_ms, id.to_string()), ());
        let cutoff = created_ms - RETENTION.as_millis() as i64;
        while let Some(((ms, old), ())) = i.index.first_key_value().map(|(k, v)| (k.clone(), *v)) {
            if ms >= cutoff && i.index.len() <= MAX_REQUESTS {
                break;
            }
            i.index.remove(&(ms, old.clone()));
            i.requests.remove(&old);
            i.keys.retain(|_, v| *v != old);
        }
        ready(true)
    }

    fn get<'a>(&'a self, id: &'a str) -> StoreFuture<'a, Option<String>> {
        ready(self.lock().requests.get(id).cloned())
    }

    fn replace<'a>(&'a self, id: &'a str, old: &'a str, new: &'a str) -> StoreFuture<'a, bool> {
        let mut i = self.lock();
        match i.requests.get_mut(id) {
            Some(cur) if cur == old => {
                *cur = new.to_string();
                ready(true)
            }
            _ => ready(false),
        }
    }

    fn recent(&self, limit: usize) -> StoreFuture<'_, Vec<String>> {
        let i = self.lock();
        let out = i
            .index
            .keys()
            .rev()
            .take(limit)
            .filter_map(|(_, id)| i.requests.get(id).cloned())
            .collect();
        ready(out)
    }
}
