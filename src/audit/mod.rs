//! Tamper-evident audit log: hash-chained JSON Lines, made durable (fsync) before any forward.
//! This module knows nothing of policy internals or hyper; it takes plain record structs and must
//! never report a record as written before the fsync that covers it.
//!
//! # Line format
//!
//! Each record is one line: a JSON object with its keys in this fixed order, then `\n`:
//!
//! ```text
//! {"v":1,"seq":N,"time":"2026-11-28T16:30:39.123Z","kind":"decision","prev":"<64 hex>",<record fields>,"hash":"<64 hex>"}
//! ```
//!
//! - `kind` is `decision` ([`DecisionRecord`] fields), `outcome` ([`OutcomeRecord`] fields) or
//!   `recovery` ([`RecoveryRecord`] fields, written by the writer after cutting a torn tail).
//!   Record fields follow in struct declaration order; `None` is written as `null`.
//! - `seq` starts at 1 and increases by exactly 1; `prev` is the previous line's `hash`, or 64
//!   zeros ([`GENESIS_PREV`]) for the first record of a fresh file. The writer assigns `seq`,
//!   `time` (RFC 3339 UTC, milliseconds), `prev` and `hash`.
//!
//! # Hash rule
//!
//! Every line (without its `\n`) ends with exactly `,"hash":"` + 64 lowercase hex + `"}`, a fixed
//! 75-byte suffix. `hash` is the lowercase hex SHA-256 of the line's raw bytes *before* that
//! suffix — i.e. of everything up to, not including, the final `,"hash":"`. The verifier applies
//! this to the bytes as read; no JSON is re-serialised, so there is no canonical-form ambiguity.

pub mod cli;
mod line;
pub mod record;
pub mod verify;
pub mod writer;

#[cfg(test)]
mod tests;

pub use line::GENESIS_PREV;
pub use record::{
    Decision, DecisionRecord, DeviceRecord, OperatorRecord, OutcomeRecord, RecoveryRecord,
    TargetRecord, MAX_PATH_BYTES,
};
pub use verify::{
    verify_file, verify_file_from, BreakKind, ChainBreak, VerifyError, VerifySummary,
};
pub use writer::{AuditError, AuditLog, AuditReceipt, AuditStats};
