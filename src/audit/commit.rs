//! The bridge from the typed request lifecycle to audit records: `commit_allow` turns a
//! `Cleared` permit (past limits and the approval step) into the `Authorized` the forwarder demands, `commit_deny` records a refusal. Records are
//! built here from the lifecycle's typed outputs and nothing else. This module must never hand
//! out an `Authorized` for a record that is not durable, nor one for a denial.

use super::record::{Decision, DecisionRecord, DeviceRecord, OperatorRecord, TargetRecord};
use super::{AuditError, AuditLog, AuditReceipt};
use crate::approval::Cleared;
use crate::auth::{Operator, OperatorKind};
use crate::error::Reason;
use crate::lifecycle::{Inbound, Known};
use crate::policy::{DeviceFacts, Permit, RateInfo};
use crate::routes::{Action, RouteForm};
use std::time::Duration;

/// How long a request waits for its decision record to be durable before failing closed: a disk
/// that hangs must not hold requests forever.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a decision record was not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the audit record could not be written")]
    Audit(#[from] AuditError),
    /// The deadline passed while the record's bytes were already being written: it will read
    /// as submitted, so the caller adds an outcome record saying what the client received.
    #[error("the audit record was not durable within {0:?}")]
    Stalled(Duration),
    /// The deadline passed before the writer took the record: it was withdrawn and will be
    /// written as the `503 audit_unavailable` denial the client receives (marked `abandoned`).
    #[error(
        "the audit record was not durable within {0:?}; it was withdrawn and marked abandoned"
    )]
    Abandoned(Duration),
}

impl CommitError {
    /// True if the log will still say, in the request's own decision record, what the client
    /// received (so no further record is needed for it).
    pub fn recorded_as_abandoned(&self) -> bool {
        matches!(self, CommitError::Abandoned(_))
    }

    /// True if the record may still be written as submitted (its bytes were already taken).
    pub fn may_land_as_submitted(&self) -> bool {
        matches!(self, CommitError::Stalled(_))
    }
}

/// Proof that this permit's allow record is durable: the only thing `Forwarder::forward` takes.
/// Private fields; only [`AuditLog::commit_allow`] makes one.
#[derive(Debug)]
pub struct Authorized {
    cleared: Cleared,
    receipt: AuditReceipt,
    client_request_id: String,
}

impl Authorized {
    pub fn permit(&self) -> &Permit {
        self.cleared.permit()
    }
    /// The approval this action used, when its policy asks for one.
    pub fn approval_id(&self) -> Option<&str> {
        self.cleared.approval().map(|a| a.id.as_str())
    }
    pub fn action(&self) -> &Action {
        self.permit().action()
    }
    /// Sequence number of the allow record in the audit chain.
    pub fn seq(&self) -> u64 {
        self.receipt.seq()
    }
    /// Hash of the allow record, as written in its `hash` field.
    pub fn hash(&self) -> &str {
        self.receipt.hash()
    }
    pub fn request_id(&self) -> &str {
        self.receipt.request_id()
    }
    /// The id the forward carries to Graph, so Graph's logs line up with the audit trail.
    pub fn client_request_id(&self) -> &str {
        &self.client_request_id
    }
    pub fn rate(&self) -> Option<&RateInfo> {
        self.permit().rate()
    }
}

/// A permit whose allow record could not be committed; nothing may be forwarded for it.
#[derive(Debug)]
pub struct Uncommitted {
    pub cleared: Cleared,
    pub error: CommitError,
}

/// Proof that a refusal was recorded. It leads nowhere: no forward accepts it.
#[derive(Debug)]
pub struct RecordedDenial {
    seq: u64,
}

impl RecordedDenial {
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// A refusal to record: the reason, the status answered and a message for the operator.
#[derive(Debug, Clone, Copy)]
pub struct DenialNote<'a> {
    pub reason: Reason,
    pub status: u16,
    pub message: &'a str,
}

/// Longest refusal message kept in a record, in bytes.
const MAX_MESSAGE_BYTES: usize = 512;

impl AuditLog {
    /// Makes the allow record of a cleared permit durable, within [`COMMIT_TIMEOUT`].
    pub async fn commit_allow(
        &self,
        inbound: &Inbound,
        cleared: Cleared,
    ) -> Result<Authorized, Box<Uncommitted>> {
        let permit = cleared.permit();
        let mut rec = decision_record(
            inbound,
            Subject {
                action: Some(permit.action()),
                operator: Some(permit.operator()),
                device: Some(permit.device()),
                policy: Some(permit.policy()),
                justification: permit.justification(),
                break_glass: permit.break_glass(),
            },
            Decision::Allow,
            Reason::Allowed,
            None,
            None,
        );
        rec.approval_id = cleared.approval().map(|a| a.id.clone());
        match self.commit(rec).await {
            Ok(receipt) => Ok(Authorized {
                cleared,
                receipt,
                client_request_id: inbound.client_request_id.clone(),
            }),
            Err(error) => Err(Box::new(Uncommitted { cleared, error })),
        }
    }

    /// Makes the record of a refusal durable, within [`COMMIT_TIMEOUT`].
    pub async fn commit_deny(
        &self,
        inbound: &Inbound,
        known: &Known,
        note: DenialNote<'_>,
    ) -> Result<RecordedDenial, CommitError> {
        let message = crate::text::truncated(note.message, MAX_MESSAGE_BYTES).to_string();
        let rec = decision_record(
            inbound,
            Subject {
                action: known.action.as_ref(),
                operator: known.operator.as_ref(),
                device: known.device.as_ref(),
                policy: known.policy.as_deref(),
                justification: known.justification.as_deref(),
                break_glass: known.break_glass,
            },
            Decision::Deny,
            note.reason,
            Some(note.status),
            Some(message),
        );
        let receipt = self.commit(rec).await?;
        Ok(RecordedDenial { seq: receipt.seq() })
    }

    /// Waits up to [`COMMIT_TIMEOUT`] for `rec` to be durable. On timeout the record is
    /// withdrawn if the writer has not taken it yet (it is then written marked abandoned, as the
    /// 503 the client gets); a record given up on is never written as an allow unannounced.
    pub(crate) async fn commit(&self, rec: DecisionRecord) -> Result<AuditReceipt, CommitError> {
        let (ticket, written) = self.record_decision_abandonable(rec)?;
        match tokio::time::timeout(COMMIT_TIMEOUT, written).await {
            Ok(written) => Ok(written?),
            Err(_) if ticket.abandon() => Err(CommitError::Abandoned(COMMIT_TIMEOUT)),
            Err(_) => Err(CommitError::Stalled(COMMIT_TIMEOUT)),
        }
    }

    /// After a [`CommitError::Stalled`] commit: an outcome record (same `request_id`) saying
    /// the client got `503 audit_unavailable` and nothing was forwarded, so the decision record
    /// that lands later does not read as a served allow. Spawned: the disk may still hang.
    pub fn note_abandoned(&self, request_id: &str) {
        let log = self.clone();
        let outcome = super::OutcomeRecord {
            request_id: request_id.to_string(),
            status: Reason::AuditUnavailable.status().as_u16(),
            graph_request_id: None,
            latency_ms: f64::NAN,
            error: Some(Reason::AuditUnavailable.as_str().to_string()),
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = log.record_outcome(outcome).await {
                    tracing::error!(error = %crate::error::chain(&e), "audit outcome for an abandoned decision not written");
                }
            });
        }
    }
}

/// What a decision record says the request was about.
struct Subject<'a> {
    action: Option<&'a Action>,
    operator: Option<&'a Operator>,
    device: Option<&'a DeviceFacts>,
    policy: Option<&'a str>,
    justification: Option<&'a str>,
    break_glass: bool,
}

fn decision_record(
    inbound: &Inbound,
    about: Subject<'_>,
    decision: Decision,
    reason: Reason,
    status: Option<u16>,
    message: Option<String>,
) -> DecisionRecord {
    DecisionRecord {
        request_id: inbound.request_id.clone(),
        client_request_id: Some(inbound.client_request_id.clone()),
        client_ip: inbound.conn.client_ip.to_string(),
        client_cert_subject: inbound.conn.client_cert_subject.clone(),
        method: inbound.method.clone(),
        path: inbound.path.clone(),
        action: about.action.map(|a| a.kind.as_str().to_string()),
        api_version: about.action.map(|a| a.version.as_str().to_string()),
        operator: about.operator.map(operator_record),
        target: about.action.map(target_record),
        device: about.device.map(device_record),
        decision,
        reason: reason.as_str().to_string(),
        policy: about.policy.map(str::to_string),
        status,
        message,
        abandoned: None,
        approval_id: None,
        report: inbound
            .report
            .get()
            .map(|v| {
                v.iter()
                    .map(|r| super::record::ReportRecord {
                        policy: r.policy.clone(),
                        decision: r.decision.to_string(),
                        reason: r.reason.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        // Bounded where it is read (policy::controls); bounded again here, on a character
        // boundary, so no path can put more into a record.
        justification: about.justification.map(|j| {
            crate::text::truncated(j, crate::policy::controls::MAX_JUSTIFICATION_BYTES).to_string()
        }),
        break_glass: about.break_glass,
        inputs: inbound.inputs.get().cloned(),
    }
}

fn operator_record(o: &Operator) -> OperatorRecord {
    OperatorRecord {
        oid: o.oid.clone(),
        tid: o.tid.clone(),
        upn: o.upn.clone(),
        kind: match o.kind {
            OperatorKind::User => "user".into(),
            OperatorKind::App => "app".into(),
        },
        client_app_id: o.client_app_id.clone(),
    }
}

fn target_record(a: &Action) -> TargetRecord {
    TargetRecord {
        managed_device_id: a.managed_device_id.clone(),
        route_form: a.form.label().to_string(),
        user_id: match &a.form {
            RouteForm::User { user_id } => Some(user_id.clone()),
            _ => None,
        },
        detected_app_id: match &a.form {
            RouteForm::DetectedApp { detected_app_id } => Some(detected_app_id.clone()),
            _ => None,
        },
    }
}

fn device_record(f: &DeviceFacts) -> DeviceRecord {
    DeviceRecord {
        azure_ad_device_id: f.azure_ad_device_id.clone(),
        device_object_id: f.device_object_id.clone(),
        operating_system: f.operating_system.clone(),
        user_principal_name: f.user_principal_name.clone(),
        user_id: f.user_id.clone(),
        member_of: f.member_of.iter().cloned().collect(),
    }
}
