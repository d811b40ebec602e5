//! The audit writer's handle and thread: open finds the chain head (recovering a torn tail),
//! then one dedicated thread takes appends in batches (group commit: `chain`)
//! and answers each caller only after the fsync covering its bytes. It must never answer Ok
//! before that fsync, and never hang a caller whose batch cannot be written.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::chain::{sync_parent_dir, Chain, Committed};
use super::error::{AuditError, FailureCounts, FailureKind};
use super::line::{parse_line, record_fields, LineKind, GENESIS_PREV};
use super::options::{check_hmac_key, AuditOptions, FsyncObserver};
use super::record::{
    ApprovalRecord, ConsoleRecord, DecisionRecord, OutcomeRecord, ThrottledRecord, MAX_PATH_BYTES,
};
use super::rotation::rotated_files;
use super::scan::{read_first_line, read_tail, ReadFromStart};

/// Most records committed by one write + fsync. Bounds the latency a single batch adds and the
/// memory of one write buffer.
const MAX_BATCH: usize = 4096;

/// Proof that a decision record is durable (fsynced). Only the writer creates one.
#[derive(Debug)]
pub struct AuditReceipt {
    seq: u64,
    hash: String,
    request_id: String,
}

impl AuditReceipt {
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Hash of the decision line, as written in its `hash` field.
    pub fn hash(&self) -> &str {
        &self.hash
    }
    /// The `request_id` of the decision record this receipt covers.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }
}

/// Counters since open, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditStats {
    /// Records made durable (including a recovery record written at open).
    pub records_written: u64,
    /// `sync_data` calls issued on the log file.
    pub fsyncs: u64,
    /// Batches whose write or fsync failed (every record in them got an error).
    pub write_failures: u64,
    /// The same failed batches by [`FailureKind`]; the counts add up to `write_failures`.
    pub write_failures_by_kind: FailureCounts,
    /// Files rotated away.
    pub rotations: u64,
    /// Rotation attempts that failed (writing went on in the current file).
    pub rotation_failures: u64,
}

/// State shared by the handles and the writer thread: counters, health, the fsync observer.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) records_written: AtomicU64,
    pub(super) fsyncs: AtomicU64,
    /// Failed batches, indexed like [`FailureKind::ALL`].
    write_failures: [AtomicU64; 4],
    pub(super) rotations: AtomicU64,
    pub(super) rotation_failures: AtomicU64,
    /// Set when the writer thread ends (closed, or died).
    writer_stopped: AtomicBool,
    /// The most recent batch failed; cleared by the next good one.
    pub(super) last_batch_failed: AtomicBool,
    fsync_observer: RwLock<Option<FsyncObserver>>,
    /// Fault injection: the next N batches fail after their bytes were written (as a failed
    /// fsync would). Compiled only into test builds; see `AuditLog::fail_next_writes`.
    #[cfg(any(test, feature = "test-support"))]
    fail_next: std::sync::atomic::AtomicU32,
    #[cfg(test)]
    test: super::test_hooks::Hooks,
}

impl Shared {
    pub(super) fn count_failure(&self, kind: FailureKind) {
        self.write_failures[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn observe_fsync(&self, d: Duration) {
        let obs = self
            .fsync_observer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(obs) = obs {
            obs(d);
        }
    }

    #[cfg(any(test, feature = "test-support"))]
    pub(super) fn take_injected_failure(&self) -> bool {
        self.fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Without the test-only fault injection, no batch is ever failed on purpose.
    #[cfg(not(any(test, feature = "test-support")))]
    pub(super) fn take_injected_failure(&self) -> bool {
        false
    }
}

struct Job {
    /// `None` for a barrier ([`AuditLog::sync`]): nothing to write, answered once every job
    /// before it is settled.
    kind: Option<LineKind>,
    fields: String,
    /// For a decision the caller may give up on: who wins, the writer taking it or the caller
    /// withdrawing it, and the fields to write if the caller won.
    ticket: Option<Arc<Ticket>>,
    reply: oneshot::Sender<Result<Committed, AuditError>>,
}

const TICKET_PENDING: u8 = 0;
const TICKET_TAKEN: u8 = 1;
const TICKET_ABANDONED: u8 = 2;

/// The race between the writer taking a queued decision and its caller giving up on it. Exactly
/// one side wins: the writer writes the record as submitted only if it took it first; if the
/// caller abandoned it first, the writer writes the abandoned form (what the client received).
pub(crate) struct Ticket {
    state: std::sync::atomic::AtomicU8,
    /// The record as submitted; its abandoned form is serialised by the writer only when the
    /// caller did give up (rare), not on every request.
    record: DecisionRecord,
}

impl Ticket {
    /// The caller gives up. True if the writer had not taken the record yet, so it will be
    /// written in its abandoned form; false if its bytes are already on their way as submitted.
    pub(crate) fn abandon(&self) -> bool {
        self.state
            .compare_exchange(
                TICKET_PENDING,
                TICKET_ABANDONED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }

    /// The writer takes the record; false if the caller abandoned it first.
    fn take(&self) -> bool {
        self.state
            .compare_exchange(
                TICKET_PENDING,
                TICKET_TAKEN,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
    }
}

struct Inner {
    path: PathBuf,
    tx: RwLock<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    shared: Arc<Shared>,
}

/// Handle to an open audit log; clones share one writer thread.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating with mode 0600 if missing) and recovers the chain head from the file tail.
    /// A torn tail is copied to `<path>.torn-<unix-seconds>`, cut, and noted in a `recovery`
    /// record. Refuses to open if the last complete line does not verify. No rotation, no key.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_with(path, AuditOptions::default())
    }

    /// Like [`AuditLog::open`], with rotation and an optional HMAC key. If `path` holds no
    /// complete record, the chain continues from the newest rotated file beside it. A keyed last
    /// record needs the key to be checked, so a keyed log refuses to open without it; a plain
    /// log opened with a key continues keyed (the first keyed record pins the plain chain).
    pub fn open_with(path: &Path, opts: AuditOptions) -> Result<AuditLog, AuditError> {
        if let Some(k) = &opts.hmac_key {
            check_hmac_key(k).map_err(|source| AuditError::KeyTooShort {
                path: path.to_owned(),
                source,
            })?;
        }
        let open_err = |source| AuditError::Open {
            path: path.to_owned(),
            source,
        };
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        if !existed {
            // Make the new directory entry itself durable, not only the file's contents.
            sync_parent_dir(path).map_err(open_err)?;
        }
        let len = file.metadata().map_err(open_err)?.len();
        let tail = read_tail(&file, len).map_err(open_err)?;

        let key = opts.hmac_key.as_deref();
        let (seq, head) = match &tail.last_line {
            Some(line) => head_of(path, line, key)?,
            None => match rotated_files(path).map_err(open_err)?.pop() {
                None => (0, GENESIS_PREV.to_owned()),
                Some(rotated) => {
                    let rerr = |source| AuditError::Open {
                        path: rotated.clone(),
                        source,
                    };
                    let rf = File::open(&rotated).map_err(rerr)?;
                    let rlen = rf.metadata().map_err(rerr)?.len();
                    match read_tail(&rf, rlen).map_err(rerr)?.last_line {
                        Some(line) => {
                            tracing::info!(rotated = %rotated.display(), "audit file holds no records; continuing the chain from the newest rotated file");
                            head_of(&rotated, &line, key)?
                        }
                        None => {
                            return Err(AuditError::CorruptTail {
                                path: rotated,
                                detail: "rotated audit file holds no complete record; the chain head cannot be found".into(),
                            })
                        }
                    }
                }
            },
        };
        let first_time = if tail.complete_len > 0 {
            // A first line whose time cannot be read still ages from now rather than never.
            Some(read_first_time(&file).unwrap_or_else(Utc::now))
        } else {
            None
        };

        let shared = Arc::new(Shared::default());
        let mut chain = Chain {
            file,
            path: path.to_owned(),
            len: tail.complete_len,
            seq,
            head,
            needs_truncate: false,
            key: opts.hmac_key,
            rotate_max_bytes: opts.rotate_max_bytes,
            rotate_max_age: opts.rotate_max_age,
            first_time,
            dir_sync_pending: false,
            dir_sync_error: None,
            rotate_retry_at: None,
        };
        if tail.complete_len < len {
            chain.recover_torn_tail(len, &shared)?;
        }

        let (tx, rx) = mpsc::channel::<Job>();
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || run_writer(chain, rx, thread_shared))
            .map_err(open_err)?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                tx: RwLock::new(Some(tx)),
                thread: Mutex::new(Some(handle)),
                shared,
            }),
        })
    }

    /// Appends a decision record; resolves only after the bytes are fsynced.
    pub async fn record_decision(&self, rec: DecisionRecord) -> Result<AuditReceipt, AuditError> {
        let mut rec = rec;
        crate::text::truncate_in_place(&mut rec.path, MAX_PATH_BYTES);
        let fields = record_fields(&rec)?;
        let c = self.submit(LineKind::Decision, fields, None).await?;
        Ok(AuditReceipt {
            seq: c.seq,
            hash: c.hash,
            request_id: rec.request_id,
        })
    }

    /// Like [`AuditLog::record_decision`], with a [`Ticket`] the caller can use to abandon the
    /// record while it is still queued: it is then written as [`DecisionRecord::abandoned`].
    pub(crate) fn record_decision_abandonable(
        &self,
        rec: DecisionRecord,
    ) -> Result<
        (
            Arc<Ticket>,
            impl std::future::Future<Output = Result<AuditReceipt, AuditError>> + '_,
        ),
        AuditError,
    > {
        let mut rec = rec;
        crate::text::truncate_in_place(&mut rec.path, MAX_PATH_BYTES);
        let fields = record_fields(&rec)?;
        let request_id = rec.request_id.clone();
        let ticket = Arc::new(Ticket {
            state: std::sync::atomic::AtomicU8::new(TICKET_PENDING),
            record: rec,
        });
        let t = ticket.clone();
        let fut = async move {
            let c = self.submit(LineKind::Decision, fields, Some(t)).await?;
            Ok(AuditReceipt {
                seq: c.seq,
                hash: c.hash,
                request_id,
            })
        };
        Ok((ticket, fut))
    }

    /// Appends the outcome record tied to a decision (same request_id). Resolves once its bytes
    /// are in the file; the batch's fsync follows at once (the answer to the client never
    /// depended on this record, so it does not wait for the disk).
    pub async fn record_outcome(&self, rec: OutcomeRecord) -> Result<(), AuditError> {
        let fields = record_fields(&rec)?;
        self.submit(LineKind::Outcome, fields, None)
            .await
            .map(|_| ())
    }

    /// Appends one approval event; durable like the others.
    pub async fn record_approval(&self, rec: ApprovalRecord) -> Result<(), AuditError> {
        let fields = record_fields(&rec)?;
        self.submit(LineKind::Approval, fields, None)
            .await
            .map(|_| ())
    }

    /// Appends a summary of throttled refusals before authentication; durable like the others.
    pub async fn record_throttled(&self, rec: ThrottledRecord) -> Result<(), AuditError> {
        let fields = record_fields(&rec)?;
        self.submit(LineKind::Throttled, fields, None)
            .await
            .map(|_| ())
    }

    /// Appends one web-console action; durable like the others.
    pub async fn record_console(&self, rec: ConsoleRecord) -> Result<(), AuditError> {
        let fields = record_fields(&rec)?;
        self.submit(LineKind::Console, fields, None)
            .await
            .map(|_| ())
    }

    async fn submit(
        &self,
        kind: LineKind,
        fields: String,
        ticket: Option<Arc<Ticket>>,
    ) -> Result<Committed, AuditError> {
        let (reply, answer) = oneshot::channel();
        {
            let tx = self.inner.tx.read().unwrap_or_else(PoisonError::into_inner);
            let tx = tx.as_ref().ok_or(AuditError::Closed)?;
            tx.send(Job {
                kind: Some(kind),
                fields,
                ticket,
                reply,
            })
            .map_err(|_| AuditError::Closed)?;
        }
        #[cfg(test)]
        self.inner
            .shared
            .test
            .enqueued
            .fetch_add(1, Ordering::SeqCst);
        // A dropped reply sender means the writer thread died: fail, never hang.
        answer.await.map_err(|_| AuditError::Closed)?
    }

    /// Resolves once every record submitted before this call is settled: durable, or failed
    /// with its batch. Outcome records are answered when written, before their fsync; this is
    /// how a caller (a test, a shutdown) waits for the disk as well.
    pub async fn sync(&self) -> Result<(), AuditError> {
        let (reply, answer) = oneshot::channel();
        {
            let tx = self.inner.tx.read().unwrap_or_else(PoisonError::into_inner);
            let tx = tx.as_ref().ok_or(AuditError::Closed)?;
            tx.send(Job {
                kind: None,
                fields: String::new(),
                ticket: None,
                reply,
            })
            .map_err(|_| AuditError::Closed)?;
        }
        answer.await.map_err(|_| AuditError::Closed)?.map(|_| ())
    }

    /// Flushes and stops the writer thread (pending appends complete first). Later appends on
    /// any clone return [`AuditError::Closed`]. Blocks until the thread has finished.
    pub fn close(&self) {
        let tx = self
            .inner
            .tx
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(tx);
        let handle = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("audit writer thread panicked");
            }
        }
    }

    /// Bytes free on the audit file's filesystem for an unprivileged writer (`statvfs`
    /// `f_bavail × f_frsize`), as `/readyz` and the disk alert see it.
    pub fn free_bytes(&self) -> std::io::Result<u64> {
        let dir = match self.path().parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let st = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn stats(&self) -> AuditStats {
        let s = &self.inner.shared;
        let by_kind = FailureCounts::from_array(std::array::from_fn(|i| {
            s.write_failures[i].load(Ordering::Relaxed)
        }));
        AuditStats {
            records_written: s.records_written.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            write_failures: by_kind.iter().map(|(_, n)| n).sum(),
            write_failures_by_kind: by_kind,
            rotations: s.rotations.load(Ordering::Relaxed),
            rotation_failures: s.rotation_failures.load(Ordering::Relaxed),
        }
    }

    /// For readiness: the writer is running (not closed, thread alive) and its most recent batch
    /// was made durable. A failed batch makes this false until a later batch succeeds.
    pub fn healthy(&self) -> bool {
        let s = &self.inner.shared;
        let open = self
            .inner
            .tx
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        open && !s.writer_stopped.load(Ordering::SeqCst)
            && !s.last_batch_failed.load(Ordering::SeqCst)
    }

    /// Installs (replacing any earlier one) a callback given each batch's fsync duration.
    pub fn set_fsync_observer(&self, f: FsyncObserver) {
        *self
            .inner
            .shared
            .fsync_observer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(f);
    }

    /// Fault injection: the next `n` batches fail after writing their bytes, as if fsync had
    /// failed (counted as kind `fsync`). Compiled only for tests: unit tests (`cfg(test)`) and
    /// the integration tests, which enable the `test-support` feature through passgate's
    /// dev-dependency on itself; a normal or release build has no such method.
    #[cfg(any(test, feature = "test-support"))]
    pub fn fail_next_writes(&self, n: u32) {
        self.inner.shared.fail_next.store(n, Ordering::SeqCst);
    }

    #[cfg(test)]
    pub(crate) fn test_hooks(&self) -> &super::test_hooks::Hooks {
        &self.inner.shared.test
    }
}

/// Marks the writer stopped however its thread ends, panics included.
struct StoppedOnDrop(Arc<Shared>);

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        self.0.writer_stopped.store(true, Ordering::SeqCst);
    }
}

fn run_writer(mut chain: Chain, rx: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    let _stopped = StoppedOnDrop(shared.clone());
    // recv() keeps yielding queued jobs after every sender is gone, so close() drains first.
    loop {
        let first = match chain.idle_wait() {
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
            // An age limit is set: wake when it is reached even if no record arrives, so a quiet
            // log still rotates on schedule.
            Some(wait) => match rx.recv_timeout(wait) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    chain.rotate_if_due(0, &shared);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        #[cfg(test)]
        shared.test.wait_gate();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Take each abandonable record now, just before its bytes are written: one its caller
        // gave up on is written in its abandoned form, never as submitted. That form differs
        // from the submitted one (which serialised) only in fixed-type fields, so it cannot fail
        // to serialise; if it ever did, the record is not written and its (departed) caller
        // gets the error — the client was already answered 503 audit_unavailable.
        // Each job is split into what is written and whom to answer; answers are taken out as
        // they are given, so none is given twice.
        let mut replies: Vec<Option<oneshot::Sender<Result<Committed, AuditError>>>> =
            Vec::with_capacity(batch.len());
        let mut lines: Vec<(LineKind, String)> = Vec::with_capacity(batch.len());
        let mut barriers = Vec::new();
        for job in batch {
            let Some(kind) = job.kind else {
                barriers.push(job.reply);
                continue;
            };
            let fields = match &job.ticket {
                Some(t) if !t.take() => match record_fields(&t.record.clone().abandoned()) {
                    Ok(abandoned) => abandoned,
                    Err(e) => {
                        let _ = job.reply.send(Err(AuditError::Serialize(e)));
                        continue;
                    }
                },
                _ => job.fields,
            };
            replies.push(Some(job.reply));
            lines.push((kind, fields));
        }
        // Every job before a barrier is in this batch or an earlier one, settled by the time
        // this batch is (FIFO, one batch at a time).
        let settle_barriers = |barriers: Vec<oneshot::Sender<Result<Committed, AuditError>>>| {
            for r in barriers {
                let _ = r.send(Ok(Committed {
                    seq: 0,
                    hash: String::new(),
                }));
            }
        };
        let entries: Vec<(LineKind, &str)> = lines.iter().map(|(k, f)| (*k, f.as_str())).collect();
        if entries.is_empty() {
            settle_barriers(barriers);
            continue;
        }
        // Outcome records are answered once written, before the fsync: the answer to the client
        // never depended on them (a failed outcome write is logged, not refused), so waiting for
        // their durability only added an fsync to every allowed request's latency. The fsync
        // follows at once; if it fails the batch is cut off and counted like any failed batch.
        // Decision records (the promise before any forward) and every other kind wait for it.
        let early = |done: &[Committed]| {
            for ((kind, _), (reply, c)) in entries.iter().zip(replies.iter_mut().zip(done)) {
                if *kind == LineKind::Outcome {
                    if let Some(r) = reply.take() {
                        let _ = r.send(Ok(c.clone()));
                    }
                }
            }
        };
        match chain.commit(&entries, &shared, early) {
            Ok(done) => {
                for (reply, c) in replies.into_iter().zip(done) {
                    // The caller may have gone away; its record is durable regardless.
                    if let Some(r) = reply {
                        let _ = r.send(Ok(c));
                    }
                }
            }
            Err(failure) => {
                for r in replies.into_iter().flatten() {
                    let _ = r.send(Err(AuditError::Write(failure.clone())));
                }
            }
        }
        settle_barriers(barriers);
    }
}

/// Checks the last complete line of a file at open and returns the chain head `(seq, hash)`.
fn head_of(path: &Path, line: &[u8], key: Option<&[u8]>) -> Result<(u64, String), AuditError> {
    match parse_line(line, key) {
        Ok(p) => Ok((p.seq, p.hash)),
        Err((kind, detail)) => Err(AuditError::CorruptTail {
            path: path.to_owned(),
            detail: format!("{kind}: {detail}"),
        }),
    }
}

/// Time of the file's first record, read leniently (only for the age limit).
fn read_first_time(file: &File) -> Option<DateTime<Utc>> {
    #[derive(serde::Deserialize)]
    struct TimeOnly {
        time: String,
    }
    let line = read_first_line(ReadFromStart::new(file)).ok()??;
    if !line.complete {
        return None;
    }
    let t: TimeOnly = serde_json::from_slice(&line.bytes).ok()?;
    DateTime::parse_from_rfc3339(&t.time)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
