//! The client-credentials token endpoint: secrets, both assertion forms, AADSTS errors.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use sha2::Sha256;

use super::{post_token, send, start, token_url};
use crate::sandbox::crypto::{b64url, sha1, sha256};
use crate::sandbox::jwt::{self, now, signing_input};
use crate::sandbox::{Fault, Sandbox, GRAPH_DEFAULT_SCOPE};

fn err_code(r: &super::Resp) -> (String, i64) {
    let e = r.json();
    let desc = e["error_description"].as_str().unwrap().to_string();
    let code = e["error_codes"][0].as_i64().unwrap();
    assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc}");
    for line in ["\r\nTrace ID: ", "\r\nCorrelation ID: ", "\r\nTimestamp: "] {
        assert!(desc.contains(line), "{desc}");
    }
    for k in ["timestamp", "trace_id", "correlation_id"] {
        assert!(e[k].is_string(), "{k} missing");
    }
    (e["error"].as_str().unwrap().to_string(), code)
}

#[tokio::test]
async fn client_secret_post_and_basic_issue_graph_app_tokens() {
    let sb = start().await;
    let t = sb.tenant().clone();
    let secret = sb.client_secret();
    assert!(secret.len() >= 32);
    let r = post_token(
        &sb,
        &[
            ("client_id", &t.gateway_app_client_id),
            ("scope", GRAPH_DEFAULT_SCOPE),
            ("client_secret", &secret),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("no-store, no-cache"));
    assert_eq!(r.header("pragma"), Some("no-cache"));
    assert!(r.header("x-ms-request-id").is_some());
    let body = r.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let token = body["access_token"].as_str().unwrap();
    let claims = jwt::parse(token).unwrap().claims;
    assert_eq!(claims["aud"], "https://graph.microsoft.com");
    assert_eq!(claims["idtyp"], "app");
    assert_eq!(claims["oid"], t.gateway_app_sp_object_id.as_str());
    assert_eq!(claims["appid"], t.gateway_app_client_id.as_str());
    assert!(claims["roles"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r == "DeviceManagementManagedDevices.PrivilegedOperations.All"));
    let exp = claims["exp"].as_i64().unwrap();
    assert!((exp - now() - 3599).abs() <= 2);
    // Signed with the Graph key, which the published JWKS must not contain.
    assert_ne!(
        jwt::parse(token).unwrap().header["kid"],
        sb.current_kid().as_str()
    );

    let basic = STANDARD.encode(format!("{}:{}", t.gateway_app_client_id, secret));
    let r = send(
        "POST",
        &token_url(&sb),
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &format!("Basic {basic}")),
        ],
        super::form(&[
            ("scope", GRAPH_DEFAULT_SCOPE),
            ("grant_type", "client_credentials"),
        ]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(sb.issued_app_tokens().len(), 2);
    assert_eq!(sb.issued_app_tokens()[0], token);
    // Recorded calls never leak the secret through Debug.
    let dbg = format!("{:?}", sb.entra_calls());
    assert!(!dbg.contains(&secret));
}

#[tokio::test]
async fn token_endpoint_errors_have_aadsts_shapes() {
    let sb = start().await;
    let t = sb.tenant().clone();
    let secret = sb.client_secret();
    let id = t.gateway_app_client_id.as_str();
    let cc = "client_credentials";

    let r = post_token(
        &sb,
        &[
            ("client_id", id),
            ("scope", GRAPH_DEFAULT_SCOPE),
            ("client_secret", "wrong"),
            ("grant_type", cc),
        ],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(err_code(&r), ("invalid_client".into(), 7000215));

    let r = post_token(
        &sb,
        &[
            ("client_id", &t.api_client_id),
            ("scope", GRAPH_DEFAULT_SCOPE),
            ("client_secret", &secret),
            ("grant_type", cc),
        ],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(err_code(&r), ("unauthorized_client".into(), 700016));

    let r = post_token(
        &sb,
        &[
            ("client_id", id),
            ("scope", "https://graph.microsoft.com/User.Read"),
            ("client_secret", &secret),
            ("grant_type", cc),
        ],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(err_code(&r), ("invalid_scope".into(), 70011));

    let r = post_token(
        &sb,
        &[
            ("client_id", id),
            ("scope", GRAPH_DEFAULT_SCOPE),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(err_code(&r), ("invalid_request".into(), 900144));

    let r = post_token(
        &sb,
        &[
            ("client_id", id),
            ("scope", GRAPH_DEFAULT_SCOPE),
            ("client_secret", &secret),
            ("grant_type", "password"),
        ],
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(err_code(&r).1, 70003);

    let r = post_token(
        &sb,
        &[
            ("client_id", id),
            ("scope", GRAPH_DEFAULT_SCOPE),
            ("grant_type", cc),
        ],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(err_code(&r), ("invalid_client".into(), 7000218));

    let url = format!("{}/fabrikam.example/oauth2/v2.0/token", sb.authority_url());
    let body = super::form(&[
        ("client_id", id),
        ("scope", GRAPH_DEFAULT_SCOPE),
        ("client_secret", &secret),
        ("grant_type", cc),
    ]);
    let r = send(
        "POST",
        &url,
        &[("client-request-id", "corr-1")],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(err_code(&r), ("invalid_request".into(), 90002));
    assert_eq!(r.json()["correlation_id"], "corr-1");

    sb.set_fault(Fault::TokenEndpointStatus(503));
    let r = send("POST", &token_url(&sb), &[], body.clone()).await;
    assert_eq!(r.status, 503);
    assert!(sb.issued_app_tokens().is_empty());

    sb.set_fault(Fault::ClientSecretRejected);
    let r = send("POST", &token_url(&sb), &[], body).await;
    assert_eq!(r.status, 401);
    assert_eq!(err_code(&r), ("invalid_client".into(), 7000215));
    assert!(sb.issued_app_tokens().is_empty());
}

struct Cert {
    der: Vec<u8>,
    key: RsaPrivateKey,
}

fn register_cert(sb: &Sandbox) -> Cert {
    let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
    // The sandbox only hashes the DER bytes, so any stable blob stands in for a certificate.
    let der = b"0\x82\x03\x00 not-really-a-certificate passgate test".to_vec();
    sb.register_app_certificate(&der, key.to_public_key());
    Cert { der, key }
}

fn assertion(sb: &Sandbox, cert: &Cert, ps256: bool, claims_patch: Value) -> String {
    let t = sb.tenant();
    let header = if ps256 {
        json!({"alg": "PS256", "typ": "JWT", "x5t#S256": b64url(&sha256(&cert.der))})
    } else {
        json!({"alg": "RS256", "typ": "JWT", "x5t": b64url(&sha1(&cert.der))})
    };
    let n = now();
    let mut claims = json!({
        "aud": token_url(sb),
        "iss": t.gateway_app_client_id,
        "sub": t.gateway_app_client_id,
        "jti": uuid::Uuid::new_v4().to_string(),
        "nbf": n,
        "iat": n,
        "exp": n + 600,
    });
    for (k, v) in claims_patch.as_object().unwrap() {
        claims[k] = v.clone();
    }
    let input = signing_input(&header, &claims);
    let sig = if ps256 {
        rsa::pss::BlindedSigningKey::<Sha256>::new(cert.key.clone())
            .sign_with_rng(&mut rand::rngs::OsRng, input.as_bytes())
            .to_vec()
    } else {
        rsa::pkcs1v15::SigningKey::<Sha256>::new(cert.key.clone())
            .sign(input.as_bytes())
            .to_vec()
    };
    format!("{input}.{}", b64url(&sig))
}

async fn post_assertion(sb: &Sandbox, a: &str) -> super::Resp {
    post_token(
        sb,
        &[
            ("client_id", &sb.tenant().gateway_app_client_id),
            ("scope", GRAPH_DEFAULT_SCOPE),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", a),
            ("grant_type", "client_credentials"),
        ],
    )
    .await
}

#[tokio::test]
async fn client_assertions_in_both_forms_are_accepted_once() {
    let sb = start().await;
    let cert = register_cert(&sb);

    let ps = assertion(&sb, &cert, true, json!({}));
    let r = post_assertion(&sb, &ps).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let claims = jwt::parse(r.json()["access_token"].as_str().unwrap())
        .unwrap()
        .claims;
    assert_eq!(claims["appidacr"], "2");

    let rs = assertion(&sb, &cert, false, json!({}));
    let r = post_assertion(&sb, &rs).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // Replaying a jti is refused.
    let r = post_assertion(&sb, &ps).await;
    assert_eq!(r.status, 401);
    assert_eq!(err_code(&r).0, "invalid_client");
    assert_eq!(sb.issued_app_tokens().len(), 2);
}

#[tokio::test]
async fn client_assertions_with_bad_claims_or_keys_are_refused() {
    let sb = start().await;
    let cert = register_cert(&sb);
    let id = sb.tenant().gateway_app_client_id.clone();
    let cases = [
        json!({"aud": format!("{}/common/oauth2/v2.0/token", sb.authority_url())}),
        json!({"iss": "someone-else"}),
        json!({"sub": "someone-else"}),
        json!({"exp": now() - 10}),
        json!({"nbf": now() + 300}),
        json!({"jti": null}),
    ];
    for patch in cases {
        let a = assertion(&sb, &cert, true, patch.clone());
        let r = post_assertion(&sb, &a).await;
        assert_eq!(r.status, 401, "{patch}");
        assert_eq!(err_code(&r).0, "invalid_client", "{patch}");
    }
    // A certificate that is not registered.
    let other = Cert {
        der: b"another blob".to_vec(),
        key: cert.key.clone(),
    };
    let r = post_assertion(&sb, &assertion(&sb, &other, false, json!({}))).await;
    assert_eq!((r.status, err_code(&r).1), (401, 700027));
    // A signature that does not verify.
    let mut a = assertion(&sb, &cert, false, json!({}));
    a.push_str("AAAA");
    let r = post_assertion(&sb, &a).await;
    assert_eq!(r.status, 401);
    assert!(sb.issued_app_tokens().is_empty(), "{id}");
}
