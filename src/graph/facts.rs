//! Device facts: what the policy needs to know about a managed device, read from Graph with the
//! app token (read-only calls only). Never calls an action endpoint; produces the policy's own
//! [`DeviceFacts`] type, so the pure decision never depends on this module.

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
}

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
        }
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
            if cache.len() > 10_000 {
                cache.retain(|_, (t, _)| now.duration_since(*t) < self.ttl);
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
                    .header(
                        http::header::AUTHORIZATION,
                        format!("Bearer {}", token.secret()),
                    )
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
