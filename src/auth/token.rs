//! The JWT front: splits and decodes a compact JWS, and checks its header and claims against the
//! rules. Pure functions (the clock is passed in), so they can be fuzzed and tested exhaustively.
//! Signature verification is NOT done here; a token is trusted only after `auth::keys` verified it.

use super::{AuthError, Operator, OperatorKind, TokenVersion};
use crate::error::Reason;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use std::time::Duration;

/// Tokens longer than this are refused before any decoding (Entra tokens are a few KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The decoded JOSE header fields passgate looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub alg: String,
    pub typ: Option<String>,
    pub kid: Option<String>,
}

/// A split, decoded, not-yet-verified token.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub header: Header,
    pub claims: Map<String, Value>,
    /// `base64url(header) "." base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
}

fn malformed(msg: &str) -> AuthError {
    AuthError::new(Reason::TokenMalformed, msg)
}

/// Extracts the bearer token from the request's `Authorization` header(s).
pub fn bearer_from_headers(headers: &http::HeaderMap) -> Result<&str, AuthError> {
    let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
    let first = all.next().ok_or_else(|| {
        AuthError::new(
            Reason::TokenMissing,
            "no bearer token: send Authorization: Bearer <access token for passgate>",
        )
    })?;
    if all.next().is_some() {
        return Err(malformed("more than one Authorization header"));
    }
    let value = first
        .to_str()
        .map_err(|_| malformed("Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| malformed("Authorization header must be 'Bearer <token>'"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed("Authorization scheme must be Bearer"));
    }
    let token = token.trim_matches(' ');
    if token.is_empty() {
        return Err(AuthError::new(
            Reason::TokenMissing,
            "bearer token is empty",
        ));
    }
    Ok(token)
}

/// Splits and decodes a compact JWS. Refuses anything that is not exactly three base64url parts.
pub fn decode(token: &str) -> Result<Unverified<'_>, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed("token is too large"));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(malformed("token contains characters outside base64url"));
    }
    let mut parts = token.split('.');
    let (h, p, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => (h, p, s),
        _ => return Err(malformed("token must have three dot-separated parts")),
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| malformed("token header is not base64url"))?;
    let header: Map<String, Value> = serde_json::from_slice(&header_json)
        .map_err(|_| malformed("token header is not a JSON object"))?;
    let claims_json = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| malformed("token payload is not base64url"))?;
    let claims: Map<String, Value> = serde_json::from_slice(&claims_json)
        .map_err(|_| malformed("token payload is not a JSON object"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| malformed("token signature is not base64url"))?;
    if header.contains_key("crit") {
        return Err(malformed(
            "token header carries unsupported critical extensions",
        ));
    }
    let str_field = |k: &str| -> Result<Option<String>, AuthError> {
        match header.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(malformed("token header field has the wrong type")),
        }
    };
    let alg = str_field("alg")?.ok_or_else(|| malformed("token header has no alg"))?;
    let header = Header {
        alg,
        typ: str_field("typ")?,
        kid: str_field("kid")?,
    };
    Ok(Unverified {
        header,
        claims,
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        signature,
    })
}

/// Header rules checked before any key lookup.
pub fn check_header(
    header: &Header,
    algorithms: &[String],
    token_types: &[String],
) -> Result<(), AuthError> {
    if !algorithms.iter().any(|a| a == &header.alg) {
        return Err(AuthError::new(
            Reason::TokenAlgorithmNotAllowed,
            "token signing algorithm is not allowed",
        ));
    }
    match &header.typ {
        Some(t) if token_types.iter().any(|x| x.eq_ignore_ascii_case(t)) => {}
        _ => {
            return Err(AuthError::new(
                Reason::TokenTypeNotAllowed,
                "token type (typ) is not an accepted access-token type",
            ))
        }
    }
    if header
        .kid
        .as_deref()
        .is_none_or(|k| k.is_empty() || k.len() > 256)
    {
        return Err(AuthError::new(
            Reason::TokenUnknownKey,
            "token header has no usable key id (kid)",
        ));
    }
    Ok(())
}

/// What the claims must satisfy. Issuers are exact strings (templates already substituted).
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub tenant_id: String,
    pub audiences: Vec<String>,
    pub accept_v1: bool,
    pub accept_v2: bool,
    pub v1_issuer: String,
    pub v2_issuer: String,
    pub leeway: Duration,
    pub required_scope: Option<String>,
}

fn claim_str<'a>(claims: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    claims.get(k).and_then(Value::as_str)
}

fn claim_strings(claims: &Map<String, Value>, k: &str) -> Vec<String> {
    match claims.get(k) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Largest time claim believed: 9999-12-31T23:59:59Z. Beyond it a value is not a real
/// NumericDate; a float like `1e300` would otherwise saturate to `i64::MAX` and "never expire".
const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

pub(crate) fn numeric(claims: &Map<String, Value>, k: &str) -> Result<Option<i64>, AuthError> {
    match claims.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.is_finite() && f.abs() <= MAX_NUMERIC_DATE as f64)
                    .map(|f| f as i64)
            })
            .filter(|n| n.unsigned_abs() <= MAX_NUMERIC_DATE as u64)
            .map(Some)
            .ok_or_else(|| malformed("a time claim is not a number in the range of real dates")),
    }
}

fn ambiguous(msg: &str) -> AuthError {
    AuthError::new(Reason::TokenKindAmbiguous, msg)
}

/// User or app, by Entra's documented signals, in v1 and v2 alike: a delegated (user) token
/// carries `scp` and a pairwise `sub` that is never the `oid`; an app-only token carries no `scp`,
/// its `sub` is its service principal's `oid`, and it holds its permissions in `roles`. `idtyp`
/// (`user` / `app`), when present, must agree. Any combination that fits neither is refused:
/// a user's token must never be taken for an app's (and so skip `required_scope`).
fn classify(
    claims: &Map<String, Value>,
    oid: &str,
    roles: &[String],
) -> Result<OperatorKind, AuthError> {
    let idtyp = match claims.get("idtyp") {
        None => None,
        Some(Value::String(t)) if t == "user" => Some(OperatorKind::User),
        Some(Value::String(t)) if t == "app" => Some(OperatorKind::App),
        Some(_) => return Err(ambiguous("token has an unrecognised idtyp claim")),
    };
    let sub = claim_str(claims, "sub")
        .ok_or_else(|| AuthError::new(Reason::TokenMissingClaim, "token has no sub claim"))?;
    let sub_is_oid = crate::text::guid(sub).is_some_and(|s| s == oid);
    let has_scp = match claims.get("scp") {
        None => false,
        Some(Value::String(_)) => true,
        Some(_) => return Err(malformed("the scp claim is not a string")),
    };
    if has_scp {
        if idtyp == Some(OperatorKind::App) {
            return Err(ambiguous("token carries scp but says idtyp app"));
        }
        if sub_is_oid {
            return Err(ambiguous(
                "token carries scp but its sub is its oid, as only app-only tokens have",
            ));
        }
        return Ok(OperatorKind::User);
    }
    if roles.is_empty() {
        return Err(AuthError::new(
            Reason::TokenMissingClaim,
            "token carries neither scp nor roles: not an access token for passgate",
        ));
    }
    if idtyp == Some(OperatorKind::User) {
        return Err(ambiguous("a user token (idtyp user) without scp"));
    }
    if !sub_is_oid {
        return Err(ambiguous(
            "token carries no scp but is not app-only (its sub is not its oid)",
        ));
    }
    Ok(OperatorKind::App)
}

/// Checks a verified token's claims and builds the [`Operator`].
pub fn check_claims(
    claims: &Map<String, Value>,
    rules: &ClaimRules,
    now_unix: i64,
) -> Result<Operator, AuthError> {
    let leeway = rules.leeway.as_secs() as i64;
    let exp = numeric(claims, "exp")?
        .ok_or_else(|| AuthError::new(Reason::TokenMissingClaim, "token has no exp claim"))?;
    if now_unix > exp.saturating_add(leeway) {
        return Err(AuthError::new(Reason::TokenExpired, "token has expired"));
    }
    if let Some(nbf) = numeric(claims, "nbf")? {
        if now_unix.saturating_add(leeway) < nbf {
            return Err(AuthError::new(
                Reason::TokenNotYetValid,
                "token is not yet valid",
            ));
        }
    }
    let version = match claim_str(claims, "ver") {
        Some("2.0") => TokenVersion::V2,
        Some("1.0") => TokenVersion::V1,
        _ => {
            return Err(AuthError::new(
                Reason::TokenMissingClaim,
                "token has no recognised ver claim (1.0 or 2.0)",
            ))
        }
    };
    let (accepted, expected_iss) = match version {
        TokenVersion::V1 => (rules.accept_v1, &rules.v1_issuer),
        TokenVersion::V2 => (rules.accept_v2, &rules.v2_issuer),
    };
    if !accepted {
        return Err(AuthError::new(
            Reason::TokenWrongIssuer,
            "this token version is not accepted by passgate's configuration",
        ));
    }
    if claim_str(claims, "iss") != Some(expected_iss.as_str()) {
        return Err(AuthError::new(
            Reason::TokenWrongIssuer,
            "token issuer is not trusted",
        ));
    }
    let tid = claim_str(claims, "tid")
        .and_then(crate::text::guid)
        .ok_or_else(|| AuthError::new(Reason::TokenMissingClaim, "token has no tid claim"))?;
    if tid != rules.tenant_id {
        return Err(AuthError::new(
            Reason::TokenWrongTenant,
            "token was issued for another tenant",
        ));
    }
    let auds = claim_strings(claims, "aud");
    if !auds.iter().any(|a| rules.audiences.iter().any(|x| x == a)) {
        return Err(AuthError::new(
            Reason::TokenWrongAudience,
            "token audience is not passgate",
        ));
    }
    let oid = claim_str(claims, "oid")
        .and_then(crate::text::guid)
        .ok_or_else(|| AuthError::new(Reason::TokenMissingClaim, "token has no oid claim"))?;
    let scopes: Vec<String> = claim_str(claims, "scp")
        .map(|s| {
            s.split(' ')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let roles = claim_strings(claims, "roles");
    // An access token names the client that obtained it (`azp` v2, `appid` v1); an ID token
    // does not. Refusing its absence keeps ID tokens minted for passgate's app out.
    let has_client = match version {
        TokenVersion::V1 => claim_str(claims, "appid").is_some(),
        TokenVersion::V2 => claim_str(claims, "azp").is_some(),
    };
    if !has_client {
        return Err(AuthError::new(
            Reason::TokenMissingClaim,
            "token names no client application (azp/appid): not an access token",
        ));
    }
    let kind = classify(claims, &oid, &roles)?;
    if let (OperatorKind::User, Some(req)) = (kind, &rules.required_scope) {
        if !scopes.iter().any(|s| s == req) {
            return Err(AuthError::new(
                Reason::TokenScopeMissing,
                "token lacks the scope passgate requires",
            ));
        }
    }
    let groups_overage = claims
        .get("_claim_names")
        .and_then(|v| v.get("groups"))
        .is_some();
    let groups = claim_strings(claims, "groups")
        .into_iter()
        .map(|g| g.to_ascii_lowercase())
        .collect();
    let upn = match version {
        TokenVersion::V1 => claim_str(claims, "upn").or(claim_str(claims, "unique_name")),
        TokenVersion::V2 => claim_str(claims, "preferred_username"),
    }
    .map(String::from);
    let client_app_id = match version {
        TokenVersion::V1 => claim_str(claims, "appid"),
        TokenVersion::V2 => claim_str(claims, "azp"),
    }
    .map(String::from);
    Ok(Operator {
        oid,
        tid,
        kind,
        upn,
        client_app_id,
        groups,
        groups_overage,
        roles,
        scopes,
        token_version: version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TID: &str = "11111111-2222-3333-4444-555555555555";
    const OID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

    fn rules() -> ClaimRules {
        ClaimRules {
            tenant_id: TID.into(),
            audiences: vec![
                "api://passgate".into(),
                "c0ffee00-0000-0000-0000-000000000001".into(),
            ],
            accept_v1: true,
            accept_v2: true,
            v1_issuer: format!("https://sts.windows.net/{TID}/"),
            v2_issuer: format!("https://login.microsoftonline.com/{TID}/v2.0"),
            leeway: Duration::from_secs(60),
            required_scope: None,
        }
    }

    fn v2() -> Map<String, Value> {
        json!({"ver":"2.0","iss":format!("https://login.microsoftonline.com/{TID}/v2.0"),
               "tid":TID,"oid":OID,"aud":"c0ffee00-0000-0000-0000-000000000001",
               "exp":2000,"nbf":1000,"scp":"RecoverPasscode.Request","groups":["G1"],
               "preferred_username":"alice@contoso.com","azp":"client","sub":"pairwise-sub-of-alice"})
        .as_object()
        .unwrap()
        .clone()
    }

    fn reason(c: &Map<String, Value>, now: i64) -> Reason {
        check_claims(c, &rules(), now).unwrap_err().reason
    }

    #[test]
    fn good_v2_token_yields_operator() {
        let op = check_claims(&v2(), &rules(), 1500).unwrap();
        assert_eq!(op.oid, OID);
        assert_eq!(op.kind, OperatorKind::User);
        assert_eq!(op.groups, vec!["g1"]);
        assert_eq!(op.upn.as_deref(), Some("alice@contoso.com"));
    }

    #[test]
    fn time_claims_respect_leeway() {
        assert!(check_claims(&v2(), &rules(), 2060).is_ok());
        assert_eq!(reason(&v2(), 2061), Reason::TokenExpired);
        assert!(check_claims(&v2(), &rules(), 940).is_ok());
        assert_eq!(reason(&v2(), 939), Reason::TokenNotYetValid);
    }

    #[test]
    fn each_claim_rule_has_its_reason() {
        let mut c = v2();
        c.insert("aud".into(), json!("https://graph.microsoft.com"));
        assert_eq!(reason(&c, 1500), Reason::TokenWrongAudience);
        let mut c = v2();
        c.insert(
            "iss".into(),
            json!(format!("https://sts.windows.net/{TID}/")),
        );
        assert_eq!(reason(&c, 1500), Reason::TokenWrongIssuer);
        let mut c = v2();
        c.insert("tid".into(), json!("99999999-2222-3333-4444-555555555555"));
        assert_eq!(reason(&c, 1500), Reason::TokenWrongTenant);
        let mut c = v2();
        c.remove("oid");
        assert_eq!(reason(&c, 1500), Reason::TokenMissingClaim);
        let mut c = v2();
        c.remove("exp");
        assert_eq!(reason(&c, 1500), Reason::TokenMissingClaim);
        let mut c = v2();
        c.insert("exp".into(), json!("soon"));
        assert_eq!(reason(&c, 1500), Reason::TokenMalformed);
    }

    #[test]
    fn out_of_range_time_claims_are_malformed_not_eternal() {
        // Found by tests/hostile_tokens.rs: `exp: 1e300` saturated to i64::MAX and passed.
        for exp in [
            json!(1e300),
            json!(f64::MAX),
            json!(u64::MAX),
            json!(i64::MAX),
            json!(MAX_NUMERIC_DATE + 1),
        ] {
            let mut c = v2();
            c.insert("exp".into(), exp.clone());
            assert_eq!(reason(&c, 1500), Reason::TokenMalformed, "exp {exp}");
        }
        let mut c = v2();
        c.insert("nbf".into(), json!(-1e300));
        assert_eq!(reason(&c, 1500), Reason::TokenMalformed);
        // Fractional NumericDates in range stay valid (RFC 7519 §2).
        let mut c = v2();
        c.insert("exp".into(), json!(2000.5));
        assert!(check_claims(&c, &rules(), 1500).is_ok());
    }

    #[test]
    fn v1_token_against_v2_only_config_is_refused() {
        let mut c = v2();
        c.insert("ver".into(), json!("1.0"));
        c.insert(
            "iss".into(),
            json!(format!("https://sts.windows.net/{TID}/")),
        );
        c.insert("aud".into(), json!(["api://passgate"]));
        c.insert("appid".into(), json!("client"));
        assert!(check_claims(&c, &rules(), 1500).is_ok());
        let mut r = rules();
        r.accept_v1 = false;
        assert_eq!(
            check_claims(&c, &r, 1500).unwrap_err().reason,
            Reason::TokenWrongIssuer
        );
    }

    #[test]
    fn required_scope_applies_to_users_only() {
        let mut r = rules();
        r.required_scope = Some("Other.Scope".into());
        assert_eq!(
            check_claims(&v2(), &r, 1500).unwrap_err().reason,
            Reason::TokenScopeMissing
        );
        let mut app = v2();
        app.remove("scp");
        app.insert("roles".into(), json!(["PassGate.RecoverPasscode"]));
        app.insert("sub".into(), json!(OID));
        let op = check_claims(&app, &r, 1500).unwrap();
        assert_eq!(op.kind, OperatorKind::App);
    }

    #[test]
    fn id_tokens_and_tokens_without_scp_or_roles_are_refused() {
        // An ID token for passgate's app: right iss/aud/tid/oid, but no azp and no scp/roles.
        let mut id_token = v2();
        id_token.remove("azp");
        id_token.remove("scp");
        assert_eq!(reason(&id_token, 1500), Reason::TokenMissingClaim);
        // A client is named but the token grants nothing.
        let mut bare = v2();
        bare.remove("scp");
        assert_eq!(reason(&bare, 1500), Reason::TokenMissingClaim);
        // v1 tokens name the client in appid.
        let mut v1 = v2();
        v1.insert("ver".into(), json!("1.0"));
        v1.insert(
            "iss".into(),
            json!(format!("https://sts.windows.net/{TID}/")),
        );
        v1.remove("azp");
        assert_eq!(reason(&v1, 1500), Reason::TokenMissingClaim);
        v1.insert("appid".into(), json!("client"));
        assert!(check_claims(&v1, &rules(), 1500).is_ok());
    }

    /// Finding 3: every combination of `scp` / `roles` / `idtyp` / client claim (`azp`,
    /// `appid`) / `sub` (pairwise or the oid), for v1 and v2 tokens. Only a token whose signals
    /// agree is classified; a user's token is never taken for an app's.
    #[test]
    fn every_combination_of_type_signals_is_classified_or_refused() {
        let mut r = rules();
        r.required_scope = Some("RecoverPasscode.Request".into());
        let mut seen = 0;
        for ver in ["1.0", "2.0"] {
            for scp in [false, true] {
                for roles in [false, true] {
                    for idtyp in [None, Some("user"), Some("app"), Some("device")] {
                        for (azp, appid) in
                            [(false, false), (true, false), (false, true), (true, true)]
                        {
                            for sub_is_oid in [false, true] {
                                let mut c = v2();
                                c.remove("scp");
                                c.remove("azp");
                                c.insert("ver".into(), json!(ver));
                                if ver == "1.0" {
                                    c.insert(
                                        "iss".into(),
                                        json!(format!("https://sts.windows.net/{TID}/")),
                                    );
                                }
                                if scp {
                                    c.insert("scp".into(), json!("RecoverPasscode.Request"));
                                }
                                if roles {
                                    c.insert("roles".into(), json!(["PassGate.RecoverPasscode"]));
                                }
                                if let Some(t) = idtyp {
                                    c.insert("idtyp".into(), json!(t));
                                }
                                if azp {
                                    c.insert("azp".into(), json!("client"));
                                }
                                if appid {
                                    c.insert("appid".into(), json!("client"));
                                }
                                if sub_is_oid {
                                    c.insert("sub".into(), json!(OID.to_uppercase()));
                                }
                                let names_client = if ver == "1.0" { appid } else { azp };
                                let expected: Result<OperatorKind, Reason> = if !names_client {
                                    Err(Reason::TokenMissingClaim)
                                } else if idtyp == Some("device") {
                                    Err(Reason::TokenKindAmbiguous)
                                } else if scp {
                                    if idtyp == Some("app") || sub_is_oid {
                                        Err(Reason::TokenKindAmbiguous)
                                    } else {
                                        Ok(OperatorKind::User)
                                    }
                                } else if !roles {
                                    Err(Reason::TokenMissingClaim)
                                } else if idtyp == Some("user") || !sub_is_oid {
                                    Err(Reason::TokenKindAmbiguous)
                                } else {
                                    Ok(OperatorKind::App)
                                };
                                let got = check_claims(&c, &r, 1500)
                                    .map(|o| o.kind)
                                    .map_err(|e| e.reason);
                                assert_eq!(
                                    got, expected,
                                    "ver {ver} scp {scp} roles {roles} idtyp {idtyp:?} azp {azp} appid {appid} sub_is_oid {sub_is_oid}"
                                );
                                seen += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(seen, 2 * 2 * 2 * 4 * 4 * 2);
        // The reported attack: a delegated user token with roles and no scp.
        let mut user_with_roles = v2();
        user_with_roles.remove("scp");
        user_with_roles.insert("roles".into(), json!(["PassGate.RecoverPasscode"]));
        user_with_roles.insert("idtyp".into(), json!("user"));
        assert_eq!(reason(&user_with_roles, 1500), Reason::TokenKindAmbiguous);
        user_with_roles.remove("idtyp");
        assert_eq!(reason(&user_with_roles, 1500), Reason::TokenKindAmbiguous);
        // Without sub at all: not an Entra access token.
        let mut no_sub = v2();
        no_sub.remove("sub");
        assert_eq!(reason(&no_sub, 1500), Reason::TokenMissingClaim);
    }

    #[test]
    fn decode_refuses_malformed_tokens() {
        for t in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.e30.x",
            "e30.e30.@@",
            "eyJhbGciOiJSUzI1NiJ9.bm90anNvbg.x",
        ] {
            assert_eq!(decode(t).unwrap_err().reason, Reason::TokenMalformed, "{t}");
        }
        let big = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(decode(&big).unwrap_err().reason, Reason::TokenMalformed);
    }

    #[test]
    fn header_rules() {
        let h = |alg: &str, typ: Option<&str>, kid: Option<&str>| Header {
            alg: alg.into(),
            typ: typ.map(Into::into),
            kid: kid.map(Into::into),
        };
        let algs = vec!["RS256".to_string()];
        let typs = vec!["JWT".to_string(), "at+jwt".to_string()];
        assert!(check_header(&h("RS256", Some("JWT"), Some("k")), &algs, &typs).is_ok());
        assert!(check_header(&h("RS256", Some("at+JWT"), Some("k")), &algs, &typs).is_ok());
        let r = |hd: Header| check_header(&hd, &algs, &typs).unwrap_err().reason;
        assert_eq!(
            r(h("none", Some("JWT"), Some("k"))),
            Reason::TokenAlgorithmNotAllowed
        );
        assert_eq!(
            r(h("HS256", Some("JWT"), Some("k"))),
            Reason::TokenAlgorithmNotAllowed
        );
        assert_eq!(
            r(h("RS256", Some("JWE"), Some("k"))),
            Reason::TokenTypeNotAllowed
        );
        assert_eq!(r(h("RS256", None, Some("k"))), Reason::TokenTypeNotAllowed);
        assert_eq!(r(h("RS256", Some("JWT"), None)), Reason::TokenUnknownKey);
    }

    #[test]
    fn bearer_header_rules() {
        let mut h = http::HeaderMap::new();
        assert_eq!(
            bearer_from_headers(&h).unwrap_err().reason,
            Reason::TokenMissing
        );
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(
            bearer_from_headers(&h).unwrap_err().reason,
            Reason::TokenMalformed
        );
        h.insert("authorization", "bearer abc".parse().unwrap());
        assert_eq!(bearer_from_headers(&h).unwrap(), "abc");
        h.append("authorization", "Bearer def".parse().unwrap());
        assert_eq!(
            bearer_from_headers(&h).unwrap_err().reason,
            Reason::TokenMalformed
        );
    }
}
