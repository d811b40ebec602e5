//! Hostile operator tokens over real HTTP on loopback: forged, confused, stale, misdirected or
//! oversized tokens must each get a 401/403 with their own reason code, no token may be echoed,
//! and nothing may reach Graph's recoverPasscode.

use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use passgate::dev::DevEnv;
use passgate::sandbox::{Signing, TokenForm};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A case: the Authorization header values to send (none, one or several) and what must come back.
struct Case {
    name: &'static str,
    authorization: Vec<String>,
    status: u16,
    code: &'static str,
}

fn case(name: &'static str, token: String, status: u16, code: &'static str) -> Case {
    Case {
        name,
        authorization: vec![format!("Bearer {token}")],
        status,
        code,
    }
}

fn alice_with(env: &DevEnv, f: impl Fn(&mut Value)) -> String {
    let mut c = env.sandbox.operator_claims("alice", TokenForm::V2, HOUR);
    f(&mut c);
    env.sandbox.mint(&c, &json!({}), Signing::Valid)
}

/// Replaces the payload of a signed token, keeping its header and signature.
fn with_payload(token: &str, claims: &Value) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

fn decode_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

async fn run_cases(env: &DevEnv, cases: &[Case]) {
    let url = action_url(env, "kiosk-phone");
    let mut wrong = Vec::new();
    for c in cases {
        let headers: Vec<(&str, String)> = c
            .authorization
            .iter()
            .map(|v| ("authorization", v.clone()))
            .collect();
        let r = send("POST", &url, &headers, b"").await;
        if (r.status, r.code()) != (c.status, c.code.to_string()) {
            wrong.push(format!(
                "{}: got {} {:?}, expected {} {}",
                c.name,
                r.status,
                r.code(),
                c.status,
                c.code
            ));
        }
        let body = String::from_utf8_lossy(&r.body);
        for v in &c.authorization {
            let t = v.split_once(' ').map(|x| x.1).unwrap_or(v);
            if t.len() >= 16 {
                assert!(!body.contains(t), "{}: token echoed in the body", c.name);
                for (name, value) in &r.headers {
                    assert!(
                        !value.to_str().unwrap_or("").contains(t),
                        "{}: token echoed in header {name}",
                        c.name
                    );
                }
            }
        }
        if r.status == 401 {
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer ") && challenge.contains("invalid_token"),
                "{}: {challenge}",
                c.name
            );
        }
        assert!(
            env.sandbox.recover_passcode_calls().is_empty(),
            "{}: a hostile token reached Graph",
            c.name
        );
    }
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_misdirected_tokens_are_refused() {
    let env = start_unthrottled().await;
    let sb = &env.sandbox;
    let now = chrono::Utc::now().timestamp();
    let good_claims = sb.operator_claims("alice", TokenForm::V2, HOUR);
    let good = sb.mint(&good_claims, &json!({}), Signing::Valid);
    let mallory_oid = sb.tenant().operator("bob").unwrap().oid.clone();
    let mut tampered_claims = decode_part(&good, 1);
    tampered_claims["oid"] = json!(mallory_oid);
    let mut escalated_claims = decode_part(&good, 1);
    escalated_claims["roles"] = json!(["PassGate.RecoverPasscode"]);
    escalated_claims["groups"] = json!(["f3d0263f-adae-4f31-84f1-5b45713ed0b7"]);
    let jku_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    jku_listener.set_nonblocking(true).unwrap();
    let jku = format!("http://{}/keys", jku_listener.local_addr().unwrap());

    let cases = vec![
        case(
            "alg none",
            sb.mint(&good_claims, &json!({}), Signing::AlgNone),
            401,
            "token_algorithm_not_allowed",
        ),
        case(
            "alg None (case games)",
            sb.mint(&good_claims, &json!({"alg": "None"}), Signing::AlgNone),
            401,
            "token_algorithm_not_allowed",
        ),
        case(
            "HS256 signed with the RSA public key",
            sb.mint(&good_claims, &json!({}), Signing::Hs256WithPublicKey),
            401,
            "token_algorithm_not_allowed",
        ),
        case(
            "signed by an unpublished key",
            sb.mint(&good_claims, &json!({}), Signing::UnknownKey),
            401,
            "token_unknown_key",
        ),
        case(
            "wrong kid on a valid signature",
            sb.mint(
                &good_claims,
                &json!({"kid": "not-a-published-kid"}),
                Signing::Valid,
            ),
            401,
            "token_unknown_key",
        ),
        case(
            "kid path traversal",
            sb.mint(
                &good_claims,
                &json!({"kid": "../../etc/passwd"}),
                Signing::Valid,
            ),
            401,
            "token_unknown_key",
        ),
        case(
            "kid URL",
            sb.mint(&good_claims, &json!({"kid": jku.clone()}), Signing::Valid),
            401,
            "token_unknown_key",
        ),
        case(
            "kid missing",
            sb.mint(&good_claims, &json!({"kid": null}), Signing::Valid),
            401,
            "token_unknown_key",
        ),
        case(
            "kid of 1000 characters",
            sb.mint(
                &good_claims,
                &json!({"kid": "k".repeat(1000)}),
                Signing::Valid,
            ),
            401,
            "token_unknown_key",
        ),
        case(
            "kid not a string",
            sb.mint(&good_claims, &json!({"kid": 7}), Signing::Valid),
            401,
            "token_malformed",
        ),
        case(
            "jku pointing at an attacker's key set",
            sb.mint(
                &good_claims,
                &json!({"jku": jku.clone()}),
                Signing::UnknownKey,
            ),
            401,
            "token_unknown_key",
        ),
        case(
            "embedded jwk header",
            sb.mint(
                &good_claims,
                &json!({"jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}),
                Signing::UnknownKey,
            ),
            401,
            "token_unknown_key",
        ),
        case(
            "crit header",
            sb.mint(&good_claims, &json!({"crit": ["exp"]}), Signing::Valid),
            401,
            "token_malformed",
        ),
        case(
            "typ missing",
            sb.mint(&good_claims, &json!({"typ": null}), Signing::Valid),
            401,
            "token_type_not_allowed",
        ),
        case(
            "expired",
            alice_with(&env, |c| {
                c["exp"] = json!(now - 600);
                c["nbf"] = json!(now - 4000);
                c["iat"] = json!(now - 4000);
            }),
            401,
            "token_expired",
        ),
        case(
            "not yet valid",
            alice_with(&env, |c| c["nbf"] = json!(now + 600)),
            401,
            "token_not_yet_valid",
        ),
        case(
            "exp as a string",
            alice_with(&env, |c| c["exp"] = json!("tomorrow")),
            401,
            "token_malformed",
        ),
        case(
            // Used to saturate to i64::MAX and pass as "never expires" (fixed in auth/token.rs).
            "exp far beyond i64",
            alice_with(&env, |c| c["exp"] = json!(1e300)),
            401,
            "token_malformed",
        ),
        case(
            "exp at i64::MAX",
            alice_with(&env, |c| c["exp"] = json!(i64::MAX)),
            401,
            "token_malformed",
        ),
        case(
            "nbf far in the past as a float",
            alice_with(&env, |c| c["nbf"] = json!(-1e300)),
            401,
            "token_malformed",
        ),
        case(
            "wrong audience",
            alice_with(&env, |c| c["aud"] = json!("api://someone-else")),
            401,
            "token_wrong_audience",
        ),
        case(
            "token minted for Graph itself",
            alice_with(&env, |c| c["aud"] = json!("https://graph.microsoft.com")),
            401,
            "token_wrong_audience",
        ),
        case(
            "audience list without passgate",
            alice_with(&env, |c| {
                c["aud"] = json!(["https://graph.microsoft.com", "api://other"])
            }),
            401,
            "token_wrong_audience",
        ),
        case(
            "wrong issuer",
            alice_with(&env, |c| {
                c["iss"] = json!(
                    "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
                )
            }),
            401,
            "token_wrong_issuer",
        ),
        case(
            "wrong tenant",
            alice_with(&env, |c| {
                c["tid"] = json!("72f988bf-86f1-41af-91ab-2d7cd011db47")
            }),
            401,
            "token_wrong_tenant",
        ),
        case(
            "missing oid",
            alice_with(&env, |c| {
                c.as_object_mut().unwrap().remove("oid");
            }),
            401,
            "token_missing_claim",
        ),
        case(
            "oid not a GUID",
            alice_with(&env, |c| c["oid"] = json!("alice")),
            401,
            "token_missing_claim",
        ),
        case(
            "missing ver",
            alice_with(&env, |c| {
                c.as_object_mut().unwrap().remove("ver");
            }),
            401,
            "token_missing_claim",
        ),
        case(
            "tampered payload: another oid, original signature",
            with_payload(&good, &tampered_claims),
            401,
            "token_bad_signature",
        ),
        case(
            "tampered payload: added role and group, original signature",
            with_payload(&good, &escalated_claims),
            401,
            "token_bad_signature",
        ),
        case(
            "corrupted signature",
            sb.mint(&good_claims, &json!({}), Signing::CorruptSignature),
            401,
            "token_bad_signature",
        ),
        case(
            "signature stripped",
            format!("{}.", good.rsplit_once('.').unwrap().0),
            401,
            "token_bad_signature",
        ),
        case(
            "signature shortened by 3 bytes",
            {
                let (input, sig) = good.rsplit_once('.').unwrap();
                let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
                format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig[..sig.len() - 3]))
            },
            401,
            "token_bad_signature",
        ),
        case(
            "truncated to half",
            good[..good.len() / 2].to_string(),
            401,
            "token_malformed",
        ),
        case("four parts", format!("{good}.x"), 401, "token_malformed"),
        case(
            "JWE-shaped (five parts)",
            "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d".into(),
            401,
            "token_malformed",
        ),
        case(
            "padding characters",
            format!("{good}=="),
            401,
            "token_malformed",
        ),
        case(
            "20 KiB token (over passgate's limit, under hyper's)",
            format!("{good}{}", "A".repeat(20 * 1024)),
            401,
            "token_malformed",
        ),
        Case {
            name: "two Authorization headers (valid token twice)",
            authorization: vec![format!("Bearer {good}"), format!("Bearer {good}")],
            status: 401,
            code: "token_malformed",
        },
        Case {
            name: "Basic scheme",
            authorization: vec![format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("alice:{good}"))
            )],
            status: 401,
            code: "token_malformed",
        },
        Case {
            name: "scheme only",
            authorization: vec!["Bearer".into()],
            status: 401,
            code: "token_malformed",
        },
        Case {
            name: "token without a scheme",
            authorization: vec![good.clone()],
            status: 401,
            code: "token_malformed",
        },
        Case {
            name: "no Authorization header",
            authorization: vec![],
            status: 401,
            code: "token_missing",
        },
    ];
    run_cases(&env, &cases).await;
    assert!(
        matches!(jku_listener.accept(), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "passgate fetched a key from a URL named in a token"
    );
    // Every refusal is audited, none as allowed.
    let decisions = decision_records(&env);
    assert_eq!(decisions.len(), cases.len());
    assert!(decisions.iter().all(|r| r["decision"] == "deny"));
    passgate::audit::verify_file(&env.audit_log).expect("audit chain verifies");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_app_tokens_are_not_operator_tokens() {
    let env = start().await;
    let ok = send(
        "POST",
        &action_url(&env, "kiosk-phone"),
        &[bearer(&token(&env, "alice"))],
        b"",
    )
    .await;
    assert_eq!(ok.status, 204);
    let app_tokens = env.sandbox.issued_app_tokens();
    assert!(
        !app_tokens.is_empty(),
        "the allowed call fetched an app token"
    );
    let before = env.sandbox.recover_passcode_calls().len();
    for t in &app_tokens {
        let r = send("POST", &action_url(&env, "kiosk-phone"), &[bearer(t)], b"").await;
        // Graph's own token: signed by a key passgate's issuer does not publish, for another
        // audience. Whichever check trips first, it is a 401 and never a forward.
        assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
        assert!(
            [
                "token_unknown_key",
                "token_wrong_audience",
                "token_type_not_allowed"
            ]
            .contains(&r.code().as_str()),
            "{}",
            r.code()
        );
        assert!(!String::from_utf8_lossy(&r.body).contains(t.as_str()));
    }
    assert_eq!(env.sandbox.recover_passcode_calls().len(), before);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_query_string_never_authenticates() {
    let env = start().await;
    let t = token(&env, "alice");
    for (q, with_header) in [
        (format!("?access_token={t}"), false),
        (format!("?access_token={t}"), true),
        (format!("?code={t}&state=x"), false),
    ] {
        let url = format!("{}{q}", action_url(&env, "kiosk-phone"));
        let headers: Vec<(&str, String)> = if with_header {
            vec![bearer(&t)]
        } else {
            vec![]
        };
        let r = send("POST", &url, &headers, b"").await;
        assert_eq!((r.status, r.code().as_str()), (400, "query_not_allowed"));
        assert!(!String::from_utf8_lossy(&r.body).contains(t.as_str()));
    }
    assert!(env.sandbox.recover_passcode_calls().is_empty());
    // The audit trail records that a query was sent, never its contents.
    let audit = std::fs::read_to_string(&env.audit_log).unwrap();
    assert!(
        !audit.contains(t.as_str()),
        "a query-string token reached the audit log"
    );
    assert_eq!(decision_records(&env).len(), 3);
    for rec in decision_records(&env) {
        assert!(
            rec["path"].as_str().unwrap().ends_with("redacted>"),
            "{rec}"
        );
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_tokens_are_refused_by_a_v2_only_config() {
    let cfg = passgate::dev::DEV_CONFIG.replace(
        "operator_auth:\n",
        "operator_auth:\n  token_versions: [\"2.0\"]\n",
    );
    assert_ne!(cfg, passgate::dev::DEV_CONFIG);
    let env = start_with(Some(cfg)).await;
    let sb = &env.sandbox;
    let v1 = sb.mint(
        &sb.operator_claims("alice", TokenForm::V1, HOUR),
        &json!({}),
        Signing::Valid,
    );
    let cases = vec![
        case("v1 token, v2-only config", v1, 401, "token_wrong_issuer"),
        case(
            "v1 token relabelled ver 2.0 (signature breaks)",
            {
                let t = sb.mint(
                    &sb.operator_claims("alice", TokenForm::V1, HOUR),
                    &json!({}),
                    Signing::Valid,
                );
                let mut c = decode_part(&t, 1);
                c["ver"] = json!("2.0");
                with_payload(&t, &c)
            },
            401,
            "token_bad_signature",
        ),
    ];
    run_cases(&env, &cases).await;
    // The same config still serves v2 tokens.
    let r = send(
        "POST",
        &action_url(&env, "kiosk-phone"),
        &[bearer(&token(&env, "alice"))],
        b"",
    )
    .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    env.stop().await;
}

/// Over 64 KiB: hyper's header buffer may answer 431 before passgate; either way, a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_token_gets_431_or_401_and_no_hang() {
    let env = start().await;
    let good = token(&env, "alice");
    let huge = format!("{good}{}", "A".repeat(70 * 1024));
    let url = action_url(&env, "kiosk-phone");
    let path = url.trim_start_matches(&env.gateway_url);
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: passgate.test\r\nAuthorization: Bearer {huge}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let mut s = TcpStream::connect(gateway_addr(&env)).await.unwrap();
    // The server may stop reading and answer early; a failed write is fine, the answer counts.
    let _ = s.write_all(req.as_bytes()).await;
    let buf = read_to_close(&mut s, Duration::from_secs(15)).await;
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or_default().to_string();
    assert!(
        status_line.starts_with("HTTP/1.1 431")
            || (status_line.starts_with("HTTP/1.1 401") && text.contains("token_malformed")),
        "{status_line}"
    );
    assert!(!text.contains(&good), "token echoed");
    assert!(env.sandbox.recover_passcode_calls().is_empty());
    env.stop().await;
}

/// Finding 3: a user's delegated token carrying `roles` but no `scp` must not pass as app-only
/// (skipping `required_scope` and audited as `kind: app` with the user's UPN), in v1 or v2, with
/// or without `idtyp`; nor may an app's token that claims `scp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_not_taken_for_apps() {
    let env = start().await;
    let sb = &env.sandbox;
    let app_role = json!(["PassGate.RecoverPasscode"]);
    let mut cases = Vec::new();
    for (form, label) in [(TokenForm::V2, "v2"), (TokenForm::V1, "v1")] {
        for keep_idtyp in [true, false] {
            let mut c = sb.operator_claims("alice", form, HOUR);
            let o = c.as_object_mut().unwrap();
            o.remove("scp");
            o.insert("roles".into(), app_role.clone());
            if !keep_idtyp {
                o.remove("idtyp");
            }
            let name = match (label, keep_idtyp) {
                ("v2", true) => "v2 user token, roles, no scp",
                ("v2", false) => "v2 user token, roles, no scp, no idtyp",
                (_, true) => "v1 user token, roles, no scp",
                _ => "v1 user token, roles, no scp, no idtyp",
            };
            cases.push(case(
                name,
                sb.mint(&c, &json!({}), Signing::Valid),
                401,
                "token_kind_ambiguous",
            ));
        }
    }
    let app = sb
        .tenant()
        .operators
        .iter()
        .find(|o| o.kind == passgate::sandbox::OperatorKind::App)
        .unwrap()
        .name
        .clone();
    let mut c = sb.operator_claims(&app, TokenForm::V2, HOUR);
    c["scp"] = json!("RecoverPasscode.Request");
    cases.push(case(
        "app token claiming scp",
        sb.mint(&c, &json!({}), Signing::Valid),
        401,
        "token_kind_ambiguous",
    ));
    run_cases(&env, &cases).await;
    for r in audit_records(&env) {
        assert_ne!(
            r["operator"]["kind"], "app",
            "a token was audited as an app: {r}"
        );
    }
}
