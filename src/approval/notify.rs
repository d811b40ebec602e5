//! Announces new pending approval requests to a webhook (Teams/Slack workflow, ITSM, …): a JSON
//! summary, POSTed in the background. A failed delivery is logged and counted and never blocks
//! or fails a request. It must never send a token, and never log the webhook URL (a secret).

use super::ApprovalRequest;
use crate::outbound::{self, HttpsClient};
use bytes::Bytes;
use http_body_util::Full;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest answer read from the webhook.
const MAX_ANSWER: usize = 16 * 1024;

/// Webhook URLs by policy (resolved from their `env:`/`file:` references when the gateway was
/// built) and the client that posts to them.
#[derive(Clone)]
pub struct Notifier {
    client: Option<HttpsClient>,
    urls: Arc<BTreeMap<String, String>>,
    /// The top-level `notify.webhook`: break-glass uses, and approvals without their own.
    default_url: Option<Arc<str>>,
    results: prometheus::IntCounterVec,
}

impl Notifier {
    pub fn new(
        client: HttpsClient,
        urls: BTreeMap<String, String>,
        default_url: Option<String>,
        results: prometheus::IntCounterVec,
    ) -> Notifier {
        Notifier {
            client: Some(client),
            urls: Arc::new(urls),
            default_url: default_url.map(Arc::from),
            results,
        }
    }

    /// The summary sent for a new request: ids, names and times only.
    pub fn summary(event: &str, r: &ApprovalRequest) -> serde_json::Value {
        serde_json::json!({
            "event": event,
            "approval_id": r.id,
            "policy": r.policy,
            "action": r.action,
            "managed_device_id": r.managed_device_id,
            "platform": r.platform,
            "device_owner": r.device_owner,
            "requester": { "oid": r.requester.oid, "upn": r.requester.upn },
            "justification": r.justification,
            "created_at": r.created_at,
            "pending_until": r.pending_until,
        })
    }

    /// Announces a new pending request of `policy` to its webhook (or the default one). Returns
    /// at once.
    pub fn requested(&self, policy: &str, r: &ApprovalRequest) {
        let url = self
            .urls
            .get(policy)
            .cloned()
            .or_else(|| self.default_url.as_deref().map(str::to_string));
        let body = Notifier::summary("approval_requested", r).to_string();
        self.post(url, body, policy, &r.id);
    }

    /// Announces a use of a break-glass policy (once its allow record is durable) to the default
    /// webhook, or the policy's approval webhook. Returns at once.
    pub fn break_glass(&self, permit: &crate::policy::Permit, request_id: &str) {
        let url = self
            .default_url
            .as_deref()
            .map(str::to_string)
            .or_else(|| self.urls.get(permit.policy()).cloned());
        let op = permit.operator();
        let body = serde_json::json!({
            "event": "break_glass_used",
            "request_id": request_id,
            "policy": permit.policy(),
            "action": permit.action().kind.as_str(),
            "managed_device_id": permit.action().managed_device_id,
            "platform": permit.device().operating_system,
            "device_owner": permit.device().user_principal_name,
            "operator": { "oid": op.oid, "upn": op.upn },
            "justification": permit.justification(),
            "time": chrono::Utc::now(),
        })
        .to_string();
        self.post(url, body, permit.policy(), request_id);
    }

    fn post(&self, url: Option<String>, body: String, policy: &str, id: &str) {
        let (Some(client), Some(url)) = (self.client.clone(), url) else {
            return;
        };
        let results = self.results.clone();
        let policy = policy.to_string();
        let id = id.to_string();
        tokio::spawn(async move {
            let req = http::Request::post(url.as_str())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)));
            let outcome = match req {
                Ok(req) => outbound::fetch(&client, req, DELIVERY_TIMEOUT, MAX_ANSWER)
                    .await
                    .map_err(|e| crate::error::chain(&e))
                    .and_then(|resp| {
                        if resp.status.is_success() {
                            Ok(())
                        } else {
                            Err(format!("the webhook answered {}", resp.status))
                        }
                    }),
                Err(_) => Err("the webhook URL is not a valid URI".into()),
            };
            match outcome {
                Ok(()) => results.with_label_values(&["success"]).inc(),
                Err(why) => {
                    results.with_label_values(&["failure"]).inc();
                    // The URL is a secret: name the policy and the approval, not the target.
                    tracing::warn!(policy = %policy, id = %id, error = %why, "webhook notification not delivered");
                }
            }
        });
    }
}
