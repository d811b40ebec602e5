//! `passgate audit search`: filters decision records of an audit file set and joins each to its
//! outcome by `request_id`, rendered as an aligned table, JSON Lines or CSV. It only reads; it
//! does not verify the chain (that is `audit verify`) and never prints control characters raw.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

use super::record::Decision;
use super::scan::read_first_line_of;

/// What to look for; every filter that is set must match. Text filters compare
/// case-insensitively and exactly (no substrings).
#[derive(Debug, Clone, Default)]
pub struct SearchFilter {
    /// The operator's `oid` or `upn`.
    pub operator: Option<String>,
    /// The target's `managed_device_id`.
    pub device: Option<String>,
    pub decision: Option<Decision>,
    /// Reason code, e.g. `allowed`, `no_policy`.
    pub reason: Option<String>,
    /// Records at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Records strictly before this time.
    pub until: Option<DateTime<Utc>>,
    /// The `Passgate-Justification` the operator gave, e.g. a ticket number.
    pub justification: Option<String>,
    /// Only decisions under break-glass policies.
    pub break_glass: bool,
}

impl SearchFilter {
    /// Whether only time filters (or none) are set; then recovery records are shown too.
    fn time_only(&self) -> bool {
        self.operator.is_none()
            && self.device.is_none()
            && self.decision.is_none()
            && self.reason.is_none()
            && self.justification.is_none()
            && !self.break_glass
    }
}

/// Parses a `--since`/`--until` value: RFC 3339 (`2026-11-28T17:00:00Z`, offsets allowed) or a
/// date `YYYY-MM-DD` (UTC). A date as `until` means the end of that day, so
/// `--since 2026-11-28 --until 2026-11-28` is the whole day.
pub fn parse_time_bound(s: &str, is_until: bool) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        let day = if is_until { d.succ_opt() } else { Some(d) };
        if let Some(midnight) = day.and_then(|d| d.and_hms_opt(0, 0, 0)) {
            return Ok(midnight.and_utc());
        }
    }
    Err(format!(
        "`{}` is not a time: use RFC 3339 (2026-11-28T17:00:00Z) or a date (2026-11-28)",
        sanitize(t)
    ))
}

/// One matching decision (or recovery) record and the outcomes that share its `request_id`.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The file it was found in.
    pub file: PathBuf,
    pub seq: u64,
    /// The line as stored (its hash still checks).
    pub line: String,
    pub record: Value,
    /// Outcome records for this request, in file order: `(line, record)`.
    pub outcomes: Vec<(String, Value)>,
}

#[derive(Debug, Default)]
pub struct SearchResult {
    /// In chain order (files ordered by first seq, then line order).
    pub hits: Vec<Hit>,
    /// Lines that are not JSON objects (torn or garbage); `audit verify` says which.
    pub unreadable_lines: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{}: cannot read audit file: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// Reads every line of an audit file set in chain order — files in any order are sorted by
/// their first `seq`, then read line by line — and hands each line (without its `\n`) to
/// `visit` with its file and 1-based line number. The one reader of a file set for `audit
/// search` and `policy replay`; it judges nothing (no JSON, no hash).
pub fn read_set<E: From<SearchError>>(
    paths: &[PathBuf],
    mut visit: impl FnMut(&Path, u64, &[u8]) -> Result<(), E>,
) -> Result<(), E> {
    let mut ordered = Vec::with_capacity(paths.len());
    for p in paths {
        ordered.push((lenient_first_seq(p)?, p));
    }
    ordered.sort_by_key(|(s, _)| s.unwrap_or(u64::MAX));
    for (_, path) in ordered {
        let io_err = |source| SearchError::Io {
            path: path.clone(),
            source,
        };
        let mut reader = BufReader::new(File::open(path).map_err(io_err)?);
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        loop {
            buf.clear();
            if reader.read_until(b'\n', &mut buf).map_err(io_err)? == 0 {
                break;
            }
            line_no += 1;
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            visit(path, line_no, &buf)?;
        }
    }
    Ok(())
}

/// Searches every file (in any order: they are read in chain order by their first `seq`, so an
/// outcome in a later rotated file still joins its decision). A line that is not a JSON object
/// of a record version passgate writes or wrote ([`super::readable_version`]) is counted as
/// unreadable.
pub fn search(paths: &[PathBuf], filter: &SearchFilter) -> Result<SearchResult, SearchError> {
    let mut out = SearchResult::default();
    // request_id → index in out.hits, for the outcome join.
    let mut by_request: HashMap<String, usize> = HashMap::new();
    read_set(paths, |path, _, buf| -> Result<(), SearchError> {
        let Ok(record) = serde_json::from_slice::<Value>(buf) else {
            out.unreadable_lines += 1;
            return Ok(());
        };
        if !record.is_object() || !record["v"].as_u64().is_some_and(super::readable_version) {
            out.unreadable_lines += 1;
            return Ok(());
        }
        let line = String::from_utf8_lossy(buf).into_owned();
        match record["kind"].as_str() {
            Some("decision") => {
                if matches_decision(&record, filter) {
                    if let Some(id) = record["request_id"].as_str() {
                        by_request.insert(id.to_owned(), out.hits.len());
                    }
                    out.hits.push(hit(path, line, record));
                }
            }
            Some("outcome") => {
                let idx = record["request_id"]
                    .as_str()
                    .and_then(|id| by_request.get(id).copied());
                if let Some(i) = idx {
                    out.hits[i].outcomes.push((line, record));
                }
            }
            Some("approval") => {
                if matches_approval(&record, filter) {
                    out.hits.push(hit(path, line, record));
                }
            }
            Some("throttled") => {
                if matches_throttled(&record, filter) {
                    out.hits.push(hit(path, line, record));
                }
            }
            Some("console") => {
                if matches_console(&record, filter) {
                    out.hits.push(hit(path, line, record));
                }
            }
            Some("recovery") => {
                if filter.time_only() && in_time(&record, filter) {
                    out.hits.push(hit(path, line, record));
                }
            }
            _ => out.unreadable_lines += 1,
        }
        Ok(())
    })?;
    Ok(out)
}

fn hit(path: &Path, line: String, record: Value) -> Hit {
    Hit {
        file: path.to_owned(),
        seq: record["seq"].as_u64().unwrap_or(0),
        line,
        record,
        outcomes: Vec::new(),
    }
}

fn lenient_first_seq(path: &Path) -> Result<Option<u64>, SearchError> {
    let io_err = |source| SearchError::Io {
        path: path.to_owned(),
        source,
    };
    let Some(first) = read_first_line_of(path).map_err(io_err)? else {
        return Ok(None);
    };
    let first: Option<Value> = serde_json::from_slice(first.bytes.trim_ascii_end()).ok();
    Ok(first.and_then(|v| v["seq"].as_u64()))
}

fn eq_ci(a: Option<&str>, b: &str) -> bool {
    a.is_some_and(|a| a.eq_ignore_ascii_case(b) || a.to_lowercase() == b.to_lowercase())
}

fn in_time(rec: &Value, f: &SearchFilter) -> bool {
    if f.since.is_none() && f.until.is_none() {
        return true;
    }
    let Some(t) = rec["time"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
    else {
        return false;
    };
    f.since.is_none_or(|s| t >= s) && f.until.is_none_or(|u| t < u)
}

fn matches_decision(rec: &Value, f: &SearchFilter) -> bool {
    if let Some(op) = &f.operator {
        let o = &rec["operator"];
        if !(eq_ci(o["oid"].as_str(), op) || eq_ci(o["upn"].as_str(), op)) {
            return false;
        }
    }
    if let Some(d) = &f.device {
        if !eq_ci(rec["target"]["managed_device_id"].as_str(), d) {
            return false;
        }
    }
    if let Some(want) = f.decision {
        let want = match want {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        };
        if rec["decision"].as_str() != Some(want) {
            return false;
        }
    }
    if let Some(r) = &f.reason {
        if !eq_ci(rec["reason"].as_str(), r) {
            return false;
        }
    }
    if let Some(j) = &f.justification {
        if !eq_ci(rec["justification"].as_str(), j) {
            return false;
        }
    }
    if f.break_glass && rec["break_glass"].as_bool() != Some(true) {
        return false;
    }
    in_time(rec, f)
}

/// An `approval` record matches an operator who is its requester or its actor, its device, its
/// event as `--reason`, and time; never `--decision` (it is no decision).
fn matches_approval(rec: &Value, f: &SearchFilter) -> bool {
    if f.decision.is_some() {
        return false;
    }
    if let Some(op) = &f.operator {
        let is = |p: &Value| eq_ci(p["oid"].as_str(), op) || eq_ci(p["upn"].as_str(), op);
        if !(is(&rec["requester"]) || is(&rec["actor"])) {
            return false;
        }
    }
    if let Some(d) = &f.device {
        if !eq_ci(rec["managed_device_id"].as_str(), d) {
            return false;
        }
    }
    if let Some(r) = &f.reason {
        if !eq_ci(rec["event"].as_str(), r) {
            return false;
        }
    }
    in_time(rec, f)
}

/// A `console` record matches an operator who is its person, its event as `--reason` (or its
/// refusal reason), and time; never a device or `--decision`.
fn matches_console(rec: &Value, f: &SearchFilter) -> bool {
    if f.decision.is_some() || f.device.is_some() {
        return false;
    }
    if let Some(op) = &f.operator {
        let p = &rec["person"];
        if !(eq_ci(p["oid"].as_str(), op) || eq_ci(p["upn"].as_str(), op)) {
            return false;
        }
    }
    if let Some(r) = &f.reason {
        if !(eq_ci(rec["event"].as_str(), r) || eq_ci(rec["reason"].as_str(), r)) {
            return false;
        }
    }
    in_time(rec, f)
}

/// Who a `throttled` summary's requests came from, as the table and the console name them:
/// shed requests were never read, so their senders may well have been operators.
pub fn throttled_who(reason: &str) -> &'static str {
    if reason == crate::error::Reason::GatewayBusy.as_str() {
        "shed, from"
    } else {
        "unauthenticated"
    }
}

/// A `throttled` summary matches filters that do not name an operator or a device (it has
/// neither): by decision `deny`, by the reason its requests would have had or by
/// `unauthenticated_throttled`, and by time (its first request).
fn matches_throttled(rec: &Value, f: &SearchFilter) -> bool {
    if f.operator.is_some()
        || f.device.is_some()
        || f.justification.is_some()
        || f.break_glass
        || f.decision == Some(Decision::Allow)
    {
        return false;
    }
    if let Some(r) = &f.reason {
        if !(eq_ci(rec["reason"].as_str(), r) || eq_ci(rec["answered"].as_str(), r)) {
            return false;
        }
    }
    in_time(rec, f)
}

/// Output formats of `audit search`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for reading.
    #[default]
    Table,
    /// JSON Lines: every matching record and its outcomes, as stored.
    Json,
    /// RFC 4180 CSV with a header row.
    Csv,
}

/// One flattened row for the table and CSV.
struct Row {
    time: String,
    seq: String,
    kind: String,
    request_id: String,
    decision: String,
    reason: String,
    operator_oid: String,
    operator_upn: String,
    device: String,
    policy: String,
    /// Deny: the status passgate answered; allow: the forwarded call's status from the outcome.
    status: String,
    graph_request_id: String,
    client_ip: String,
    latency_ms: String,
    error: String,
    /// Requests the record stands for: 1, or a `throttled` summary's count.
    count: String,
    /// The operator's `Passgate-Justification` (caller-controlled text).
    justification: String,
    break_glass: bool,
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn row(h: &Hit) -> Row {
    let r = &h.record;
    let kind = s(&r["kind"]);
    let approval = kind == "approval";
    let console = kind == "console";
    let last_outcome = h.outcomes.last().map(|(_, o)| o);
    let (status, graph_request_id, latency_ms, error) = if kind == "recovery" {
        (String::new(), String::new(), String::new(), String::new())
    } else if kind == "throttled" {
        (s(&r["status"]), String::new(), String::new(), String::new())
    } else if kind == "approval" || console {
        (String::new(), String::new(), String::new(), String::new())
    } else if r["decision"].as_str() == Some("deny") {
        // A denial whose record was still being written when passgate gave up on it carries an
        // outcome with the 503 the client actually got.
        match last_outcome {
            Some(o) => (
                s(&o["status"]),
                String::new(),
                String::new(),
                s(&o["error"]),
            ),
            None => (s(&r["status"]), String::new(), String::new(), String::new()),
        }
    } else {
        match last_outcome {
            Some(o) => (
                s(&o["status"]),
                s(&o["graph_request_id"]),
                s(&o["latency_ms"]),
                s(&o["error"]),
            ),
            None => (String::new(), String::new(), String::new(), String::new()),
        }
    };
    Row {
        time: s(&r["time"]),
        seq: h.seq.to_string(),
        decision: match kind.as_str() {
            "recovery" => "recovery".into(),
            "approval" => "approval".into(),
            "console" => "console".into(),
            "throttled" => "deny".into(),
            _ => s(&r["decision"]),
        },
        count: match kind.as_str() {
            "throttled" => s(&r["count"]),
            "recovery" | "approval" | "console" => String::new(),
            _ => "1".into(),
        },
        kind,
        request_id: s(&r["request_id"]),
        reason: if approval {
            s(&r["event"])
        } else if console {
            // The event, and why it was refused when it was: `approve`, `approve refused: …`.
            match r["reason"].as_str() {
                Some(why) => format!("{} refused: {why}", s(&r["event"])),
                None => s(&r["event"]),
            }
        } else {
            s(&r["reason"])
        },
        operator_oid: if approval {
            s(&r["requester"]["oid"])
        } else if console {
            s(&r["person"]["oid"])
        } else {
            s(&r["operator"]["oid"])
        },
        operator_upn: if approval {
            s(&r["requester"]["upn"])
        } else if console {
            s(&r["person"]["upn"])
        } else {
            s(&r["operator"]["upn"])
        },
        device: if approval {
            s(&r["managed_device_id"])
        } else {
            s(&r["target"]["managed_device_id"])
        },
        policy: s(&r["policy"]),
        status,
        graph_request_id,
        client_ip: s(&r["client_ip"]),
        latency_ms,
        error,
        justification: s(&r["justification"]),
        break_glass: r["break_glass"].as_bool() == Some(true),
    }
}

/// Writes the result in `format`.
pub fn render(result: &SearchResult, format: Format, out: &mut dyn Write) -> io::Result<()> {
    match format {
        Format::Json => render_json(result, out),
        Format::Csv => render_csv(result, out),
        Format::Table => render_table(result, out),
    }
}

fn render_json(result: &SearchResult, out: &mut dyn Write) -> io::Result<()> {
    // Records and outcomes interleaved in seq order, each exactly as stored.
    let mut lines: Vec<(u64, &str)> = Vec::new();
    for h in &result.hits {
        lines.push((h.seq, &h.line));
        for (l, o) in &h.outcomes {
            lines.push((o["seq"].as_u64().unwrap_or(0), l));
        }
    }
    lines.sort_by_key(|(seq, _)| *seq);
    for (_, l) in lines {
        out.write_all(l.as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

const CSV_HEADER: [&str; 17] = [
    "time",
    "seq",
    "kind",
    "request_id",
    "decision",
    "reason",
    "operator_oid",
    "operator_upn",
    "device",
    "policy",
    "status",
    "graph_request_id",
    "client_ip",
    "latency_ms",
    "error",
    "count",
    "justification",
];

/// Text for a CSV cell: a leading `=`, `+`, `-`, `@`, tab or CR would make
/// a spreadsheet read it as a formula, so such a value gets a leading `'` (OWASP's advice).
fn csv_text(v: &str) -> String {
    if v.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{v}")
    } else {
        v.to_owned()
    }
}

/// RFC 4180: a field with a comma, quote, CR or LF is quoted, quotes doubled.
fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_owned()
    }
}

fn render_csv(result: &SearchResult, out: &mut dyn Write) -> io::Result<()> {
    out.write_all(CSV_HEADER.join(",").as_bytes())?;
    out.write_all(b"\r\n")?;
    for h in &result.hits {
        let r = row(h);
        let fields = [
            &r.time,
            &r.seq,
            &r.kind,
            &r.request_id,
            &r.decision,
            &r.reason,
            &r.operator_oid,
            &r.operator_upn,
            &r.device,
            &r.policy,
            &r.status,
            &r.graph_request_id,
            &r.client_ip,
            &r.latency_ms,
            &r.error,
            &r.count,
            &r.justification,
        ];
        // Every cell, not only free text: a UPN or an error text from the trail could start a
        // formula too, and the console exports this same CSV.
        let line: Vec<String> = fields.iter().map(|f| csv_field(&csv_text(f))).collect();
        out.write_all(line.join(",").as_bytes())?;
        out.write_all(b"\r\n")?;
    }
    Ok(())
}

/// Replaces control characters (including bidi overrides) so a crafted value cannot rewrite the
/// terminal or the table's layout.
pub(crate) fn sanitize(v: &str) -> String {
    v.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                '?'
            } else {
                c
            }
        })
        .collect()
}

/// Longest justification shown in the table, in characters (JSON and CSV have all of it).
const MAX_TABLE_JUSTIFICATION_CHARS: usize = 48;

fn shortened(v: &str, max: usize) -> String {
    if v.chars().count() <= max {
        return v.to_owned();
    }
    let mut out: String = v.chars().take(max - 1).collect();
    out.push('…');
    out
}

fn render_table(result: &SearchResult, out: &mut dyn Write) -> io::Result<()> {
    let header = [
        "TIME",
        "DECISION",
        "REASON",
        "OPERATOR",
        "DEVICE",
        "POLICY",
        "STATUS",
        "REQUEST_ID",
        "JUSTIFICATION",
    ];
    let dash = |v: String| if v.is_empty() { "-".to_owned() } else { v };
    let rows: Vec<[String; 9]> = result
        .hits
        .iter()
        .map(|h| {
            let r = row(h);
            let operator = if r.operator_upn.is_empty() {
                r.operator_oid
            } else {
                r.operator_upn
            };
            // A summary names its client and how many requests it stands for.
            let (operator, reason) = if r.kind == "throttled" {
                (
                    format!("({} {})", throttled_who(&r.reason), r.client_ip),
                    format!("{} x{} (throttled)", r.reason, r.count),
                )
            } else {
                (operator, r.reason)
            };
            let status = if r.decision == "allow" && r.status.is_empty() {
                // Allowed but no outcome recorded (yet): the forward's result is unknown.
                "no outcome".to_owned()
            } else if !r.error.is_empty() {
                format!("{} (error)", dash(r.status))
            } else {
                r.status
            };
            let policy = if r.break_glass {
                format!("{} (BREAK-GLASS)", r.policy)
            } else {
                r.policy
            };
            [
                r.time,
                r.decision,
                reason,
                operator,
                r.device,
                policy,
                status,
                r.request_id,
                // The last column is not padded, but a long statement still wraps: keep a prefix.
                shortened(&r.justification, MAX_TABLE_JUSTIFICATION_CHARS),
            ]
            .map(|c| dash(sanitize(&c)))
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let write_row = |out: &mut dyn Write, cells: &[&str]| -> io::Result<()> {
        let mut line = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        out.write_all(line.trim_end().as_bytes())?;
        out.write_all(b"\n")
    };
    write_row(out, &header)?;
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        write_row(out, &cells)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds() {
        assert_eq!(
            parse_time_bound("2026-11-28", false).unwrap().to_rfc3339(),
            "2026-11-28T00:00:00+00:00"
        );
        assert_eq!(
            parse_time_bound("2026-11-28", true).unwrap().to_rfc3339(),
            "2026-11-29T00:00:00+00:00"
        );
        assert_eq!(
            parse_time_bound("2026-11-28T18:00:00+01:00", false)
                .unwrap()
                .to_rfc3339(),
            "2026-11-28T17:00:00+00:00"
        );
        assert!(parse_time_bound("yesterday", false).is_err());
        assert!(parse_time_bound("2026-13-01", false).is_err());
    }

    #[test]
    fn csv_quoting_follows_rfc_4180() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn operator_text_cannot_become_a_spreadsheet_formula() {
        assert_eq!(csv_text("INC0012345"), "INC0012345");
        assert_eq!(csv_text("=HYPERLINK(\"x\")"), "'=HYPERLINK(\"x\")");
        for lead in ["+", "-", "@", "\t", "\r"] {
            assert!(csv_text(&format!("{lead}1")).starts_with('\''), "{lead:?}");
        }
        assert_eq!(shortened("abc", 3), "abc");
        assert_eq!(shortened("abcdé", 3), "ab…");
    }

    #[test]
    fn sanitize_strips_terminal_escapes() {
        assert_eq!(sanitize("a\u{1b}[31mb\u{202e}c"), "a?[31mb?c");
    }
}
