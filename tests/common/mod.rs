//! Shared test harness: starts the sandbox + gateway in-process on loopback and speaks plain HTTP;
//! plus the helpers more than one test module needs (raw sockets, metrics, child processes).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use passgate::dev::{self, DevEnv, DevOptions};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The `passgate` binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_passgate");

/// Operator token lifetime most tests use.
pub const HOUR: Duration = Duration::from_secs(3600);

pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// The reason code in the Graph-shaped error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one request to `base` + `path_and_query`.
pub async fn send(method: &str, url: &str, headers: &[(&str, String)], body: &[u8]) -> Resp {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let req = b
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let resp = client().request(req).await.expect("gateway answered");
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.expect("body").to_bytes(),
    }
}

pub fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

pub async fn start() -> DevEnv {
    start_with(None).await
}

/// Starts sandbox + gateway with a budget for refusals before authentication no test reaches,
/// for suites that check hundreds of such refusals one by one (see `flood.rs` for the budget).
pub async fn start_unthrottled() -> DevEnv {
    start_with(Some(unthrottled(passgate::dev::DEV_CONFIG))).await
}

/// `config` (the dev config or one derived from it) with that budget lifted.
pub fn unthrottled(config: &str) -> String {
    config.replacen(
        "  plaintext: true\n",
        "  plaintext: true\n  limits:\n    unauthenticated_per_client: \"1000000 per 1s\"\n",
        1,
    )
}

/// Starts sandbox + gateway; `config_text` replaces the embedded dev.yaml when given.
pub async fn start_with(config_text: Option<String>) -> DevEnv {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    dev::start(DevOptions {
        listen: "127.0.0.1:0".into(),
        audit_log: Some(dir.join("audit.jsonl")),
        config_text,
        admin_listen: Some("127.0.0.1:0".into()),
        console_listen: Some("127.0.0.1:0".into()),
    })
    .await
    .expect("dev environment starts")
}

pub fn device_id(env: &DevEnv, name: &str) -> String {
    env.sandbox
        .tenant()
        .device(name)
        .expect("sample device")
        .managed_device_id
        .clone()
}

/// The guarded action's path (no scheme or authority) for a sample device.
pub fn action_path(env: &DevEnv, device: &str) -> String {
    format!(
        "/v1.0/deviceManagement/managedDevices/{}/recoverPasscode",
        device_id(env, device)
    )
}

pub fn action_url(env: &DevEnv, device: &str) -> String {
    format!("{}{}", env.gateway_url, action_path(env, device))
}

/// The gateway listener's `host:port`, for raw sockets (plain or TLS listener).
pub fn gateway_addr(env: &DevEnv) -> String {
    env.gateway_url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_string()
}

/// Nothing reached Graph's recoverPasscode.
pub fn no_calls(env: &DevEnv) {
    assert_eq!(
        env.sandbox.recover_passcode_calls().len(),
        0,
        "nothing may reach Graph's recoverPasscode"
    );
}

pub fn token(env: &DevEnv, operator: &str) -> String {
    env.sandbox.operator_token(operator, HOUR)
}

/// All audit lines as JSON values.
/// The audit file and the files rotated out of it, in chain order (rotated names sort by seq).
pub fn audit_set(env: &DevEnv) -> Vec<std::path::PathBuf> {
    let dir = env.audit_log.parent().expect("audit dir");
    let name = env
        .audit_log
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let mut rotated: Vec<_> = std::fs::read_dir(dir)
        .expect("audit dir readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy();
            f.starts_with(&format!("{name}.")) && !f.contains(".torn-")
        })
        .collect();
    rotated.sort();
    rotated.push(env.audit_log.clone());
    rotated
}

/// All audit lines, across rotated files, as JSON values.
pub fn audit_records(env: &DevEnv) -> Vec<serde_json::Value> {
    audit_set(env)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

/// Verifies the whole chain across rotated files; returns the record count.
pub fn verify_audit(env: &DevEnv) -> u64 {
    let set = audit_set(env);
    let summary = passgate::audit::verify_set(&set, &passgate::audit::VerifyOptions::default())
        .unwrap_or_else(|e| panic!("audit chain verifies: {e}"));
    summary.records
}

pub fn decision_records(env: &DevEnv) -> Vec<serde_json::Value> {
    audit_records(env)
        .into_iter()
        .filter(|r| r["kind"] == "decision")
        .collect()
}

/// A `serve` config for the binary, pointed at a sandbox running in the test process: the dev
/// config with the sandbox's endpoints, the given audit file and ephemeral ports.
pub fn serve_yaml(sandbox: &passgate::sandbox::Sandbox, audit: &std::path::Path) -> String {
    let text = passgate::dev::DEV_CONFIG
        .replacen(
            "graph: \"http://127.0.0.1:9\"",
            &format!("graph: \"{}\"", sandbox.graph_url()),
            1,
        )
        .replacen(
            "authority: \"http://127.0.0.1:9\"",
            &format!("authority: \"{}\"", sandbox.authority_url()),
            1,
        )
        .replacen("listen: \"127.0.0.1:8080\"", "listen: \"127.0.0.1:0\"", 1)
        .replacen(
            "path: \"/tmp/passgate-dev-audit.jsonl\"",
            &format!("path: \"{}\"", audit.display()),
            1,
        )
        // The console on a free port, its (unused here) secret in a file beside the audit log.
        .replacen(
            "  listen: \"127.0.0.1:8081\"",
            "  listen: \"127.0.0.1:0\"",
            1,
        )
        .replacen(
            "env:PASSGATE_SANDBOX_CONSOLE_SECRET",
            &format!("file:{}", console_secret_file(audit).display()),
            1,
        );
    assert!(text.contains(&sandbox.graph_url()) && text.contains(&audit.display().to_string()));
    format!("{text}\nadmin:\n  listen: \"127.0.0.1:0\"\n")
}

/// A file holding a console client secret next to `audit`, for configs run by the binary.
pub fn console_secret_file(audit: &std::path::Path) -> std::path::PathBuf {
    let p = audit.with_file_name("console.secret");
    std::fs::write(&p, "not-the-sandbox-console-secret").expect("console secret file");
    p
}

/// The secret env var the dev config references.
pub const SECRET_ENV: &str = "PASSGATE_SANDBOX_CLIENT_SECRET";

/// Parses the text exposition into (series, value) pairs; series keeps labels as written.
pub fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Sum of every sample of `name` whose labels contain all of `labels` (`k="v"` fragments).
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> f64 {
    samples(text)
        .iter()
        .filter(|(s, _)| {
            let base = s.split('{').next().unwrap_or("");
            base == name && labels.iter().all(|l| s.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

/// The admin listener's `/metrics` exposition (asserts 200 and the text format's content type).
pub async fn scrape(env: &DevEnv) -> String {
    let admin = env.admin_url.as_deref().expect("admin listener");
    let r = send("GET", &format!("{admin}/metrics"), &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/plain; version=0.0.4"));
    String::from_utf8(r.body.to_vec()).expect("utf-8 exposition")
}

/// [`metric_value`] of a fresh scrape.
pub async fn metric(env: &DevEnv, name: &str, labels: &[&str]) -> f64 {
    metric_value(&scrape(env).await, name, labels)
}

/// Reads until the peer closes the connection (or it fails); panics if that takes longer than
/// `bound`, so a gateway that hangs fails the test instead of wedging it.
pub async fn read_to_close(s: &mut TcpStream, bound: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let read = async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    };
    if tokio::time::timeout(bound, read).await.is_err() {
        panic!("the gateway did not close the connection within {bound:?}");
    }
    out
}

/// A free loopback port, for a child process told to listen there (a tiny race we accept).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether an external tool (from Debian's `prometheus` package) can run. When it cannot, the
/// test skips, except under `PASSGATE_REQUIRE_TOOLS` (set by `.ci/run`), where it fails.
pub fn tool_available(bin: &str) -> bool {
    let runs = Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !runs {
        assert!(
            std::env::var_os("PASSGATE_REQUIRE_TOOLS").is_none(),
            "{bin} missing: apt-get install prometheus"
        );
        eprintln!("SKIPPED: {bin} not installed (apt-get install prometheus)");
    }
    runs
}

/// A child process that is killed (by its own handle, never by name) and reaped when dropped,
/// so a failing test leaves nothing running. Derefs to the [`Child`].
pub struct ChildGuard(pub Child);

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// The child's stderr, line by line, as a channel (read by a thread of its own, so a test can
/// wait for a log line with a deadline). The child must have been spawned with piped stderr.
pub fn stderr_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// A one-shot HTTP receiver on loopback: hands each request body to the channel, answers 204.
pub fn webhook_receiver() -> (String, std::sync::mpsc::Receiver<serde_json::Value>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/hook/secret-token",
        listener.local_addr().unwrap()
    );
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if std::io::BufRead::read_line(&mut reader, &mut line).unwrap_or(0) == 0
                    || line == "\r\n"
                {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            let _ = std::io::Read::read_exact(&mut reader, &mut body);
            let _ = std::io::Write::write_all(
                &mut s,
                b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n",
            );
            if let Ok(v) = serde_json::from_slice(&body) {
                let _ = tx.send(v);
            }
        }
    });
    (url, rx)
}

/// alice (approved) on kiosk-phone (allowed), over HTTP/1.1: the call that should succeed.
pub async fn alice(env: &DevEnv) -> Resp {
    send(
        "POST",
        &action_url(env, "kiosk-phone"),
        &[bearer(&token(env, "alice"))],
        b"",
    )
    .await
}

/// The first audit record of `kind`, waited for (bounded: panics with `why` after 20 s).
pub async fn first_record_of_kind(env: &DevEnv, kind: &str, why: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = audit_records(env).into_iter().find(|r| r["kind"] == kind) {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops the gateway (which writes pending `throttled` summaries) and returns the audit file
/// set, every record of the current file, and the `throttled` ones among them.
pub async fn stop_and_read_summaries(
    env: DevEnv,
) -> (
    Vec<std::path::PathBuf>,
    Vec<serde_json::Value>,
    Vec<serde_json::Value>,
) {
    let set = audit_set(&env);
    let keep = env.audit_log.clone();
    env.stop().await;
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&keep)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summaries = records
        .iter()
        .filter(|r| r["kind"] == "throttled")
        .cloned()
        .collect();
    (set, records, summaries)
}
