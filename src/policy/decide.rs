//! The pure policy decision: which policies an operator may act under, and whether the target
//! device and the request satisfy one of them. No I/O, no clock (time is a request fact), no
//! hyper; deny by default. A [`Candidate`] is only an allow *before* rate limits — it cannot be
//! forwarded on; only a `Permit` can.

use super::controls::{self, Justification, RequestFacts};
use super::facts::{DeviceFacts, FactsOutcome};
use super::{Limit, PolicySettings};
use crate::auth::{Operator, OperatorKind};
use crate::error::Reason;
use crate::routes::{Action, RouteForm};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A refusal: stable reason code plus a message safe to show the operator (it never carries a
/// token or secret). `policy` names the policy whose failure is reported, when one is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Denial {
    pub reason: Reason,
    pub message: String,
    pub policy: Option<String>,
    pub retry_after: Option<Duration>,
    pub rate: Option<super::RateInfo>,
    /// The policy named in `policy` is a break-glass policy (its refusals are flagged too).
    pub break_glass: bool,
}

impl Denial {
    fn new(reason: Reason, message: String, policy: Option<&str>) -> Denial {
        Denial {
            reason,
            message,
            policy: policy.map(str::to_string),
            retry_after: None,
            rate: None,
            break_glass: false,
        }
    }
}

/// An allow before limits: the action, the operator, the device facts it was decided on, the
/// policy that admitted it and what the later steps need (its limits and the set's caps, the
/// justification given, the break-glass flag). Private fields and no public constructor: only
/// [`PolicySet::decide`] makes one, and only `RateLimiter::admit` turns it into a `Permit`.
#[derive(Debug)]
pub struct Candidate {
    action: Action,
    operator: Operator,
    device: DeviceFacts,
    policy: String,
    limits: Vec<Limit>,
    caps: Vec<Limit>,
    justification: Option<String>,
    break_glass: bool,
}

impl Candidate {
    pub fn action(&self) -> &Action {
        &self.action
    }
    pub fn operator(&self) -> &Operator {
        &self.operator
    }
    pub fn device(&self) -> &DeviceFacts {
        &self.device
    }
    pub fn policy(&self) -> &str {
        &self.policy
    }
    pub fn limits(&self) -> &[Limit] {
        &self.limits
    }
    /// The top-level `limits:` (caps across policies), charged with the policy's own limits.
    pub fn caps(&self) -> &[Limit] {
        &self.caps
    }
    /// What the operator stated in `Passgate-Justification` (trimmed, at most 256 bytes, no
    /// control characters), whether or not the admitting policy asked for it.
    pub fn justification(&self) -> Option<&str> {
        self.justification.as_deref()
    }
    /// Admitted by a `break_glass: true` policy: the audit record flags it, a counter counts it
    /// and notifications should say so.
    pub fn break_glass(&self) -> bool {
        self.break_glass
    }
    /// The facts it was decided on, for the record of a refusal further on. Giving them back
    /// proves nothing: only `decide` makes a `Candidate`.
    pub fn into_parts(self) -> (Action, Operator, DeviceFacts, String) {
        (self.action, self.operator, self.device, self.policy)
    }
}

/// The policies whose operator rule matched, in config order. Valid only for the [`PolicySet`]
/// and the operator it was computed for; `decide` refuses a screen from anywhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorScreen {
    set_id: u64,
    oid: String,
    matched: Vec<usize>,
    overage: bool,
}

impl OperatorScreen {
    /// True when no policy names this operator: deny without fetching device facts.
    pub fn is_empty(&self) -> bool {
        self.matched.is_empty()
    }

    /// The `operator_not_approved` refusal when no policy matched, else None.
    pub fn denial(&self) -> Option<Denial> {
        if !self.is_empty() {
            return None;
        }
        let mut message = format!(
            "operator {} is not approved by any passgate policy (none names this object id, one of its groups or app roles)",
            self.oid
        );
        if self.overage {
            // Entra drops the `groups` claim above 200 groups; group-based policies cannot match.
            message.push_str(
                "; the token did not list the operator's groups (group overage: too many groups), so group-based policies could not be checked — ask an administrator to grant an app role or name your object id instead",
            );
        }
        Some(Denial::new(Reason::OperatorNotApproved, message, None))
    }
}

static NEXT_SET_ID: AtomicU64 = AtomicU64::new(1);

/// The compiled, ordered policies and the caps across them. Immutable; a config reload builds a
/// new one.
#[derive(Debug)]
pub struct PolicySet {
    id: u64,
    policies: Vec<PolicySettings>,
    caps: Vec<Limit>,
    /// `mode: report` policies, each as a set of its own: decided by the same code, never
    /// admitting.
    report: Vec<PolicySet>,
    /// Operator groups and app roles any policy (enforced or report) names: what the operator
    /// screen looks for in a token, and all of it the audit record keeps.
    named_groups: BTreeSet<String>,
    named_roles: BTreeSet<String>,
}

/// What a report-mode policy would have decided for one request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReportVerdict {
    pub policy: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// `allowed`, or the refusal's reason code.
    pub reason: &'static str,
}

/// How far a policy got before failing; the furthest failure is the one reported. The device
/// stages come first, then the request controls: separation of duty, justification, break-glass
/// expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Registered = 0,
    Group = 1,
    Platform = 2,
    OwnDevice = 3,
    Justification = 4,
    BreakGlassExpired = 5,
}

impl PolicySet {
    pub fn new(policies: Vec<PolicySettings>) -> PolicySet {
        let named_groups = policies.iter().flat_map(|p| p.groups.clone()).collect();
        let named_roles = policies.iter().flat_map(|p| p.app_roles.clone()).collect();
        PolicySet {
            id: NEXT_SET_ID.fetch_add(1, Ordering::Relaxed),
            policies,
            caps: Vec::new(),
            report: Vec::new(),
            named_groups,
            named_roles,
        }
    }

    /// Every operator group some policy of the set (enforced or `mode: report`) names.
    pub fn named_groups(&self) -> &BTreeSet<String> {
        &self.named_groups
    }

    /// Every app role some policy of the set (enforced or `mode: report`) names.
    pub fn named_roles(&self) -> &BTreeSet<String> {
        &self.named_roles
    }

    /// The same set with `mode: report` policies: evaluated by [`PolicySet::report`] on every
    /// request, never admitting one.
    pub fn with_report(mut self, policies: Vec<PolicySettings>) -> PolicySet {
        self.report = policies
            .into_iter()
            .map(|p| PolicySet::new(vec![p]))
            .collect();
        self.named_groups = self
            .policies
            .iter()
            .flat_map(|p| p.groups.clone())
            .collect();
        self.named_roles = self
            .policies
            .iter()
            .flat_map(|p| p.app_roles.clone())
            .collect();
        for r in &self.report {
            self.named_groups.extend(r.named_groups.iter().cloned());
            self.named_roles.extend(r.named_roles.iter().cloned());
        }
        self
    }

    /// Whether some report-mode policy names this operator (then the device facts are read even
    /// when no enforced policy does, so the report policy can be evaluated).
    pub fn report_names(&self, op: &Operator) -> bool {
        self.report
            .iter()
            .any(|s| !s.operator_screen(op).is_empty())
    }

    /// Device groups the report-mode policies naming this operator need checked.
    pub fn report_groups(&self, op: &Operator) -> Vec<String> {
        let mut out: BTreeSet<String> = BTreeSet::new();
        for s in &self.report {
            out.extend(s.groups_to_check(&s.operator_screen(op)));
        }
        out.into_iter().collect()
    }

    /// What each report-mode policy would have decided (limits and approval aside: a report
    /// policy charges nothing and opens no approval request). Pure, like `decide`.
    pub fn report(
        &self,
        action: &Action,
        op: &Operator,
        facts: &FactsOutcome,
        request: &RequestFacts,
    ) -> Vec<ReportVerdict> {
        self.report
            .iter()
            .filter_map(|s| {
                let name = s.policies.first()?.name.clone();
                let screen = s.operator_screen(op);
                let (decision, reason) = match s.decide(&screen, action, op, facts, request) {
                    Ok(_) => ("allow", Reason::Allowed.as_str()),
                    Err(d) => ("deny", d.reason.as_str()),
                };
                Some(ReportVerdict {
                    policy: name,
                    decision,
                    reason,
                })
            })
            .collect()
    }

    /// The same set with top-level caps (`limits:`), charged on every admission whichever policy
    /// admits it.
    pub fn with_caps(mut self, caps: Vec<Limit>) -> PolicySet {
        self.caps = caps;
        self
    }

    pub fn policies(&self) -> &[PolicySettings] {
        &self.policies
    }

    pub fn caps(&self) -> &[Limit] {
        &self.caps
    }

    /// Policies whose operator rule matches: `users ∋ oid`, `groups ∩ op.groups` or
    /// `app_roles ∩ op.roles` non-empty.
    pub fn operator_screen(&self, op: &Operator) -> OperatorScreen {
        let oid = op.oid.to_ascii_lowercase();
        let groups: BTreeSet<String> = op.groups.iter().map(|g| g.to_ascii_lowercase()).collect();
        let matched = self
            .policies
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.users.contains(&oid)
                    || !p.groups.is_disjoint(&groups)
                    || op.roles.iter().any(|r| p.app_roles.contains(r))
            })
            .map(|(i, _)| i)
            .collect();
        OperatorScreen {
            set_id: self.id,
            oid,
            matched,
            overage: op.groups_overage,
        }
    }

    /// Device groups the facts lookup must check for these candidate policies (union, sorted).
    pub fn groups_to_check(&self, screen: &OperatorScreen) -> Vec<String> {
        if screen.set_id != self.id {
            return Vec::new();
        }
        let set: BTreeSet<&String> = screen
            .matched
            .iter()
            .filter_map(|&i| self.policies.get(i))
            .filter(|p| !p.any_device)
            .flat_map(|p| p.device_groups.iter())
            .collect();
        set.into_iter().cloned().collect()
    }

    /// The decision. Order: operator screen, facts outcome, user-form ownership, then each
    /// candidate policy in config order — its device rule, then its request controls — and the
    /// first that passes wins. `request` carries the justification header and the time.
    pub fn decide(
        &self,
        screen: &OperatorScreen,
        action: &Action,
        op: &Operator,
        facts: &FactsOutcome,
        request: &RequestFacts,
    ) -> Result<Candidate, Denial> {
        if screen.set_id != self.id || !screen.oid.eq_ignore_ascii_case(&op.oid) {
            // A screen from an older policy set (reload mid-request) or another operator: its
            // indices mean nothing here. Fail closed rather than guess.
            return Err(Denial::new(
                Reason::OperatorNotApproved,
                "the policy configuration changed while this request was being checked; retry"
                    .into(),
                None,
            ));
        }
        if let Some(d) = screen.denial() {
            return Err(d);
        }
        let device = &action.managed_device_id;
        let facts = match facts {
            FactsOutcome::Found(f) => f,
            FactsOutcome::NotFound => {
                return Err(Denial::new(
                    Reason::DeviceNotFound,
                    format!("managed device {device} was not found"),
                    None,
                ))
            }
            FactsOutcome::Unavailable => {
                return Err(Denial::new(
                    Reason::DeviceFactsUnavailable,
                    format!(
                        "facts about managed device {device} could not be read from Microsoft Graph; the request was refused rather than decided blind, retry later"
                    ),
                    None,
                ))
            }
        };
        if !facts.managed_device_id.eq_ignore_ascii_case(device) {
            // The lookup answered for a different device: a bug upstream of us; never decide on it.
            return Err(Denial::new(
                Reason::DeviceFactsUnavailable,
                format!("facts read for managed device {device} did not describe that device"),
                None,
            ));
        }
        if let RouteForm::User { user_id } = &action.form {
            let owns = |v: &Option<String>| {
                v.as_deref()
                    .is_some_and(|v| v.eq_ignore_ascii_case(user_id))
            };
            if !owns(&facts.user_id) && !owns(&facts.user_principal_name) {
                return Err(Denial::new(
                    Reason::DeviceUserMismatch,
                    format!("managed device {device} does not belong to user {user_id}"),
                    None,
                ));
            }
        }

        let mut worst: Option<(Stage, Denial)> = None;
        for p in screen.matched.iter().filter_map(|&i| self.policies.get(i)) {
            let failure = device_failure(p, device, facts)
                .or_else(|| control_failure(p, device, op, facts, request))
                .map(|(stage, mut denial)| {
                    denial.break_glass = p.break_glass.is_some();
                    (stage, denial)
                });
            match failure {
                None => {
                    let justification = match &request.justification {
                        Justification::Given(text) => Some(text.clone()),
                        // A malformed header fails every policy's control stage above.
                        _ => None,
                    };
                    return Ok(Candidate {
                        action: action.clone(),
                        operator: op.clone(),
                        device: facts.clone(),
                        policy: p.name.clone(),
                        limits: p.limits.clone(),
                        caps: self.caps.clone(),
                        justification,
                        break_glass: p.break_glass.is_some(),
                    });
                }
                Some((stage, denial)) => {
                    // Strictly greater: on a tie the earlier policy's failure is reported.
                    if worst.as_ref().is_none_or(|(s, _)| stage > *s) {
                        worst = Some((stage, denial));
                    }
                }
            }
        }
        Err(worst.map(|(_, d)| d).unwrap_or_else(|| {
            // Unreachable with a screen from this set (it is non-empty), but deny by default.
            Denial::new(
                Reason::OperatorNotApproved,
                "no passgate policy approves this operator".into(),
                None,
            )
        }))
    }
}

/// Device rule of one policy: registered, group, platform — in that order. None = passes.
fn device_failure(p: &PolicySettings, device: &str, f: &DeviceFacts) -> Option<(Stage, Denial)> {
    let name = p.name.as_str();
    if !p.any_device {
        if f.azure_ad_device_id.is_none() {
            return Some((
                Stage::Registered,
                Denial::new(
                    Reason::DeviceNotRegistered,
                    format!(
                        "policy '{name}' only allows devices in its Entra device groups, but managed device {device} is not registered in Entra ID (no azureADDeviceId), so its group membership cannot be checked"
                    ),
                    Some(name),
                ),
            ));
        }
        if p.device_groups.is_disjoint(&f.member_of) {
            let n = p.device_groups.len();
            let groups = if n == 1 { "group" } else { "groups" };
            return Some((
                Stage::Group,
                Denial::new(
                    Reason::DeviceNotInAllowedGroup,
                    format!(
                        "policy '{name}' does not cover managed device {device}: the device is not a member of the policy's {n} allowed device {groups}"
                    ),
                    Some(name),
                ),
            ));
        }
    }
    if let Some(platforms) = &p.platforms {
        let os = f.operating_system.trim();
        if !platforms.iter().any(|a| a.trim().eq_ignore_ascii_case(os)) {
            return Some((
                Stage::Platform,
                Denial::new(
                    Reason::PlatformNotAllowed,
                    format!(
                        // The device's own platform is not named: an operator must not learn
                        // facts of devices they may not recover (it is in the audit record).
                        "policy '{name}' allows only the platforms {}; managed device {device} is not one of them",
                        platforms.join(", ")
                    ),
                    Some(name),
                ),
            ));
        }
    }
    None
}

/// Request controls of one policy, after its device rule: own device, justification, break-glass
/// expiry — in that order. None = passes.
fn control_failure(
    p: &PolicySettings,
    device: &str,
    op: &Operator,
    f: &DeviceFacts,
    request: &RequestFacts,
) -> Option<(Stage, Denial)> {
    let name = p.name.as_str();
    // Separation of duty: only a person can be a device's primary user. An app-only token's oid
    // is a service principal's, never a device's userId, so the check does not apply to it.
    let own = op.kind == OperatorKind::User
        && f.user_id
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(&op.oid));
    if own && !p.allow_own_device {
        return Some((
            Stage::OwnDevice,
            Denial::new(
                Reason::OwnDeviceNotAllowed,
                format!(
                    "policy '{name}' does not let an operator act on a device of which they are the primary user (managed device {device}); ask another operator"
                ),
                Some(name),
            ),
        ));
    }
    if let Some((missing, message)) =
        controls::justification_failure(name, p.justification.as_ref(), &request.justification)
    {
        let reason = if missing {
            Reason::JustificationRequired
        } else {
            Reason::JustificationInvalid
        };
        return Some((
            Stage::Justification,
            Denial::new(reason, message, Some(name)),
        ));
    }
    if let Some(bg) = &p.break_glass {
        // Active up to and including `active_until`; nothing is admitted after it.
        if request.now > bg.active_until {
            return Some((
                Stage::BreakGlassExpired,
                Denial::new(
                    Reason::BreakGlassExpired,
                    format!(
                        "break-glass policy '{name}' expired at {}; it admits nothing any more",
                        bg.active_until
                            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ),
                    Some(name),
                ),
            ));
        }
    }
    None
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::auth::{OperatorKind, TokenVersion};
    use crate::policy::LimitScope;
    use crate::routes::{ActionKind, ApiVersion};

    pub const DEV: &str = "f61dc341-c9c9-40c1-abbd-6997016f4c9e";
    pub const OID: &str = "0f7e78ba-6e1f-485b-8b8b-fb86895f0498";
    pub const OWNER: &str = "11111111-2222-3333-4444-555555555555";
    const OWNER_UPN: &str = "Ada.Lovelace@Contoso.com";
    const HELPDESK: &str = "aaaaaaaa-0000-0000-0000-000000000001";
    pub const PHONES: &str = "bbbbbbbb-0000-0000-0000-000000000001";
    pub const KIOSKS: &str = "bbbbbbbb-0000-0000-0000-000000000002";

    /// The time every decision in these tests is made at.
    pub fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a valid time")
    }

    pub fn operator(oid: &str) -> Operator {
        Operator {
            oid: oid.into(),
            tid: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            kind: OperatorKind::User,
            upn: Some("op@contoso.com".into()),
            client_app_id: None,
            groups: vec![],
            groups_overage: false,
            roles: vec![],
            scopes: vec![],
            token_version: TokenVersion::V2,
        }
    }

    pub fn action(form: RouteForm, device: &str) -> Action {
        Action {
            kind: ActionKind::RecoverPasscode,
            version: ApiVersion::V1,
            form,
            managed_device_id: device.into(),
        }
    }

    pub fn facts(groups: &[&str], os: &str) -> DeviceFacts {
        DeviceFacts {
            managed_device_id: DEV.into(),
            azure_ad_device_id: Some("6fa60d52-01e7-4b18-8055-4759461fc16b".into()),
            device_object_id: None,
            operating_system: os.into(),
            user_principal_name: Some(OWNER_UPN.into()),
            user_id: Some(OWNER.into()),
            member_of: groups.iter().map(|s| s.to_string()).collect(),
        }
    }

    pub fn set(xs: &[&str]) -> BTreeSet<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    pub fn policy(name: &str) -> PolicySettings {
        PolicySettings {
            name: name.into(),
            description: None,
            users: BTreeSet::new(),
            groups: BTreeSet::new(),
            app_roles: BTreeSet::new(),
            device_groups: BTreeSet::new(),
            any_device: true,
            platforms: None,
            limits: vec![],
            justification: None,
            allow_own_device: false,
            break_glass: None,
        }
    }

    pub fn for_user(name: &str, device_groups: &[&str]) -> PolicySettings {
        PolicySettings {
            users: set(&[OID]),
            device_groups: set(device_groups),
            any_device: device_groups.is_empty(),
            ..policy(name)
        }
    }

    pub fn dm() -> Action {
        action(RouteForm::DeviceManagement, DEV)
    }

    fn run(
        ps: &PolicySet,
        a: &Action,
        op: &Operator,
        f: FactsOutcome,
    ) -> Result<Candidate, Denial> {
        let screen = ps.operator_screen(op);
        ps.decide(&screen, a, op, &f, &RequestFacts::at(now()))
    }

    #[test]
    fn operator_matches_by_oid_group_or_role_only() {
        let ps = PolicySet::new(vec![
            for_user("by-oid", &[]),
            PolicySettings {
                groups: set(&[HELPDESK]),
                ..policy("by-group")
            },
            PolicySettings {
                app_roles: set(&["Passgate.Recover"]),
                ..policy("by-role")
            },
        ]);
        let by_oid = ps.operator_screen(&operator(OID));
        assert_eq!(by_oid.matched, vec![0]);

        let mut g = operator(OWNER);
        g.groups = vec![HELPDESK.to_uppercase()];
        assert_eq!(ps.operator_screen(&g).matched, vec![1]);

        let mut r = operator(OWNER);
        r.roles = vec!["Passgate.Recover".into()];
        assert_eq!(ps.operator_screen(&r).matched, vec![2]);
        // Role values are exact strings: a differently-cased role is another role.
        r.roles = vec!["passgate.recover".into()];
        assert!(ps.operator_screen(&r).is_empty());

        let nobody = ps.operator_screen(&operator(OWNER));
        assert!(nobody.is_empty());
        let d = nobody.denial().unwrap();
        assert_eq!(d.reason, Reason::OperatorNotApproved);
        assert!(d.message.contains(OWNER));
        assert!(!d.message.contains("overage"));
        // decide() refuses an empty screen too, whatever the facts say.
        let e = ps
            .decide(
                &nobody,
                &dm(),
                &operator(OWNER),
                &FactsOutcome::Found(facts(&[], "Windows")),
                &RequestFacts::at(now()),
            )
            .unwrap_err();
        assert_eq!(e.reason, Reason::OperatorNotApproved);
    }

    #[test]
    fn group_overage_without_other_match_is_not_approved_and_says_why() {
        let ps = PolicySet::new(vec![PolicySettings {
            groups: set(&[HELPDESK]),
            ..policy("g")
        }]);
        let mut op = operator(OWNER);
        op.groups_overage = true;
        let screen = ps.operator_screen(&op);
        assert!(screen.is_empty());
        let d = screen.denial().unwrap();
        assert_eq!(d.reason, Reason::OperatorNotApproved);
        assert!(d.message.contains("group overage"), "{}", d.message);

        // Overage does not stop a match by oid.
        let ps = PolicySet::new(vec![for_user("u", &[])]);
        let mut op = operator(OID);
        op.groups_overage = true;
        assert!(!ps.operator_screen(&op).is_empty());
    }

    #[test]
    fn groups_to_check_is_the_sorted_union_of_candidate_device_groups() {
        let ps = PolicySet::new(vec![
            for_user("a", &[KIOSKS]),
            for_user("b", &[PHONES, KIOSKS]),
            for_user("any", &[]),
            PolicySettings {
                device_groups: set(&["cccccccc-0000-0000-0000-000000000001"]),
                any_device: false,
                ..policy("other-op")
            },
        ]);
        let screen = ps.operator_screen(&operator(OID));
        assert_eq!(
            ps.groups_to_check(&screen),
            vec![PHONES.to_string(), KIOSKS.to_string()]
        );
    }

    #[test]
    fn facts_not_found_and_unavailable() {
        let ps = PolicySet::new(vec![for_user("p", &[])]);
        let op = operator(OID);
        let e = run(&ps, &dm(), &op, FactsOutcome::NotFound).unwrap_err();
        assert_eq!(e.reason, Reason::DeviceNotFound);
        assert!(e.message.contains(DEV));
        let e = run(&ps, &dm(), &op, FactsOutcome::Unavailable).unwrap_err();
        assert_eq!(e.reason, Reason::DeviceFactsUnavailable);
        assert_eq!(e.policy, None);
    }

    #[test]
    fn facts_for_another_device_fail_closed() {
        let ps = PolicySet::new(vec![for_user("p", &[])]);
        let other = action(
            RouteForm::DeviceManagement,
            "99999999-c9c9-40c1-abbd-6997016f4c9e",
        );
        let e = run(
            &ps,
            &other,
            &operator(OID),
            FactsOutcome::Found(facts(&[], "Windows")),
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::DeviceFactsUnavailable);
    }

    #[test]
    fn user_form_must_name_the_device_owner_by_id_or_upn() {
        let ps = PolicySet::new(vec![for_user("p", &[])]);
        let op = operator(OID);
        let f = || FactsOutcome::Found(facts(&[], "Windows"));
        let by_id = action(
            RouteForm::User {
                user_id: OWNER.to_uppercase(),
            },
            DEV,
        );
        assert!(run(&ps, &by_id, &op, f()).is_ok());
        let by_upn = action(
            RouteForm::User {
                user_id: OWNER_UPN.to_ascii_lowercase(),
            },
            DEV,
        );
        assert!(run(&ps, &by_upn, &op, f()).is_ok());

        let wrong_id = action(
            RouteForm::User {
                user_id: OID.into(),
            },
            DEV,
        );
        let e = run(&ps, &wrong_id, &op, f()).unwrap_err();
        assert_eq!(e.reason, Reason::DeviceUserMismatch);
        let wrong_upn = action(
            RouteForm::User {
                user_id: "eve@contoso.com".into(),
            },
            DEV,
        );
        assert_eq!(
            run(&ps, &wrong_upn, &op, f()).unwrap_err().reason,
            Reason::DeviceUserMismatch
        );

        // A device with no primary user matches no user form.
        let mut ownerless = facts(&[], "Windows");
        ownerless.user_id = None;
        ownerless.user_principal_name = None;
        let e = run(&ps, &by_id, &op, FactsOutcome::Found(ownerless)).unwrap_err();
        assert_eq!(e.reason, Reason::DeviceUserMismatch);

        // Other forms are not checked against the owner.
        let app = action(
            RouteForm::DetectedApp {
                detected_app_id: "abc".into(),
            },
            DEV,
        );
        assert!(run(&ps, &app, &op, f()).is_ok());
    }

    #[test]
    fn any_device_needs_no_registration_or_groups() {
        let ps = PolicySet::new(vec![for_user("any", &[])]);
        let mut f = facts(&[], "iOS");
        f.azure_ad_device_id = None;
        let c = run(&ps, &dm(), &operator(OID), FactsOutcome::Found(f)).unwrap();
        assert_eq!(c.policy(), "any");
    }

    #[test]
    fn unregistered_device_fails_a_group_policy() {
        let ps = PolicySet::new(vec![for_user("phones", &[PHONES])]);
        let mut f = facts(&[PHONES], "Windows");
        f.azure_ad_device_id = None;
        let e = run(&ps, &dm(), &operator(OID), FactsOutcome::Found(f)).unwrap_err();
        assert_eq!(e.reason, Reason::DeviceNotRegistered);
        assert_eq!(e.policy.as_deref(), Some("phones"));
        assert!(e.message.contains("'phones'") && e.message.contains("not registered"));
    }

    #[test]
    fn device_outside_the_groups_is_refused() {
        let ps = PolicySet::new(vec![for_user("phones", &[PHONES])]);
        let e = run(
            &ps,
            &dm(),
            &operator(OID),
            FactsOutcome::Found(facts(&[KIOSKS], "Windows")),
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::DeviceNotInAllowedGroup);
        assert_eq!(e.policy.as_deref(), Some("phones"));
        assert!(e.message.contains("not a member"), "{}", e.message);
        let ok = run(
            &ps,
            &dm(),
            &operator(OID),
            FactsOutcome::Found(facts(&[PHONES], "Windows")),
        );
        assert_eq!(ok.unwrap().policy(), "phones");
    }

    #[test]
    fn platforms_compare_case_insensitively() {
        let p = PolicySettings {
            platforms: Some(vec!["Windows Phone".into()]),
            ..for_user("wp", &[PHONES])
        };
        let ps = PolicySet::new(vec![p]);
        let op = operator(OID);
        assert!(run(
            &ps,
            &dm(),
            &op,
            FactsOutcome::Found(facts(&[PHONES], "windows phone"))
        )
        .is_ok());
        assert!(run(
            &ps,
            &dm(),
            &op,
            FactsOutcome::Found(facts(&[PHONES], "WINDOWS PHONE"))
        )
        .is_ok());
        let e = run(
            &ps,
            &dm(),
            &op,
            FactsOutcome::Found(facts(&[PHONES], "iOS")),
        )
        .unwrap_err();
        assert_eq!(e.reason, Reason::PlatformNotAllowed);
        // Finding 6: the answer names the allowed platforms, never the device's own.
        assert!(
            e.message.contains("Windows Phone") && !e.message.contains("iOS"),
            "{}",
            e.message
        );
        // Group failure comes before the platform check within a policy.
        let e = run(&ps, &dm(), &op, FactsOutcome::Found(facts(&[], "iOS"))).unwrap_err();
        assert_eq!(e.reason, Reason::DeviceNotInAllowedGroup);
    }

    #[test]
    fn first_passing_policy_in_order_wins_and_carries_its_limits() {
        let lim = Limit {
            scope: LimitScope::PerDevice,
            count: 1,
            window: Duration::from_secs(600),
        };
        let ps = PolicySet::new(vec![
            for_user("kiosks", &[KIOSKS]),
            PolicySettings {
                limits: vec![lim],
                ..for_user("phones", &[PHONES])
            },
            for_user("any", &[]),
        ]);
        let op = operator(OID);
        let c = run(
            &ps,
            &dm(),
            &op,
            FactsOutcome::Found(facts(&[PHONES, KIOSKS], "Windows")),
        )
        .unwrap();
        assert_eq!(c.policy(), "kiosks");
        let c = run(
            &ps,
            &dm(),
            &op,
            FactsOutcome::Found(facts(&[PHONES], "Windows")),
        )
        .unwrap();
        assert_eq!(c.policy(), "phones");
        assert_eq!(c.limits(), &[lim]);
        let c = run(&ps, &dm(), &op, FactsOutcome::Found(facts(&[], "Windows"))).unwrap();
        assert_eq!(c.policy(), "any");
    }

    #[test]
    fn the_furthest_failure_is_reported() {
        let op = operator(OID);
        let wp = |n: &str, g: &[&str]| PolicySettings {
            platforms: Some(vec!["Windows Phone".into()]),
            ..for_user(n, g)
        };
        // group failure (a) vs platform failure (b): b got further.
        let ps = PolicySet::new(vec![for_user("a", &[KIOSKS]), wp("b", &[PHONES])]);
        let e = run(
            &ps,
            &dm(),
            &op,
            FactsOutcome::Found(facts(&[PHONES], "Android")),
        )
        .unwrap_err();
        assert_eq!(
            (e.reason, e.policy.as_deref()),
            (Reason::PlatformNotAllowed, Some("b"))
        );
        // Same when the further one comes first.
        let ps = PolicySet::new(vec![wp("b", &[PHONES]), for_user("a", &[KIOSKS])]);
        let e = run(
            &ps,
            &dm(),
            &op,
            FactsOutcome::Found(facts(&[PHONES], "Android")),
        )
        .unwrap_err();
        assert_eq!(
            (e.reason, e.policy.as_deref()),
            (Reason::PlatformNotAllowed, Some("b"))
        );
        // Unregistered device: a group policy fails at "registered", an any-device policy with a
        // platform list gets as far as the platform.
        let ps = PolicySet::new(vec![for_user("a", &[KIOSKS]), wp("c", &[])]);
        let mut f = facts(&[], "Android");
        f.azure_ad_device_id = None;
        let e = run(&ps, &dm(), &op, FactsOutcome::Found(f)).unwrap_err();
        assert_eq!(
            (e.reason, e.policy.as_deref()),
            (Reason::PlatformNotAllowed, Some("c"))
        );
        // Ties: the earlier policy is reported.
        let ps = PolicySet::new(vec![
            for_user("first", &[KIOSKS]),
            for_user("second", &[KIOSKS]),
        ]);
        let e = run(&ps, &dm(), &op, FactsOutcome::Found(facts(&[], "Windows"))).unwrap_err();
        assert_eq!(
            (e.reason, e.policy.as_deref()),
            (Reason::DeviceNotInAllowedGroup, Some("first"))
        );
    }

    #[test]
    fn only_screened_policies_are_considered() {
        // "open" would admit anything but names another operator.
        let ps = PolicySet::new(vec![
            PolicySettings {
                users: set(&[OWNER]),
                ..policy("open")
            },
            for_user("mine", &[KIOSKS]),
        ]);
        let e = run(
            &ps,
            &dm(),
            &operator(OID),
            FactsOutcome::Found(facts(&[], "Windows")),
        )
        .unwrap_err();
        assert_eq!(
            (e.reason, e.policy.as_deref()),
            (Reason::DeviceNotInAllowedGroup, Some("mine"))
        );
    }

    #[test]
    fn a_screen_from_another_set_or_operator_is_refused() {
        let a = PolicySet::new(vec![for_user("p", &[])]);
        let b = PolicySet::new(vec![for_user("p", &[])]);
        let op = operator(OID);
        let f = FactsOutcome::Found(facts(&[], "Windows"));
        let screen = a.operator_screen(&op);
        let r = RequestFacts::at(now());
        assert_eq!(
            b.decide(&screen, &dm(), &op, &f, &r).unwrap_err().reason,
            Reason::OperatorNotApproved
        );
        assert!(b.groups_to_check(&screen).is_empty());
        let e = a
            .decide(&screen, &dm(), &operator(OWNER), &f, &r)
            .unwrap_err();
        assert_eq!(e.reason, Reason::OperatorNotApproved);
        assert!(a.decide(&screen, &dm(), &op, &f, &r).is_ok());
    }
}
