//! The policy decision (pure: no I/O, no clock reads — time is passed in) and rate limiting.
//! Nothing here may touch the network or read the clock: that is what keeps every path testable
//! and lets the caller prove (via [`Permit`]) that policy *and* limits admitted a request.

pub mod controls;
pub mod decide;
pub mod facts;
pub mod limiter;

pub use controls::{
    BreakGlass, Justification, JustificationRule, Pattern, RequestFacts, JUSTIFICATION_HEADER,
};
pub use decide::{Candidate, Denial, OperatorScreen, PolicySet, ReportVerdict};
pub use facts::{DeviceFacts, FactsOutcome};
pub use limiter::{Permit, RateLimiter};

use serde::Serialize;
use std::collections::BTreeSet;
use std::time::Duration;

/// One compiled policy, as validated by `config::load` (ids lower-cased).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySettings {
    /// Unique, stable; the audit record and the rate-limit namespace use it.
    pub name: String,
    pub description: Option<String>,
    /// Operator object ids (`oid`), lower-case GUIDs.
    pub users: BTreeSet<String>,
    /// Operator group object ids, lower-case GUIDs, matched against the token's `groups`.
    pub groups: BTreeSet<String>,
    /// App role values, exact strings, matched against the token's `roles`.
    pub app_roles: BTreeSet<String>,
    /// Entra group object ids the target device must be a transitive member of (any one).
    pub device_groups: BTreeSet<String>,
    /// Written explicitly in the config; exclusive with `device_groups`.
    pub any_device: bool,
    /// Allowed Intune `operatingSystem` values (compared case-insensitively); None = any.
    pub platforms: Option<Vec<String>>,
    pub limits: Vec<Limit>,
    /// `justification:`; None = no rule (a header, if sent, is still recorded).
    pub justification: Option<JustificationRule>,
    /// `allow_own_device: true`: operators may act on devices whose primary user they are.
    pub allow_own_device: bool,
    /// `break_glass: true` with its `active_until`.
    pub break_glass: Option<BreakGlass>,
}

/// Whose budget a limit counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    PerOperator,
    PerDevice,
    Global,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::PerOperator => "per_operator",
            LimitScope::PerDevice => "per_device",
            LimitScope::Global => "global",
        }
    }
}

/// "`count` per `window`": at most `count` admissions in any window of length `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub scope: LimitScope,
    pub count: u32,
    pub window: Duration,
}

/// The tightest limit's state, for `RateLimit-*` response headers and the audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Time until the oldest admission in the window drops out (i.e. until `remaining` grows).
    pub reset: Duration,
    pub window: Duration,
    pub scope: LimitScope,
}
