//! The web console (docs/console.md), over plain HTTP: sign-in through the emulated Entra ID's
//! authorization endpoint (code + PKCE, state and nonce), session cookies and their server-side
//! end, roles, CSRF and origin checks, security headers on every page, approvals through the
//! console taking the API's path, audit records for every action, and no token, code or session
//! id in a URL, a log line or the audit trail. `console_browser.rs` drives the same in Chromium.

use crate::common::*;
use passgate::dev::DevEnv;
use std::collections::BTreeMap;

/// The sample users (src/sandbox/tenant.rs): dana approves warehouse phones, erin audits.
pub const DANA: &str = "2e9b7c41-5d3a-4f86-a1c2-8b7e6d5f4a39";
pub const ERIN: &str = "9a3c5e71-2b4d-4c8f-8e6a-0d1f3b5c7e92";

/// A cookie jar and the URLs it visited: a browser, as far as these tests need one.
pub struct Browser {
    pub base: String,
    pub jar: BTreeMap<String, String>,
    /// Every URL requested and every Location received.
    pub urls: Vec<String>,
    /// Every Set-Cookie received, as sent.
    pub set_cookies: Vec<String>,
}

pub fn location(r: &Resp) -> String {
    r.header("location").expect("a Location header")
}

impl Browser {
    pub fn new(env: &DevEnv) -> Browser {
        Browser {
            base: env.console_url.clone().expect("the console runs"),
            jar: BTreeMap::new(),
            urls: Vec::new(),
            set_cookies: Vec::new(),
        }
    }

    /// One request to an absolute URL; cookies go only to the console.
    pub async fn raw(
        &mut self,
        method: &str,
        url: &str,
        form: Option<&[(&str, &str)]>,
        headers: &[(&str, String)],
    ) -> Resp {
        self.urls.push(url.to_string());
        let mut h: Vec<(&str, String)> = headers.to_vec();
        if url.starts_with(&self.base) && !self.jar.is_empty() {
            let c: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            h.push(("cookie", c.join("; ")));
        }
        let body = match form {
            Some(f) => {
                h.push((
                    "content-type",
                    "application/x-www-form-urlencoded".to_string(),
                ));
                let mut s = form_urlencoded::Serializer::new(String::new());
                for (k, v) in f {
                    s.append_pair(k, v);
                }
                s.finish().into_bytes()
            }
            None => Vec::new(),
        };
        let r = send(method, url, &h, &body).await;
        if url.starts_with(&self.base) {
            for v in r.headers.get_all("set-cookie") {
                let v = v.to_str().unwrap().to_string();
                self.set_cookies.push(v.clone());
                let (kv, attrs) = v.split_once(';').unwrap_or((&v, ""));
                let (k, val) = kv.split_once('=').unwrap();
                if attrs.contains("Max-Age=0") {
                    self.jar.remove(k);
                } else {
                    self.jar.insert(k.to_string(), val.to_string());
                }
            }
        }
        if let Some(l) = r.header("location") {
            self.urls.push(l);
        }
        r
    }

    pub async fn get(&mut self, path: &str) -> Resp {
        let url = format!("{}{path}", self.base);
        self.raw("GET", &url, None, &[]).await
    }

    /// A form POST as the console's own page sends it (same origin).
    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Resp {
        let url = format!("{}{path}", self.base);
        let origin = self.base.clone();
        self.raw("POST", &url, Some(form), &[("origin", origin)])
            .await
    }

    pub fn session(&self) -> Option<String> {
        self.jar.get("passgate_session").cloned()
    }
}

/// The body as text, without the `<wbr>` line-break hints the pages put into long words.
pub fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).replace("<wbr>", "")
}

/// The CSRF token in a page's forms.
pub fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("the page has a form with a CSRF token");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Picks `user` on the emulated Entra sign-in page for the authorization request `authorize`
/// (its parameters edited by `edit`); returns where Entra redirects the browser.
pub async fn entra_pick(
    authorize: &str,
    user: &str,
    edit: impl Fn(&mut Vec<(String, String)>),
) -> String {
    let u = url::Url::parse(authorize).unwrap();
    let mut params: Vec<(String, String)> = u.query_pairs().into_owned().collect();
    edit(&mut params);
    // The page itself: every sample user offered, each a button.
    let page = send("GET", authorize, &[], b"").await;
    assert_eq!(page.status, 200, "{}", text(&page));
    assert!(text(&page).contains(&format!("value=\"{user}\"")));
    let mut form: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    form.push(("login", user));
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &form {
        s.append_pair(k, v);
    }
    let endpoint = format!("{}{}", u.origin().ascii_serialization(), u.path());
    let r = send(
        "POST",
        &endpoint,
        &[(
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        )],
        s.finish().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 302, "{}", text(&r));
    location(&r)
}

/// Starts a sign-in in `b`: the console's redirect to Entra's authorization endpoint.
pub async fn start_sign_in(env: &DevEnv, b: &mut Browser) -> String {
    let r = b.get("/auth/sign-in").await;
    assert_eq!(r.status, 303, "{}", text(&r));
    let to = location(&r);
    assert!(
        to.starts_with(&format!("{}/", env.sandbox.authority_url())),
        "{to}"
    );
    for p in [
        "response_type=code",
        "code_challenge_method=S256",
        "code_challenge=",
        "nonce=",
        "state=",
        "scope=openid",
    ] {
        assert!(to.contains(p), "{p} in {to}");
    }
    to
}

/// A full sign-in as `user`; returns the browser and the final status of the callback.
pub async fn sign_in(env: &DevEnv, user: &str) -> (Browser, Resp) {
    let mut b = Browser::new(env);
    let authorize = start_sign_in(env, &mut b).await;
    let back = entra_pick(&authorize, user, |_| {}).await;
    assert!(back.starts_with(&b.base), "{back}");
    let r = b.raw("GET", &back, None, &[]).await;
    (b, r)
}

/// Signed in as a console user (the callback's page moves on to the console).
pub async fn signed_in(env: &DevEnv, user: &str) -> Browser {
    let (b, r) = sign_in(env, user).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(text(&r).contains("http-equiv=\"refresh\""));
    assert!(b.session().is_some(), "a session cookie");
    b
}

pub fn console_records(env: &DevEnv) -> Vec<serde_json::Value> {
    audit_records(env)
        .into_iter()
        .filter(|r| r["kind"] == "console")
        .collect()
}

/// alice's call on the warehouse phone opens an approval request; returns its id.
pub async fn open_request(env: &DevEnv) -> String {
    let r = send(
        "POST",
        &action_url(env, "warehouse-phone"),
        &[bearer(&token(env, "alice"))],
        b"",
    )
    .await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "approval_required");
    r.header("passgate-approval-id")
        .expect("the approval id header")
}

fn assert_hardened(what: &str, r: &Resp) {
    let csp = r
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no CSP"));
    for d in [
        "default-src 'none'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(d), "{what}: {d} in {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("http"),
        "{what}: {csp}"
    );
    assert_eq!(
        r.header("x-frame-options").as_deref(),
        Some("DENY"),
        "{what}"
    );
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(
        r.header("referrer-policy").as_deref(),
        Some("same-origin"),
        "{what}"
    );
    let body = text(r);
    assert!(!body.contains("<script"), "{what}: no script");
    assert!(!body.contains(" style="), "{what}: no inline style");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_sets_a_strict_httponly_session_and_every_page_is_hardened() {
    let env = start().await;
    let mut b = Browser::new(&env);
    // Not signed in: a page sends the browser to sign in, remembering where it was going.
    let r = b.get("/audit?reason=allowed").await;
    assert_eq!(r.status, 303);
    assert_hardened("redirect", &r);
    assert_eq!(
        location(&r),
        "/auth/sign-in?next=%2Faudit%3Freason%3Dallowed&ended=absent"
    );
    let authorize = start_sign_in(&env, &mut b).await;
    let signin = b
        .set_cookies
        .iter()
        .find(|c| c.starts_with("passgate_signin="))
        .expect("a sign-in cookie")
        .clone();
    // It must come back on Entra's cross-site redirect: Lax, short-lived, HttpOnly.
    for a in ["HttpOnly", "SameSite=Lax", "Max-Age=600", "Path=/"] {
        assert!(signin.contains(a), "{a} in {signin}");
    }
    let back = entra_pick(&authorize, "erin", |_| {}).await;
    let r = b.raw("GET", &back, None, &[]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_hardened("signed in", &r);
    let session = b
        .set_cookies
        .iter()
        .find(|c| c.starts_with("passgate_session="))
        .expect("a session cookie")
        .clone();
    for a in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(session.contains(a), "{a} in {session}");
    }
    // Loopback http in the sandbox: the only case without Secure (and without __Host-).
    assert!(!session.contains("Secure") && !session.contains("Domain"));
    assert!(
        b.set_cookies
            .iter()
            .any(|c| c.starts_with("passgate_signin=;") && c.contains("Max-Age=0")),
        "the sign-in cookie is cleared"
    );
    let id = b.session().unwrap();
    assert_eq!(id.len(), 43, "256 random bits");
    for path in [
        "/",
        "/audit",
        "/audit/chain",
        "/approvals",
        "/static/console.css",
        "/no-such-page",
        "/signed-out",
        "/audit/requests/not-a-guid",
    ] {
        let r = b.get(path).await;
        assert!(r.status < 500, "{path}: {}", r.status);
        assert_hardened(path, &r);
    }
    let css = b.get("/static/console.css").await;
    assert_eq!(
        css.header("content-type").as_deref(),
        Some("text/css; charset=utf-8")
    );
    let r = b.get("/audit").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert!(text(&r).contains("Erin Auditor"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_in_the_console_takes_the_apis_path_and_the_retry_is_forwarded() {
    let env = start().await;
    let id = open_request(&env).await;
    let mut dana = signed_in(&env, "dana").await;
    let r = dana.get("/approvals").await;
    assert_eq!(r.status, 200);
    let page = text(&r);
    assert!(page.contains(&format!("/approvals/{id}")), "{page}");
    for shown in [
        "alice@contoso.onmicrosoft.com",
        "WH-SCAN-07",
        "warehouse.scanner@contoso.onmicrosoft.com",
        "Windows Phone",
        "helpdesk-warehouse-phones",
    ] {
        assert!(page.contains(shown), "{shown} on the pending page");
    }
    let csrf = csrf_of(&page);
    let r = dana
        .post(
            &format!("/approvals/{id}"),
            &[
                ("csrf", &csrf),
                ("decision", "approve"),
                ("comment", "INC0042 checked with the warehouse"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    assert_eq!(location(&r), format!("/approvals/{id}?done=approved"));
    let r = dana.get(&location(&r)).await;
    assert!(text(&r).contains("Approved."));
    // The operator's retry goes through, once.
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
    // Same records as through the API, plus the console's own.
    let recs = audit_records(&env);
    let approved = recs
        .iter()
        .find(|r| r["kind"] == "approval" && r["event"] == "approved")
        .expect("the approval record");
    assert_eq!(approved["actor"]["oid"], DANA);
    assert_eq!(approved["comment"], "INC0042 checked with the warehouse");
    let c = console_records(&env);
    let approve = c
        .iter()
        .find(|r| r["event"] == "approve")
        .expect("a console approve record");
    assert_eq!(approve["result"], "ok");
    assert_eq!(approve["approval_id"], id.as_str());
    assert_eq!(approve["person"]["oid"], DANA);
    assert!(approved["seq"].as_u64() < approve["seq"].as_u64());
    let sign_in = c.iter().find(|r| r["event"] == "sign_in").unwrap();
    assert_eq!(sign_in["details"]["roles"], "approver");
    assert_eq!(sign_in["session"], approve["session"], "one session");
    verify_audit(&env);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_and_origin_checks_refuse_and_nothing_changes() {
    let env = start().await;
    let id = open_request(&env).await;
    let mut dana = signed_in(&env, "dana").await;
    let good = csrf_of(&text(&dana.get("/approvals").await));
    let path = format!("/approvals/{id}");
    let r = dana.post(&path, &[("decision", "approve")]).await;
    assert_eq!(r.status, 403, "no token");
    assert!(text(&r).contains("Nothing was changed"));
    let r = dana
        .post(&path, &[("csrf", "forged-token"), ("decision", "approve")])
        .await;
    assert_eq!(r.status, 403, "wrong token");
    // Another origin, even with the right token (a page elsewhere cannot know it, but still).
    let url = format!("{}{path}", dana.base);
    let r = dana
        .raw(
            "POST",
            &url,
            Some(&[("csrf", &good), ("decision", "approve")]),
            &[("origin", "http://evil.example".to_string())],
        )
        .await;
    assert_eq!(r.status, 403, "cross-origin");
    let r = dana
        .raw(
            "POST",
            &url,
            Some(&[("csrf", &good), ("decision", "deny")]),
            &[("sec-fetch-site", "cross-site".to_string())],
        )
        .await;
    assert_eq!(r.status, 403, "cross-site");
    // Another session's token is no good either.
    let mut other = signed_in(&env, "dana").await;
    let theirs = csrf_of(&text(&other.get("/approvals").await));
    assert_ne!(theirs, good);
    let r = dana
        .post(&path, &[("csrf", &theirs), ("decision", "approve")])
        .await;
    assert_eq!(r.status, 403, "another session's token");
    // Sign-out needs the token too.
    let r = dana.post("/auth/sign-out", &[]).await;
    assert_eq!(r.status, 403);
    assert!(
        dana.get("/approvals").await.status == 200,
        "still signed in"
    );
    // Nothing changed: still pending, no approval event beyond the request.
    let page = text(&dana.get(&path).await);
    assert!(page.contains(">pending<"), "{page}");
    let events: Vec<_> = audit_records(&env)
        .into_iter()
        .filter(|r| r["kind"] == "approval")
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["requested"]);
    let refused: Vec<_> = console_records(&env)
        .into_iter()
        .filter(|r| r["result"] == "refused")
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        refused,
        [
            "csrf_token_invalid",
            "csrf_token_invalid",
            "csrf_token_invalid",
            "csrf_token_invalid"
        ]
    );
    // The right token still works afterwards.
    let r = dana
        .post(&path, &[("csrf", &good), ("decision", "deny")])
        .await;
    assert_eq!(r.status, 303);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_who_may_sign_in_and_what_they_see() {
    let env = start().await;
    // Neither approver nor auditor: a clear 403 page, no session, an audit record.
    for (user, oid) in [
        ("bob", "6fa0d1b5-9855-4c8d-be2b-8a6660fbe126"),
        ("alice", "72aca123-ad72-4c7b-84b5-6d536a354d63"),
    ] {
        let (b, r) = sign_in(&env, user).await;
        assert_eq!(r.status, 403, "{user}");
        assert_hardened(user, &r);
        let page = text(&r);
        assert!(page.contains("No access to the console"), "{page}");
        assert!(page.contains("neither an approver"));
        assert!(b.session().is_none(), "{user} gets no session");
        let rec = console_records(&env)
            .into_iter()
            .find(|r| r["person"]["oid"] == oid)
            .expect("the refused sign-in is audited");
        assert_eq!(rec["event"], "sign_in");
        assert_eq!(rec["result"], "refused");
        assert_eq!(rec["reason"], "no_console_role");
        assert!(rec["session"].is_null());
    }
    let mut erin = signed_in(&env, "erin").await;
    let r = erin.get("/approvals").await;
    assert_eq!(r.status, 403);
    assert!(text(&r).contains("for approvers"));
    let r = erin.get("/").await;
    assert_eq!(location(&r), "/audit");
    let mut dana = signed_in(&env, "dana").await;
    for path in ["/audit", "/audit/chain"] {
        let r = dana.get(path).await;
        assert_eq!(r.status, 403, "{path}");
        assert!(text(&r).contains("for auditors"));
    }
    let r = dana.get("/").await;
    assert_eq!(location(&r), "/approvals");
    // An auditor cannot export with an approver's page either: export needs the auditor role.
    let csrf = csrf_of(&text(&dana.get("/approvals").await));
    let r = dana.post("/audit/export", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 403);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_nonce_and_pkce_mismatches_are_refused() {
    let env = start().await;
    // A callback with another state than the one this browser started.
    let mut b = Browser::new(&env);
    let authorize = start_sign_in(&env, &mut b).await;
    let back = entra_pick(&authorize, "erin", |p| {
        for (k, v) in p.iter_mut() {
            if k == "state" {
                *v = "attacker-state".into();
            }
        }
    })
    .await;
    let r = b.raw("GET", &back, None, &[]).await;
    assert_eq!(r.status, 400);
    assert!(text(&r).contains("state mismatch"), "{}", text(&r));
    assert!(b.session().is_none());
    // A callback in a browser that never started a sign-in (login CSRF): refused.
    let mut fresh = Browser::new(&env);
    let authorize = start_sign_in(&env, &mut Browser::new(&env)).await;
    let back = entra_pick(&authorize, "erin", |_| {}).await;
    let r = fresh.raw("GET", &back, None, &[]).await;
    assert_eq!(r.status, 400);
    assert!(fresh.session().is_none());
    // The ID token carries another nonce than this sign-in's: refused after the exchange.
    let mut b = Browser::new(&env);
    let authorize = start_sign_in(&env, &mut b).await;
    let back = entra_pick(&authorize, "erin", |p| {
        for (k, v) in p.iter_mut() {
            if k == "nonce" {
                *v = "another-nonce".into();
            }
        }
    })
    .await;
    let before = env.sandbox.issued_id_tokens().len();
    let r = b.raw("GET", &back, None, &[]).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    assert!(text(&r).contains("nonce"), "{}", text(&r));
    assert_eq!(
        env.sandbox.issued_id_tokens().len(),
        before + 1,
        "an ID token was issued"
    );
    assert!(b.session().is_none());
    // Another PKCE challenge than this sign-in's verifier: Entra refuses the code.
    let mut b = Browser::new(&env);
    let authorize = start_sign_in(&env, &mut b).await;
    let back = entra_pick(&authorize, "erin", |p| {
        for (k, v) in p.iter_mut() {
            if k == "code_challenge" {
                *v = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into();
            }
        }
    })
    .await;
    let r = b.raw("GET", &back, None, &[]).await;
    assert_eq!(r.status, 400);
    assert!(b.session().is_none());
    // The same callback twice: the sign-in state is one-use.
    let mut b = Browser::new(&env);
    let authorize = start_sign_in(&env, &mut b).await;
    let back = entra_pick(&authorize, "erin", |_| {}).await;
    let signin = b.jar.clone();
    assert_eq!(b.raw("GET", &back, None, &[]).await.status, 200);
    let mut replay = Browser::new(&env);
    replay.jar = signin;
    replay.jar.remove("passgate_session");
    assert_eq!(replay.raw("GET", &back, None, &[]).await.status, 400);
    assert!(replay.session().is_none());
    // Entra reporting an error (the user cancelled) is shown, not trusted.
    let mut b = Browser::new(&env);
    let authorize = start_sign_in(&env, &mut b).await;
    let state = url::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    let r = b
        .get(&format!(
            "/auth/callback{}",
            format_args!(
                "?error=access_denied&error_description=%3Cscript%3E&state={}",
                state
            )
        ))
        .await;
    assert_eq!(r.status, 400);
    assert!(!text(&r).contains("<script>") && text(&r).contains("&lt;script&gt;"));
    // Only successful sign-ins made sessions; only identified people are in the audit trail.
    assert!(console_records(&env)
        .iter()
        .all(|r| r["result"] == "ok" && r["event"] == "sign_in"));
    // The failures are counted: state, no sign-in, nonce, PKCE, replay, Entra's error.
    let metrics = env.gateway().metrics.encode();
    let failed = samples(&metrics)
        .into_iter()
        .find(|(k, _)| k == "passgate_console_events_total{event=\"sign_in\",result=\"failed\"}")
        .map(|(_, v)| v);
    assert_eq!(failed, Some(6.0), "{metrics}");
    env.stop().await;
}

/// Rewrites a session's stored times, as if it had been idle (or alive) that long.
async fn age_session(env: &DevEnv, id: &str, field: &str, by: chrono::TimeDelta) {
    let gw = env.gateway();
    let site = gw.console.as_ref().expect("console");
    let store = site.session_store();
    let key = passgate::console::session::session_store_key(id);
    let old = store
        .get(&key)
        .await
        .unwrap()
        .expect("the session is stored");
    let mut v: serde_json::Value = serde_json::from_str(&old).unwrap();
    let t: chrono::DateTime<chrono::Utc> = v[field].as_str().unwrap().parse().unwrap();
    v[field] = serde_json::json!((t - by).to_rfc3339());
    assert!(store
        .replace(
            &key,
            &old,
            &v.to_string(),
            std::time::Duration::from_secs(3600)
        )
        .await
        .unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_end_when_idle_too_old_or_signed_out_on_the_server() {
    let env = start().await;
    // Idle past console.session_idle_timeout (15m in dev.yaml's defaults).
    let mut b = signed_in(&env, "erin").await;
    assert_eq!(b.get("/audit").await.status, 200);
    let id = b.session().unwrap();
    age_session(&env, &id, "last_seen", chrono::TimeDelta::minutes(16)).await;
    let r = b.get("/audit").await;
    assert_eq!(r.status, 303);
    assert!(location(&r).contains("ended=idle"), "{}", location(&r));
    assert!(b.session().is_none(), "the cookie is cleared");
    let store = env
        .gateway()
        .console
        .as_ref()
        .unwrap()
        .session_store()
        .clone();
    let key = passgate::console::session::session_store_key(&id);
    assert!(store.get(&key).await.unwrap().is_none(), "gone server-side");
    // Older than console.session_max_age (8h), however busy.
    let mut b = signed_in(&env, "erin").await;
    let id = b.session().unwrap();
    age_session(&env, &id, "created_at", chrono::TimeDelta::hours(9)).await;
    let r = b.get("/audit").await;
    assert!(location(&r).contains("ended=expired"), "{}", location(&r));
    // Signed out: the old cookie is worthless, on a POST too.
    let mut b = signed_in(&env, "dana").await;
    let page = text(&b.get("/approvals").await);
    let csrf = csrf_of(&page);
    let id = b.session().unwrap();
    let r = b.post("/auth/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 303);
    assert_eq!(location(&r), "/signed-out");
    assert!(b.session().is_none());
    assert!(store
        .get(&passgate::console::session::session_store_key(&id))
        .await
        .unwrap()
        .is_none());
    let mut stolen = Browser::new(&env);
    stolen.jar.insert("passgate_session".into(), id.clone());
    let r = stolen.get("/approvals").await;
    assert_eq!(r.status, 303, "the old cookie signs nobody in");
    let r = stolen.post("/auth/sign-out", &[("csrf", &csrf)]).await;
    assert_eq!(r.status, 403);
    // A session id the server never issued (fixation) is nothing.
    let mut planted = Browser::new(&env);
    planted
        .jar
        .insert("passgate_session".into(), "A".repeat(43));
    assert_eq!(planted.get("/audit").await.status, 303);
    // Signing in mints a new id whatever cookie the browser came with.
    let (b2, _) = {
        let mut b = Browser::new(&env);
        b.jar.insert("passgate_session".into(), "A".repeat(43));
        let authorize = start_sign_in(&env, &mut b).await;
        let back = entra_pick(&authorize, "erin", |_| {}).await;
        let r = b.raw("GET", &back, None, &[]).await;
        (b, r)
    };
    assert_ne!(b2.session().unwrap(), "A".repeat(43));
    let outs: Vec<_> = console_records(&env)
        .into_iter()
        .filter(|r| r["event"] == "sign_out")
        .collect();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0]["person"]["oid"], DANA);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_data_is_escaped_searched_exported_and_the_chain_shown() {
    let env = start().await;
    let id = open_request(&env).await;
    let mut dana = signed_in(&env, "dana").await;
    let csrf = csrf_of(&text(&dana.get("/approvals").await));
    let hostile = "<script>alert('x')</script><img src=x onerror=alert(1)>\u{202e}";
    let r = dana
        .post(
            &format!("/approvals/{id}"),
            &[("csrf", &csrf), ("decision", "deny"), ("comment", hostile)],
        )
        .await;
    assert_eq!(r.status, 303);
    for path in [format!("/approvals/{id}"), "/approvals/history".to_string()] {
        let page = text(&dana.get(&path).await);
        assert!(!page.contains("<script>alert"), "{path}");
        assert!(!page.contains("<img src=x"), "{path}");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)"), "{path}");
        assert!(
            !page.contains('\u{202e}'),
            "{path}: bidi override shown raw"
        );
    }
    // Allowed calls for the auditor to find.
    for _ in 0..2 {
        let r = send(
            "POST",
            &action_url(&env, "kiosk-phone"),
            &[bearer(&token(&env, "alice"))],
            b"",
        )
        .await;
        assert_eq!(r.status, 204);
    }
    let mut erin = signed_in(&env, "erin").await;
    let page = text(
        &erin
            .get("/audit?operator=alice%40contoso.onmicrosoft.com&decision=allow")
            .await,
    );
    let allowed: Vec<_> = decision_records(&env)
        .into_iter()
        .filter(|r| r["decision"] == "allow")
        .collect();
    assert_eq!(allowed.len(), 2);
    for d in &allowed {
        let rid = d["request_id"].as_str().unwrap();
        assert!(page.contains(&format!("/audit/requests/{rid}")), "{rid}");
    }
    assert!(!page.contains("<script>alert"));
    assert!(page.contains("Page 1 of 1 · 2 rows"), "{page}");
    // A bad time filter is a clear 400 on the same form.
    let r = erin.get("/audit?since=yesterday").await;
    assert_eq!(r.status, 400);
    assert!(text(&r).contains("is not a time"));
    // One request's story: decision, outcome and Graph's request-id.
    let rid = allowed[0]["request_id"].as_str().unwrap();
    let story = text(&erin.get(&format!("/audit/requests/{rid}")).await);
    let outcome = audit_records(&env)
        .into_iter()
        .find(|r| r["kind"] == "outcome" && r["request_id"] == rid)
        .unwrap();
    assert!(story.contains(outcome["graph_request_id"].as_str().unwrap()));
    assert!(story.contains("HTTP 204"));
    // The request that opened the denied approval tells the approval's story.
    let opened = decision_records(&env)
        .into_iter()
        .find(|r| r["reason"] == "approval_required")
        .unwrap();
    let story = text(
        &erin
            .get(&format!(
                "/audit/requests/{}",
                opened["request_id"].as_str().unwrap()
            ))
            .await,
    );
    assert!(
        story.contains(">requested<") && story.contains(">denied<"),
        "{story}"
    );
    assert!(story.contains("&lt;script&gt;"));
    // Export: CSV of the same search, recorded with its filters and row count.
    let csrf = csrf_of(&page);
    let r = erin
        .post(
            "/audit/export",
            &[
                ("csrf", &csrf),
                ("operator", "alice@contoso.onmicrosoft.com"),
                ("decision", "allow"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/csv; charset=utf-8")
    );
    assert!(r
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment; filename=\"passgate-audit-"));
    let csv = text(&r);
    assert!(csv.starts_with("time,seq,kind,request_id,decision"));
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let export = console_records(&env)
        .into_iter()
        .find(|r| r["event"] == "export")
        .expect("the export is audited");
    assert_eq!(export["details"]["rows"], "2");
    assert_eq!(export["details"]["filter_decision"], "allow");
    assert_eq!(export["person"]["oid"], ERIN);
    // Chain status: verified, with the hash to anchor.
    let page = text(&erin.get("/audit/chain").await);
    assert!(page.contains("Verified"), "{page}");
    let last = audit_records(&env).last().unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string();
    // The page was rendered before its own view added nothing: the newest hash is shown.
    assert!(page.contains(&last), "{page}");
    env.stop().await;
}

/// Every URL, log line (debug, all crates) and audit line of a sign-in, an approval, an export
/// and a sign-out: none holds a code, an ID token, a session id, a CSRF token or the console's
/// client secret.
#[test]
fn no_token_code_or_session_id_reaches_a_url_log_or_the_audit_trail() {
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (rt, _this_thread, _second) = crate::secrets::capturing_runtime(&logs);
    rt.block_on(async {
        let env = start().await;
        let id = open_request(&env).await;
        let mut dana = Browser::new(&env);
        let authorize = start_sign_in(&env, &mut dana).await;
        let back = entra_pick(&authorize, "dana", |_| {}).await;
        let code = url::Url::parse(&back)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "code")
            .unwrap()
            .1
            .to_string();
        let signin_id = dana.jar.get("passgate_signin").unwrap().clone();
        assert_eq!(dana.raw("GET", &back, None, &[]).await.status, 200);
        let page = text(&dana.get("/approvals").await);
        let csrf = csrf_of(&page);
        let session = dana.session().unwrap();
        let r = dana
            .post(
                &format!("/approvals/{id}"),
                &[("csrf", &csrf), ("decision", "approve")],
            )
            .await;
        assert_eq!(r.status, 303);
        let mut erin = signed_in(&env, "erin").await;
        let csrf_e = csrf_of(&text(&erin.get("/audit").await));
        assert_eq!(
            erin.post("/audit/export", &[("csrf", &csrf_e)])
                .await
                .status,
            200
        );
        assert_eq!(
            dana.post("/auth/sign-out", &[("csrf", &csrf)]).await.status,
            303
        );
        let mut secrets = vec![
            code,
            signin_id,
            session.clone(),
            erin.session().unwrap(),
            csrf.clone(),
            csrf_e,
            env.sandbox.console_client_secret(),
        ];
        secrets.extend(env.sandbox.issued_id_tokens());
        assert!(env.sandbox.issued_id_tokens().len() >= 2);
        let needles = crate::secrets::needles(&secrets);
        let audit: String = audit_set(&env)
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        crate::secrets::assert_no_hits("the audit trail", &audit, &needles);
        // Session ids and CSRF tokens never travel in a URL (the code does, once, by design).
        let urls = [dana.urls.join("\n"), erin.urls.join("\n")].join("\n");
        crate::secrets::assert_no_hits("a URL", &urls, &crate::secrets::needles(&secrets[2..]));
        assert!(!urls.contains("id_token") && !urls.contains("access_token"));
        let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(log.contains("console: signed in"), "the capture works");
        crate::secrets::assert_no_hits("the log", &log, &needles);
        env.stop().await;
    });
}

/// Two gateways sharing Redis: a session signed in on one is served by the other, and signing
/// out on the second ends it on the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_served_by_any_replica_sharing_redis() {
    use passgate::state::test_support::{available, RedisOptions, RedisServer};
    if !available() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default());
    let cfg = format!(
        "{}\nstate:\n  redis:\n    url: \"redis://127.0.0.1:{}/0\"\n    timeout_ms: 2000\n",
        passgate::dev::DEV_CONFIG,
        redis.port
    );
    let one = start_with(Some(cfg.clone())).await;
    let two = start_with(Some(cfg)).await;
    let mut b1 = signed_in(&one, "erin").await;
    let mut b2 = Browser::new(&two);
    b2.jar = b1.jar.clone();
    let r = b2.get("/audit").await;
    assert_eq!(r.status, 200, "the other replica knows the session");
    let page = text(&r);
    assert!(page.contains("Erin Auditor"));
    let csrf = csrf_of(&page);
    assert_eq!(
        b2.post("/auth/sign-out", &[("csrf", &csrf)]).await.status,
        303
    );
    assert_eq!(b1.get("/audit").await.status, 303, "signed out everywhere");
    one.stop().await;
    two.stop().await;
}
