//! The v2.0 authorization endpoint for the console's sign-in (OIDC authorization-code flow with
//! PKCE, graph-notes §6): checks the client, the registered redirect URI, the response type and
//! the PKCE method as Entra does, shows a sign-in page listing the sample users (a form POST
//! picks one, no password), and redirects back with a one-use `code` and the `state`. Everything
//! it renders is escaped; it never puts a token in a URL, only the short-lived code.

use http::{Method, StatusCode};

use super::crypto::{b64url, sha256};
use super::jwt::now;
use super::server::{reply, set_header, Incoming, Reply};
use super::tenant::OperatorKind;
use super::Shared;
// The console's one escaping helper (also replaces control and bidi characters).
use crate::console::html::esc;

/// How long an authorization code can be redeemed (Entra: about 10 minutes).
pub(crate) const CODE_LIFETIME: i64 = 600;

/// A code issued to the console, redeemed once at the token endpoint.
#[derive(Clone)]
pub(crate) struct IssuedCode {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) user: String,
    pub(crate) nonce: Option<String>,
    pub(crate) code_challenge: Option<String>,
    pub(crate) scope: String,
    pub(crate) issued_at: i64,
}

/// An Entra-style error page (shown, not redirected: the redirect URI itself is in doubt).
fn error_page(status: StatusCode, code: u32, message: &str) -> Reply {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in to your account</title></head>\
         <body><h1>Sign in</h1><p>Sorry, but we’re having trouble signing you in.</p>\
         <p id=\"error\">AADSTS{code}: {}</p></body></html>",
        esc(message)
    );
    let mut r = reply(status, Some("text/html; charset=utf-8"), body.into_bytes());
    set_header(&mut r, "cache-control", "no-store, no-cache");
    r
}

/// The request's parameters: the query on GET, the form on POST.
fn params(req: &Incoming) -> Vec<(String, String)> {
    if req.method == Method::POST {
        form_urlencoded::parse(&req.body).into_owned().collect()
    } else {
        req.query_pairs()
    }
}

fn redirect(to: String) -> Reply {
    let mut r = reply(StatusCode::FOUND, None, Vec::new());
    set_header(&mut r, "location", &to);
    set_header(&mut r, "cache-control", "no-store, no-cache");
    r
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}{}", q.finish())
}

pub(crate) fn handle(shared: &Shared, tenant: &str, req: &Incoming) -> Reply {
    if req.method != Method::GET && req.method != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, None, Vec::new());
    }
    let t = &shared.tenant;
    if !t.is_tenant(tenant) {
        return error_page(
            StatusCode::BAD_REQUEST,
            90002,
            &super::entra::tenant_not_found(tenant),
        );
    }
    let p = params(req);
    let get = |k: &str| {
        p.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let client_id = get("client_id").unwrap_or("");
    if !client_id.eq_ignore_ascii_case(&t.console_client_id) {
        return error_page(
            StatusCode::BAD_REQUEST,
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'.",
                t.display_name
            ),
        );
    }
    let redirect_uri = get("redirect_uri").unwrap_or("");
    let registered = shared
        .lock()
        .redirect_uris
        .iter()
        .any(|r| r == redirect_uri);
    if !registered {
        return error_page(
            StatusCode::BAD_REQUEST,
            50011,
            &format!(
                "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'."
            ),
        );
    }
    // From here on errors go back to the client, as Entra does once the redirect URI is known.
    let state = get("state");
    let back_error = |error: &str, description: &str| {
        let mut pairs = vec![("error", error), ("error_description", description)];
        if let Some(s) = state {
            pairs.push(("state", s));
        }
        redirect(with_query(redirect_uri, &pairs))
    };
    if get("response_type") != Some("code") {
        return back_error(
            "unsupported_response_type",
            "AADSTS700054: response_type 'id_token' is not enabled for the application.",
        );
    }
    let scope = get("scope").unwrap_or("");
    if !scope.split(' ').any(|s| s == "openid") {
        return back_error(
            "invalid_request",
            "AADSTS90014: The required field 'scope' is missing openid.",
        );
    }
    let challenge = get("code_challenge");
    if challenge.is_some() && get("code_challenge_method") != Some("S256") {
        return back_error(
            "invalid_request",
            "AADSTS501491: Invalid code_challenge_method: only S256 is supported.",
        );
    }
    if req.method == Method::GET {
        return sign_in_page(shared, &p);
    }
    if get("cancel").is_some() {
        return back_error(
            "access_denied",
            "AADSTS65004: User declined to consent to access the app.",
        );
    }
    let Some(user) = get("login")
        .and_then(|name| t.operator(name))
        .filter(|o| o.kind == OperatorKind::User)
    else {
        return sign_in_page(shared, &p);
    };
    let code = format!(
        "1.{}",
        b64url(&sha256(uuid::Uuid::new_v4().as_bytes()))
            + &b64url(&sha256(uuid::Uuid::new_v4().as_bytes()))
    );
    shared.lock().codes.insert(
        code.clone(),
        IssuedCode {
            client_id: t.console_client_id.clone(),
            redirect_uri: redirect_uri.to_string(),
            user: user.name.clone(),
            nonce: get("nonce").map(str::to_string),
            code_challenge: challenge.map(str::to_string),
            scope: scope.to_string(),
            issued_at: now(),
        },
    );
    let session_state = uuid::Uuid::new_v4().to_string();
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = state {
        pairs.push(("state", s));
    }
    pairs.push(("session_state", session_state.as_str()));
    redirect(with_query(redirect_uri, &pairs))
}

/// The sign-in page's look (the emulator's own page, not passgate's: no CSP applies).
const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f2f2f2;margin:0}\
main{max-width:28rem;margin:4rem auto;background:#fff;padding:2rem 2.5rem;box-shadow:0 2px 6px rgba(0,0,0,.2)}\
h1{font-size:1.5rem;font-weight:600}ul{list-style:none;padding:0}li{margin:.4rem 0}\
button{width:100%;text-align:left;font:inherit;padding:.7rem .9rem;border:1px solid #8a8886;background:#fff;cursor:pointer}\
button:hover,button:focus{background:#f3f2f1;outline:2px solid #0067b8}button span{display:block;color:#555;font-size:.9rem}\
#cancel{width:auto;margin-top:1rem}p{color:#323130}";

/// "Pick an account": one button per sample user, the request's parameters carried along.
fn sign_in_page(shared: &Shared, p: &[(String, String)]) -> Reply {
    let t = &shared.tenant;
    let mut hidden = String::new();
    for (k, v) in p {
        if k == "login" || k == "cancel" {
            continue;
        }
        hidden.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            esc(k),
            esc(v)
        ));
    }
    let mut accounts = String::new();
    for o in t.operators.iter().filter(|o| o.kind == OperatorKind::User) {
        accounts.push_str(&format!(
            "<li><button type=\"submit\" name=\"login\" value=\"{}\" id=\"login-{}\">{} <span>{}</span></button></li>",
            esc(&o.name),
            esc(&o.name),
            esc(&o.display_name),
            esc(&o.upn)
        ));
    }
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sign in to your account</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head><body>\
         <main><h1>Pick an account</h1>\
         <p>{} — emulated Microsoft Entra ID (passgate sandbox). No password: pick a sample user.</p>\
         <form method=\"post\">{hidden}<ul>{accounts}</ul>\
         <p><button type=\"submit\" name=\"cancel\" value=\"1\" id=\"cancel\">Cancel</button></p></form></main></body></html>",
        esc(&t.display_name)
    );
    let mut r = reply(
        StatusCode::OK,
        Some("text/html; charset=utf-8"),
        body.into_bytes(),
    );
    set_header(&mut r, "cache-control", "no-store, no-cache");
    set_header(&mut r, "x-frame-options", "DENY");
    r
}

/// Whether `verifier` matches the S256 `challenge` (RFC 7636 §4.6).
pub(crate) fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    // Compare digests: the time does not depend on a common prefix.
    sha256(b64url(&sha256(verifier.as_bytes())).as_bytes()) == sha256(challenge.as_bytes())
}

/// Whether an issued code is still redeemable at `t`.
pub(crate) fn fresh(c: &IssuedCode, t: i64) -> bool {
    t - c.issued_at < CODE_LIFETIME
}
