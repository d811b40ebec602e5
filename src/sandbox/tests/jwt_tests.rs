//! Operator tokens verify against the published JWKS the way the gateway will verify them
//! (openidconnect's JsonWebKey), and the broken signing modes do not.

use std::time::Duration;

use openidconnect::core::{CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
use openidconnect::JsonWebKey;
use serde_json::{json, Value};

use super::{send, start};
use crate::sandbox::crypto::b64url_decode;
use crate::sandbox::{Sandbox, Signing, TokenForm};

async fn jwks(sb: &Sandbox) -> CoreJsonWebKeySet {
    let url = format!(
        "{}/{}/discovery/v2.0/keys",
        sb.authority_url(),
        sb.tenant().tenant_id
    );
    let r = send("GET", &url, &[], vec![]).await;
    serde_json::from_slice(&r.body).unwrap()
}

/// What the gateway will do: pick the key by kid, verify RS256. Err describes why not.
fn verify(set: &CoreJsonWebKeySet, token: &str) -> Result<(Value, Value), String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, c, s] = parts.as_slice() else {
        return Err("shape".into());
    };
    let header: Value = serde_json::from_slice(&b64url_decode(h).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&b64url_decode(c).unwrap()).unwrap();
    if header["alg"] != "RS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let kid = header["kid"].as_str().ok_or("no kid")?;
    let key = set
        .keys()
        .iter()
        .find(|k| k.key_id().map(|id| id.as_str()) == Some(kid))
        .ok_or("unknown kid")?;
    let sig = b64url_decode(s).ok_or("sig encoding")?;
    key.verify_signature(
        &CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
        format!("{h}.{c}").as_bytes(),
        &sig,
    )
    .map_err(|e| e.to_string())?;
    Ok((header, claims))
}

#[tokio::test]
async fn minted_tokens_verify_with_openidconnect_and_broken_ones_do_not() {
    let sb = start().await;
    let set = jwks(&sb).await;
    let t = sb.tenant().clone();

    let tok = sb.operator_token("alice", Duration::from_secs(600));
    let (header, c) = verify(&set, &tok).unwrap();
    assert_eq!(header["typ"], "JWT");
    assert!(header.get("x5t").is_none(), "v2 headers carry only kid");
    assert_eq!(
        c["iss"],
        format!("{}/{}/v2.0", sb.authority_url(), t.tenant_id)
    );
    assert_eq!(c["aud"], t.api_client_id.as_str());
    assert_eq!(c["tid"], t.tenant_id.as_str());
    assert_eq!(c["oid"], t.operator("alice").unwrap().oid.as_str());
    assert_eq!(c["scp"], "RecoverPasscode.Request");
    assert_eq!(c["groups"], json!([t.group("Helpdesk Tier 2").unwrap().id]));
    assert_eq!(c["idtyp"], "user");
    assert_eq!(c["ver"], "2.0");
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 600);

    let claims = sb.operator_claims("alice", TokenForm::V2, Duration::from_secs(600));
    for bad in [
        Signing::UnknownKey,
        Signing::AlgNone,
        Signing::CorruptSignature,
        Signing::Hs256WithPublicKey,
    ] {
        let forged = sb.mint(&claims, &Value::Null, bad);
        assert!(verify(&set, &forged).is_err(), "{bad:?} verified");
    }
    let none = sb.mint(&claims, &Value::Null, Signing::AlgNone);
    assert!(none.ends_with('.'));

    // Header overrides win, and null removes a default.
    let odd = sb.mint(
        &claims,
        &json!({"typ": "at+jwt", "kid": null}),
        Signing::Valid,
    );
    let h: Value =
        serde_json::from_slice(&b64url_decode(odd.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(h, json!({"typ": "at+jwt", "alg": "RS256"}));
}

#[tokio::test]
async fn app_and_v1_operator_claims_have_their_shapes() {
    let sb = start().await;
    let t = sb.tenant().clone();
    let c = sb.operator_claims("automation", TokenForm::V2, Duration::from_secs(60));
    assert_eq!(c["roles"], json!(["PassGate.RecoverPasscode"]));
    assert!(c.get("scp").is_none());
    assert_eq!(c["idtyp"], "app");
    assert_eq!(
        c["azp"],
        t.operator("automation").unwrap().client_app_id.as_str()
    );

    let c = sb.operator_claims("bob", TokenForm::V1, Duration::from_secs(60));
    assert_eq!(
        c["iss"],
        format!("https://sts.windows.net/{}/", t.tenant_id)
    );
    assert_eq!(c["aud"], "api://passgate");
    assert_eq!(c["ver"], "1.0");
    assert_eq!(c["upn"], "bob@contoso.onmicrosoft.com");
    assert!(c["appid"].is_string() && c["appidacr"].is_string());
    assert!(c.get("groups").is_none() && c.get("azp").is_none());
    let tok = sb.mint(&c, &Value::Null, Signing::Valid);
    let (header, _) = verify(&jwks(&sb).await, &tok).unwrap();
    assert_eq!(header["x5t"], header["kid"]);

    // After rotation new tokens use the new kid; with the old key retired, old tokens fail.
    let old = sb.operator_token("alice", Duration::from_secs(60));
    let kid = sb.rotate_signing_key(true);
    let set = jwks(&sb).await;
    let fresh = sb.operator_token("alice", Duration::from_secs(60));
    assert_eq!(verify(&set, &fresh).unwrap().0["kid"], kid.as_str());
    assert_eq!(verify(&set, &old).unwrap_err(), "unknown kid");
}
