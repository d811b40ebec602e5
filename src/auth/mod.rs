//! Operator authentication: validates the Entra ID access token an operator presents to
//! passgate's own API and turns it into a typed [`Operator`]. It must never accept a token it
//! could not verify end to end, and never log or echo the token itself.

use serde::Serialize;

/// Which token format the operator presented (Entra `ver` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TokenVersion {
    #[serde(rename = "1.0")]
    V1,
    #[serde(rename = "2.0")]
    V2,
}

/// Whether a person (delegated token with `scp`) or an application (app-only token) is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperatorKind {
    User,
    App,
}

/// An authenticated caller. Identity is `oid`; `upn` is display-only (mutable, never authorised on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operator {
    /// Entra object id (user or service principal), lower-case GUID.
    pub oid: String,
    /// Tenant id, lower-case GUID.
    pub tid: String,
    pub kind: OperatorKind,
    /// `upn` (v1) or `preferred_username` (v2); for display and audit only.
    pub upn: Option<String>,
    /// Client application that obtained the token (`azp` v2 / `appid` v1).
    pub client_app_id: Option<String>,
    /// Group object ids from the `groups` claim, lower-cased.
    pub groups: Vec<String>,
    /// True when the token signalled group overage (`_claim_names.groups`) instead of listing groups.
    pub groups_overage: bool,
    /// App roles (`roles` claim), exact strings.
    pub roles: Vec<String>,
    /// Delegated scopes (`scp`, space separated), exact strings.
    pub scopes: Vec<String>,
    pub token_version: TokenVersion,
}
