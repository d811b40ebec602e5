//! Limits are exact under concurrency: N simultaneous requests against a limit of k admit exactly
//! k, forward exactly k, and leave exactly N decision records in a chain that verifies.

use crate::common::*;

/// Sends every (url, token) at once from its own task and returns the statuses and codes.
async fn burst(calls: Vec<(String, String)>) -> Vec<(u16, String)> {
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|(url, tok)| {
            tokio::spawn(async move {
                let r = send("POST", &url, &[bearer(&tok)], b"").await;
                (r.status, r.code())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

fn count(results: &[(u16, String)], status: u16, code: &str) -> usize {
    results
        .iter()
        .filter(|(s, c)| *s == status && c == code)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_calls_for_one_device_under_one_per_device_admit_exactly_one() {
    let cfg = passgate::dev::DEV_CONFIG
        .replace("per_device: \"3 per 10m\"", "per_device: \"1 per 10m\"")
        .replace(
            "per_operator: \"20 per 1h\"",
            "per_operator: \"1000 per 1h\"",
        )
        .replace("global: \"200 per 1h\"", "global: \"1000 per 1h\"");
    let env = start_with(Some(cfg)).await;
    let url = action_url(&env, "kiosk-phone");
    let tok = token(&env, "alice");
    let results = burst((0..200).map(|_| (url.clone(), tok.clone())).collect()).await;

    assert_eq!(count(&results, 204, ""), 1, "exactly one admitted");
    assert_eq!(count(&results, 429, "rate_limited"), 199, "{results:?}");
    assert_eq!(
        env.sandbox.recover_passcode_calls().len(),
        1,
        "exactly one recoverPasscode reached Graph"
    );
    let decisions = decision_records(&env);
    assert_eq!(decisions.len(), 200);
    assert_eq!(
        decisions
            .iter()
            .filter(|d| d["decision"] == "allow")
            .count(),
        1
    );
    assert_eq!(
        decisions
            .iter()
            .filter(|d| d["reason"] == "rate_limited")
            .count(),
        199
    );
    let summary = verify_audit(&env);
    assert_eq!(summary, 201, "200 decisions + 1 outcome");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_operator_limit_is_exact_across_route_forms_and_versions() {
    let cfg = passgate::dev::DEV_CONFIG
        .replace("      per_device: \"3 per 10m\"\n", "")
        .replace("per_operator: \"20 per 1h\"", "per_operator: \"5 per 1h\"")
        .replace("global: \"200 per 1h\"", "global: \"1000 per 1h\"");
    assert!(!cfg.contains("per_device"), "per_device removed");
    let env = start_with(Some(cfg)).await;
    let dev = env.sandbox.tenant().device("kiosk-phone").unwrap().clone();
    let id = &dev.managed_device_id;
    let mut paths = Vec::new();
    for v in ["v1.0", "beta"] {
        paths.push(format!(
            "/{v}/deviceManagement/managedDevices/{id}/recoverPasscode"
        ));
        paths.push(format!(
            "/{v}/users/{}/managedDevices/{id}/recoverPasscode",
            dev.user_id
        ));
        paths.push(format!(
            "/{v}/deviceManagement/detectedApps/0a1b2c3d/managedDevices/{id}/recoverPasscode"
        ));
    }
    let tok = token(&env, "alice");
    let calls = (0..100)
        .map(|i| {
            (
                format!("{}{}", env.gateway_url, paths[i % paths.len()]),
                tok.clone(),
            )
        })
        .collect();
    let results = burst(calls).await;

    assert_eq!(count(&results, 204, ""), 5, "{results:?}");
    assert_eq!(count(&results, 429, "rate_limited"), 95);
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 5);
    let decisions = decision_records(&env);
    assert_eq!(decisions.len(), 100);
    assert_eq!(
        decisions
            .iter()
            .filter(|d| d["decision"] == "allow")
            .count(),
        5
    );
    verify_audit(&env);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_policies_under_one_burst_each_admit_exactly_their_own_limit() {
    // alice is admitted by helpdesk-kiosk-phones (per_device 2), the automation app by
    // kiosk-automation (per_operator 5): limits are namespaced per policy and both are exact.
    let cfg = passgate::dev::DEV_CONFIG
        .replace("per_device: \"3 per 10m\"", "per_device: \"2 per 10m\"")
        .replace(
            "per_operator: \"20 per 1h\"",
            "per_operator: \"1000 per 1h\"",
        )
        .replace("global: \"200 per 1h\"", "global: \"1000 per 1h\"");
    let env = start_with(Some(cfg)).await;
    let url = action_url(&env, "kiosk-phone");
    let alice = token(&env, "alice");
    let automation = token(&env, "automation");
    let calls = (0..100)
        .map(|i| {
            let tok = if i % 2 == 0 { &alice } else { &automation };
            (url.clone(), tok.clone())
        })
        .collect();
    let results = burst(calls).await;

    assert_eq!(count(&results, 204, ""), 7, "{results:?}");
    assert_eq!(count(&results, 429, "rate_limited"), 93);
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 7);
    let decisions = decision_records(&env);
    assert_eq!(decisions.len(), 100);
    let allowed = |policy: &str| {
        decisions
            .iter()
            .filter(|d| d["decision"] == "allow" && d["policy"] == policy)
            .count()
    };
    assert_eq!(allowed("helpdesk-kiosk-phones"), 2);
    assert_eq!(allowed("kiosk-automation"), 5);
    verify_audit(&env);
    env.stop().await;
}
