//! The audit line format and hash rule, shared by the writer (which builds lines) and the
//! verifier (which re-checks them on raw bytes). Nothing here may re-serialise JSON to check a hash.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::verify::BreakKind;

/// `prev` of the first record of a fresh chain.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The bytes that introduce the hash at the end of every line.
const HASH_PREFIX: &[u8] = b",\"hash\":\"";
/// `,"hash":"` + 64 hex + `"}`.
pub(crate) const SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;

/// What a line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineKind {
    Decision,
    Outcome,
    Recovery,
}

impl LineKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LineKind::Decision => "decision",
            LineKind::Outcome => "outcome",
            LineKind::Recovery => "recovery",
        }
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Serialises a record struct and returns its fields without the enclosing braces, ready to be
/// spliced after the line header. Field order is the struct's declaration order.
pub(crate) fn record_fields<T: serde::Serialize>(rec: &T) -> Result<String, serde_json::Error> {
    let json = serde_json::to_string(rec)?;
    // A derived Serialize of a struct always produces `{...}`; anything else is a programming
    // error, reported as a serialisation failure rather than a panic.
    match json.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        Some(inner) => Ok(inner.to_owned()),
        None => Err(serde::ser::Error::custom(
            "audit record is not a JSON object",
        )),
    }
}

/// Appends one complete line (with its `\n`) to `out` and returns its hash.
///
/// `body` = `{"v":1,"seq":N,"time":"T","kind":"K","prev":"P"` + (`,` + fields if any);
/// `hash` = hex SHA-256 of `body`'s bytes; line = `body` + `,"hash":"` + hash + `"}` + `\n`.
pub(crate) fn build_line(
    out: &mut Vec<u8>,
    seq: u64,
    time: &str,
    kind: LineKind,
    prev: &str,
    fields: &str,
) -> String {
    let start = out.len();
    // `time`, `kind` and `prev` are produced by the writer (RFC 3339, fixed words, hex) and
    // need no JSON escaping.
    out.extend_from_slice(
        format!(
            "{{\"v\":1,\"seq\":{seq},\"time\":\"{time}\",\"kind\":\"{}\",\"prev\":\"{prev}\"",
            kind.as_str()
        )
        .as_bytes(),
    );
    if !fields.is_empty() {
        out.push(b',');
        out.extend_from_slice(fields.as_bytes());
    }
    let hash = sha256_hex(&out[start..]);
    out.extend_from_slice(HASH_PREFIX);
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\"}\n");
    hash
}

/// The chain-relevant header of a line that passed every per-line check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedLine {
    pub seq: u64,
    pub kind: String,
    pub prev: String,
    pub hash: String,
}

#[derive(Deserialize)]
struct Header {
    v: u32,
    seq: u64,
    time: String,
    kind: String,
    prev: String,
    hash: String,
}

fn is_lower_hex64(b: &[u8]) -> bool {
    b.len() == 64 && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks one line (without its `\n`) on its own: shape, JSON, header fields, and that its
/// hash recomputes over the raw bytes. Chain checks (seq, prev) are the caller's.
pub(crate) fn parse_line(line: &[u8]) -> Result<ParsedLine, (BreakKind, String)> {
    let n = line.len();
    let shape_err = || {
        (
            BreakKind::Unparseable,
            "line does not end with ,\"hash\":\"<64 lowercase hex>\"}".to_owned(),
        )
    };
    if n <= SUFFIX_LEN || line[0] != b'{' {
        return Err(shape_err());
    }
    let (body, suffix) = line.split_at(n - SUFFIX_LEN);
    let (prefix, rest) = suffix.split_at(HASH_PREFIX.len());
    let (stored_hash, close) = rest.split_at(64);
    if prefix != HASH_PREFIX || close != b"\"}" || !is_lower_hex64(stored_hash) {
        return Err(shape_err());
    }
    // Derived Deserialize rejects duplicate keys, so a body cannot smuggle a second "hash".
    let header: Header = serde_json::from_slice(line)
        .map_err(|e| (BreakKind::Unparseable, format!("not a valid record: {e}")))?;
    if header.v != 1 {
        return Err((
            BreakKind::Unparseable,
            format!("unsupported version v={}", header.v),
        ));
    }
    if !matches!(header.kind.as_str(), "decision" | "outcome" | "recovery") {
        return Err((
            BreakKind::Unparseable,
            format!("unknown kind {:?}", header.kind),
        ));
    }
    if !is_lower_hex64(header.prev.as_bytes()) {
        return Err((
            BreakKind::Unparseable,
            "prev is not 64 lowercase hex".into(),
        ));
    }
    if header.hash.as_bytes() != stored_hash {
        return Err((
            BreakKind::Unparseable,
            "hash field is not the last key".into(),
        ));
    }
    if chrono::DateTime::parse_from_rfc3339(&header.time).is_err() {
        return Err((BreakKind::Unparseable, "time is not RFC 3339".into()));
    }
    let computed = sha256_hex(body);
    if computed != header.hash {
        return Err((
            BreakKind::BadHash,
            format!(
                "stored hash {} but the line hashes to {computed}",
                header.hash
            ),
        ));
    }
    Ok(ParsedLine {
        seq: header.seq,
        kind: header.kind,
        prev: header.prev,
        hash: header.hash,
    })
}
