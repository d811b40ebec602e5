//! Replicas sharing limit state on Redis, end to end: real `passgate serve` processes against one
//! in-process sandbox and a real `redis-server` each test starts on a free loopback port (temp
//! dir, no persistence; see `passgate::state::test_support`). Exactness across replicas and
//! restarts, failing closed while Redis is down, ACL + password and TLS, and clock skew.

use crate::common::*;
use passgate::sandbox::{SampleTenant, Sandbox};
use passgate::state::test_support::{self, RedisOptions, RedisServer};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_passgate");
/// An upper bound for a condition we wait on; never a synchronisation sleep.
const BOUND: Duration = Duration::from_secs(30);
/// The ACL password in these tests: it must never appear in an error or a readiness answer.
const REDIS_PASSWORD: &str = "s3cret-Redis-pw-7f1c";
const PASSWORD_ENV: &str = "PASSGATE_TEST_REDIS_PASSWORD";

/// One `passgate serve` process.
struct Gw {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    gateway: String,
    admin: String,
    dir: tempfile::TempDir,
}

fn field(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!("{name}="))? + name.len() + 1;
    Some(line[start..].split_whitespace().next()?.to_string())
}

/// How to start a gateway.
struct GwOpts<'a> {
    /// The `state:` block (YAML, indented at the top level).
    state: String,
    /// `per_operator`, `per_device`, `global` of the helpdesk policy.
    limits: (&'a str, &'a str, &'a str),
    /// Run under `faketime` with this offset (e.g. `+1h`).
    faketime: Option<&'a str>,
    /// Password handed in the environment (the config references it).
    password: Option<&'a str>,
    /// YAML appended to the helpdesk policy (e.g. an `approval:` block), indented 4.
    policy_extra: &'a str,
}

fn state_yaml(url: &str, extra: &str) -> String {
    format!("state:\n  redis:\n    url: \"{url}\"\n    timeout_ms: 2000\n{extra}")
}

impl Gw {
    /// Starts a gateway; `Err` carries its stderr when it exits before serving.
    fn try_start(sandbox: &Sandbox, o: &GwOpts) -> Result<Gw, String> {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit.jsonl");
        let config = dir.path().join("passgate.yaml");
        let (op, dev, global) = o.limits;
        let yaml = serve_yaml(sandbox, &audit)
            .replacen(
                "per_operator: \"20 per 1h\"",
                &format!("per_operator: \"{op}\""),
                1,
            )
            .replacen(
                "per_device: \"3 per 10m\"",
                &format!("per_device: \"{dev}\""),
                1,
            )
            .replacen(
                "global: \"200 per 1h\"\n",
                &format!("global: \"{global}\"\n{}", o.policy_extra),
                1,
            )
            // One operator drives every test here: lift the (per-process) device-lookup budget,
            // so each refusal is the shared limit's.
            .replacen(
                "  facts_cache_ttl_seconds: 60\n",
                "  facts_cache_ttl_seconds: 60\n  facts_lookups_per_operator: \"10000000 per 1h\"\n",
                1,
            );
        std::fs::write(&config, format!("{yaml}\n{}", o.state)).unwrap();
        let mut cmd = Command::new(BIN);
        if let Some(offset) = o.faketime {
            // libfaketime preloaded into passgate itself (not the `faketime` wrapper, which forks:
            // killing the wrapper would orphan the gateway).
            cmd.env("LD_PRELOAD", libfaketime().expect("libfaketime"))
                .env("FAKETIME", offset);
        }
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env(SECRET_ENV, sandbox.client_secret())
            .env("PASSGATE_LOG", "passgate=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(p) = o.password {
            cmd.env(PASSWORD_ENV, p);
        }
        let mut child = cmd.spawn().expect("serve starts");
        let lines = stderr_lines(&mut child);
        let mut g = Gw {
            child: Some(child),
            lines,
            gateway: String::new(),
            admin: String::new(),
            dir,
        };
        let admin_line = g.wait_for("admin endpoints serving")?;
        g.admin = format!(
            "http://{}",
            field(&admin_line, "admin").expect("admin address")
        );
        let line = g.wait_for("passgate serving")?;
        g.gateway = format!("http://{}", field(&line, "listen").expect("listen address"));
        Ok(g)
    }

    fn start(sandbox: &Sandbox, o: &GwOpts) -> Gw {
        Gw::try_start(sandbox, o).unwrap_or_else(|log| panic!("gateway did not start:\n{log}"))
    }

    /// Reads log lines until one contains `needle` (bounded); `Err` with everything read when
    /// the process ended first.
    fn wait_for(&self, needle: &str) -> Result<String, String> {
        let deadline = Instant::now() + BOUND;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Ok(l),
                Ok(l) => seen.push(l),
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(seen.join("\n")),
                Err(e) => panic!(
                    "no log line with {needle:?} within {BOUND:?}: {e}\n{}",
                    seen.join("\n")
                ),
            }
        }
    }

    fn url(&self, tenant: &SampleTenant) -> String {
        let id = &tenant.device("kiosk-phone").unwrap().managed_device_id;
        format!(
            "{}/v1.0/deviceManagement/managedDevices/{id}/recoverPasscode",
            self.gateway
        )
    }

    /// This gateway's audit records.
    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    async fn readyz(&self) -> Resp {
        send("GET", &format!("{}/readyz", self.admin), &[], b"").await
    }

    async fn metrics(&self) -> String {
        let r = send("GET", &format!("{}/metrics", self.admin), &[], b"").await;
        String::from_utf8_lossy(&r.body).to_string()
    }

    /// Waits (bounded) until `/readyz` has the state check in the wanted condition.
    async fn wait_state(&self, ok: bool) -> String {
        let want = if ok { "ok   state" } else { "FAIL state" };
        self.wait_readyz(want).await
    }

    /// Polls `/readyz` (bounded) until its body contains `want`.
    async fn wait_readyz(&self, want: &str) -> String {
        let deadline = Instant::now() + BOUND;
        loop {
            let body = String::from_utf8_lossy(&self.readyz().await.body).to_string();
            if body.contains(want) {
                return body;
            }
            assert!(Instant::now() < deadline, "state never {want:?}:\n{body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn sandbox() -> Sandbox {
    Sandbox::start(SampleTenant::contoso())
        .await
        .expect("sandbox starts")
}

fn tok(sandbox: &Sandbox) -> String {
    // Long enough for a gateway whose clock runs an hour ahead.
    sandbox.operator_token("alice", Duration::from_secs(3 * 3600))
}

async fn call(url: &str, token: &str) -> Resp {
    send("POST", url, &[bearer(token)], b"").await
}

/// Sends `n` requests at once, spread round-robin over `urls`.
async fn burst(urls: &[String], token: &str, n: usize) -> Vec<Resp> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = urls[i % urls.len()].clone();
            let token = token.to_string();
            tokio::spawn(async move { call(&url, &token).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("request task"));
    }
    out
}

fn tally(rs: &[Resp]) -> std::collections::BTreeMap<(u16, String), usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in rs {
        *m.entry((r.status, r.code())).or_insert(0) += 1;
    }
    m
}

fn three(sandbox: &Sandbox, redis: &RedisServer, limits: (&str, &str, &str)) -> Vec<Gw> {
    (0..3)
        .map(|_| {
            Gw::start(
                sandbox,
                &GwOpts {
                    state: state_yaml(&redis.url(), ""),
                    limits,
                    faketime: None,
                    password: None,
                    policy_extra: "",
                },
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_sharing_redis_admit_one_of_300_on_a_per_device_limit() {
    if !test_support::available() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default());
    let sb = sandbox().await;
    let gws = three(&sb, &redis, ("1000 per 1h", "1 per 1h", "1000 per 1h"));
    let urls: Vec<String> = gws.iter().map(|g| g.url(sb.tenant())).collect();
    let rs = burst(&urls, &tok(&sb), 300).await;
    let t = tally(&rs);
    eprintln!("300 over 3 gateways, 1 per 1h per device: {t:?}");
    assert_eq!(t.get(&(204, String::new())), Some(&1), "{t:?}");
    assert_eq!(t.get(&(429, "rate_limited".into())), Some(&299), "{t:?}");
    for r in rs.iter().filter(|r| r.status == 429) {
        let retry: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After on every 429");
        assert!((3500..=3600).contains(&retry), "Retry-After {retry}");
    }
    assert_eq!(
        sb.recover_passcode_calls().len(),
        1,
        "exactly one forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_sharing_redis_admit_exactly_three_on_a_per_operator_limit() {
    if !test_support::available() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default());
    let sb = sandbox().await;
    let gws = three(&sb, &redis, ("3 per 1h", "1000 per 1h", "1000 per 1h"));
    let urls: Vec<String> = gws.iter().map(|g| g.url(sb.tenant())).collect();
    let rs = burst(&urls, &tok(&sb), 60).await;
    let t = tally(&rs);
    eprintln!("60 over 3 gateways, 3 per 1h per operator: {t:?}");
    assert_eq!(t.get(&(204, String::new())), Some(&3), "{t:?}");
    assert_eq!(t.get(&(429, "rate_limited".into())), Some(&57), "{t:?}");
    assert_eq!(sb.recover_passcode_calls().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cap_holds_across_gateways_and_policies() {
    if !test_support::available() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default());
    let sb = sandbox().await;
    // Two replicas; the helpdesk policy (alice) and the automation policy both cover the kiosk
    // phone, with room of their own; the top-level cap allows two recoveries of it in all.
    let gws: Vec<Gw> = (0..2)
        .map(|_| {
            Gw::start(
                &sb,
                &GwOpts {
                    state: format!(
                        "{}limits:\n  per_device: \"2 per 1h\"\n",
                        state_yaml(&redis.url(), "")
                    ),
                    limits: ("1000 per 1h", "1000 per 1h", "1000 per 1h"),
                    faketime: None,
                    password: None,
                    policy_extra: "",
                },
            )
        })
        .collect();
    let urls: Vec<String> = gws.iter().map(|g| g.url(sb.tenant())).collect();
    let alice = tok(&sb);
    let automation = sb.operator_token("automation", Duration::from_secs(3 * 3600));
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let url = urls[i % 2].clone();
            let token = if i % 4 < 2 { &alice } else { &automation }.clone();
            tokio::spawn(async move { call(&url, &token).await })
        })
        .collect();
    let mut rs = Vec::new();
    for t in tasks {
        rs.push(t.await.expect("request task"));
    }
    let t = tally(&rs);
    eprintln!("40 over 2 gateways and 2 policies, cap 2 per 1h per device: {t:?}");
    assert_eq!(t.get(&(204, String::new())), Some(&2), "{t:?}");
    assert_eq!(t.get(&(429, "rate_limited".into())), Some(&38), "{t:?}");
    assert_eq!(sb.recover_passcode_calls().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_keeps_windows_and_a_redis_outage_fails_closed_until_it_is_back() {
    if !test_support::available() {
        return;
    }
    let mut redis = RedisServer::start(RedisOptions::default());
    let sb = sandbox().await;
    let opts = GwOpts {
        state: state_yaml(&redis.url(), ""),
        limits: ("1000 per 1h", "1 per 1h", "1000 per 1h"),
        faketime: None,
        password: None,
        policy_extra: "",
    };
    let token = tok(&sb);
    let mut gw = Gw::start(&sb, &opts);
    assert_eq!(call(&gw.url(sb.tenant()), &token).await.status, 204);
    // A restarted gateway remembers: the window lives in Redis.
    gw.kill();
    let gw = Gw::start(&sb, &opts);
    let r = call(&gw.url(sb.tenant()), &token).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited".into()));

    // Redis down: every request is refused 503 limits_unavailable, nothing is forwarded.
    redis.stop();
    let before = sb.recover_passcode_calls().len();
    for _ in 0..5 {
        let r = call(&gw.url(sb.tenant()), &token).await;
        assert_eq!((r.status, r.code()), (503, "limits_unavailable".into()));
    }
    assert_eq!(
        sb.recover_passcode_calls().len(),
        before,
        "nothing forwarded"
    );
    let audited = gw
        .audit()
        .iter()
        .filter(|r| {
            r["kind"] == "decision"
                && r["decision"] == "deny"
                && r["reason"] == "limits_unavailable"
        })
        .count();
    assert_eq!(audited, 5, "every refusal audited with its reason");
    let ready = gw.wait_state(false).await;
    assert_eq!(gw.readyz().await.status, 503, "{ready}");
    let m = gw.metrics().await;
    let errors = metric_value(&m, "passgate_state_errors_total", &["backend=\"redis\""]);
    assert!(errors >= 5.0, "state errors counted: {errors}");
    assert!(
        metric_value(
            &m,
            "passgate_requests_total",
            &["reason=\"limits_unavailable\""]
        ) >= 5.0,
        "refusals counted by reason"
    );

    // Back (empty: no persistence): service resumes by itself, limits enforced again.
    redis.restart();
    gw.wait_state(true).await;
    let r = call(&gw.url(sb.tenant()), &token).await;
    assert_eq!(r.status, 204, "{}", r.code());
    let r = call(&gw.url(sb.tenant()), &token).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited".into()));
    assert_eq!(sb.recover_passcode_calls().len(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acl_user_with_password_works_and_a_wrong_one_is_named_never_shown() {
    if !test_support::available() {
        return;
    }
    let redis = RedisServer::start(RedisOptions {
        user: Some(("passgate".into(), REDIS_PASSWORD.into())),
        tls: None,
    });
    let sb = sandbox().await;
    let acl = format!("    username: passgate\n    password: env:{PASSWORD_ENV}\n");
    let opts = |password| GwOpts {
        state: state_yaml(&redis.url(), &acl),
        limits: ("1000 per 1h", "1 per 1h", "1000 per 1h"),
        faketime: None,
        password: Some(password),
        policy_extra: "",
    };
    let gw = Gw::start(&sb, &opts(REDIS_PASSWORD));
    let token = tok(&sb);
    assert_eq!(call(&gw.url(sb.tenant()), &token).await.status, 204);
    gw.wait_state(true).await;

    // A wrong password is a start-up error naming the cause, never the secret.
    let wrong = "not-the-Redis-pw-2b9e";
    let log = match Gw::try_start(&sb, &opts(wrong)) {
        Err(log) => log,
        Ok(_) => panic!("a gateway with a wrong Redis password started"),
    };
    eprintln!("start-up error: {log}");
    assert!(log.contains("auth"), "{log}");
    assert!(
        log.contains("WRONGPASS") || log.contains("authentication"),
        "{log}"
    );
    assert!(
        !log.contains(wrong) && !log.contains(REDIS_PASSWORD),
        "{log}"
    );

    // A password changed under a running gateway: readiness names the cause, not the secret.
    let admin =
        redis::Client::open(redis_info(&redis.url(), REDIS_PASSWORD)).expect("admin client");
    let mut c = admin
        .get_multiplexed_async_connection()
        .await
        .expect("admin connects");
    let rotated = "rotated-Redis-pw-93d1";
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("passgate")
        .arg("resetpass")
        .arg(format!(">{rotated}"))
        .query_async(&mut c)
        .await
        .expect("password rotated");
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("passgate")
        .arg("SKIPME")
        .arg("yes")
        .query_async(&mut c)
        .await
        .expect("connections killed");
    // The first probe may see the killed connection; the reconnect then fails authentication.
    let ready = gw
        .wait_readyz(
            "FAIL state: rate-limit state (redis) unavailable, requests fail closed: auth:",
        )
        .await;
    eprintln!("readiness after rotation: {ready}");
    assert!(ready.contains("authentication failed"), "{ready}");
    for secret in [REDIS_PASSWORD, rotated] {
        assert!(!ready.contains(secret), "{ready}");
        assert!(!gw.metrics().await.contains(secret));
    }
    let r = call(&gw.url(sb.tenant()), &token).await;
    assert_eq!((r.status, r.code()), (503, "limits_unavailable".into()));
    assert!(!String::from_utf8_lossy(&r.body).contains(REDIS_PASSWORD));
}

/// The admin connection's settings: the ACL user with a password.
fn redis_info(url: &str, password: &str) -> redis::ConnectionInfo {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info().expect("url");
    let r = info
        .redis_settings()
        .clone()
        .set_username("passgate")
        .set_password(password);
    info.set_redis_settings(r)
}

/// A test CA and a server certificate for `localhost`, as PEM files in `dir`.
fn test_pki(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "passgate test redis CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("redis.pem"),
        dir.join("redis.key"),
        dir.join("ca.pem"),
    );
    std::fs::write(&paths.0, cert.pem()).unwrap();
    std::fs::write(&paths.1, key.serialize_pem()).unwrap();
    std::fs::write(&paths.2, ca_cert.pem()).unwrap();
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rediss_with_a_test_ca_works_and_an_untrusted_certificate_is_a_clear_error() {
    if !test_support::available() {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    let (cert, key, ca) = test_pki(pki.path());
    let redis = RedisServer::start(RedisOptions {
        user: Some(("passgate".into(), REDIS_PASSWORD.into())),
        tls: Some((cert, key, ca.clone())),
    });
    assert!(redis.url().starts_with("rediss://localhost:"));
    let sb = sandbox().await;
    let acl = format!("    username: passgate\n    password: env:{PASSWORD_ENV}\n");
    let with_ca = format!("{acl}    ca_file: \"{}\"\n", ca.display());
    let gw = Gw::start(
        &sb,
        &GwOpts {
            state: state_yaml(&redis.url(), &with_ca),
            limits: ("1000 per 1h", "1 per 1h", "1000 per 1h"),
            faketime: None,
            password: Some(REDIS_PASSWORD),
            policy_extra: "",
        },
    );
    let token = tok(&sb);
    assert_eq!(call(&gw.url(sb.tenant()), &token).await.status, 204);
    let r = call(&gw.url(sb.tenant()), &token).await;
    assert_eq!((r.status, r.code()), (429, "rate_limited".into()));
    gw.wait_state(true).await;

    // Without the CA the server's certificate is not trusted: a start-up error saying so.
    let log = match Gw::try_start(
        &sb,
        &GwOpts {
            state: state_yaml(&redis.url(), &acl),
            limits: ("1000 per 1h", "1 per 1h", "1000 per 1h"),
            faketime: None,
            password: Some(REDIS_PASSWORD),
            policy_extra: "",
        },
    ) {
        Err(log) => log,
        Ok(_) => panic!("a gateway trusting no CA for the Redis certificate started"),
    };
    eprintln!("start-up error without ca_file: {log}");
    assert!(log.to_ascii_lowercase().contains("certificate"), "{log}");
    assert!(!log.contains(REDIS_PASSWORD), "{log}");
}

/// The libfaketime shared object of Debian's `faketime` package.
fn libfaketime() -> Option<std::path::PathBuf> {
    let lib = std::fs::read_dir("/usr/lib").ok()?.find_map(|e| {
        let p = e.ok()?.path().join("faketime/libfaketime.so.1");
        p.exists().then_some(p)
    });
    lib.or_else(|| {
        let p = std::path::PathBuf::from("/usr/lib/faketime/libfaketime.so.1");
        p.exists().then_some(p)
    })
}

fn faketime_available() -> bool {
    let ok = libfaketime().is_some();
    if !ok {
        assert!(
            std::env::var("PASSGATE_REQUIRE_TOOLS").is_err(),
            "faketime missing: apt-get install faketime"
        );
        eprintln!("SKIPPED: faketime not installed (apt-get install faketime)");
    }
    ok
}

/// A gateway whose clock runs an hour ahead (libfaketime preloaded: wall clock and
/// monotonic clock) shares windows with a correct one: Redis's clock decides, so neither can
/// admit more than the limit, and Retry-After is the same from both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_an_hour_ahead_cannot_admit_extra_requests() {
    if !test_support::available() || !faketime_available() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default());
    let sb = sandbox().await;
    let opts = |faketime| GwOpts {
        state: state_yaml(&redis.url(), ""),
        limits: ("2 per 1h", "1000 per 1h", "1000 per 1h"),
        faketime,
        password: None,
        policy_extra: "",
    };
    let honest = Gw::start(&sb, &opts(None));
    let ahead = Gw::start(&sb, &opts(Some("+1h")));
    let token = tok(&sb);
    // The skewed process really runs an hour ahead: its Date header says so.
    let r = call(&ahead.url(sb.tenant()), &token).await;
    assert_eq!(r.status, 204, "{}", r.code());
    let date = r.header("date").expect("Date header");
    let their = chrono::DateTime::parse_from_rfc2822(&date).expect("HTTP date");
    let skew = their.timestamp() - chrono::Utc::now().timestamp();
    assert!((3500..=3700).contains(&skew), "faketime skew is {skew} s");

    assert_eq!(call(&honest.url(sb.tenant()), &token).await.status, 204);
    let mut refused = Vec::new();
    for gw in [&ahead, &honest, &ahead, &honest] {
        let r = call(&gw.url(sb.tenant()), &token).await;
        assert_eq!((r.status, r.code()), (429, "rate_limited".into()));
        refused.push(
            r.header("retry-after")
                .and_then(|v| v.parse::<u64>().ok())
                .expect("Retry-After"),
        );
    }
    eprintln!("Retry-After from ahead/honest: {refused:?}");
    // Both say "the first admission leaves the window in about an hour".
    assert!(
        refused.iter().all(|s| (3500..=3600).contains(s)),
        "{refused:?}"
    );
    assert_eq!(sb.recover_passcode_calls().len(), 2);
}

/// Three replicas share approval requests through Redis: a request opened on the first is
/// approved through the second's API and used on the third; and of ten concurrent repeats across
/// all three with one approval, exactly one is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approvals_are_shared_and_used_once_across_replicas() {
    if !test_support::available() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default());
    let sb = sandbox().await;
    let bob = sb.tenant().operator("bob").expect("bob").oid.clone();
    let approval = format!("    approval:\n      approvers:\n        users: [\"{bob}\"]\n");
    let gws: Vec<Gw> = (0..3)
        .map(|_| {
            Gw::start(
                &sb,
                &GwOpts {
                    state: state_yaml(&redis.url(), ""),
                    limits: ("1000 per 1h", "1000 per 1h", "1000 per 1h"),
                    faketime: None,
                    password: None,
                    policy_extra: &approval,
                },
            )
        })
        .collect();
    let urls: Vec<String> = gws.iter().map(|g| g.url(sb.tenant())).collect();
    let alice = tok(&sb);
    let opened = call(&urls[0], &alice).await;
    assert_eq!(opened.code(), "approval_required", "{:?}", opened.json());
    let id = opened.header("passgate-approval-id").unwrap();
    let pending = call(&urls[1], &alice).await;
    assert_eq!(
        pending.code(),
        "approval_pending",
        "the other replica knows it"
    );
    assert_eq!(pending.header("passgate-approval-id"), Some(id.clone()));
    let bob_token = sb.operator_token("bob", Duration::from_secs(3600));
    let approved = send(
        "POST",
        &format!("{}/passgate/v1/approvals/{id}/approve", gws[1].gateway),
        &[bearer(&bob_token)],
        b"",
    )
    .await;
    assert_eq!(approved.status, 200, "{:?}", approved.json());
    let used = call(&urls[2], &alice).await;
    assert_eq!(
        used.status,
        204,
        "used on the third replica: {:?}",
        used.json()
    );
    // A second approval, then ten concurrent repeats across the three replicas.
    let again = call(&urls[0], &alice).await;
    assert_eq!(again.code(), "approval_required");
    let id = again.header("passgate-approval-id").unwrap();
    let approved = send(
        "POST",
        &format!("{}/passgate/v1/approvals/{id}/approve", gws[1].gateway),
        &[bearer(&bob_token)],
        b"",
    )
    .await;
    assert_eq!(approved.status, 200);
    let rs = burst(&urls, &alice, 10).await;
    let t = tally(&rs);
    eprintln!("10 repeats over 3 replicas with one approval: {t:?}");
    assert_eq!(
        t.get(&(204, String::new())),
        Some(&1),
        "one approval, one use: {t:?}"
    );
    assert_eq!(sb.recover_passcode_calls().len(), 2);
    let consumed: usize = gws
        .iter()
        .map(|g| {
            g.audit()
                .iter()
                .filter(|r| r["kind"] == "approval" && r["event"] == "consumed")
                .count()
        })
        .sum();
    assert_eq!(consumed, 2);
    for g in &gws {
        passgate::audit::verify_file(&g.dir.path().join("audit.jsonl"))
            .expect("each replica's chain verifies");
    }
}
