//! Behaviour tests for the audit writer and verifier, on real files in temp directories.

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::test_support::{field, lines, write_lines};
use super::*;

fn decision(id: &str) -> DecisionRecord {
    DecisionRecord {
        request_id: id.to_owned(),
        client_request_id: Some("c-1".into()),
        client_ip: "127.0.0.1".into(),
        client_cert_subject: None,
        method: "POST".into(),
        path: "/v1.0/deviceManagement/managedDevices/11111111-2222-3333-4444-555555555555/recoverPasscode".into(),
        action: Some("recover_passcode".into()),
        api_version: Some("v1.0".into()),
        operator: Some(OperatorRecord {
            oid: "oid-1".into(),
            tid: "tid-1".into(),
            upn: Some("alice@example.com".into()),
            kind: "user".into(),
            client_app_id: None,
        }),
        target: Some(TargetRecord {
            managed_device_id: "11111111-2222-3333-4444-555555555555".into(),
            route_form: "managed_devices".into(),
            user_id: None,
            detected_app_id: None,
        }),
        device: Some(DeviceRecord {
            azure_ad_device_id: Some("aad-1".into()),
            device_object_id: None,
            operating_system: "iOS".into(),
            user_principal_name: Some("bob@example.com".into()),
            user_id: Some("u-1".into()),
            member_of: vec!["g-1".into()],
        }),
        decision: Decision::Allow,
        reason: "allowed".into(),
        policy: Some("helpdesk".into()),
        status: None,
        message: None,
        abandoned: None,
        approval_id: None,
        report: Vec::new(),
        justification: None,
        break_glass: false,
        inputs: None,
    }
}

fn tmp_log() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    (dir, path)
}

/// Writes `n` decision records through a fresh writer and closes it.
async fn write_n(path: &Path, n: usize) {
    let log = AuditLog::open(path).unwrap();
    for i in 0..n {
        log.record_decision(decision(&format!("r{i}")))
            .await
            .unwrap();
    }
    log.close();
}

fn expect_break(path: &Path) -> ChainBreak {
    match verify_file(path) {
        Err(VerifyError::Break(b)) => b,
        other => panic!("expected a chain break, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decisions_are_contiguous_unique_and_grouped() {
    let (_dir, path) = tmp_log();
    let log = AuditLog::open(&path).unwrap();
    // Hold the writer so all 200 appends are queued before it commits anything.
    log.test_hooks().close_gate();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.record_decision(decision(&format!("r{i}"))).await
        }));
    }
    while log
        .test_hooks()
        .enqueued
        .load(std::sync::atomic::Ordering::SeqCst)
        < 200
    {
        tokio::task::yield_now().await;
    }
    log.test_hooks().open_gate();
    let mut seqs = HashSet::new();
    let mut hashes = HashSet::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert!(seqs.insert(r.seq()), "duplicate seq {}", r.seq());
        hashes.insert(r.hash().to_owned());
    }
    assert_eq!(seqs, (1..=200).collect::<HashSet<u64>>());
    assert_eq!(hashes.len(), 200);
    let stats = log.stats();
    assert_eq!(stats.records_written, 200);
    assert!(stats.fsyncs < stats.records_written, "{stats:?}");
    // The writer held its first job at the gate, then drained the other 199 into the same batch.
    assert_eq!(stats.fsyncs, 1, "{stats:?}");
    log.close();
    let sum = verify_file(&path).unwrap();
    assert_eq!((sum.records, sum.first_seq, sum.last_seq), (200, 1, 200));
    let file_seqs: Vec<u64> = lines(&path)
        .iter()
        .map(|l| field(l, "seq").as_u64().unwrap())
        .collect();
    assert_eq!(file_seqs, (1..=200).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_decisions_without_gate_verify() {
    let (_dir, path) = tmp_log();
    let log = AuditLog::open(&path).unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record_decision(decision(&format!("r{i}"))).await })
        })
        .collect();
    let mut seqs = HashSet::new();
    for t in tasks {
        assert!(seqs.insert(t.await.unwrap().unwrap().seq()));
    }
    assert_eq!(seqs, (1..=200).collect::<HashSet<u64>>());
    assert!(log.stats().fsyncs <= 200);
    log.close();
    assert_eq!(verify_file(&path).unwrap().last_seq, 200);
}

#[tokio::test]
async fn line_format_and_hash_rule() {
    let (_dir, path) = tmp_log();
    let log = AuditLog::open(&path).unwrap();
    let receipt = log.record_decision(decision("r0")).await.unwrap();
    log.close();
    let raw = fs::read(&path).unwrap();
    assert_eq!(raw.last(), Some(&b'\n'));
    let line = std::str::from_utf8(&raw[..raw.len() - 1]).unwrap();
    assert!(line.starts_with("{\"v\":2,\"seq\":1,\"time\":\""), "{line}");
    let after_time = &line[line.find("\",\"kind\"").unwrap()..];
    assert!(after_time.starts_with(&format!(
        "\",\"kind\":\"decision\",\"prev\":\"{GENESIS_PREV}\",\"request_id\":\"r0\","
    )));
    // Hash = sha256 of the bytes before the final `,"hash":"`.
    let cut = line.rfind(",\"hash\":\"").unwrap();
    let expect = super::line::sha256_hex(&line.as_bytes()[..cut]);
    assert_eq!(line[cut..], format!(",\"hash\":\"{expect}\"}}"));
    assert_eq!(receipt.hash(), expect);
    assert_eq!(receipt.seq(), 1);
    assert_eq!(receipt.request_id(), "r0");
    let time = field(line, "time");
    let time = time.as_str().unwrap();
    assert!(time.ends_with('Z') && time.len() == "2026-11-28T16:30:39.123Z".len());
    assert_eq!(field(line, "decision"), "allow");
    assert_eq!(field(line, "status"), serde_json::Value::Null);
    assert_eq!(field(line, "operator")["upn"], "alice@example.com");
    // Records round-trip from their line.
    let back: DecisionRecord = serde_json::from_str(line).unwrap();
    assert_eq!(back, decision("r0"));
}

#[tokio::test]
async fn file_is_created_with_mode_0600() {
    let (_dir, path) = tmp_log();
    AuditLog::open(&path).unwrap().close();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // An empty file is a valid, empty chain.
    let sum = verify_file(&path).unwrap();
    assert_eq!(sum.records, 0);
    assert_eq!(sum.last_hash, GENESIS_PREV);
}

#[tokio::test]
async fn long_path_is_truncated_on_a_char_boundary() {
    let (_dir, path) = tmp_log();
    let log = AuditLog::open(&path).unwrap();
    let mut rec = decision("r0");
    // 'é' is two bytes: 1 + 2*2000 bytes puts byte 2048 in the middle of a character.
    rec.path = format!("/{}", "é".repeat(2000));
    log.record_decision(rec).await.unwrap();
    log.close();
    let p = field(&lines(&path)[0], "path");
    let p = p.as_str().unwrap();
    assert_eq!(p.len(), 2047);
    assert!(p.ends_with('é'));
    verify_file(&path).unwrap();
}

#[tokio::test]
async fn outcome_record_has_kind_outcome_and_request_id() {
    let (_dir, path) = tmp_log();
    let log = AuditLog::open(&path).unwrap();
    let r = log.record_decision(decision("req-42")).await.unwrap();
    log.record_outcome(OutcomeRecord {
        request_id: r.request_id().to_owned(),
        status: 204,
        graph_request_id: Some("g-9".into()),
        latency_ms: 12.5,
        error: None,
    })
    .await
    .unwrap();
    log.close();
    let ls = lines(&path);
    assert_eq!(ls.len(), 2);
    assert_eq!(field(&ls[1], "kind"), "outcome");
    assert_eq!(field(&ls[1], "request_id"), "req-42");
    assert_eq!(field(&ls[1], "status"), 204);
    assert_eq!(field(&ls[1], "prev"), field(&ls[0], "hash"));
    assert_eq!(field(&ls[1], "seq"), 2);
    assert_eq!(verify_file(&path).unwrap().records, 2);
}

/// The answer to an allowed request waits for its outcome record to be written, not for the
/// fsync after it; decision records, and `sync`, wait for the fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcome_records_are_answered_when_written_and_sync_waits_for_the_disk() {
    let (_dir, path) = tmp_log();
    let log = AuditLog::open(&path).unwrap();
    // Hold the writer right after each fsync, before it answers the batch's other records.
    let (gate, held) = std::sync::mpsc::channel::<()>();
    let held = std::sync::Mutex::new(held);
    let (fsynced_tx, fsynced) = std::sync::mpsc::channel::<()>();
    let fsynced_tx = std::sync::Mutex::new(fsynced_tx);
    log.set_fsync_observer(std::sync::Arc::new(move |_| {
        let _ = fsynced_tx.lock().map(|t| t.send(()));
        let _ = held.lock().map(|h| h.recv());
    }));
    let outcome = OutcomeRecord {
        request_id: "req-1".into(),
        status: 204,
        graph_request_id: None,
        latency_ms: 1.0,
        error: None,
    };
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        log.record_outcome(outcome),
    )
    .await
    .expect("an outcome is answered while its batch's fsync is still being reported")
    .unwrap();
    assert_eq!(lines(&path).len(), 1, "written to the file when answered");
    let decision_log = log.clone();
    let decided =
        tokio::spawn(async move { decision_log.record_decision(decision("req-2")).await });
    let sync_log = log.clone();
    let synced = tokio::spawn(async move { sync_log.sync().await });
    // The outcome's batch is held after its fsync: the decision and the barrier wait behind it.
    tokio::task::spawn_blocking(move || fsynced.recv().expect("first fsync"))
        .await
        .unwrap();
    assert!(!decided.is_finished() && !synced.is_finished());
    gate.send(()).unwrap(); // the outcome's batch
    gate.send(()).unwrap(); // the decision's batch (the barrier may share it)
    gate.send(()).unwrap(); // spare, should the barrier get a batch of its own
    decided.await.unwrap().unwrap();
    synced.await.unwrap().unwrap();
    assert_eq!(log.stats().records_written, 2, "both durable after sync");
    log.close();
    assert_eq!(verify_file(&path).unwrap().records, 2);
}

#[tokio::test]
async fn reopen_continues_the_chain() {
    let (_dir, path) = tmp_log();
    write_n(&path, 3).await;
    let before = verify_file(&path).unwrap();
    let log = AuditLog::open(&path).unwrap();
    let r = log.record_decision(decision("r3")).await.unwrap();
    log.close();
    assert_eq!(r.seq(), 4);
    let ls = lines(&path);
    assert_eq!(field(&ls[3], "prev"), before.last_hash.as_str());
    let after = verify_file(&path).unwrap();
    assert_eq!((after.records, after.last_seq), (4, 4));
    assert_eq!(after.last_hash, r.hash());
}

#[tokio::test]
async fn torn_tail_is_preserved_cut_and_recorded() {
    let (dir, path) = tmp_log();
    write_n(&path, 2).await;
    let garbage = b"{\"v\":1,\"seq\":3,\"time\":\"half a rec";
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(garbage)
        .unwrap();
    assert_eq!(expect_break(&path).kind, BreakKind::TornLine);

    let log = AuditLog::open(&path).unwrap();
    assert_eq!(log.stats().records_written, 1);
    let r = log.record_decision(decision("r-after")).await.unwrap();
    log.close();
    assert_eq!(r.seq(), 4);

    let side: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("audit.jsonl.torn-"))
        .collect();
    assert_eq!(side.len(), 1, "{side:?}");
    assert_eq!(fs::read(dir.path().join(&side[0])).unwrap(), garbage);

    let ls = lines(&path);
    assert_eq!(ls.len(), 4);
    assert_eq!(field(&ls[2], "kind"), "recovery");
    assert_eq!(field(&ls[2], "seq"), 3);
    assert_eq!(field(&ls[2], "cut_bytes"), garbage.len() as u64);
    assert_eq!(
        field(&ls[2], "cut_sha256"),
        super::line::sha256_hex(garbage).as_str()
    );
    assert_eq!(field(&ls[2], "side_file"), side[0].as_str());
    let sum = verify_file(&path).unwrap();
    assert_eq!((sum.records, sum.last_seq), (4, 4));
}

#[tokio::test]
async fn file_with_only_a_torn_line_restarts_the_chain() {
    let (_dir, path) = tmp_log();
    fs::write(&path, b"{\"v\":1,\"se").unwrap();
    let log = AuditLog::open(&path).unwrap();
    let r = log.record_decision(decision("r0")).await.unwrap();
    log.close();
    assert_eq!(r.seq(), 2);
    let ls = lines(&path);
    assert_eq!(field(&ls[0], "kind"), "recovery");
    assert_eq!(field(&ls[0], "prev"), GENESIS_PREV);
    assert_eq!(verify_file(&path).unwrap().records, 2);
}

#[tokio::test]
async fn open_refuses_a_last_line_that_does_not_verify() {
    let (_dir, path) = tmp_log();
    write_n(&path, 2).await;
    let mut ls = lines(&path);
    ls[1] = ls[1].replace("\"allow\"", "\"deny\"");
    write_lines(&path, &ls);
    let before = fs::read(&path).unwrap();
    match AuditLog::open(&path) {
        Err(AuditError::CorruptTail { .. }) => {}
        other => panic!("expected CorruptTail, got {other:?}"),
    }
    assert_eq!(
        fs::read(&path).unwrap(),
        before,
        "open must not modify a corrupt file"
    );
}

#[tokio::test]
async fn tamper_edited_field_is_bad_hash_at_that_line() {
    let (_dir, path) = tmp_log();
    write_n(&path, 5).await;
    let mut ls = lines(&path);
    ls[2] = ls[2].replace("alice@example.com", "mallory@example.com");
    write_lines(&path, &ls);
    let b = expect_break(&path);
    assert_eq!((b.line, b.kind), (3, BreakKind::BadHash), "{b}");
}

#[tokio::test]
async fn tamper_edit_with_recomputed_hash_breaks_the_next_link() {
    let (_dir, path) = tmp_log();
    write_n(&path, 5).await;
    let mut ls = lines(&path);
    let edited = ls[2].replace("\"allow\"", "\"deny\"");
    let cut = edited.rfind(",\"hash\":\"").unwrap();
    let forged_hash = super::line::sha256_hex(&edited.as_bytes()[..cut]);
    ls[2] = format!("{},\"hash\":\"{forged_hash}\"}}", &edited[..cut]);
    write_lines(&path, &ls);
    let b = expect_break(&path);
    assert_eq!((b.line, b.kind), (4, BreakKind::BrokenLink), "{b}");
}

#[tokio::test]
async fn tamper_deleted_line_is_seq_gap() {
    let (_dir, path) = tmp_log();
    write_n(&path, 5).await;
    let mut ls = lines(&path);
    ls.remove(2);
    write_lines(&path, &ls);
    let b = expect_break(&path);
    assert_eq!((b.line, b.kind), (3, BreakKind::SeqGap), "{b}");
}

#[tokio::test]
async fn tamper_deleted_first_line_is_bad_start() {
    let (_dir, path) = tmp_log();
    write_n(&path, 3).await;
    let mut ls = lines(&path);
    let first_hash = field(&ls[0], "hash");
    ls.remove(0);
    write_lines(&path, &ls);
    let b = expect_break(&path);
    assert_eq!((b.line, b.kind), (1, BreakKind::BadStart), "{b}");
    // A continuation file verifies only against the right anchor.
    let sum = verify_file_from(&path, first_hash.as_str()).unwrap();
    assert_eq!((sum.first_seq, sum.last_seq, sum.records), (2, 3, 2));
    match verify_file_from(&path, Some(GENESIS_PREV)) {
        Err(VerifyError::Break(b)) => assert_eq!((b.line, b.kind), (1, BreakKind::BadStart)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tamper_swapped_lines_break_at_the_first_of_them() {
    let (_dir, path) = tmp_log();
    write_n(&path, 5).await;
    let mut ls = lines(&path);
    ls.swap(1, 2);
    write_lines(&path, &ls);
    let b = expect_break(&path);
    assert_eq!((b.line, b.kind), (2, BreakKind::SeqGap), "{b}");
}

#[tokio::test]
async fn tamper_truncated_last_line_is_torn() {
    let (_dir, path) = tmp_log();
    write_n(&path, 3).await;
    let raw = fs::read(&path).unwrap();
    fs::write(&path, &raw[..raw.len() - 10]).unwrap();
    let b = expect_break(&path);
    assert_eq!((b.line, b.kind), (3, BreakKind::TornLine), "{b}");
    // Cutting exactly at a newline loses whole records undetectably without an external anchor;
    // what the chain does guarantee is that the summary's last hash changes.
    let full_last = field(&lines(&path)[1], "hash");
    let cut_at = raw[..raw.len() - 1]
        .iter()
        .rposition(|&c| c == b'\n')
        .unwrap()
        + 1;
    fs::write(&path, &raw[..cut_at]).unwrap();
    assert_eq!(
        verify_file(&path).unwrap().last_hash,
        full_last.as_str().unwrap()
    );
}

#[tokio::test]
async fn garbage_line_is_unparseable() {
    let (_dir, path) = tmp_log();
    write_n(&path, 3).await;
    let mut ls = lines(&path);
    ls.insert(1, "not json at all".into());
    write_lines(&path, &ls);
    let b = expect_break(&path);
    assert_eq!((b.line, b.kind), (2, BreakKind::Unparseable), "{b}");

    // Right shape and a correct hash, but a duplicate key: still rejected.
    let body = format!(
        "{{\"v\":1,\"seq\":1,\"time\":\"2026-01-01T00:00:00.000Z\",\"kind\":\"decision\",\"prev\":\"{GENESIS_PREV}\",\"seq\":9"
    );
    let h = super::line::sha256_hex(body.as_bytes());
    fs::write(&path, format!("{body},\"hash\":\"{h}\"}}\n")).unwrap();
    assert_eq!(expect_break(&path).kind, BreakKind::Unparseable);
}

#[tokio::test]
async fn injected_failure_fails_closed_and_the_log_recovers() {
    let (_dir, path) = tmp_log();
    let log = AuditLog::open(&path).unwrap();
    let first = log.record_decision(decision("ok-1")).await.unwrap();
    let before = fs::read(&path).unwrap();

    log.fail_next_writes(1);
    match log.record_decision(decision("fails")).await {
        Err(AuditError::Write(_)) => {}
        other => panic!("expected a write error, got {other:?}"),
    }
    assert_eq!(
        fs::read(&path).unwrap(),
        before,
        "failed batch must leave no bytes"
    );
    let s = log.stats();
    assert_eq!((s.records_written, s.write_failures), (1, 1));

    let next = log.record_decision(decision("ok-2")).await.unwrap();
    assert_eq!(
        next.seq(),
        first.seq() + 1,
        "chain head must be unchanged by the failure"
    );
    log.close();
    let ls = lines(&path);
    assert_eq!(ls.len(), 2);
    assert_eq!(field(&ls[1], "prev"), first.hash());
    assert_eq!(field(&ls[1], "request_id"), "ok-2");
    verify_file(&path).unwrap();
}

#[tokio::test]
async fn closed_log_rejects_appends_and_close_drains_pending() {
    let (_dir, path) = tmp_log();
    let log = AuditLog::open(&path).unwrap();
    let clone = log.clone();
    log.record_decision(decision("r0")).await.unwrap();
    log.close();
    match clone.record_decision(decision("late")).await {
        Err(AuditError::Closed) => {}
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(matches!(
        clone
            .record_outcome(OutcomeRecord {
                request_id: "late".into(),
                status: 200,
                graph_request_id: None,
                latency_ms: 1.0,
                error: None
            })
            .await,
        Err(AuditError::Closed)
    ));
    // Closing twice is harmless.
    clone.close();
    assert_eq!(verify_file(&path).unwrap().records, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batch_answers_every_waiter_with_err() {
    let (_dir, path) = tmp_log();
    let log = AuditLog::open(&path).unwrap();
    log.test_hooks().close_gate();
    log.fail_next_writes(1);
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record_decision(decision(&format!("r{i}"))).await })
        })
        .collect();
    while log
        .test_hooks()
        .enqueued
        .load(std::sync::atomic::Ordering::SeqCst)
        < 5
    {
        tokio::task::yield_now().await;
    }
    log.test_hooks().open_gate();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Err(AuditError::Write(_))));
    }
    assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    assert_eq!(log.stats().write_failures, 1);
    let r = log.record_decision(decision("after")).await.unwrap();
    assert_eq!(r.seq(), 1);
    log.close();
    verify_file(&path).unwrap();
}

#[tokio::test]
async fn reopen_finds_the_head_when_the_last_line_spans_read_chunks() {
    let (_dir, path) = tmp_log();
    let log = AuditLog::open(&path).unwrap();
    log.record_decision(decision("r0")).await.unwrap();
    let mut big = decision("r1");
    // Longer than the 64 KiB backwards-read chunk, so the tail scan must cross chunks.
    big.message = Some("x".repeat(150_000));
    let last = log.record_decision(big).await.unwrap();
    log.close();
    let log = AuditLog::open(&path).unwrap();
    let r = log.record_decision(decision("r2")).await.unwrap();
    log.close();
    assert_eq!(r.seq(), 3);
    assert_eq!(field(&lines(&path)[2], "prev"), last.hash());
    assert_eq!(verify_file(&path).unwrap().records, 3);
}

#[test]
fn rotated_names_sort_in_chain_order_and_parse_back() {
    use chrono::TimeZone;
    let base = Path::new("/var/lib/passgate/audit.jsonl");
    let t = chrono::Utc
        .with_ymd_and_hms(2026, 11, 28, 17, 1, 2)
        .unwrap();
    let a = rotation::rotated_name(base, t, 9);
    let b = rotation::rotated_name(base, t, 10);
    let c = rotation::rotated_name(base, t + chrono::Duration::seconds(1), 11);
    assert_eq!(
        a.to_str().unwrap(),
        "/var/lib/passgate/audit.jsonl.20261128T170102Z.00000000000000000009"
    );
    // Same second: the zero-padded seq still sorts them; a later second sorts after.
    assert!(a < b && b < c);
    let name = |p: &Path| p.file_name().unwrap().to_owned();
    let base_name = std::ffi::OsStr::new("audit.jsonl");
    assert_eq!(rotation::rotated_seq(base_name, &name(&b)), Some(10));
    for not_rotated in [
        "audit.jsonl",
        "audit.jsonl.torn-1764349262",
        "audit.jsonl.20261128T170102Z.9",
        "audit.jsonl.2026112XT170102Z.00000000000000000009",
        "other.jsonl.20261128T170102Z.00000000000000000009",
        "audit.jsonl.20261128T170102Z.00000000000000000009.gz",
    ] {
        assert_eq!(
            rotation::rotated_seq(base_name, std::ffi::OsStr::new(not_rotated)),
            None,
            "{not_rotated}"
        );
    }
}

#[tokio::test]
async fn size_rotation_keeps_batches_whole_and_links_files() {
    let (_dir, path) = tmp_log();
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            rotate_max_bytes: Some(4000),
            ..AuditOptions::default()
        },
    )
    .unwrap();
    // Hold the writer so 20 records (~17 KB) form one batch: it must land in one file even
    // though it is far past the limit.
    log.test_hooks().close_gate();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.record_decision(decision(&format!("b{i}"))).await })
        })
        .collect();
    while log
        .test_hooks()
        .enqueued
        .load(std::sync::atomic::Ordering::SeqCst)
        < 20
    {
        tokio::task::yield_now().await;
    }
    log.test_hooks().open_gate();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    // All 20 went into the first (empty) file as one batch; the next record rotates first.
    let after_batch = log.record_decision(decision("next")).await.unwrap();
    log.close();
    assert_eq!(after_batch.seq(), 21);
    let rotated = rotated_files(&path).unwrap();
    assert_eq!(
        rotation_set(&path).unwrap(),
        [rotated.as_slice(), std::slice::from_ref(&path)].concat()
    );
    let counts: Vec<usize> = rotated.iter().map(|p| lines(p).len()).collect();
    assert_eq!(counts.iter().sum::<usize>(), 20, "{counts:?}");
    assert_eq!(counts, [20], "one batch, one file");
    let cur = lines(&path);
    assert_eq!(cur.len(), 1);
    let last_rotated = lines(rotated.last().unwrap());
    assert_eq!(
        field(&cur[0], "prev"),
        field(last_rotated.last().unwrap(), "hash")
    );
    let mut all = rotated.clone();
    all.push(path.clone());
    let s = verify_set(&all, &VerifyOptions::default()).unwrap();
    assert_eq!((s.records, s.last_seq), (21, 21));
    assert_eq!(log.stats().rotations, rotated.len() as u64);
}

#[tokio::test]
async fn keyed_lines_carry_alg_and_an_hmac() {
    let (_dir, path) = tmp_log();
    let key = b"k".repeat(32);
    let log = AuditLog::open_with(
        &path,
        AuditOptions {
            hmac_key: Some(key.clone()),
            ..AuditOptions::default()
        },
    )
    .unwrap();
    let r = log.record_decision(decision("r0")).await.unwrap();
    log.close();
    let line = &lines(&path)[0];
    assert!(line.starts_with("{\"v\":2,\"alg\":\"hmac-sha256\",\"seq\":1,\"time\":\""));
    let cut = line.rfind(",\"hash\":\"").unwrap();
    let expect = super::line::hmac_sha256_hex(&key, &line.as_bytes()[..cut]);
    assert_eq!(r.hash(), expect);
    assert_ne!(expect, super::line::sha256_hex(&line.as_bytes()[..cut]));
    // The single-file verifier has no key: it says so rather than passing or calling it forged.
    assert_eq!(expect_break(&path).kind, BreakKind::KeyRequired);
    // Reopening with the wrong key refuses: it cannot vouch for its own tail.
    match AuditLog::open_with(
        &path,
        AuditOptions {
            hmac_key: Some(b"x".repeat(32)),
            ..AuditOptions::default()
        },
    ) {
        Err(AuditError::CorruptTail { detail, .. }) => assert!(detail.contains("bad_hash")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn failure_kinds_classify_the_os_error_first_then_the_step() {
    use std::io::Error;
    // Linux errno values: ENOSPC 28, EDQUOT 122, EACCES 13, EPERM 1, EROFS 30, EIO 5, EBADF 9.
    let cases = [
        (28, WriteStep::Write, FailureKind::DiskFull),
        (28, WriteStep::Fsync, FailureKind::DiskFull),
        (122, WriteStep::Write, FailureKind::DiskFull),
        (13, WriteStep::Restore, FailureKind::Permission),
        (1, WriteStep::Write, FailureKind::Permission),
        (30, WriteStep::DirSync, FailureKind::Permission),
        (5, WriteStep::Fsync, FailureKind::Fsync),
        (5, WriteStep::DirSync, FailureKind::Fsync),
        (5, WriteStep::Write, FailureKind::Io),
        (9, WriteStep::Restore, FailureKind::Io),
    ];
    for (errno, step, want) in cases {
        let e = Error::from_raw_os_error(errno);
        assert_eq!(
            FailureKind::classify(step, &e),
            want,
            "errno {errno} at {step:?}"
        );
    }
    assert_eq!(
        FailureKind::classify(WriteStep::Fsync, &Error::other("x")),
        FailureKind::Fsync
    );
    let labels: HashSet<&str> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        labels,
        HashSet::from(["disk_full", "permission", "fsync", "io"])
    );
    for (i, k) in FailureKind::ALL.iter().enumerate() {
        assert_eq!(k.index(), i);
    }
}

#[tokio::test]
async fn full_disk_fails_the_batch_as_disk_full_with_the_os_error_kept() {
    // /dev/full accepts the open and answers every write with ENOSPC.
    let log = AuditLog::open(Path::new("/dev/full")).unwrap();
    let err = log.record_decision(decision("full")).await.unwrap_err();
    let AuditError::Write(f) = &err else {
        panic!("expected a write failure, got {err:?}");
    };
    assert_eq!(f.kind(), FailureKind::DiskFull);
    assert_eq!(f.step(), WriteStep::Write);
    assert_eq!(f.path(), Path::new("/dev/full"));
    assert_eq!(f.io_error().raw_os_error(), Some(28), "ENOSPC");
    assert_eq!(err.failure_kind(), Some(FailureKind::DiskFull));
    // The cause is reachable as a typed source, not only as text.
    let source = std::error::Error::source(&err).expect("write failure as source");
    let io = std::error::Error::source(source)
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .expect("io::Error as the failure's source");
    assert_eq!(io.kind(), std::io::ErrorKind::StorageFull);
    assert!(err.to_string().contains("disk_full"), "{err}");

    let s = log.stats();
    assert_eq!(s.write_failures, 1);
    assert_eq!(s.write_failures_by_kind.get(FailureKind::DiskFull), 1);
    assert_eq!(
        s.write_failures_by_kind.iter().map(|(_, n)| n).sum::<u64>(),
        s.write_failures
    );
    assert_eq!(s.records_written, 0);
    assert!(!log.healthy());
    log.close();
}

#[tokio::test]
async fn failed_fsync_is_counted_as_fsync_and_the_kinds_add_up() {
    let (_dir, path) = tmp_log();
    let log = AuditLog::open(&path).unwrap();
    log.fail_next_writes(2);
    for id in ["a", "b"] {
        match log.record_decision(decision(id)).await {
            Err(AuditError::Write(f)) => {
                assert_eq!((f.kind(), f.step()), (FailureKind::Fsync, WriteStep::Fsync));
                assert_eq!(f.path(), path);
            }
            other => panic!("expected a write failure, got {other:?}"),
        }
    }
    log.record_decision(decision("ok")).await.unwrap();
    let s = log.stats();
    assert_eq!(s.write_failures, 2);
    let by_kind: Vec<(FailureKind, u64)> = s.write_failures_by_kind.iter().collect();
    assert_eq!(
        by_kind,
        [
            (FailureKind::DiskFull, 0),
            (FailureKind::Permission, 0),
            (FailureKind::Fsync, 2),
            (FailureKind::Io, 0),
        ]
    );
    assert!(log.healthy());
    log.close();
    verify_file(&path).unwrap();
}

#[tokio::test]
async fn short_hmac_key_is_refused_by_the_one_check() {
    let (_dir, path) = tmp_log();
    let short = vec![7u8; MIN_HMAC_KEY_BYTES - 1];
    assert_eq!(
        check_hmac_key(&short),
        Err(KeyTooShort {
            len: MIN_HMAC_KEY_BYTES - 1
        })
    );
    assert_eq!(check_hmac_key(&[7u8; MIN_HMAC_KEY_BYTES]), Ok(()));
    let opts = AuditOptions {
        hmac_key: Some(short),
        ..AuditOptions::default()
    };
    match AuditLog::open_with(&path, opts) {
        Err(AuditError::KeyTooShort { source, .. }) => {
            assert_eq!(source.len, MIN_HMAC_KEY_BYTES - 1);
        }
        other => panic!("expected KeyTooShort, got {other:?}"),
    }
    assert!(!path.exists(), "nothing is created for a refused key");
}

#[test]
fn first_line_reader_reports_complete_torn_and_empty() {
    use super::scan::{read_first_line, FirstLine, ReadFromStart};
    let read = |b: &[u8]| read_first_line(b).unwrap();
    assert_eq!(read(b""), None);
    assert_eq!(
        read(b"{\"seq\":1}\n{\"seq\":2}\n"),
        Some(FirstLine {
            bytes: b"{\"seq\":1}".to_vec(),
            complete: true
        })
    );
    assert_eq!(
        read(b"{\"se"),
        Some(FirstLine {
            bytes: b"{\"se".to_vec(),
            complete: false
        })
    );
    // Positioned reads leave the descriptor's offset where it was.
    let (_dir, path) = tmp_log();
    fs::write(&path, b"first\nsecond\n").unwrap();
    let mut f = fs::File::open(&path).unwrap();
    use std::io::{Read, Seek};
    f.seek(std::io::SeekFrom::Start(6)).unwrap();
    let got = read_first_line(ReadFromStart::new(&f)).unwrap().unwrap();
    assert_eq!(got.bytes, b"first");
    let mut rest = String::new();
    f.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "second\n");
}

/// Finding 4: a decision the pipeline gave up on (audit deadline passed while it was queued) is
/// written as what the client received, `503 audit_unavailable`, marked abandoned — never as
/// the allow (or the original denial status) that had been decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_given_up_on_is_written_as_the_503_the_client_got() {
    let (_dir, path) = tmp_log();
    let log = AuditLog::open(&path).unwrap();
    log.test_hooks().close_gate();
    let mut deny = decision("gave-up-deny");
    deny.decision = Decision::Deny;
    deny.reason = "operator_not_approved".into();
    deny.status = Some(403);
    // Both wait out the real deadline together (one COMMIT_TIMEOUT of test time).
    let (allow, denied) = tokio::join!(log.commit(decision("gave-up-allow")), async {
        // Queue the denial after the allow so the file order is known.
        while log
            .test_hooks()
            .enqueued
            .load(std::sync::atomic::Ordering::SeqCst)
            < 1
        {
            tokio::task::yield_now().await;
        }
        log.commit(deny).await
    });
    assert!(matches!(allow, Err(CommitError::Abandoned(_))), "{allow:?}");
    assert!(
        matches!(denied, Err(CommitError::Abandoned(_))),
        "{denied:?}"
    );
    log.test_hooks().open_gate();
    log.close();
    verify_file(&path).unwrap();
    let recs: Vec<serde_json::Value> = fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2, "one record per request, no second decision");
    for (r, (was, was_reason, was_status)) in recs.iter().zip([
        ("allow", "allowed", serde_json::Value::Null),
        ("deny", "operator_not_approved", serde_json::json!(403)),
    ]) {
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["reason"], "audit_unavailable", "{r}");
        assert_eq!(r["status"], 503, "{r}");
        assert_eq!(r["abandoned"]["decision"], was, "{r}");
        assert_eq!(r["abandoned"]["reason"], was_reason, "{r}");
        assert_eq!(r["abandoned"]["status"], was_status, "{r}");
    }
    // What a record that was already being written gets instead: an outcome with the 503.
    let (_dir2, path2) = tmp_log();
    let log2 = AuditLog::open(&path2).unwrap();
    let mut landed = decision("landed");
    landed.decision = Decision::Deny;
    landed.reason = "operator_not_approved".into();
    landed.status = Some(403);
    log2.record_decision(landed).await.unwrap();
    log2.note_abandoned("landed");
    while log2.stats().records_written < 2 {
        tokio::task::yield_now().await;
    }
    log2.close();
    let res = search(std::slice::from_ref(&path2), &SearchFilter::default()).unwrap();
    let mut out = Vec::new();
    search::render(&res, Format::Csv, &mut out).unwrap();
    let table = String::from_utf8(out).unwrap();
    assert!(
        table.contains(",503,") && !table.contains(",403,"),
        "{table}"
    );
}
