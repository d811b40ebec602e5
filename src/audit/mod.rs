//! Tamper-evident audit log: hash-chained JSON Lines, made durable (fsync) before any forward.
//! The writer knows nothing of policy or hyper: it takes plain record structs and must never
//! report a record as written before the fsync that covers it. [`commit`] is the one bridge from
//! the typed request lifecycle (`Permit` → [`Authorized`]) to those records.
//!
//! # Line format
//!
//! Each record is one line: a JSON object with its keys in this fixed order, then `\n`:
//!
//! ```text
//! {"v":2,"seq":N,"time":"2026-11-28T16:30:39.123Z","kind":"decision","prev":"<64 hex>",<record fields>,"hash":"<64 hex>"}
//! {"v":2,"alg":"hmac-sha256","seq":N,"time":…,"kind":…,"prev":…,<record fields>,"hash":"<64 hex>"}
//! ```
//!
//! - `kind` is `decision` ([`DecisionRecord`] fields), `outcome` ([`OutcomeRecord`] fields),
//!   `approval` ([`ApprovalRecord`] fields: one step of a two-person approval),
//!   `throttled` ([`ThrottledRecord`] fields: refusals before authentication past the client's
//!   budget, answered 429, or requests shed at the request cap, answered 503, counted per client
//!   and reason instead of one record each),
//!   `recovery` ([`RecoveryRecord`] fields, written by the writer after cutting a torn tail) or
//!   `console` ([`ConsoleRecord`] fields: one sign-in, sign-out, approve, deny or export in the
//!   web console).
//!   Record fields follow in struct declaration order; `None` is written as `null`.
//! - A decision record the pipeline gave up on (audit deadline passed while it was queued) is
//!   written in its abandoned form ([`DecisionRecord::abandoned`]): `deny`, `audit_unavailable`,
//!   503 (what the client got) plus an `abandoned` object with the original verdict. The field is
//!   omitted on every other record. One whose bytes were already taken gets an `outcome` (503,
//!   `audit_unavailable`) instead.
//! - `seq` starts at 1 and increases by exactly 1; `prev` is the previous line's `hash`, or 64
//!   zeros ([`GENESIS_PREV`]) for the first record of a fresh chain. The writer assigns `seq`,
//!   `time` (RFC 3339 UTC, milliseconds), `prev` and `hash`. The chain runs on across rotated
//!   files (see [`rotation_set`]): a new file's first record continues the old file's last.
//! - `v` is [`LINE_VERSION`] (2) on every line written now. Version 1 lines (written before
//!   decision records carried `inputs`) have the same format and hash rule; readers accept both
//!   in one chain ([`readable_version`]) and refuse any other.
//! - `alg` is present only on keyed lines (`audit.hmac_key` set).
//! - `docs/audit-record.schema.json` is the JSON Schema of every kind; `docs/audit-ocsf.md` maps
//!   the fields to OCSF API Activity.
//!
//! # Hash rule
//!
//! Every line (without its `\n`) ends with exactly `,"hash":"` + 64 lowercase hex + `"}`, a fixed
//! 75-byte suffix. `hash` is the lowercase hex SHA-256 — or, on a line with
//! `"alg":"hmac-sha256"`, the hex HMAC-SHA256 under the configured key — of the line's raw bytes
//! *before* that suffix, i.e. of everything up to, not including, the final `,"hash":"`. The
//! verifier applies this to the bytes as read; no JSON is re-serialised, so there is no
//! canonical-form ambiguity. Without the key, nobody who can write the file can rebuild a chain
//! that a keyed verification accepts.

//! # Modules
//!
//! [`writer`] (handle, thread, open) · `chain` (group commit) · `rotation` · `recovery` (torn
//! tail) · `scan` (first and last lines of a file) · `options` (config, HMAC key check) ·
//! `error` (typed failures and their kinds) · `line` (format and hash rule) · [`verify`] ·
//! [`search`] · [`cli`].

mod chain;
pub mod cli;
pub mod commit;
mod error;
mod line;
mod options;
pub mod record;
mod recovery;
mod rotation;
mod scan;
pub mod search;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod test_support;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod test_hooks;
#[cfg(test)]
mod tests;

pub use commit::{
    Authorized, CommitError, DenialNote, RecordedDenial, Uncommitted, COMMIT_TIMEOUT,
};
pub use error::{AuditError, FailureCounts, FailureKind, WriteFailure, WriteStep};
pub use line::{readable_version, GENESIS_PREV, LINE_VERSION};
pub use options::{
    check_hmac_key, AuditOptions, AuditOptionsError, FsyncObserver, KeyTooShort, MIN_HMAC_KEY_BYTES,
};
pub use record::{
    AbandonedDecision, ApprovalPerson, ApprovalRecord, ConsoleRecord, Decision, DecisionRecord,
    DeviceRecord, InputsRecord, OperatorRecord, OutcomeRecord, RecoveryRecord, ReportRecord,
    TargetRecord, ThrottledRecord, MAX_PATH_BYTES,
};
pub use rotation::{rotated_files, rotation_set};
pub use search::{search, Format, Hit, SearchError, SearchFilter, SearchResult};
pub use verify::{
    verify_file, verify_file_from, verify_set, BreakKind, ChainBreak, FileSummary, SetError,
    SetSummary, VerifyError, VerifyOptions, VerifySummary,
};
pub use writer::{AuditLog, AuditReceipt, AuditStats};
