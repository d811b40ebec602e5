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
