//! Typed audit records: the plain data the rest of passgate hands to the audit writer.
//! These structs carry only ids, names and outcomes as strings; they must never carry a token,
//! a secret or anything from policy internals or hyper.

use serde::{Deserialize, Serialize};

/// The policy's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

/// Who called passgate, as established from their token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorRecord {
    pub oid: String,
    pub tid: String,
    pub upn: Option<String>,
    /// `"user"` or `"app"`.
    pub kind: String,
    pub client_app_id: Option<String>,
}

/// What the request was aimed at, as parsed from the route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub managed_device_id: String,
    pub route_form: String,
    pub user_id: Option<String>,
    pub detected_app_id: Option<String>,
}

/// The device facts the policy decided on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub azure_ad_device_id: Option<String>,
    pub device_object_id: Option<String>,
    pub operating_system: String,
    pub user_principal_name: Option<String>,
    pub user_id: Option<String>,
    pub member_of: Vec<String>,
}

/// One line per request that reached passgate, allowed or denied. Written (and fsynced) before
/// anything is forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub request_id: String,
    pub client_request_id: Option<String>,
    pub client_ip: String,
    /// Subject of the client's TLS certificate when the listener requires mTLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_subject: Option<String>,
    pub method: String,
    /// The path as received; the writer truncates it to [`MAX_PATH_BYTES`] on a char boundary.
    pub path: String,
    pub action: Option<String>,
    pub api_version: Option<String>,
    pub operator: Option<OperatorRecord>,
    pub target: Option<TargetRecord>,
    pub device: Option<DeviceRecord>,
    pub decision: Decision,
    pub reason: String,
    pub policy: Option<String>,
    /// What the `mode: report` policies would have decided (absent when none is configured or
    /// the request was refused before the decision).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub report: Vec<ReportRecord>,
    /// The two-person approval an allow used (policies with `approval:`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// HTTP status returned for a deny; `None` for an allow.
    pub status: Option<u16>,
    pub message: Option<String>,
    /// Set only on a record the pipeline gave up on (its audit deadline passed before the writer
    /// took it): `decision`, `reason` and `status` above then say what the client received
    /// (`deny`, `audit_unavailable`, 503) and this keeps what had been decided. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandoned: Option<AbandonedDecision>,
    /// What the operator stated in the `Passgate-Justification` header (trimmed, at most 256
    /// bytes, never control characters); null when none was sent or it could not be recorded as
    /// sent. Caller-controlled text. Absent from records written before passgate recorded it.
    #[serde(default)]
    pub justification: Option<String>,
    /// The policy named in `policy` is a `break_glass: true` policy: on an allow, a break-glass
    /// use. Absent (false) in records written before passgate recorded it.
    #[serde(default)]
    pub break_glass: bool,
    /// What the decision used that the fields above do not say (record version 2), so that
    /// `passgate policy replay` can decide the request again. Set once the request reached the
    /// operator screen; absent on earlier refusals and in version 1 records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<InputsRecord>,
}

/// The inputs of a policy decision beyond operator, target, device, justification and time: which
/// of the operator's groups and app roles any policy names (never the token's full list, its
/// scopes or anything secret), which device groups Graph was asked about, and what the device
/// lookup and the justification header came to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputsRecord {
    /// Every group some policy (enforced or `mode: report`) names as an operator group: the ones
    /// passgate looked for in the token. Sorted, lower case.
    pub operator_groups_checked: Vec<String>,
    /// The subset of `operator_groups_checked` the token carried.
    pub operator_groups: Vec<String>,
    /// Every app role some policy names. Sorted; exact strings.
    pub operator_roles_checked: Vec<String>,
    /// The subset of `operator_roles_checked` the token carried.
    pub operator_roles: Vec<String>,
    /// The token did not list the operator's groups (more than Entra puts in a token).
    pub groups_overage: bool,
    /// The device groups Graph was asked about (sorted); the device's memberships among them are
    /// `device.member_of`. Empty when the device was not looked up.
    pub device_groups_checked: Vec<String>,
    /// What the device lookup came to: `found`, `not_found`, `unavailable`, `lookup_budget`
    /// (the operator's lookup budget refused it; Graph was not asked), `app_token_unavailable`,
    /// or `not_read` (refused at the operator screen; Graph was not asked).
    pub device_facts: String,
    /// Why the `Passgate-Justification` header could not be taken as a statement, when it could
    /// not: `repeated`, `not_utf8`, `too_long` or `control_character`. Null when it was absent or
    /// well-formed (then `justification` says which), or when the decision did not read it.
    pub justification_malformed: Option<String>,
}

impl InputsRecord {
    /// [`InputsRecord::device_facts`] values.
    pub const FACTS_FOUND: &'static str = "found";
    pub const FACTS_NOT_FOUND: &'static str = "not_found";
    pub const FACTS_UNAVAILABLE: &'static str = "unavailable";
    pub const FACTS_LOOKUP_BUDGET: &'static str = "lookup_budget";
    pub const FACTS_APP_TOKEN: &'static str = "app_token_unavailable";
    pub const FACTS_NOT_READ: &'static str = "not_read";
}

/// What a decision record said before the pipeline gave up waiting for it to be durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbandonedDecision {
    pub decision: Decision,
    pub reason: String,
    pub status: Option<u16>,
}

impl DecisionRecord {
    /// The record as written once the pipeline gave up on it: it reads as the `503
    /// audit_unavailable` denial the client received, never as what had been decided.
    pub fn abandoned(mut self) -> DecisionRecord {
        self.abandoned = Some(AbandonedDecision {
            decision: self.decision,
            reason: std::mem::take(&mut self.reason),
            status: self.status,
        });
        self.decision = Decision::Deny;
        self.reason = crate::error::Reason::AuditUnavailable.as_str().to_string();
        self.status = Some(crate::error::Reason::AuditUnavailable.status().as_u16());
        self.message =
            Some("the audit record was not durable in time; nothing was forwarded".into());
        self
    }
}

/// What happened after an allowed request was forwarded; tied to its decision by `request_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub request_id: String,
    pub status: u16,
    pub graph_request_id: Option<String>,
    /// Non-finite values serialise as `null`.
    pub latency_ms: f64,
    pub error: Option<String>,
}

/// Written by the writer itself when it cut a torn tail off the file at open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryRecord {
    /// Always `"torn_tail"` for now.
    pub reason: String,
    /// How many bytes followed the last complete line and were cut.
    pub cut_bytes: u64,
    /// Hex SHA-256 of the cut bytes.
    pub cut_sha256: String,
    /// File name (same directory as the log) the cut bytes were copied to.
    pub side_file: String,
}

/// A report-mode policy's verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRecord {
    pub policy: String,
    /// `allow` or `deny`.
    pub decision: String,
    /// `allowed` or the reason code it would have refused with.
    pub reason: String,
}

/// Someone named in an approval record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalPerson {
    pub oid: String,
    pub upn: Option<String>,
}

/// One step in the life of a two-person approval (`kind: approval`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// `requested`, `approved`, `denied`, `expired`, `consumed` or `refused` (an approve or deny
    /// that was not taken; `reason` says why).
    pub event: String,
    pub approval_id: String,
    /// The gateway request that opened, found expired or used the approval.
    pub request_id: Option<String>,
    pub policy: String,
    pub action: String,
    pub managed_device_id: String,
    pub requester: ApprovalPerson,
    /// Who approved, denied or tried to (absent for the requester's own steps).
    pub actor: Option<ApprovalPerson>,
    pub comment: Option<String>,
    pub reason: Option<String>,
    /// The request's state after this event.
    pub state: String,
    pub pending_until: String,
    pub valid_until: Option<String>,
}

/// Refusals before authentication that were answered `429 unauthenticated_throttled`, or requests
/// shed at the request cap (`503 gateway_busy`), without a record of their own (see
/// [`crate::flood`]): one per client and reason per summary interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottledRecord {
    /// The client address after `trusted_proxies` resolution; an IPv6 client as its `/64`;
    /// `*` for clients past the table's bound.
    pub client_ip: String,
    /// The refusal each would have been, e.g. `token_malformed`, `route_not_found`; `gateway_busy`
    /// for requests shed at the request cap.
    pub reason: String,
    /// What each client got: 429 (503 for `gateway_busy`) …
    pub status: u16,
    /// … with this code (`unauthenticated_throttled`, or `gateway_busy`).
    pub answered: String,
    /// How many requests this record stands for.
    pub count: u64,
    /// When the first and the last of them arrived (RFC 3339 UTC, milliseconds).
    pub first_time: String,
    pub last_time: String,
}

/// One action in the web console (`kind: console`): a sign-in, sign-out, approve, deny or export,
/// taken or refused. It names the person and a hash of their session, never the session id, a
/// token or an authorization code. An approve or deny also has its `approval` record (written
/// first, by the same code path as the API); this one ties it to the console session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleRecord {
    /// `sign_in`, `sign_out`, `approve`, `deny` or `export`.
    pub event: String,
    /// `ok` (taken) or `refused`.
    pub result: String,
    /// Why it was refused (e.g. `no_console_role`, `csrf_token_invalid`); `None` when taken.
    pub reason: Option<String>,
    /// Who, from their validated ID token; `None` when the sign-in failed before that.
    pub person: Option<ApprovalPerson>,
    /// Hex SHA-256 of the session id (first 32 hex digits): matches one session's records.
    pub session: Option<String>,
    /// The browser's address after `trusted_proxies` resolution.
    pub client_ip: String,
    /// The approval an approve or deny was about.
    pub approval_id: Option<String>,
    /// Event details as text: an export's filters and row count, a sign-in's roles.
    pub details: std::collections::BTreeMap<String, String>,
}

/// Longest `path` kept in a decision line, in bytes.
pub const MAX_PATH_BYTES: usize = 2048;
