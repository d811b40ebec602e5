//! Privileged-access controls a policy adds after its device rule: a justification the operator
//! states in the `Passgate-Justification` header, separation of duty (own device) and break-glass
//! expiry. Plain data and pure checks: nothing here may do I/O, read the clock (`now` is a fact
//! passed in) or see a header map (the pipeline hands over the header's raw bytes).

use chrono::{DateTime, Utc};

/// The request header an operator states their justification in (Graph SDKs and PowerShell can
/// add headers). passgate never forwards it: the upstream request is built from nothing inbound.
pub const JUSTIFICATION_HEADER: &str = "Passgate-Justification";
/// Longest accepted justification, in bytes (after trimming surrounding spaces).
pub const MAX_JUSTIFICATION_BYTES: usize = 256;
/// Longest accepted `justification.pattern`, in bytes.
pub const MAX_PATTERN_BYTES: usize = 512;
/// Bound on a compiled pattern's program, so a pathological pattern is a config error rather
/// than memory spent on every request (matching itself is linear time in the `regex` crate).
const PATTERN_SIZE_LIMIT: usize = 1 << 20;

/// A justification pattern, compiled once at config load. It must match the WHOLE value: passgate
/// anchors it as `^(?:pattern)$`, so `INC[0-9]{7}` cannot be satisfied by `see INC1234567 or not`
/// (writing `^…$` yourself is harmless).
#[derive(Clone)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

/// Why a pattern was refused; shown at the config key with a hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("the pattern is empty")]
    Empty,
    #[error("the pattern is {0} bytes, more than the {MAX_PATTERN_BYTES} allowed")]
    TooLong(usize),
    #[error("not a valid regular expression: {0}")]
    Syntax(String),
}

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, PatternError> {
        if source.trim().is_empty() {
            return Err(PatternError::Empty);
        }
        if source.len() > MAX_PATTERN_BYTES {
            return Err(PatternError::TooLong(source.len()));
        }
        let regex = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(PATTERN_SIZE_LIMIT)
            .dfa_size_limit(PATTERN_SIZE_LIMIT)
            .build()
            .map_err(|e| {
                // The crate's message spans lines (the pattern, a caret, the error); keep the
                // last line, which says what is wrong, so the config error stays one line.
                let text = e.to_string();
                let last = text
                    .lines()
                    .map(str::trim)
                    .rfind(|l| !l.is_empty())
                    .unwrap_or("")
                    .to_string();
                PatternError::Syntax(last)
            })?;
        Ok(Pattern {
            source: source.to_string(),
            regex,
        })
    }

    /// The pattern as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        self.regex.is_match(value)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

/// `justification:` of one policy. At least one of the two is set (config::load refuses a rule
/// that says nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JustificationRule {
    /// The header must be present (and non-empty).
    pub required: bool,
    /// When present, the value must match this (whole-value) pattern.
    pub pattern: Option<Pattern>,
}

/// `break_glass: true` with its `active_until`: an emergency policy that admits nothing after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakGlass {
    pub active_until: DateTime<Utc>,
}

/// Why a `Passgate-Justification` header cannot be taken as a statement. Such a header is refused
/// whatever the policy: what the audit trail records must be exactly what the operator sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// The header appeared more than once.
    Repeated,
    NotUtf8,
    /// Longer than [`MAX_JUSTIFICATION_BYTES`]; keeps that many bytes of it for the record.
    TooLong {
        bytes: usize,
        prefix: String,
    },
    /// A control character (tab, …) or a bidirectional formatting character, which could make
    /// the audit trail read differently from what was sent.
    ControlCharacter,
}

impl Malformed {
    fn describe(&self) -> String {
        let h = JUSTIFICATION_HEADER;
        match self {
            Malformed::Repeated => format!("the {h} header was sent more than once; send it once"),
            Malformed::NotUtf8 => format!("the {h} header is not UTF-8 text"),
            Malformed::TooLong { bytes, .. } => format!(
                "the {h} header is {bytes} bytes long, more than the {MAX_JUSTIFICATION_BYTES} allowed"
            ),
            Malformed::ControlCharacter => format!(
                "the {h} header contains a control or bidirectional formatting character"
            ),
        }
    }
}

/// What the request said about why, read from `Passgate-Justification`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Justification {
    /// No header, or only spaces.
    Absent,
    /// The statement, trimmed; at most [`MAX_JUSTIFICATION_BYTES`], no control characters.
    Given(String),
    Malformed(Malformed),
}

impl Justification {
    /// Reads the header's values (every occurrence, as raw bytes).
    pub fn from_values<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Justification {
        let mut values = values.into_iter();
        let Some(first) = values.next() else {
            return Justification::Absent;
        };
        if values.next().is_some() {
            return Justification::Malformed(Malformed::Repeated);
        }
        let Ok(text) = std::str::from_utf8(first) else {
            return Justification::Malformed(Malformed::NotUtf8);
        };
        let text = text.trim_matches([' ', '\t']);
        if text.is_empty() {
            return Justification::Absent;
        }
        if text.chars().any(is_refused_char) {
            return Justification::Malformed(Malformed::ControlCharacter);
        }
        if text.len() > MAX_JUSTIFICATION_BYTES {
            return Justification::Malformed(Malformed::TooLong {
                bytes: text.len(),
                prefix: crate::text::truncated(text, MAX_JUSTIFICATION_BYTES).to_string(),
            });
        }
        Justification::Given(text.to_string())
    }

    /// What the audit record keeps: the statement, or the first bytes of an over-long one; never
    /// a value with control characters or one that is not UTF-8.
    pub fn recorded(&self) -> Option<&str> {
        match self {
            Justification::Given(s) => Some(s),
            Justification::Malformed(Malformed::TooLong { prefix, .. }) => Some(prefix),
            _ => None,
        }
    }
}

fn is_refused_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Facts about the request itself that the decision needs besides operator, action and device:
/// the justification and the time. Read by the caller; the decision stays pure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    pub justification: Justification,
    /// When the request is decided (compared with a break-glass policy's `active_until`).
    pub now: DateTime<Utc>,
}

impl RequestFacts {
    /// A request without a justification header, decided at `now`.
    pub fn at(now: DateTime<Utc>) -> RequestFacts {
        RequestFacts {
            justification: Justification::Absent,
            now,
        }
    }

    /// The same request with a justification header of this text.
    pub fn justified(self, text: &str) -> RequestFacts {
        RequestFacts {
            justification: Justification::from_values([text.as_bytes()]),
            ..self
        }
    }
}

/// Why a policy's justification rule refuses the request: (required-but-missing?, message).
pub(super) fn justification_failure(
    policy: &str,
    rule: Option<&JustificationRule>,
    given: &Justification,
) -> Option<(bool, String)> {
    let h = JUSTIFICATION_HEADER;
    match given {
        Justification::Malformed(m) => Some((false, m.describe())),
        Justification::Absent => match rule {
            Some(r) if r.required => {
                let format = r
                    .pattern
                    .as_ref()
                    .map(|p| format!(" matching `{}`", p.as_str()))
                    .unwrap_or_default();
                Some((
                    true,
                    format!(
                        "policy '{policy}' requires a justification: send the {h} header{format} (e.g. the ticket number)"
                    ),
                ))
            }
            _ => None,
        },
        Justification::Given(text) => {
            let p = rule.and_then(|r| r.pattern.as_ref())?;
            if p.matches(text) {
                return None;
            }
            // The value is not echoed: the operator knows what they sent, and the answer never
            // repeats client input beyond what it must.
            Some((
                false,
                format!(
                    "policy '{policy}' requires the {h} header to match `{}` (the whole value); the one sent does not",
                    p.as_str()
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_the_whole_value() {
        let p = Pattern::new("(INC|CHG)[0-9]{7}").unwrap();
        assert!(p.matches("INC0012345"));
        assert!(p.matches("CHG1234567"));
        assert!(!p.matches("INC0012345 please"));
        assert!(!p.matches("see INC0012345"));
        assert!(!p.matches("INC001234"));
        // An alternation without a group is still anchored as a whole.
        let p = Pattern::new("INC[0-9]+|CHG[0-9]+").unwrap();
        assert!(p.matches("CHG1") && p.matches("INC2"));
        assert!(!p.matches("INC1 CHG2"));
        // Anchors written by the user are harmless.
        let p = Pattern::new("^(INC|CHG)[0-9]{7}$").unwrap();
        assert!(p.matches("INC0012345") && !p.matches("xINC0012345"));
        assert_eq!(p.as_str(), "^(INC|CHG)[0-9]{7}$");
        assert_eq!(format!("{p:?}"), "Pattern(\"^(INC|CHG)[0-9]{7}$\")");
    }

    #[test]
    fn bad_patterns_are_refused_with_one_line() {
        assert_eq!(Pattern::new(""), Err(PatternError::Empty));
        assert_eq!(Pattern::new("  "), Err(PatternError::Empty));
        assert!(matches!(
            Pattern::new(&"a".repeat(513)),
            Err(PatternError::TooLong(513))
        ));
        for bad in ["(INC", "[0-9", "a{2,1}", "(?<=x)y", "\\1"] {
            match Pattern::new(bad) {
                Err(PatternError::Syntax(m)) => {
                    assert!(!m.is_empty() && !m.contains('\n'), "{bad}: {m:?}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        // A pattern whose program would be huge is refused at load, not at request time.
        assert!(matches!(
            Pattern::new("\\w{1000}\\w{1000}\\w{1000}"),
            Err(PatternError::Syntax(_))
        ));
    }

    #[test]
    fn header_values_are_read_strictly() {
        use Justification::*;
        let one = |v: &[u8]| Justification::from_values([v]);
        assert_eq!(Justification::from_values([]), Absent);
        assert_eq!(one(b""), Absent);
        assert_eq!(one(b"   "), Absent);
        assert_eq!(one(b"  INC0012345 "), Given("INC0012345".into()));
        assert_eq!(one("Störung ✓".as_bytes()), Given("Störung ✓".into()));
        assert_eq!(
            Justification::from_values([&b"a"[..], &b"b"[..]]),
            Malformed(super::Malformed::Repeated)
        );
        assert_eq!(one(&[0x49, 0xff]), Malformed(super::Malformed::NotUtf8));
        assert_eq!(
            one(b"INC\t1"),
            Malformed(super::Malformed::ControlCharacter)
        );
        assert_eq!(
            one("INC1\u{202e}2".as_bytes()),
            Malformed(super::Malformed::ControlCharacter)
        );
        let exactly = "x".repeat(MAX_JUSTIFICATION_BYTES);
        assert_eq!(one(exactly.as_bytes()), Given(exactly.clone()));
        // Over the bound: refused, and only the bound's worth is kept, on a character boundary.
        let long = format!("{}é", "x".repeat(MAX_JUSTIFICATION_BYTES - 1));
        let j = one(long.as_bytes());
        assert!(
            matches!(&j, Malformed(super::Malformed::TooLong { bytes, .. }) if *bytes == 257),
            "{j:?}"
        );
        assert_eq!(j.recorded(), Some("x".repeat(255).as_str()));
        assert_eq!(one(b"INC1").recorded(), Some("INC1"));
        assert_eq!(one(&[0xff]).recorded(), None);
        assert_eq!(Absent.recorded(), None);
    }

    /// The decision with the controls, table-driven: each case a policy list, an operator, the
    /// device facts and the request, and the exact outcome.
    mod decision {
        use super::super::super::decide::tests::{
            action, facts, for_user, now, operator, set, KIOSKS, OID, OWNER, PHONES,
        };
        use super::super::*;
        use crate::auth::{Operator, OperatorKind};
        use crate::error::Reason;
        use crate::policy::facts::DeviceFacts;
        use crate::policy::{Candidate, Denial, FactsOutcome, PolicySet, PolicySettings};
        use crate::routes::RouteForm;

        /// Names both test operators: OID (not the device's user) and OWNER (its primary user).
        fn pol(name: &str, device_groups: &[&str]) -> PolicySettings {
            PolicySettings {
                users: set(&[OID, OWNER]),
                ..for_user(name, device_groups)
            }
        }

        fn justified(p: PolicySettings, required: bool, pattern: Option<&str>) -> PolicySettings {
            PolicySettings {
                justification: Some(JustificationRule {
                    required,
                    pattern: pattern.map(|t| Pattern::new(t).unwrap()),
                }),
                ..p
            }
        }

        fn own_ok(p: PolicySettings) -> PolicySettings {
            PolicySettings {
                allow_own_device: true,
                ..p
            }
        }

        /// A break-glass policy (required justification) active until `now() + secs`.
        fn glass(name: &str, secs: i64) -> PolicySettings {
            PolicySettings {
                break_glass: Some(BreakGlass {
                    active_until: now() + chrono::Duration::seconds(secs),
                }),
                ..justified(pol(name, &[]), true, Some("INC[0-9]{7}"))
            }
        }

        fn app(oid: &str) -> Operator {
            Operator {
                kind: OperatorKind::App,
                upn: None,
                ..operator(oid)
            }
        }

        fn req() -> RequestFacts {
            RequestFacts::at(now())
        }

        #[derive(Debug)]
        enum Want {
            /// Admitted by this policy, with this recorded justification and break-glass flag.
            Admit(&'static str, Option<&'static str>, bool),
            /// Refused with this reason, naming this policy, with this break-glass flag.
            Deny(Reason, Option<&'static str>, bool),
        }

        struct Case {
            name: &'static str,
            policies: Vec<PolicySettings>,
            op: Operator,
            device: DeviceFacts,
            request: RequestFacts,
            want: Want,
        }

        fn decide(c: &Case) -> Result<Candidate, Denial> {
            let ps = PolicySet::new(c.policies.clone());
            let screen = ps.operator_screen(&c.op);
            let a = action(RouteForm::DeviceManagement, &c.device.managed_device_id);
            ps.decide(
                &screen,
                &a,
                &c.op,
                &FactsOutcome::Found(c.device.clone()),
                &c.request,
            )
        }

        fn cases() -> Vec<Case> {
            use Want::*;
            let dev = || facts(&[PHONES], "Windows");
            let case = |name, policies, op, request, want| Case {
                name,
                policies,
                op,
                device: dev(),
                request,
                want,
            };
            let inc = "INC[0-9]{7}";
            let mut shouting = dev();
            shouting.user_id = Some(OWNER.to_uppercase());
            let mut ownerless = dev();
            ownerless.user_id = None;
            vec![
                // --- justification ---
                case(
                    "no rule, no header",
                    vec![pol("p", &[])],
                    operator(OID),
                    req(),
                    Admit("p", None, false),
                ),
                case(
                    "no rule, a header is still recorded",
                    vec![pol("p", &[])],
                    operator(OID),
                    req().justified(" CHG42 "),
                    Admit("p", Some("CHG42"), false),
                ),
                case(
                    "required, missing",
                    vec![justified(pol("p", &[]), true, Some(inc))],
                    operator(OID),
                    req(),
                    Deny(Reason::JustificationRequired, Some("p"), false),
                ),
                case(
                    "required, blank is missing",
                    vec![justified(pol("p", &[]), true, None)],
                    operator(OID),
                    req().justified("   "),
                    Deny(Reason::JustificationRequired, Some("p"), false),
                ),
                case(
                    "required, any text",
                    vec![justified(pol("p", &[]), true, None)],
                    operator(OID),
                    req().justified("printer jam"),
                    Admit("p", Some("printer jam"), false),
                ),
                case(
                    "required, not matching",
                    vec![justified(pol("p", &[]), true, Some(inc))],
                    operator(OID),
                    req().justified("INC123"),
                    Deny(Reason::JustificationInvalid, Some("p"), false),
                ),
                case(
                    "required, matching only in part",
                    vec![justified(pol("p", &[]), true, Some(inc))],
                    operator(OID),
                    req().justified("INC1234567 and more"),
                    Deny(Reason::JustificationInvalid, Some("p"), false),
                ),
                case(
                    "required, matching",
                    vec![justified(pol("p", &[]), true, Some(inc))],
                    operator(OID),
                    req().justified("INC1234567"),
                    Admit("p", Some("INC1234567"), false),
                ),
                case(
                    "optional pattern, absent",
                    vec![justified(pol("p", &[]), false, Some(inc))],
                    operator(OID),
                    req(),
                    Admit("p", None, false),
                ),
                case(
                    "optional pattern, not matching",
                    vec![justified(pol("p", &[]), false, Some(inc))],
                    operator(OID),
                    req().justified("because"),
                    Deny(Reason::JustificationInvalid, Some("p"), false),
                ),
                case(
                    "malformed header fails even a policy without a rule",
                    vec![pol("p", &[])],
                    operator(OID),
                    RequestFacts {
                        justification: Justification::from_values([&b"a"[..], &b"b"[..]]),
                        now: now(),
                    },
                    Deny(Reason::JustificationInvalid, Some("p"), false),
                ),
                case(
                    "header with a tab",
                    vec![pol("p", &[])],
                    operator(OID),
                    req().justified("INC\t1"),
                    Deny(Reason::JustificationInvalid, Some("p"), false),
                ),
                // --- separation of duty ---
                case(
                    "own device refused by default",
                    vec![pol("p", &[])],
                    operator(OWNER),
                    req(),
                    Deny(Reason::OwnDeviceNotAllowed, Some("p"), false),
                ),
                case(
                    "own device allowed when written",
                    vec![own_ok(pol("p", &[]))],
                    operator(OWNER),
                    req(),
                    Admit("p", None, false),
                ),
                Case {
                    device: shouting.clone(),
                    ..case(
                        "own device compared case-insensitively",
                        vec![pol("p", &[])],
                        operator(OWNER),
                        req(),
                        Deny(Reason::OwnDeviceNotAllowed, Some("p"), false),
                    )
                },
                case(
                    "an app's oid is never a device's user",
                    vec![pol("p", &[])],
                    app(OWNER),
                    req(),
                    Admit("p", None, false),
                ),
                Case {
                    device: ownerless.clone(),
                    ..case(
                        "a device without a primary user is nobody's own",
                        vec![pol("p", &[])],
                        operator(OWNER),
                        req(),
                        Admit("p", None, false),
                    )
                },
                case(
                    "own device is checked before the justification",
                    vec![justified(pol("p", &[]), true, None)],
                    operator(OWNER),
                    req(),
                    Deny(Reason::OwnDeviceNotAllowed, Some("p"), false),
                ),
                // --- break-glass ---
                case(
                    "break-glass, active, justified",
                    vec![glass("bg", 60)],
                    operator(OID),
                    req().justified("INC7654321"),
                    Admit("bg", Some("INC7654321"), true),
                ),
                case(
                    "break-glass, at active_until exactly",
                    vec![glass("bg", 0)],
                    operator(OID),
                    req().justified("INC7654321"),
                    Admit("bg", Some("INC7654321"), true),
                ),
                case(
                    "break-glass, expired",
                    vec![glass("bg", -1)],
                    operator(OID),
                    req().justified("INC7654321"),
                    Deny(Reason::BreakGlassExpired, Some("bg"), true),
                ),
                case(
                    "break-glass, expired and unjustified: justification first",
                    vec![glass("bg", -1)],
                    operator(OID),
                    req(),
                    Deny(Reason::JustificationRequired, Some("bg"), true),
                ),
                case(
                    "break-glass, device stage failure is flagged too",
                    vec![PolicySettings {
                        any_device: false,
                        device_groups: set(&[KIOSKS]),
                        ..glass("bg", 60)
                    }],
                    operator(OID),
                    req().justified("INC7654321"),
                    Deny(Reason::DeviceNotInAllowedGroup, Some("bg"), true),
                ),
                case(
                    "break-glass, own device still refused",
                    vec![glass("bg", 60)],
                    operator(OWNER),
                    req().justified("INC7654321"),
                    Deny(Reason::OwnDeviceNotAllowed, Some("bg"), true),
                ),
                // --- between policies ---
                case(
                    "a policy without the rule admits first",
                    vec![
                        justified(pol("strict", &[]), true, Some(inc)),
                        pol("lax", &[]),
                    ],
                    operator(OID),
                    req(),
                    Admit("lax", None, false),
                ),
                case(
                    "the first passing policy wins over a later break-glass",
                    vec![pol("normal", &[]), glass("bg", 60)],
                    operator(OID),
                    req().justified("INC7654321"),
                    Admit("normal", Some("INC7654321"), false),
                ),
                case(
                    "break-glass only when the normal policy fails",
                    vec![pol("normal", &[KIOSKS]), glass("bg", 60)],
                    operator(OID),
                    req().justified("INC7654321"),
                    Admit("bg", Some("INC7654321"), true),
                ),
                case(
                    "justification failure outranks a group failure",
                    vec![
                        pol("groups", &[KIOSKS]),
                        justified(pol("just", &[]), true, None),
                    ],
                    operator(OID),
                    req(),
                    Deny(Reason::JustificationRequired, Some("just"), false),
                ),
                case(
                    "... in either order",
                    vec![
                        justified(pol("just", &[]), true, None),
                        pol("groups", &[KIOSKS]),
                    ],
                    operator(OID),
                    req(),
                    Deny(Reason::JustificationRequired, Some("just"), false),
                ),
                case(
                    "justification outranks own device",
                    vec![
                        pol("own", &[]),
                        justified(own_ok(pol("just", &[])), true, Some(inc)),
                    ],
                    operator(OWNER),
                    req().justified("nope"),
                    Deny(Reason::JustificationInvalid, Some("just"), false),
                ),
                case(
                    "own device outranks platform",
                    vec![
                        PolicySettings {
                            platforms: Some(vec!["iOS".into()]),
                            ..pol("ios", &[])
                        },
                        pol("own", &[]),
                    ],
                    operator(OWNER),
                    req(),
                    Deny(Reason::OwnDeviceNotAllowed, Some("own"), false),
                ),
                case(
                    "expiry outranks everything",
                    vec![
                        justified(pol("just", &[]), true, Some("CHG[0-9]+")),
                        glass("bg", -5),
                    ],
                    operator(OID),
                    req().justified("INC7654321"),
                    Deny(Reason::BreakGlassExpired, Some("bg"), true),
                ),
                case(
                    "expired break-glass, then a normal policy admits",
                    vec![glass("bg", -5), pol("normal", &[])],
                    operator(OID),
                    req().justified("INC7654321"),
                    Admit("normal", Some("INC7654321"), false),
                ),
                case(
                    "ties go to the earlier policy",
                    vec![
                        justified(pol("a", &[]), true, None),
                        justified(pol("b", &[]), true, None),
                    ],
                    operator(OID),
                    req(),
                    Deny(Reason::JustificationRequired, Some("a"), false),
                ),
                case(
                    "own device allowed by a later policy only",
                    vec![pol("strict", &[]), own_ok(pol("mine", &[]))],
                    operator(OWNER),
                    req(),
                    Admit("mine", None, false),
                ),
            ]
        }

        #[test]
        fn the_controls_decide_as_the_table_says() {
            for c in cases() {
                let got = decide(&c);
                match (&c.want, got) {
                    (Want::Admit(policy, justification, bg), Ok(cand)) => {
                        assert_eq!(cand.policy(), *policy, "{}", c.name);
                        assert_eq!(cand.justification(), *justification, "{}", c.name);
                        assert_eq!(cand.break_glass(), *bg, "{}", c.name);
                    }
                    (Want::Deny(reason, policy, bg), Err(d)) => {
                        assert_eq!(
                            (d.reason, d.policy.as_deref(), d.break_glass),
                            (*reason, *policy, *bg),
                            "{}: {}",
                            c.name,
                            d.message
                        );
                    }
                    (want, Ok(cand)) => {
                        panic!("{}: wanted {want:?}, admitted by {}", c.name, cand.policy())
                    }
                    (want, Err(d)) => panic!("{}: wanted {want:?}, refused: {d:?}", c.name),
                }
            }
        }

        #[test]
        fn refusal_messages_name_the_header_and_pattern_but_never_echo_the_value() {
            let run = |p: PolicySettings, op: Operator, r: RequestFacts| {
                let c = Case {
                    name: "",
                    policies: vec![p],
                    op,
                    device: facts(&[], "Windows"),
                    request: r,
                    want: Want::Admit("", None, false),
                };
                decide(&c).unwrap_err()
            };
            let strict = || justified(pol("p", &[]), true, Some("(INC|CHG)[0-9]{7}"));
            let d = run(strict(), operator(OID), req());
            assert!(
                d.message.contains("Passgate-Justification")
                    && d.message.contains("(INC|CHG)[0-9]{7}"),
                "{}",
                d.message
            );
            let d = run(strict(), operator(OID), req().justified("SECRET-ish text"));
            assert!(
                d.message.contains("Passgate-Justification")
                    && d.message.contains("`(INC|CHG)[0-9]{7}`")
                    && !d.message.contains("SECRET-ish"),
                "{}",
                d.message
            );
            let long = "x".repeat(300);
            let d = run(pol("p", &[]), operator(OID), req().justified(&long));
            assert!(
                d.message.contains("300 bytes") && !d.message.contains("xxxx"),
                "{}",
                d.message
            );
            let d = run(pol("p", &[]), operator(OWNER), req());
            assert!(d.message.contains("primary user"), "{}", d.message);
            let d = run(
                glass("bg", -3600),
                operator(OID),
                req().justified("INC1234567"),
            );
            assert!(
                d.message.contains("expired at 2027-01-15T07:00:00Z"),
                "{}",
                d.message
            );
        }

        #[test]
        fn a_candidate_carries_the_caps_of_its_set() {
            let caps = vec![crate::policy::Limit {
                scope: crate::policy::LimitScope::PerDevice,
                count: 3,
                window: std::time::Duration::from_secs(86_400),
            }];
            let ps = PolicySet::new(vec![pol("p", &[])]).with_caps(caps.clone());
            let op = operator(OID);
            let c = ps
                .decide(
                    &ps.operator_screen(&op),
                    &action(
                        RouteForm::DeviceManagement,
                        &facts(&[], "Windows").managed_device_id,
                    ),
                    &op,
                    &FactsOutcome::Found(facts(&[], "Windows")),
                    &req(),
                )
                .unwrap();
            assert_eq!(c.caps(), caps.as_slice());
            assert_eq!(ps.caps(), caps.as_slice());
            assert!(c.limits().is_empty());
        }
    }
}
