//! Audit tooling for security teams, end to end: rotation through the real writer, set
//! verification (library and `passgate audit verify`), keyed chains, search, schema coverage,
//! health and the audit config keys.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use passgate::audit::test_support::{field, lines, write_lines};
use passgate::audit::{
    verify_set, AuditLog, AuditOptions, BreakKind, Decision, DecisionRecord, DeviceRecord,
    OperatorRecord, OutcomeRecord, SearchFilter, SetError, TargetRecord, VerifyOptions,
    GENESIS_PREV,
};

const BIN: &str = env!("CARGO_BIN_EXE_passgate");
const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const DEV_A: &str = "11111111-2222-3333-4444-555555555555";
const DEV_B: &str = "99999999-8888-7777-6666-555555555555";

fn decision(id: &str, upn: &str, device: &str, decision: Decision, reason: &str) -> DecisionRecord {
    let deny = decision == Decision::Deny;
    DecisionRecord {
        request_id: id.to_owned(),
        client_request_id: Some(format!("c-{id}")),
        client_ip: "127.0.0.1".into(),
        client_cert_subject: None,
        method: "POST".into(),
        path: format!("/v1.0/deviceManagement/managedDevices/{device}/recoverPasscode"),
        action: Some("recoverPasscode".into()),
        api_version: Some("v1.0".into()),
        operator: Some(OperatorRecord {
            oid: format!("oid-{}", upn.split('@').next().unwrap_or(upn)),
            tid: "tid-1".into(),
            upn: Some(upn.to_owned()),
            kind: "user".into(),
            client_app_id: Some("app-1".into()),
        }),
        target: Some(TargetRecord {
            managed_device_id: device.to_owned(),
            route_form: "device_management".into(),
            user_id: None,
            detected_app_id: None,
        }),
        device: Some(DeviceRecord {
            azure_ad_device_id: Some("aad-1".into()),
            device_object_id: Some("obj-1".into()),
            operating_system: "Windows".into(),
            user_principal_name: Some("bob@example.com".into()),
            user_id: Some("u-1".into()),
            member_of: vec!["g-1".into()],
        }),
        decision,
        reason: reason.into(),
        policy: Some("helpdesk".into()),
        status: deny.then_some(403),
        message: deny.then(|| "refused, see reason".to_owned()),
        abandoned: None,
        approval_id: None,
        report: Vec::new(),
        justification: None,
        break_glass: false,
        inputs: None,
    }
}

fn outcome(id: &str, status: u16, error: Option<&str>) -> OutcomeRecord {
    OutcomeRecord {
        request_id: id.to_owned(),
        status,
        graph_request_id: Some(format!("g-{id}")),
        latency_ms: 12.5,
        error: error.map(str::to_owned),
    }
}

/// The current file and every rotated one, sorted by name (rotated names sort in chain order,
/// the current file `audit.jsonl` first).
fn set_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with("audit.jsonl") && !n.contains(".torn-")
        })
        .collect();
    v.sort();
    v
}

/// Rotated files in chain order, then the current file.
fn chain_order(dir: &Path) -> Vec<PathBuf> {
    let mut v = set_files(dir);
    let current = v.remove(0);
    assert_eq!(current.file_name().unwrap(), "audit.jsonl");
    v.push(current);
    v
}

/// Writes `n` decisions through the real writer, `wave` at a time concurrently so that group
/// commit keeps the fsync count (and the test's run time) low.
async fn write_decisions(log: &AuditLog, n: usize, wave: usize) {
    let mut i = 0;
    while i < n {
        let mut set = tokio::task::JoinSet::new();
        for j in i..(i + wave).min(n) {
            let log = log.clone();
            set.spawn(async move {
                let rec = decision(
                    &format!("r{j}"),
                    "alice@example.com",
                    DEV_A,
                    Decision::Allow,
                    "allowed",
                );
                log.record_decision(rec).await.map(|_| ())
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
        i += wave;
    }
}

async fn rotated_set(
    n: usize,
    rotate_max_bytes: u64,
    key: Option<&[u8]>,
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            rotate_max_bytes: Some(rotate_max_bytes),
            rotate_max_age: None,
            hmac_key: key.map(<[u8]>::to_vec),
        },
    )
    .unwrap();
    write_decisions(&log, n, 25).await;
    log.close();
    (dir, path)
}

fn plain() -> VerifyOptions {
    VerifyOptions::default()
}

fn keyed() -> VerifyOptions {
    VerifyOptions {
        hmac_key: Some(KEY.to_vec()),
        allow_partial: false,
    }
}

fn expect_break(files: &[PathBuf], opts: &VerifyOptions) -> (PathBuf, u64, BreakKind, String) {
    match verify_set(files, opts) {
        Err(SetError::Break { path, brk }) => (path, brk.line, brk.kind, brk.detail),
        other => panic!("expected a chain break, got {other:?}"),
    }
}

fn run(args: &[&str], files: &[PathBuf]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).args(files).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn is_rotated_name(name: &str) -> bool {
    // audit.jsonl.<yyyymmddThhmmssZ>.<20 digits>
    let Some(rest) = name.strip_prefix("audit.jsonl.") else {
        return false;
    };
    let Some((stamp, seq)) = rest.split_once('.') else {
        return false;
    };
    let s = stamp.as_bytes();
    s.len() == 16
        && s[8] == b'T'
        && s[15] == b'Z'
        && chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").is_ok()
        && seq.len() == 20
        && seq.bytes().all(|c| c.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_records_across_rotations_verify_in_any_order() {
    let (dir, _path) = rotated_set(10_000, 512 * 1024, None).await;
    let files = chain_order(dir.path());
    assert!(
        files.len() >= 4,
        "expected several rotations, got {files:?}"
    );
    // Rotated names follow the documented scheme, their seq is each file's last record, and no
    // file but the current one is empty.
    let mut last_seen = 0;
    for f in &files[..files.len() - 1] {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(is_rotated_name(name), "{name}");
        let ls = lines(f);
        assert!(!ls.is_empty());
        let last_seq = field(ls.last().unwrap(), "seq").as_u64().unwrap();
        assert!(
            name.ends_with(&format!("{last_seq:020}")),
            "{name} vs {last_seq}"
        );
        assert_eq!(field(&ls[0], "seq").as_u64().unwrap(), last_seen + 1);
        last_seen = last_seq;
        assert!(fs::metadata(f).unwrap().len() <= 512 * 1024 || ls.len() > 1);
    }
    // Shuffled (reversed) order, as a glob in another locale might give them.
    let mut shuffled = files.clone();
    shuffled.reverse();
    let s = verify_set(&shuffled, &plain()).unwrap();
    assert_eq!((s.records, s.first_seq, s.last_seq), (10_000, 1, 10_000));
    assert!(!s.partial);
    assert_eq!(s.first_prev, GENESIS_PREV);
    assert_eq!(s.files.len(), files.len());

    let (code, out, err) = run(&["audit", "verify"], &shuffled);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "one-line summary: {out}");
    assert!(out.starts_with("OK: 10000 records in"), "{out}");
    assert!(out.contains(&s.last_hash), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_catches_tampering_within_and_across_files() {
    let (dir, _path) = rotated_set(400, 64 * 1024, None).await;
    let files = chain_order(dir.path());
    assert!(files.len() >= 4, "{files:?}");
    verify_set(&files, &plain()).unwrap();
    let mid = files[1].clone();
    let original = fs::read(&mid).unwrap();
    let restore = || fs::write(&mid, &original).unwrap();
    let n = lines(&mid).len();
    assert!(n >= 5, "{n}");

    // An edited field: bad hash at that line of that file.
    let mut ls = lines(&mid);
    ls[2] = ls[2].replace("alice@example.com", "mallory@example.com");
    write_lines(&mid, &ls);
    let (p, line, kind, _) = expect_break(&files, &plain());
    assert_eq!(
        (p.as_path(), line, kind),
        (mid.as_path(), 3, BreakKind::BadHash)
    );
    let (code, _, err) = run(&["audit", "verify"], &files);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(mid.to_str().unwrap()) && err.contains("line 3"),
        "{err}"
    );
    restore();

    // A deleted line.
    let mut ls = lines(&mid);
    ls.remove(3);
    write_lines(&mid, &ls);
    let (p, line, kind, _) = expect_break(&files, &plain());
    assert_eq!(
        (p.as_path(), line, kind),
        (mid.as_path(), 4, BreakKind::SeqGap)
    );
    restore();

    // Two swapped lines.
    let mut ls = lines(&mid);
    ls.swap(1, 2);
    write_lines(&mid, &ls);
    let (p, line, kind, _) = expect_break(&files, &plain());
    assert_eq!(
        (p.as_path(), line, kind),
        (mid.as_path(), 2, BreakKind::SeqGap)
    );
    restore();

    // A truncated last line of the newest non-empty file.
    let last = files
        .iter()
        .rev()
        .find(|f| fs::metadata(f).unwrap().len() > 0)
        .unwrap()
        .clone();
    let raw = fs::read(&last).unwrap();
    fs::write(&last, &raw[..raw.len() - 20]).unwrap();
    let (p, line, kind, _) = expect_break(&files, &plain());
    assert_eq!(
        (p.as_path(), line, kind),
        (
            last.as_path(),
            lines(&last).len() as u64,
            BreakKind::TornLine
        )
    );
    fs::write(&last, &raw).unwrap();

    // A whole file removed from the middle of the set: the next file does not continue.
    verify_set(&files, &plain()).unwrap();
    let mut without: Vec<PathBuf> = files.clone();
    without.remove(1);
    let (p, line, kind, detail) = expect_break(&without, &plain());
    assert_eq!(
        (p.as_path(), line, kind),
        (files[2].as_path(), 1, BreakKind::SeqGap)
    );
    assert!(detail.contains("missing"), "{detail}");
    let (code, _, err) = run(&["audit", "verify"], &without);
    assert_eq!(code, 1);
    assert!(
        err.contains(files[2].file_name().unwrap().to_str().unwrap()),
        "{err}"
    );

    // A middle file cut at a line boundary: the next file's first record no longer links.
    let ls = lines(&mid);
    write_lines(&mid, &ls[..ls.len() - 1]);
    let (p, line, kind, _) = expect_break(&files, &plain());
    assert_eq!(
        (p.as_path(), line, kind),
        (files[2].as_path(), 1, BreakKind::SeqGap)
    );
    restore();
    verify_set(&files, &plain()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn newest_files_only_need_allow_partial_and_print_their_start() {
    let (dir, _path) = rotated_set(300, 64 * 1024, None).await;
    let files = chain_order(dir.path());
    assert!(files.len() >= 3);
    let newest = files[1..].to_vec();
    let (p, line, kind, _) = expect_break(&newest, &plain());
    assert_eq!(
        (p.as_path(), line, kind),
        (files[1].as_path(), 1, BreakKind::BadStart)
    );
    let (code, _, err) = run(&["audit", "verify"], &newest);
    assert_eq!(code, 1);
    assert!(err.contains("--allow-partial"), "{err}");

    let opts = VerifyOptions {
        allow_partial: true,
        ..plain()
    };
    let s = verify_set(&newest, &opts).unwrap();
    let first_full = verify_set(&files[..1], &plain()).unwrap();
    assert!(s.partial);
    assert_eq!(s.first_seq, first_full.last_seq + 1);
    assert_eq!(s.first_prev, first_full.last_hash);
    assert_eq!(s.last_seq, 300);
    let (code, out, err) = run(&["audit", "verify", "--allow-partial"], &newest);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("PARTIAL") && out.contains(&first_full.last_hash),
        "{out}"
    );
    assert!(
        out.contains(&format!("seq {}", first_full.last_seq + 1)),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_chain_rejects_a_plain_sha256_rebuild() {
    let (dir, _path) = rotated_set(120, 64 * 1024, Some(KEY)).await;
    let files = chain_order(dir.path());
    assert!(files.len() >= 2);
    let first = lines(&files[0]);
    assert!(
        first[0].starts_with("{\"v\":2,\"alg\":\"hmac-sha256\",\"seq\":1,"),
        "{}",
        first[0]
    );

    let s = verify_set(&files, &keyed()).unwrap();
    assert_eq!((s.records, s.keyed_records), (120, 120));
    // Without the key the hashes cannot be checked at all: that is not a pass.
    let (_, line, kind, _) = expect_break(&files, &plain());
    assert_eq!((line, kind), (1, BreakKind::KeyRequired));
    // A wrong key fails at the first line.
    let wrong = VerifyOptions {
        hmac_key: Some(b"another key, just as long as it".to_vec()),
        allow_partial: false,
    };
    assert_eq!(expect_break(&files, &wrong).2, BreakKind::BadHash);

    // The attacker edits a record and rebuilds the whole chain with plain SHA-256 (no key):
    // consistent to a keyless verifier, rejected by the keyed one.
    let mut prev = GENESIS_PREV.to_owned();
    for f in &files {
        let mut out = Vec::new();
        for l in lines(f) {
            let l = l
                .replace("\"alg\":\"hmac-sha256\",", "")
                .replace("alice@example.com", "mallory@example.com");
            let body_end = l.rfind(",\"hash\":\"").unwrap();
            let body = &l[..body_end];
            let old_prev = field(&l, "prev").as_str().unwrap().to_owned();
            let body = body.replacen(
                &format!("\"prev\":\"{old_prev}\""),
                &format!("\"prev\":\"{prev}\""),
                1,
            );
            use sha2::Digest;
            let h = hex::encode(sha2::Sha256::digest(body.as_bytes()));
            out.push(format!("{body},\"hash\":\"{h}\"}}"));
            prev = h;
        }
        if !out.is_empty() {
            write_lines(f, &out);
        }
    }
    verify_set(&files, &plain()).unwrap();
    let (_, line, kind, detail) = expect_break(&files, &keyed());
    assert_eq!((line, kind), (1, BreakKind::Unkeyed), "{detail}");

    // The CLI takes the key by reference; it fails the same way, and never prints the key.
    let key_file = dir.path().join("hmac.key");
    fs::write(&key_file, [KEY, b"\n"].concat()).unwrap();
    let key_arg = format!("file:{}", key_file.display());
    let (code, out, err) = run(&["audit", "verify", "--hmac-key", &key_arg], &files);
    assert_eq!(code, 1, "{out}{err}");
    assert!(!err.contains(std::str::from_utf8(KEY).unwrap()));
    let (code, _, err) = run(
        &["audit", "verify", "--hmac-key", "not-a-reference"],
        &files,
    );
    assert_eq!(code, 2);
    assert!(!err.contains("not-a-reference"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keyed_verify_cli_passes_and_a_keyed_line_after_plain_is_fine_but_not_the_reverse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // A plain log that predates the key…
    let log = AuditLog::open(&path).unwrap();
    write_decisions(&log, 5, 5).await;
    log.close();
    // …continued with the key: the first keyed record pins the plain prefix.
    let opts = AuditOptions {
        hmac_key: Some(KEY.to_vec()),
        ..AuditOptions::default()
    };
    let log = AuditLog::open_with(&path, opts.clone()).unwrap();
    write_decisions(&log, 5, 5).await;
    log.close();
    let files = vec![path.clone()];
    let s = verify_set(&files, &keyed()).unwrap();
    assert_eq!((s.records, s.keyed_records), (10, 5));
    let (code, out, err) = Command::new(BIN)
        .args([
            "audit",
            "verify",
            "--hmac-key",
            "env:PASSGATE_TEST_AUDIT_KEY",
        ])
        .arg(&path)
        .env("PASSGATE_TEST_AUDIT_KEY", std::str::from_utf8(KEY).unwrap())
        .output()
        .map(|o| {
            (
                o.status.code().unwrap(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        })
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("hmac-sha256 (5 keyed records)"), "{out}");

    // A keyed log refuses to open without its key (it could not check its own tail).
    assert!(AuditLog::open(&path).is_err());
    // A too-short key is refused.
    assert!(AuditLog::open_with(
        &path,
        AuditOptions {
            hmac_key: Some(b"short".to_vec()),
            ..AuditOptions::default()
        }
    )
    .is_err());

    // Plain records after keyed ones are a downgrade: a plain line appended by someone without
    // the key (built to link correctly) fails at that line.
    let last = lines(&path).last().unwrap().clone();
    let body = format!(
        "{{\"v\":1,\"seq\":11,\"time\":\"2026-11-28T17:00:00.000Z\",\"kind\":\"outcome\",\"prev\":\"{}\",\"request_id\":\"r0\",\"status\":200,\"graph_request_id\":null,\"latency_ms\":1.0,\"error\":null",
        field(&last, "hash").as_str().unwrap()
    );
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    let mut ls = lines(&path);
    ls.push(format!("{body},\"hash\":\"{h}\"}}"));
    write_lines(&path, &ls);
    let (_, line, kind, _) = expect_break(&files, &keyed());
    assert_eq!((line, kind), (11, BreakKind::Unkeyed));
}

/// alice: allow on A (outcome 204), deny rate_limited on A; bob: deny operator_not_approved on
/// B; carol: allow on B with a failed forward (error text with a comma and quotes).
async fn search_log() -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_with(&path, AuditOptions::default()).unwrap();
    log.record_decision(decision(
        "a1",
        "alice@example.com",
        DEV_A,
        Decision::Allow,
        "allowed",
    ))
    .await
    .unwrap();
    log.record_decision(decision(
        "b1",
        "bob@example.com",
        DEV_B,
        Decision::Deny,
        "operator_not_approved",
    ))
    .await
    .unwrap();
    log.record_outcome(outcome("a1", 204, None)).await.unwrap();
    log.record_decision(decision(
        "a2",
        "alice@example.com",
        DEV_A,
        Decision::Deny,
        "rate_limited",
    ))
    .await
    .unwrap();
    log.record_decision(decision(
        "c1",
        "carol@example.com",
        DEV_B,
        Decision::Allow,
        "allowed",
    ))
    .await
    .unwrap();
    log.record_outcome(outcome("c1", 502, Some("upstream said \"no\", twice")))
        .await
        .unwrap();
    log.close();
    let ls = lines(&path);
    (dir, path, ls)
}

fn ids(filter: &SearchFilter, path: &Path) -> Vec<String> {
    passgate::audit::search(&[path.to_owned()], filter)
        .unwrap()
        .hits
        .iter()
        .map(|h| h.record["request_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn search_filters_match_operator_device_decision_reason_and_time() {
    let (_dir, path, ls) = search_log().await;
    let f = SearchFilter::default;
    assert_eq!(ids(&f(), &path), ["a1", "b1", "a2", "c1"]);
    let by_upn = SearchFilter {
        operator: Some("ALICE@Example.com".into()),
        ..f()
    };
    assert_eq!(ids(&by_upn, &path), ["a1", "a2"]);
    let by_oid = SearchFilter {
        operator: Some("oid-bob".into()),
        ..f()
    };
    assert_eq!(ids(&by_oid, &path), ["b1"]);
    let by_dev = SearchFilter {
        device: Some(DEV_B.to_uppercase()),
        ..f()
    };
    assert_eq!(ids(&by_dev, &path), ["b1", "c1"]);
    let denies = SearchFilter {
        decision: Some(Decision::Deny),
        ..f()
    };
    assert_eq!(ids(&denies, &path), ["b1", "a2"]);
    let reason = SearchFilter {
        reason: Some("rate_limited".into()),
        ..f()
    };
    assert_eq!(ids(&reason, &path), ["a2"]);
    let both = SearchFilter {
        operator: Some("alice@example.com".into()),
        decision: Some(Decision::Allow),
        ..f()
    };
    assert_eq!(ids(&both, &path), ["a1"]);

    // Time: since is inclusive, until exclusive, at the records' own timestamps.
    let t = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(field(&ls[i], "time").as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    // ls[3] is a2's decision; nothing but later records can share or pass its time.
    let since = SearchFilter {
        since: Some(t(3)),
        ..f()
    };
    let got = ids(&since, &path);
    assert!(
        got.contains(&"a2".to_owned()) && got.contains(&"c1".to_owned()),
        "{got:?}"
    );
    let until = SearchFilter {
        until: Some(t(0)),
        ..f()
    };
    assert!(ids(&until, &path).is_empty());
    let tomorrow = passgate::audit::search::parse_time_bound(
        &(chrono::Utc::now().date_naive() + chrono::Days::new(1)).to_string(),
        false,
    )
    .unwrap();
    let future = SearchFilter {
        since: Some(tomorrow),
        ..f()
    };
    assert!(ids(&future, &path).is_empty());
    let today = chrono::Utc::now().date_naive().to_string();
    let day = SearchFilter {
        since: Some(passgate::audit::search::parse_time_bound(&today, false).unwrap()),
        until: Some(passgate::audit::search::parse_time_bound(&today, true).unwrap()),
        ..f()
    };
    // The records were written moments ago (a run across midnight may split them).
    assert!(!ids(&day, &path).is_empty());
}

#[tokio::test]
async fn search_formats_table_json_csv() {
    let (_dir, path, ls) = search_log().await;
    let files = vec![path.clone()];

    // Table: header, one aligned row per decision, outcome status joined in.
    let (code, out, err) = run(&["audit", "search"], &files);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 5, "{out}");
    assert!(rows[0].starts_with("TIME"));
    for col in [
        "DECISION", "REASON", "OPERATOR", "DEVICE", "POLICY", "STATUS",
    ] {
        let at = rows[0].find(col).unwrap();
        // Aligned: every row has a column boundary (two spaces) just before each header column.
        for r in &rows[1..] {
            assert_eq!(&r[at - 2..at], "  ", "column {col} misaligned in {r:?}");
        }
    }
    let a1 = rows.iter().find(|r| r.contains("a1")).unwrap();
    assert!(
        a1.contains("allow") && a1.contains("alice@example.com") && a1.contains(" 204 "),
        "{a1}"
    );
    let b1 = rows.iter().find(|r| r.contains("b1")).unwrap();
    assert!(
        b1.contains("deny") && b1.contains("operator_not_approved") && b1.contains(" 403 "),
        "{b1}"
    );
    let c1 = rows.iter().find(|r| r.contains("c1")).unwrap();
    assert!(c1.contains("502 (error)"), "{c1}");

    // JSON Lines: the matching decisions and their outcomes, exactly as stored.
    let (code, out, _) = run(
        &[
            "audit",
            "search",
            "--format",
            "json",
            "--operator",
            "alice@example.com",
        ],
        &files,
    );
    assert_eq!(code, 0);
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got, [ls[0].as_str(), ls[2].as_str(), ls[3].as_str()]);

    // CSV: header row, RFC 4180 quoting of the error text.
    let (code, out, _) = run(
        &["audit", "search", "--format", "csv", "--device", DEV_B],
        &files,
    );
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows[0].starts_with(
        "time,seq,kind,request_id,decision,reason,operator_oid,operator_upn,device,policy,status"
    ));
    assert!(
        rows[2].contains(",c1,allow,allowed,oid-carol,carol@example.com,"),
        "{}",
        rows[2]
    );
    // … then `count` and, last, the (here empty) `justification`.
    assert!(
        rows[2].ends_with(",\"upstream said \"\"no\"\", twice\",1,"),
        "{}",
        rows[2]
    );
    assert!(
        rows[1].contains(",b1,deny,operator_not_approved,") && rows[1].contains(",403,"),
        "{}",
        rows[1]
    );

    // Filters and a bad time through the CLI.
    let (code, out, _) = run(
        &[
            "audit",
            "search",
            "--decision",
            "deny",
            "--reason",
            "rate_limited",
            "--format",
            "json",
        ],
        &files,
    );
    assert_eq!(code, 0);
    assert_eq!(out.lines().collect::<Vec<_>>(), [ls[3].as_str()]);
    let (code, out, _) = run(
        &[
            "audit",
            "search",
            "--since",
            "2999-01-01",
            "--format",
            "json",
        ],
        &files,
    );
    assert_eq!((code, out.as_str()), (0, ""));
    let (code, _, err) = run(&["audit", "search", "--until", "last tuesday"], &files);
    assert_eq!(code, 2);
    assert!(err.contains("RFC 3339"), "{err}");
}

#[tokio::test]
async fn search_finds_justifications_and_break_glass_uses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_with(&path, AuditOptions::default()).unwrap();
    log.record_decision(DecisionRecord {
        justification: Some("INC0012345".into()),
        ..decision("j1", "alice@example.com", DEV_A, Decision::Allow, "allowed")
    })
    .await
    .unwrap();
    log.record_decision(DecisionRecord {
        justification: Some("=cmd|' /C calc'!A0".into()),
        break_glass: true,
        ..decision("g1", "bob@example.com", DEV_B, Decision::Allow, "allowed")
    })
    .await
    .unwrap();
    log.record_decision(decision(
        "n1",
        "carol@example.com",
        DEV_B,
        Decision::Deny,
        "operator_not_approved",
    ))
    .await
    .unwrap();
    log.close();
    let files = vec![path];
    let ids_of = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| field(l, "request_id").as_str().unwrap().to_owned())
            .collect()
    };
    let (code, out, err) = run(
        &["audit", "search", "--break-glass", "--format", "json"],
        &files,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(ids_of(&out), ["g1"]);
    let (code, out, _) = run(
        &[
            "audit",
            "search",
            "--justification",
            "inc0012345",
            "--format",
            "json",
        ],
        &files,
    );
    assert_eq!(code, 0);
    assert_eq!(ids_of(&out), ["j1"]);
    // Table: the break-glass use is marked, the justification shown; CSV: last column, with a
    // formula-looking value defused.
    let (_, out, _) = run(&["audit", "search"], &files);
    let g1 = out.lines().find(|l| l.contains("g1")).unwrap();
    assert!(g1.contains("helpdesk (BREAK-GLASS)"), "{g1}");
    let j1 = out.lines().find(|l| l.contains("j1")).unwrap();
    assert!(j1.ends_with("INC0012345"), "{j1}");
    let n1 = out.lines().find(|l| l.contains("n1")).unwrap();
    assert!(n1.ends_with(" -"), "{n1}");
    let (_, out, _) = run(&["audit", "search", "--format", "csv"], &files);
    let rows: Vec<&str> = out.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(rows[0].ends_with(",count,justification"), "{}", rows[0]);
    assert!(rows[1].ends_with(",1,INC0012345"), "{}", rows[1]);
    assert!(rows[2].ends_with(",1,'=cmd|' /C calc'!A0"), "{}", rows[2]);
    assert!(rows[3].ends_with(",1,"), "{}", rows[3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_joins_outcomes_across_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            rotate_max_bytes: Some(1),
            ..AuditOptions::default()
        },
    )
    .unwrap();
    log.record_decision(decision(
        "x1",
        "alice@example.com",
        DEV_A,
        Decision::Allow,
        "allowed",
    ))
    .await
    .unwrap();
    log.record_outcome(outcome("x1", 204, None)).await.unwrap();
    log.close();
    let files = set_files(dir.path());
    assert_eq!(files.len(), 2, "{files:?}");
    let r = passgate::audit::search(&files, &SearchFilter::default()).unwrap();
    assert_eq!(r.hits.len(), 1);
    assert_eq!(r.hits[0].outcomes.len(), 1);
    assert_eq!(r.hits[0].outcomes[0].1["status"], 204);
}

/// Every key of `rec` is declared by `schema` (and its `allOf` header), and every required key
/// is present; nested operator/target/device likewise.
fn check_against_schema(schema: &serde_json::Value, def: &str, rec: &serde_json::Value) {
    let defs = &schema["$defs"];
    let mut parts = vec![&defs[def]];
    for r in defs[def]["allOf"].as_array().into_iter().flatten() {
        let name = r["$ref"].as_str().unwrap().trim_start_matches("#/$defs/");
        parts.push(&defs[name]);
    }
    let obj = rec
        .as_object()
        .unwrap_or_else(|| panic!("{def}: not an object: {rec}"));
    for p in &parts {
        for req in p["required"].as_array().unwrap() {
            let k = req.as_str().unwrap();
            assert!(
                obj.contains_key(k),
                "{def}: required `{k}` missing in {rec}"
            );
        }
    }
    for (k, v) in obj {
        let decl = parts
            .iter()
            .find_map(|p| p["properties"].get(k))
            .unwrap_or_else(|| panic!("{def}: `{k}` is not in the schema"));
        if let Some(c) = decl.get("const") {
            assert_eq!(v, c, "{def}.{k}");
        }
        if let Some(e) = decl.get("enum").and_then(|e| e.as_array()) {
            assert!(e.contains(v), "{def}.{k}: {v} is not one of {e:?}");
        }
        // A map of text (`details`): every value a string.
        if decl["additionalProperties"]["type"] == "string" {
            let map = v
                .as_object()
                .unwrap_or_else(|| panic!("{def}.{k}: not an object"));
            assert!(map.values().all(|x| x.is_string()), "{def}.{k}: {v}");
            continue;
        }
        // Nested records: follow `oneOf: [{$ref}, {type: null}]`.
        if v.is_object() {
            let nested = decl["oneOf"][0]["$ref"]
                .as_str()
                .or(decl["$ref"].as_str())
                .unwrap()
                .trim_start_matches("#/$defs/");
            check_against_schema(schema, nested, v);
        }
    }
}

#[tokio::test]
async fn every_record_kind_the_writer_writes_fits_the_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../docs/audit-record.schema.json")).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let kinds: Vec<&str> = schema["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["$ref"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "#/$defs/decision",
            "#/$defs/outcome",
            "#/$defs/approval",
            "#/$defs/throttled",
            "#/$defs/recovery",
            "#/$defs/console"
        ]
    );
    // Every declared property has a description (or is a const/`$ref` with one in its target).
    for def in [
        "header",
        "decision",
        "outcome",
        "approval",
        "throttled",
        "recovery",
        "console",
        "operator",
        "target",
        "device",
        "inputs",
    ] {
        assert!(schema["$defs"][def]["description"].is_string(), "{def}");
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // A torn tail so the writer adds a recovery record, then every shape of the others, keyed
    // and plain.
    fs::write(&path, b"{\"v\":1,\"seq\":1,\"ti").unwrap();
    let log = AuditLog::open(&path).unwrap();
    log.record_decision(DecisionRecord {
        justification: Some("INC0012345".into()),
        break_glass: true,
        inputs: Some(passgate::audit::InputsRecord {
            operator_groups_checked: vec!["g1".into(), "g2".into()],
            operator_groups: vec!["g1".into()],
            operator_roles_checked: vec!["Passcode.Recover".into()],
            operator_roles: vec![],
            groups_overage: false,
            device_groups_checked: vec!["d1".into()],
            device_facts: "found".into(),
            justification_malformed: None,
        }),
        ..decision("d1", "alice@example.com", DEV_A, Decision::Allow, "allowed")
    })
    .await
    .unwrap();
    let mut bare = decision("d2", "x", DEV_A, Decision::Deny, "route_not_found");
    bare.operator = None;
    bare.target = None;
    bare.device = None;
    bare.action = None;
    bare.api_version = None;
    bare.client_request_id = None;
    bare.policy = None;
    bare.client_cert_subject = Some("CN=kiosk-admin".into());
    log.record_decision(bare).await.unwrap();
    log.record_outcome(outcome("d1", 204, None)).await.unwrap();
    log.record_outcome(OutcomeRecord {
        latency_ms: f64::NAN,
        graph_request_id: None,
        ..outcome("d2", 504, Some("timeout"))
    })
    .await
    .unwrap();
    log.record_approval(passgate::audit::ApprovalRecord {
        event: "approved".into(),
        approval_id: "0b5d5ae6-39a4-4c5b-a0f5-2b3c0a3f9d11".into(),
        request_id: None,
        policy: "helpdesk".into(),
        action: "recoverPasscode".into(),
        managed_device_id: DEV_A.into(),
        requester: passgate::audit::ApprovalPerson {
            oid: "oid-alice".into(),
            upn: Some("alice@example.com".into()),
        },
        actor: Some(passgate::audit::ApprovalPerson {
            oid: "oid-bob".into(),
            upn: None,
        }),
        comment: Some("ok".into()),
        reason: None,
        state: "approved".into(),
        pending_until: "2026-12-02T02:00:00.000Z".into(),
        valid_until: Some("2026-12-02T01:30:00.000Z".into()),
    })
    .await
    .unwrap();
    log.record_throttled(passgate::audit::ThrottledRecord {
        client_ip: "2001:db8:1:2::/64".into(),
        reason: "token_malformed".into(),
        status: 429,
        answered: "unauthenticated_throttled".into(),
        count: 12_345,
        first_time: "2026-12-02T01:00:00.000Z".into(),
        last_time: "2026-12-02T01:00:59.999Z".into(),
    })
    .await
    .unwrap();
    for (event, result, reason, person) in [
        ("sign_in", "ok", None, true),
        ("sign_in", "refused", Some("id_token_invalid"), false),
        ("approve", "refused", Some("csrf_token_invalid"), true),
    ] {
        log.record_console(passgate::audit::ConsoleRecord {
            event: event.into(),
            result: result.into(),
            reason: reason.map(str::to_string),
            person: person.then(|| passgate::audit::ApprovalPerson {
                oid: "oid-dana".into(),
                upn: Some("dana@example.com".into()),
            }),
            session: person.then(|| "0123456789abcdef0123456789abcdef".into()),
            client_ip: "127.0.0.1".into(),
            approval_id: (event == "approve")
                .then(|| "0b5d5ae6-39a4-4c5b-a0f5-2b3c0a3f9d11".into()),
            details: [("roles".to_string(), "approver".to_string())].into(),
        })
        .await
        .unwrap();
    }
    log.close();
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            hmac_key: Some(KEY.to_vec()),
            ..AuditOptions::default()
        },
    )
    .unwrap();
    log.record_decision(decision(
        "d3",
        "bob@example.com",
        DEV_B,
        Decision::Deny,
        "rate_limited",
    ))
    .await
    .unwrap();
    log.close();

    let mut seen = std::collections::BTreeSet::new();
    for l in lines(&path) {
        let rec: serde_json::Value = serde_json::from_str(&l).unwrap();
        let kind = rec["kind"].as_str().unwrap().to_owned();
        check_against_schema(&schema, &kind, &rec);
        seen.insert(kind);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        [
            "approval",
            "console",
            "decision",
            "outcome",
            "recovery",
            "throttled"
        ]
    );
    verify_set(&[path], &keyed()).unwrap();
}

#[tokio::test]
async fn health_and_fsync_observer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    let observed = Arc::new(AtomicU64::new(0));
    let o = observed.clone();
    log.set_fsync_observer(Arc::new(move |d: Duration| {
        assert!(d < Duration::from_secs(60));
        o.fetch_add(1, Ordering::SeqCst);
    }));
    assert!(log.healthy());
    log.record_decision(decision(
        "h1",
        "alice@example.com",
        DEV_A,
        Decision::Allow,
        "allowed",
    ))
    .await
    .unwrap();
    assert!(log.healthy());
    assert_eq!(observed.load(Ordering::SeqCst), log.stats().fsyncs);
    assert_eq!(observed.load(Ordering::SeqCst), 1);

    log.fail_next_writes(1);
    assert!(log
        .record_decision(decision(
            "h2",
            "alice@example.com",
            DEV_A,
            Decision::Allow,
            "allowed"
        ))
        .await
        .is_err());
    assert!(!log.healthy(), "a failed batch makes the log unhealthy");
    log.record_decision(decision(
        "h3",
        "alice@example.com",
        DEV_A,
        Decision::Allow,
        "allowed",
    ))
    .await
    .unwrap();
    assert!(log.healthy(), "a good batch makes it healthy again");
    log.close();
    assert!(!log.healthy(), "a closed log is not healthy");
}

#[tokio::test]
async fn reopen_after_rotation_continues_from_the_newest_rotated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let opts = AuditOptions {
        rotate_max_bytes: Some(1),
        ..AuditOptions::default()
    };
    let log = AuditLog::open_with(&path, opts.clone()).unwrap();
    for i in 0..3 {
        log.record_decision(decision(
            &format!("r{i}"),
            "alice@example.com",
            DEV_A,
            Decision::Allow,
            "allowed",
        ))
        .await
        .unwrap();
    }
    assert_eq!(log.stats().rotations, 2);
    log.close();
    // Lose the current file entirely (e.g. a crash right after a rotation's rename): the chain
    // head comes from the newest rotated file.
    fs::remove_file(&path).unwrap();
    let log = AuditLog::open(&path).unwrap();
    let r = log
        .record_decision(decision(
            "r3",
            "alice@example.com",
            DEV_A,
            Decision::Allow,
            "allowed",
        ))
        .await
        .unwrap();
    log.close();
    assert_eq!(
        r.seq(),
        3,
        "seq continues after the rotated files (seq 1, 2)"
    );
    let files = set_files(dir.path());
    assert_eq!(files.len(), 3, "{files:?}");
    let s = verify_set(&files, &plain()).unwrap();
    assert_eq!((s.records, s.last_seq), (3, 3));
}

#[tokio::test]
async fn age_limit_rotates_between_batches() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // A zero age is due as soon as the file holds a record: every later batch starts a new file.
    let opts = AuditOptions {
        rotate_max_age: Some(Duration::ZERO),
        ..AuditOptions::default()
    };
    let log = AuditLog::open_with(&path, opts).unwrap();
    for i in 0..3 {
        log.record_decision(decision(
            &format!("r{i}"),
            "alice@example.com",
            DEV_A,
            Decision::Allow,
            "allowed",
        ))
        .await
        .unwrap();
    }
    log.close();
    let files = chain_order(dir.path());
    // The idle timer may also have rotated the last record away, leaving an empty current file.
    assert!(files.len() >= 3, "{files:?}");
    for f in &files[..2] {
        assert_eq!(lines(f).len(), 1, "{f:?}");
    }
    assert_eq!(verify_set(&files, &plain()).unwrap().records, 3);
}

#[test]
fn audit_config_keys_are_validated_and_resolved() {
    let base = passgate::dev::DEV_CONFIG;
    let with_audit = |extra: &str| {
        let old = base
            .lines()
            .find(|l| {
                l.trim_start()
                    .starts_with("path: \"/tmp/passgate-dev-audit")
            })
            .unwrap();
        let text = base.replacen(old, &format!("{old}\n{extra}"), 1);
        // Drop the shipped rotate_max_bytes so each case sets its own.
        text.lines()
            .filter(|l| !l.contains("# small files"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let s = passgate::config::load_str(&with_audit("  rotate_max_bytes: 104857600\n  rotate_max_age_seconds: 86400\n  hmac_key: env:PASSGATE_TEST_NO_SUCH_VAR"), "t.yaml").unwrap();
    assert_eq!(s.audit.rotate_max_bytes, Some(104_857_600));
    assert_eq!(s.audit.rotate_max_age_seconds, Some(86_400));
    // The key is resolved when the writer is set up, and a missing one is an error naming it.
    let e = AuditOptions::from_config(&s.audit).unwrap_err().to_string();
    assert!(e.contains("PASSGATE_TEST_NO_SUCH_VAR"), "{e}");

    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("k");
    fs::write(&key_file, "0123456789abcdef0123456789abcdef\n").unwrap();
    let s = passgate::config::load_str(
        &with_audit(&format!("  hmac_key: file:{}", key_file.display())),
        "t.yaml",
    )
    .unwrap();
    let o = AuditOptions::from_config(&s.audit).unwrap();
    assert_eq!(
        o.hmac_key.as_deref(),
        Some(&b"0123456789abcdef0123456789abcdef"[..])
    );
    assert!(
        !format!("{o:?}").contains("0123456789abcdef"),
        "Debug must not show the key"
    );
    fs::write(&key_file, "short\n").unwrap();
    assert!(AuditOptions::from_config(&s.audit).is_err());

    for (bad, needle) in [
        ("  rotate_max_bytes: 100", "audit.rotate_max_bytes"),
        (
            "  rotate_max_age_seconds: 5",
            "audit.rotate_max_age_seconds",
        ),
        ("  hmac_key: my-secret-key-value", "env:"),
    ] {
        let e = passgate::config::load_str(&with_audit(bad), "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{bad}: {e}");
        assert!(!e.contains("my-secret-key-value"), "{e}");
    }
}

/// Record version 2: a gateway upgraded in place continues a version 1 file with version 2 lines;
/// `audit verify` and `audit search` read both in one set, and refuse versions never written.
#[tokio::test]
async fn a_v1_chain_continued_with_v2_lines_verifies_and_is_searchable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path).unwrap();
    for id in ["old-1", "old-2"] {
        log.record_decision(decision(
            id,
            "alice@example.com",
            DEV_A,
            Decision::Allow,
            "allowed",
        ))
        .await
        .unwrap();
    }
    log.close();
    // What an older passgate wrote: the same lines as version 1.
    passgate::audit::test_support::rewrite_version(&path, 1);
    assert!(lines(&path).iter().all(|l| l.starts_with("{\"v\":1,")));
    verify_set(std::slice::from_ref(&path), &VerifyOptions::default()).unwrap();

    // The upgraded writer opens the v1 file (its tail is the chain head) and continues it.
    let log = AuditLog::open(&path).unwrap();
    log.record_decision(decision(
        "new-1",
        "bob@example.com",
        DEV_B,
        Decision::Deny,
        "operator_not_approved",
    ))
    .await
    .unwrap();
    log.close();
    let ls = lines(&path);
    assert_eq!(ls.len(), 3);
    assert!(ls[2].starts_with("{\"v\":2,\"seq\":3,"), "{}", ls[2]);
    assert_eq!(field(&ls[2], "prev"), field(&ls[1], "hash"));
    let s = verify_set(std::slice::from_ref(&path), &VerifyOptions::default()).unwrap();
    assert_eq!(s.records, 3);
    let out = Command::new(BIN)
        .args(["audit", "verify"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let r = passgate::audit::search(std::slice::from_ref(&path), &SearchFilter::default()).unwrap();
    let ids: Vec<&str> = r
        .hits
        .iter()
        .map(|h| h.record["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["old-1", "old-2", "new-1"]);
    assert_eq!(r.unreadable_lines, 0);

    // A version passgate never wrote is refused, even with a correct hash and link.
    for v in [0, 3] {
        let other = dir.path().join(format!("v{v}.jsonl"));
        fs::copy(&path, &other).unwrap();
        passgate::audit::test_support::rewrite_version(&other, v);
        let (_, line, kind, detail) =
            expect_break(std::slice::from_ref(&other), &VerifyOptions::default());
        assert_eq!((line, kind), (1, BreakKind::Unparseable), "{detail}");
        assert!(detail.contains(&format!("v={v}")), "{detail}");
        let r = passgate::audit::search(&[other], &SearchFilter::default()).unwrap();
        assert_eq!((r.hits.len(), r.unreadable_lines), (0, 3));
    }
}
