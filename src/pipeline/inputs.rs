//! The `inputs` of a decision record (audit record version 2): which of the operator's groups and
//! app roles the policies name, which device groups Graph was asked about, what the lookup and
//! the justification header came to. Plain data for `policy replay`; it must never record the
//! token's full group list, its scopes or anything secret, and never decide anything.

use crate::audit::InputsRecord;
use crate::auth::Operator;
use crate::policy::controls::{Justification, Malformed};
use crate::policy::PolicySet;

/// The operator part, once the operator screen ran: what the policies look for and what of it
/// the token carried. `device_facts` starts as `not_read`.
pub(super) fn screened(policies: &PolicySet, op: &Operator) -> InputsRecord {
    let named = policies.named_groups();
    let mut groups: Vec<String> = op
        .groups
        .iter()
        .map(|g| g.to_ascii_lowercase())
        .filter(|g| named.contains(g))
        .collect();
    groups.sort();
    groups.dedup();
    let roles_named = policies.named_roles();
    let mut roles: Vec<String> = op
        .roles
        .iter()
        .filter(|r| roles_named.contains(*r))
        .cloned()
        .collect();
    roles.sort();
    roles.dedup();
    InputsRecord {
        operator_groups_checked: named.iter().cloned().collect(),
        operator_groups: groups,
        operator_roles_checked: roles_named.iter().cloned().collect(),
        operator_roles: roles,
        groups_overage: op.groups_overage,
        device_groups_checked: Vec::new(),
        device_facts: InputsRecord::FACTS_NOT_READ.to_string(),
        justification_malformed: None,
    }
}

/// The device groups passed to the facts lookup, sorted, and what the lookup came to.
pub(super) fn looked_up(inputs: &mut InputsRecord, groups: &[String], outcome: &'static str) {
    let mut g = groups.to_vec();
    g.sort();
    g.dedup();
    inputs.device_groups_checked = g;
    inputs.device_facts = outcome.to_string();
}

/// The recorded word for a header that could not be taken as a statement.
pub(super) fn malformed(j: &Justification) -> Option<String> {
    let Justification::Malformed(m) = j else {
        return None;
    };
    Some(
        match m {
            Malformed::Repeated => "repeated",
            Malformed::NotUtf8 => "not_utf8",
            Malformed::TooLong { .. } => "too_long",
            Malformed::ControlCharacter => "control_character",
        }
        .to_string(),
    )
}
