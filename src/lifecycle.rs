//! The request lifecycle as a chain of proofs. Each step consumes the previous step's output and
//! is the only place the next one can be made (private fields, no public constructors):
//!
//! ```text
//! routes::parse ─▶ Action
//! Authenticator::authenticate ─▶ Operator
//! PolicySet::decide(screen, action, operator, facts, request) ─▶ Candidate {action, operator, device, policy, …}
//! RateLimiter::admit(Candidate, request id).await ─▶ Permit {candidate, rate}
//!     (a WindowStore — memory or Redis — checks and consumes the windows; only the limiter
//!      turns its answer into a Permit, and a store that cannot answer is a refusal)
//! Approvals::clear(&Inbound, Permit, Screened).await ─▶ Cleared {permit, approval}
//!     (a policy with `approval:` needs an approved, unexpired, unused approval for exactly this
//!      operator, device, action and policy; `Approvals::screen` looked for it before the limits,
//!      `clear` uses it — once; a policy without one passes straight through)
//! AuditLog::commit_allow(&Inbound, Cleared) ─▶ Authorized {cleared, seq, hash}
//! Forwarder::forward(Authorized) ─▶ Graph's answer
//! ```
//!
//! A refusal at any step becomes a [`Known`] (what the request had established by then) that
//! `AuditLog::commit_deny` records as a `RecordedDenial`, which no forward accepts. This module
//! only holds the plain request facts the steps share; it must never decide or do I/O.
//!
//! The proofs cannot be forged outside their step (these examples must fail to compile):
//!
//! ```compile_fail,E0451
//! // A Permit has private fields: only RateLimiter::admit makes one.
//! let p = passgate::policy::Permit { candidate: todo!(), rate: None };
//! ```
//!
//! ```compile_fail,E0451
//! // An Authorized has private fields: only AuditLog::commit_allow makes one.
//! let a = passgate::audit::Authorized {
//!     cleared: todo!(), receipt: todo!(), client_request_id: String::new(),
//! };
//! ```
//!
//! ```compile_fail,E0451
//! // A Cleared has private fields: only Approvals::clear makes one.
//! let c = passgate::approval::Cleared { permit: todo!(), approval: None };
//! ```
//!
//! ```compile_fail,E0308
//! // The audit commit takes a Cleared, not a Permit: the approval step cannot be skipped.
//! async fn skip_approval(
//!     log: &passgate::audit::AuditLog,
//!     i: &passgate::lifecycle::Inbound,
//!     p: passgate::policy::Permit,
//! ) {
//!     let _ = log.commit_allow(i, p).await;
//! }
//! ```
//!
//! ```compile_fail,E0308
//! // The forwarder takes an Authorized, not a Permit.
//! async fn skip_audit(f: &passgate::graph::forward::Forwarder, p: passgate::policy::Permit) {
//!     let _ = f.forward(p).await;
//! }
//! ```
//!
//! ```compile_fail,E0308
//! // A recorded denial leads nowhere.
//! async fn forward_denial(
//!     f: &passgate::graph::forward::Forwarder,
//!     d: passgate::audit::RecordedDenial,
//! ) {
//!     let _ = f.forward(d).await;
//! }
//! ```
//!
//! ```compile_fail,E0451
//! // A Candidate has private fields: only PolicySet::decide makes one.
//! let c = passgate::policy::Candidate {
//!     action: todo!(), operator: todo!(), device: todo!(),
//!     policy: String::new(), limits: vec![], caps: vec![],
//!     justification: None, break_glass: true,
//! };
//! ```

use crate::auth::Operator;
use crate::policy::{Candidate, DeviceFacts, Permit};
use crate::routes::Action;
use std::net::IpAddr;

/// What the listener knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client address passgate trusts (the TCP peer unless configured otherwise).
    pub client_ip: IpAddr,
    /// Subject of a verified mTLS client certificate.
    pub client_cert_subject: Option<String>,
}

impl From<IpAddr> for ConnInfo {
    fn from(client_ip: IpAddr) -> ConnInfo {
        ConnInfo {
            client_ip,
            client_cert_subject: None,
        }
    }
}

/// The request as it arrived, reduced to what the audit trail and the answer need. Built before
/// anything is checked; holds no credential (the query string is redacted, headers are not kept).
#[derive(Debug, Clone)]
pub struct Inbound {
    /// passgate's id for this request (a fresh UUID): `request-id` in the answer and the audit.
    pub request_id: String,
    /// The operator's `client-request-id` if it was a GUID, else `request_id`.
    pub client_request_id: String,
    pub conn: ConnInfo,
    /// The method, truncated to 16 bytes.
    pub method: String,
    /// The target path, query redacted, truncated to 2 KiB.
    pub path: String,
    /// What the `mode: report` policies would have decided, once the decision step ran (set at
    /// most once; recorded with the request's decision, never used to decide).
    pub report: std::sync::OnceLock<Vec<crate::policy::ReportVerdict>>,
    /// What the decision used beyond the operator, device and justification (the groups and
    /// roles looked for, the device groups asked about), once the operator screen ran (set at
    /// most once; recorded with the decision so `policy replay` can re-decide it).
    pub inputs: std::sync::OnceLock<crate::audit::InputsRecord>,
}

/// What a request had established when it was refused; each field is set by the step that
/// produced it. Recorded with the denial; never a way forward.
#[derive(Debug, Default)]
pub struct Known {
    pub action: Option<Action>,
    pub operator: Option<Operator>,
    pub device: Option<DeviceFacts>,
    /// The policy whose refusal is reported, when one is.
    pub policy: Option<String>,
    /// What the operator stated in `Passgate-Justification`, once the decision read it.
    pub justification: Option<String>,
    /// The policy named is a break-glass policy.
    pub break_glass: bool,
}

impl Known {
    pub fn routed(action: Action) -> Known {
        Known {
            action: Some(action),
            ..Known::default()
        }
    }

    pub fn authenticated(action: Action, operator: Operator) -> Known {
        Known {
            action: Some(action),
            operator: Some(operator),
            ..Known::default()
        }
    }
}

impl From<Candidate> for Known {
    fn from(c: Candidate) -> Known {
        let justification = c.justification().map(str::to_string);
        let break_glass = c.break_glass();
        let (action, operator, device, policy) = c.into_parts();
        Known {
            action: Some(action),
            operator: Some(operator),
            device: Some(device),
            policy: Some(policy),
            justification,
            break_glass,
        }
    }
}

impl From<Permit> for Known {
    fn from(p: Permit) -> Known {
        Known::from(p.into_candidate())
    }
}
