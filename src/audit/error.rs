//! What can go wrong opening or writing the audit log, with the OS error kept as a typed source
//! and sorted into a small set of failure kinds for logs and metrics. Nothing here may flatten an
//! `io::Error` into a string: a full disk, a permission error and a failed fsync must stay apart.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::options::KeyTooShort;

/// Why an audit write (or the open that prepares writing) failed, coarsely: the label of
/// `passgate_audit_write_failures_total{kind}`.
///
/// The OS error decides first, whatever the step: `disk_full` and `permission` tell an operator
/// what to fix. An error that is neither is `fsync` when an fsync (of the file or, after a
/// rotation, of its directory) reported it — the data may not be on disk, often a failing device
/// — and `io` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No space left on the device (`ENOSPC`) or the disk quota is exhausted (`EDQUOT`).
    DiskFull,
    /// Not allowed: `EACCES`, `EPERM`, or a read-only file system (`EROFS`).
    Permission,
    /// An fsync failed for another reason (typically `EIO`).
    Fsync,
    /// Any other I/O error.
    Io,
}

impl FailureKind {
    /// Every kind, in a fixed order (e.g. to export each metric series from the start).
    pub const ALL: [FailureKind; 4] = [
        FailureKind::DiskFull,
        FailureKind::Permission,
        FailureKind::Fsync,
        FailureKind::Io,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::DiskFull => "disk_full",
            FailureKind::Permission => "permission",
            FailureKind::Fsync => "fsync",
            FailureKind::Io => "io",
        }
    }

    /// Classifies `err`, reported by `step` (see the type's documentation for the rule).
    pub fn classify(step: WriteStep, err: &io::Error) -> FailureKind {
        match err.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => FailureKind::DiskFull,
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                FailureKind::Permission
            }
            _ if step.is_fsync() => FailureKind::Fsync,
            _ => FailureKind::Io,
        }
    }

    /// Position in [`FailureKind::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Failed batches since open, by [`FailureKind`]; they add up to
/// [`AuditStats::write_failures`](super::AuditStats::write_failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailureCounts([u64; 4]);

impl FailureCounts {
    pub(crate) fn from_array(counts: [u64; 4]) -> FailureCounts {
        FailureCounts(counts)
    }

    pub fn get(&self, kind: FailureKind) -> u64 {
        self.0[kind.index()]
    }

    /// Every kind with its count, in [`FailureKind::ALL`] order (zeros included).
    pub fn iter(&self) -> impl Iterator<Item = (FailureKind, u64)> + '_ {
        FailureKind::ALL.into_iter().map(|k| (k, self.get(k)))
    }
}

/// The step of committing a batch that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    /// Cutting the file back to its last durable record after an earlier failed batch.
    Restore,
    /// Fsyncing the directory after a rotation (the new file's entry must be durable).
    DirSync,
    /// Writing the batch's bytes.
    Write,
    /// Fsyncing the batch's bytes.
    Fsync,
}

impl WriteStep {
    fn is_fsync(self) -> bool {
        matches!(self, WriteStep::Fsync | WriteStep::DirSync)
    }
}

impl fmt::Display for WriteStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteStep::Restore => "cut back to the last durable record",
            WriteStep::DirSync => "fsync the directory after rotation",
            WriteStep::Write => "write",
            WriteStep::Fsync => "fsync",
        })
    }
}

/// A batch that was not made durable: where, at which step, and the OS error. Every waiter of the
/// batch gets a clone (the error itself is shared).
#[derive(Debug, Clone)]
pub struct WriteFailure {
    path: PathBuf,
    step: WriteStep,
    kind: FailureKind,
    /// Shared so that every waiter's error can carry it; exposed as the plain `io::Error`.
    source: Arc<io::Error>,
}

impl fmt::Display for WriteFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.step,
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for WriteFailure {
    /// The `io::Error` itself (not its `Arc`), so callers can downcast to it.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl WriteFailure {
    pub(crate) fn new(path: &Path, step: WriteStep, source: io::Error) -> WriteFailure {
        WriteFailure {
            path: path.to_owned(),
            step,
            kind: FailureKind::classify(step, &source),
            source: Arc::new(source),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn step(&self) -> WriteStep {
        self.step
    }

    pub fn kind(&self) -> FailureKind {
        self.kind
    }

    pub fn io_error(&self) -> &io::Error {
        &self.source
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot open audit log {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("audit log {}: last record does not verify ({detail}); run the verifier and repair by hand", path.display())]
    CorruptTail { path: PathBuf, detail: String },
    #[error("audit log {}: {source}", path.display())]
    KeyTooShort {
        path: PathBuf,
        #[source]
        source: KeyTooShort,
    },
    /// Preserving or cutting a torn tail at open failed.
    #[error("audit log {}: torn-tail recovery failed: {source}", path.display())]
    Recovery {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The batch carrying this record was not made durable; nothing of it remains in the file.
    #[error("audit write failed ({kind}): {0}", kind = .0.kind())]
    Write(#[from] WriteFailure),
    #[error("audit record cannot be serialised: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The writer was closed or its thread is gone.
    #[error("audit writer is not running")]
    Closed,
}

impl AuditError {
    /// The failure kind of an error that carries an OS error (a failed write, open or recovery);
    /// `None` for the others (a corrupt tail, a short key, serialisation, a closed writer).
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            AuditError::Write(f) => Some(f.kind()),
            AuditError::Open { source, .. } | AuditError::Recovery { source, .. } => {
                Some(FailureKind::classify(WriteStep::Write, source))
            }
            AuditError::CorruptTail { .. }
            | AuditError::KeyTooShort { .. }
            | AuditError::Serialize(_)
            | AuditError::Closed => None,
        }
    }
}
