//! `passgate policy replay`: decides the recorded requests of an audit file set again under a
//! candidate config, by the gateway's own code (operator screen, decision, limits on an in-memory
//! store, approval rule), with the facts the records hold. It must never write an audit file or
//! reach the network, and where a record does not hold what the candidate needs it must say so
//! (`inexact`) instead of passing a guess off as the answer.

use super::run::Outcome;
use crate::audit::{Decision, DecisionRecord, InputsRecord};
use crate::auth::{Operator, OperatorKind, TokenVersion};
use crate::config::Settings;
use crate::error::Reason;
use crate::policy::controls::{Justification, Malformed, RequestFacts};
use crate::policy::{DeviceFacts, FactsOutcome, PolicySet, RateLimiter};
use crate::routes::{Action, ActionKind, ApiVersion, RouteForm};
use crate::state::memory::MemoryStore;
use chrono::{DateTime, Utc};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::cases::ExpectDecision;

/// How a re-decision differs from the recorded decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    Unchanged,
    AllowToDeny,
    DenyToAllow,
    /// Same decision, another policy named.
    OtherPolicy,
    /// Same decision and policy, another reason.
    OtherReason,
    /// The replay cannot say (no device facts were read for a request the candidate would now
    /// decide on them).
    Undetermined,
}

impl Change {
    /// Every change kind, in report order (not `Unchanged`).
    pub const KINDS: [Change; 5] = [
        Change::AllowToDeny,
        Change::DenyToAllow,
        Change::OtherPolicy,
        Change::OtherReason,
        Change::Undetermined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Change::Unchanged => "unchanged",
            Change::AllowToDeny => "allow_to_deny",
            Change::DenyToAllow => "deny_to_allow",
            Change::OtherPolicy => "other_policy",
            Change::OtherReason => "other_reason",
            Change::Undetermined => "undetermined",
        }
    }

    /// How the text report names it.
    pub fn label(self) -> &'static str {
        match self {
            Change::Unchanged => "unchanged",
            Change::AllowToDeny => "allow→deny",
            Change::DenyToAllow => "deny→allow",
            Change::OtherPolicy => "other policy",
            Change::OtherReason => "other reason",
            Change::Undetermined => "undetermined",
        }
    }

    /// An allow became a deny or the other way round.
    pub fn is_flip(self) -> bool {
        matches!(self, Change::AllowToDeny | Change::DenyToAllow)
    }

    fn between(old: &Outcome, new: Option<&Outcome>) -> Change {
        let Some(new) = new else {
            return Change::Undetermined;
        };
        match (old.decision, new.decision) {
            (ExpectDecision::Allow, ExpectDecision::Deny) => Change::AllowToDeny,
            (ExpectDecision::Deny, ExpectDecision::Allow) => Change::DenyToAllow,
            _ if old.policy != new.policy => Change::OtherPolicy,
            _ if old.reason != new.reason => Change::OtherReason,
            _ => Change::Unchanged,
        }
    }
}

/// Why a record's re-decision is not exact. The replay decides as if the token did not carry an
/// unrecorded group or role and the device is not in an unrecorded group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Inexact {
    /// A version 1 record (or one without `inputs`): the operator's groups and roles and the
    /// device groups checked were not recorded.
    NoInputs,
    /// The candidate names operator groups the old config did not look for in the token.
    OperatorGroups,
    /// The candidate names app roles the old config did not look for.
    OperatorRoles,
    /// The candidate checks device groups Graph was not asked about.
    DeviceGroups,
    /// Refused at the operator screen under the old config (no device facts were read); the
    /// candidate names the operator.
    NoDeviceFacts,
}

impl Inexact {
    pub fn as_str(&self) -> &'static str {
        match self {
            Inexact::NoInputs => "v1 record: no inputs (operator groups and roles, device groups checked) recorded",
            Inexact::OperatorGroups => "operator group the candidate names was not looked for in the token",
            Inexact::OperatorRoles => "app role the candidate names was not looked for in the token",
            Inexact::DeviceGroups => "device group the candidate checks was not asked of Graph",
            Inexact::NoDeviceFacts => "refused at the operator screen (no device facts read); the candidate names the operator",
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Inexact::NoInputs => "no_inputs",
            Inexact::OperatorGroups => "operator_groups_not_checked",
            Inexact::OperatorRoles => "operator_roles_not_checked",
            Inexact::DeviceGroups => "device_groups_not_checked",
            Inexact::NoDeviceFacts => "no_device_facts",
        }
    }
}

/// What became of one decision record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Not re-decided; why (a fixed phrase, or one naming the reason code).
    Skipped(String),
    Decided {
        old: Outcome,
        /// `None`: undetermined (see [`Change::Undetermined`]).
        new: Option<Outcome>,
        change: Change,
        /// Empty when exact.
        inexact: Vec<Inexact>,
    },
}

/// The reasons of refusals from the operator screen on: what a policy decision produced.
const DECIDED: [Reason; 19] = [
    Reason::OperatorNotApproved,
    Reason::DeviceNotFound,
    Reason::DeviceUserMismatch,
    Reason::DeviceNotRegistered,
    Reason::DeviceNotInAllowedGroup,
    Reason::PlatformNotAllowed,
    Reason::JustificationRequired,
    Reason::JustificationInvalid,
    Reason::OwnDeviceNotAllowed,
    Reason::BreakGlassExpired,
    Reason::DeviceFactsUnavailable,
    Reason::RateLimited,
    Reason::ApprovalRequired,
    Reason::ApprovalPending,
    Reason::ApprovalDenied,
    Reason::ApprovalExpired,
    Reason::Allowed,
    // Decided, but not re-decidable (handled before the decision below).
    Reason::LimitsUnavailable,
    Reason::AppTokenUnavailable,
];

const APPROVAL_REASONS: [Reason; 4] = [
    Reason::ApprovalRequired,
    Reason::ApprovalPending,
    Reason::ApprovalDenied,
    Reason::ApprovalExpired,
];

fn is(reason: &str, r: Reason) -> bool {
    reason == r.as_str()
}

/// Re-decides records in record order under one candidate config; its limiter carries the
/// admissions of earlier records to later ones, on the records' own clock.
pub struct Replayer<'a> {
    settings: &'a Settings,
    policies: PolicySet,
    limiter: RateLimiter,
    /// The replay clock: `base` stands for the first record's time.
    clock: Arc<Mutex<Instant>>,
    base: Instant,
    first: Option<DateTime<Utc>>,
}

impl<'a> Replayer<'a> {
    pub fn new(settings: &'a Settings) -> Replayer<'a> {
        let base = Instant::now();
        let clock = Arc::new(Mutex::new(base));
        let read = clock.clone();
        let store = MemoryStore::with_clock(Arc::new(move || {
            *read.lock().unwrap_or_else(|e| e.into_inner())
        }));
        Replayer {
            settings,
            policies: PolicySet::new(settings.policies.clone()).with_caps(settings.caps.clone()),
            limiter: RateLimiter::new(Arc::new(store)),
            clock,
            base,
            first: None,
        }
    }

    /// Moves the limiter's clock to `at` (never backwards: a writer's clock step back must not
    /// give windows room they did not have).
    fn tick(&mut self, at: DateTime<Utc>) {
        let first = *self.first.get_or_insert(at);
        let since = (at - first).to_std().unwrap_or(Duration::ZERO);
        let t = self.base + since;
        let mut now = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        if t > *now {
            *now = t;
        }
    }

    /// Re-decides one decision record written at `at` in a line of version `version`.
    pub async fn replay(
        &mut self,
        version: u64,
        at: DateTime<Utc>,
        rec: &DecisionRecord,
    ) -> Replayed {
        self.tick(at);
        // A record given up on (audit deadline) keeps what had been decided.
        let (decision, reason) = match &rec.abandoned {
            Some(a) => (a.decision, a.reason.as_str()),
            None => (rec.decision, rec.reason.as_str()),
        };
        let old = Outcome {
            decision: match decision {
                Decision::Allow => ExpectDecision::Allow,
                Decision::Deny => ExpectDecision::Deny,
            },
            reason: reason.to_string(),
            policy: rec.policy.clone(),
        };
        if is(reason, Reason::AuditUnavailable) {
            return Replayed::Skipped(
                "audit_unavailable: the audit write failed after the decision (transient)".into(),
            );
        }
        if !DECIDED.iter().any(|r| is(reason, *r)) {
            return Replayed::Skipped(format!("refused before the policy decision ({reason})"));
        }
        let inputs = if version >= 2 {
            rec.inputs.as_ref()
        } else {
            None
        };
        let facts_word = inputs.map(|i| i.device_facts.as_str());
        if is(reason, Reason::LimitsUnavailable) {
            return Replayed::Skipped(
                "limits_unavailable: the rate-limit state could not be asked (transient)".into(),
            );
        }
        if is(reason, Reason::AppTokenUnavailable) {
            return Replayed::Skipped(
                "app_token_unavailable: the device was not looked up (transient)".into(),
            );
        }
        let budget = match facts_word {
            Some(w) => w == InputsRecord::FACTS_LOOKUP_BUDGET,
            // Version 1: the lookup budget's refusal is the rate_limited record without device
            // facts (a limit's refusal carries the facts and the policy).
            None => is(reason, Reason::RateLimited) && rec.device.is_none() && rec.policy.is_none(),
        };
        if budget {
            return Replayed::Skipped(
                "rate_limited by the device-lookup budget (facts_lookups), not a policy".into(),
            );
        }
        let (Some(op_rec), Some(target)) = (&rec.operator, &rec.target) else {
            return Replayed::Skipped("the record names no operator or target".into());
        };

        let mut inexact: Vec<Inexact> = Vec::new();
        if inputs.is_none() {
            inexact.push(Inexact::NoInputs);
        }
        let kind = if op_rec.kind == "app" {
            OperatorKind::App
        } else {
            OperatorKind::User
        };
        let op = Operator {
            oid: op_rec.oid.to_ascii_lowercase(),
            tid: op_rec.tid.clone(),
            kind,
            upn: op_rec.upn.clone(),
            client_app_id: op_rec.client_app_id.clone(),
            groups: inputs
                .map(|i| i.operator_groups.clone())
                .unwrap_or_default(),
            groups_overage: inputs.is_some_and(|i| i.groups_overage),
            roles: inputs.map(|i| i.operator_roles.clone()).unwrap_or_default(),
            scopes: Vec::new(),
            token_version: TokenVersion::V2,
        };
        if let Some(i) = inputs {
            self.unrecorded_operator_names(&op, i, &mut inexact);
        }
        let Some(action) = action_of(rec, target) else {
            return Replayed::Skipped("the record's route cannot be read back".into());
        };

        let screen = self.policies.operator_screen(&op);
        if let Some(d) = screen.denial() {
            let new = super::run::deny_outcome(d.reason, d.policy);
            return decided(old, Some(new), inexact);
        }
        // The candidate names this operator: the decision needs the device facts.
        let not_read = match facts_word {
            Some(w) => w == InputsRecord::FACTS_NOT_READ,
            None => {
                rec.device.is_none()
                    && !is(reason, Reason::DeviceNotFound)
                    && !is(reason, Reason::DeviceFactsUnavailable)
            }
        };
        if not_read {
            inexact.push(Inexact::NoDeviceFacts);
            return decided(old, None, inexact);
        }
        let facts = if is(reason, Reason::DeviceNotFound)
            || facts_word == Some(InputsRecord::FACTS_NOT_FOUND)
        {
            FactsOutcome::NotFound
        } else if is(reason, Reason::DeviceFactsUnavailable)
            || facts_word == Some(InputsRecord::FACTS_UNAVAILABLE)
        {
            // Transient: what Graph would have said is unknown; it stays unavailable.
            FactsOutcome::Unavailable
        } else {
            let Some(d) = &rec.device else {
                return Replayed::Skipped("the record has no device facts".into());
            };
            let f = DeviceFacts {
                managed_device_id: action.managed_device_id.clone(),
                azure_ad_device_id: d.azure_ad_device_id.clone(),
                device_object_id: d.device_object_id.clone(),
                operating_system: d.operating_system.clone(),
                user_principal_name: d.user_principal_name.clone(),
                user_id: d.user_id.clone(),
                member_of: d.member_of.iter().map(|g| g.to_ascii_lowercase()).collect(),
            };
            if let Some(i) = inputs {
                // Graph reads no memberships of a device that is not in Entra: nothing unknown.
                if f.azure_ad_device_id.is_some() {
                    let asked: BTreeSet<String> = i
                        .device_groups_checked
                        .iter()
                        .map(|g| g.to_ascii_lowercase())
                        .collect();
                    if self
                        .policies
                        .groups_to_check(&screen)
                        .iter()
                        .any(|g| !asked.contains(g))
                    {
                        inexact.push(Inexact::DeviceGroups);
                    }
                }
            }
            FactsOutcome::Found(f)
        };
        let request = RequestFacts {
            justification: justification_of(rec, inputs),
            now: at,
        };
        let candidate = match self
            .policies
            .decide(&screen, &action, &op, &facts, &request)
        {
            Ok(c) => c,
            Err(d) => {
                return decided(
                    old,
                    Some(super::run::deny_outcome(d.reason, d.policy)),
                    inexact,
                )
            }
        };
        let policy = candidate.policy().to_string();
        if self.settings.approvals.contains_key(&policy) && rec.approval_id.is_none() {
            // The approval's state lives outside the policy: a recorded approval refusal stays
            // what it was; anything else needs a request opened first.
            let r = APPROVAL_REASONS
                .into_iter()
                .find(|r| is(reason, *r))
                .unwrap_or(Reason::ApprovalRequired);
            return decided(
                old,
                Some(super::run::deny_outcome(r, Some(policy))),
                inexact,
            );
        }
        let new = match self.limiter.admit(candidate, &rec.request_id).await {
            Ok(_) => Outcome {
                decision: ExpectDecision::Allow,
                reason: Reason::Allowed.as_str().to_string(),
                policy: Some(policy),
            },
            Err(refused) => {
                super::run::deny_outcome(refused.denial.reason, refused.denial.policy.clone())
            }
        };
        decided(old, Some(new), inexact)
    }

    /// Operator groups and roles the candidate names but the old config never looked for, where
    /// they could change the screen: a policy naming one that the operator does not already match.
    fn unrecorded_operator_names(
        &self,
        op: &Operator,
        i: &InputsRecord,
        inexact: &mut Vec<Inexact>,
    ) {
        let checked_groups: BTreeSet<String> = i
            .operator_groups_checked
            .iter()
            .map(|g| g.to_ascii_lowercase())
            .collect();
        let checked_roles: BTreeSet<&String> = i.operator_roles_checked.iter().collect();
        let oid = op.oid.to_ascii_lowercase();
        // Policies whose operator rule the known inputs already match: an unknown name of
        // theirs changes nothing.
        let open = self.policies.policies().iter().filter(|p| {
            !(p.users.contains(&oid)
                || op
                    .groups
                    .iter()
                    .any(|g| p.groups.contains(&g.to_ascii_lowercase()))
                || op.roles.iter().any(|r| p.app_roles.contains(r)))
        });
        let (mut groups, mut roles) = (false, false);
        for p in open {
            // With group overage the token listed no groups: a group cannot match either way.
            if !op.groups_overage && p.groups.iter().any(|g| !checked_groups.contains(g)) {
                groups = true;
            }
            if p.app_roles.iter().any(|r| !checked_roles.contains(r)) {
                roles = true;
            }
        }
        if groups {
            inexact.push(Inexact::OperatorGroups);
        }
        if roles {
            inexact.push(Inexact::OperatorRoles);
        }
    }
}

fn decided(old: Outcome, new: Option<Outcome>, inexact: Vec<Inexact>) -> Replayed {
    let change = Change::between(&old, new.as_ref());
    Replayed::Decided {
        old,
        new,
        change,
        inexact,
    }
}

/// The action as the gateway parsed it, from `target` and the record's action/version.
fn action_of(rec: &DecisionRecord, t: &crate::audit::TargetRecord) -> Option<Action> {
    let form = match t.route_form.as_str() {
        "device_management" => RouteForm::DeviceManagement,
        "user" => RouteForm::User {
            user_id: t.user_id.clone()?,
        },
        "detected_app" => RouteForm::DetectedApp {
            detected_app_id: t.detected_app_id.clone()?,
        },
        _ => return None,
    };
    let version = match rec.api_version.as_deref() {
        Some("beta") => ApiVersion::Beta,
        _ => ApiVersion::V1,
    };
    Some(Action {
        kind: ActionKind::RecoverPasscode,
        version,
        form,
        managed_device_id: t.managed_device_id.to_ascii_lowercase(),
    })
}

/// The `Passgate-Justification` header as the decision read it.
fn justification_of(rec: &DecisionRecord, inputs: Option<&InputsRecord>) -> Justification {
    let malformed = inputs.and_then(|i| i.justification_malformed.as_deref());
    match (malformed, &rec.justification) {
        (Some("repeated"), _) => Justification::Malformed(Malformed::Repeated),
        (Some("not_utf8"), _) => Justification::Malformed(Malformed::NotUtf8),
        (Some("control_character"), _) => Justification::Malformed(Malformed::ControlCharacter),
        (Some(_), j) => Justification::Malformed(Malformed::TooLong {
            bytes: crate::policy::controls::MAX_JUSTIFICATION_BYTES + 1,
            prefix: j.clone().unwrap_or_default(),
        }),
        (None, Some(j)) => Justification::Given(j.clone()),
        (None, None) => Justification::Absent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{DeviceRecord, OperatorRecord, TargetRecord};
    use crate::policy::decide::tests::{for_user, set, DEV, KIOSKS, OID, PHONES};
    use crate::policy::{Limit, LimitScope, PolicySettings};

    const HELPDESK: &str = "aaaaaaaa-0000-0000-0000-00000000000a";
    const OTHER: &str = "aaaaaaaa-0000-0000-0000-00000000000b";

    fn settings(policies: Vec<PolicySettings>) -> Settings {
        let mut s =
            crate::config::load_str(crate::dev::DEV_CONFIG, "dev.yaml").expect("dev config");
        s.policies = policies;
        s.report_policies = Vec::new();
        s.caps = Vec::new();
        s.approvals.clear();
        s
    }

    /// helpdesk (by group) on phones, Windows Phone only.
    fn phones() -> PolicySettings {
        PolicySettings {
            users: set(&[]),
            groups: set(&[HELPDESK]),
            platforms: Some(vec!["Windows Phone".into()]),
            ..for_user("phones", &[PHONES])
        }
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("time")
    }

    fn inputs() -> InputsRecord {
        InputsRecord {
            operator_groups_checked: vec![HELPDESK.into()],
            operator_groups: vec![HELPDESK.into()],
            operator_roles_checked: vec![],
            operator_roles: vec![],
            groups_overage: false,
            device_groups_checked: vec![PHONES.into()],
            device_facts: InputsRecord::FACTS_FOUND.into(),
            justification_malformed: None,
        }
    }

    /// A v2 record of the operator OID on DEV (a Windows Phone in PHONES).
    fn record(id: &str, decision: Decision, reason: &str, policy: Option<&str>) -> DecisionRecord {
        DecisionRecord {
            request_id: id.into(),
            client_request_id: None,
            client_ip: "127.0.0.1".into(),
            client_cert_subject: None,
            method: "POST".into(),
            path: "/".into(),
            action: Some("recoverPasscode".into()),
            api_version: Some("v1.0".into()),
            operator: Some(OperatorRecord {
                oid: OID.into(),
                tid: "t".into(),
                upn: Some("alice@contoso.com".into()),
                kind: "user".into(),
                client_app_id: None,
            }),
            target: Some(TargetRecord {
                managed_device_id: DEV.into(),
                route_form: "device_management".into(),
                user_id: None,
                detected_app_id: None,
            }),
            device: Some(DeviceRecord {
                azure_ad_device_id: Some("6fa60d52-01e7-4b18-8055-4759461fc16b".into()),
                device_object_id: None,
                operating_system: "Windows Phone".into(),
                user_principal_name: Some("kiosk@contoso.com".into()),
                user_id: Some("11111111-2222-3333-4444-555555555555".into()),
                member_of: vec![PHONES.into()],
            }),
            decision,
            reason: reason.into(),
            policy: policy.map(str::to_string),
            report: Vec::new(),
            approval_id: None,
            status: None,
            message: None,
            abandoned: None,
            justification: None,
            break_glass: false,
            inputs: Some(inputs()),
        }
    }

    fn allowed(id: &str) -> DecisionRecord {
        record(id, Decision::Allow, "allowed", Some("phones"))
    }

    /// (change, new reason, new policy, inexact)
    fn sum(r: Replayed) -> (Change, Option<String>, Option<String>, Vec<Inexact>) {
        match r {
            Replayed::Decided {
                new,
                change,
                inexact,
                ..
            } => (
                change,
                new.as_ref().map(|n| n.reason.clone()),
                new.and_then(|n| n.policy),
                inexact,
            ),
            Replayed::Skipped(why) => panic!("skipped: {why}"),
        }
    }

    #[tokio::test]
    async fn the_same_config_changes_nothing() {
        let s = settings(vec![phones()]);
        let mut r = Replayer::new(&s);
        let (c, reason, policy, inexact) = sum(r.replay(2, t(0), &allowed("a")).await);
        assert_eq!(c, Change::Unchanged);
        assert_eq!(reason.as_deref(), Some("allowed"));
        assert_eq!(policy.as_deref(), Some("phones"));
        assert!(inexact.is_empty());
        let mut bob = record("b", Decision::Deny, "operator_not_approved", None);
        let i = bob.inputs.as_mut().unwrap();
        i.operator_groups.clear();
        i.device_groups_checked.clear();
        i.device_facts = InputsRecord::FACTS_NOT_READ.into();
        bob.device = None;
        let (c, ..) = sum(r.replay(2, t(1), &bob).await);
        assert_eq!(c, Change::Unchanged);
    }

    #[tokio::test]
    async fn removing_the_operator_group_is_an_exact_flip() {
        let s = settings(vec![PolicySettings {
            groups: set(&[OTHER]),
            ..phones()
        }]);
        let mut r = Replayer::new(&s);
        // OTHER was not looked for in the token: the flip is inexact…
        let (c, reason, _, inexact) = sum(r.replay(2, t(0), &allowed("a")).await);
        assert_eq!(
            (c, reason.as_deref()),
            (Change::AllowToDeny, Some("operator_not_approved"))
        );
        assert_eq!(inexact, vec![Inexact::OperatorGroups]);
        // … unless the old config named it too (then the token's answer is recorded).
        let mut rec = allowed("b");
        rec.inputs.as_mut().unwrap().operator_groups_checked = vec![HELPDESK.into(), OTHER.into()];
        let (c, reason, _, inexact) = sum(r.replay(2, t(1), &rec).await);
        assert_eq!(
            (c, reason.as_deref()),
            (Change::AllowToDeny, Some("operator_not_approved"))
        );
        assert!(inexact.is_empty(), "{inexact:?}");
    }

    #[tokio::test]
    async fn a_stricter_rule_on_the_same_policy_is_another_reason() {
        let justified = |p: PolicySettings| PolicySettings {
            justification: Some(crate::policy::JustificationRule {
                required: true,
                pattern: None,
            }),
            ..p
        };
        let s = settings(vec![PolicySettings {
            platforms: Some(vec!["iOS".into()]),
            ..justified(phones())
        }]);
        let mut r = Replayer::new(&s);
        let old = record(
            "a",
            Decision::Deny,
            "justification_required",
            Some("phones"),
        );
        let (c, reason, policy, inexact) = sum(r.replay(2, t(0), &old).await);
        assert_eq!(c, Change::OtherReason);
        assert_eq!(reason.as_deref(), Some("platform_not_allowed"));
        assert_eq!(policy.as_deref(), Some("phones"));
        assert!(inexact.is_empty());
        // The recorded justification is what the candidate judges.
        let s = settings(vec![justified(phones())]);
        let mut r = Replayer::new(&s);
        let mut given = allowed("b");
        given.justification = Some("INC1".into());
        assert_eq!(sum(r.replay(2, t(1), &given).await).0, Change::Unchanged);
        assert_eq!(
            sum(r.replay(2, t(2), &allowed("c")).await).1.as_deref(),
            Some("justification_required")
        );
        // A malformed header stays malformed.
        let mut bad = given.clone();
        bad.justification = None;
        bad.inputs.as_mut().unwrap().justification_malformed = Some("repeated".into());
        assert_eq!(
            sum(r.replay(2, t(3), &bad).await).1.as_deref(),
            Some("justification_invalid")
        );
    }

    #[tokio::test]
    async fn a_device_group_never_asked_about_is_inexact_and_assumed_not_a_member() {
        let s = settings(vec![PolicySettings {
            device_groups: set(&[KIOSKS]),
            ..phones()
        }]);
        let mut r = Replayer::new(&s);
        let (c, reason, _, inexact) = sum(r.replay(2, t(0), &allowed("a")).await);
        assert_eq!(
            (c, reason.as_deref()),
            (Change::AllowToDeny, Some("device_not_in_allowed_group"))
        );
        assert_eq!(inexact, vec![Inexact::DeviceGroups]);
        // Asked and not a member: exact.
        let mut rec = allowed("b");
        rec.inputs.as_mut().unwrap().device_groups_checked = vec![KIOSKS.into(), PHONES.into()];
        let (c, _, _, inexact) = sum(r.replay(2, t(1), &rec).await);
        assert_eq!(c, Change::AllowToDeny);
        assert!(inexact.is_empty());
    }

    #[tokio::test]
    async fn a_v1_record_is_never_exact() {
        let s = settings(vec![phones()]);
        let mut r = Replayer::new(&s);
        let mut v1 = allowed("a");
        v1.inputs = None;
        // Its operator groups were not recorded: assumed none, so the group policy refuses.
        let (c, reason, _, inexact) = sum(r.replay(1, t(0), &v1).await);
        assert_eq!(
            (c, reason.as_deref()),
            (Change::AllowToDeny, Some("operator_not_approved"))
        );
        assert_eq!(inexact, vec![Inexact::NoInputs]);
        // `inputs` on a line that says v1 is not trusted either.
        let (_, _, _, inexact) = sum(r.replay(1, t(1), &allowed("b")).await);
        assert_eq!(inexact, vec![Inexact::NoInputs]);
        // An operator named by oid decides the same from a v1 record.
        let s = settings(vec![for_user("mine", &[PHONES])]);
        let mut r = Replayer::new(&s);
        let mut v1 = record("c", Decision::Allow, "allowed", Some("mine"));
        v1.inputs = None;
        let (c, _, _, inexact) = sum(r.replay(1, t(2), &v1).await);
        assert_eq!(c, Change::Unchanged);
        assert_eq!(inexact, vec![Inexact::NoInputs]);
    }

    #[tokio::test]
    async fn limits_are_replayed_in_record_order_on_the_records_clock() {
        let s = settings(vec![PolicySettings {
            limits: vec![Limit {
                scope: LimitScope::PerDevice,
                count: 2,
                window: Duration::from_secs(600),
            }],
            ..phones()
        }]);
        let mut r = Replayer::new(&s);
        let mut got = Vec::new();
        for (i, at) in [0, 60, 120, 180, 660].into_iter().enumerate() {
            let (c, reason, ..) = sum(r.replay(2, t(at), &allowed(&format!("r{i}"))).await);
            got.push((c, reason.unwrap_or_default()));
        }
        let ok = (Change::Unchanged, "allowed".to_string());
        let limited = (Change::AllowToDeny, "rate_limited".to_string());
        // Two in 10 minutes; a refused one is not charged; 11 minutes on, room again.
        assert_eq!(
            got,
            vec![ok.clone(), ok.clone(), limited.clone(), limited, ok]
        );
        // A recorded rate_limited refusal that the candidate's limits do not reach is an allow.
        let s = settings(vec![phones()]);
        let mut r = Replayer::new(&s);
        let old = record("x", Decision::Deny, "rate_limited", Some("phones"));
        assert_eq!(sum(r.replay(2, t(0), &old).await).0, Change::DenyToAllow);
    }

    #[tokio::test]
    async fn approval_counts_only_when_the_record_used_one() {
        let mut s = settings(vec![phones()]);
        let rule = crate::config::load_str(crate::dev::DEV_CONFIG, "dev.yaml")
            .expect("dev config")
            .approvals
            .into_values()
            .next()
            .expect("the dev config has an approval rule");
        s.approvals.insert("phones".into(), rule);
        let mut r = Replayer::new(&s);
        let mut used = allowed("a");
        used.approval_id = Some("0b5d5ae6-39a4-4c5b-a0f5-2b3c0a3f9d11".into());
        assert_eq!(sum(r.replay(2, t(0), &used).await).0, Change::Unchanged);
        let (c, reason, policy, _) = sum(r.replay(2, t(1), &allowed("b")).await);
        assert_eq!(
            (c, reason.as_deref(), policy.as_deref()),
            (
                Change::AllowToDeny,
                Some("approval_required"),
                Some("phones")
            )
        );
        let pending = record("c", Decision::Deny, "approval_pending", Some("phones"));
        assert_eq!(sum(r.replay(2, t(2), &pending).await).0, Change::Unchanged);
        // Without the rule, a recorded approval refusal becomes an allow.
        let s = settings(vec![phones()]);
        let mut r = Replayer::new(&s);
        assert_eq!(
            sum(r.replay(2, t(3), &pending).await).0,
            Change::DenyToAllow
        );
    }

    #[tokio::test]
    async fn what_cannot_be_re_decided_says_why() {
        let s = settings(vec![phones()]);
        let mut r = Replayer::new(&s);
        let mut auth = record("a", Decision::Deny, "token_expired", None);
        auth.inputs = None;
        assert!(matches!(
            r.replay(2, t(0), &auth).await,
            Replayed::Skipped(w) if w.contains("token_expired")
        ));
        let mut budget = record("b", Decision::Deny, "rate_limited", None);
        budget.device = None;
        budget.inputs.as_mut().unwrap().device_facts = InputsRecord::FACTS_LOOKUP_BUDGET.into();
        assert!(matches!(
            r.replay(2, t(1), &budget).await,
            Replayed::Skipped(w) if w.contains("facts_lookups")
        ));
        // The same from a v1 record: rate_limited without device facts or policy.
        budget.inputs = None;
        assert!(matches!(
            r.replay(1, t(2), &budget).await,
            Replayed::Skipped(w) if w.contains("facts_lookups")
        ));
        // Facts unavailable: transient, re-decided to the same.
        let mut gone = record("c", Decision::Deny, "device_facts_unavailable", None);
        gone.device = None;
        gone.inputs.as_mut().unwrap().device_facts = InputsRecord::FACTS_UNAVAILABLE.into();
        assert_eq!(sum(r.replay(2, t(3), &gone).await).0, Change::Unchanged);
        // Refused at the screen before, named now: no facts were read, the replay cannot say.
        let mut stranger = record("d", Decision::Deny, "operator_not_approved", None);
        stranger.device = None;
        let i = stranger.inputs.as_mut().unwrap();
        i.device_groups_checked.clear();
        i.device_facts = InputsRecord::FACTS_NOT_READ.into();
        let (c, reason, _, inexact) = sum(r.replay(2, t(4), &stranger).await);
        assert_eq!((c, reason), (Change::Undetermined, None));
        assert_eq!(inexact, vec![Inexact::NoDeviceFacts]);
    }

    #[test]
    fn change_kinds() {
        let o = |d: ExpectDecision, r: &str, p: Option<&str>| Outcome {
            decision: d,
            reason: r.into(),
            policy: p.map(str::to_string),
        };
        use ExpectDecision::{Allow, Deny};
        let a = o(Allow, "allowed", Some("p"));
        assert_eq!(Change::between(&a, Some(&a)), Change::Unchanged);
        assert_eq!(
            Change::between(&a, Some(&o(Allow, "allowed", Some("q")))),
            Change::OtherPolicy
        );
        let d = o(Deny, "rate_limited", Some("p"));
        assert_eq!(Change::between(&a, Some(&d)), Change::AllowToDeny);
        assert_eq!(Change::between(&d, Some(&a)), Change::DenyToAllow);
        assert_eq!(
            Change::between(&d, Some(&o(Deny, "approval_required", Some("p")))),
            Change::OtherReason
        );
        assert_eq!(Change::between(&d, None), Change::Undetermined);
        assert!(Change::AllowToDeny.is_flip() && !Change::OtherPolicy.is_flip());
    }
}
