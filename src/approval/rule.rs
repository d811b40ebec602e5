//! A policy's approval rule as validated by `config::load`: who may approve, for how long an
//! approval holds, where new requests are announced. Plain data; it must never resolve the
//! webhook secret or match anything but an authenticated approver.

use crate::auth::Operator;
use crate::config::SecretRef;
use std::collections::BTreeSet;
use std::time::Duration;

/// Who may approve: same shape and matching as a policy's `operators`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ApproverSet {
    /// Object ids (`oid`), lower-case.
    pub users: BTreeSet<String>,
    /// Group object ids, lower-case, matched against the token's `groups`.
    pub groups: BTreeSet<String>,
    /// App role values, matched against the token's `roles`.
    pub app_roles: BTreeSet<String>,
}

impl ApproverSet {
    pub fn matches(&self, op: &Operator) -> bool {
        self.users.contains(&op.oid.to_ascii_lowercase())
            || op
                .groups
                .iter()
                .any(|g| self.groups.contains(&g.to_ascii_lowercase()))
            || op.roles.iter().any(|r| self.app_roles.contains(r))
    }
}

/// `approval:` of one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRule {
    pub approvers: ApproverSet,
    /// How long a granted approval can be used.
    pub valid_for: Duration,
    /// How long a request waits for an approver.
    pub pending_for: Duration,
    /// The webhook URL's reference (`env:`/`file:`), resolved when the gateway is built.
    pub webhook: Option<SecretRef>,
}
