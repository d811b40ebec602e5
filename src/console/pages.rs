//! The console's pages: pending approvals with approve/deny forms, approval history and one
//! approval, audit search with the CLI's filters and paging, one request's story, chain status,
//! and the sign-in, error and 403 pages. Every value from the audit log, the approval store,
//! Graph or a token passes through [`html::esc`]; forms carry the session's CSRF token; no page
//! has script. Pages read; the actions themselves are in the module above.

use super::html::{self, badge, cell, code, esc, notice, page, Section, Viewer};
use super::{html_reply, Cx, Reply, Signed};
use crate::approval::State;
use crate::audit::{search::parse_time_bound, Decision, SearchFilter};
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde_json::Value;
use std::collections::BTreeMap;

// === frames and error pages ===

fn center(title: &str, body: &str) -> String {
    page(
        title,
        None,
        Section::None,
        &format!("<div class=\"center\">{body}</div>"),
    )
}

pub(super) fn signed_out() -> Reply {
    html_reply(
        StatusCode::OK,
        center(
            "Signed out",
            "<p>You are signed out of the passgate console. Your session has been ended on the server.</p>\
             <p><a class=\"button\" href=\"/auth/sign-in\">Sign in again</a></p>",
        ),
    )
}

/// After the callback: a same-site page that moves on to the console. (A redirect straight from
/// Entra's cross-site navigation would not carry the new SameSite=Strict cookie.)
pub(super) fn signed_in(return_to: &str) -> Reply {
    let to = esc(return_to);
    let body = format!(
        "<p>You are signed in.</p><p><a class=\"button\" href=\"{to}\" id=\"continue\">Continue to the console</a></p>"
    );
    let html = center("Signed in", &body).replacen(
        "<link rel=\"stylesheet\"",
        &format!("<meta http-equiv=\"refresh\" content=\"0;url={to}\"><link rel=\"stylesheet\""),
        1,
    );
    html_reply(StatusCode::OK, html)
}

pub(super) fn sign_in_failed(why: &str) -> Reply {
    html_reply(
        StatusCode::BAD_REQUEST,
        center(
            "Sign-in failed",
            &format!(
                "{}<p><a class=\"button\" href=\"/auth/sign-in\">Start again</a></p>",
                notice("error", &esc(why))
            ),
        ),
    )
}

pub(super) fn unavailable(why: &str) -> Reply {
    html_reply(
        StatusCode::SERVICE_UNAVAILABLE,
        center(
            "Temporarily unavailable",
            &format!(
                "{}<p>Nothing was changed. Try again in a moment.</p>",
                notice("error", &esc(why))
            ),
        ),
    )
}

pub(super) fn session_ended() -> Reply {
    html_reply(
        StatusCode::FORBIDDEN,
        center(
            "Session ended",
            "<p>Your console session has ended (signed out, idle or too old). Nothing was changed.</p>\
             <p><a class=\"button\" href=\"/auth/sign-in\">Sign in again</a></p>",
        ),
    )
}

/// A refusal before any session was looked at (a cross-origin POST).
pub(super) fn forbidden_plain(why: &str) -> Reply {
    html_reply(
        StatusCode::FORBIDDEN,
        center(
            "Forbidden",
            &format!("{}<p>Nothing was changed.</p>", notice("error", &esc(why))),
        ),
    )
}

fn no_role_body(overage: bool) -> String {
    let mut b = String::from(
        "<p>You are signed in, but you are neither an approver (named in a policy's <code>approval.approvers</code>) \
         nor an auditor (<code>console.auditors</code>), so the console has nothing to show you.</p>\
         <p>Ask the passgate administrators to add you, or one of your groups or app roles, to the configuration.</p>",
    );
    if overage {
        b.push_str(&notice(
            "warn",
            "Your account is in too many groups for Entra ID to list them in the sign-in token (group overage), \
             so group-based roles cannot apply: assign an app role or name your account instead.",
        ));
    }
    b
}

pub(super) fn no_role(v: &Viewer<'_>, overage: bool) -> Reply {
    html_reply(
        StatusCode::FORBIDDEN,
        page(
            "No access to the console",
            Some(v),
            Section::None,
            &no_role_body(overage),
        ),
    )
}

/// The same, at sign-in: no session was created, so there is nothing to sign out of.
pub(super) fn no_role_unsigned(v: &Viewer<'_>, overage: bool) -> Reply {
    let who = format!(
        "<p>Signed in to Entra ID as <strong>{}</strong> ({}).</p>",
        esc(v.name),
        esc(v.upn)
    );
    html_reply(
        StatusCode::FORBIDDEN,
        center(
            "No access to the console",
            &format!("{who}{}", no_role_body(overage)),
        ),
    )
}

pub(super) fn wrong_role(s: &Signed, who: &str) -> Reply {
    html_reply(
        StatusCode::FORBIDDEN,
        page(
            "Not available to you",
            Some(&s.viewer()),
            Section::None,
            &notice(
                "error",
                &format!("This part of the console is for {}.", esc(who)),
            ),
        ),
    )
}

pub(super) fn forbidden(s: Option<&Signed>, why: &str) -> Reply {
    let v = s.map(|s| s.viewer());
    html_reply(
        StatusCode::FORBIDDEN,
        page(
            "Forbidden",
            v.as_ref(),
            Section::None,
            &notice("error", &esc(why)),
        ),
    )
}

pub(super) fn bad_request(s: Option<&Signed>, why: &str) -> Reply {
    let v = s.map(|s| s.viewer());
    html_reply(
        StatusCode::BAD_REQUEST,
        page(
            "Bad request",
            v.as_ref(),
            Section::None,
            &notice("error", &esc(why)),
        ),
    )
}

pub(super) fn not_found(s: Option<&Signed>) -> Reply {
    let v = s.map(|s| s.viewer());
    html_reply(
        StatusCode::NOT_FOUND,
        page(
            "Not found",
            v.as_ref(),
            Section::None,
            "<p>There is no such page in the console.</p>",
        ),
    )
}

// === approvals ===

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn age(now: DateTime<Utc>, t: &str) -> String {
    let Ok(t) = DateTime::parse_from_rfc3339(t) else {
        return String::new();
    };
    let d = now - t.with_timezone(&Utc);
    let m = d.num_minutes();
    if m < 1 {
        "just now".into()
    } else if m < 60 {
        format!("{m} min")
    } else if m < 48 * 60 {
        format!("{} h {} min", m / 60, m % 60)
    } else {
        format!("{} days", m / (24 * 60))
    }
}

/// A timestamp as stored (RFC 3339), shown to the second in UTC.
fn when(t: &str) -> String {
    match DateTime::parse_from_rfc3339(t) {
        Ok(t) => {
            let t = t.with_timezone(&Utc);
            format!(
                "<time datetime=\"{}\">{}</time>",
                esc(&t.to_rfc3339()),
                esc(&t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            )
        }
        Err(_) => cell(t),
    }
}

fn person(v: &Value) -> String {
    let upn = s(v, "upn");
    if upn.is_empty() {
        code(s(v, "oid"))
    } else {
        // A line may break after the `@` of a long UPN (a table column stays narrow).
        format!(
            "<span title=\"{}\">{}</span>",
            esc(s(v, "oid")),
            esc(upn).replacen('@', "@<wbr>", 1)
        )
    }
}

/// A reason code or event, breakable after its underscores.
fn word(v: &str) -> String {
    esc(v).replace('_', "_<wbr>")
}

fn device(name: Option<&str>, id: &str) -> String {
    match name {
        Some(n) => format!("{}<br>{}", esc(n), code(id)),
        None => code(id),
    }
}

async fn device_names(cx: &Cx, list: &[Value]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for r in list {
        let id = s(r, "managed_device_id");
        if id.is_empty() || out.contains_key(id) {
            continue;
        }
        if let Some(n) = cx.site.names.name(id).await {
            out.insert(id.to_string(), n);
        }
    }
    out
}

fn decide_form(id: &str, csrf: &str) -> String {
    let id = esc(id);
    format!(
        "<form method=\"post\" action=\"/approvals/{id}\" class=\"decide\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label for=\"comment-{id}\">Comment (ticket, reason; recorded)</label>\
         <textarea id=\"comment-{id}\" name=\"comment\" maxlength=\"1024\" rows=\"2\"></textarea>\
         <div class=\"buttons\">\
         <button type=\"submit\" name=\"decision\" value=\"approve\" class=\"approve\" id=\"approve-{id}\">Approve</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\" class=\"deny\" id=\"deny-{id}\">Deny</button>\
         </div></form>",
        esc(csrf)
    )
}

async fn approvals_list(
    cx: &Cx,
    signed: &Signed,
    state: Option<State>,
) -> Result<Vec<Value>, Reply> {
    let op = signed.operator(&cx.site.settings.client_id);
    match cx.gw.approvals.list(&op, state).await {
        Ok(v) => Ok(v["value"].as_array().cloned().unwrap_or_default()),
        Err(e) => Err(unavailable(&e.message)),
    }
}

pub(super) async fn pending(cx: &Cx, signed: &Signed) -> Reply {
    let list = match approvals_list(cx, signed, Some(State::Pending)).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let names = device_names(cx, &list).await;
    let mut rows = String::new();
    for r in &list {
        let id = s(r, "id");
        let can = r.get("can_decide").and_then(Value::as_bool) == Some(true);
        let action = if can {
            decide_form(id, &signed.session.data.csrf)
        } else if r["requester"]["oid"]
            .as_str()
            .is_some_and(|o| o.eq_ignore_ascii_case(&signed.session.data.who.oid))
        {
            "<span class=\"none\">Your own request: another approver decides.</span>".into()
        } else {
            "<span class=\"none\">Not yours to decide.</span>".into()
        };
        let mdid = s(r, "managed_device_id");
        // `justification` appears when the request carries one (policies that require it).
        let just = s(r, "justification");
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}<br><a href=\"/approvals/{}\">details</a></td><td>{action}</td></tr>",
            person(&r["requester"]),
            device(names.get(mdid).map(String::as_str), mdid),
            cell(s(r, "device_owner")),
            cell(s(r, "platform")),
            esc(s(r, "policy")),
            cell(just),
            esc(&age(cx.now, s(r, "created_at"))),
            esc(id),
        ));
    }
    let body = if list.is_empty() {
        notice("ok", "Nothing is waiting for an approver you can act as.")
    } else {
        format!(
            "<p>Requests waiting for a second person, newest first. Approving lets the requester's next call \
             through once, within the policy's validity window; every decision is recorded in the audit chain.</p>\
             <table><caption>{} pending</caption><thead><tr><th scope=\"col\">Requester</th><th scope=\"col\">Device</th>\
             <th scope=\"col\">Owner</th><th scope=\"col\">Platform</th><th scope=\"col\">Policy</th>\
             <th scope=\"col\">Justification</th><th scope=\"col\">Age</th><th scope=\"col\">Decision</th></tr></thead>\
             <tbody>{rows}</tbody></table>",
            list.len()
        )
    };
    html_reply(
        StatusCode::OK,
        page(
            "Pending approvals",
            Some(&signed.viewer()),
            Section::Pending,
            &body,
        ),
    )
}

fn state_of(q: &str) -> Option<State> {
    match q {
        "approved" => Some(State::Approved),
        "denied" => Some(State::Denied),
        "expired" => Some(State::Expired),
        "consumed" => Some(State::Consumed),
        "pending" => Some(State::Pending),
        _ => None,
    }
}

fn page_number(q: &[(String, String)]) -> usize {
    super::field(q, "page")
        .and_then(|p| p.parse::<usize>().ok())
        .filter(|p| *p >= 1)
        .unwrap_or(1)
}

fn pager(base: &str, pairs: &[(&str, &str)], page_no: usize, total: usize, size: usize) -> String {
    let pages = total.div_ceil(size).max(1);
    let link = |p: usize, label: &str, rel: &str| {
        let p = p.to_string();
        let mut all: Vec<(&str, &str)> = pairs.to_vec();
        all.push(("page", &p));
        format!(
            "<a href=\"{base}{}\" rel=\"{rel}\">{label}</a>",
            esc(&html::query(&all))
        )
    };
    let mut o = String::from("<nav class=\"pager\" aria-label=\"Pages\">");
    if page_no > 1 {
        o.push_str(&link(page_no - 1, "← Newer", "prev"));
    }
    o.push_str(&format!(
        "<span>Page {} of {pages} · {total} rows</span>",
        page_no.min(pages)
    ));
    if page_no < pages {
        o.push_str(&link(page_no + 1, "Older →", "next"));
    }
    o.push_str("</nav>");
    o
}

pub(super) async fn history(cx: &Cx, signed: &Signed, q: &[(String, String)]) -> Reply {
    let want = super::field(q, "state").unwrap_or("");
    let list = match approvals_list(cx, signed, state_of(want)).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let list: Vec<Value> = list
        .into_iter()
        .filter(|r| !want.is_empty() || s(r, "state") != "pending")
        .collect();
    let size = cx.site.settings.page_size;
    let page_no = page_number(q);
    let shown: Vec<&Value> = list.iter().skip((page_no - 1) * size).take(size).collect();
    let mut rows = String::new();
    for r in &shown {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><a href=\"/approvals/{}\">details</a></td></tr>",
            when(s(r, "created_at")),
            person(&r["requester"]),
            code(s(r, "managed_device_id")),
            esc(s(r, "policy")),
            badge(s(r, "state")),
            if r["decided_by"].is_object() { person(&r["decided_by"]) } else { cell("") },
            cell(s(r, "comment")),
            esc(s(r, "id")),
        ));
    }
    let mut opts = String::new();
    for (v, label) in [
        ("", "decided (all but pending)"),
        ("approved", "approved"),
        ("consumed", "used"),
        ("denied", "denied"),
        ("expired", "expired"),
        ("pending", "pending"),
    ] {
        let sel = if v == want { " selected" } else { "" };
        opts.push_str(&format!("<option value=\"{v}\"{sel}>{label}</option>"));
    }
    let body = format!(
        "<form method=\"get\" action=\"/approvals/history\" class=\"filters\">\
         <label for=\"state\">State<select id=\"state\" name=\"state\">{opts}</select></label>\
         <button type=\"submit\">Show</button></form>\
         <table><caption>Approval requests you requested or may approve, newest first</caption><thead><tr>\
         <th scope=\"col\">Opened</th><th scope=\"col\">Requester</th><th scope=\"col\">Device</th><th scope=\"col\">Policy</th>\
         <th scope=\"col\">State</th><th scope=\"col\">Decided by</th><th scope=\"col\">Comment</th><th scope=\"col\"></th></tr></thead>\
         <tbody>{rows}</tbody></table>{}",
        pager("/approvals/history", &[("state", want)], page_no, list.len(), size)
    );
    html_reply(
        StatusCode::OK,
        page(
            "Approval history",
            Some(&signed.viewer()),
            Section::History,
            &body,
        ),
    )
}

pub(super) async fn approval(
    cx: &Cx,
    signed: &Signed,
    id: &str,
    done: Option<&str>,
    problem: Option<(StatusCode, String)>,
) -> Reply {
    let Some(id) = crate::text::guid(id) else {
        return not_found(Some(signed));
    };
    let op = signed.operator(&cx.site.settings.client_id);
    let r = match cx.gw.approvals.show(&op, &id).await {
        Ok(r) => r,
        Err(e) if e.reason == crate::error::Reason::ApprovalNotFound => {
            return not_found(Some(signed))
        }
        Err(e) => return unavailable(&e.message),
    };
    let mdid = s(&r, "managed_device_id");
    let name = cx.site.names.name(mdid).await;
    let mut top = String::new();
    match done {
        Some("approved") => top.push_str(&notice(
            "ok",
            "Approved. The requester's next call goes through once, within the validity window. Recorded in the audit chain.",
        )),
        Some("denied") => top.push_str(&notice(
            "ok",
            "Denied. The requester is told on their next call. Recorded in the audit chain.",
        )),
        _ => {}
    }
    let status = match &problem {
        Some((st, msg)) => {
            top.push_str(&notice(
                "error",
                &format!("{} Nothing was changed.", esc(msg)),
            ));
            *st
        }
        None => StatusCode::OK,
    };
    let opt_time = |k: &str| {
        let v = s(&r, k);
        if v.is_empty() {
            cell("")
        } else {
            when(v)
        }
    };
    let facts = format!(
        "<dl class=\"facts\"><dt>State</dt><dd>{}</dd><dt>Requester</dt><dd>{}</dd>\
         <dt>Device</dt><dd>{}</dd><dt>Owner</dt><dd>{}</dd><dt>Platform</dt><dd>{}</dd>\
         <dt>Policy</dt><dd>{}</dd><dt>Action</dt><dd>{}</dd><dt>Justification</dt><dd>{}</dd>\
         <dt>Opened</dt><dd>{}</dd><dt>Waits until</dt><dd>{}</dd><dt>Decided by</dt><dd>{}</dd>\
         <dt>Decided</dt><dd>{}</dd><dt>Comment</dt><dd>{}</dd><dt>Usable until</dt><dd>{}</dd>\
         <dt>Used</dt><dd>{}</dd><dt>Opened by request</dt><dd>{}</dd><dt>Used by request</dt><dd>{}</dd>\
         <dt>Approval id</dt><dd>{}</dd></dl>",
        badge(s(&r, "state")),
        person(&r["requester"]),
        device(name.as_deref(), mdid),
        cell(s(&r, "device_owner")),
        cell(s(&r, "platform")),
        esc(s(&r, "policy")),
        esc(s(&r, "action")),
        cell(s(&r, "justification")),
        opt_time("created_at"),
        opt_time("pending_until"),
        if r["decided_by"].is_object() { person(&r["decided_by"]) } else { cell("") },
        opt_time("decided_at"),
        cell(s(&r, "comment")),
        opt_time("valid_until"),
        opt_time("consumed_at"),
        request_link(signed, s(&r, "opened_by_request")),
        request_link(signed, s(&r, "consumed_by_request")),
        code(&id),
    );
    let form = if r.get("can_decide").and_then(Value::as_bool) == Some(true) {
        format!(
            "<h2>Decide</h2>{}",
            decide_form(&id, &signed.session.data.csrf)
        )
    } else {
        String::new()
    };
    html_reply(
        status,
        page(
            "Approval request",
            Some(&signed.viewer()),
            Section::History,
            &format!("{top}{facts}{form}"),
        ),
    )
}

fn request_link(signed: &Signed, request_id: &str) -> String {
    if request_id.is_empty() {
        cell("")
    } else if signed.auditor {
        format!(
            "<a href=\"/audit/requests/{}\">{}</a>",
            esc(request_id),
            code(request_id)
        )
    } else {
        code(request_id)
    }
}

// === audit ===

/// The CLI's filters (`passgate audit search`) from a form or query.
pub(super) fn filter_of(q: &[(String, String)]) -> Result<SearchFilter, String> {
    let text = |k: &str| {
        super::field(q, k)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    let time = |k: &str, until: bool| text(k).map(|t| parse_time_bound(&t, until)).transpose();
    Ok(SearchFilter {
        operator: text("operator"),
        device: text("device"),
        decision: match text("decision").as_deref() {
            None => None,
            Some("allow") => Some(Decision::Allow),
            Some("deny") => Some(Decision::Deny),
            Some(_) => return Err("decision is allow, deny or empty".into()),
        },
        reason: text("reason"),
        since: time("since", false)?,
        until: time("until", true)?,
        ..SearchFilter::default()
    })
}

const FILTER_KEYS: [&str; 6] = ["operator", "device", "decision", "reason", "since", "until"];

/// The filters as written, for the export's audit record.
pub(super) fn filter_details(q: &[(String, String)]) -> BTreeMap<String, String> {
    FILTER_KEYS
        .iter()
        .filter_map(|k| {
            super::field(q, k)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| (format!("filter_{k}"), v.chars().take(200).collect()))
        })
        .collect()
}

fn filter_form(q: &[(String, String)], csrf: &str) -> String {
    let v = |k: &str| esc(super::field(q, k).unwrap_or(""));
    let dec = super::field(q, "decision").unwrap_or("");
    let opt = |val: &str, label: &str| {
        let sel = if val == dec { " selected" } else { "" };
        format!("<option value=\"{val}\"{sel}>{label}</option>")
    };
    let hidden: String = FILTER_KEYS
        .iter()
        .map(|k| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", v(k)))
        .collect();
    format!(
        "<form method=\"get\" action=\"/audit\" class=\"filters\" role=\"search\">\
         <label for=\"f-operator\">Operator (oid or UPN)<input id=\"f-operator\" name=\"operator\" value=\"{}\" size=\"28\"></label>\
         <label for=\"f-device\">Managed device id<input id=\"f-device\" name=\"device\" value=\"{}\" size=\"36\"></label>\
         <label for=\"f-decision\">Decision<select id=\"f-decision\" name=\"decision\">{}{}{}</select></label>\
         <label for=\"f-reason\">Reason or event<input id=\"f-reason\" name=\"reason\" value=\"{}\" size=\"18\"></label>\
         <label for=\"f-since\">Since (RFC 3339 or date)<input id=\"f-since\" name=\"since\" value=\"{}\" size=\"20\"></label>\
         <label for=\"f-until\">Until (exclusive)<input id=\"f-until\" name=\"until\" value=\"{}\" size=\"20\"></label>\
         <button type=\"submit\" id=\"search\">Search</button></form>\
         <form method=\"post\" action=\"/audit/export\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">{hidden}\
         <button type=\"submit\" class=\"secondary\" id=\"export\">Export these results as CSV</button></form>",
        v("operator"),
        v("device"),
        opt("", "any"),
        opt("allow", "allow"),
        opt("deny", "deny"),
        v("reason"),
        v("since"),
        v("until"),
        esc(csrf),
    )
}

/// The row of one record, newest-first tables.
fn audit_row(h: &crate::audit::Hit) -> String {
    let r = &h.record;
    let kind = s(r, "kind");
    let outcome = h.outcomes.last().map(|(_, o)| o);
    let (what, reason, who, dev, status) = match kind {
        "decision" => (
            badge(s(r, "decision")),
            word(s(r, "reason")),
            if r["operator"].is_object() {
                person(&r["operator"])
            } else {
                cell("")
            },
            code(s(&r["target"], "managed_device_id")),
            match (s(r, "decision"), outcome) {
                ("allow", Some(o)) => esc(&o["status"].to_string()),
                ("allow", None) => "<span class=\"none\">no outcome</span>".into(),
                _ => esc(&r["status"].to_string()),
            },
        ),
        "approval" => (
            badge("approval"),
            word(s(r, "event")),
            person(if r["actor"].is_object() {
                &r["actor"]
            } else {
                &r["requester"]
            }),
            code(s(r, "managed_device_id")),
            cell(""),
        ),
        "console" => (
            badge("console"),
            word(&match r["reason"].as_str() {
                Some(why) => format!("{} refused: {why}", s(r, "event")),
                None => s(r, "event").to_string(),
            }),
            if r["person"].is_object() {
                person(&r["person"])
            } else {
                cell("")
            },
            cell(""),
            cell(""),
        ),
        "throttled" => (
            badge("deny"),
            esc(&format!("{} ×{} (throttled)", s(r, "reason"), r["count"])),
            esc(&format!(
                "{} {}",
                crate::audit::search::throttled_who(s(r, "reason")),
                s(r, "client_ip")
            )),
            cell(""),
            esc(&r["status"].to_string()),
        ),
        other => (
            badge(other),
            esc(s(r, "reason")),
            cell(""),
            cell(""),
            cell(""),
        ),
    };
    let rid = s(r, "request_id");
    let link = if rid.is_empty() || kind == "throttled" {
        cell("")
    } else {
        format!("<a href=\"/audit/requests/{}\">{}</a>", esc(rid), code(rid))
    };
    format!(
        "<tr><td>{}</td><td>{}</td><td>{what}</td><td>{reason}</td><td>{who}</td><td>{dev}</td><td>{}</td><td>{status}</td><td>{link}</td></tr>",
        when(s(r, "time")),
        esc(&h.seq.to_string()),
        cell(s(r, "policy")),
    )
}

async fn run_search(cx: &Cx, filter: SearchFilter) -> Result<crate::audit::SearchResult, String> {
    let files = crate::audit::rotation_set(&cx.site.audit_path)
        .map_err(|e| format!("the audit files could not be listed: {e}"))?;
    tokio::task::spawn_blocking(move || crate::audit::search(&files, &filter))
        .await
        .map_err(|_| "the search failed".to_string())?
        .map_err(|e| e.to_string())
}

pub(super) async fn audit_search(cx: &Cx, signed: &Signed, q: &[(String, String)]) -> Reply {
    let form = filter_form(q, &signed.session.data.csrf);
    let filter = match filter_of(q) {
        Ok(f) => f,
        Err(msg) => {
            return html_reply(
                StatusCode::BAD_REQUEST,
                page(
                    "Audit search",
                    Some(&signed.viewer()),
                    Section::Audit,
                    &format!("{form}{}", notice("error", &esc(&msg))),
                ),
            )
        }
    };
    let result = match run_search(cx, filter).await {
        Ok(r) => r,
        Err(msg) => return unavailable(&msg),
    };
    let size = cx.site.settings.page_size;
    let page_no = page_number(q);
    let total = result.hits.len();
    let mut rows = String::new();
    for h in result
        .hits
        .iter()
        .rev()
        .skip((page_no - 1) * size)
        .take(size)
    {
        rows.push_str(&audit_row(h));
    }
    let mut warn = String::new();
    if result.unreadable_lines > 0 {
        warn = notice(
            "warn",
            &format!(
                "{} line(s) could not be read as records and were skipped: check <a href=\"/audit/chain\">chain status</a>.",
                result.unreadable_lines
            ),
        );
    }
    let pairs: Vec<(&str, &str)> = FILTER_KEYS
        .iter()
        .map(|k| (*k, super::field(q, k).unwrap_or("")))
        .collect();
    let body = format!(
        "{form}{warn}<table><caption>Matching records, newest first (decisions joined with their outcomes)</caption><thead><tr>\
         <th scope=\"col\">Time</th><th scope=\"col\">Seq</th><th scope=\"col\">Kind</th><th scope=\"col\">Reason or event</th>\
         <th scope=\"col\">Who</th><th scope=\"col\">Device</th><th scope=\"col\">Policy</th><th scope=\"col\">Status</th>\
         <th scope=\"col\">Request</th></tr></thead><tbody>{rows}</tbody></table>{}",
        pager("/audit", &pairs, page_no, total, size)
    );
    html_reply(
        StatusCode::OK,
        page(
            "Audit search",
            Some(&signed.viewer()),
            Section::Audit,
            &body,
        ),
    )
}

/// One request's story: its decision, the approval it opened or used (every event), the
/// forwarded call's outcome with Graph's request-id, and console actions on that approval.
pub(super) async fn story(cx: &Cx, signed: &Signed, id: &str) -> Reply {
    let Some(id) = crate::text::guid(id) else {
        return not_found(Some(signed));
    };
    let result = match run_search(cx, SearchFilter::default()).await {
        Ok(r) => r,
        Err(msg) => return unavailable(&msg),
    };
    let decision = result
        .hits
        .iter()
        .find(|h| h.record["kind"] == "decision" && s(&h.record, "request_id") == id);
    // The approval this request opened (its `requested` event) or used (`approval_id`).
    let mut approval_ids: Vec<String> = Vec::new();
    if let Some(a) = decision.and_then(|d| d.record["approval_id"].as_str()) {
        approval_ids.push(a.to_string());
    }
    for h in &result.hits {
        if h.record["kind"] == "approval" && s(&h.record, "request_id") == id {
            let a = s(&h.record, "approval_id").to_string();
            if !approval_ids.contains(&a) {
                approval_ids.push(a);
            }
        }
    }
    let Some(d) = decision else {
        return html_reply(
            StatusCode::NOT_FOUND,
            page(
                "Request not found",
                Some(&signed.viewer()),
                Section::Audit,
                &notice(
                    "warn",
                    &format!(
                        "No decision record with request id {} in the current audit files.",
                        code(&id)
                    ),
                ),
            ),
        );
    };
    let r = &d.record;
    let outcome = d.outcomes.last().map(|(_, o)| o);
    let dev = &r["device"];
    let facts = format!(
        "<dl class=\"facts\"><dt>Decision</dt><dd>{} {}</dd><dt>Time</dt><dd>{}</dd><dt>Operator</dt><dd>{}</dd>\
         <dt>Device</dt><dd>{}</dd><dt>Device owner</dt><dd>{}</dd><dt>Platform</dt><dd>{}</dd><dt>Policy</dt><dd>{}</dd>\
         <dt>Message</dt><dd>{}</dd><dt>Client</dt><dd>{}</dd><dt>Approval</dt><dd>{}</dd>\
         <dt>Outcome</dt><dd>{}</dd><dt>Graph request-id</dt><dd>{}</dd><dt>Latency</dt><dd>{}</dd>\
         <dt>Request id</dt><dd>{}</dd><dt>Audit seq</dt><dd>{}</dd></dl>",
        badge(s(r, "decision")),
        esc(s(r, "reason")),
        when(s(r, "time")),
        if r["operator"].is_object() { person(&r["operator"]) } else { cell("") },
        code(s(&r["target"], "managed_device_id")),
        cell(s(dev, "user_principal_name")),
        cell(s(dev, "operating_system")),
        cell(s(r, "policy")),
        cell(s(r, "message")),
        esc(s(r, "client_ip")),
        if approval_ids.is_empty() { cell("") } else { approval_ids.iter().map(|a| code(a)).collect::<Vec<_>>().join(" ") },
        match outcome {
            Some(o) => format!("HTTP {}{}", esc(&o["status"].to_string()), o["error"].as_str().map(|e| format!(" — {}", esc(e))).unwrap_or_default()),
            None if s(r, "decision") == "allow" => "<span class=\"none\">no outcome recorded</span>".into(),
            None => format!("refused with HTTP {}", esc(&r["status"].to_string())),
        },
        code(outcome.map(|o| s(o, "graph_request_id")).unwrap_or("")),
        cell(&outcome.and_then(|o| o["latency_ms"].as_f64()).map(|l| format!("{l:.0} ms")).unwrap_or_default()),
        code(&id),
        esc(&d.seq.to_string()),
    );
    let mut events: Vec<(u64, String)> = Vec::new();
    let entry = |t: &str, text: String| {
        format!("<li><span class=\"when\">{}</span><br>{text}</li>", when(t))
    };
    events.push((
        d.seq,
        entry(
            s(r, "time"),
            format!(
                "Decision {} — {}",
                badge(s(r, "decision")),
                esc(s(r, "reason"))
            ),
        ),
    ));
    for (_, o) in &d.outcomes {
        events.push((
            o["seq"].as_u64().unwrap_or(0),
            entry(
                s(o, "time"),
                format!(
                    "Outcome: Graph answered HTTP {} (request-id {})",
                    esc(&o["status"].to_string()),
                    code(s(o, "graph_request_id"))
                ),
            ),
        ));
    }
    for h in &result.hits {
        let k = s(&h.record, "kind");
        let a = s(&h.record, "approval_id");
        if a.is_empty() || !approval_ids.iter().any(|x| x == a) {
            continue;
        }
        let text = match k {
            "approval" => {
                let actor = if h.record["actor"].is_object() {
                    format!(" by {}", person(&h.record["actor"]))
                } else {
                    String::new()
                };
                let comment = match h.record["comment"].as_str() {
                    Some(c) => format!(" — “{}”", esc(c)),
                    None => String::new(),
                };
                let reason = match h.record["reason"].as_str() {
                    Some(c) => format!(" ({})", esc(c)),
                    None => String::new(),
                };
                format!(
                    "Approval {}{actor}{reason}{comment}",
                    badge(s(&h.record, "event"))
                )
            }
            "console" => format!(
                "Console: {} {} by {}",
                esc(s(&h.record, "event")),
                badge(s(&h.record, "result")),
                person(&h.record["person"])
            ),
            _ => continue,
        };
        events.push((h.seq, entry(s(&h.record, "time"), text)));
    }
    events.sort_by_key(|(seq, _)| *seq);
    events.dedup_by_key(|(seq, _)| *seq);
    let timeline: String = events.into_iter().map(|(_, e)| e).collect();
    let body = format!("{facts}<h2>Timeline</h2><ol class=\"timeline\">{timeline}</ol>");
    html_reply(
        StatusCode::OK,
        page(
            "Request story",
            Some(&signed.viewer()),
            Section::Audit,
            &body,
        ),
    )
}

pub(super) async fn chain(cx: &Cx, signed: &Signed) -> Reply {
    let path = cx.site.audit_path.clone();
    let key = cx.site.hmac_key.clone();
    let verified = tokio::task::spawn_blocking(move || {
        let files = crate::audit::rotation_set(&path)?;
        let opts = crate::audit::VerifyOptions {
            hmac_key: key,
            // Old files may have been archived away: report where the set starts instead.
            allow_partial: true,
        };
        Ok::<_, std::io::Error>(crate::audit::verify_set(&files, &opts))
    })
    .await;
    let body = match verified {
        Ok(Ok(Ok(sum))) => {
            let mut files = String::new();
            for f in &sum.files {
                files.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}–{}</td></tr>",
                    code(&f.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default()),
                    esc(&f.summary.records.to_string()),
                    esc(&f.summary.first_seq.to_string()),
                    esc(&f.summary.last_seq.to_string()),
                ));
            }
            let start = if sum.partial {
                format!(
                    "partial set: starts at seq {} after hash {} (match it against your anchor)",
                    sum.first_seq,
                    code(&sum.first_prev)
                )
            } else {
                "from the first record of the chain".into()
            };
            format!(
                "{}<dl class=\"facts\"><dt>Records</dt><dd>{}</dd><dt>Sequence</dt><dd>{}–{}</dd><dt>Start</dt><dd>{start}</dd>\
                 <dt>Keyed (HMAC) records</dt><dd>{}</dd><dt>Last hash</dt><dd><code class=\"hash\" id=\"last-hash\">{}</code></dd></dl>\
                 <p>Anchor the last hash outside passgate (a ticket, your SIEM) to detect a wholesale rewrite later; \
                 <code>passgate audit verify</code> checks the same files offline.</p>\
                 <table><caption>Files in chain order</caption><thead><tr><th scope=\"col\">File</th><th scope=\"col\">Records</th><th scope=\"col\">Seq</th></tr></thead><tbody>{files}</tbody></table>",
                notice("ok", "<strong>Verified:</strong> every record's hash recomputes and every link holds."),
                esc(&sum.records.to_string()),
                esc(&sum.first_seq.to_string()),
                esc(&sum.last_seq.to_string()),
                esc(&sum.keyed_records.to_string()),
                esc(&sum.last_hash),
            )
        }
        Ok(Ok(Err(e))) => format!(
            "{}<p>Run <code>passgate audit verify</code> on the files for the full report, and treat the log as evidence.</p>",
            notice("error", &format!("<strong>FAILED:</strong> {}", esc(&e.to_string())))
        ),
        Ok(Err(e)) => notice("error", &format!("The audit files could not be listed: {}", esc(&e.to_string()))),
        Err(_) => notice("error", "The verification failed to run."),
    };
    html_reply(
        StatusCode::OK,
        page(
            "Chain status",
            Some(&signed.viewer()),
            Section::Chain,
            &body,
        ),
    )
}
