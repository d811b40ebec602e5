//! The writer thread's file and chain head, and group commit: a batch becomes lines, one write,
//! one fsync, and only then a new head. It must never move the head past bytes that are not
//! durable, and never leave a failed batch's bytes in the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::error::{WriteFailure, WriteStep};
use super::line::{build_line, LineKind, LineParts};
use super::writer::Shared;

/// A record made durable: its seq and line hash.
#[derive(Clone)]
pub(super) struct Committed {
    pub(super) seq: u64,
    pub(super) hash: String,
}

/// The writer thread's view of the file and the chain head. Only the writer thread touches it
/// after open.
pub(super) struct Chain {
    pub(super) file: File,
    pub(super) path: PathBuf,
    /// Length of the file up to the end of the last durable record.
    pub(super) len: u64,
    pub(super) seq: u64,
    pub(super) head: String,
    /// A failed batch may have left bytes past `len` that could not be cut yet.
    pub(super) needs_truncate: bool,
    pub(super) key: Option<Vec<u8>>,
    pub(super) rotate_max_bytes: Option<u64>,
    pub(super) rotate_max_age: Option<Duration>,
    /// Time of the current file's first record; `None` while it is empty.
    pub(super) first_time: Option<DateTime<Utc>>,
    /// A rotation's directory fsync has not succeeded yet: no batch may be acknowledged until
    /// it does, or a crash could lose the new file's directory entry with acknowledged records.
    pub(super) dir_sync_pending: bool,
    /// The error of the rotation's failed directory fsync, kept for the batch it fails.
    pub(super) dir_sync_error: Option<io::Error>,
    /// Earliest next attempt after a failed rotation.
    pub(super) rotate_retry_at: Option<Instant>,
}

impl Chain {
    /// Writes all entries with one write and one fsync. On failure nothing of the batch remains
    /// (or, if even truncation failed, the next batch cuts it before writing) and the head is
    /// unchanged.
    pub(super) fn commit(
        &mut self,
        entries: &[(LineKind, &str)],
        shared: &Shared,
        written: impl FnOnce(&[Committed]),
    ) -> Result<Vec<Committed>, WriteFailure> {
        let result = self.commit_inner(entries, shared, written);
        if let Err(f) = &result {
            shared.count_failure(f.kind());
        }
        shared
            .last_batch_failed
            .store(result.is_err(), Ordering::SeqCst);
        result
    }

    fn commit_inner(
        &mut self,
        entries: &[(LineKind, &str)],
        shared: &Shared,
        written: impl FnOnce(&[Committed]),
    ) -> Result<Vec<Committed>, WriteFailure> {
        if self.needs_truncate {
            if let Err(e) = self.restore() {
                tracing::error!(error = %e, "audit log still cannot be restored to its last good length");
                return Err(WriteFailure::new(&self.path, WriteStep::Restore, e));
            }
        }
        if self.dir_sync_pending {
            if let Err(e) = sync_parent_dir(&self.path) {
                tracing::error!(error = %e, "audit directory still cannot be fsynced after rotation");
                return Err(WriteFailure::new(&self.path, WriteStep::DirSync, e));
            }
            self.dir_sync_pending = false;
            self.dir_sync_error = None;
        }
        // A decision line is ~1.7 KB, an outcome line ~0.4 KB: room for a batch of decisions.
        let mut buf = Vec::with_capacity(entries.len() * 2048);
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
            let e = self.dir_sync_error.take().unwrap_or_else(|| {
                io::Error::other("the directory fsync after rotation has not succeeded")
            });
            return Err(WriteFailure::new(&self.path, WriteStep::DirSync, e));
        }
        match self.write_and_sync(&buf, shared, || written(&done)) {
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
            Err(f) => {
                tracing::error!(error = %f, kind = %f.kind(), records = entries.len(), "audit batch failed; cutting it off");
                self.needs_truncate = true;
                if let Err(e2) = self.restore() {
                    tracing::error!(error = %e2, "audit log cannot be cut back yet; will retry before the next batch");
                }
                Err(f)
            }
        }
    }

    /// Writes the batch, calls `written` (the bytes are in the file, not yet durable), then
    /// fsyncs.
    fn write_and_sync(
        &mut self,
        buf: &[u8],
        shared: &Shared,
        written: impl FnOnce(),
    ) -> Result<(), WriteFailure> {
        let fail = |step, e| WriteFailure::new(&self.path, step, e);
        self.file
            .write_all(buf)
            .map_err(|e| fail(WriteStep::Write, e))?;
        written();
        if shared.take_injected_failure() {
            return Err(fail(
                WriteStep::Fsync,
                io::Error::other("injected failure (test hook)"),
            ));
        }
        shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let r = self.file.sync_data();
        shared.observe_fsync(started.elapsed());
        r.map_err(|e| fail(WriteStep::Fsync, e))
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
}

/// Fsyncs the directory holding `path`, making a new or renamed entry in it durable.
pub(super) fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
