//! The console in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver on a free loopback port, started and ended by this test). An approver signs in
//! on the emulated Entra page, a cross-site form fails, the approval goes through and the
//! operator's retry is forwarded; an auditor searches, reads a request's story, checks the chain
//! and exports, and is refused the approvals. Screenshots of the main pages are taken on the
//! way (into `docs/console/` with `PASSGATE_SCREENSHOTS=1`, else a temporary directory).
//! Without chromium/chromedriver the tests skip, unless `PASSGATE_REQUIRE_TOOLS` is set (CI).

use crate::common::*;
use crate::console::{console_records, open_request};
use fantoccini::{Client, ClientBuilder, Locator};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether chromium and chromedriver can run; absent in CI (`PASSGATE_REQUIRE_TOOLS`) it fails.
fn browser_available() -> bool {
    let runs = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let ok = runs("chromium") && runs("chromedriver");
    if !ok {
        assert!(
            std::env::var_os("PASSGATE_REQUIRE_TOOLS").is_none(),
            "chromium or chromedriver missing: apt-get install chromium chromium-driver"
        );
        eprintln!("SKIPPED: chromium/chromedriver not installed (apt-get install chromium chromium-driver)");
    }
    ok
}

/// One Chromium at a time: on a 2-core machine two browsers beside the rest of the suite slow
/// the timing-sensitive tests of other modules.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// chromedriver and one headless Chromium session; both end with it (by their own handles).
struct Driver {
    client: Option<Client>,
    _chromedriver: ChildGuard,
    _profile: tempfile::TempDir,
    shots: PathBuf,
    _shots_tmp: Option<tempfile::TempDir>,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let guard = ChildGuard(child);
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = tokio::time::timeout(
                Duration::from_secs(2),
                client().request(
                    http::Request::get(format!("{base}/status"))
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap(),
                ),
            )
            .await
            {
                if r.is_ok_and(|r| r.status() == 200) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,800", "--hide-scrollbars", "--no-first-run",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&base)
            .await
            .expect("a Chromium session");
        let (shots, tmp) = if std::env::var_os("PASSGATE_SCREENSHOTS").is_some() {
            let d = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/console"));
            std::fs::create_dir_all(&d).unwrap();
            (d, None)
        } else {
            let t = tempfile::tempdir().unwrap();
            (t.path().to_path_buf(), Some(t))
        };
        Driver {
            client: Some(client),
            _chromedriver: guard,
            _profile: profile,
            shots,
            _shots_tmp: tmp,
        }
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    async fn shot(&self, name: &str) {
        let png = self.c().screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
        std::fs::write(self.shots.join(name), png).unwrap();
    }

    /// The page's HTML, without the `<wbr>` line-break hints.
    async fn source(&self) -> String {
        self.c().source().await.unwrap().replace("<wbr>", "")
    }

    /// Waits (bounded) until the page's source contains `needle`.
    async fn wait_text(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.source().await;
            if s.contains(needle) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "page never showed {needle:?}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        self.c()
            .wait()
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    async fn path(&self) -> String {
        self.c().current_url().await.unwrap().path().to_string()
    }

    async fn end(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

/// Serves `html` to every request on a free loopback port; returns its URL on `localhost` (a
/// different site from the console's `127.0.0.1`). The task ends with the test's runtime.
async fn forged_form_site(html: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
        html.len()
    );
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(answer.as_bytes()).await;
        }
    });
    format!("http://localhost:{port}/")
}

/// Sign-in through the emulated Entra page as `user`, from `start` on the console.
async fn browser_sign_in(d: &Driver, start: &str, user: &str, shot: Option<&str>) {
    d.c().goto(start).await.unwrap();
    d.wait_text("Pick an account").await;
    if let Some(name) = shot {
        d.shot(name).await;
    }
    d.click(&format!("#login-{user}")).await;
    // The callback's page moves on by itself (meta refresh: no script anywhere).
    d.wait_text("Sign out").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_an_approver_approves_and_the_operators_retry_is_forwarded() {
    if !browser_available() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let env = start().await;
    let console = env.console_url.clone().unwrap();
    let id = open_request(&env).await;
    let d = Driver::start().await;
    browser_sign_in(
        &d,
        &format!("{console}/"),
        "dana",
        Some("entra-sign-in.png"),
    )
    .await;
    let page = d.wait_text("Pending approvals").await;
    assert_eq!(d.path().await, "/approvals");
    assert!(page.contains("WH-SCAN-07") && page.contains("alice@contoso.onmicrosoft.com"));
    d.shot("pending-approvals.png").await;
    // A form on another site (localhost, not 127.0.0.1) posting an approval: the browser sends
    // no Strict cookie and a foreign Origin, so the console refuses it and nothing changes.
    let forged = forged_form_site(&format!(
        "<!doctype html><form method=post action=\"{console}/approvals/{id}\"><input name=decision value=approve><button id=go>go</button></form>"
    ))
    .await;
    d.c().goto(&forged).await.unwrap();
    d.click("#go").await;
    d.wait_text("Nothing was changed").await;
    assert!(
        crate::console::console_records(&env)
            .iter()
            .all(|r| r["event"] == "sign_in"),
        "the forged POST did nothing"
    );
    // The real decision, from the console's own page.
    d.c().goto(&format!("{console}/approvals")).await.unwrap();
    d.c()
        .wait()
        .for_element(Locator::Id(&format!("comment-{id}")))
        .await
        .unwrap()
        .send_keys("INC0042: scanner locked out, owner verified by phone")
        .await
        .unwrap();
    d.click(&format!("#approve-{id}")).await;
    d.wait_text("Approved.").await;
    assert_eq!(d.path().await, format!("/approvals/{id}"));
    d.shot("approval-approved.png").await;
    no_calls(&env);
    let r = send(
        "POST",
        &action_url(&env, "warehouse-phone"),
        &[bearer(&token(&env, "alice"))],
        b"",
    )
    .await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 1);
    let approve = console_records(&env)
        .into_iter()
        .find(|r| r["event"] == "approve")
        .expect("audited");
    assert_eq!(approve["result"], "ok");
    // Signing out from the page ends the session.
    d.click("header form button").await;
    d.wait_text("You are signed out").await;
    d.c().goto(&format!("{console}/approvals")).await.unwrap();
    d.wait_text("Pick an account").await;
    d.end().await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_an_auditor_searches_exports_and_is_refused_approvals() {
    if !browser_available() {
        return;
    }
    let _one = ONE_BROWSER.lock().await;
    let env = start().await;
    let console = env.console_url.clone().unwrap();
    for who in ["alice", "bob"] {
        send(
            "POST",
            &action_url(&env, "kiosk-phone"),
            &[bearer(&token(&env, who))],
            b"",
        )
        .await;
    }
    open_request(&env).await;
    let d = Driver::start().await;
    browser_sign_in(&d, &format!("{console}/audit"), "erin", None).await;
    d.wait_text("Audit search").await;
    d.c()
        .wait()
        .for_element(Locator::Id("f-operator"))
        .await
        .unwrap()
        .send_keys("alice@contoso.onmicrosoft.com")
        .await
        .unwrap();
    d.click("#search").await;
    // The filtered page (the unfiltered one has a pager too): the form shows the filter.
    let page = d.wait_text("value=\"alice@contoso.onmicrosoft.com\"").await;
    assert!(page.contains("approval_required") && page.contains("allowed"));
    assert!(!page.contains("operator_not_approved"), "bob filtered out");
    d.shot("audit-search.png").await;
    let allowed = decision_records(&env)
        .into_iter()
        .find(|r| r["reason"] == "allowed")
        .unwrap();
    let rid = allowed["request_id"].as_str().unwrap().to_string();
    d.click(&format!("a[href='/audit/requests/{rid}']")).await;
    d.wait_text("Timeline").await;
    d.shot("request-story.png").await;
    d.c().goto(&format!("{console}/audit/chain")).await.unwrap();
    d.wait_text("Verified").await;
    d.shot("chain-status.png").await;
    d.c().goto(&format!("{console}/audit")).await.unwrap();
    d.click("#export").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !console_records(&env).iter().any(|r| r["event"] == "export") {
        assert!(Instant::now() < deadline, "the export was never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Approvals are for approvers.
    d.c().goto(&format!("{console}/approvals")).await.unwrap();
    d.wait_text("This part of the console is for approvers")
        .await;
    d.end().await;
    env.stop().await;
}
