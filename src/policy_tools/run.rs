//! Runs policy test cases through the gateway's own decision code: the operator screen and the
//! pure decision, the limiter on an in-process store (for `earlier` admissions) and the approval
//! rule — with no network, no audit log and no Graph. It must never decide by any other code
//! than the gateway's.

use super::cases::{Case, ExpectDecision};
use crate::auth::{Operator, OperatorKind, TokenVersion};
use crate::config::Settings;
use crate::error::Reason;
use crate::policy::controls::{Justification, RequestFacts};
use crate::policy::{DeviceFacts, FactsOutcome, PolicySet, RateLimiter};
use crate::routes::{Action, ActionKind, ApiVersion, RouteForm};
use crate::state::memory::MemoryStore;
use chrono::{DateTime, Utc};
use std::sync::Arc;

/// What the gateway would decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub decision: ExpectDecision,
    pub reason: String,
    pub policy: Option<String>,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.decision.as_str(), self.reason)?;
        if let Some(p) = &self.policy {
            write!(f, " (policy {p})")?;
        }
        Ok(())
    }
}

/// A case that cannot be run as written.
#[derive(Debug, thiserror::Error)]
pub enum CaseError {
    #[error("`at`: {0:?} is not an RFC 3339 time")]
    At(String),
    #[error("`route`: {0:?} is not device_management, user:<userId> or detected_app:<appId>")]
    Route(String),
    #[error("`operator.kind`: {0:?} is not user or app")]
    Kind(String),
}

/// A refusal with this reason, naming this policy.
pub(super) fn deny_outcome(reason: Reason, policy: Option<String>) -> Outcome {
    deny(reason, policy)
}

fn deny(reason: Reason, policy: Option<String>) -> Outcome {
    Outcome {
        decision: ExpectDecision::Deny,
        reason: reason.as_str().to_string(),
        policy,
    }
}

fn lower(v: &[String]) -> Vec<String> {
    v.iter().map(|s| s.trim().to_ascii_lowercase()).collect()
}

/// Decides one case under `settings` (the candidate config).
pub async fn decide(settings: &Settings, case: &Case) -> Result<Outcome, CaseError> {
    let now: DateTime<Utc> = match &case.at {
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map_err(|_| CaseError::At(t.clone()))?
            .with_timezone(&Utc),
        None => Utc::now(),
    };
    let form = match case.route.as_deref().map(str::trim) {
        None | Some("device_management") => RouteForm::DeviceManagement,
        Some(r) => match r.split_once(':') {
            Some(("user", id)) => RouteForm::User {
                user_id: id.trim().to_ascii_lowercase(),
            },
            Some(("detected_app", id)) => RouteForm::DetectedApp {
                detected_app_id: id.trim().to_string(),
            },
            _ => return Err(CaseError::Route(r.to_string())),
        },
    };
    let kind = match case.operator.kind.as_deref().map(str::trim) {
        None | Some("user") => OperatorKind::User,
        Some("app") => OperatorKind::App,
        Some(k) => return Err(CaseError::Kind(k.to_string())),
    };
    let scopes: Vec<String> = match (&case.operator.scp, kind) {
        (Some(s), _) => s.split_whitespace().map(str::to_string).collect(),
        (None, OperatorKind::User) => settings
            .operator_auth
            .required_scope
            .iter()
            .cloned()
            .collect(),
        (None, OperatorKind::App) => Vec::new(),
    };
    // What authentication would refuse first: a user token without the required scope.
    if let (OperatorKind::User, Some(req)) = (kind, &settings.operator_auth.required_scope) {
        if !scopes.iter().any(|s| s == req) {
            return Ok(deny(Reason::TokenScopeMissing, None));
        }
    }
    let op = Operator {
        oid: case.operator.oid.trim().to_ascii_lowercase(),
        tid: settings.tenant_id.clone(),
        kind,
        upn: case.operator.upn.clone(),
        client_app_id: None,
        groups: lower(&case.operator.groups),
        groups_overage: false,
        roles: case.operator.roles.clone(),
        scopes,
        token_version: TokenVersion::V2,
    };
    let action = Action {
        kind: ActionKind::RecoverPasscode,
        version: ApiVersion::V1,
        form,
        managed_device_id: case.device.managed_id.trim().to_ascii_lowercase(),
    };
    let policies = PolicySet::new(settings.policies.clone()).with_caps(settings.caps.clone());
    let screen = policies.operator_screen(&op);
    if let Some(d) = screen.denial() {
        return Ok(deny(d.reason, d.policy));
    }
    // Graph is asked only about the groups the candidate policies name; the case says which of
    // all groups the device is in.
    let checked = policies.groups_to_check(&screen);
    let device_groups = lower(&case.device.groups);
    let facts = DeviceFacts {
        managed_device_id: action.managed_device_id.clone(),
        azure_ad_device_id: case
            .device
            .registered
            .then(|| "00000000-0000-0000-0000-0000000000aa".to_string()),
        device_object_id: None,
        operating_system: case.device.platform.clone(),
        user_principal_name: case.device.owner_upn.clone(),
        user_id: case
            .device
            .owner
            .as_ref()
            .map(|o| o.trim().to_ascii_lowercase()),
        member_of: checked
            .into_iter()
            .filter(|g| device_groups.contains(g))
            .collect(),
    };
    let request = RequestFacts {
        justification: match &case.justification {
            Some(j) => Justification::from_values([j.as_bytes()]),
            None => Justification::Absent,
        },
        now,
    };
    let facts = FactsOutcome::Found(facts);
    let decide = || policies.decide(&screen, &action, &op, &facts, &request);
    let candidate = match decide() {
        Ok(c) => c,
        Err(d) => return Ok(deny(d.reason, d.policy)),
    };
    let policy = candidate.policy().to_string();
    if settings.approvals.contains_key(&policy) && !case.approved {
        return Ok(deny(Reason::ApprovalRequired, Some(policy)));
    }
    let limiter = RateLimiter::new(Arc::new(MemoryStore::new()));
    for n in 0..case.earlier {
        if let Ok(earlier) = decide() {
            let _ = limiter.admit(earlier, &format!("earlier-{n}")).await;
        }
    }
    match limiter.admit(candidate, "case").await {
        Ok(_) => Ok(Outcome {
            decision: ExpectDecision::Allow,
            reason: Reason::Allowed.as_str().to_string(),
            policy: Some(policy),
        }),
        Err(refused) => Ok(deny(refused.denial.reason, refused.denial.policy.clone())),
    }
}

/// Whether `got` is what the case expects (reason and policy only when the case names them).
pub fn matches(case: &Case, got: &Outcome) -> bool {
    case.expect.decision == got.decision
        && case
            .expect
            .reason
            .as_deref()
            .is_none_or(|r| r.trim() == got.reason)
        && case
            .expect
            .policy
            .as_deref()
            .is_none_or(|p| Some(p.trim()) == got.policy.as_deref())
}
