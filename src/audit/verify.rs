//! Offline verifier for an audit file or a rotation set: walks every line, recomputes hashes on
//! the raw bytes (SHA-256, or HMAC-SHA256 with a key) and checks `seq` and `prev` continuity within
//! and across files. It reports the first break and never modifies a file.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::line::{parse_line, GENESIS_PREV};
use super::scan::read_first_line_of;

/// What a clean walk of the whole file established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifySummary {
    pub records: u64,
    /// 0 when the file is empty.
    pub first_seq: u64,
    /// `prev` of the first record ([`GENESIS_PREV`] for a chain start, and when the file is
    /// empty): what a continuation file must be matched against.
    pub first_prev: String,
    /// Records whose hash is an HMAC (`"alg":"hmac-sha256"`), checked with the given key.
    pub keyed_records: u64,
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
    /// The record is keyed (`"alg":"hmac-sha256"`) but no key was given: it cannot be checked.
    KeyRequired,
    /// A keyed verification found a plain SHA-256 record where only keyed ones may be (after a
    /// keyed record, or a set with no keyed record at all): the chain was rebuilt without the key.
    Unkeyed,
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
            BreakKind::KeyRequired => "key_required",
            BreakKind::Unkeyed => "unkeyed",
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
/// Keyed records fail with [`BreakKind::KeyRequired`]; use [`verify_set`] with a key for those.
pub fn verify_file(path: &Path) -> Result<VerifySummary, VerifyError> {
    walk(path, Start::Genesis, &mut KeyState::none())
}

/// Like [`verify_file`], but with `Some(prev)` the file may continue an earlier chain (after
/// rotation): its first record's `prev` must equal `prev`, and its `seq` may be anything.
pub fn verify_file_from(
    path: &Path,
    expected_prev: Option<&str>,
) -> Result<VerifySummary, VerifyError> {
    let start = match expected_prev {
        Some(p) => Start::Prev(p),
        None => Start::Genesis,
    };
    walk(path, start, &mut KeyState::none())
}

/// How [`verify_set`] checks a set of files.
#[derive(Clone, Default)]
pub struct VerifyOptions {
    /// HMAC key of a keyed chain (`audit.hmac_key`). With a key, every record from the first
    /// keyed one on must be keyed, and at least one must be: a chain rebuilt with plain SHA-256
    /// by someone without the key fails. Plain records before the first keyed one (a log that
    /// predates the key) stay covered, because that keyed record's `prev` pins their last hash.
    pub hmac_key: Option<Vec<u8>>,
    /// Accept a set whose first record is not a chain start (only the newest files of a set);
    /// the summary's `first_seq`/`first_prev` must then be matched against an external anchor.
    pub allow_partial: bool,
}

impl fmt::Debug for VerifyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<redacted>"))
            .field("allow_partial", &self.allow_partial)
            .finish()
    }
}

/// One file of a verified set, in chain order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    pub path: PathBuf,
    pub summary: VerifySummary,
}

/// What a clean walk of a whole set established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSummary {
    /// The files in chain order (by first `seq`; empty files last).
    pub files: Vec<FileSummary>,
    pub records: u64,
    /// 0 when every file is empty.
    pub first_seq: u64,
    /// `prev` of the first record: [`GENESIS_PREV`] for a full chain.
    pub first_prev: String,
    /// 0 when every file is empty.
    pub last_seq: u64,
    /// Hash of the last record ([`GENESIS_PREV`] when every file is empty): anchor it elsewhere.
    pub last_hash: String,
    pub keyed_records: u64,
    /// The set does not start at a chain start (allowed only with `allow_partial`).
    pub partial: bool,
}

/// Why a set did not verify.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("no audit files given")]
    NoFiles,
    #[error("{}: cannot read audit file: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// The first break, in the file (and line) where it shows.
    #[error("{}: {brk}", path.display())]
    Break { path: PathBuf, brk: ChainBreak },
}

impl SetError {
    fn from_verify(path: &Path, e: VerifyError) -> SetError {
        match e {
            VerifyError::Io(source) => SetError::Io {
                path: path.to_owned(),
                source,
            },
            VerifyError::Break(brk) => SetError::Break {
                path: path.to_owned(),
                brk,
            },
        }
    }
}

/// Verifies several files as one chain: a rotation set given in any order (e.g. a shell glob),
/// ordered here by their first `seq`. Each file must continue the previous one exactly (next
/// `seq`, `prev` = its last hash), so a file removed from the middle, an overlap or a cut head
/// shows as a break at line 1 of the file after it. The first file must start the chain unless
/// [`VerifyOptions::allow_partial`].
pub fn verify_set(paths: &[PathBuf], opts: &VerifyOptions) -> Result<SetSummary, SetError> {
    if paths.is_empty() {
        return Err(SetError::NoFiles);
    }
    let mut ordered: Vec<(Option<u64>, &PathBuf)> = Vec::with_capacity(paths.len());
    let mut seen_paths = std::collections::HashSet::new();
    for p in paths {
        // The same file named twice (overlapping globs) is one file, not an overlap.
        let canon = std::fs::canonicalize(p).map_err(|source| SetError::Io {
            path: p.clone(),
            source,
        })?;
        if !seen_paths.insert(canon) {
            continue;
        }
        ordered.push((first_seq(p, opts.hmac_key.as_deref())?, p));
    }
    // Stable sort: empty files (no seq) go last, where a freshly rotated current file belongs.
    ordered.sort_by_key(|(seq, _)| seq.unwrap_or(u64::MAX));

    let mut keys = KeyState {
        key: opts.hmac_key.as_deref(),
        seen_keyed: false,
    };
    let mut files: Vec<FileSummary> = Vec::with_capacity(ordered.len());
    // (file name, last seq, last hash) of the last non-empty file.
    let mut end: Option<(String, u64, String)> = None;
    for (_, path) in ordered {
        let start = match &end {
            None if opts.allow_partial => Start::Any,
            None => Start::Genesis,
            Some((after, seq, prev)) => Start::Continue {
                seq: seq.saturating_add(1),
                prev,
                after,
            },
        };
        let summary = walk(path, start, &mut keys).map_err(|e| SetError::from_verify(path, e))?;
        if summary.records > 0 {
            end = Some((
                display_name(path),
                summary.last_seq,
                summary.last_hash.clone(),
            ));
        }
        files.push(FileSummary {
            path: path.clone(),
            summary,
        });
    }

    let nonempty: Vec<&VerifySummary> = files
        .iter()
        .map(|f| &f.summary)
        .filter(|s| s.records > 0)
        .collect();
    let records = nonempty.iter().map(|s| s.records).sum();
    let keyed_records = nonempty.iter().map(|s| s.keyed_records).sum();
    if opts.hmac_key.is_some() && records > 0 && !keys.seen_keyed {
        return Err(SetError::Break {
            path: files[0].path.clone(),
            brk: ChainBreak {
                line: 1,
                kind: BreakKind::Unkeyed,
                detail: "no record is keyed (hmac-sha256): a keyed verification needs the chain's HMAC records; this one is plain SHA-256, as a chain rebuilt without the key would be".into(),
            },
        });
    }
    let (first_seq, first_prev) = nonempty.first().map_or((0, GENESIS_PREV.to_owned()), |s| {
        (s.first_seq, s.first_prev.clone())
    });
    let (last_seq, last_hash) = nonempty.last().map_or((0, GENESIS_PREV.to_owned()), |s| {
        (s.last_seq, s.last_hash.clone())
    });
    let partial = records > 0 && (first_seq != 1 || first_prev != GENESIS_PREV);
    Ok(SetSummary {
        files,
        records,
        first_seq,
        first_prev,
        last_seq,
        last_hash,
        keyed_records,
        partial,
    })
}

fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// The `seq` of a file's first line, read leniently so files can be ordered before they are
/// verified; `None` for an empty file. A first line without even a `seq` is reported at once.
fn first_seq(path: &Path, key: Option<&[u8]>) -> Result<Option<u64>, SetError> {
    #[derive(Deserialize)]
    struct SeqOnly {
        seq: u64,
    }
    let io_err = |source| SetError::Io {
        path: path.to_owned(),
        source,
    };
    let Some(first) = read_first_line_of(path).map_err(io_err)? else {
        return Ok(None);
    };
    let buf = first.bytes;
    if let Ok(s) = serde_json::from_slice::<SeqOnly>(&buf) {
        return Ok(Some(s.seq));
    }
    let (kind, detail) = if !first.complete {
        (
            BreakKind::TornLine,
            "the only line has no terminating newline".to_owned(),
        )
    } else {
        parse_line(&buf, key)
            .err()
            .unwrap_or((BreakKind::Unparseable, "first line has no seq".to_owned()))
    };
    Err(SetError::Break {
        path: path.to_owned(),
        brk: ChainBreak {
            line: 1,
            kind,
            detail,
        },
    })
}

/// What the first record of a file must be.
enum Start<'a> {
    /// seq 1, prev all zeros.
    Genesis,
    /// Given prev, any seq.
    Prev(&'a str),
    /// Exactly the record after the previous file's last one.
    Continue {
        seq: u64,
        prev: &'a str,
        after: &'a str,
    },
    /// Anything (a partial set); the caller reports where it starts.
    Any,
}

/// The key, and whether a keyed record was seen: carried across the files of a set because
/// "plain after keyed" is a downgrade wherever the file boundary falls.
struct KeyState<'a> {
    key: Option<&'a [u8]>,
    seen_keyed: bool,
}

impl KeyState<'_> {
    fn none() -> Self {
        KeyState {
            key: None,
            seen_keyed: false,
        }
    }
}

fn walk(
    path: &Path,
    start: Start<'_>,
    keys: &mut KeyState<'_>,
) -> Result<VerifySummary, VerifyError> {
    let mut reader = BufReader::new(File::open(path)?);
    let mut buf = Vec::new();
    let mut line_no: u64 = 0;
    let mut first: Option<(u64, String)> = None;
    let mut keyed_records = 0;
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
        let rec =
            parse_line(&buf, keys.key).map_err(|(kind, detail)| brk(line_no, kind, detail))?;
        if rec.keyed {
            keys.seen_keyed = true;
            keyed_records += 1;
        } else if keys.key.is_some() && keys.seen_keyed {
            return Err(brk(
                line_no,
                BreakKind::Unkeyed,
                format!(
                    "seq {} is plain SHA-256 after keyed records: re-hashed by someone without the key",
                    rec.seq
                ),
            ));
        }
        match (&last, &start) {
            (None, Start::Genesis) => {
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
            (None, Start::Prev(want)) => {
                if rec.prev != *want {
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
            (None, Start::Continue { seq, prev, after }) => {
                if rec.seq > *seq {
                    return Err(brk(
                        line_no,
                        BreakKind::SeqGap,
                        format!(
                            "first record has seq {} but the previous file {after} ends at seq {}: records {}..{} are missing (a file of the rotation set removed, or this file's head cut)",
                            rec.seq,
                            seq - 1,
                            seq,
                            rec.seq - 1
                        ),
                    ));
                }
                if rec.seq < *seq {
                    return Err(brk(
                        line_no,
                        BreakKind::SeqGap,
                        format!(
                            "first record has seq {} but the previous file {after} already reached seq {}: the files overlap",
                            rec.seq,
                            seq - 1
                        ),
                    ));
                }
                if rec.prev != *prev {
                    return Err(brk(
                        line_no,
                        BreakKind::BrokenLink,
                        format!(
                            "first record's prev {} is not the last hash {prev} of the previous file {after}",
                            rec.prev
                        ),
                    ));
                }
            }
            (None, Start::Any) => {}
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
        if first.is_none() {
            first = Some((rec.seq, rec.prev));
        }
        last = Some((rec.seq, rec.hash));
    }
    Ok(match (first, last) {
        (Some((first_seq, first_prev)), Some((seq, hash))) => VerifySummary {
            records: line_no,
            first_seq,
            first_prev,
            keyed_records,
            last_seq: seq,
            last_hash: hash,
        },
        _ => VerifySummary {
            records: 0,
            first_seq: 0,
            first_prev: GENESIS_PREV.to_owned(),
            keyed_records: 0,
            last_seq: 0,
            last_hash: GENESIS_PREV.to_owned(),
        },
    })
}
