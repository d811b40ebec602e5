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
    results: prometheus::IntCounterVec,
}

impl Notifier {
    pub fn new(
        client: HttpsClient,
        urls: BTreeMap<String, String>,
        results: prometheus::IntCounterVec,
    ) -> Notifier {
        Notifier {
            client: Some(client),
            urls: Arc::new(urls),
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
            "created_at": r.created_at,
            "pending_until": r.pending_until,
        })
    }

    /// Announces a new pending request of `policy`, if it has a webhook. Returns at once.
    pub fn requested(&self, policy: &str, r: &ApprovalRequest) {
        let (Some(client), Some(url)) = (self.client.clone(), self.urls.get(policy).cloned())
        else {
            return;
        };
        let body = Notifier::summary("approval_requested", r).to_string();
        let results = self.results.clone();
        let policy = policy.to_string();
        let id = r.id.clone();
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
                    tracing::warn!(policy = %policy, approval_id = %id, error = %why, "approval notification not delivered");
                }
            }
        });
    }
}

impl Default for Notifier {
    /// No webhooks (tests, policies without `notify`).
    fn default() -> Notifier {
        Notifier {
            client: None,
            urls: Arc::default(),
            results: prometheus::IntCounterVec::new(
                prometheus::Opts::new("unused_notifications_total", "unused"),
                &["result"],
            )
            .expect("static metric definition"),
        }
    }
}
