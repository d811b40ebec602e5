//! Operator access tokens for passgate's own API: Entra-shaped v1/v2 claims and the signing
//! variants (valid and deliberately broken) tests need. Tokens are returned to the caller only,
//! never logged.

use std::time::Duration;

use rsa::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{json, Map, Value};

use super::crypto::{b64url, hmac_sha256, sha256};
use super::jwt::{now, random_id, signing_input, KeyPair};
use super::tenant::{OperatorKind, SampleOperator, OPERATOR_SCOPE};
use super::{Shared, Signing, TokenForm};

/// Entra's pairwise `sub`: stable per (principal, audience app), opaque. We derive it.
fn pairwise_sub(oid: &str, app: &str) -> String {
    b64url(&sha256(format!("{oid}|{app}").as_bytes()))
}

pub(crate) fn operator_claims(
    shared: &Shared,
    op: &SampleOperator,
    form: TokenForm,
    lifetime: Duration,
) -> Value {
    let t = &shared.tenant;
    let iat = now();
    let exp = iat.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2));
    let is_user = op.kind == OperatorKind::User;
    let mut c = Map::new();
    let (aud, iss) = match form {
        TokenForm::V2 => (
            t.api_client_id.clone(),
            format!("{}/{}/v2.0", shared.authority_url, t.tenant_id),
        ),
        TokenForm::V1 => (
            t.api_app_id_uri.clone(),
            format!("https://sts.windows.net/{}/", t.tenant_id),
        ),
    };
    c.insert("aud".into(), json!(aud));
    c.insert("iss".into(), json!(iss));
    c.insert("iat".into(), json!(iat));
    c.insert("nbf".into(), json!(iat));
    c.insert("exp".into(), json!(exp));
    // Public client for people (CLI), client secret for the automation app.
    let acr = if is_user { "0" } else { "1" };
    match form {
        TokenForm::V2 => {
            c.insert("azp".into(), json!(op.client_app_id));
            c.insert("azpacr".into(), json!(acr));
            if is_user {
                c.insert("name".into(), json!(op.display_name));
                c.insert("preferred_username".into(), json!(op.upn));
            }
        }
        TokenForm::V1 => {
            c.insert("appid".into(), json!(op.client_app_id));
            c.insert("appidacr".into(), json!(acr));
            if is_user {
                c.insert("amr".into(), json!(["pwd", "mfa"]));
                c.insert("name".into(), json!(op.display_name));
                c.insert("upn".into(), json!(op.upn));
                c.insert("unique_name".into(), json!(op.upn));
            }
        }
    }
    if is_user && !op.groups.is_empty() {
        c.insert("groups".into(), json!(op.groups));
    }
    c.insert("idtyp".into(), json!(if is_user { "user" } else { "app" }));
    c.insert("oid".into(), json!(op.oid));
    if !op.roles.is_empty() {
        c.insert("roles".into(), json!(op.roles));
    }
    if is_user {
        c.insert("scp".into(), json!(OPERATOR_SCOPE));
    }
    // Entra: a user's `sub` is pairwise; an app-only token's `sub` is its service principal's oid.
    let sub = if is_user {
        pairwise_sub(&op.oid, &t.api_client_id)
    } else {
        op.oid.clone()
    };
    c.insert("sub".into(), json!(sub));
    c.insert("tid".into(), json!(t.tenant_id));
    c.insert("uti".into(), json!(random_id()));
    let ver = match form {
        TokenForm::V2 => "2.0",
        TokenForm::V1 => "1.0",
    };
    c.insert("ver".into(), json!(ver));
    Value::Object(c)
}

/// The v2 ID token Entra issues to the console after an authorization-code sign-in (ID token
/// claims reference): `aud` the console's client id, the v2 issuer, `nonce`, `oid`, `tid`,
/// `preferred_username`, `name`, a pairwise `sub`, `groups` and `roles` when the user has any.
/// Signed RS256 with the published key, header `typ: JWT` and `kid`.
pub(crate) fn id_token(shared: &Shared, op: &SampleOperator, nonce: Option<&str>) -> String {
    let t = &shared.tenant;
    let iat = now();
    let mut c = Map::new();
    c.insert("aud".into(), json!(t.console_client_id));
    c.insert(
        "iss".into(),
        json!(format!("{}/{}/v2.0", shared.authority_url, t.tenant_id)),
    );
    c.insert("iat".into(), json!(iat));
    c.insert("nbf".into(), json!(iat));
    c.insert("exp".into(), json!(iat + 3600));
    c.insert("aio".into(), json!(random_id()));
    if !op.groups.is_empty() {
        c.insert("groups".into(), json!(op.groups));
    }
    c.insert("name".into(), json!(op.display_name));
    if let Some(n) = nonce {
        c.insert("nonce".into(), json!(n));
    }
    c.insert("oid".into(), json!(op.oid));
    c.insert("preferred_username".into(), json!(op.upn));
    c.insert("rh".into(), json!(random_id()));
    if !op.roles.is_empty() {
        c.insert("roles".into(), json!(op.roles));
    }
    c.insert(
        "sub".into(),
        json!(pairwise_sub(&op.oid, &t.console_client_id)),
    );
    c.insert("tid".into(), json!(t.tenant_id));
    c.insert("uti".into(), json!(random_id()));
    c.insert("ver".into(), json!("2.0"));
    let key = shared.lock().current_key().clone();
    key.token(
        &json!({"typ": "JWT", "alg": "RS256", "kid": key.kid}),
        &Value::Object(c),
    )
}

/// `overrides` keys replace defaults; a `null` value removes the key.
fn merge_header(mut header: Map<String, Value>, overrides: &Value) -> Value {
    if let Value::Object(o) = overrides {
        for (k, v) in o {
            if v.is_null() {
                header.remove(k);
            } else {
                header.insert(k.clone(), v.clone());
            }
        }
    }
    Value::Object(header)
}

pub(crate) fn mint(shared: &Shared, claims: &Value, overrides: &Value, signing: Signing) -> String {
    let (current, unknown) = {
        let mut st = shared.lock();
        let unknown = if signing == Signing::UnknownKey {
            if st.unknown_key.is_none() {
                // Cached: one unpublished key per sandbox is enough and keygen is slow.
                match KeyPair::generate() {
                    Ok(k) => st.unknown_key = Some(k),
                    Err(e) => panic!("RSA key generation failed: {e}"),
                }
            }
            st.unknown_key.clone()
        } else {
            None
        };
        (st.current_key().clone(), unknown)
    };
    let key = unknown.as_ref().unwrap_or(&current);
    let mut header = Map::new();
    header.insert("typ".into(), json!("JWT"));
    let alg = match signing {
        Signing::AlgNone => "none",
        Signing::Hs256WithPublicKey => "HS256",
        _ => "RS256",
    };
    header.insert("alg".into(), json!(alg));
    if claims.get("ver").and_then(Value::as_str) == Some("1.0") {
        // v1 headers carry both x5t and kid (graph-notes §6).
        header.insert("x5t".into(), json!(key.kid));
    }
    header.insert("kid".into(), json!(key.kid));
    let header = merge_header(header, overrides);
    let input = signing_input(&header, claims);
    let signature = match signing {
        Signing::Valid | Signing::UnknownKey => key.sign_rs256(input.as_bytes()),
        Signing::AlgNone => Vec::new(),
        Signing::Hs256WithPublicKey => {
            let pem = key
                .public()
                .to_public_key_pem(LineEnding::LF)
                .unwrap_or_default();
            hmac_sha256(pem.as_bytes(), input.as_bytes()).to_vec()
        }
        Signing::CorruptSignature => {
            let mut sig = key.sign_rs256(input.as_bytes());
            let mid = sig.len() / 2;
            for i in [0, mid, sig.len() - 1] {
                sig[i] ^= 0x5a;
            }
            sig
        }
    };
    format!("{input}.{}", b64url(&signature))
}
