//! The core request path, end to end over real HTTP on loopback: sandbox emulator ← gateway ← test.

use crate::common::*;
use passgate::sandbox::{Signing, TokenForm};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approved_operator_on_allowed_device_is_forwarded_with_the_app_token_only() {
    let env = start().await;
    let op_token = token(&env, "alice");
    let resp = send(
        "POST",
        &action_url(&env, "kiosk-phone"),
        &[
            bearer(&op_token),
            ("x-operator-note", "do-not-forward".into()),
            ("cookie", "session=operator".into()),
            ("x-forwarded-for", "203.0.113.9".into()),
        ],
        b"",
    )
    .await;
    assert_eq!(
        resp.status,
        204,
        "body: {:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert!(
        resp.header("request-id").is_some(),
        "Graph's request-id comes back"
    );

    let calls = env.sandbox.recover_passcode_calls();
    assert_eq!(calls.len(), 1, "exactly one recoverPasscode reached Graph");
    let call = &calls[0];
    let auth = call
        .header("authorization")
        .expect("forwarded with a bearer token");
    let app_tokens = env.sandbox.issued_app_tokens();
    assert!(
        app_tokens.iter().any(|t| auth == format!("Bearer {t}")),
        "the forwarded token is an app token the token endpoint issued"
    );
    assert!(
        !auth.contains(&op_token),
        "the operator token is never forwarded"
    );
    for (name, value) in &call.headers {
        assert!(
            !value.contains(&op_token),
            "operator token leaked in header {name}"
        );
        assert!(
            !["x-operator-note", "cookie", "x-forwarded-for"].contains(&name.as_str()),
            "inbound header {name} was forwarded"
        );
    }
    assert!(call.body.is_empty());
    assert_eq!(
        call.path_and_query,
        format!(
            "/v1.0/deviceManagement/managedDevices/{}/recoverPasscode",
            device_id(&env, "kiosk-phone")
        )
    );

    let records = audit_records(&env);
    let decision = records
        .iter()
        .find(|r| r["kind"] == "decision")
        .expect("decision record");
    assert_eq!(decision["decision"], "allow");
    assert_eq!(decision["policy"], "helpdesk-kiosk-phones");
    assert_eq!(
        decision["operator"]["oid"],
        env.sandbox.tenant().operator("alice").unwrap().oid
    );
    assert_eq!(
        decision["target"]["managed_device_id"],
        device_id(&env, "kiosk-phone")
    );
    let outcome = records
        .iter()
        .find(|r| r["kind"] == "outcome")
        .expect("outcome record");
    assert_eq!(outcome["status"], 204);
    assert_eq!(outcome["request_id"], decision["request_id"]);
    verify_audit(&env);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_three_route_forms_and_beta_reach_the_same_device() {
    let env = start().await;
    let t = token(&env, "alice");
    let dev = env.sandbox.tenant().device("kiosk-phone").unwrap().clone();
    let paths = [
        format!(
            "/beta/deviceManagement/managedDevices/{}/recoverPasscode",
            dev.managed_device_id
        ),
        format!(
            "/v1.0/users/{}/managedDevices/{}/recoverPasscode",
            dev.user_id, dev.managed_device_id
        ),
        format!(
            "/v1.0/DeviceManagement/detectedApps/0a1b2c3d/ManagedDevices/{}/RecoverPasscode",
            dev.managed_device_id.to_uppercase()
        ),
    ];
    for p in &paths {
        let r = send(
            "POST",
            &format!("{}{p}", env.gateway_url),
            &[bearer(&t)],
            b"",
        )
        .await;
        assert_eq!(r.status, 204, "{p}: {}", String::from_utf8_lossy(&r.body));
    }
    let targets: Vec<String> = decision_records(&env)
        .iter()
        .map(|r| {
            r["target"]["managed_device_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(targets, vec![dev.managed_device_id.clone(); 3]);
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 3);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_form_for_another_users_device_is_refused() {
    let env = start().await;
    let t = token(&env, "alice");
    let dev = device_id(&env, "kiosk-phone");
    let other_user = env
        .sandbox
        .tenant()
        .device("finance-laptop")
        .unwrap()
        .user_id
        .clone();
    let r = send(
        "POST",
        &format!(
            "{}/v1.0/users/{other_user}/managedDevices/{dev}/recoverPasscode",
            env.gateway_url
        ),
        &[bearer(&t)],
        b"",
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (404, "device_user_mismatch"));
    assert!(env.sandbox.recover_passcode_calls().is_empty());
    env.stop().await;
}

struct Case {
    name: &'static str,
    token: Option<String>,
    device: String,
    status: u16,
    code: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_reason_and_never_reaches_graph() {
    let env = start().await;
    let sb = &env.sandbox;
    let hour = Duration::from_secs(3600);
    let alice = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = sb.operator_claims("alice", TokenForm::V2, hour);
        f(&mut c);
        sb.mint(&c, &json!({}), Signing::Valid)
    };
    let now = chrono::Utc::now().timestamp();
    let good_claims = sb.operator_claims("alice", TokenForm::V2, hour);
    let kiosk = device_id(&env, "kiosk-phone");
    let cases = vec![
        Case {
            name: "unapproved operator",
            token: Some(token(&env, "bob")),
            device: kiosk.clone(),
            status: 403,
            code: "operator_not_approved",
        },
        Case {
            name: "device outside groups",
            token: Some(token(&env, "alice")),
            device: device_id(&env, "finance-laptop"),
            status: 403,
            code: "device_not_in_allowed_group",
        },
        Case {
            name: "unsupported platform",
            token: Some(token(&env, "alice")),
            device: device_id(&env, "lobby-ipad"),
            status: 403,
            code: "platform_not_allowed",
        },
        Case {
            name: "unregistered device",
            token: Some(token(&env, "alice")),
            device: device_id(&env, "unregistered-phone"),
            status: 403,
            code: "device_not_registered",
        },
        Case {
            name: "unknown device",
            token: Some(token(&env, "alice")),
            device: "0badc0de-0000-4000-8000-000000000000".into(),
            status: 404,
            code: "device_not_found",
        },
        Case {
            name: "missing token",
            token: None,
            device: kiosk.clone(),
            status: 401,
            code: "token_missing",
        },
        Case {
            name: "expired",
            token: Some(alice(&|c| {
                c["exp"] = json!(now - 600);
                c["nbf"] = json!(now - 4000);
                c["iat"] = json!(now - 4000);
            })),
            device: kiosk.clone(),
            status: 401,
            code: "token_expired",
        },
        Case {
            name: "not yet valid",
            token: Some(alice(&|c| {
                c["nbf"] = json!(now + 600);
            })),
            device: kiosk.clone(),
            status: 401,
            code: "token_not_yet_valid",
        },
        Case {
            name: "wrong audience",
            token: Some(alice(&|c| {
                c["aud"] = json!("https://graph.microsoft.com");
            })),
            device: kiosk.clone(),
            status: 401,
            code: "token_wrong_audience",
        },
        Case {
            name: "wrong issuer",
            token: Some(alice(&|c| {
                c["iss"] = json!(
                    "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
                );
            })),
            device: kiosk.clone(),
            status: 401,
            code: "token_wrong_issuer",
        },
        Case {
            name: "wrong tenant",
            token: Some(alice(&|c| {
                c["tid"] = json!("72f988bf-86f1-41af-91ab-2d7cd011db47");
            })),
            device: kiosk.clone(),
            status: 401,
            code: "token_wrong_tenant",
        },
        Case {
            name: "missing oid",
            token: Some(alice(&|c| {
                c.as_object_mut().unwrap().remove("oid");
            })),
            device: kiosk.clone(),
            status: 401,
            code: "token_missing_claim",
        },
        Case {
            name: "bad signature",
            token: Some(sb.mint(&good_claims, &json!({}), Signing::CorruptSignature)),
            device: kiosk.clone(),
            status: 401,
            code: "token_bad_signature",
        },
        Case {
            name: "unknown key",
            token: Some(sb.mint(&good_claims, &json!({}), Signing::UnknownKey)),
            device: kiosk.clone(),
            status: 401,
            code: "token_unknown_key",
        },
        Case {
            name: "alg none",
            token: Some(sb.mint(&good_claims, &json!({}), Signing::AlgNone)),
            device: kiosk.clone(),
            status: 401,
            code: "token_algorithm_not_allowed",
        },
        Case {
            name: "HS256 with the public key",
            token: Some(sb.mint(&good_claims, &json!({}), Signing::Hs256WithPublicKey)),
            device: kiosk.clone(),
            status: 401,
            code: "token_algorithm_not_allowed",
        },
        Case {
            name: "wrong typ",
            token: Some(sb.mint(&good_claims, &json!({"typ": "JWE"}), Signing::Valid)),
            device: kiosk.clone(),
            status: 401,
            code: "token_type_not_allowed",
        },
        Case {
            name: "missing scope",
            token: Some(alice(&|c| {
                c["scp"] = json!("User.Read");
            })),
            device: kiosk.clone(),
            status: 403,
            code: "token_scope_missing",
        },
        Case {
            name: "garbage token",
            token: Some("not.a.jwt".into()),
            device: kiosk.clone(),
            status: 401,
            code: "token_malformed",
        },
    ];
    for c in &cases {
        let url = format!(
            "{}/v1.0/deviceManagement/managedDevices/{}/recoverPasscode",
            env.gateway_url, c.device
        );
        let headers: Vec<(&str, String)> = c.token.iter().map(|t| bearer(t)).collect();
        let r = send("POST", &url, &headers, b"").await;
        assert_eq!(
            (r.status, r.code()),
            (c.status, c.code.to_string()),
            "case: {}",
            c.name
        );
        let body = r.json();
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            c.name
        );
        assert!(
            body["error"]["innerError"]["request-id"].is_string(),
            "{}",
            c.name
        );
        if let Some(t) = &c.token {
            assert!(
                !String::from_utf8_lossy(&r.body).contains(t.as_str()),
                "token echoed: {}",
                c.name
            );
        }
        if c.status == 401 {
            let challenge = r.header("www-authenticate").unwrap_or_default();
            assert!(
                challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
                "{}: {challenge}",
                c.name
            );
        }
    }
    assert!(
        env.sandbox.recover_passcode_calls().is_empty(),
        "no refusal reached Graph"
    );
    let decisions = decision_records(&env);
    assert_eq!(decisions.len(), cases.len(), "one audit record per request");
    for (rec, c) in decisions.iter().zip(&cases) {
        assert_eq!(rec["decision"], "deny", "{}", c.name);
        assert_eq!(rec["reason"], c.code, "{}", c.name);
    }
    verify_audit(&env);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_and_methods_are_refused_and_never_forwarded() {
    let env = start().await;
    let t = token(&env, "alice");
    let kiosk = device_id(&env, "kiosk-phone");
    let g = &env.gateway_url;
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "GET",
            format!("{g}/v1.0/deviceManagement/managedDevices/{kiosk}/recoverPasscode"),
            405,
            "method_not_allowed",
        ),
        (
            "DELETE",
            format!("{g}/v1.0/deviceManagement/managedDevices/{kiosk}/recoverPasscode"),
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            format!("{g}/v1.0/deviceManagement/managedDevices/{kiosk}/wipe"),
            404,
            "route_not_found",
        ),
        (
            "GET",
            format!("{g}/v1.0/deviceManagement/managedDevices/{kiosk}"),
            404,
            "route_not_found",
        ),
        (
            "POST",
            format!("{g}/v1.0/deviceManagement/managedDevices/{kiosk}/recoverPasscode/"),
            404,
            "route_not_found",
        ),
        (
            "POST",
            format!("{g}/deviceManagement/managedDevices/{kiosk}/recoverPasscode"),
            404,
            "route_not_found",
        ),
        (
            "POST",
            format!("{g}/v1.0/deviceManagement/managedDevices/{kiosk}%2FrecoverPasscode"),
            404,
            "route_not_found",
        ),
        (
            "POST",
            format!("{g}/v1.0/me/managedDevices/{kiosk}/recoverPasscode"),
            400,
            "me_route_not_supported",
        ),
        (
            "POST",
            format!("{g}/v1.0/deviceManagement/managedDevices/{kiosk}/recoverPasscode?$select=id"),
            400,
            "query_not_allowed",
        ),
        ("GET", format!("{g}/"), 404, "route_not_found"),
    ];
    for (m, url, status, code) in &cases {
        let r = send(m, url, &[bearer(&t)], b"").await;
        assert_eq!(
            (r.status, r.code()),
            (*status, code.to_string()),
            "{m} {url}"
        );
    }
    let r = send(
        "POST",
        &action_url(&env, "kiosk-phone"),
        &[bearer(&t)],
        b"{\"x\":1}",
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "request_body_not_allowed")
    );
    assert!(
        env.sandbox.graph_calls().is_empty(),
        "no unknown route or method caused any Graph call: {:?}",
        env.sandbox
            .graph_calls()
            .iter()
            .map(|c| c.path_and_query.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(decision_records(&env).len(), cases.len() + 1);
    verify_audit(&env);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_n_per_window_admits_exactly_n() {
    let cfg =
        passgate::dev::DEV_CONFIG.replace("per_device: \"3 per 10m\"", "per_device: \"2 per 10m\"");
    assert_ne!(
        cfg,
        passgate::dev::DEV_CONFIG,
        "the limit line was found and changed"
    );
    let env = start_with(Some(cfg)).await;
    let t = token(&env, "alice");
    let url = action_url(&env, "kiosk-phone");
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..5 {
        let r = send("POST", &url, &[bearer(&t)], b"").await;
        statuses.push(r.status);
        last = Some(r);
    }
    assert_eq!(statuses, vec![204, 204, 429, 429, 429]);
    let r = last.unwrap();
    assert_eq!(r.code(), "rate_limited");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=600).contains(&retry), "retry-after {retry}");
    assert_eq!(r.header("ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(r.header("ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 2);
    let reasons: Vec<String> = decision_records(&env)
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        reasons,
        vec![
            "allowed",
            "allowed",
            "rate_limited",
            "rate_limited",
            "rate_limited"
        ]
    );
    verify_audit(&env);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_only_operator_is_approved_by_app_role() {
    let env = start().await;
    let t = token(&env, "automation");
    let r = send("POST", &action_url(&env, "kiosk-phone"), &[bearer(&t)], b"").await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(decision_records(&env)[0]["policy"], "kiosk-automation");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_tokens_are_accepted_with_the_v1_issuer_and_app_id_uri() {
    let env = start().await;
    let sb = &env.sandbox;
    let c = sb.operator_claims("alice", TokenForm::V1, Duration::from_secs(600));
    let t = sb.mint(&c, &json!({}), Signing::Valid);
    let r = send("POST", &action_url(&env, "kiosk-phone"), &[bearer(&t)], b"").await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    env.stop().await;
}
