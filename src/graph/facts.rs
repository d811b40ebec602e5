//! Device facts: what the policy needs to know about a managed device, read from Graph with the
//! app token (read-only calls only). Never calls an action endpoint; produces the policy's own
//! [`DeviceFacts`] type, so the pure decision never depends on this module.

use super::slots::{Busy, GraphSlots};
use super::token::{AppTokenProvider, TokenError};
use crate::outbound::{self, HttpsClient};
use crate::policy::DeviceFacts;
use bytes::Bytes;
use http_body_util::Full;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Graph's `checkMemberGroups` accepts at most 20 ids per call (graph-notes §3).
const CHECK_MEMBER_GROUPS_MAX: usize = 20;
const MAX_BODY: usize = 256 * 1024;
const ZERO_GUID: &str = "00000000-0000-0000-0000-000000000000";

/// Why the facts could not be read. Clone (one failed fetch answers every request waiting on
/// it), so causes that are not Clone are shared behind an `Arc`. Display never repeats the
/// source: log with [`crate::error::chain`] to see the whole cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FactsError {
    #[error("managed device not found")]
    NotFound,
    /// Graph could not be asked or gave an unusable answer (timeout, 5xx, throttling, bad JSON).
    #[error("device facts unavailable ({step})")]
    Unavailable {
        /// Which read failed: `managedDevice`, `device`, `checkMemberGroups`.
        step: &'static str,
        #[source]
        cause: FactsFailure,
    },
    /// No app token to read with: Entra's token endpoint failed. Kept apart from `Unavailable` so
    /// the operator sees the same `app_token_unavailable` whether the token was needed for the
    /// facts or (with facts cached) for the action.
    #[error("app token unavailable for the device facts")]
    AppToken(#[source] TokenError),
    /// The operator has used up their device-lookup budget (`graph.facts_lookups_per_operator`);
    /// nothing was asked of Graph.
    #[error("device lookup budget spent; retry in {retry_after:?}")]
    Budget { retry_after: Duration },
}

/// The cause of [`FactsError::Unavailable`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum FactsFailure {
    #[error("request to Graph failed")]
    Fetch(#[source] Arc<outbound::FetchError>),
    #[error("Graph answered HTTP {0}")]
    Status(u16),
    #[error("Graph answered malformed JSON")]
    Malformed(#[source] Arc<serde_json::Error>),
    #[error("the request to Graph could not be built")]
    Request(#[source] Arc<http::Error>),
    #[error("no request slot to Graph came free")]
    Busy(#[source] Busy),
    #[error("Graph's answer lacks {0}")]
    Missing(&'static str),
    #[error("the Entra device vanished during the lookup")]
    Vanished,
    #[error("the facts cache lock was poisoned")]
    Poisoned,
}

impl FactsFailure {
    fn at(self, step: &'static str) -> FactsError {
        FactsError::Unavailable { step, cause: self }
    }
}

/// Cache counters for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct FactsStats {
    pub hits: u64,
    pub misses: u64,
}

type Slot = Arc<tokio::sync::OnceCell<Result<DeviceFacts, FactsError>>>;

/// Reads device facts from Graph (read-only calls), cached per (device, groups asked) with a TTL
/// and one fetch in flight per key. Transient failures are never cached.
pub struct FactsClient {
    client: HttpsClient,
    graph_root: String,
    tokens: Arc<AppTokenProvider>,
    timeout: Duration,
    ttl: Duration,
    cache: Mutex<HashMap<(String, String), (Instant, Slot)>>,
    stats: Mutex<FactsStats>,
    /// Most cache entries kept, expired or not: the oldest go first past it.
    max_entries: usize,
    /// Per-operator lookup budget: at most `.0` lookups per `.1`, counted per operator oid.
    budget: Option<(u32, Duration)>,
    /// oid → (window start, lookups in it).
    spent: Mutex<HashMap<String, (Instant, u32)>>,
    /// Shared with the forwarder: the cap on the pipeline's requests to Graph.
    slots: GraphSlots,
}

/// Default bound on facts cache entries.
pub const DEFAULT_FACTS_CACHE_MAX_ENTRIES: usize = 10_000;

impl FactsClient {
    pub fn new(
        client: HttpsClient,
        graph_root: String,
        tokens: Arc<AppTokenProvider>,
        timeout: Duration,
        ttl: Duration,
    ) -> FactsClient {
        FactsClient {
            client,
            graph_root,
            tokens,
            timeout,
            ttl,
            cache: Mutex::new(HashMap::new()),
            stats: Mutex::new(FactsStats::default()),
            max_entries: DEFAULT_FACTS_CACHE_MAX_ENTRIES,
            budget: None,
            spent: Mutex::new(HashMap::new()),
            slots: GraphSlots::default(),
        }
    }

    /// Shares the gateway's cap on requests to Graph (`graph.max_concurrent_requests`).
    pub fn with_slots(mut self, slots: GraphSlots) -> FactsClient {
        self.slots = slots;
        self
    }

    /// Bounds the cache to `n` entries (at least 1).
    pub fn with_max_entries(mut self, n: usize) -> FactsClient {
        self.max_entries = n.max(1);
        self
    }

    /// Each operator may look up at most `limit` devices per `window` (cache hits and lookups
    /// that end in a denial count too): one approved operator cannot spend the app's Graph
    /// throttling budget for everyone.
    pub fn with_operator_budget(mut self, limit: u32, window: Duration) -> FactsClient {
        self.budget = Some((limit, window));
        self
    }

    /// Counts one lookup for `oid`; `Err` with the wait if the budget is spent.
    fn spend(&self, oid: &str) -> Result<(), FactsError> {
        let Some((limit, window)) = self.budget else {
            return Ok(());
        };
        let mut spent = self
            .spent
            .lock()
            .map_err(|_| FactsFailure::Poisoned.at("budget"))?;
        let now = Instant::now();
        if spent.len() > self.max_entries {
            spent.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = spent.entry(oid.to_string()).or_insert((now, 0));
        if now.duration_since(entry.0) >= window {
            *entry = (now, 0);
        }
        if entry.1 >= limit {
            return Err(FactsError::Budget {
                retry_after: window.saturating_sub(now.duration_since(entry.0)),
            });
        }
        entry.1 += 1;
        Ok(())
    }

    /// [`FactsClient::facts`] on behalf of the operator `oid`, within their lookup budget.
    pub async fn facts_for(
        &self,
        oid: &str,
        managed_device_id: &str,
        groups: &[String],
    ) -> Result<DeviceFacts, FactsError> {
        self.spend(oid)?;
        self.facts(managed_device_id, groups).await
    }

    pub fn stats(&self) -> FactsStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Facts for `managed_device_id`, with membership checked against `groups` (sorted, lower-case).
    pub async fn facts(
        &self,
        managed_device_id: &str,
        groups: &[String],
    ) -> Result<DeviceFacts, FactsError> {
        let key = (managed_device_id.to_string(), groups.join(","));
        let (slot, hit) = {
            let mut cache = self
                .cache
                .lock()
                .map_err(|_| FactsFailure::Poisoned.at("cache"))?;
            let now = Instant::now();
            if !cache.contains_key(&key) {
                make_room(&mut cache, now, self.ttl, self.max_entries);
            }
            match cache.get(&key) {
                Some((t, slot)) if now.duration_since(*t) < self.ttl => (slot.clone(), true),
                _ => {
                    let slot: Slot = Arc::new(tokio::sync::OnceCell::new());
                    if !self.ttl.is_zero() {
                        cache.insert(key.clone(), (now, slot.clone()));
                    }
                    (slot, false)
                }
            }
        };
        if let Ok(mut s) = self.stats.lock() {
            if hit {
                s.hits += 1;
            } else {
                s.misses += 1;
            }
        }
        let result = slot
            .get_or_init(|| self.fetch(managed_device_id, groups))
            .await
            .clone();
        if matches!(
            result,
            Err(FactsError::Unavailable { .. } | FactsError::AppToken(_))
        ) {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.get(&key).is_some_and(|(_, s)| Arc::ptr_eq(s, &slot)) {
                    cache.remove(&key);
                }
            }
        }
        result
    }

    /// One read-only call; `step` names it in the error.
    async fn call(
        &self,
        step: &'static str,
        req: Result<http::Request<Full<Bytes>>, http::Error>,
    ) -> Result<(http::StatusCode, serde_json::Value), FactsError> {
        let req = req.map_err(|e| FactsFailure::Request(Arc::new(e)).at(step))?;
        let _slot = self
            .slots
            .take()
            .await
            .map_err(|e| FactsFailure::Busy(e).at(step))?;
        let resp = outbound::fetch(&self.client, req, self.timeout, MAX_BODY)
            .await
            .map_err(|e| FactsFailure::Fetch(Arc::new(e)).at(step))?;
        if resp.status == http::StatusCode::NOT_FOUND {
            return Ok((resp.status, serde_json::Value::Null));
        }
        if !resp.status.is_success() {
            return Err(FactsFailure::Status(resp.status.as_u16()).at(step));
        }
        let v = serde_json::from_slice(&resp.body)
            .map_err(|e| FactsFailure::Malformed(Arc::new(e)).at(step))?;
        Ok((resp.status, v))
    }

    async fn fetch(&self, id: &str, groups: &[String]) -> Result<DeviceFacts, FactsError> {
        let token = self.tokens.token().await.map_err(FactsError::AppToken)?;
        let bearer = Some(token.secret());
        let root = &self.graph_root;
        let url = format!(
            "{root}/v1.0/deviceManagement/managedDevices/{id}?$select=id,azureADDeviceId,operatingSystem,userPrincipalName,userId"
        );
        let (status, md) = self
            .call("managedDevice", outbound::get(&url, bearer))
            .await?;
        if status == http::StatusCode::NOT_FOUND {
            return Err(FactsError::NotFound);
        }
        let text = |k: &str| -> Option<String> {
            md.get(k)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        let operating_system = text("operatingSystem")
            .ok_or_else(|| FactsFailure::Missing("operatingSystem").at("managedDevice"))?;
        let azure_ad_device_id = text("azureADDeviceId")
            .and_then(|s| crate::text::guid(&s))
            .filter(|g| g != ZERO_GUID);
        let mut facts = DeviceFacts {
            managed_device_id: id.to_string(),
            azure_ad_device_id: azure_ad_device_id.clone(),
            device_object_id: None,
            operating_system,
            user_principal_name: text("userPrincipalName"),
            user_id: text("userId").map(|s| s.to_ascii_lowercase()),
            member_of: BTreeSet::new(),
        };
        let Some(device_id) = azure_ad_device_id else {
            return Ok(facts);
        };
        if groups.is_empty() {
            return Ok(facts);
        }
        let url = format!("{root}/v1.0/devices(deviceId='{device_id}')?$select=id");
        let (status, dev) = self.call("device", outbound::get(&url, bearer)).await?;
        if status == http::StatusCode::NOT_FOUND {
            // Intune knows an Entra device id the directory does not: treat as unregistered.
            facts.azure_ad_device_id = None;
            return Ok(facts);
        }
        let object_id = dev
            .get("id")
            .and_then(|v| v.as_str())
            .and_then(crate::text::guid)
            .ok_or_else(|| FactsFailure::Missing("id").at("device"))?;
        for chunk in groups.chunks(CHECK_MEMBER_GROUPS_MAX) {
            let body = serde_json::json!({ "groupIds": chunk }).to_string();
            let req =
                http::Request::post(format!("{root}/v1.0/devices/{object_id}/checkMemberGroups"))
                    .header(http::header::AUTHORIZATION, token.bearer())
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::ACCEPT, "application/json")
                    .body(Full::new(Bytes::from(body)));
            let (status, v) = self.call("checkMemberGroups", req).await?;
            if status == http::StatusCode::NOT_FOUND {
                return Err(FactsFailure::Vanished.at("checkMemberGroups"));
            }
            let ids = v
                .get("value")
                .and_then(|v| v.as_array())
                .ok_or_else(|| FactsFailure::Missing("value").at("checkMemberGroups"))?;
            for g in ids
                .iter()
                .filter_map(|g| g.as_str())
                .filter_map(crate::text::guid)
            {
                // Only record what we asked about; Graph echoing anything else is ignored.
                if chunk.contains(&g) {
                    facts.member_of.insert(g);
                }
            }
        }
        facts.device_object_id = Some(object_id);
        Ok(facts)
    }
}

/// Makes room for one more entry: expired entries go first, then the oldest live ones, so the
/// cache never holds more than `max` entries whatever the TTL.
fn make_room<K: Clone + Eq + std::hash::Hash, V>(
    cache: &mut HashMap<K, (Instant, V)>,
    now: Instant,
    ttl: Duration,
    max: usize,
) {
    if cache.len() >= max {
        cache.retain(|_, (t, _)| now.duration_since(*t) < ttl);
    }
    while cache.len() >= max {
        let oldest = cache
            .iter()
            .min_by_key(|(_, (t, _))| *t)
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => {
                cache.remove(&k);
            }
            None => break,
        }
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    /// Finding 6: the cache is bounded by size as well as time, even when every entry is live
    /// (the old code shed only expired entries, and only past 10,000).
    #[test]
    fn the_cache_never_outgrows_its_bound() {
        let mut cache: HashMap<String, (Instant, ())> = HashMap::new();
        let t0 = Instant::now();
        for i in 0..50u64 {
            let now = t0 + Duration::from_millis(i);
            make_room(&mut cache, now, Duration::from_secs(3600), 8);
            cache.insert(format!("dev-{i}"), (now, ()));
            assert!(cache.len() <= 8);
        }
        assert!(cache.contains_key("dev-49") && !cache.contains_key("dev-0"));
    }
}
