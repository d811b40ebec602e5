//! The `serve` process over its lifetime: SIGHUP and file-change reloads (atomic, invalid files
//! rejected, limits kept), and SIGTERM draining then closing the audit log with exit 0.

use crate::common::*;
use passgate::sandbox::{SampleTenant, Sandbox};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// An upper bound for a condition we wait on; never a synchronisation sleep.
const BOUND: Duration = Duration::from_secs(20);

struct Served {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    gateway: String,
    admin: String,
    config: std::path::PathBuf,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn field(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    Some(line[start..].split_whitespace().next()?.to_string())
}

impl Served {
    fn start(sandbox: &Sandbox, edit: impl Fn(String) -> String) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let config = dir.path().join("passgate.yaml");
        std::fs::write(&config, edit(serve_yaml(sandbox, &audit))).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .env(SECRET_ENV, sandbox.client_secret())
            .env("PASSGATE_LOG", "passgate=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let lines = stderr_lines(&mut child);
        let mut s = Served {
            child: Some(child),
            lines,
            gateway: String::new(),
            admin: String::new(),
            config,
            audit,
            _dir: dir,
        };
        let admin_line = s.wait_for("admin endpoints serving");
        s.admin = format!(
            "http://{}",
            field(&admin_line, "admin").expect("admin address")
        );
        let line = s.wait_for("passgate serving");
        s.gateway = format!("http://{}", field(&line, "listen").expect("listen address"));
        s
    }

    /// Reads log lines until one contains `needle` (bounded).
    fn wait_for(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => continue,
                Err(e) => panic!("no log line with {needle:?} within {BOUND:?}: {e}"),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([
                &format!("-{sig}"),
                &self.child.as_ref().unwrap().id().to_string(),
            ])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig}");
    }

    fn url(&self, device: &str, tenant: &SampleTenant) -> String {
        let id = &tenant.device(device).unwrap().managed_device_id;
        format!(
            "{}/v1.0/deviceManagement/managedDevices/{id}/recoverPasscode",
            self.gateway
        )
    }

    /// Waits (bounded) for the process to exit on its own.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        rx.recv_timeout(BOUND)
            .expect("process exits within the bound")
            .expect("exit status")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn allow_bob(yaml: &str, sandbox: &Sandbox) -> String {
    let bob = &sandbox.tenant().operator("bob").unwrap().oid;
    yaml.replacen(
        "      groups: [\"f3d0263f-adae-4f31-84f1-5b45713ed0b7\"]     # Helpdesk Tier 2",
        &format!(
            "      groups: [\"f3d0263f-adae-4f31-84f1-5b45713ed0b7\"]\n      users: [\"{bob}\"]"
        ),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reload_applies_valid_config_and_rejects_invalid_keeping_limits() {
    let sandbox = Sandbox::start(SampleTenant::contoso()).await.unwrap();
    let tenant = sandbox.tenant().clone();
    let per_device_1 =
        |y: String| y.replace("per_device: \"3 per 10m\"", "per_device: \"1 per 10m\"");
    let s = Served::start(&sandbox, per_device_1);
    let bob = sandbox.operator_token("bob", Duration::from_secs(600));
    let alice = sandbox.operator_token("alice", Duration::from_secs(600));
    let url = s.url("kiosk-phone", &tenant);

    assert_eq!(send("POST", &url, &[bearer(&alice)], b"").await.status, 204);
    let r = send("POST", &url, &[bearer(&bob)], b"").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "operator_not_approved")
    );

    // An invalid file: the reload fails, says why, and the running config stays.
    let good = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, good.replace("policies:", "polices:")).unwrap();
    s.signal("HUP");
    let line = s.wait_for("configuration reload failed");
    assert!(
        line.contains("polices") || line.contains("unknown field"),
        "{line}"
    );
    let r = send("POST", &url, &[bearer(&bob)], b"").await;
    assert_eq!(
        r.code(),
        "operator_not_approved",
        "old config still in force"
    );

    // A valid file naming bob: applied atomically; the per-device limit state survives the reload.
    std::fs::write(&s.config, allow_bob(&good, &sandbox)).unwrap();
    s.signal("HUP");
    s.wait_for("configuration reloaded");
    let r = send("POST", &url, &[bearer(&bob)], b"").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "rate_limited"),
        "bob is approved now, and the device's 1-per-10m slot taken before the reload still counts"
    );
    let other = s.url("finance-laptop", &tenant);
    assert_eq!(
        send("POST", &other, &[bearer(&bob)], b"").await.code(),
        "device_not_in_allowed_group"
    );

    let m = send("GET", &format!("{}/metrics", s.admin), &[], b"").await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains("passgate_config_reloads_total{result=\"failure\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("passgate_config_reloads_total{result=\"success\"} 2"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_picked_up_without_a_signal() {
    let sandbox = Sandbox::start(SampleTenant::contoso()).await.unwrap();
    let tenant = sandbox.tenant().clone();
    let s = Served::start(&sandbox, |y| {
        y.replacen("server:\n", "server:\n  config_watch_seconds: 1\n", 1)
    });
    let bob = sandbox.operator_token("bob", Duration::from_secs(600));
    let url = s.url("kiosk-phone", &tenant);
    assert_eq!(send("POST", &url, &[bearer(&bob)], b"").await.status, 403);
    let good = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(&s.config, allow_bob(&good, &sandbox)).unwrap();
    s.wait_for("configuration reloaded");
    assert_eq!(send("POST", &url, &[bearer(&bob)], b"").await.status, 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_closes_the_audit_log_and_exits_zero() {
    let sandbox = Sandbox::start(SampleTenant::contoso()).await.unwrap();
    let tenant = sandbox.tenant().clone();
    let mut s = Served::start(&sandbox, |y| y);
    let alice = sandbox.operator_token("alice", Duration::from_secs(600));
    let url = s.url("kiosk-phone", &tenant);
    for _ in 0..3 {
        assert_eq!(send("POST", &url, &[bearer(&alice)], b"").await.status, 204);
    }
    s.signal("TERM");
    let status = s.wait_exit();
    assert_eq!(status.code(), Some(0), "clean exit");
    let summary = passgate::audit::verify_file(&s.audit).expect("chain verifies after shutdown");
    assert_eq!(summary.records, 6, "3 decisions + 3 outcomes, none torn");
    // The listener is gone.
    let refused = tokio::net::TcpStream::connect(s.gateway.trim_start_matches("http://")).await;
    assert!(refused.is_err(), "no longer accepting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_without_tearing_the_audit_log() {
    let sandbox = Sandbox::start(SampleTenant::contoso()).await.unwrap();
    let tenant = sandbox.tenant().clone();
    // A long drain deadline and a slow Graph: only the second signal can end this quickly.
    let mut s = Served::start(&sandbox, |y| {
        y.replacen("server:\n", "server:\n  drain_timeout_seconds: 600\n", 1)
            .replace(
                "graph:\n  facts_cache_ttl_seconds",
                "graph:\n  action_timeout_seconds: 600\n  facts_cache_ttl_seconds",
            )
    });
    sandbox.set_fault(passgate::sandbox::Fault::ActionDelay(Duration::from_secs(
        300,
    )));
    let alice = sandbox.operator_token("alice", Duration::from_secs(600));
    let url = s.url("kiosk-phone", &tenant);
    let in_flight = tokio::spawn(async move { send("POST", &url, &[bearer(&alice)], b"").await });
    // The action has reached Graph (and its allow record is durable) once the emulator saw it.
    let deadline = std::time::Instant::now() + BOUND;
    while sandbox.recover_passcode_calls().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the action never reached Graph"
        );
        tokio::task::yield_now().await;
    }
    s.signal("TERM");
    s.wait_for("draining in-flight requests");
    let started = std::time::Instant::now();
    s.signal("TERM");
    let status = s.wait_exit();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "exited at once: {:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(0));
    in_flight.abort();
    let audit = std::fs::read(&s.audit).unwrap();
    assert!(audit.ends_with(b"\n"), "no torn record");
    let summary = passgate::audit::verify_file(&s.audit).expect("chain verifies");
    assert!(
        summary.records >= 1,
        "the allow record of the in-flight call is there"
    );
}

/// `server:` with the file watcher off, so only the test's SIGHUPs reload.
fn no_watch(y: String) -> String {
    y.replacen("server:\n", "server:\n  config_watch_seconds: 0\n", 1)
}

impl Served {
    /// Writes the config file and reloads by SIGHUP; returns once the reload succeeded.
    fn rewrite_and_reload(&self, yaml: &str) {
        std::fs::write(&self.config, yaml).unwrap();
        self.signal("HUP");
        self.wait_for("configuration reloaded");
    }

    async fn metrics(&self) -> String {
        let m = send("GET", &format!("{}/metrics", self.admin), &[], b"").await;
        assert_eq!(m.status, 200);
        String::from_utf8_lossy(&m.body).into_owned()
    }

    fn decision_ips(&self) -> Vec<String> {
        std::fs::read_to_string(&self.audit)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|r| r["kind"] == "decision")
            .map(|r| r["client_ip"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

/// Sends on `client` (its pool may reuse the connection) and returns the status.
async fn post_on(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    url: &str,
    headers: &[(&str, String)],
) -> u16 {
    let mut b = http::Request::builder().method("POST").uri(url);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let req = b.body(http_body_util::Full::default()).unwrap();
    client
        .request(req)
        .await
        .expect("answered")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_removed_by_reload_is_not_believed_on_the_next_request() {
    let sandbox = Sandbox::start(SampleTenant::contoso()).await.unwrap();
    let tenant = sandbox.tenant().clone();
    let trust_loopback = |y: String| {
        no_watch(y).replacen(
            "  plaintext: true\n",
            "  plaintext: true\n  trusted_proxies: [\"127.0.0.1\"]\n",
            1,
        )
    };
    let s = Served::start(&sandbox, trust_loopback);
    let alice = sandbox.operator_token("alice", Duration::from_secs(600));
    let url = s.url("kiosk-phone", &tenant);
    let xff = ("x-forwarded-for", "203.0.113.9".to_string());
    // One client throughout: the second request may well ride the connection the first opened.
    let c = client();
    assert_eq!(post_on(&c, &url, &[bearer(&alice), xff.clone()]).await, 204);
    assert_eq!(
        s.decision_ips(),
        ["203.0.113.9"],
        "the trusted proxy's XFF is used"
    );

    let trusting = std::fs::read_to_string(&s.config).unwrap();
    s.rewrite_and_reload(&trusting.replace("  trusted_proxies: [\"127.0.0.1\"]\n", ""));
    assert_eq!(post_on(&c, &url, &[bearer(&alice), xff]).await, 204);
    assert_eq!(
        s.decision_ips(),
        ["203.0.113.9", "127.0.0.1"],
        "after the reload the peer is no longer a trusted proxy: its XFF is ignored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_limit_changed_by_reload_applies_to_new_connections() {
    let sandbox = Sandbox::start(SampleTenant::contoso()).await.unwrap();
    let tenant = sandbox.tenant().clone();
    let s = Served::start(&sandbox, no_watch);
    let url = s.url("kiosk-phone", &tenant);
    let many: Vec<(&str, String)> = (0..30).map(|i| ("x-filler", format!("{i}"))).collect();
    // Under the default 64 header fields: refused for want of a token, not for its head.
    assert_eq!(send("POST", &url, &many, b"").await.status, 401);

    let yaml = std::fs::read_to_string(&s.config).unwrap();
    s.rewrite_and_reload(&yaml.replacen(
        "  plaintext: true\n",
        "  plaintext: true\n  limits:\n    max_headers: 20\n",
        1,
    ));
    assert_eq!(
        send("POST", &url, &many, b"").await.status,
        431,
        "the reloaded max_headers applies"
    );
    s.rewrite_and_reload(&yaml);
    assert_eq!(send("POST", &url, &many, b"").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_only_change_is_warned_gauged_and_shown_in_readyz_until_reverted() {
    let sandbox = Sandbox::start(SampleTenant::contoso()).await.unwrap();
    let s = Served::start(&sandbox, no_watch);
    let gauge = |t: &str| metric_value(t, "passgate_config_restart_required", &[]);
    assert_eq!(gauge(&s.metrics().await), 0.0);
    let readyz = format!("{}/readyz", s.admin);
    let r = send("GET", &readyz, &[], b"").await;
    assert!(!String::from_utf8_lossy(&r.body).contains("restart"));

    let yaml = std::fs::read_to_string(&s.config).unwrap();
    let changed = yaml.replacen("rotate_max_bytes: 1048576", "rotate_max_bytes: 2097152", 1);
    assert_ne!(changed, yaml);
    std::fs::write(&s.config, &changed).unwrap();
    s.signal("HUP");
    let warning = s.wait_for("only takes effect after a restart");
    assert!(warning.contains("audit.rotate_max_bytes"), "{warning}");
    assert!(warning.contains("WARN"), "{warning}");
    s.wait_for("configuration reloaded");
    assert_eq!(gauge(&s.metrics().await), 1.0);
    let r = send("GET", &readyz, &[], b"").await;
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(
        r.status, 200,
        "still ready: it serves, with the old value: {body}"
    );
    assert!(
        body.contains("restart_required") && body.contains("audit.rotate_max_bytes"),
        "{body}"
    );

    // A second reload that keeps the change still reports it (compared with the process).
    s.rewrite_and_reload(&changed);
    assert_eq!(gauge(&s.metrics().await), 1.0);

    // Back to what the process runs: nothing to report.
    s.rewrite_and_reload(&yaml);
    assert_eq!(gauge(&s.metrics().await), 0.0);
    let r = send("GET", &readyz, &[], b"").await;
    assert!(!String::from_utf8_lossy(&r.body).contains("restart"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_counters_keep_counting_after_a_reload() {
    let sandbox = Sandbox::start(SampleTenant::contoso()).await.unwrap();
    let tenant = sandbox.tenant().clone();
    let s = Served::start(&sandbox, no_watch);
    let alice = sandbox.operator_token("alice", Duration::from_secs(600));
    let url = s.url("kiosk-phone", &tenant);
    let misses =
        |t: &str| metric_value(t, "passgate_device_facts_cache_total", &["result=\"miss\""]);
    let tokens = |t: &str| {
        metric_value(
            t,
            "passgate_app_token_refreshes_total",
            &["result=\"success\""],
        )
    };
    assert_eq!(send("POST", &url, &[bearer(&alice)], b"").await.status, 204);
    let before = s.metrics().await;
    assert!(misses(&before) >= 1.0 && tokens(&before) >= 1.0, "{before}");

    // The reload builds a new facts cache and token provider, whose own counts restart at 0.
    s.rewrite_and_reload(&std::fs::read_to_string(&s.config).unwrap());
    assert_eq!(send("POST", &url, &[bearer(&alice)], b"").await.status, 204);
    let after = s.metrics().await;
    // Before the fix both stalled: the new objects' counts had to pass the old totals first.
    assert!(
        misses(&after) > misses(&before),
        "the new cache's misses add to the old ones:\n{before}\n---\n{after}"
    );
    assert!(
        tokens(&after) > tokens(&before),
        "the new provider's token fetch adds to the old ones:\n{before}\n---\n{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_survive_a_reload_and_a_lowered_cap_counts_what_was_admitted() {
    let sandbox = Sandbox::start(SampleTenant::contoso()).await.unwrap();
    let tenant = sandbox.tenant().clone();
    // The dev config's two policies (helpdesk people, kiosk automation) both cover the kiosk
    // phone; a top-level cap binds them.
    let s = Served::start(&sandbox, |y| {
        format!("{}\nlimits:\n  per_device: \"2 per 1h\"\n", no_watch(y))
    });
    let alice = sandbox.operator_token("alice", Duration::from_secs(600));
    let automation = sandbox.operator_token("automation", Duration::from_secs(600));
    let url = s.url("kiosk-phone", &tenant);
    assert_eq!(send("POST", &url, &[bearer(&alice)], b"").await.status, 204);

    // Lowered to 1: the admission made before the reload counts, whichever policy asks now.
    let two = std::fs::read_to_string(&s.config).unwrap();
    s.rewrite_and_reload(&two.replace("per_device: \"2 per 1h\"", "per_device: \"1 per 1h\""));
    let r = send("POST", &url, &[bearer(&automation)], b"").await;
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limited"));
    // Back to 2: one slot is left — the count was neither reset nor charged by the refusal.
    s.rewrite_and_reload(&two);
    assert_eq!(
        send("POST", &url, &[bearer(&automation)], b"").await.status,
        204
    );
    let r = send("POST", &url, &[bearer(&alice)], b"").await;
    assert_eq!((r.status, r.code().as_str()), (429, "rate_limited"));
    assert!(
        s.metrics()
            .await
            .contains("passgate_rate_limited_total{policy=\"(caps)\",scope=\"per_device\"} 2"),
        "both refusals were the cap's"
    );
}
