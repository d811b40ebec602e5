//! No secret leaves the process: a broad mix of allowed calls, every kind of denial, failures
//! and hostile tokens runs while every log line (debug level, all crates) is captured; then the
//! logs, the audit files and every response must contain neither the client secret, nor any
//! app token, nor any operator token. The real binary (`passgate dev`) is checked the same way.

use crate::common::*;
use passgate::dev::DevEnv;
use passgate::sandbox::{Fault, Signing, TokenForm};
use serde_json::json;
use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tracing::dispatcher::{self, DefaultGuard, Dispatch};

/// A runtime whose every thread (workers and blocking pool; the gateway's connection tasks run
/// there) logs at debug level, all crates, into `buf`; the returned guard does the same for the
/// calling thread, which drives `block_on`. Not a process-global subscriber: the other tests in
/// this binary run in the same process, and neither should they log at debug level nor should
/// their lines land in this test's capture.
///
/// Also returns a second, inert dispatcher to keep alive alongside: with only one dispatcher
/// registered, tracing-core decides a callsite's interest (and the global max level) from the
/// default of whichever thread hits the callsite first, which may be another test's thread with
/// no subscriber, and the callsite would then stay disabled for this capture too. With two,
/// it asks every registered dispatcher.
pub(crate) fn capturing_runtime(
    buf: &Arc<Mutex<Vec<u8>>>,
) -> (tokio::runtime::Runtime, DefaultGuard, Dispatch) {
    let second = Dispatch::new(tracing::subscriber::NoSubscriber::default());
    thread_local! {
        static GUARD: RefCell<Option<DefaultGuard>> = const { RefCell::new(None) };
    }
    // `log` records (rustls, hyper-rustls, openidconnect) reach tracing, hence this capture, as
    // they do in the binary, whose subscriber's `init` installs the same bridge. Process-wide but
    // inert elsewhere: it hands each record to the current thread's dispatcher, which on other
    // tests' threads is none.
    let _ = tracing_log::LogTracer::builder()
        .with_max_level(tracing_log::log::LevelFilter::Debug)
        .init();
    let sink = buf.clone();
    let dispatch = Dispatch::new(
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(move || Capture(sink.clone()))
            .finish(),
    );
    let for_threads = dispatch.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            GUARD.with(|g| *g.borrow_mut() = Some(dispatcher::set_default(&for_threads)));
        })
        .on_thread_stop(|| {
            GUARD.with(|g| g.borrow_mut().take());
        })
        .build()
        .expect("runtime");
    (rt, dispatcher::set_default(&dispatch), second)
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Collects what was said to the outside world: response heads and bodies.
#[derive(Default)]
struct Transcript {
    text: String,
    operator_tokens: Vec<String>,
}

impl Transcript {
    async fn call(&mut self, url: &str, token: Option<&str>, extra: &[(&str, String)]) -> u16 {
        let mut headers: Vec<(&str, String)> = extra.to_vec();
        if let Some(t) = token {
            headers.push(bearer(t));
            self.operator_tokens.push(t.to_string());
        }
        for (k, v) in extra {
            if k.eq_ignore_ascii_case("authorization") {
                self.operator_tokens
                    .push(v.split_once(' ').map_or(v.as_str(), |x| x.1).to_string());
            }
        }
        let r = send("POST", url, &headers, b"").await;
        for (k, v) in &r.headers {
            self.text
                .push_str(&format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())));
        }
        self.text.push_str(&String::from_utf8_lossy(&r.body));
        self.text.push('\n');
        r.status
    }
}

/// The needles: a full secret, and for JWTs also the signature part alone (a log that printed
/// "just the signature" or a truncated token still leaks the credential's unique part).
pub(crate) fn needles(secrets: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for s in secrets {
        if s.len() < 16 {
            continue;
        }
        out.push(s.clone());
        if let Some((_, sig)) = s.rsplit_once('.') {
            if sig.len() >= 32 {
                out.push(sig.to_string());
            }
        }
    }
    out
}

pub(crate) fn assert_no_hits(what: &str, haystack: &str, needles: &[String]) {
    for n in needles {
        assert!(
            !haystack.contains(n.as_str()),
            "{what} contains a secret (first 6 chars {:?}, length {})",
            &n[..6],
            n.len()
        );
    }
}

/// Runs allowed calls, every denial reason the sample tenant can produce, and hostile tokens.
async fn broad_mix(env: &DevEnv, tx: &mut Transcript) {
    let sb = &env.sandbox;
    let url = |d: &str| action_url(env, d);
    let alice = token(env, "alice");
    let now = chrono::Utc::now().timestamp();
    let claims = sb.operator_claims("alice", TokenForm::V2, HOUR);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims.clone();
        f(&mut c);
        sb.mint(&c, &json!({}), Signing::Valid)
    };
    let expired = with(&|c| {
        c["exp"] = json!(now - 600);
        c["nbf"] = json!(now - 4000);
    });
    let wrong_aud = with(&|c| c["aud"] = json!("https://graph.microsoft.com"));
    let no_scope = with(&|c| c["scp"] = json!("User.Read"));
    let v1 = sb.mint(
        &sb.operator_claims("alice", TokenForm::V1, HOUR),
        &json!({}),
        Signing::Valid,
    );
    // Allowed (the helpdesk policy allows 3 per device per 10 minutes: the 4th is rate limited;
    // the automation policy has its own limits).
    assert_eq!(tx.call(&url("kiosk-phone"), Some(&alice), &[]).await, 204);
    assert_eq!(tx.call(&url("kiosk-phone"), Some(&v1), &[]).await, 204);
    assert_eq!(tx.call(&url("kiosk-phone"), Some(&alice), &[]).await, 204);
    assert_eq!(tx.call(&url("kiosk-phone"), Some(&alice), &[]).await, 429);
    let automation = token(env, "automation");
    assert_eq!(
        tx.call(&url("kiosk-phone"), Some(&automation), &[]).await,
        204
    );
    // Policy denials.
    let bob = token(env, "bob");
    assert_eq!(tx.call(&url("kiosk-phone"), Some(&bob), &[]).await, 403);
    for d in ["finance-laptop", "lobby-ipad", "unregistered-phone"] {
        assert_eq!(tx.call(&url(d), Some(&alice), &[]).await, 403, "{d}");
    }
    let unknown = format!(
        "{}/v1.0/deviceManagement/managedDevices/0badc0de-0000-4000-8000-000000000000/recoverPasscode",
        env.gateway_url
    );
    assert_eq!(tx.call(&unknown, Some(&alice), &[]).await, 404);
    // Token denials.
    for t in [
        expired,
        wrong_aud,
        sb.mint(&claims, &json!({}), Signing::CorruptSignature),
        sb.mint(&claims, &json!({}), Signing::UnknownKey),
        sb.mint(&claims, &json!({}), Signing::AlgNone),
        sb.mint(&claims, &json!({}), Signing::Hs256WithPublicKey),
        sb.mint(&claims, &json!({"kid": "../../etc/passwd"}), Signing::Valid),
        format!("{alice}{}", "A".repeat(20 * 1024)),
    ] {
        assert_eq!(tx.call(&url("kiosk-phone"), Some(&t), &[]).await, 401);
    }
    assert_eq!(
        tx.call(&url("kiosk-phone"), Some(&no_scope), &[]).await,
        403
    );
    assert_eq!(tx.call(&url("kiosk-phone"), None, &[]).await, 401);
    let two = [
        ("authorization", format!("Bearer {alice}")),
        ("authorization", format!("Bearer {bob}")),
    ];
    assert_eq!(tx.call(&url("kiosk-phone"), None, &two).await, 401);
    let basic = [("authorization", format!("Basic {alice}"))];
    assert_eq!(tx.call(&url("kiosk-phone"), None, &basic).await, 401);
    // Route refusals with a valid token attached.
    let wipe = url("kiosk-phone").replace("recoverPasscode", "wipe");
    assert_eq!(tx.call(&wipe, Some(&alice), &[]).await, 404);
    let me = format!(
        "{}/v1.0/me/managedDevices/{}/recoverPasscode",
        env.gateway_url,
        device_id(env, "kiosk-phone")
    );
    assert_eq!(tx.call(&me, Some(&alice), &[]).await, 400);
}

/// Failure paths, whose error messages are the likeliest place for a secret to slip out.
async fn failures(env: &DevEnv, tx: &mut Transcript) {
    let alice = token(env, "alice");
    let url = action_url(env, "kiosk-phone");
    // No app token yet: the token endpoint refuses passgate's credential.
    env.sandbox.set_fault(Fault::TokenEndpointStatus(401));
    let s = tx.call(&url, Some(&alice), &[]).await;
    assert!(s == 503 || s >= 500, "token endpoint down: {s}");
    env.sandbox.set_fault(Fault::GraphStatus {
        status: 500,
        retry_after: None,
    });
    let s = tx.call(&url, Some(&alice), &[]).await;
    assert!(s >= 500, "graph down: {s}");
    env.sandbox.set_fault(Fault::ActionStatus {
        status: 403,
        retry_after: None,
    });
    let s = tx.call(&url, Some(&alice), &[]).await;
    assert_eq!(s, 403, "Graph's own 403 is passed back");
    env.sandbox.set_fault(Fault::None);
}

#[test]
fn no_secret_reaches_logs_audit_or_responses() {
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (rt, _this_thread, _second) = capturing_runtime(&logs);
    rt.block_on(mix_then_search_for_secrets(&logs));
}

async fn mix_then_search_for_secrets(logs: &Mutex<Vec<u8>>) {
    let env = start().await;
    let env2 = start().await;
    let mut tx = Transcript::default();
    tracing::info!("secrets test: mix starts");
    broad_mix(&env, &mut tx).await;
    failures(&env2, &mut tx).await;
    let calls = env.sandbox.recover_passcode_calls().len();
    assert_eq!(calls, 4, "only the allowed calls were forwarded");
    env2.sandbox.set_fault(Fault::None);

    let mut secrets = vec![env.sandbox.client_secret(), env2.sandbox.client_secret()];
    secrets.extend(env.sandbox.issued_app_tokens());
    secrets.extend(env2.sandbox.issued_app_tokens());
    assert!(
        secrets.len() > 2,
        "at least one app token was issued, so the check is not vacuous"
    );
    secrets.extend(tx.operator_tokens.iter().cloned());
    let needles = needles(&secrets);

    let log = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(
        log.contains("secrets test: mix starts") && log.contains("denied"),
        "the capture really sees the gateway's log lines"
    );
    assert_no_hits("log output", &log, &needles);
    for e in [&env, &env2] {
        let audit = std::fs::read_to_string(&e.audit_log).unwrap();
        assert!(!audit.is_empty());
        assert_no_hits("audit log", &audit, &needles);
    }
    assert_no_hits("responses", &tx.text, &needles);
    env.stop().await;
    env2.stop().await;
}

/// Finds JWT-shaped strings (`eyJ` + base64url + `.`): any token at all.
fn contains_jwt(s: &str) -> bool {
    s.match_indices("eyJ").any(|(i, _)| {
        let rest = &s.as_bytes()[i..];
        let run = rest
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || **b == b'-' || **b == b'_')
            .count();
        run >= 16 && rest.get(run) == Some(&b'.')
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_binary_logs_no_secret_at_debug_level() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let mut child = tokio::process::Command::new(BIN)
        .args(["dev", "--listen", "127.0.0.1:0", "--state-file"])
        .arg(&state)
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .env("PASSGATE_LOG", "passgate=debug")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("passgate dev starts");
    let stderr = child.stderr.take().unwrap();
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            s.push_str(&l);
            s.push('\n');
        }
        s
    });
    // The banner's last line comes after the state file is written: wait for it, bounded.
    let mut out = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(l)) = lines.next_line().await {
            out.push_str(&l);
            out.push('\n');
            if l.contains("Ctrl-C stops") {
                break;
            }
        }
    })
    .await
    .expect("passgate dev printed its banner within 60 s");
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let gw = st["gateway"].as_str().unwrap();
    let kiosk = st["devices"]["kiosk-phone"]["managed_device_id"]
        .as_str()
        .unwrap();
    let url = format!("{gw}/v1.0/deviceManagement/managedDevices/{kiosk}/recoverPasscode");
    let mut tokens = Vec::new();
    for (op, want) in [("alice", 204), ("bob", 403)] {
        let t = st["operators"][op]["token"].as_str().unwrap().to_string();
        let r = send("POST", &url, &[bearer(&t)], b"").await;
        assert_eq!(r.status, want, "{op}");
        tokens.push(t);
    }
    let r = send("POST", &url, &[bearer("not.a.jwt")], b"").await;
    assert_eq!(r.status, 401);
    child.start_kill().unwrap();
    let _ = child.wait().await;
    let err = tokio::time::timeout(Duration::from_secs(10), err_task)
        .await
        .expect("stderr closed")
        .unwrap();
    assert!(
        err.contains("DEBUG") || err.contains("INFO"),
        "debug logging was on: {err}"
    );
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"reason\":\"operator_not_approved\""),
        "{audit}"
    );
    let everything = format!("{out}\n{err}\n{audit}");
    assert_no_hits(
        "passgate dev output or audit",
        &everything,
        &needles(&tokens),
    );
    assert!(
        !contains_jwt(&everything),
        "a JWT appears in passgate dev's output"
    );
    // Sandbox client secrets look like `xxx8Q~…`; none may be printed.
    assert!(
        !everything.contains("8Q~"),
        "a client secret appears in passgate dev's output"
    );
}
