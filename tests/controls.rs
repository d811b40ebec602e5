//! Privileged-access controls end to end over real HTTP on loopback: justification (required,
//! checked, recorded, never forwarded), separation of duty, break-glass (admitted, flagged,
//! counted; refused once expired) and caps shared across policies.

use crate::common::*;
use passgate::sandbox::{Signing, TokenForm};
use serde_json::json;

const HELPDESK: &str = "f3d0263f-adae-4f31-84f1-5b45713ed0b7";
const KIOSKS: &str = "e6867e18-cfe7-4693-bec9-262eb70c4b84";
const FINANCE: &str = "67389342-3cee-4f7f-aa31-3945cebaa52c";
const HEADER: &str = "Passgate-Justification";

/// The dev config with its `policies:` replaced by `policies` (YAML list items).
fn with_policies(policies: &str) -> String {
    let (head, _) = passgate::dev::DEV_CONFIG
        .split_once("\npolicies:\n")
        .expect("the dev config has a policies section");
    format!("{head}\npolicies:\n{policies}")
}

/// A user token like `base`'s, but for another object id (e.g. a device's primary user).
fn token_for_oid(env: &passgate::dev::DevEnv, base: &str, oid: &str) -> String {
    let mut c = env.sandbox.operator_claims(base, TokenForm::V2, HOUR);
    c["oid"] = json!(oid);
    env.sandbox.mint(&c, &json!({}), Signing::Valid)
}

fn rfc3339_in(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Sends a POST with raw header values (bytes that are not UTF-8 included).
async fn post_raw(url: &str, headers: Vec<(&'static str, http::HeaderValue)>) -> Resp {
    use http_body_util::BodyExt;
    let mut b = http::Request::builder().method("POST").uri(url);
    for (k, v) in headers {
        b = b.header(k, v);
    }
    let req = b.body(http_body_util::Full::default()).expect("request");
    let resp = client().request(req).await.expect("gateway answered");
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn justification_is_required_checked_recorded_and_never_forwarded() {
    let env = start_with(Some(unthrottled(&with_policies(&format!(
        r#"  - name: helpdesk
    operators:
      groups: ["{HELPDESK}"]
    devices:
      groups: ["{KIOSKS}"]
      platforms: ["Windows Phone"]
    justification:
      required: true
      pattern: "(INC|CHG)[0-9]{{7}}"
    limits:
      per_operator: "20 per 1h"
"#
    )))))
    .await;
    let alice = token(&env, "alice");
    let url = action_url(&env, "kiosk-phone");

    // Missing: 400, naming the header and the pattern.
    let r = send("POST", &url, &[bearer(&alice)], b"").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "justification_required")
    );
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains(HEADER) && msg.contains("(INC|CHG)[0-9]{7}"),
        "{msg}"
    );
    // Not matching (the value is not echoed back).
    let r = send(
        "POST",
        &url,
        &[bearer(&alice), (HEADER, "ticket 42, honest".into())],
        b"",
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "justification_invalid")
    );
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains(HEADER) && msg.contains("(INC|CHG)[0-9]{7}") && !msg.contains("honest"),
        "{msg}"
    );
    // Matching only in part: the pattern is matched against the whole value.
    let r = send(
        "POST",
        &url,
        &[bearer(&alice), (HEADER, "INC0012345 and more".into())],
        b"",
    )
    .await;
    assert_eq!(r.code(), "justification_invalid");
    // Not UTF-8, or sent twice: invalid, whatever the pattern.
    let r = post_raw(
        &url,
        vec![
            (
                "authorization",
                http::HeaderValue::from_str(&format!("Bearer {alice}")).unwrap(),
            ),
            (
                HEADER,
                http::HeaderValue::from_bytes(b"INC00\xff12345").unwrap(),
            ),
        ],
    )
    .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "justification_invalid")
    );
    let r = send(
        "POST",
        &url,
        &[
            bearer(&alice),
            (HEADER, "INC0012345".into()),
            (HEADER, "CHG0000001".into()),
        ],
        b"",
    )
    .await;
    assert_eq!(r.code(), "justification_invalid");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("more than once"));
    no_calls(&env);

    // Valid (header names are case-insensitive): forwarded, without the header.
    let r = send(
        "POST",
        &url,
        &[
            bearer(&alice),
            ("passgate-JUSTIFICATION", " INC0012345 ".into()),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let calls = env.sandbox.recover_passcode_calls();
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].header(HEADER).is_none(),
        "the header reached Graph"
    );
    for (name, value) in &calls[0].headers {
        assert!(
            !value.contains("INC0012345"),
            "the justification reached Graph in header {name}"
        );
    }
    // No other call to Graph (facts reads) carried it either.
    for call in env.sandbox.graph_calls() {
        assert!(call.header(HEADER).is_none(), "{call:?}");
    }

    // Recorded: the statement on the allow, what was sent on the refusals that could keep it.
    let d = decision_records(&env);
    let got: Vec<(String, String, serde_json::Value, bool)> = d
        .iter()
        .map(|r| {
            (
                r["decision"].as_str().unwrap().to_string(),
                r["reason"].as_str().unwrap().to_string(),
                r["justification"].clone(),
                r["break_glass"].as_bool().unwrap(),
            )
        })
        .collect();
    let s = |v: &str| v.to_string();
    assert_eq!(
        got,
        [
            (s("deny"), s("justification_required"), json!(null), false),
            (
                s("deny"),
                s("justification_invalid"),
                json!("ticket 42, honest"),
                false
            ),
            (
                s("deny"),
                s("justification_invalid"),
                json!("INC0012345 and more"),
                false
            ),
            (s("deny"), s("justification_invalid"), json!(null), false),
            (s("deny"), s("justification_invalid"), json!(null), false),
            (s("allow"), s("allowed"), json!("INC0012345"), false),
        ]
    );
    assert_eq!(d[0]["policy"], "helpdesk");
    assert_eq!(d[0]["status"], 400);
    verify_audit(&env);

    // `audit search` shows it: the CSV's last column, and the table's.
    let files = audit_set(&env);
    let result =
        passgate::audit::search(&files, &passgate::audit::SearchFilter::default()).expect("search");
    let mut csv = Vec::new();
    passgate::audit::search::render(&result, passgate::audit::search::Format::Csv, &mut csv)
        .unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let rows: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(rows[0].ends_with(",count,justification"), "{}", rows[0]);
    assert!(rows[2].ends_with(",1,\"ticket 42, honest\""), "{}", rows[2]);
    assert!(rows[6].ends_with(",1,INC0012345"), "{}", rows[6]);
    let mut table = Vec::new();
    passgate::audit::search::render(&result, passgate::audit::search::Format::Table, &mut table)
        .unwrap();
    let table = String::from_utf8(table).unwrap();
    assert!(table.lines().next().unwrap().contains("JUSTIFICATION"));
    assert!(
        table.lines().last().unwrap().ends_with("INC0012345"),
        "{table}"
    );
    let only = passgate::audit::SearchFilter {
        justification: Some("inc0012345".into()),
        ..Default::default()
    };
    let hits = passgate::audit::search(&files, &only).unwrap().hits;
    assert_eq!(hits.len(), 1, "exact, case-insensitive");
    assert_eq!(hits[0].record["decision"], "allow");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_device_is_refused_unless_the_policy_allows_it() {
    let env = start_with(Some(with_policies(&format!(
        r#"  - name: helpdesk
    operators:
      groups: ["{HELPDESK}"]
    devices:
      groups: ["{KIOSKS}"]
      platforms: ["Windows Phone"]
  - name: self-service
    operators:
      users: ["{dave}"]
    devices:
      any_device: true
      platforms: ["Windows Phone"]
    allow_own_device: true
    limits:
      per_operator: "1 per 1d"
"#,
        dave = "e10498b7-a97d-47b1-9844-3ea27cd823b0"
    ))))
    .await;
    let tenant = env.sandbox.tenant().clone();
    // A helpdesk member who is also the kiosk phone's primary user.
    let kiosk_user = &tenant.device("kiosk-phone").unwrap().user_id;
    let t = token_for_oid(&env, "alice", kiosk_user);
    let r = send("POST", &action_url(&env, "kiosk-phone"), &[bearer(&t)], b"").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "own_device_not_allowed")
    );
    no_calls(&env);
    // Alice, who is not, is served as usual.
    let r = send(
        "POST",
        &action_url(&env, "kiosk-phone"),
        &[bearer(&token(&env, "alice"))],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);

    // Dave, on his own phone, under the policy that writes `allow_own_device: true`.
    let dave_phone = tenant.device("unregistered-phone").unwrap();
    let t = token_for_oid(&env, "bob", &dave_phone.user_id);
    let r = send(
        "POST",
        &action_url(&env, "unregistered-phone"),
        &[bearer(&t)],
        b"",
    )
    .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 2);

    let d = decision_records(&env);
    assert_eq!(d.len(), 3);
    assert_eq!(
        (&d[0]["reason"], &d[0]["policy"], &d[0]["status"]),
        (
            &json!("own_device_not_allowed"),
            &json!("helpdesk"),
            &json!(403)
        )
    );
    assert_eq!(d[0]["operator"]["oid"], json!(kiosk_user));
    assert_eq!(d[0]["device"]["user_id"], json!(kiosk_user));
    assert_eq!(
        (&d[2]["decision"], &d[2]["policy"]),
        (&json!("allow"), &json!("self-service"))
    );
    env.stop().await;
}

/// Alice's normal policy covers only finance devices, so the kiosk phone needs the emergency one.
fn emergency_config(active_until: &str) -> String {
    with_policies(&format!(
        r#"  - name: helpdesk-finance
    operators:
      groups: ["{HELPDESK}"]
    devices:
      groups: ["{FINANCE}"]
  - name: emergency
    operators:
      groups: ["{HELPDESK}"]
    devices:
      any_device: true
      platforms: ["Windows Phone"]
    justification:
      required: true
      pattern: "INC[0-9]{{7}}"
    limits:
      per_operator: "2 per 1d"
    break_glass: true
    active_until: "{active_until}"
"#
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn break_glass_use_is_admitted_flagged_and_counted() {
    // The top-level webhook hears of every use.
    let dir = tempfile::tempdir().unwrap();
    let (hook_url, heard) = webhook_receiver();
    std::fs::write(dir.path().join("hook"), &hook_url).unwrap();
    let config = format!(
        "{}notify:\n  webhook: \"file:{}\"\n",
        emergency_config(&rfc3339_in(3600)),
        dir.path().join("hook").display()
    );
    let env = start_with(Some(config)).await;
    let series = "policy=\"emergency\"";
    // Exported at 0 before the first use, so the alert's increase() sees that use.
    let before = scrape(&env).await;
    assert!(
        before.contains("passgate_break_glass_total{policy=\"emergency\"} 0"),
        "{before}"
    );
    let alice = token(&env, "alice");
    let url = action_url(&env, "kiosk-phone");
    // Without a justification the emergency policy refuses, and says it is break-glass.
    let r = send("POST", &url, &[bearer(&alice)], b"").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "justification_required")
    );
    let r = send(
        "POST",
        &url,
        &[bearer(&alice), (HEADER, "INC7654321".into())],
        b"",
    )
    .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 1);
    assert_eq!(
        metric(&env, "passgate_break_glass_total", &[series]).await,
        1.0
    );
    let note = heard
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the break-glass use reaches the webhook");
    assert_eq!(
        (&note["event"], &note["policy"], &note["justification"]),
        (
            &json!("break_glass_used"),
            &json!("emergency"),
            &json!("INC7654321")
        )
    );
    assert!(
        !note.to_string().contains(&alice),
        "no token in the notification"
    );

    let d = decision_records(&env);
    assert_eq!(
        note["request_id"], d[1]["request_id"],
        "the webhook names the request"
    );
    assert_eq!(
        (&d[0]["reason"], &d[0]["policy"], &d[0]["break_glass"]),
        (
            &json!("justification_required"),
            &json!("emergency"),
            &json!(true)
        )
    );
    assert_eq!(
        (
            &d[1]["decision"],
            &d[1]["policy"],
            &d[1]["break_glass"],
            &d[1]["justification"]
        ),
        (
            &json!("allow"),
            &json!("emergency"),
            &json!(true),
            &json!("INC7654321")
        )
    );
    // A device the normal policy covers is not a break-glass use.
    let r = send(
        "POST",
        &action_url(&env, "finance-laptop"),
        &[bearer(&alice)],
        b"",
    )
    .await;
    assert_ne!(r.code(), "justification_required");
    let d = decision_records(&env);
    assert_eq!(
        (&d[2]["policy"], &d[2]["break_glass"]),
        (&json!("helpdesk-finance"), &json!(false))
    );
    assert_eq!(
        metric(&env, "passgate_break_glass_total", &[series]).await,
        1.0
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_break_glass_policy_admits_nothing() {
    let until = rfc3339_in(-60);
    let env = start_with(Some(emergency_config(&until))).await;
    let r = send(
        "POST",
        &action_url(&env, "kiosk-phone"),
        &[bearer(&token(&env, "alice")), (HEADER, "INC7654321".into())],
        b"",
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (403, "break_glass_expired"));
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("emergency") && msg.contains(&until), "{msg}");
    no_calls(&env);
    let d = decision_records(&env);
    assert_eq!(
        (
            &d[0]["reason"],
            &d[0]["break_glass"],
            &d[0]["justification"]
        ),
        (
            &json!("break_glass_expired"),
            &json!(true),
            &json!("INC7654321")
        )
    );
    assert_eq!(
        metric(
            &env,
            "passgate_break_glass_total",
            &["policy=\"emergency\""]
        )
        .await,
        0.0
    );
    // `passgate check` warns about it.
    let warned: Vec<String> = passgate::config::warnings(&env.settings)
        .into_iter()
        .map(|w| w.key)
        .collect();
    assert!(
        warned.contains(&"policies.emergency.active_until".to_string()),
        "{warned:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_are_one_budget_whichever_policy_admits() {
    // The dev config's two policies (helpdesk people, kiosk automation) both cover the kiosk
    // phone; a top-level cap of one per device per hour binds them together.
    let env = start_with(Some(format!(
        "{}\nlimits:\n  per_device: \"1 per 1h\"\n",
        passgate::dev::DEV_CONFIG
    )))
    .await;
    let url = action_url(&env, "kiosk-phone");
    let r = send("POST", &url, &[bearer(&token(&env, "alice"))], b"").await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("ratelimit-policy").as_deref(), Some("1;w=3600"));
    let r = send("POST", &url, &[bearer(&token(&env, "automation"))], b"").await;
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limited"));
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("across all policies"), "{msg}");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&retry), "{retry}");
    assert_eq!(r.header("ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 1);

    let d = decision_records(&env);
    assert_eq!(
        (&d[0]["policy"], &d[1]["policy"], &d[1]["reason"]),
        (
            &json!("helpdesk-kiosk-phones"),
            &json!("kiosk-automation"),
            &json!("rate_limited")
        )
    );
    let text = scrape(&env).await;
    assert_eq!(
        metric_value(
            &text,
            "passgate_rate_limited_total",
            &["policy=\"(caps)\"", "scope=\"per_device\""]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            "passgate_rate_limited_total",
            &["policy=\"kiosk-automation\""]
        ),
        0.0
    );
    env.stop().await;
}
