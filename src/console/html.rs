//! HTML for the console: one escaping helper every dynamic value goes through, and the page
//! frame (header, navigation, sign-out form). Server-rendered with `format!`, no template engine
//! and no script: everything shown that came from the audit log, the approval store, Graph or a
//! token is escaped here, and nothing here may emit inline script, inline style or a third-party
//! URL (the Content-Security-Policy would refuse them anyway).

/// Escapes text for HTML element content and for double- or single-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // Bidi overrides and other controls could reorder or hide what an auditor reads.
            c if c.is_control() && c != '\n' && c != '\t' => o.push('\u{fffd}'),
            '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                o.push('\u{fffd}')
            }
            c => o.push(c),
        }
    }
    o
}

/// A query string (`?a=1&b=2`) from pairs, form-encoded, then escaped for an attribute.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        q.append_pair(k, v);
        any = true;
    }
    if any {
        format!("?{}", q.finish())
    } else {
        String::new()
    }
}

/// Which part of the console a page belongs to, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Pending,
    History,
    Audit,
    Chain,
    None,
}

/// The signed-in person as the frame shows them.
pub struct Viewer<'a> {
    pub name: &'a str,
    pub upn: &'a str,
    pub approver: bool,
    pub auditor: bool,
    pub csrf: &'a str,
}

fn nav_link(href: &str, label: &str, current: bool) -> String {
    if current {
        format!("<li><a href=\"{href}\" aria-current=\"page\">{label}</a></li>")
    } else {
        format!("<li><a href=\"{href}\">{label}</a></li>")
    }
}

/// A whole page: `title` is text (escaped here), `body` is HTML built by the caller from escaped
/// parts.
pub fn page(title: &str, viewer: Option<&Viewer<'_>>, section: Section, body: &str) -> String {
    let mut nav = String::new();
    let mut who = String::new();
    if let Some(v) = viewer {
        let mut links = String::new();
        if v.approver {
            links.push_str(&nav_link(
                "/approvals",
                "Pending approvals",
                section == Section::Pending,
            ));
            links.push_str(&nav_link(
                "/approvals/history",
                "Approval history",
                section == Section::History,
            ));
        }
        if v.auditor {
            links.push_str(&nav_link(
                "/audit",
                "Audit search",
                section == Section::Audit,
            ));
            links.push_str(&nav_link(
                "/audit/chain",
                "Chain status",
                section == Section::Chain,
            ));
        }
        nav = format!("<nav aria-label=\"Console\"><ul>{links}</ul></nav>");
        let mut roles = Vec::new();
        if v.approver {
            roles.push("approver");
        }
        if v.auditor {
            roles.push("auditor");
        }
        who = format!(
            "<div class=\"who\"><span class=\"person\">{}</span> <span class=\"upn\">{}</span> \
             <span class=\"roles\">{}</span>\
             <form method=\"post\" action=\"/auth/sign-out\" class=\"inline\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\" class=\"link\">Sign out</button></form></div>",
            esc(v.name),
            esc(v.upn),
            esc(&roles.join(" · ")),
            esc(v.csrf)
        );
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} — passgate console</title>\
         <link rel=\"stylesheet\" href=\"/static/console.css\"></head>\
         <body><a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><div class=\"brand\"><span class=\"logo\" aria-hidden=\"true\">◆</span> passgate <span class=\"sub\">console</span></div>{nav}{who}</header>\
         <main id=\"main\" tabindex=\"-1\"><h1>{}</h1>{body}</main>\
         <footer>passgate {} — every action on this console is recorded in the audit chain.</footer>\
         </body></html>\n",
        esc(title),
        esc(title),
        env!("CARGO_PKG_VERSION")
    )
}

/// A notice box: `kind` is `ok`, `warn` or `error`; `html` is already escaped.
pub fn notice(kind: &str, html: &str) -> String {
    let role = if kind == "error" { "alert" } else { "status" };
    format!("<div class=\"notice {kind}\" role=\"{role}\">{html}</div>")
}

/// An empty cell shows a dash, so a blank is never mistaken for a value.
pub fn cell(v: &str) -> String {
    if v.is_empty() {
        "<span class=\"none\">—</span>".into()
    } else {
        esc(v)
    }
}

/// An id, set in monospace.
pub fn code(v: &str) -> String {
    if v.is_empty() {
        cell(v)
    } else {
        format!("<code>{}</code>", esc(v))
    }
}

/// A state or decision as a badge: the word is shown (colour alone never carries meaning).
pub fn badge(word: &str) -> String {
    let class = match word {
        "allow" | "approved" | "ok" | "consumed" => "good",
        "deny" | "denied" | "refused" | "FAILED" => "bad",
        "pending" => "wait",
        _ => "plain",
    };
    format!("<span class=\"badge {class}\">{}</span>", esc(word))
}

/// The CSS, served at `/static/console.css`.
pub const CSS: &str = include_str!("assets/console.css");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup_quotes_and_bidi() {
        assert_eq!(
            esc("<script>alert('x')</script>&\"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;y&quot;"
        );
        assert_eq!(esc("a\u{202e}b\u{1b}c"), "a\u{fffd}b\u{fffd}c");
        assert_eq!(esc("plain text, ü"), "plain text, ü");
        // An attribute cannot be broken out of, with either quote.
        let attr = format!("<a title=\"{}\">", esc("\" onmouseover=\"x"));
        assert!(!attr.contains("\" onmouseover"));
        let attr = format!("<a title='{}'>", esc("' onmouseover='x"));
        assert!(!attr.contains("' onmouseover"));
    }

    #[test]
    fn queries_are_encoded_then_escaped() {
        assert_eq!(query(&[("a", "1 2"), ("b", "")]), "?a=1+2");
        assert_eq!(query(&[("a", "")]), "");
        assert_eq!(query(&[("q", "x&y=<z>")]), "?q=x%26y%3D%3Cz%3E");
    }

    #[test]
    fn pages_carry_no_inline_script_or_style() {
        let v = Viewer {
            name: "<b>Dana</b>",
            upn: "dana@contoso",
            approver: true,
            auditor: false,
            csrf: "tok\"en",
        };
        let p = page("T<i>", Some(&v), Section::Pending, "<p>x</p>");
        assert!(!p.contains("<script"));
        assert!(!p.contains("style="));
        assert!(!p.contains("<b>Dana</b>"));
        assert!(p.contains("&lt;b&gt;Dana&lt;/b&gt;"));
        assert!(p.contains("T&lt;i&gt;"));
        assert!(p.contains("value=\"tok&quot;en\""));
        assert!(p.contains("aria-current=\"page\""));
    }
}
