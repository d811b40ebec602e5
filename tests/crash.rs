//! kill -9 under load: the gateway binary (`passgate serve`) runs against an emulator living in
//! the test process, so what Graph received survives the crash. Every recoverPasscode Graph saw
//! must have a durable allow record, and the audit chain must verify after a restart (a torn
//! final line, if the kill cut a write, is cut off and noted in a `recovery` record).

use crate::common::{free_port, ChildGuard, TestClient, BIN};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use passgate::sandbox::{SampleTenant, Sandbox};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The dev config pointed at the in-process sandbox, with limits out of the way.
fn serve_config(sb: &Sandbox, port: u16, audit: &Path) -> String {
    let authority = sb.authority_url();
    let tid = &sb.tenant().tenant_id;
    let cfg = passgate::dev::DEV_CONFIG
        .replace(
            "listen: \"127.0.0.1:8080\"",
            &format!("listen: \"127.0.0.1:{port}\""),
        )
        .replace(
            "  graph: \"http://127.0.0.1:9\"\n  authority: \"http://127.0.0.1:9\"\n",
            &format!(
                "  graph: \"{}\"\n  authority: \"{authority}\"\n  token_url: \"{authority}/{tid}/oauth2/v2.0/token\"\n  oidc_discovery_url: \"{authority}/{tid}/v2.0/.well-known/openid-configuration\"\n",
                sb.graph_url()
            ),
        )
        .replace(
            "client_secret: \"env:PASSGATE_SANDBOX_CLIENT_SECRET\"",
            "client_secret: \"env:PASSGATE_CLIENT_SECRET\"",
        )
        .replace(
            "path: \"/tmp/passgate-dev-audit.jsonl\"",
            &format!("path: \"{}\"", audit.display()),
        )
        .replace("per_operator: \"20 per 1h\"", "per_operator: \"1000000 per 1h\"")
        .replace("per_device: \"3 per 10m\"", "per_device: \"1000000 per 1h\"")
        .replace("global: \"200 per 1h\"", "global: \"1000000 per 1h\"")
        .replace("  listen: \"127.0.0.1:8081\"", "  listen: \"127.0.0.1:0\"")
        .replace(
            "env:PASSGATE_SANDBOX_CONSOLE_SECRET",
            &format!(
                "file:{}",
                crate::common::console_secret_file(audit).display()
            ),
        );
    assert!(cfg.contains(&sb.graph_url()), "endpoints replaced");
    assert!(cfg.contains("env:PASSGATE_CLIENT_SECRET"));
    assert!(cfg.contains(&audit.display().to_string()));
    format!("{cfg}\nadmin:\n  enabled: false\n")
}

fn test_client(pool: usize) -> TestClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(pool)
        .build_http()
}

struct Gateway {
    /// Killed through this handle (SIGKILL is the point of the test), also if the test fails.
    child: ChildGuard,
    url: String,
}

/// Starts `passgate serve` and waits until its port accepts connections (keys are fetched
/// before the listener binds, so an accepting port means it is ready).
async fn spawn_gateway(sb: &Sandbox, dir: &Path, audit: &Path, n: u32) -> Gateway {
    let port = free_port();
    let cfg_path = dir.join(format!("config-{n}.yaml"));
    let cfg = serve_config(sb, port, audit);
    passgate::config::load_str(&cfg, "crash-test.yaml").expect("generated config is valid");
    std::fs::write(&cfg_path, cfg).unwrap();
    let log = std::fs::File::create(dir.join(format!("gateway-{n}.log"))).unwrap();
    let mut child = ChildGuard(
        Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .env("PASSGATE_CLIENT_SECRET", sb.client_secret())
            .env("PASSGATE_LOG", "passgate=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("passgate binary starts"),
    );
    let addr = format!("127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join(format!("gateway-{n}.log")));
            panic!("passgate exited during start-up: {status}: {log:?}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "passgate did not start listening within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Gateway {
        child,
        url: format!("http://{addr}"),
    }
}

/// One call with our own client-request-id; `None` when the connection failed (gateway killed).
async fn call(client: &TestClient, url: &str, token: &str, crid: &str) -> Option<u16> {
    let req = http::Request::post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("client-request-id", crid)
        .body(Full::new(Bytes::new()))
        .ok()?;
    let resp = client.request(req).await.ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

fn read_records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_under_load_loses_no_audit_record_of_a_forwarded_call() {
    let sb = Sandbox::start(SampleTenant::contoso()).await.unwrap();
    let dir: PathBuf = tempfile::tempdir().unwrap().keep();
    let audit = dir.join("audit.jsonl");
    let mut gw = spawn_gateway(&sb, &dir, &audit, 1).await;

    let device = |name: &str| sb.tenant().device(name).unwrap().managed_device_id.clone();
    let action = |base: &str, d: &str| {
        format!("{base}/v1.0/deviceManagement/managedDevices/{d}/recoverPasscode")
    };
    let kiosk = device("kiosk-phone");
    let other = sb
        .tenant()
        .devices
        .iter()
        .find(|d| d.name != "kiosk-phone")
        .unwrap()
        .managed_device_id
        .clone();
    let alice = sb.operator_token("alice", Duration::from_secs(3600));
    let bob = sb.operator_token("bob", Duration::from_secs(3600));

    // 16 tasks loop allowed + denied calls until the gateway dies under them.
    let done = Arc::new(AtomicUsize::new(0));
    let reached = Arc::new(tokio::sync::Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let client = test_client(64);
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (done, reached, stop, client) =
            (done.clone(), reached.clone(), stop.clone(), client.clone());
        let calls = [
            (action(&gw.url, &kiosk), alice.clone()),
            (action(&gw.url, &kiosk), bob.clone()),
            (action(&gw.url, &other), alice.clone()),
        ];
        tasks.push(tokio::spawn(async move {
            // (client-request-id, status) of every answered allowed-looking call.
            let mut answered: Vec<(String, u16)> = Vec::new();
            let mut i = t;
            while !stop.load(Ordering::SeqCst) {
                let (url, tok) = &calls[i % calls.len()];
                i += 1;
                let crid = uuid::Uuid::new_v4().to_string();
                match call(&client, url, tok, &crid).await {
                    Some(status) => {
                        answered.push((crid, status));
                        if done.fetch_add(1, Ordering::SeqCst) + 1 == 400 {
                            reached.notify_one();
                        }
                    }
                    None => break,
                }
            }
            answered
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), reached.notified())
        .await
        .expect("400 requests answered within 60 s");
    // Mid-stream: the tasks are still sending.
    gw.child.kill().unwrap(); // SIGKILL on unix
    gw.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    let mut answered = Vec::new();
    for t in tasks {
        answered.extend(t.await.unwrap());
    }
    assert!(answered.len() >= 400);

    // The file as the crash left it: intact, or with exactly a torn final line.
    let torn = match passgate::audit::verify_file(&audit) {
        Ok(_) => false,
        Err(passgate::audit::VerifyError::Break(b)) => {
            assert_eq!(
                b.kind,
                passgate::audit::BreakKind::TornLine,
                "only a torn final line is acceptable after kill -9: {b}"
            );
            true
        }
        Err(e) => panic!("audit file unreadable: {e}"),
    };
    let simulated = !torn;
    if simulated {
        // The kill landed between writes (the usual case). Leave what a kill in the middle of
        // a write would have left, so the restart's torn-tail recovery is exercised every run.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&audit)
            .unwrap();
        f.write_all(br#"{"seq":999999,"time":"2026-"#).unwrap();
        drop(f);
        match passgate::audit::verify_file(&audit) {
            Err(passgate::audit::VerifyError::Break(b)) => {
                assert_eq!(b.kind, passgate::audit::BreakKind::TornLine)
            }
            other => panic!("a torn tail must be detected: {other:?}"),
        }
    }

    // Restart on the same file, make more calls, and stop it again.
    let mut gw2 = spawn_gateway(&sb, &dir, &audit, 2).await;
    let client2 = test_client(8);
    for i in 0..20 {
        let (url, tok) = if i % 2 == 0 {
            (action(&gw2.url, &kiosk), &alice)
        } else {
            (action(&gw2.url, &kiosk), &bob)
        };
        let crid = uuid::Uuid::new_v4().to_string();
        let status = call(&client2, &url, tok, &crid)
            .await
            .expect("restarted gateway answers");
        assert_eq!(status, if i % 2 == 0 { 204 } else { 403 });
        answered.push((crid, status));
    }
    gw2.child.kill().unwrap();
    gw2.child.wait().unwrap();

    let summary = passgate::audit::verify_file(&audit).expect("chain verifies after the restart");
    let records = read_records(&audit);
    assert_eq!(records.len() as u64, summary.records);
    let recoveries = records.iter().filter(|r| r["kind"] == "recovery").count();
    assert_eq!(
        recoveries, 1,
        "the torn tail is cut and noted by exactly one recovery record"
    );
    let side_files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains(".torn-"))
        .collect();
    assert_eq!(
        side_files.len(),
        1,
        "the torn bytes are preserved in a side file"
    );
    if simulated {
        assert_eq!(
            std::fs::read(&side_files[0]).unwrap(),
            br#"{"seq":999999,"time":"2026-"#
        );
    }

    let allowed: HashSet<&str> = records
        .iter()
        .filter(|r| r["kind"] == "decision" && r["decision"] == "allow")
        .filter_map(|r| r["client_request_id"].as_str())
        .collect();
    let recorded: HashSet<&str> = records
        .iter()
        .filter(|r| r["kind"] == "decision")
        .filter_map(|r| r["client_request_id"].as_str())
        .collect();
    let seen = sb.recover_passcode_calls();
    assert!(seen.len() >= 20, "load reached Graph: {}", seen.len());
    for c in &seen {
        let crid = c
            .header("client-request-id")
            .expect("passgate sends a client-request-id upstream");
        assert!(
            allowed.contains(crid),
            "Graph received recoverPasscode {crid} with no durable allow record"
        );
    }
    // Every answer an operator got is on record too (the record precedes the answer).
    for (crid, status) in &answered {
        assert!(
            recorded.contains(crid.as_str()),
            "answered {status} for {crid} without a decision record"
        );
        if *status == 204 {
            assert!(allowed.contains(crid.as_str()));
        }
    }
    eprintln!(
        "crash: {} answered, {} forwarded, {} records, torn by the kill: {torn}",
        answered.len(),
        seen.len(),
        summary.records
    );
}
