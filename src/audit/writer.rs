//! The audit writer: one dedicated thread appends hash-chained lines with group commit and
//! answers each caller only after the fsync covering its bytes. It must never answer Ok before
//! that fsync, and never leave a failed batch's bytes in the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::line::{build_line, parse_line, record_fields, LineKind, GENESIS_PREV};
use super::record::{
    truncate_on_char_boundary, DecisionRecord, OutcomeRecord, RecoveryRecord, MAX_PATH_BYTES,
};

/// Most records committed by one write + fsync. Bounds the latency a single batch adds and the
/// memory of one write buffer.
const MAX_BATCH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("audit log {path}: last record does not verify ({detail}); run the verifier and repair by hand")]
    CorruptTail { path: PathBuf, detail: String },
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
}

#[derive(Default)]
struct Shared {
    records_written: AtomicU64,
    fsyncs: AtomicU64,
    write_failures: AtomicU64,
    /// Test hook: the next N batches fail after their bytes were written (as a failed fsync would).
    fail_next: AtomicU32,
    #[cfg(test)]
    test: test_hooks::Hooks,
}

impl Shared {
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
    /// record. Refuses to open if the last complete line does not verify.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
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

        let (seq, head) = match &tail.last_line {
            None => (0, GENESIS_PREV.to_owned()),
            Some(line) => match parse_line(line) {
                Ok(p) => (p.seq, p.hash),
                Err((kind, detail)) => {
                    return Err(AuditError::CorruptTail {
                        path: path.to_owned(),
                        detail: format!("{kind}: {detail}"),
                    })
                }
            },
        };

        let shared = Arc::new(Shared::default());
        let mut chain = Chain {
            file,
            path: path.to_owned(),
            len: tail.complete_len,
            seq,
            head,
            needs_truncate: false,
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
        }
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

fn run_writer(mut chain: Chain, rx: mpsc::Receiver<Job>, shared: Arc<Shared>) {
    // recv() keeps yielding queued jobs after every sender is gone, so close() drains first.
    while let Ok(first) = rx.recv() {
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
        if self.needs_truncate {
            if let Err(e) = self.restore() {
                shared.write_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "audit log still cannot be restored to its last good length");
                return Err(format!(
                    "cannot restore audit log after earlier failure: {e}"
                ));
            }
        }
        let mut buf = Vec::with_capacity(entries.len() * 1024);
        let mut done = Vec::with_capacity(entries.len());
        let mut seq = self.seq;
        let mut prev = self.head.clone();
        for (kind, fields) in entries {
            seq += 1;
            let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let hash = build_line(&mut buf, seq, &time, *kind, &prev, fields);
            done.push(Committed {
                seq,
                hash: hash.clone(),
            });
            prev = hash;
        }
        match self.write_and_sync(&buf, shared) {
            Ok(()) => {
                self.len += buf.len() as u64;
                self.seq = seq;
                self.head = prev;
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
        self.file.sync_data()
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
