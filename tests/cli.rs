//! The binary's own surface: `check` on shipped and broken configs, and `dev --state-file`.

use crate::common::{self, ChildGuard, BIN};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn check_accepts_every_shipped_config() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        seen += 1;
        // Shipped configs are examples to copy: they pass even the strict check (no WARNING).
        let out = Command::new(BIN)
            .arg("check")
            .arg("--strict")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{} rejected: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(
            summary.contains("polic"),
            "summary names the policies: {summary}"
        );
    }
    assert!(
        seen >= 2,
        "dev.yaml and production.example.yaml are shipped"
    );
}

#[test]
fn check_rejects_a_broken_file_with_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // A misspelt key inside a policy must be an error, never ignored.
        ("typo.yaml", passgate::dev::DEV_CONFIG.replace("    operators:\n      groups:", "    operators:\n      gropus:"), "gropus"),
        // Implicit "any device" is refused.
        ("nodevices.yaml", passgate::dev::DEV_CONFIG.replacen("      groups: [\"e6867e18-cfe7-4693-bec9-262eb70c4b84\"]     # Kiosk Devices (nested groups count)\n", "", 1), "any_device"),
        // Broken YAML.
        ("syntax.yaml", "server:\n  listen: [unclosed\n".to_string(), ""),
    ];
    for (name, text, needle) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(1), "{name} must be rejected");
        let err = String::from_utf8_lossy(&out.stderr);
        let prefix = format!("{}:", path.display());
        assert!(err.starts_with(&prefix), "{name}: {err}");
        let rest = &err[prefix.len()..];
        let mut parts = rest.splitn(3, ':');
        let line: usize = parts
            .next()
            .unwrap_or("")
            .parse()
            .unwrap_or_else(|_| panic!("{name}: no line in {err}"));
        let col: usize = parts
            .next()
            .unwrap_or("")
            .parse()
            .unwrap_or_else(|_| panic!("{name}: no column in {err}"));
        assert!(line >= 1 && col >= 1, "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_writes_a_state_file_whose_tokens_work_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let state_path = dir.path().join("state.json");
    let mut child = ChildGuard(
        Command::new(BIN)
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--console-listen",
                "127.0.0.1:0",
                "--state-file",
            ])
            .arg(&state_path)
            .arg("--audit-log")
            .arg(dir.path().join("audit.jsonl"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dev starts"),
    );
    // The banner is printed after the state file is written: read until it appears.
    let stdout = child.stdout.take().unwrap();
    let mut banner = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("banner line");
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("Ctrl-C") {
            break;
        }
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).expect("state file")).unwrap();
    for key in [
        "gateway",
        "graph",
        "authority",
        "tenant",
        "audit_log",
        "operators",
        "devices",
    ] {
        assert!(!state[key].is_null(), "state has {key}");
    }
    assert!(state.get("admin").is_some());
    let gateway = state["gateway"].as_str().unwrap();
    assert!(banner.contains(gateway), "banner shows the gateway URL");
    let console = state["console"].as_str().expect("the console runs");
    assert!(banner.contains(console), "banner shows the console URL");
    assert!(banner.contains("curl"), "banner has ready-to-paste calls");
    let alice = state["operators"]["alice"]["token"].as_str().unwrap();
    assert!(!banner.contains(alice), "the banner never prints a token");
    let device = state["devices"]["kiosk-phone"]["managed_device_id"]
        .as_str()
        .unwrap();
    let url = format!("{gateway}/v1.0/deviceManagement/managedDevices/{device}/recoverPasscode");
    let ok = common::send("POST", &url, &[common::bearer(alice)], b"").await;
    let bob = state["operators"]["bob"]["token"].as_str().unwrap();
    let denied = common::send("POST", &url, &[common::bearer(bob)], b"").await;
    drop(child);
    assert_eq!(ok.status, 204);
    assert_eq!(
        (denied.status, denied.code().as_str()),
        (403, "operator_not_approved")
    );
    // Tokens are valid for at least 12 hours.
    let payload = alice.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let life = claims["exp"].as_i64().unwrap() - chrono::Utc::now().timestamp();
    assert!(life >= 12 * 3600, "token lifetime {life}s");
    // The sample tenant has what the docs promise.
    let devices = state["devices"].as_object().unwrap();
    for d in [
        "kiosk-phone",
        "finance-laptop",
        "lobby-ipad",
        "unregistered-phone",
    ] {
        assert!(devices.contains_key(d), "{d}");
    }
}

/// Finding 7: `passgate dev` writes its token and state files 0600 and never through a link:
/// a symlink planted where the state file goes is refused (the dev run fails) and its target is
/// untouched; a planted token-file link is skipped; the token files it does write are 0600.
#[test]
fn dev_files_are_private_and_planted_links_are_not_followed() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "keep").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let state_link = dir.path().join("state.json");
    symlink(&victim, &state_link).unwrap();
    symlink(&victim, dir.path().join("alice.token")).unwrap();
    let mut child = ChildGuard(
        Command::new(BIN)
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--console-listen",
                "127.0.0.1:0",
                "--state-file",
            ])
            .arg(&state_link)
            .arg("--audit-log")
            .arg(dir.path().join("audit.jsonl"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dev starts"),
    );
    // It must give up on its own: poll for its exit with a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "keep",
        "link followed"
    );
    let mode = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "the link target's mode was changed");
    let bob = std::fs::metadata(dir.path().join("bob.token")).expect("bob.token written");
    assert_eq!(bob.permissions().mode() & 0o777, 0o600, "bob.token mode");
    let status = status.expect("dev exits when its state file cannot be written safely");
    assert!(!status.success());
}

/// Finding 5: `check --strict` fails on any WARNING (for CI); plain `check` prints it and passes.
#[test]
fn check_strict_fails_on_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/production.example.yaml"
    ))
    .unwrap();
    assert!(
        !text.contains("\nadmin:"),
        "the example leaves admin at its loopback default"
    );
    let risky = format!("{text}\nadmin:\n  listen: \"0.0.0.0:9090\"\n");
    let path = dir.path().join("risky.yaml");
    std::fs::write(&path, risky).unwrap();
    let run = |strict: bool| {
        let mut c = Command::new(BIN);
        c.arg("check");
        if strict {
            c.arg("--strict");
        }
        c.arg("--config").arg(&path).output().expect("runs")
    };
    let plain = run(false);
    assert!(
        plain.status.success(),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let out = String::from_utf8_lossy(&plain.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARNING") && l.contains("admin.listen")),
        "{out}"
    );
    let strict = run(true);
    assert!(!strict.status.success(), "--strict must fail on a warning");
}

/// `passgate policy test`: the shipped cases pass against the sandbox config; a wrong
/// expectation fails with exit 1 and says what was expected and got; JUnit output for CI.
#[test]
fn policy_test_runs_cases_and_fails_on_a_wrong_expectation() {
    let root = env!("CARGO_MANIFEST_DIR");
    let config = format!("{root}/config/dev.yaml");
    let cases = format!("{root}/config/policy-tests/sandbox.yaml");
    let out = std::process::Command::new(BIN)
        .args(["policy", "test", "--config", &config, &cases])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.ends_with("9 passed, 0 failed\n"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.yaml");
    let original = std::fs::read_to_string(&cases).unwrap();
    // bob is in no policy: expecting an allow must fail.
    let flipped = original.replacen(
        "expect: { decision: deny, reason: operator_not_approved }",
        "expect: { decision: allow }",
        1,
    );
    assert_ne!(flipped, original);
    std::fs::write(&wrong, flipped).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["policy", "test", "--config", &config])
        .arg(&wrong)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("FAIL  bob is in no policy: expected allow, got deny operator_not_approved"),
        "{text}"
    );
    assert!(text.ends_with("8 passed, 1 failed\n"), "{text}");

    let out = std::process::Command::new(BIN)
        .args(["policy", "test", "--format", "junit", "--config", &config])
        .arg(&wrong)
        .output()
        .unwrap();
    let xml = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(xml.contains("tests=\"9\" failures=\"1\""), "{xml}");
    assert_eq!(xml.matches("<failure ").count(), 1);

    // A case file that does not parse is a usage error (2), naming the file.
    std::fs::write(&wrong, "cases:\n  - name: x\n    bogus: 1\n").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["policy", "test", "--config", &config])
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong.yaml"));
}

/// `passgate policy replay` on a log the real gateway wrote: the same config changes nothing; a
/// candidate that takes alice's group out of the kiosk policy flips her allow (exit 1, her
/// request id printed) and shows bob's old refusal as inexact; `--allow-changes` exits 0. The
/// log is version 2, verifies, and its decisions past the operator screen carry `inputs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_replay_reports_what_a_candidate_would_change() {
    use common::{action_url, bearer, send, token};
    const BOB: &str = "6fa0d1b5-9855-4c8d-be2b-8a6660fbe126";
    const HELPDESK: &str = "groups: [\"f3d0263f-adae-4f31-84f1-5b45713ed0b7\"]     # Helpdesk Tier 2\n    devices:\n      groups: [\"e6867e18";
    let env = common::start().await;
    let alice = vec![bearer(&token(&env, "alice"))];
    let bob = vec![bearer(&token(&env, "bob"))];
    // Each call with its own client-request-id, to find its record (an allow answers with
    // Graph's request-id).
    let mut crids = std::collections::BTreeMap::new();
    for (n, (name, who, device, want)) in [
        ("allowed", &alice, "kiosk-phone", 204),
        ("ipad", &alice, "lobby-ipad", 403),
        ("approval", &alice, "warehouse-phone", 403),
        ("bob", &bob, "kiosk-phone", 403),
    ]
    .into_iter()
    .enumerate()
    {
        let crid = format!("00000000-0000-4000-8000-00000000000{n}");
        let mut headers = who.clone();
        headers.push(("client-request-id", crid.clone()));
        let r = send("POST", &action_url(&env, device), &headers, b"").await;
        assert_eq!(r.status, want, "{name}: {:?}", r.json());
        crids.insert(name, crid);
    }
    // Refused before the operator screen: no inputs, not re-decidable.
    let r = send(
        "POST",
        &format!("{}/v1.0/me/nothing", env.gateway_url),
        &alice,
        b"",
    )
    .await;
    assert_eq!(r.status / 100, 4);

    let files = common::audit_set(&env);
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let records = common::decision_records(&env);
    assert!(records.iter().all(|r| r["v"] == 2));
    let by_crid = |crid: &str| {
        records
            .iter()
            .find(|r| r["client_request_id"] == crid)
            .unwrap_or_else(|| panic!("no record {crid}"))
            .clone()
    };
    let ids: std::collections::BTreeMap<&str, String> = crids
        .iter()
        .map(|(name, crid)| {
            (
                *name,
                by_crid(crid)["request_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let by_id = |id: &str| {
        records
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap()
            .clone()
    };
    let allowed = by_id(&ids["allowed"]);
    let inputs = &allowed["inputs"];
    assert_eq!(
        inputs["operator_groups"],
        serde_json::json!(["f3d0263f-adae-4f31-84f1-5b45713ed0b7"])
    );
    assert_eq!(
        inputs["operator_roles_checked"],
        serde_json::json!(["PassGate.RecoverPasscode"])
    );
    assert_eq!(inputs["device_facts"], "found");
    let checked = inputs["device_groups_checked"].as_array().unwrap();
    assert!(
        checked
            .iter()
            .any(|g| g == "e6867e18-cfe7-4693-bec9-262eb70c4b84"),
        "{checked:?}"
    );
    let bob_rec = by_id(&ids["bob"]);
    assert_eq!(bob_rec["inputs"]["device_facts"], "not_read");
    assert_eq!(bob_rec["inputs"]["operator_groups"], serde_json::json!([]));
    assert!(records
        .iter()
        .any(|r| r["reason"] == "me_route_not_supported" || r["reason"] == "route_not_found"));
    assert!(records
        .iter()
        .filter(|r| r["operator"].is_null())
        .all(|r| r.get("inputs").is_none()));

    let dir = tempfile::tempdir().unwrap();
    let replay = |config: &std::path::Path, extra: &[&str]| {
        let out = Command::new(BIN)
            .args(["policy", "replay", "--config"])
            .arg(config)
            .args(extra)
            .args(&files)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let same = dir.path().join("same.yaml");
    std::fs::write(&same, passgate::dev::DEV_CONFIG).unwrap();
    let (code, text, err) = replay(&same, &[]);
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(
        text.contains("exact:   4 re-decided: 4 unchanged, 0 changed"),
        "{text}"
    );
    assert!(text.contains("0 changed, 0 allow↔deny flips"), "{text}");
    assert!(
        text.contains("refused before the policy decision"),
        "{text}"
    );

    // The candidate: the kiosk policy names bob instead of Helpdesk Tier 2.
    assert!(passgate::dev::DEV_CONFIG.contains(HELPDESK));
    let tightened = dir.path().join("candidate.yaml");
    std::fs::write(
        &tightened,
        passgate::dev::DEV_CONFIG.replacen(
            HELPDESK,
            &HELPDESK.replace(
                "groups: [\"f3d0263f-adae-4f31-84f1-5b45713ed0b7\"]",
                &format!("users: [\"{BOB}\"]"),
            ),
            1,
        ),
    )
    .unwrap();
    let (code, text, err) = replay(&tightened, &[]);
    assert_eq!(code, Some(1), "{text}{err}");
    let section = |title: &str| {
        let start = text
            .find(title)
            .unwrap_or_else(|| panic!("no {title}: {text}"));
        text[start..].split("\n\n").next().unwrap().to_string()
    };
    let flips = section("\nallow→deny (1");
    assert!(flips.contains(&ids["allowed"]), "{text}");
    assert!(
        flips.contains("deny device_not_in_allowed_group"),
        "{flips}"
    );
    assert!(
        section("\nother policy (1").contains(&ids["ipad"]),
        "{text}"
    );
    // bob was refused at the screen: nothing was read about the device, so it is not a change.
    let undetermined = section("\ninexact undetermined (1");
    assert!(undetermined.contains(&ids["bob"]), "{text}");
    assert!(
        text.contains("\n2 changed, 1 allow↔deny flips; 1 inexact"),
        "{text}"
    );

    let (code, text, err) = replay(&tightened, &["--allow-changes", "--format", "json"]);
    assert_eq!(code, Some(0), "{text}{err}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("one JSON object");
    assert_eq!(v["flips"], 1);
    assert_eq!(v["exact"]["allow_to_deny"], 1);
    assert_eq!(v["inexact"]["undetermined"], 1);
    assert_eq!(
        v["examples"]["allow_to_deny"][0]["request_id"],
        ids["allowed"].as_str()
    );

    // An audit line that is not a record is an error naming the file and line.
    let broken = dir.path().join("broken.jsonl");
    std::fs::write(&broken, "{\"v\":3,\"kind\":\"decision\"}\n").unwrap();
    let out = Command::new(BIN)
        .args(["policy", "replay", "--config"])
        .arg(&same)
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("broken.jsonl:1: unsupported record version v=3"));
}
