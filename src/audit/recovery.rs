//! Torn-tail recovery at open: bytes after the last complete line (a crash mid-write) are copied
//! to a side file, cut, and noted in a `recovery` record. It must never drop those bytes without
//! a durable copy, and never touch anything before the last complete line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::chain::{sync_parent_dir, Chain};
use super::error::AuditError;
use super::line::{record_fields, LineKind};
use super::record::RecoveryRecord;
use super::writer::Shared;

impl Chain {
    /// Copies bytes `[self.len, file_len)` to a side file, cuts them, and appends a recovery record.
    pub(super) fn recover_torn_tail(
        &mut self,
        file_len: u64,
        shared: &Shared,
    ) -> Result<(), AuditError> {
        let rec = self
            .preserve_and_cut(file_len)
            .map_err(|source| AuditError::Recovery {
                path: self.path.clone(),
                source,
            })?;
        let fields = record_fields(&rec)?;
        self.commit(&[(LineKind::Recovery, &fields)], shared, |_| {})?;
        Ok(())
    }

    /// The copy-and-cut half of recovery; returns the record describing it.
    fn preserve_and_cut(&mut self, file_len: u64) -> io::Result<RecoveryRecord> {
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
        Ok(RecoveryRecord {
            reason: "torn_tail".into(),
            cut_bytes: cut,
            cut_sha256: hex::encode(hasher.finalize()),
            side_file,
        })
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
