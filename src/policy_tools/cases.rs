//! The test-case file of `passgate policy test`: who asks, about which device, and what the
//! decision must be. Parsing and validation only; it must never decide anything or touch the
//! network.

use serde::Deserialize;

/// A cases file: `cases:` and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    pub cases: Vec<Case>,
}

/// One case.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    pub operator: CaseOperator,
    pub device: CaseDevice,
    /// `device_management` (default), `user:<userId>` or `detected_app:<appId>`.
    #[serde(default)]
    pub route: Option<String>,
    /// The `Passgate-Justification` header, if sent.
    #[serde(default)]
    pub justification: Option<String>,
    /// When the request is decided (RFC 3339); default: now.
    #[serde(default)]
    pub at: Option<String>,
    /// Admissions of this operator on this device under the same policy just before the case,
    /// charged to the limits first.
    #[serde(default)]
    pub earlier: u32,
    /// For a policy with `approval:`: a usable approval exists. Default false.
    #[serde(default)]
    pub approved: bool,
    pub expect: Expect,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseOperator {
    pub oid: String,
    #[serde(default)]
    pub upn: Option<String>,
    /// `user` (default) or `app`.
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Delegated scopes, space separated; default: the config's `operator_auth.required_scope`.
    #[serde(default)]
    pub scp: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseDevice {
    /// The Intune managed device id.
    pub managed_id: String,
    /// Intune `operatingSystem`, e.g. `Windows Phone`.
    pub platform: String,
    /// Intune `userId` of the primary user.
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub owner_upn: Option<String>,
    /// Entra groups the device is a transitive member of.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Entra-registered (has an `azureADDeviceId`). Default true.
    #[serde(default = "yes")]
    pub registered: bool,
}

fn yes() -> bool {
    true
}

/// The decision the case expects; `reason` and `policy` are checked only when given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub decision: ExpectDecision,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub policy: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectDecision {
    Allow,
    Deny,
}

impl ExpectDecision {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpectDecision::Allow => "allow",
            ExpectDecision::Deny => "deny",
        }
    }
}
