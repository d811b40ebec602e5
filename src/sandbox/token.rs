//! The v2.0 token endpoint for the client-credentials grant (graph-notes §5): client secret
//! (post or Basic) or a jwt-bearer client assertion, AADSTS-shaped errors, and issuance of the
//! Graph app token. Error descriptions never echo a secret or an assertion.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{Method, StatusCode};
use rand::Rng;
use serde_json::{json, Value};

use super::crypto::{b64url_decode, sha256};
use super::entra::tenant_not_found;
use super::jwt::{self, now, random_id};
use super::server::{http_date, reply, set_header, Incoming, Reply};
use super::{Fault, Shared, GRAPH_DEFAULT_SCOPE, GRAPH_RESOURCE};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const APP_TOKEN_LIFETIME: i64 = 3599;

/// An Entra-looking client secret: 40 characters with the `~` marker Entra secrets carry.
pub(crate) fn random_client_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.";
    let mut rng = rand::rngs::OsRng;
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect()
    };
    format!("{}8Q~{}", pick(3), pick(34))
}

/// The AADSTS error body: error, error_description (with Trace/Correlation/Timestamp lines),
/// error_codes, timestamp, trace_id, correlation_id, error_uri.
pub(crate) fn aadsts_error(status: StatusCode, error: &str, code: u32, message: &str) -> Reply {
    aadsts_error_with(status, error, code, message, None)
}

fn aadsts_error_with(
    status: StatusCode,
    error: &str,
    code: u32,
    message: &str,
    correlation: Option<&str>,
) -> Reply {
    let trace_id = uuid::Uuid::new_v4().to_string();
    let correlation_id = correlation
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let timestamp = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    let mut r = reply(
        status,
        Some("application/json; charset=utf-8"),
        body.to_string().into_bytes(),
    );
    no_store(&mut r);
    r
}

fn no_store(r: &mut Reply) {
    set_header(r, "cache-control", "no-store, no-cache");
    set_header(r, "pragma", "no-cache");
    set_header(r, "x-ms-request-id", &uuid::Uuid::new_v4().to_string());
    set_header(r, "date", &http_date());
}

/// A refusal: status, OAuth error, AADSTS code, message.
struct Refusal(StatusCode, &'static str, u32, String);

fn missing(param: &str) -> Refusal {
    Refusal(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        900144,
        format!("The request body must contain the following parameter: '{param}'."),
    )
}

fn invalid_client(code: u32, msg: impl Into<String>) -> Refusal {
    Refusal(StatusCode::UNAUTHORIZED, "invalid_client", code, msg.into())
}

pub(crate) fn handle(shared: &Shared, tenant: &str, req: &Incoming) -> Reply {
    let correlation = req.header("client-request-id");
    let fault = shared.lock().fault.clone();
    if fault == Fault::ClientSecretRejected {
        return aadsts_error_with(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the \
             client secret value, not the client secret ID.",
            correlation,
        );
    }
    if let Fault::TokenEndpointStatus(s) = fault {
        let status = StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return aadsts_error_with(
            status,
            "temporarily_unavailable",
            90033,
            "A transient error has occurred. Please try again.",
            correlation,
        );
    }
    match issue(shared, tenant, req) {
        Ok(body) => {
            let mut r = reply(
                StatusCode::OK,
                Some("application/json; charset=utf-8"),
                body.to_string().into_bytes(),
            );
            no_store(&mut r);
            r
        }
        Err(Refusal(status, error, code, msg)) => {
            aadsts_error_with(status, error, code, &msg, correlation)
        }
    }
}

/// Credentials from `Authorization: Basic` (RFC 6749 §2.3.1: form-encoded id and secret).
fn basic_credentials(req: &Incoming) -> Option<(String, String)> {
    let value = req.header("authorization")?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(b64.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let dec = |s: &str| -> String {
        form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((dec(id), dec(secret)))
}

fn issue(shared: &Shared, tenant: &str, req: &Incoming) -> Result<Value, Refusal> {
    if req.method != Method::POST {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900561,
            format!(
                "The endpoint only accepts POST, OPTIONS requests. Received a {} request.",
                req.method
            ),
        ));
    }
    let t = &shared.tenant;
    if !t.is_tenant(tenant) {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            tenant_not_found(tenant),
        ));
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(&req.body).into_owned().collect();
    let param = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let grant = param("grant_type").ok_or_else(|| missing("grant_type"))?;
    if grant == "authorization_code" {
        return redeem_code(shared, req, &param);
    }
    if grant != "client_credentials" {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant}'."),
        ));
    }
    let basic = basic_credentials(req);
    let client_id = match &basic {
        Some((id, _)) => id.as_str(),
        None => param("client_id").ok_or_else(|| missing("client_id"))?,
    };
    let scope = param("scope").ok_or_else(|| missing("scope"))?;
    if !client_id.eq_ignore_ascii_case(&t.gateway_app_client_id) {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. \
                 This can happen if the application has not been installed by the administrator \
                 of the tenant or consented to by any user in the tenant. You may have sent your \
                 authentication request to the wrong tenant.",
                t.display_name
            ),
        ));
    }
    let secret = basic
        .as_ref()
        .map(|(_, s)| s.as_str())
        .or_else(|| param("client_secret"));
    let assertion = param("client_assertion");
    let acr = match (secret, assertion) {
        (Some(_), Some(_)) => {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900023,
                "Specified client authentication methods are conflicting: use either \
                 'client_secret' or 'client_assertion'."
                    .into(),
            ))
        }
        (None, None) => {
            return Err(invalid_client(
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ))
        }
        (Some(secret), None) => {
            // Compare digests so the comparison time does not track the common prefix.
            if sha256(secret.as_bytes()) != sha256(shared.client_secret.as_bytes()) {
                return Err(invalid_client(
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the \
                         request is the client secret value, not the client secret ID, for a \
                         secret added to app '{}'.",
                        t.gateway_app_client_id
                    ),
                ));
            }
            "1"
        }
        (None, Some(assertion)) => {
            if param("client_assertion_type") != Some(JWT_BEARER) {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    700024,
                    format!("Client assertion type must be '{JWT_BEARER}'."),
                ));
            }
            check_assertion(shared, client_id, assertion)?;
            "2"
        }
    };
    if scope != GRAPH_DEFAULT_SCOPE {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            70011,
            format!(
                "The provided request must include a 'scope' input parameter. The provided value \
                 for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        ));
    }
    Ok(json!({
        "token_type": "Bearer",
        "expires_in": APP_TOKEN_LIFETIME,
        "ext_expires_in": APP_TOKEN_LIFETIME,
        "access_token": app_token(shared, acr),
    }))
}

/// The authorization-code grant for the console (graph-notes §6): the console's client
/// credentials (secret, post or Basic, or a client assertion), the one-use code with its
/// redirect URI, and the PKCE verifier. Answers an ID token for the signed-in user and an access
/// token for Graph's userinfo, as Entra does for `openid profile`.
fn redeem_code<'a>(
    shared: &Shared,
    req: &Incoming,
    param: &dyn Fn(&str) -> Option<&'a str>,
) -> Result<Value, Refusal> {
    let t = &shared.tenant;
    let basic = basic_credentials(req);
    let client_id = match &basic {
        Some((id, _)) => id.clone(),
        None => param("client_id")
            .ok_or_else(|| missing("client_id"))?
            .to_string(),
    };
    if !client_id.eq_ignore_ascii_case(&t.console_client_id) {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'.",
                t.display_name
            ),
        ));
    }
    let secret = basic
        .as_ref()
        .map(|(_, s)| s.clone())
        .or_else(|| param("client_secret").map(str::to_string));
    match (secret, param("client_assertion")) {
        (Some(s), None) => {
            if sha256(s.as_bytes()) != sha256(shared.console_client_secret.as_bytes()) {
                return Err(invalid_client(
                    7000215,
                    format!(
                        "Invalid client secret provided. Ensure the secret being sent in the \
                         request is the client secret value, not the client secret ID, for a \
                         secret added to app '{}'.",
                        t.console_client_id
                    ),
                ));
            }
        }
        (None, Some(assertion)) => {
            if param("client_assertion_type") != Some(JWT_BEARER) {
                return Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    700024,
                    format!("Client assertion type must be '{JWT_BEARER}'."),
                ));
            }
            check_assertion(shared, &client_id, assertion)?;
        }
        (Some(_), Some(_)) => {
            return Err(Refusal(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900023,
                "Specified client authentication methods are conflicting: use either \
                 'client_secret' or 'client_assertion'."
                    .into(),
            ))
        }
        (None, None) => {
            return Err(invalid_client(
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            ))
        }
    }
    let code = param("code").ok_or_else(|| missing("code"))?;
    let bad_grant = |code: u32, msg: &str| {
        Refusal(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            code,
            msg.to_string(),
        )
    };
    // One use: the code is gone whatever happens next.
    let issued = shared.lock().codes.remove(code).ok_or_else(|| {
        bad_grant(
            54005,
            "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
        )
    })?;
    if !super::authorize::fresh(&issued, now()) {
        return Err(bad_grant(
            70008,
            "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
        ));
    }
    if !issued.client_id.eq_ignore_ascii_case(&client_id) {
        return Err(bad_grant(
            70000,
            "The provided value for the 'code' parameter is not valid. The code was issued to a different client.",
        ));
    }
    if param("redirect_uri") != Some(issued.redirect_uri.as_str()) {
        return Err(bad_grant(
            70000,
            "The provided value for the input parameter 'redirect_uri' is not valid. The expected value is a URI which matches a redirect URI registered for this client application.",
        ));
    }
    if let Some(challenge) = &issued.code_challenge {
        let verifier = param("code_verifier").ok_or_else(|| {
            bad_grant(
                50148,
                "The code_verifier does not match the code_challenge supplied in the authorization request for PKCE.",
            )
        })?;
        if !super::authorize::pkce_matches(verifier, challenge) {
            return Err(bad_grant(
                501481,
                "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
            ));
        }
    }
    let user = t
        .operator(&issued.user)
        .ok_or_else(|| bad_grant(50034, "The user account does not exist in the directory."))?;
    let id_token = super::claims::id_token(shared, user, issued.nonce.as_deref());
    shared.lock().issued_id_tokens.push(id_token.clone());
    Ok(json!({
        "token_type": "Bearer",
        "scope": issued.scope,
        "expires_in": APP_TOKEN_LIFETIME,
        "ext_expires_in": APP_TOKEN_LIFETIME,
        "access_token": userinfo_token(shared, &user.oid),
        "id_token": id_token,
    }))
}

/// A delegated Graph token for userinfo (signed with the unpublished Graph key, as Graph's own
/// tokens cannot be validated by third parties). The console never uses it.
fn userinfo_token(shared: &Shared, oid: &str) -> String {
    let t = &shared.tenant;
    let iat = now();
    let claims = json!({
        "aud": "00000003-0000-0000-c000-000000000000",
        "iss": format!("https://sts.windows.net/{}/", t.tenant_id),
        "iat": iat, "nbf": iat, "exp": iat + APP_TOKEN_LIFETIME,
        "appid": t.console_client_id, "idtyp": "user", "oid": oid,
        "scp": "openid profile User.Read email", "tid": t.tenant_id, "ver": "1.0",
    });
    let key = &shared.graph_key;
    key.token(
        &json!({"typ": "JWT", "alg": "RS256", "kid": key.kid}),
        &claims,
    )
}

fn claim_str<'a>(claims: &'a Value, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

/// Validates a client assertion (graph-notes §5, §9.11). AADSTS codes other than 700027 and
/// 700024 are plausible rather than verified.
fn check_assertion(shared: &Shared, client_id: &str, assertion: &str) -> Result<(), Refusal> {
    let parsed = jwt::parse(assertion)
        .ok_or_else(|| invalid_client(50027, "JWT token is invalid or malformed."))?;
    let h = &parsed.header;
    let alg = claim_str(h, "alg").unwrap_or("");
    if alg != "RS256" && alg != "PS256" {
        return Err(invalid_client(
            5002738,
            format!("Invalid JWT token. '{alg}' is not a supported signature algorithm."),
        ));
    }
    let certs = shared.lock().certs.clone();
    let cert = if let Some(t) = claim_str(h, "x5t#S256") {
        let t = b64url_decode(t).unwrap_or_default();
        certs.iter().find(|c| c.sha256.as_slice() == t.as_slice())
    } else if let Some(t) = claim_str(h, "x5t") {
        let t = b64url_decode(t).unwrap_or_default();
        certs.iter().find(|c| c.sha1.as_slice() == t.as_slice())
    } else {
        None
    };
    let key_not_found = || {
        invalid_client(
            700027,
            "Client assertion contains an invalid signature. [Reason - The key was not found.]",
        )
    };
    let cert = cert.ok_or_else(key_not_found)?;
    let msg = parsed.signing_input.as_bytes();
    let ok = match alg {
        "PS256" => jwt::verify_ps256(&cert.key, msg, &parsed.signature),
        _ => jwt::verify_rs256(&cert.key, msg, &parsed.signature),
    };
    if !ok {
        return Err(invalid_client(
            700027,
            "Client assertion contains an invalid signature. [Reason - The provided signature \
             value did not match the expected signature value.]",
        ));
    }
    let c = &parsed.claims;
    if claim_str(c, "iss") != Some(client_id) || claim_str(c, "sub") != Some(client_id) {
        return Err(invalid_client(
            700021,
            "Client assertion application identifier doesn't match 'client_id' parameter.",
        ));
    }
    let expected_aud = format!(
        "{}/{}/oauth2/v2.0/token",
        shared.authority_url, shared.tenant.tenant_id
    );
    if claim_str(c, "aud") != Some(expected_aud.as_str()) {
        return Err(invalid_client(
            700016,
            "Client assertion audience claim does not match the token endpoint.",
        ));
    }
    let t = now();
    let exp = c.get("exp").and_then(Value::as_i64);
    let nbf = c.get("nbf").and_then(Value::as_i64);
    let in_range = exp.is_some_and(|e| e > t) && nbf.is_none_or(|n| n <= t);
    if !in_range {
        return Err(invalid_client(
            700024,
            format!("Client assertion is not within its valid time range. Current time: {t}."),
        ));
    }
    let jti = claim_str(c, "jti")
        .filter(|j| !j.is_empty())
        .ok_or_else(|| invalid_client(50027, "JWT token is missing the 'jti' claim."))?;
    let fresh = shared.lock().used_jtis.insert(jti.to_string());
    if !fresh {
        return Err(invalid_client(
            7000274,
            "The client assertion's 'jti' has already been used (replay).",
        ));
    }
    Ok(())
}

/// A Graph app token (v1-shaped like Graph's own), signed with the unpublished Graph key.
fn app_token(shared: &Shared, appidacr: &str) -> String {
    let t = &shared.tenant;
    let iat = now();
    let iss = format!("https://sts.windows.net/{}/", t.tenant_id);
    let roles = shared.lock().app_roles.clone();
    let claims = json!({
        "aud": GRAPH_RESOURCE,
        "iss": iss,
        "iat": iat,
        "nbf": iat,
        "exp": iat + APP_TOKEN_LIFETIME,
        "aio": random_id(),
        "app_displayname": "passgate",
        "appid": t.gateway_app_client_id,
        "appidacr": appidacr,
        "idp": iss,
        "idtyp": "app",
        "oid": t.gateway_app_sp_object_id,
        "rh": random_id(),
        "roles": roles,
        "sub": t.gateway_app_sp_object_id,
        "tenant_region_scope": "WW",
        "tid": t.tenant_id,
        "uti": random_id(),
        "ver": "1.0",
        "wids": ["0997a1d0-0d1d-4acb-b408-d5ca73121e90"],
    });
    let key = &shared.graph_key;
    let header = json!({"typ": "JWT", "alg": "RS256", "x5t": key.kid, "kid": key.kid});
    let token = key.token(&header, &claims);
    shared.lock().issued_app_tokens.push(token.clone());
    token
}

/// Issues an app token with chosen roles and lifetime, bypassing the endpoint (tests only).
#[cfg(test)]
pub(crate) fn test_app_token(shared: &Shared, roles: &[&str], lifetime: i64) -> String {
    let t = &shared.tenant;
    let iat = now();
    let claims = json!({
        "aud": GRAPH_RESOURCE, "iss": format!("https://sts.windows.net/{}/", t.tenant_id),
        "iat": iat, "nbf": iat, "exp": iat + lifetime, "idtyp": "app",
        "oid": t.gateway_app_sp_object_id, "roles": roles, "tid": t.tenant_id, "ver": "1.0",
    });
    let key = &shared.graph_key;
    key.token(
        &json!({"typ": "JWT", "alg": "RS256", "kid": key.kid}),
        &claims,
    )
}
