//! Two-person approval: a policy with `approval:` admits a request only with an approval that a
//! second person granted for exactly that (operator, device, action, policy), used once. It is
//! the step between `Permit` and the audit commit: [`Approvals::clear`] is the only maker of a
//! [`Cleared`], the one thing `AuditLog::commit_allow` takes. It must never let a request through
//! on an approval that is not `approved`, unexpired and unused, nor let anyone approve their own.
//!
//! Modules: [`rule`] (who may approve, how long) · [`state`] (the pure life of one request) ·
//! [`store`] (memory; Redis is `state::redis`) · `api` (the `/passgate/v1/approvals` endpoints) ·
//! [`notify`] (webhook) · [`cli`] (`passgate approvals …`).

pub mod api;
pub mod cli;
pub mod notify;
pub mod rule;
pub mod state;
pub mod store;

pub use rule::{ApprovalRule, ApproverSet};
pub use state::{ApprovalRequest, Found, Person, State};

use crate::audit::{ApprovalRecord, AuditLog};
use crate::auth::Operator;
use crate::error::Reason;
use crate::lifecycle::Inbound;
use crate::policy::limiter::StoreError;
use crate::policy::{Candidate, Permit};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use store::ApprovalStore;

/// Longest approver comment kept, in bytes.
pub const MAX_COMMENT_BYTES: usize = 1024;
/// Compare-and-set retries before a busy request is reported as unavailable.
const CAS_TRIES: usize = 5;

/// A permit that passed the approval step: approved and used (its policy has `approval:`) or
/// not subject to approval. Private fields: only [`Approvals::clear`] makes one.
#[derive(Debug)]
pub struct Cleared {
    permit: Permit,
    approval: Option<UsedApproval>,
}

/// The approval a request used.
#[derive(Debug, Clone)]
pub struct UsedApproval {
    pub id: String,
    pub approver: Option<Person>,
}

impl Cleared {
    pub fn permit(&self) -> &Permit {
        &self.permit
    }
    pub fn approval(&self) -> Option<&UsedApproval> {
        self.approval.as_ref()
    }
    /// The permit back, for the record of a refusal further on (it proves no approval).
    pub fn into_permit(self) -> Permit {
        self.permit
    }
}

/// What the screen before the limits found.
#[derive(Debug)]
pub enum Screened {
    /// The policy does not ask for approval.
    NotRequired,
    /// An approved, unused approval exists: used after the limits admit.
    Approved(String),
}

/// A refusal by the approval step: reason, message, and the request it concerns.
#[derive(Debug)]
pub struct ApprovalDenial {
    pub reason: Reason,
    pub message: String,
    pub approval_id: Option<String>,
}

impl ApprovalDenial {
    fn new(reason: Reason, message: impl Into<String>, id: Option<&str>) -> Box<ApprovalDenial> {
        Box::new(ApprovalDenial {
            reason,
            message: message.into(),
            approval_id: id.map(str::to_string),
        })
    }

    fn unavailable(e: &StoreError) -> Box<ApprovalDenial> {
        tracing::error!(error = %e, "approval state unavailable; refusing (fail closed)");
        ApprovalDenial::new(
            Reason::LimitsUnavailable,
            "approval state could not be read or written; nothing was forwarded, retry later",
            None,
        )
    }
}

/// Approval events, for metrics and records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Requested,
    Approved,
    Denied,
    Expired,
    Consumed,
    /// An approve or deny that was not taken (self-approval, not an approver, not pending).
    Refused,
}

impl Event {
    pub const ALL: [Event; 6] = [
        Event::Requested,
        Event::Approved,
        Event::Denied,
        Event::Expired,
        Event::Consumed,
        Event::Refused,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Requested => "requested",
            Event::Approved => "approved",
            Event::Denied => "denied",
            Event::Expired => "expired",
            Event::Consumed => "consumed",
            Event::Refused => "refused",
        }
    }
}

/// The approval step of one gateway (rules from its config; store and audit log shared).
pub struct Approvals {
    /// Seconds added to the wall clock: moved only by tests (`advance_clock`).
    clock_offset: std::sync::atomic::AtomicI64,
    store: Arc<dyn ApprovalStore>,
    rules: BTreeMap<String, ApprovalRule>,
    audit: AuditLog,
    events: prometheus::IntCounterVec,
    notifier: notify::Notifier,
}

/// The store key of (operator, device, action, policy): a hash, so no id shape reaches a key.
fn request_key(oid: &str, device: &str, action: &str, policy: &str) -> String {
    let text = format!(
        "{}\n{}\n{action}\n{policy}",
        oid.to_ascii_lowercase(),
        device.to_ascii_lowercase()
    );
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn person(op: &Operator) -> Person {
    Person {
        oid: op.oid.to_ascii_lowercase(),
        upn: op.upn.clone(),
    }
}

/// The audit record of one approval event.
pub fn approval_record(
    event: Event,
    r: &ApprovalRequest,
    request_id: Option<&str>,
    actor: Option<&Person>,
    reason: Option<&str>,
) -> ApprovalRecord {
    let who = |p: &Person| crate::audit::ApprovalPerson {
        oid: p.oid.clone(),
        upn: p.upn.clone(),
    };
    let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    ApprovalRecord {
        event: event.as_str().to_string(),
        approval_id: r.id.clone(),
        request_id: request_id.map(str::to_string),
        policy: r.policy.clone(),
        action: r.action.clone(),
        managed_device_id: r.managed_device_id.clone(),
        requester: who(&r.requester),
        actor: actor.map(who),
        comment: r
            .comment
            .clone()
            .filter(|_| matches!(event, Event::Approved | Event::Denied)),
        reason: reason.map(str::to_string),
        state: r.state.as_str().to_string(),
        pending_until: at(r.pending_until),
        valid_until: r.valid_until.map(at),
    }
}

fn parse(json: &str) -> Option<ApprovalRequest> {
    serde_json::from_str(json).ok()
}

impl Approvals {
    pub fn new(
        store: Arc<dyn ApprovalStore>,
        rules: BTreeMap<String, ApprovalRule>,
        audit: AuditLog,
        events: prometheus::IntCounterVec,
        notifier: notify::Notifier,
    ) -> Approvals {
        Approvals {
            clock_offset: std::sync::atomic::AtomicI64::new(0),
            store,
            rules,
            audit,
            events,
            notifier,
        }
    }

    /// The approval step's clock: the wall clock (plus a test's offset).
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now()
            + chrono::Duration::seconds(
                self.clock_offset.load(std::sync::atomic::Ordering::Relaxed),
            )
    }

    /// Moves this gateway's approval clock forward, so tests can let requests expire.
    #[cfg(any(test, feature = "test-support"))]
    #[doc(hidden)]
    pub fn advance_clock(&self, seconds: i64) {
        self.clock_offset
            .fetch_add(seconds, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn rule(&self, policy: &str) -> Option<&ApprovalRule> {
        self.rules.get(policy)
    }

    pub fn notifier(&self) -> &notify::Notifier {
        &self.notifier
    }

    /// Whether `op` is among the approvers of any policy (the console's approver role).
    pub fn is_any_approver(&self, op: &Operator) -> bool {
        self.rules.values().any(|r| r.approvers.matches(op))
    }

    pub fn store(&self) -> &Arc<dyn ApprovalStore> {
        &self.store
    }

    /// Writes one approval event in the chain (durable before the caller answers) and counts it.
    async fn record(
        &self,
        event: Event,
        r: &ApprovalRequest,
        request_id: Option<&str>,
        actor: Option<&Person>,
        reason: Option<&str>,
    ) -> Result<(), Box<ApprovalDenial>> {
        self.events.with_label_values(&[event.as_str()]).inc();
        let rec = approval_record(event, r, request_id, actor, reason);
        self.audit.record_approval(rec).await.map_err(|e| {
            tracing::error!(error = %crate::error::chain(&e), "audit write failed for an approval event; refusing (fail closed)");
            ApprovalDenial::new(
                Reason::AuditUnavailable,
                "the audit log cannot be written; nothing was forwarded",
                Some(&r.id),
            )
        })
    }

    /// Before the limits: does this candidate's policy need an approval, and is one usable? With
    /// none, opens a request (or reports the open one) and refuses; nothing is forwarded.
    pub async fn screen(
        &self,
        inbound: &Inbound,
        c: &Candidate,
        now: DateTime<Utc>,
    ) -> Result<Screened, Box<ApprovalDenial>> {
        let Some(rule) = self.rules.get(c.policy()) else {
            return Ok(Screened::NotRequired);
        };
        let op = c.operator();
        let action = c.action();
        let device = &action.managed_device_id;
        let key = request_key(&op.oid, device, action.kind.as_str(), c.policy());
        for _ in 0..CAS_TRIES {
            let current = self
                .store
                .current(&key)
                .await
                .map_err(|e| ApprovalDenial::unavailable(&e))?;
            let parsed = current
                .as_ref()
                .and_then(|(id, j)| parse(j).map(|r| (id.clone(), j.clone(), r)));
            let found = parsed
                .as_ref()
                .map(|(_, _, r)| r.found_by_attempt(now))
                .unwrap_or(Found::Nothing);
            match (found, &parsed) {
                (Found::Usable, Some((id, _, _))) => return Ok(Screened::Approved(id.clone())),
                (Found::Pending, Some((id, _, r))) => {
                    return Err(ApprovalDenial::new(
                        Reason::ApprovalPending,
                        format!(
                            "approval {id} for this action is still waiting for an approver (until {}); nothing was forwarded",
                            r.pending_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        ),
                        Some(id),
                    ))
                }
                (Found::Denied | Found::Expired, Some((id, json, r))) => {
                    let closed = r.closed_at(now);
                    let Ok(new) = serde_json::to_string(&closed) else {
                        break;
                    };
                    if !self
                        .store
                        .replace(id, json, &new)
                        .await
                        .map_err(|e| ApprovalDenial::unavailable(&e))?
                    {
                        continue;
                    }
                    let (reason, what) = if found == Found::Denied {
                        (Reason::ApprovalDenied, "was denied")
                    } else {
                        self.record(Event::Expired, &closed, Some(&inbound.request_id), None, None)
                            .await?;
                        (Reason::ApprovalExpired, "expired before it was used")
                    };
                    return Err(ApprovalDenial::new(
                        reason,
                        format!("approval {id} {what}; call again to request a new approval"),
                        Some(id),
                    ));
                }
                _ => {
                    let expected = current.as_ref().map(|(id, _)| id.as_str());
                    let r = self.open(inbound, c, rule, now);
                    let Ok(json) = serde_json::to_string(&r) else {
                        break;
                    };
                    let created = self
                        .store
                        .create(&key, expected, &r.id, &json, now.timestamp_millis())
                        .await
                        .map_err(|e| ApprovalDenial::unavailable(&e))?;
                    if !created {
                        continue;
                    }
                    self.record(Event::Requested, &r, Some(&inbound.request_id), None, None)
                        .await?;
                    self.notifier.requested(c.policy(), &r);
                    return Err(ApprovalDenial::new(
                        Reason::ApprovalRequired,
                        format!(
                            "policy '{}' needs a second person's approval for this action: approval {} was requested; call again once it is approved (it waits until {})",
                            c.policy(),
                            r.id,
                            r.pending_until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        ),
                        Some(&r.id),
                    ));
                }
            }
        }
        Err(ApprovalDenial::new(
            Reason::LimitsUnavailable,
            "the approval state changed under this request too often; retry",
            None,
        ))
    }

    fn open(
        &self,
        inbound: &Inbound,
        c: &Candidate,
        rule: &ApprovalRule,
        now: DateTime<Utc>,
    ) -> ApprovalRequest {
        let pending =
            chrono::Duration::from_std(rule.pending_for).unwrap_or(chrono::Duration::zero());
        ApprovalRequest {
            id: uuid::Uuid::new_v4().to_string(),
            state: State::Pending,
            policy: c.policy().to_string(),
            action: c.action().kind.as_str().to_string(),
            managed_device_id: c.action().managed_device_id.clone(),
            platform: c.device().operating_system.clone(),
            device_owner: c.device().user_principal_name.clone(),
            requester: person(c.operator()),
            justification: c.justification().map(str::to_string),
            opened_by_request: inbound.request_id.clone(),
            created_at: now,
            pending_until: now + pending,
            decided_by: None,
            decided_at: None,
            comment: None,
            valid_until: None,
            consumed_at: None,
            consumed_by_request: None,
            closed: false,
        }
    }

    /// After the limits: uses the approval the screen found (one use; a concurrent request that
    /// got there first wins) and hands the permit on. The `consumed` event is durable first.
    pub async fn clear(
        &self,
        inbound: &Inbound,
        permit: Permit,
        screened: Screened,
        now: DateTime<Utc>,
    ) -> Result<Cleared, (Permit, Box<ApprovalDenial>)> {
        let id = match screened {
            Screened::NotRequired if !self.rules.contains_key(permit.policy()) => {
                return Ok(Cleared {
                    permit,
                    approval: None,
                })
            }
            // The rules changed between screen and clear (reload): screen again next time.
            Screened::NotRequired => return Err((
                permit,
                ApprovalDenial::new(
                    Reason::ApprovalRequired,
                    "the policy configuration changed while this request was being checked; retry",
                    None,
                ),
            )),
            Screened::Approved(id) => id,
        };
        for _ in 0..CAS_TRIES {
            let json = match self.store.get(&id).await {
                Ok(Some(j)) => j,
                Ok(None) => break,
                Err(e) => return Err((permit, ApprovalDenial::unavailable(&e))),
            };
            let Some(r) = parse(&json) else { break };
            let Ok(used) = r.used(&inbound.request_id, now) else {
                break;
            };
            let Ok(new) = serde_json::to_string(&used) else {
                break;
            };
            match self.store.replace(&id, &json, &new).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => return Err((permit, ApprovalDenial::unavailable(&e))),
            }
            if let Err(d) = self
                .record(
                    Event::Consumed,
                    &used,
                    Some(&inbound.request_id),
                    None,
                    None,
                )
                .await
            {
                let _ = self.give_back_id(&id, &inbound.request_id).await;
                return Err((permit, d));
            }
            return Ok(Cleared {
                permit,
                approval: Some(UsedApproval {
                    id,
                    approver: used.decided_by,
                }),
            });
        }
        Err((
            permit,
            ApprovalDenial::new(
                Reason::ApprovalRequired,
                format!("approval {id} was used or withdrawn by another request just now; call again to request a new approval"),
                Some(&id),
            ),
        ))
    }

    /// Gives an approval back after its allow record could not be written (nothing was
    /// forwarded): usable again until it expires.
    pub async fn give_back(&self, cleared: &Cleared, request_id: &str) {
        if let Some(a) = &cleared.approval {
            let _ = self.give_back_id(&a.id, request_id).await;
        }
    }

    async fn give_back_id(&self, id: &str, request_id: &str) -> Result<(), StoreError> {
        for _ in 0..CAS_TRIES {
            let Some(json) = self.store.get(id).await? else {
                return Ok(());
            };
            let Some(back) = parse(&json).and_then(|r| r.unused(request_id)) else {
                return Ok(());
            };
            let Ok(new) = serde_json::to_string(&back) else {
                return Ok(());
            };
            if self.store.replace(id, &json, &new).await? {
                return Ok(());
            }
        }
        Ok(())
    }
}
