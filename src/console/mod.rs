//! The web console for approvers and auditors: its own listener (`console.listen`, same accept
//! loop, limits and TLS certificate as the gateway, never client certificates), sign-in with
//! Entra ID ([`oidc`]), server-side sessions ([`session`]) in the state backend, CSRF-checked
//! forms ([`csrf`]) and server-rendered pages ([`pages`], [`html`]) with a strict CSP. It reads
//! approvals through the same [`crate::approval::Approvals`] calls as the API and the audit
//! trail through `audit::{search, verify_set}`; it never touches the request pipeline, never
//! puts a token or session id in a URL or a log line, and every action is an audit record.
//!
//! Modules: [`oidc`] · [`session`] · [`store`] (memory; Redis is `state::redis`) · [`csrf`] ·
//! [`html`] · [`pages`].

pub mod csrf;
pub mod html;
pub mod oidc;
pub mod pages;
pub mod session;
pub mod store;

use crate::approval::ApproverSet;
use crate::audit::{ApprovalPerson, AuditLog, ConsoleRecord};
use crate::auth::{Operator, OperatorKind, TokenVersion};
use crate::config::{ConsoleSettings, Settings};
use crate::graph::names::DeviceNames;
use crate::lifecycle::ConnInfo;
use crate::pipeline::Gateway;
use crate::runtime::Live;
use crate::server::{self, ServeOptions, TlsError, TlsFiles, TlsReloader};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use session::{Cookies, NoSession, NoSessionOr, Session, SessionData, Sessions, SignIn};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use store::SessionStore;

/// Every (event, result) the console counts in `passgate_console_events_total`.
pub const EVENTS: &[(&str, &[&str])] = &[
    ("sign_in", &["ok", "refused", "failed"]),
    ("sign_out", &["ok", "refused"]),
    ("approve", &["ok", "refused"]),
    ("deny", &["ok", "refused"]),
    ("export", &["ok", "refused"]),
];

/// Longest form body read.
const MAX_FORM: usize = 16 * 1024;

/// The console of one gateway configuration: built with the gateway (so a reload applies new
/// auditors, approvers and timeouts), sharing the session store and audit log that outlive it.
pub struct Site {
    pub settings: ConsoleSettings,
    oidc: oidc::Oidc,
    sessions: Arc<dyn SessionStore>,
    audit: AuditLog,
    audit_path: PathBuf,
    hmac_key: Option<Vec<u8>>,
    names: DeviceNames,
    events: prometheus::IntCounterVec,
    /// The audit log's CSP `form-action`/`connect` needs nothing else: every asset is ours.
    csp: String,
}

/// Everything [`Site::build`] needs from the gateway being built.
pub struct SiteParts {
    pub client: crate::outbound::HttpsClient,
    pub tokens: Arc<crate::graph::token::AppTokenProvider>,
    pub sessions: Arc<dyn SessionStore>,
    pub audit: AuditLog,
    pub credential: crate::graph::token::AppCredential,
    pub hmac_key: Option<Vec<u8>>,
    /// `passgate_console_events_total`.
    pub events: prometheus::IntCounterVec,
}

impl Site {
    pub fn build(c: &ConsoleSettings, settings: &Settings, parts: SiteParts) -> Site {
        let timeout = std::time::Duration::from_secs(settings.graph.read_timeout_seconds);
        let oa = &settings.operator_auth;
        Site {
            settings: c.clone(),
            oidc: oidc::Oidc::new(oidc::OidcSettings {
                client: parts.client.clone(),
                timeout,
                discovery_url: settings.endpoints.oidc_discovery_url.clone(),
                client_id: c.client_id.clone(),
                credential: parts.credential,
                redirect_uri: c.redirect_uri.clone(),
                tenant_id: settings.tenant_id.clone(),
                refresh_floor: oa.jwks_refresh_floor,
                max_age: oa.jwks_max_age,
            }),
            sessions: parts.sessions,
            audit: parts.audit,
            audit_path: PathBuf::from(&settings.audit.path),
            hmac_key: parts.hmac_key,
            names: DeviceNames::new(
                parts.client,
                settings.endpoints.graph.clone(),
                parts.tokens,
                timeout,
            ),
            events: parts.events,
            csp: "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                  frame-ancestors 'none'; base-uri 'none'"
                .to_string(),
        }
    }

    fn cookies(&self) -> Cookies {
        Cookies {
            secure: self.settings.secure_cookies,
        }
    }

    fn sessions(&self) -> Sessions<'_> {
        Sessions {
            store: self.sessions.as_ref(),
            idle: self.settings.idle_timeout,
            max_age: self.settings.max_age,
        }
    }

    /// The session store (tests age sessions in it).
    #[doc(hidden)]
    pub fn session_store(&self) -> &Arc<dyn SessionStore> {
        &self.sessions
    }
}

/// The console's listener options: the gateway's `server:` limits (reloads included) and, when
/// the gateway serves TLS, the same certificate and key (followed on disk by its own watcher) —
/// but never client certificates: approvers' browsers carry none.
pub fn serve_options(
    gateway: &ServeOptions,
    settings: &Settings,
) -> Result<ServeOptions, TlsError> {
    let mut o = gateway.without_tls();
    if let Some(t) = &settings.tls {
        let mut files = TlsFiles::from(t);
        files.client_ca_file = None;
        o.tls = Some(Arc::new(TlsReloader::load(files)?));
    }
    Ok(o)
}

/// Serves the console until `shutdown` resolves.
pub async fn serve(
    live: Arc<Live>,
    listener: tokio::net::TcpListener,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    server::serve(Arc::new(Console(live)), listener, opts, shutdown).await
}

/// The console as an [`server::App`]: each request is served by the gateway configuration in
/// force when it arrived.
struct Console(Arc<Live>);

impl server::App for Console {
    fn call(
        &self,
        req: server::Request,
        conn: ConnInfo,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = server::Reply> + Send>> {
        let gw = self.0.get();
        Box::pin(async move { handle(gw, req, conn).await })
    }

    fn shed(&self, _req: server::Request, _conn: ConnInfo) -> server::Reply {
        self.0.shed_unrecorded(crate::telemetry::Listener::Console)
    }
}

/// One request's context.
struct Cx {
    gw: Arc<Gateway>,
    site: Arc<Site>,
    ip: IpAddr,
    now: DateTime<Utc>,
}

/// A signed-in request: the session and the roles it has under the configuration in force.
struct Signed {
    session: Session,
    approver: bool,
    auditor: bool,
}

impl Signed {
    fn viewer(&self) -> html::Viewer<'_> {
        let d = &self.session.data;
        html::Viewer {
            name: d.who.name.as_deref().unwrap_or(""),
            upn: d.who.upn.as_deref().unwrap_or(&d.who.oid),
            approver: self.approver,
            auditor: self.auditor,
            csrf: &d.csrf,
        }
    }

    fn person(&self) -> ApprovalPerson {
        ApprovalPerson {
            oid: self.session.data.who.oid.clone(),
            upn: self.session.data.who.upn.clone(),
        }
    }

    /// The signed-in person as an [`Operator`], so approvals through the console take exactly
    /// the API's path (same rules, same records).
    fn operator(&self, client_id: &str) -> Operator {
        operator_of(&self.session.data, client_id)
    }
}

fn operator_of(d: &SessionData, client_id: &str) -> Operator {
    Operator {
        oid: d.who.oid.clone(),
        tid: d.who.tid.clone(),
        kind: OperatorKind::User,
        upn: d.who.upn.clone(),
        client_app_id: Some(client_id.to_string()),
        groups: d.who.groups.clone(),
        groups_overage: d.who.groups_overage,
        roles: d.who.roles.clone(),
        scopes: Vec::new(),
        token_version: TokenVersion::V2,
    }
}

/// The console roles an operator has under `gw`'s configuration.
fn roles(gw: &Gateway, site: &Site, op: &Operator) -> (bool, bool) {
    let approver = gw.approvals.is_any_approver(op);
    let auditor = matches(&site.settings.auditors, op);
    (approver, auditor)
}

fn matches(set: &ApproverSet, op: &Operator) -> bool {
    set.matches(op)
}

type Reply = server::Reply;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = http::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}

fn html_reply(status: StatusCode, page: String) -> Reply {
    reply(status, "text/html; charset=utf-8", page)
}

fn redirect(to: &str) -> Reply {
    let mut r = reply(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

fn set_cookie(r: &mut Reply, c: &str) {
    if let Ok(v) = HeaderValue::from_str(c) {
        r.headers_mut().append(http::header::SET_COOKIE, v);
    }
}

/// Headers on every console response, pages and errors alike.
fn harden(mut r: Reply, site: Option<&Site>) -> Reply {
    let h = r.headers_mut();
    let csp = site.map(|s| s.csp.as_str()).unwrap_or(
        "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    if let Ok(v) = HeaderValue::from_str(csp) {
        h.insert(http::header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // The callback URL carries a code: never hand it on as a Referer to another origin. Not
    // `no-referrer`: under it browsers send `Origin: null` on the console's own form POSTs,
    // and the same-origin check needs the real origin.
    h.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(http::header::CACHE_CONTROL) {
        h.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
    }
    if site.is_some_and(|s| s.settings.secure_cookies) {
        h.insert(
            http::header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    r
}

async fn handle(gw: Arc<Gateway>, req: server::Request, conn: ConnInfo) -> Reply {
    let Some(site) = gw.console.clone() else {
        let page = html::page(
            "Console not configured",
            None,
            html::Section::None,
            &html::notice(
                "error",
                "The configuration in force has no <code>console:</code> block; restart passgate to stop this listener.",
            ),
        );
        return harden(html_reply(StatusCode::SERVICE_UNAVAILABLE, page), None);
    };
    let cx = Cx {
        gw,
        site: site.clone(),
        ip: conn.client_ip,
        now: Utc::now(),
    };
    let r = route(&cx, req).await;
    harden(r, Some(site.as_ref()))
}

async fn read_form(body: server::Request) -> Option<Vec<(String, String)>> {
    let bytes = Limited::new(body.into_body(), MAX_FORM)
        .collect()
        .await
        .ok()?
        .to_bytes();
    Some(form_urlencoded::parse(&bytes).into_owned().collect())
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn query_pairs(req: &server::Request) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// A path to return to after sign-in: a console path only (never `//host`, never a URL).
fn local_path(p: Option<&str>) -> String {
    match p {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && p.len() <= 512
                && !p.starts_with("/auth/") =>
        {
            p.to_string()
        }
        _ => "/".to_string(),
    }
}

async fn route(cx: &Cx, req: server::Request) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match (method.as_str(), path.as_str()) {
        ("GET" | "HEAD", "/static/console.css") => {
            let mut r = reply(StatusCode::OK, "text/css; charset=utf-8", html::CSS);
            r.headers_mut().insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            );
            return r;
        }
        ("GET", "/auth/sign-in") => {
            let q = query_pairs(&req);
            return sign_in_start(cx, &req, field(&q, "next")).await;
        }
        ("GET", "/auth/callback") => return callback(cx, &req).await,
        ("GET", "/signed-out") => return pages::signed_out(),
        _ => {}
    }
    let post = method == Method::POST;
    if post {
        if let Err(e) = csrf::same_origin(req.headers(), &cx.site.settings.public_origin) {
            return pages::forbidden_plain(&e.to_string());
        }
    }
    let signed = match current(cx, &req).await {
        Ok(s) => s,
        Err(Some(why)) if !post && method == Method::GET => {
            let next = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let mut r = redirect(&format!(
                "/auth/sign-in{}",
                html::query(&[("next", next.as_str()), ("ended", why)])
            ));
            if why != "absent" {
                set_cookie(&mut r, &cx.site.cookies().clear_session());
            }
            return r;
        }
        Err(Some(_)) => return pages::session_ended(),
        Err(None) => return pages::unavailable("The session store could not be read."),
    };
    // Signing out needs no role (someone whose role was taken away must still be able to).
    if post && path == "/auth/sign-out" {
        return sign_out(cx, req, &signed).await;
    }
    if !signed.approver && !signed.auditor {
        return pages::no_role(&signed.viewer(), signed.session.data.who.groups_overage);
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (method.as_str(), segs.as_slice()) {
        ("GET", []) => redirect(if signed.approver {
            "/approvals"
        } else {
            "/audit"
        }),
        ("GET", ["approvals"]) if signed.approver => pages::pending(cx, &signed).await,
        ("GET", ["approvals", "history"]) if signed.approver => {
            let q = query_pairs(&req);
            pages::history(cx, &signed, &q).await
        }
        ("GET", ["approvals", id]) if signed.approver => {
            let q = query_pairs(&req);
            pages::approval(cx, &signed, id, field(&q, "done"), None).await
        }
        ("POST", ["approvals", id]) if signed.approver => {
            let id = id.to_string();
            decide(cx, req, &signed, &id).await
        }
        ("GET", ["audit"]) if signed.auditor => {
            let q = query_pairs(&req);
            pages::audit_search(cx, &signed, &q).await
        }
        ("POST", ["audit", "export"]) if signed.auditor => export(cx, req, &signed).await,
        ("GET", ["audit", "requests", id]) if signed.auditor => pages::story(cx, &signed, id).await,
        ("GET", ["audit", "chain"]) if signed.auditor => pages::chain(cx, &signed).await,
        ("GET", ["approvals", ..]) | ("POST", ["approvals", ..]) => {
            pages::wrong_role(&signed, "approvers")
        }
        ("GET", ["audit", ..]) | ("POST", ["audit", ..]) => pages::wrong_role(&signed, "auditors"),
        _ => pages::not_found(Some(&signed)),
    }
}

/// The request's session, or why there is none (`None`: the store failed).
async fn current(cx: &Cx, req: &server::Request) -> Result<Signed, Option<&'static str>> {
    let cookies = cx.site.cookies();
    let Some(id) = session::cookie(req.headers(), cookies.session_name()) else {
        return Err(Some("absent"));
    };
    let session = match cx.site.sessions().load(id, cx.now).await {
        Ok(s) => s,
        Err(NoSessionOr::No(NoSession::Absent)) => return Err(Some("absent")),
        Err(NoSessionOr::No(NoSession::Idle)) => return Err(Some("idle")),
        Err(NoSessionOr::No(NoSession::Expired)) => return Err(Some("expired")),
        Err(NoSessionOr::Store(e)) => {
            tracing::error!(error = %e, "console: session store unavailable");
            return Err(None);
        }
    };
    let op = operator_of(&session.data, &cx.site.settings.client_id);
    let (approver, auditor) = roles(&cx.gw, &cx.site, &op);
    Ok(Signed {
        session,
        approver,
        auditor,
    })
}

/// Writes one console record; durable before the console answers. `false`: it could not be
/// written, and the caller must not report the action as done.
#[allow(clippy::too_many_arguments)]
async fn record(
    cx: &Cx,
    event: &str,
    refused: Option<&str>,
    person: Option<ApprovalPerson>,
    session: Option<String>,
    approval_id: Option<&str>,
    details: BTreeMap<String, String>,
) -> bool {
    let result = if refused.is_some() { "refused" } else { "ok" };
    cx.site.events.with_label_values(&[event, result]).inc();
    let rec = ConsoleRecord {
        event: event.to_string(),
        result: if refused.is_some() { "refused" } else { "ok" }.to_string(),
        reason: refused.map(str::to_string),
        person,
        session,
        client_ip: cx.ip.to_string(),
        approval_id: approval_id.map(str::to_string),
        details,
    };
    match cx.site.audit.record_console(rec).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %crate::error::chain(&e), event, "console: audit write failed; refusing (fail closed)");
            false
        }
    }
}

async fn sign_in_start(cx: &Cx, req: &server::Request, next: Option<&str>) -> Reply {
    let next = local_path(next);
    if current(cx, req).await.is_ok() {
        return redirect(&next);
    }
    let auth = match cx.site.oidc.authorize().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "console: cannot start a sign-in");
            return pages::unavailable("Entra ID could not be reached to start the sign-in.");
        }
    };
    let started = cx
        .site
        .sessions()
        .begin_sign_in(&SignIn {
            state: auth.state,
            nonce: auth.nonce,
            pkce_verifier: auth.pkce_verifier,
            return_to: next,
        })
        .await;
    let id = match started {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "console: session store unavailable");
            return pages::unavailable("The session store could not be written.");
        }
    };
    let mut r = redirect(&auth.url);
    set_cookie(&mut r, &cx.site.cookies().sign_in(&id));
    r
}

/// The OIDC redirect back from Entra. Refuses unless the browser carries the sign-in cookie of a
/// sign-in it started here and `state` matches it; then redeems the code and verifies the ID
/// token (nonce included), and only then mints a session id (never reusing one presented).
async fn callback(cx: &Cx, req: &server::Request) -> Reply {
    let cookies = cx.site.cookies();
    let q = query_pairs(req);
    let taken = match session::cookie(req.headers(), cookies.sign_in_name()) {
        Some(id) => cx.site.sessions().take_sign_in(id).await,
        None => Ok(None),
    };
    let mut r = callback_inner(cx, &q, taken).await;
    set_cookie(&mut r, &cookies.clear_sign_in());
    r
}

/// Counts a sign-in that failed before anyone was identified (logged, not audited).
fn failed_sign_in(cx: &Cx) {
    cx.site
        .events
        .with_label_values(&["sign_in", "failed"])
        .inc();
}

async fn callback_inner(
    cx: &Cx,
    q: &[(String, String)],
    taken: Result<Option<SignIn>, crate::policy::limiter::StoreError>,
) -> Reply {
    let started = match taken {
        Ok(Some(s)) => s,
        Ok(None) => {
            tracing::warn!(client = %cx.ip, "console: sign-in callback without a sign-in started in this browser");
            failed_sign_in(cx);
            return pages::sign_in_failed(
                "This sign-in was not started in this browser, or it took longer than 10 minutes.",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "console: session store unavailable");
            return pages::unavailable("The session store could not be read.");
        }
    };
    let state_ok = field(q, "state").is_some_and(|s| {
        use sha2::Digest;
        sha2::Sha256::digest(s.as_bytes()) == sha2::Sha256::digest(started.state.as_bytes())
    });
    if !state_ok {
        tracing::warn!(client = %cx.ip, "console: sign-in refused: state does not match");
        failed_sign_in(cx);
        return pages::sign_in_failed("The sign-in response does not belong to the sign-in this browser started (state mismatch).");
    }
    if let Some(err) = field(q, "error") {
        let desc = field(q, "error_description").unwrap_or("");
        tracing::warn!(client = %cx.ip, error = err, "console: Entra ID did not sign the user in");
        failed_sign_in(cx);
        return pages::sign_in_failed(&format!(
            "Entra ID did not sign you in: {err}. {}",
            desc.lines().next().unwrap_or("")
        ));
    }
    let Some(code) = field(q, "code") else {
        failed_sign_in(cx);
        return pages::sign_in_failed("The sign-in response carries no code.");
    };
    let id = match cx
        .site
        .oidc
        .sign_in(code, &started.pkce_verifier, &started.nonce)
        .await
    {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(client = %cx.ip, error = %e, reason = e.reason(), "console: sign-in refused");
            failed_sign_in(cx);
            return match e {
                oidc::OidcError::Provider(_) => {
                    pages::unavailable("Entra ID could not be reached to finish the sign-in.")
                }
                _ => pages::sign_in_failed(&format!("{e}.")),
            };
        }
    };
    let person = ApprovalPerson {
        oid: id.oid.clone(),
        upn: id.upn.clone(),
    };
    let data = SessionData {
        who: id.clone(),
        csrf: csrf::new_token(),
        created_at: cx.now,
        last_seen: cx.now,
    };
    let op = operator_of(&data, &cx.site.settings.client_id);
    let (approver, auditor) = roles(&cx.gw, &cx.site, &op);
    let mut roles_text = Vec::new();
    if approver {
        roles_text.push("approver");
    }
    if auditor {
        roles_text.push("auditor");
    }
    let mut details = BTreeMap::new();
    details.insert("roles".to_string(), roles_text.join(","));
    if id.groups_overage {
        details.insert("groups".to_string(), "overage".to_string());
    }
    if !approver && !auditor {
        if !record(
            cx,
            "sign_in",
            Some("no_console_role"),
            Some(person),
            None,
            None,
            details,
        )
        .await
        {
            return pages::unavailable("The audit log cannot be written.");
        }
        let viewer = html::Viewer {
            name: id.name.as_deref().unwrap_or(""),
            upn: id.upn.as_deref().unwrap_or(&id.oid),
            approver: false,
            auditor: false,
            csrf: "",
        };
        return pages::no_role_unsigned(&viewer, id.groups_overage);
    }
    let sessions = cx.site.sessions();
    let session = match sessions.create(data).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "console: session store unavailable");
            return pages::unavailable("The session store could not be written.");
        }
    };
    if !record(
        cx,
        "sign_in",
        None,
        Some(person),
        Some(session.audit_hash()),
        None,
        details,
    )
    .await
    {
        let _ = sessions.destroy(&session.id).await;
        return pages::unavailable("The audit log cannot be written; you were not signed in.");
    }
    tracing::info!(oid = %id.oid, approver, auditor, "console: signed in");
    let mut r = pages::signed_in(&started.return_to);
    set_cookie(&mut r, &cx.site.cookies().session(&session.id));
    r
}

/// Checks the form's CSRF token; a refusal is recorded (for `event`) and answered 403.
async fn checked_form(
    cx: &Cx,
    req: server::Request,
    signed: &Signed,
    event: &str,
    approval_id: Option<&str>,
) -> Result<Vec<(String, String)>, Reply> {
    let Some(form) = read_form(req).await else {
        return Err(pages::bad_request(
            Some(signed),
            "The form could not be read.",
        ));
    };
    if let Err(e) = csrf::check(&signed.session.data.csrf, field(&form, "csrf")) {
        tracing::warn!(client = %cx.ip, event, "console: POST refused: {e}");
        let _ = record(
            cx,
            event,
            Some(e.reason()),
            Some(signed.person()),
            Some(signed.session.audit_hash()),
            approval_id,
            BTreeMap::new(),
        )
        .await;
        return Err(pages::forbidden(
            Some(signed),
            "This form was not sent from your console session (its security token is missing or wrong). Nothing was changed; reload the page and try again.",
        ));
    }
    Ok(form)
}

async fn sign_out(cx: &Cx, req: server::Request, signed: &Signed) -> Reply {
    if let Err(r) = checked_form(cx, req, signed, "sign_out", None).await {
        return r;
    }
    if let Err(e) = cx.site.sessions().destroy(&signed.session.id).await {
        tracing::error!(error = %e, "console: session store unavailable");
        return pages::unavailable(
            "The session store could not be written; you are still signed in.",
        );
    }
    let _ = record(
        cx,
        "sign_out",
        None,
        Some(signed.person()),
        Some(signed.session.audit_hash()),
        None,
        BTreeMap::new(),
    )
    .await;
    let mut r = redirect("/signed-out");
    set_cookie(&mut r, &cx.site.cookies().clear_session());
    r
}

/// A comment as the approvals API accepts it: optional, bounded, no control characters.
fn comment_of(text: Option<&str>) -> Result<Option<String>, &'static str> {
    let Some(t) = text.map(|t| t.replace("\r\n", "\n")) else {
        return Ok(None);
    };
    let t = t.trim();
    if t.is_empty() {
        return Ok(None);
    }
    if t.len() > crate::approval::MAX_COMMENT_BYTES {
        return Err("The comment is longer than 1024 bytes.");
    }
    if t.chars().any(|c| c.is_control() && c != '\n') {
        return Err("The comment contains control characters.");
    }
    Ok(Some(t.to_string()))
}

async fn decide(cx: &Cx, req: server::Request, signed: &Signed, id: &str) -> Reply {
    let Some(id) = crate::text::guid(id) else {
        return pages::not_found(Some(signed));
    };
    let form = match checked_form(cx, req, signed, "approve", Some(&id)).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let approve = match field(&form, "decision") {
        Some("approve") => true,
        Some("deny") => false,
        _ => return pages::bad_request(Some(signed), "Choose approve or deny."),
    };
    let event = if approve { "approve" } else { "deny" };
    let comment = match comment_of(field(&form, "comment")) {
        Ok(c) => c,
        Err(msg) => {
            return pages::approval(
                cx,
                signed,
                &id,
                None,
                Some((StatusCode::BAD_REQUEST, msg.to_string())),
            )
            .await
        }
    };
    let op = signed.operator(&cx.site.settings.client_id);
    let mut details = BTreeMap::new();
    if let Some(c) = &comment {
        details.insert("comment".to_string(), c.clone());
    }
    match cx.gw.approvals.decide(&op, &id, approve, comment).await {
        Ok(_) => {
            if !record(
                cx,
                event,
                None,
                Some(signed.person()),
                Some(signed.session.audit_hash()),
                Some(&id),
                details,
            )
            .await
            {
                return pages::unavailable("The decision was taken and recorded as an approval event, but its console record could not be written.");
            }
            redirect(&format!(
                "/approvals/{id}{}",
                html::query(&[("done", if approve { "approved" } else { "denied" })])
            ))
        }
        Err(e) => {
            let _ = record(
                cx,
                event,
                Some(e.reason.as_str()),
                Some(signed.person()),
                Some(signed.session.audit_hash()),
                Some(&id),
                details,
            )
            .await;
            pages::approval(cx, signed, &id, None, Some((e.reason.status(), e.message))).await
        }
    }
}

async fn export(cx: &Cx, req: server::Request, signed: &Signed) -> Reply {
    let form = match checked_form(cx, req, signed, "export", None).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let filter = match pages::filter_of(&form) {
        Ok(f) => f,
        Err(msg) => return pages::bad_request(Some(signed), &msg),
    };
    let files = match crate::audit::rotation_set(&cx.site.audit_path) {
        Ok(f) => f,
        Err(e) => return pages::unavailable(&format!("The audit files could not be listed: {e}")),
    };
    let f2 = filter.clone();
    let searched = tokio::task::spawn_blocking(move || crate::audit::search(&files, &f2)).await;
    let result = match searched {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return pages::unavailable(&e.to_string()),
        Err(_) => return pages::unavailable("The search failed."),
    };
    let mut csv = Vec::new();
    if crate::audit::search::render(&result, crate::audit::Format::Csv, &mut csv).is_err() {
        return pages::unavailable("The export could not be written.");
    }
    let mut details = pages::filter_details(&form);
    details.insert("rows".to_string(), result.hits.len().to_string());
    if !record(
        cx,
        "export",
        None,
        Some(signed.person()),
        Some(signed.session.audit_hash()),
        None,
        details,
    )
    .await
    {
        return pages::unavailable("The audit log cannot be written, so nothing is exported.");
    }
    let mut r = reply(StatusCode::OK, "text/csv; charset=utf-8", csv);
    let name = format!(
        "attachment; filename=\"passgate-audit-{}.csv\"",
        cx.now.format("%Y%m%dT%H%M%SZ")
    );
    if let Ok(v) = HeaderValue::from_str(&name) {
        r.headers_mut().insert(http::header::CONTENT_DISPOSITION, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_paths_stay_on_the_console() {
        assert_eq!(local_path(Some("/audit?operator=x")), "/audit?operator=x");
        for bad in [
            "//evil.example/x",
            "https://evil.example",
            "/\\evil",
            "evil",
            "/auth/callback?code=x",
        ] {
            assert_eq!(local_path(Some(bad)), "/", "{bad}");
        }
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn comments_follow_the_api_rules() {
        assert_eq!(comment_of(None), Ok(None));
        assert_eq!(comment_of(Some("  ")), Ok(None));
        assert_eq!(
            comment_of(Some(" INC1\r\nok ")),
            Ok(Some("INC1\nok".into()))
        );
        assert!(comment_of(Some("a\u{7}b")).is_err());
        assert!(comment_of(Some(&"x".repeat(2000))).is_err());
    }
}
