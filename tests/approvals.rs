//! Two-person approval end to end over real HTTP on loopback: the operator's call opens a
//! request, an approver approves it through the API (and through the CLI binary), the repeated
//! call is forwarded exactly once, every step is in the audit chain, and the webhook hears of
//! each new request. Self-approval and strangers are refused and recorded.

use crate::common::*;
use passgate::dev::{DevEnv, DEV_CONFIG};
use serde_json::Value;

const ALICE: &str = "72aca123-ad72-4c7b-84b5-6d536a354d63";
const BOB: &str = "6fa0d1b5-9855-4c8d-be2b-8a6660fbe126";

/// The dev config with approval on the helpdesk policy: alice and bob may approve (so alice's
/// own request tests self-approval), the webhook URL comes from `file:` `hook`.
fn approval_config(hook: &std::path::Path) -> String {
    DEV_CONFIG.replacen(
        "      global: \"200 per 1h\"\n",
        &format!(
            "      global: \"200 per 1h\"\n    approval:\n      approvers:\n        users: [\"{ALICE}\", \"{BOB}\"]\n        app_roles: [\"Passcode.Approve\"]\n      valid_for: 30m\n      pending_for: 1h\n      notify:\n        webhook: \"file:{}\"\n",
            hook.display()
        ),
        1,
    )
}

fn api(env: &DevEnv, tail: &str) -> String {
    format!("{}/passgate/v1/approvals{tail}", env.gateway_url)
}

#[tokio::test]
async fn a_second_person_approves_once_and_the_repeat_is_forwarded_once() {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("webhook-url");
    let (hook_url, notified) = webhook_receiver();
    std::fs::write(&hook, &hook_url).unwrap();
    let env = start_with(Some(approval_config(&hook))).await;
    let url = action_url(&env, "kiosk-phone");
    let alice = vec![bearer(&token(&env, "alice"))];
    let bob = vec![bearer(&token(&env, "bob"))];

    // 1. The call opens a request; a repeat names the same one; nothing reaches Graph.
    let first = send("POST", &url, &alice, b"").await;
    assert_eq!(
        (first.status, first.code().as_str()),
        (403, "approval_required"),
        "{:?}",
        first.json()
    );
    let id = first
        .header("passgate-approval-id")
        .expect("Passgate-Approval-Id");
    assert!(first.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&id));
    let again = send("POST", &url, &alice, b"").await;
    assert_eq!(
        (again.status, again.code().as_str()),
        (403, "approval_pending")
    );
    assert_eq!(
        again.header("passgate-approval-id").as_deref(),
        Some(id.as_str()),
        "no duplicate request"
    );
    no_calls(&env);
    let note = notified
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("webhook called");
    assert_eq!(note["event"], "approval_requested");
    assert_eq!(note["approval_id"], id.as_str());
    assert_eq!(note["requester"]["oid"], ALICE);
    assert!(
        !note.to_string().contains("eyJ"),
        "no token in the notification"
    );

    // 2. Who sees what: bob (approver) sees it pending and decidable; automation sees nothing.
    let list = send("GET", &api(&env, "?state=pending"), &bob, b"").await;
    assert_eq!(list.status, 200);
    let value = list.json()["value"].as_array().unwrap().clone();
    assert_eq!(value.len(), 1);
    assert_eq!(
        (value[0]["id"].as_str(), value[0]["can_decide"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    let stranger = vec![bearer(&token(&env, "automation"))];
    let hidden = send("GET", &api(&env, &format!("/{id}")), &stranger, b"").await;
    assert_eq!(
        (hidden.status, hidden.code().as_str()),
        (404, "approval_not_found")
    );
    let own = send("GET", &api(&env, &format!("/{id}")), &alice, b"").await;
    assert_eq!(
        (own.status, own.json()["can_decide"].as_bool()),
        (200, Some(false))
    );

    // 3. Refusals: approving one's own, a non-approver, a bad body, no token.
    let selfie = send("POST", &api(&env, &format!("/{id}/approve")), &alice, b"").await;
    assert_eq!(
        (selfie.status, selfie.code().as_str()),
        (403, "self_approval_not_allowed")
    );
    let nope = send(
        "POST",
        &api(&env, &format!("/{id}/approve")),
        &stranger,
        b"",
    )
    .await;
    assert_eq!(
        (nope.status, nope.code().as_str()),
        (403, "approver_not_allowed")
    );
    let bad = send(
        "POST",
        &api(&env, &format!("/{id}/approve")),
        &bob,
        b"{\"comment\": 5}",
    )
    .await;
    assert_eq!(
        (bad.status, bad.code().as_str()),
        (400, "approval_request_invalid")
    );
    let anon = send("POST", &api(&env, &format!("/{id}/approve")), &[], b"").await;
    assert_eq!(anon.status, 401);
    assert!(anon.header("www-authenticate").is_some());

    // 4. Bob approves with a comment; alice's repeat is forwarded, exactly once.
    let ok = send(
        "POST",
        &api(&env, &format!("/{id}/approve")),
        &bob,
        br#"{"comment":"INC0012345 verified by phone"}"#,
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.json());
    assert_eq!(ok.json()["state"], "approved");
    let late = send("POST", &api(&env, &format!("/{id}/deny")), &bob, b"").await;
    assert_eq!(
        (late.status, late.code().as_str()),
        (409, "approval_not_pending")
    );
    let served = send("POST", &url, &alice, b"").await;
    assert_eq!(served.status, 204, "{:?}", served.json());
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 1);
    // One approval, one use: the next call opens a new request.
    let next = send("POST", &url, &alice, b"").await;
    assert_eq!(
        (next.status, next.code().as_str()),
        (403, "approval_required")
    );
    let second = next.header("passgate-approval-id").unwrap();
    assert_ne!(second, id);
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 1);

    // 5. Denied → told once, then a new request.
    let denied = send("POST", &api(&env, &format!("/{second}/deny")), &bob, b"").await;
    assert_eq!(
        (denied.status, denied.json()["state"].as_str()),
        (200, Some("denied"))
    );
    let told = send("POST", &url, &alice, b"").await;
    assert_eq!(
        (told.status, told.code().as_str()),
        (403, "approval_denied")
    );
    let third = send("POST", &url, &alice, b"").await;
    assert_eq!(third.code(), "approval_required");
    assert_ne!(third.header("passgate-approval-id").unwrap(), second);

    // 6. The trail: every step, in one verified chain, with the decision naming its approval.
    verify_audit(&env);
    let records = audit_records(&env);
    let events: Vec<(String, String)> = records
        .iter()
        .filter(|r| r["kind"] == "approval")
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_string(),
                r["approval_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect = |e: &str, a: &str| (e.to_string(), a.to_string());
    assert_eq!(
        events,
        [
            expect("requested", &id),
            expect("refused", &id),
            expect("refused", &id),
            expect("approved", &id),
            expect("refused", &id),
            expect("consumed", &id),
            expect("requested", &second),
            expect("denied", &second),
            expect(
                "requested",
                third.header("passgate-approval-id").unwrap().as_str()
            ),
        ]
    );
    let approved = records.iter().find(|r| r["event"] == "approved").unwrap();
    assert_eq!(approved["actor"]["oid"], BOB);
    assert_eq!(approved["comment"], "INC0012345 verified by phone");
    let refused: Vec<&Value> = records.iter().filter(|r| r["event"] == "refused").collect();
    assert_eq!(refused[0]["reason"], "self_approval_not_allowed");
    assert_eq!(refused[1]["reason"], "approver_not_allowed");
    let allow = decision_records(&env)
        .into_iter()
        .find(|d| d["decision"] == "allow")
        .unwrap();
    assert_eq!(allow["approval_id"], id.as_str());
    let m = scrape(&env).await;
    assert_eq!(
        metric_value(
            &m,
            "passgate_approval_events_total",
            &["event=\"consumed\""]
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "passgate_approval_events_total",
            &["event=\"requested\""]
        ),
        3.0
    );
    assert!(
        metric_value(
            &m,
            "passgate_approval_notifications_total",
            &["result=\"success\""]
        ) >= 1.0
    );
    // Search finds the approver's steps by the approver, and the whole story by device.
    let set = audit_set(&env);
    let by_bob = passgate::audit::search(
        &set,
        &passgate::audit::SearchFilter {
            operator: Some(BOB.into()),
            ..Default::default()
        },
    )
    .unwrap();
    let bob_events: Vec<&str> = by_bob
        .hits
        .iter()
        .filter_map(|h| h.record["event"].as_str())
        .collect();
    assert_eq!(bob_events, ["approved", "refused", "denied"]);
    let consumed = passgate::audit::search(
        &set,
        &passgate::audit::SearchFilter {
            reason: Some("consumed".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(consumed.hits.len(), 1);
    // The webhook URL (a secret) appears in no audit line.
    assert!(!records
        .iter()
        .any(|r| r.to_string().contains("secret-token")));
}

#[tokio::test]
async fn approvers_use_the_cli_binary() {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("webhook-url");
    std::fs::write(&hook, "http://127.0.0.1:9/unused").unwrap();
    let env = start_with(Some(approval_config(&hook))).await;
    let url = action_url(&env, "kiosk-phone");
    let alice = vec![bearer(&token(&env, "alice"))];
    let opened = send("POST", &url, &alice, b"").await;
    let id = opened.header("passgate-approval-id").unwrap();
    let token_file = dir.path().join("bob.token");
    std::fs::write(&token_file, token(&env, "bob")).unwrap();
    let gateway = env.gateway_url.clone();
    let run = move |args: Vec<String>| {
        std::process::Command::new(BIN)
            .arg("approvals")
            .args(args)
            .output()
            .expect("passgate runs")
    };
    let conn = |cmd: &str| {
        vec![
            cmd.to_string(),
            "--gateway".into(),
            gateway.clone(),
            "--token-file".into(),
            token_file.display().to_string(),
        ]
    };
    let list = tokio::task::spawn_blocking({
        let args = conn("list");

        move || run(args)
    })
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        list.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(
        out.starts_with("ID") && out.contains(&id) && out.contains("alice@contoso.onmicrosoft.com"),
        "{out}"
    );
    let mut args = conn("approve");
    args.extend([id.clone(), "--comment".into(), "ok".into()]);
    let approve = tokio::task::spawn_blocking(move || run(args))
        .await
        .unwrap();
    assert!(
        approve.status.success(),
        "{}",
        String::from_utf8_lossy(&approve.stderr)
    );
    let mut args = conn("deny");
    args.push(id.clone());
    let again = tokio::task::spawn_blocking(move || run(args))
        .await
        .unwrap();
    assert_eq!(again.status.code(), Some(1), "a refusal exits 1");
    assert!(String::from_utf8_lossy(&again.stderr).contains("approval_not_pending"));
    let served = send("POST", &url, &alice, b"").await;
    assert_eq!(served.status, 204);
}

#[tokio::test]
async fn unanswered_and_unused_approvals_expire_and_say_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("webhook-url");
    std::fs::write(&hook, "http://127.0.0.1:9/unused").unwrap();
    let env = start_with(Some(approval_config(&hook))).await;
    let url = action_url(&env, "kiosk-phone");
    let alice = vec![bearer(&token(&env, "alice"))];
    let bob = vec![bearer(&token(&env, "bob"))];
    let first = send("POST", &url, &alice, b"").await;
    let id = first.header("passgate-approval-id").unwrap();
    // pending_for is 1h: an hour later nobody can approve it, and alice is told once.
    env.gateway().approvals.advance_clock(3600);
    let late = send("POST", &api(&env, &format!("/{id}/approve")), &bob, b"").await;
    assert_eq!(
        (late.status, late.code().as_str()),
        (409, "approval_not_pending")
    );
    let expired = send("POST", &url, &alice, b"").await;
    assert_eq!(
        (expired.status, expired.code().as_str()),
        (403, "approval_expired")
    );
    assert_eq!(expired.header("passgate-approval-id"), Some(id.clone()));
    let again = send("POST", &url, &alice, b"").await;
    assert_eq!(again.code(), "approval_required");
    let second = again.header("passgate-approval-id").unwrap();
    // Approved but not used within valid_for (30m): expired as well.
    let ok = send("POST", &api(&env, &format!("/{second}/approve")), &bob, b"").await;
    assert_eq!(ok.status, 200);
    env.gateway().approvals.advance_clock(30 * 60);
    let unused = send("POST", &url, &alice, b"").await;
    assert_eq!(unused.code(), "approval_expired");
    no_calls(&env);
    let events: Vec<String> = audit_records(&env)
        .iter()
        .filter(|r| r["kind"] == "approval")
        .map(|r| {
            format!(
                "{} {}",
                r["event"].as_str().unwrap(),
                r["state"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            "requested pending",
            "refused expired",
            "expired expired",
            "requested pending",
            "approved approved",
            "expired expired"
        ]
    );
}

#[tokio::test]
async fn the_sandbox_round_trip_works_as_passgate_dev_prints_it() {
    let env = start().await;
    let url = action_url(&env, "exec-phone");
    let alice = vec![bearer(&token(&env, "alice"))];
    let carol = vec![bearer(&token(&env, "carol"))];
    let opened = send("POST", &url, &alice, b"").await;
    assert_eq!(opened.code(), "approval_required", "{:?}", opened.json());
    let id = opened.header("passgate-approval-id").unwrap();
    let pending = send("GET", &api(&env, "?state=pending"), &carol, b"").await;
    assert_eq!(pending.json()["value"][0]["id"], id.as_str());
    assert_eq!(pending.json()["value"][0]["platform"], "Windows Phone");
    let ok = send(
        "POST",
        &api(&env, &format!("/{id}/approve")),
        &carol,
        br#"{"comment":"verified by phone"}"#,
    )
    .await;
    assert_eq!(ok.status, 200, "{:?}", ok.json());
    assert_eq!(send("POST", &url, &alice, b"").await.status, 204);
    // The kiosk phone's policy asks for no approval: unchanged.
    assert_eq!(
        send("POST", &action_url(&env, "kiosk-phone"), &alice, b"")
            .await
            .status,
        204
    );
    verify_audit(&env);
    let banner = passgate::dev::banner(&env, std::path::Path::new("/tmp/tokens"), None);
    assert!(
        banner.contains("/passgate/v1/approvals") && banner.contains("carol.token"),
        "{banner}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_approvers_at_once_and_one_decision_stands() {
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("webhook-url");
    std::fs::write(&hook, "http://127.0.0.1:9/unused").unwrap();
    let env = start_with(Some(approval_config(&hook))).await;
    let url = action_url(&env, "kiosk-phone");
    let alice = vec![bearer(&token(&env, "alice"))];
    // Three rounds: the policy admits three per device in ten minutes.
    for round in 0..3 {
        let opened = send("POST", &url, &alice, b"").await;
        assert_eq!(opened.code(), "approval_required", "round {round}");
        let id = opened.header("passgate-approval-id").unwrap();
        let (approve, deny) = (
            api(&env, &format!("/{id}/approve")),
            api(&env, &format!("/{id}/deny")),
        );
        let (bob, carol) = (
            [bearer(&token(&env, "bob"))],
            [bearer(&token(&env, "carol"))],
        );
        let (b, c) = tokio::join!(
            send("POST", &approve, &bob, b""),
            send("POST", &deny, &carol, b""),
        );
        let mut statuses = [b.status, c.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 409],
            "round {round}: exactly one decision stands"
        );
        let loser = if b.status == 409 { &b } else { &c };
        assert_eq!(loser.code(), "approval_not_pending");
        let next = send("POST", &url, &alice, b"").await;
        if b.status == 200 {
            assert_eq!(next.status, 204, "round {round}: approved");
        } else {
            assert_eq!(next.code(), "approval_denied", "round {round}: denied");
        }
    }
    verify_audit(&env);
}

/// `mode: report`: a trial policy is evaluated and recorded on every request but never admits.
#[tokio::test]
async fn a_report_mode_policy_is_recorded_and_never_admits() {
    let config = DEV_CONFIG.replacen(
        "\npolicies:\n",
        &format!(
            "\npolicies:\n  - name: trial-bob-kiosks\n    mode: report\n    operators:\n      users: [\"{BOB}\"]\n    devices:\n      groups: [\"e6867e18-cfe7-4693-bec9-262eb70c4b84\"]\n      platforms: [\"Windows Phone\"]\n"
        ),
        1,
    );
    let env = start_with(Some(config)).await;
    let url = action_url(&env, "kiosk-phone");
    let bob = send("POST", &url, &[bearer(&token(&env, "bob"))], b"").await;
    assert_eq!(
        (bob.status, bob.code().as_str()),
        (403, "operator_not_approved")
    );
    no_calls(&env);
    let alice = send("POST", &url, &[bearer(&token(&env, "alice"))], b"").await;
    assert_eq!(alice.status, 204);
    let d = decision_records(&env);
    assert_eq!(
        d[0]["report"],
        serde_json::json!([{"policy": "trial-bob-kiosks", "decision": "allow", "reason": "allowed"}]),
        "bob: the trial policy would have admitted him"
    );
    assert_eq!(d[0]["decision"], "deny");
    assert_eq!(
        d[1]["report"],
        serde_json::json!([{"policy": "trial-bob-kiosks", "decision": "deny", "reason": "operator_not_approved"}])
    );
    assert_eq!(
        d[1]["policy"], "helpdesk-kiosk-phones",
        "the enforced policy admitted alice"
    );
    let m = scrape(&env).await;
    assert_eq!(
        metric_value(
            &m,
            "passgate_report_policy_decisions_total",
            &["policy=\"trial-bob-kiosks\"", "decision=\"allow\""]
        ),
        1.0
    );
    verify_audit(&env);
}
