//! Rotation: naming rotated files, finding a log's rotation set, and rotating the writer's
//! current file between batches by size or age. It must never overwrite or reorder audit history,
//! and never split a batch across files.
//!
//! The current file is renamed to `<path>.<UTC yyyymmddThhmmssZ>.<last seq, 20 digits>` (e.g.
//! `audit.jsonl.20261128T170102Z.00000000000000012345`), a fresh `<path>` is created (0600) and
//! the directory fsynced. The next record continues the chain: `seq` + 1, `prev` = the last hash
//! of the renamed file. Names sort by time, and the zero-padded seq keeps rotations within the
//! same second in chain order. If `<path>` has no complete record at open (just rotated, or
//! removed), the chain head is taken from the rotated file with the highest seq.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::chain::{sync_parent_dir, Chain};
use super::writer::Shared;

/// After a failed rotation, wait this long before trying again (writes go on meanwhile).
const ROTATE_RETRY: Duration = Duration::from_secs(5);

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

/// The rotated files of the log at `path` (found beside it by name), in chain order: by the last
/// seq in their names. Torn-tail side files and other names are not part of it.
pub fn rotated_files(path: &Path) -> io::Result<Vec<PathBuf>> {
    let Some(base) = path.file_name() else {
        return Ok(Vec::new());
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(seq) = rotated_seq(base, &name) {
            found.push((seq, dir.join(&name)));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// The whole rotation set of the log at `path` in chain order: [`rotated_files`], then `path`
/// itself if it exists. What `passgate audit verify` needs to check the full chain.
pub fn rotation_set(path: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = rotated_files(path)?;
    if path.symlink_metadata().is_ok() {
        files.push(path.to_owned());
    }
    Ok(files)
}

impl Chain {
    /// How long the writer may wait idle before the age limit falls due; `None` if nothing can
    /// fall due (no age limit, empty file, or a failed batch still to be cut back).
    pub(super) fn idle_wait(&self) -> Option<Duration> {
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
    pub(super) fn rotate_if_due(&mut self, incoming: u64, shared: &Shared) {
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
                if self.dir_sync_pending {
                    // The new file is in place but its entry may not be durable: the next batch
                    // fails with this error unless a retried directory fsync succeeds first.
                    self.dir_sync_error = Some(e);
                }
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
}
