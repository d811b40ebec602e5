//! The audit writer: one dedicated thread appends hash-chained lines with group commit and
//! answers each caller only after the fsync covering its bytes; between batches it rotates the
//! file by size or age without breaking the chain. It must never answer Ok before that fsync,
//! never leave a failed batch's bytes in the file, and never split a batch across files.
//!
//! # Rotation
//!
//! The current file is renamed to `<path>.<UTC yyyymmddThhmmssZ>.<last seq, 20 digits>` (e.g.
//! `audit.jsonl.20261128T170102Z.00000000000000012345`), a fresh `<path>` is created (0600) and
//! the directory fsynced. The next record continues the chain: `seq` + 1, `prev` = the last hash
//! of the renamed file. Names sort by time, and the zero-padded seq keeps rotations within the
//! same second in chain order. If `<path>` has no complete record at open (just rotated, or
//! removed), the chain head is taken from the rotated file with the highest seq.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::line::{build_line, parse_line, record_fields, LineKind, LineParts, GENESIS_PREV};
use super::record::{
    truncate_on_char_boundary, DecisionRecord, OutcomeRecord, RecoveryRecord, MAX_PATH_BYTES,
};

/// Most records committed by one write + fsync. Bounds the latency a single batch adds and the
/// memory of one write buffer.
const MAX_BATCH: usize = 4096;

/// After a failed rotation, wait this long before trying again (writes go on meanwhile).
const ROTATE_RETRY: Duration = Duration::from_secs(5);

/// Shortest HMAC key the writer accepts, in bytes: shorter keys are guessable offline.
pub const MIN_HMAC_KEY_BYTES: usize = 16;

/// Called with the duration of every batch's `fsync` (successful or not), e.g. to feed a
/// histogram. Runs on the writer thread: it must be quick and must not block.
pub type FsyncObserver = Arc<dyn Fn(Duration) + Send + Sync>;

/// How [`AuditLog::open_with`] writes.
#[derive(Clone, Default)]
pub struct AuditOptions {
    /// Rotate before a batch that would take the current file past this many bytes. A single
    /// batch larger than this still goes into one file: records never split across files.
    pub rotate_max_bytes: Option<u64>,
    /// Rotate once the current file's first record is this old (checked between batches and
    /// while idle).
    pub rotate_max_age: Option<Duration>,
    /// HMAC-SHA256 key for a keyed chain; `None` hashes with plain SHA-256.
    pub hmac_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for AuditOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditOptions")
            .field("rotate_max_bytes", &self.rotate_max_bytes)
            .field("rotate_max_age", &self.rotate_max_age)
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why the `audit:` configuration could not be turned into [`AuditOptions`].
#[derive(Debug, thiserror::Error)]
pub enum AuditOptionsError {
    #[error("audit.hmac_key: {0}")]
    Secret(#[from] crate::config::SecretError),
    #[error("audit.hmac_key: the key is {0} bytes; use at least {MIN_HMAC_KEY_BYTES} random bytes, e.g. the output of `openssl rand -hex 32`")]
    KeyTooShort(usize),
}

impl AuditOptions {
    /// Resolves the `audit:` block: rotation limits and, if set, the HMAC key (its secret's
    /// bytes as resolved, e.g. the 64 hex characters of `openssl rand -hex 32`).
    pub fn from_config(
        cfg: &crate::config::AuditConfig,
    ) -> Result<AuditOptions, AuditOptionsError> {
        let hmac_key = match &cfg.hmac_key {
            Some(r) => {
                let key = r.resolve()?.expose().as_bytes().to_vec();
                if key.len() < MIN_HMAC_KEY_BYTES {
                    return Err(AuditOptionsError::KeyTooShort(key.len()));
                }
                Some(key)
            }
            None => None,
        };
        Ok(AuditOptions {
            rotate_max_bytes: cfg.rotate_max_bytes,
            rotate_max_age: cfg.rotate_max_age_seconds.map(Duration::from_secs),
            hmac_key,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("audit log {path}: last record does not verify ({detail}); run the verifier and repair by hand")]
    CorruptTail { path: PathBuf, detail: String },
    #[error("audit log {path}: short HMAC key ({len} bytes); use at least {MIN_HMAC_KEY_BYTES}")]
    KeyTooShort { path: PathBuf, len: usize },
    #[error("audit log {path}: torn-tail recovery failed: {source}")]
    Recovery { path: PathBuf, source: io::Error },
    /// The batch carrying this record was not made durable; nothing of it remains in the file.
    #[error("audit write failed: {0}")]
    Write(String),
    #[error("audit record cannot be serialised: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The writer was closed or its thread is gone.
    #[error("audit writer is not running")]
    Closed,
}

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
    /// Files rotated away.
    pub rotations: u64,
    /// Rotation attempts that failed (writing went on in the current file).
    pub rotation_failures: u64,
}

#[derive(Default)]
struct Shared {
    records_written: AtomicU64,
    fsyncs: AtomicU64,
    write_failures: AtomicU64,
    rotations: AtomicU64,
    rotation_failures: AtomicU64,
    /// Set when the writer thread ends (closed, or died).
    writer_stopped: AtomicBool,
    /// The most recent batch failed; cleared by the next good one.
    last_batch_failed: AtomicBool,
    fsync_observer: RwLock<Option<FsyncObserver>>,
    /// Test hook: the next N batches fail after their bytes were written (as a failed fsync would).
    fail_next: AtomicU32,
    #[cfg(test)]
    test: test_hooks::Hooks,
}

impl Shared {
    fn observe_fsync(&self, d: Duration) {
        let obs = self
            .fsync_observer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(obs) = obs {
            obs(d);
        }
    }

    fn take_injected_failure(&self) -> bool {
        self.fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

struct Committed {
    seq: u64,
    hash: String,
}

struct Job {
    kind: LineKind,
    fields: String,
    reply: oneshot::Sender<Result<Committed, AuditError>>,
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
            if k.len() < MIN_HMAC_KEY_BYTES {
                return Err(AuditError::KeyTooShort {
                    path: path.to_owned(),
                    len: k.len(),
                });
            }
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
            None => match newest_rotated(path).map_err(open_err)? {
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
            rotate_retry_at: None,
        };
        if tail.complete_len < len {
            chain
                .recover_torn_tail(len, &shared)
                .map_err(|source| AuditError::Recovery {
                    path: path.to_owned(),
                    source,
                })?;
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
        truncate_on_char_boundary(&mut rec.path, MAX_PATH_BYTES);
        let fields = record_fields(&rec)?;
        let c = self.submit(LineKind::Decision, fields).await?;
        Ok(AuditReceipt {
            seq: c.seq,
            hash: c.hash,
            request_id: rec.request_id,
        })
    }

    /// Appends the outcome record tied to a decision (same request_id); also durable.
    pub async fn record_outcome(&self, rec: OutcomeRecord) -> Result<(), AuditError> {
        let fields = record_fields(&rec)?;
        self.submit(LineKind::Outcome, fields).await.map(|_| ())
    }

    async fn submit(&self, kind: LineKind, fields: String) -> Result<Committed, AuditError> {
        let (reply, answer) = oneshot::channel();
        {
            let tx = self.inner.tx.read().unwrap_or_else(PoisonError::into_inner);
            let tx = tx.as_ref().ok_or(AuditError::Closed)?;
            tx.send(Job {
                kind,
                fields,
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

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn stats(&self) -> AuditStats {
        let s = &self.inner.shared;
        AuditStats {
            records_written: s.records_written.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            write_failures: s.write_failures.load(Ordering::Relaxed),
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

    /// Test hook: the next `n` batches fail after writing their bytes, as if fsync had failed.
    /// Exists so tests (including the lead's integration tests) can exercise fail-closed paths;
    /// it can only cause refusals, never a forward.
    #[doc(hidden)]
    pub fn fail_next_writes(&self, n: u32) {
        self.inner.shared.fail_next.store(n, Ordering::SeqCst);
    }

    #[cfg(test)]
    pub(crate) fn test_hooks(&self) -> &test_hooks::Hooks {
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
        let entries: Vec<(LineKind, &str)> =
            batch.iter().map(|j| (j.kind, j.fields.as_str())).collect();
        match chain.commit(&entries, &shared) {
            Ok(done) => {
                for (job, c) in batch.into_iter().zip(done) {
                    // The caller may have gone away; its record is durable regardless.
                    let _ = job.reply.send(Ok(c));
                }
            }
            Err(msg) => {
                for job in batch {
                    let _ = job.reply.send(Err(AuditError::Write(msg.clone())));
                }
            }
        }
    }
}

/// The writer thread's view of the file and the chain head. Only the writer thread touches it
/// after open.
struct Chain {
    file: File,
    path: PathBuf,
    /// Length of the file up to the end of the last durable record.
    len: u64,
    seq: u64,
    head: String,
    /// A failed batch may have left bytes past `len` that could not be cut yet.
    needs_truncate: bool,
    key: Option<Vec<u8>>,
    rotate_max_bytes: Option<u64>,
    rotate_max_age: Option<Duration>,
    /// Time of the current file's first record; `None` while it is empty.
    first_time: Option<DateTime<Utc>>,
    /// A rotation's directory fsync has not succeeded yet: no batch may be acknowledged until
    /// it does, or a crash could lose the new file's directory entry with acknowledged records.
    dir_sync_pending: bool,
    /// Earliest next attempt after a failed rotation.
    rotate_retry_at: Option<Instant>,
}

impl Chain {
    /// Writes all entries with one write and one fsync. On failure nothing of the batch remains
    /// (or, if even truncation failed, the next batch cuts it before writing) and the head is
    /// unchanged.
    fn commit(
        &mut self,
        entries: &[(LineKind, &str)],
        shared: &Shared,
    ) -> Result<Vec<Committed>, String> {
        let result = self.commit_inner(entries, shared);
        shared
            .last_batch_failed
            .store(result.is_err(), Ordering::SeqCst);
        result
    }

    fn commit_inner(
        &mut self,
        entries: &[(LineKind, &str)],
        shared: &Shared,
    ) -> Result<Vec<Committed>, String> {
        if self.needs_truncate {
            if let Err(e) = self.restore() {
                shared.write_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "audit log still cannot be restored to its last good length");
                return Err(format!(
                    "cannot restore audit log after earlier failure: {e}"
                ));
            }
        }
        if self.dir_sync_pending {
            if let Err(e) = sync_parent_dir(&self.path) {
                shared.write_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "audit directory still cannot be fsynced after rotation");
                return Err(format!(
                    "cannot fsync the audit directory after rotation: {e}"
                ));
            }
            self.dir_sync_pending = false;
        }
        let mut buf = Vec::with_capacity(entries.len() * 1024);
        let mut done = Vec::with_capacity(entries.len());
        let mut seq = self.seq;
        let mut prev = self.head.clone();
        let mut batch_time = None;
        for (kind, fields) in entries {
            seq += 1;
            let now = Utc::now();
            batch_time.get_or_insert(now);
            let time = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let parts = LineParts {
                seq,
                time: &time,
                kind: *kind,
                prev: &prev,
            };
            let hash = build_line(&mut buf, parts, fields, self.key.as_deref());
            done.push(Committed {
                seq,
                hash: hash.clone(),
            });
            prev = hash;
        }
        // Between batches only: the whole batch goes to whichever file is current after this.
        self.rotate_if_due(buf.len() as u64, shared);
        if self.dir_sync_pending {
            shared.write_failures.fetch_add(1, Ordering::Relaxed);
            return Err("cannot fsync the audit directory after rotation".into());
        }
        match self.write_and_sync(&buf, shared) {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.seq = seq;
                self.head = prev;
                if self.first_time.is_none() {
                    self.first_time = batch_time;
                }
                shared
                    .records_written
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
                Ok(done)
            }
            Err(e) => {
                shared.write_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, records = entries.len(), "audit batch failed; cutting it off");
                self.needs_truncate = true;
                if let Err(e2) = self.restore() {
                    tracing::error!(error = %e2, "audit log cannot be cut back yet; will retry before the next batch");
                }
                Err(e.to_string())
            }
        }
    }

    fn write_and_sync(&mut self, buf: &[u8], shared: &Shared) -> io::Result<()> {
        self.file.write_all(buf)?;
        if shared.take_injected_failure() {
            return Err(io::Error::other("injected failure (test hook)"));
        }
        shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let r = self.file.sync_data();
        shared.observe_fsync(started.elapsed());
        r
    }

    /// How long the writer may wait idle before the age limit falls due; `None` if nothing can
    /// fall due (no age limit, empty file, or a failed batch still to be cut back).
    fn idle_wait(&self) -> Option<Duration> {
        let age = self.rotate_max_age?;
        let first = self.first_time?;
        if self.len == 0 || self.needs_truncate {
            return None;
        }
        let due = chrono::TimeDelta::from_std(age)
            .ok()
            .and_then(|a| first.checked_add_signed(a))?;
        let mut wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        if let Some(retry) = self.rotate_retry_at {
            wait = wait.max(retry.saturating_duration_since(Instant::now()));
        }
        Some(wait)
    }

    /// Rotates if the current file holds records and either `incoming` more bytes would take it
    /// past the size limit or its first record has reached the age limit. A failed rotation is
    /// logged and retried later; writing goes on in the current file meanwhile.
    fn rotate_if_due(&mut self, incoming: u64, shared: &Shared) {
        if self.len == 0 || self.needs_truncate {
            return;
        }
        let by_size = self
            .rotate_max_bytes
            .is_some_and(|max| self.len.saturating_add(incoming) > max);
        let by_age = match (self.rotate_max_age, self.first_time) {
            (Some(age), Some(first)) => chrono::TimeDelta::from_std(age)
                .ok()
                .and_then(|a| first.checked_add_signed(a))
                .is_some_and(|due| Utc::now() >= due),
            _ => false,
        };
        if !(by_size || by_age) {
            return;
        }
        if self.rotate_retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match self.rotate() {
            Ok(to) => {
                self.rotate_retry_at = None;
                shared.rotations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(rotated_to = %to.display(), last_seq = self.seq, by_size, by_age, "audit log rotated");
            }
            Err(e) => {
                self.rotate_retry_at = Some(Instant::now() + ROTATE_RETRY);
                shared.rotation_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "audit log rotation failed; still writing to the current file");
            }
        }
    }

    /// Renames the (fully durable) current file to its rotated name and starts an empty one.
    fn rotate(&mut self) -> io::Result<PathBuf> {
        let target = rotated_name(&self.path, Utc::now(), self.seq);
        // rename() would silently replace an existing file: never overwrite audit history.
        if target.symlink_metadata().is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already exists", target.display()),
            ));
        }
        std::fs::rename(&self.path, &target)?;
        let file = match OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) => {
                // Put the old file back so appends continue where they were.
                if let Err(back) = std::fs::rename(&target, &self.path) {
                    tracing::error!(error = %back, "cannot move the rotated audit file back; appends continue in it");
                }
                return Err(e);
            }
        };
        self.file = file;
        self.len = 0;
        self.first_time = None;
        self.dir_sync_pending = true;
        sync_parent_dir(&self.path)?;
        self.dir_sync_pending = false;
        Ok(target)
    }

    /// Cuts the file back to the last durable record through a fresh descriptor: after a failed
    /// fsync the old descriptor's error state can't be trusted (errors may be reported once).
    fn restore(&mut self) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        let actual = file.metadata()?.len();
        if actual < self.len {
            // Someone else shortened the file; extending it with zeros would hide that.
            return Err(io::Error::other(format!(
                "audit file is {actual} bytes, shorter than its last good length {}",
                self.len
            )));
        }
        file.set_len(self.len)?;
        file.sync_data()?;
        self.file = file;
        self.needs_truncate = false;
        Ok(())
    }

    /// Copies bytes `[self.len, file_len)` to a side file, cuts them, and appends a recovery record.
    fn recover_torn_tail(&mut self, file_len: u64, shared: &Shared) -> io::Result<()> {
        let (side_path, mut side) = create_side_file(&self.path)?;
        let mut hasher = Sha256::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut pos = self.len;
        while pos < file_len {
            let want = usize::try_from(file_len - pos).map_or(chunk.len(), |r| r.min(chunk.len()));
            let got = self.file.read_at(&mut chunk[..want], pos)?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "audit file shrank during recovery",
                ));
            }
            hasher.update(&chunk[..got]);
            side.write_all(&chunk[..got])?;
            pos += got as u64;
        }
        side.sync_all()?;
        sync_parent_dir(&side_path)?;
        let cut = file_len - self.len;
        self.file.set_len(self.len)?;
        self.file.sync_data()?;
        let side_file = side_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tracing::warn!(bytes = cut, side_file = %side_file, "audit log had a torn tail; cut and preserved it");
        let rec = RecoveryRecord {
            reason: "torn_tail".into(),
            cut_bytes: cut,
            cut_sha256: hex::encode(hasher.finalize()),
            side_file,
        };
        let fields = record_fields(&rec).map_err(io::Error::other)?;
        self.commit(&[(LineKind::Recovery, &fields)], shared)
            .map(|_| ())
            .map_err(io::Error::other)
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

/// `<path>.<yyyymmddThhmmssZ>.<seq:020>`.
pub(crate) fn rotated_name(path: &Path, at: DateTime<Utc>, last_seq: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.{last_seq:020}", at.format("%Y%m%dT%H%M%SZ")));
    PathBuf::from(name)
}

/// The last seq encoded in a rotated file name of `base`, if `name` is one.
pub(crate) fn rotated_seq(base: &OsStr, name: &OsStr) -> Option<u64> {
    let base = base.to_str()?;
    let rest = name.to_str()?.strip_prefix(base)?.strip_prefix('.')?;
    let (stamp, seq) = rest.split_once('.')?;
    let s = stamp.as_bytes();
    let stamp_ok = s.len() == 16
        && s[8] == b'T'
        && s[15] == b'Z'
        && s[..8].iter().chain(&s[9..15]).all(u8::is_ascii_digit);
    if !stamp_ok || seq.len() != 20 || !seq.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    seq.parse().ok()
}

/// The rotated file of `path` with the highest last seq, if any.
fn newest_rotated(path: &Path) -> io::Result<Option<PathBuf>> {
    let Some(base) = path.file_name() else {
        return Ok(None);
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(seq) = rotated_seq(base, &name) {
            if best.as_ref().is_none_or(|(s, _)| seq > *s) {
                best = Some((seq, dir.join(&name)));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Time of the file's first record, read leniently (only for the age limit).
fn read_first_time(file: &File) -> Option<DateTime<Utc>> {
    #[derive(serde::Deserialize)]
    struct TimeOnly {
        time: String,
    }
    let mut line = Vec::new();
    let mut chunk = vec![0u8; 4096];
    let mut pos = 0u64;
    loop {
        let got = file.read_at(&mut chunk, pos).ok()?;
        if got == 0 {
            return None;
        }
        if let Some(i) = chunk[..got].iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&chunk[..i]);
            break;
        }
        line.extend_from_slice(&chunk[..got]);
        pos += got as u64;
    }
    let t: TimeOnly = serde_json::from_slice(&line).ok()?;
    DateTime::parse_from_rfc3339(&t.time)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Creates `<path>.torn-<unix-seconds>` (or `-<n>` suffixed if taken), mode 0600, exclusively.
fn create_side_file(path: &Path) -> io::Result<(PathBuf, File)> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let base = format!("{}.torn-{secs}", path.display());
    for n in 0..1000u32 {
        let candidate = if n == 0 {
            PathBuf::from(&base)
        } else {
            PathBuf::from(format!("{base}-{n}"))
        };
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&candidate)
        {
            Ok(f) => return Ok((candidate, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free name for the torn-tail side file"))
}

fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

struct Tail {
    /// Length up to and including the last `\n`.
    complete_len: u64,
    /// The last complete line, without its `\n`.
    last_line: Option<Vec<u8>>,
}

/// Finds the last complete line and where the torn tail (if any) starts, reading backwards so
/// start-up cost does not grow with the file.
fn read_tail(file: &File, len: u64) -> io::Result<Tail> {
    let Some(last_nl) = rfind_newline(file, len)? else {
        return Ok(Tail {
            complete_len: 0,
            last_line: None,
        });
    };
    let start = rfind_newline(file, last_nl)?.map_or(0, |p| p + 1);
    let line_len = usize::try_from(last_nl - start).map_err(io::Error::other)?;
    let mut line = vec![0u8; line_len];
    file.read_exact_at(&mut line, start)?;
    Ok(Tail {
        complete_len: last_nl + 1,
        last_line: Some(line),
    })
}

/// Offset of the last `\n` strictly before `before`.
fn rfind_newline(file: &File, before: u64) -> io::Result<Option<u64>> {
    const CHUNK: u64 = 64 * 1024;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut end = before;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let n = (end - start) as usize;
        file.read_exact_at(&mut buf[..n], start)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(Some(start + i as u64));
        }
        end = start;
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod test_hooks {
    use std::sync::atomic::AtomicU64;
    use std::sync::{Condvar, Mutex, PoisonError};

    /// Lets a test hold the writer after it took the first job of a batch, so that it can
    /// queue many jobs and observe them committed as one group — deterministically.
    #[derive(Default)]
    pub(crate) struct Hooks {
        pub(crate) enqueued: AtomicU64,
        closed: Mutex<bool>,
        cv: Condvar,
    }

    impl Hooks {
        pub(crate) fn close_gate(&self) {
            *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = true;
        }
        pub(crate) fn open_gate(&self) {
            *self.closed.lock().unwrap_or_else(PoisonError::into_inner) = false;
            self.cv.notify_all();
        }
        pub(super) fn wait_gate(&self) {
            let mut closed = self.closed.lock().unwrap_or_else(PoisonError::into_inner);
            while *closed {
                closed = self.cv.wait(closed).unwrap_or_else(PoisonError::into_inner);
            }
        }
    }
}
