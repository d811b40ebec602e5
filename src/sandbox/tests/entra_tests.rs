//! Discovery documents and JWKS.

use super::{send, start};
use crate::sandbox::Fault;

#[tokio::test]
async fn discovery_documents_have_entra_shapes() {
    let sb = start().await;
    let a = sb.authority_url();
    let tid = sb.tenant().tenant_id.clone();

    let r = send(
        "GET",
        &format!("{a}/{tid}/v2.0/.well-known/openid-configuration"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("max-age=86400, private"));
    // The gateway may parse it with openidconnect's metadata type.
    let meta: openidconnect::core::CoreProviderMetadata = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(meta.issuer().as_str(), format!("{a}/{tid}/v2.0"));
    let d = r.json();
    assert_eq!(d["issuer"], format!("{a}/{tid}/v2.0"));
    assert_eq!(d["jwks_uri"], format!("{a}/{tid}/discovery/v2.0/keys"));
    assert_eq!(d["token_endpoint"], format!("{a}/{tid}/oauth2/v2.0/token"));
    assert_eq!(d["id_token_signing_alg_values_supported"][0], "RS256");
    assert!(d["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == "private_key_jwt"));

    // The domain name resolves to the same tenant; URLs still carry the GUID.
    let r = send(
        "GET",
        &format!("{a}/contoso.onmicrosoft.com/.well-known/openid-configuration"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 200);
    let d = r.json();
    assert_eq!(d["issuer"], format!("https://sts.windows.net/{tid}/"));
    assert_eq!(d["jwks_uri"], format!("{a}/{tid}/discovery/keys"));

    // Multi-tenant aliases publish the {tenantid} template.
    let r = send(
        "GET",
        &format!("{a}/organizations/v2.0/.well-known/openid-configuration"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.json()["issuer"], format!("{a}/{{tenantid}}/v2.0"));

    let r = send(
        "GET",
        &format!("{a}/nosuchtenant.example/v2.0/.well-known/openid-configuration"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.status, 400);
    let e = r.json();
    assert_eq!(e["error_codes"][0], 90002);
    assert!(e["error_description"]
        .as_str()
        .unwrap()
        .starts_with("AADSTS90002: "));
    assert_eq!(sb.entra_calls().len(), 4);
}

#[tokio::test]
async fn jwks_publishes_current_keys_and_follows_rotation() {
    let sb = start().await;
    let a = sb.authority_url();
    let tid = sb.tenant().tenant_id.clone();
    let url = format!("{a}/{tid}/discovery/v2.0/keys");
    let keys = |r: super::Resp| r.json()["keys"].as_array().unwrap().clone();

    let r = send("GET", &url, &[], vec![]).await;
    assert_eq!(r.status, 200);
    let k = keys(r);
    assert_eq!(k.len(), 1);
    let first_kid = sb.current_kid();
    assert_eq!(k[0]["kid"], first_kid.as_str());
    assert_eq!(k[0]["x5t"], first_kid.as_str());
    assert_eq!(k[0]["kty"], "RSA");
    assert_eq!(k[0]["use"], "sig");
    assert_eq!(k[0]["e"], "AQAB");
    assert_eq!(k[0]["issuer"], format!("{a}/{tid}/v2.0"));
    assert!(k[0]["n"].as_str().unwrap().len() > 300);

    let new_kid = sb.rotate_signing_key(false);
    assert_ne!(new_kid, first_kid);
    let kids: Vec<String> = keys(send("GET", &url, &[], vec![]).await)
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kids, vec![first_kid.clone(), new_kid.clone()]);

    let newest = sb.rotate_signing_key(true);
    let kids: Vec<String> = keys(send("GET", &url, &[], vec![]).await)
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kids, vec![newest]);

    sb.set_fault(Fault::JwksDown);
    assert_eq!(send("GET", &url, &[], vec![]).await.status, 503);
    let v1 = format!("{a}/{tid}/discovery/keys");
    assert_eq!(send("GET", &v1, &[], vec![]).await.status, 503);
    sb.set_fault(Fault::None);
    assert_eq!(send("GET", &v1, &[], vec![]).await.status, 200);
}
