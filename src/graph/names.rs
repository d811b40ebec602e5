//! Display names of managed devices for the console (`deviceName`), read from Graph with the app
//! token and cached. Read-only, one small `$select` call per device; a failure is no name, never
//! an error page, and nothing here ever calls an action endpoint.

use super::token::AppTokenProvider;
use crate::outbound::{self, HttpsClient};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(600);
const MAX_ENTRIES: usize = 10_000;

pub struct DeviceNames {
    client: HttpsClient,
    graph_root: String,
    tokens: Arc<AppTokenProvider>,
    timeout: Duration,
    cache: Mutex<HashMap<String, (Instant, Option<String>)>>,
}

impl DeviceNames {
    pub fn new(
        client: HttpsClient,
        graph_root: String,
        tokens: Arc<AppTokenProvider>,
        timeout: Duration,
    ) -> DeviceNames {
        DeviceNames {
            client,
            graph_root,
            tokens,
            timeout,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The device's `deviceName`, or `None` when Graph does not know it or cannot be asked.
    pub async fn name(&self, managed_device_id: &str) -> Option<String> {
        let id = crate::text::guid(managed_device_id)?;
        if let Ok(c) = self.cache.lock() {
            if let Some((at, n)) = c.get(&id) {
                if at.elapsed() < TTL {
                    return n.clone();
                }
            }
        }
        let found = self.fetch(&id).await;
        // Only answers are cached; an outage is asked again next time.
        if let Some(n) = &found {
            if let Ok(mut c) = self.cache.lock() {
                if c.len() >= MAX_ENTRIES {
                    c.retain(|_, (at, _)| at.elapsed() < TTL);
                    if c.len() >= MAX_ENTRIES {
                        c.clear();
                    }
                }
                c.insert(id, (Instant::now(), n.clone()));
            }
        }
        found.flatten()
    }

    /// `Some(Some(name))`, `Some(None)` (Graph has no such device), `None` (could not ask).
    async fn fetch(&self, id: &str) -> Option<Option<String>> {
        let token = self.tokens.token().await.ok()?;
        let url = format!(
            "{}/v1.0/deviceManagement/managedDevices/{id}?$select=id,deviceName",
            self.graph_root
        );
        let req = outbound::get(&url, Some(token.secret())).ok()?;
        let resp = outbound::fetch(&self.client, req, self.timeout, 64 * 1024)
            .await
            .ok()?;
        if resp.status == http::StatusCode::NOT_FOUND {
            return Some(None);
        }
        if !resp.status.is_success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&resp.body).ok()?;
        Some(
            v.get("deviceName")
                .and_then(|n| n.as_str())
                .map(|n| n.chars().take(256).collect()),
        )
    }
}
