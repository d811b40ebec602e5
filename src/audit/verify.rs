//! Offline verifier for an audit file: walks every line, recomputes hashes on the raw bytes and
//! checks `seq` and `prev` continuity. It reports the first break and never modifies the file.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use super::line::{parse_line, GENESIS_PREV};

/// What a clean walk of the whole file established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    pub records: u64,
    /// 0 when the file is empty.
    pub first_seq: u64,
    /// 0 when the file is empty.
    pub last_seq: u64,
    /// Hash of the last record ([`GENESIS_PREV`] when the file is empty); anchor it elsewhere
    /// (SIEM, ticket) to detect a wholesale rewrite, which a hash chain alone cannot.
    pub last_hash: String,
}

/// The kind of the first break found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// Not a well-formed record line (bad JSON, missing/duplicate header field, wrong shape).
    Unparseable,
    /// The line's bytes do not hash to its `hash` field: the line was edited.
    BadHash,
    /// `prev` is not the previous record's hash: a record before it was replaced or re-hashed.
    BrokenLink,
    /// `seq` is not the previous `seq` + 1: records were deleted or reordered.
    SeqGap,
    /// The last line has no terminating newline: a write was cut short.
    TornLine,
    /// The first record is not the start of a chain (seq 1, prev all zeros) nor the expected
    /// continuation: the head of the file was cut.
    BadStart,
}

impl fmt::Display for BreakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BreakKind::Unparseable => "unparseable",
            BreakKind::BadHash => "bad_hash",
            BreakKind::BrokenLink => "broken_link",
            BreakKind::SeqGap => "seq_gap",
            BreakKind::TornLine => "torn_line",
            BreakKind::BadStart => "bad_start",
        })
    }
}

/// The first break found, with its 1-based line number and what kind of break.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub line: u64,
    pub kind: BreakKind,
    pub detail: String,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.kind, self.detail)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read audit file: {0}")]
    Io(#[from] io::Error),
    #[error("audit chain broken at {0}")]
    Break(ChainBreak),
}

/// Verifies a file that must start a chain: first record `seq` 1 with `prev` all zeros.
pub fn verify_file(path: &Path) -> Result<VerifySummary, VerifyError> {
    verify_file_from(path, None)
}

/// Like [`verify_file`], but with `Some(prev)` the file may continue an earlier chain (after
/// rotation): its first record's `prev` must equal `prev`, and its `seq` may be anything.
pub fn verify_file_from(
    path: &Path,
    expected_prev: Option<&str>,
) -> Result<VerifySummary, VerifyError> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut buf = Vec::new();
    let mut line_no: u64 = 0;
    let mut first_seq = 0;
    // (seq, hash) of the previous good record.
    let mut last: Option<(u64, String)> = None;
    let brk = |line: u64, kind: BreakKind, detail: String| {
        VerifyError::Break(ChainBreak { line, kind, detail })
    };
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        line_no += 1;
        if buf.pop() != Some(b'\n') {
            return Err(brk(
                line_no,
                BreakKind::TornLine,
                format!(
                    "last line ({} bytes) has no terminating newline",
                    buf.len() + 1
                ),
            ));
        }
        let rec = parse_line(&buf).map_err(|(kind, detail)| brk(line_no, kind, detail))?;
        match (&last, expected_prev) {
            (None, None) => {
                if rec.seq != 1 || rec.prev != GENESIS_PREV {
                    return Err(brk(
                        line_no,
                        BreakKind::BadStart,
                        format!(
                            "first record has seq {} and prev {}; a chain starts at seq 1 with prev all zeros",
                            rec.seq, rec.prev
                        ),
                    ));
                }
            }
            (None, Some(want)) => {
                if rec.prev != want {
                    return Err(brk(
                        line_no,
                        BreakKind::BadStart,
                        format!(
                            "first record's prev {} is not the expected {want}",
                            rec.prev
                        ),
                    ));
                }
            }
            (Some((seq, hash)), _) => {
                if Some(rec.seq) != seq.checked_add(1) {
                    return Err(brk(
                        line_no,
                        BreakKind::SeqGap,
                        format!("seq {} follows seq {seq}", rec.seq),
                    ));
                }
                if &rec.prev != hash {
                    return Err(brk(
                        line_no,
                        BreakKind::BrokenLink,
                        format!("prev {} is not the previous record's hash {hash}", rec.prev),
                    ));
                }
            }
        }
        if last.is_none() {
            first_seq = rec.seq;
        }
        last = Some((rec.seq, rec.hash));
    }
    Ok(match last {
        None => VerifySummary {
            records: 0,
            first_seq: 0,
            last_seq: 0,
            last_hash: GENESIS_PREV.to_owned(),
        },
        Some((seq, hash)) => VerifySummary {
            records: line_no,
            first_seq,
            last_seq: seq,
            last_hash: hash,
        },
    })
}
