//! The audit line format and hash rule, shared by the writer (which builds lines) and the
//! verifier (which re-checks them on raw bytes). Nothing here may re-serialise JSON to check a hash.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::verify::BreakKind;

/// `prev` of the first record of a fresh chain.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `v` of every line written now. 2 added `inputs` to decision records; the line format and the
/// hash rule are those of 1, so a chain may hold both (an upgraded gateway continues a v1 file).
pub const LINE_VERSION: u32 = 2;

/// The line versions a reader accepts: every version this passgate has ever written, no other.
pub fn readable_version(v: u64) -> bool {
    v == 1 || v == u64::from(LINE_VERSION)
}

/// The bytes that introduce the hash at the end of every line.
const HASH_PREFIX: &[u8] = b",\"hash\":\"";
/// `,"hash":"` + 64 hex + `"}`.
pub(crate) const SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + 2;

/// What a line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineKind {
    Decision,
    Outcome,
    Approval,
    Throttled,
    Recovery,
    Console,
}

impl LineKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LineKind::Decision => "decision",
            LineKind::Outcome => "outcome",
            LineKind::Approval => "approval",
            LineKind::Throttled => "throttled",
            LineKind::Recovery => "recovery",
            LineKind::Console => "console",
        }
    }

    /// Every kind, so the verifier knows exactly the words the writer may write.
    pub(crate) const ALL: [LineKind; 6] = [
        LineKind::Decision,
        LineKind::Outcome,
        LineKind::Approval,
        LineKind::Throttled,
        LineKind::Recovery,
        LineKind::Console,
    ];
}

/// The `alg` header value of a keyed line. A line without `alg` is hashed with plain SHA-256.
pub(crate) const ALG_HMAC_SHA256: &str = "hmac-sha256";

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex32(&Sha256::digest(bytes).into())
}

/// Lower-case hex of a 32-byte digest. `hex::encode` collects one `char` at a time, which cost
/// more than the SHA-256 itself on a CPU with SHA extensions; this fills one buffer.
fn hex32(digest: &[u8; 32]) -> String {
    let mut out = vec![0u8; 64];
    // The buffer is exactly twice the input and hex digits are ASCII, so neither step can
    // fail; an empty string (which no chain would verify with) stands in for the impossible.
    if hex::encode_to_slice(digest, &mut out).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

pub(crate) fn hmac_sha256_hex(key: &[u8], bytes: &[u8]) -> String {
    // HMAC accepts keys of any length (long keys are hashed first), so this cannot fail; the
    // fallback keeps the function total without a panic path.
    match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(bytes);
            hex32(&mac.finalize().into_bytes().into())
        }
        Err(_) => sha256_hex(bytes),
    }
}

/// The line hash: keyed (HMAC-SHA256) when a key is given, plain SHA-256 otherwise.
pub(crate) fn line_hash(key: Option<&[u8]>, bytes: &[u8]) -> String {
    match key {
        Some(k) => hmac_sha256_hex(k, bytes),
        None => sha256_hex(bytes),
    }
}

/// Serialises a record struct and returns its fields without the enclosing braces, ready to be
/// spliced after the line header. Field order is the struct's declaration order.
pub(crate) fn record_fields<T: serde::Serialize>(rec: &T) -> Result<String, serde_json::Error> {
    // Room for a decision record's fields (~1.3 KB) up front: serialising into a growing buffer
    // and then copying out the inner part cost several reallocations per record.
    let mut json = Vec::with_capacity(2048);
    serde_json::to_writer(&mut json, rec)?;
    // A derived Serialize of a struct always produces `{...}`; anything else is a programming
    // error, reported as a serialisation failure rather than a panic.
    let not_an_object = || serde::ser::Error::custom("audit record is not a JSON object");
    if json.first() != Some(&b'{') || json.last() != Some(&b'}') {
        return Err(not_an_object());
    }
    json.pop();
    json.remove(0);
    String::from_utf8(json).map_err(|_| not_an_object())
}

/// Appends one complete line (with its `\n`) to `out` and returns its hash.
///
/// - `body` = `{"v":2,` ([`LINE_VERSION`]) + (`"alg":"hmac-sha256",` if keyed) +
///   `"seq":N,"time":"T","kind":"K","prev":"P"` + (`,` + fields if any);
/// - `hash` = hex SHA-256 (or HMAC-SHA256 with `key`) of `body`'s bytes;
/// - line = `body` + `,"hash":"` + hash + `"}` + `\n`.
pub(crate) fn build_line(
    out: &mut Vec<u8>,
    line: LineParts<'_>,
    fields: &str,
    key: Option<&[u8]>,
) -> String {
    use std::io::Write as _;
    let start = out.len();
    // `time`, `kind` and `prev` are produced by the writer (RFC 3339, fixed words, hex) and
    // need no JSON escaping. Written straight into the batch buffer (a `Vec` never fails a write).
    let _ = write!(out, "{{\"v\":{LINE_VERSION},");
    if key.is_some() {
        let _ = write!(out, "\"alg\":\"{ALG_HMAC_SHA256}\",");
    }
    let _ = write!(
        out,
        "\"seq\":{},\"time\":\"{}\",\"kind\":\"{}\",\"prev\":\"{}\"",
        line.seq,
        line.time,
        line.kind.as_str(),
        line.prev,
    );
    if !fields.is_empty() {
        out.push(b',');
        out.extend_from_slice(fields.as_bytes());
    }
    let hash = line_hash(key, &out[start..]);
    out.extend_from_slice(HASH_PREFIX);
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\"}\n");
    hash
}

/// The writer-assigned header of a line to build.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LineParts<'a> {
    pub seq: u64,
    pub time: &'a str,
    pub kind: LineKind,
    pub prev: &'a str,
}

/// The chain-relevant header of a line that passed every per-line check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedLine {
    pub seq: u64,
    pub time: String,
    pub kind: String,
    pub prev: String,
    pub hash: String,
    /// The line carries `"alg":"hmac-sha256"` and its HMAC was checked with the given key.
    pub keyed: bool,
}

#[derive(Deserialize)]
struct Header {
    v: u32,
    #[serde(default)]
    alg: Option<String>,
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
/// hash recomputes over the raw bytes — HMAC-SHA256 with `key` if the line says
/// `"alg":"hmac-sha256"`, plain SHA-256 if it has no `alg`. Whether a plain line is acceptable
/// where keyed ones are expected, and the chain checks (seq, prev), are the caller's.
pub(crate) fn parse_line(
    line: &[u8],
    key: Option<&[u8]>,
) -> Result<ParsedLine, (BreakKind, String)> {
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
    if !readable_version(u64::from(header.v)) {
        return Err((
            BreakKind::Unparseable,
            format!("unsupported version v={}", header.v),
        ));
    }
    if !LineKind::ALL.iter().any(|k| k.as_str() == header.kind) {
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
    let keyed = match header.alg.as_deref() {
        None => false,
        Some(ALG_HMAC_SHA256) => true,
        Some(other) => {
            return Err((
                BreakKind::Unparseable,
                format!("unknown hash algorithm alg={other:?}"),
            ))
        }
    };
    let computed = if keyed {
        let Some(key) = key else {
            return Err((
                BreakKind::KeyRequired,
                "the record is keyed (alg hmac-sha256); its hash can only be checked with the HMAC key".into(),
            ));
        };
        hmac_sha256_hex(key, body)
    } else {
        sha256_hex(body)
    };
    if computed != header.hash {
        let detail = if keyed {
            format!(
                "stored HMAC {} does not match the line's bytes under the given key (edited line, or wrong key)",
                header.hash
            )
        } else {
            format!(
                "stored hash {} but the line hashes to {computed}",
                header.hash
            )
        };
        return Err((BreakKind::BadHash, detail));
    }
    Ok(ParsedLine {
        seq: header.seq,
        time: header.time,
        kind: header.kind,
        prev: header.prev,
        hash: header.hash,
        keyed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize)]
    struct Fields {
        request_id: &'static str,
        status: u16,
    }

    /// The exact bytes of a line, plain and keyed, against hashes computed independently
    /// (Python's hashlib/hmac): a change to how lines are built must never change what is
    /// written, or every chain written before it would stop verifying.
    #[test]
    fn lines_are_built_byte_for_byte_as_specified() {
        let prev = "ab".repeat(32);
        let fields = record_fields(&Fields {
            request_id: "r-1",
            status: 204,
        })
        .unwrap();
        assert_eq!(fields, r#""request_id":"r-1","status":204"#);
        let parts = LineParts {
            seq: 7,
            time: "2026-12-02T10:00:00.000Z",
            kind: LineKind::Outcome,
            prev: &prev,
        };
        let mut out = b"earlier line\n".to_vec();
        let hash = build_line(&mut out, parts, &fields, None);
        assert_eq!(
            hash,
            "e486896b5aaadbf46a844b8c8713bad8a1f2b0fe798298346065863517c7d1c8"
        );
        let want = format!(
            "earlier line\n{{\"v\":2,\"seq\":7,\"time\":\"2026-12-02T10:00:00.000Z\",\"kind\":\"outcome\",\"prev\":\"{prev}\",\"request_id\":\"r-1\",\"status\":204,\"hash\":\"{hash}\"}}\n"
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);

        let key = [b'k'; 32];
        let mut out = Vec::new();
        let hash = build_line(&mut out, parts, &fields, Some(&key));
        assert_eq!(
            hash,
            "e8689f10213a3e5f10f6d8bff1668a38d1d5d85ff52fcadbb664da2dce372d8c"
        );
        let want = format!(
            "{{\"v\":2,\"alg\":\"hmac-sha256\",\"seq\":7,\"time\":\"2026-12-02T10:00:00.000Z\",\"kind\":\"outcome\",\"prev\":\"{prev}\",\"request_id\":\"r-1\",\"status\":204,\"hash\":\"{hash}\"}}\n"
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
        // A line without fields has none spliced in.
        let mut out = Vec::new();
        build_line(&mut out, parts, "", None);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains(&format!("\"prev\":\"{prev}\",\"hash\":")));
    }

    #[test]
    fn record_fields_refuses_what_is_not_an_object() {
        assert!(record_fields(&[1, 2]).is_err());
        assert!(record_fields(&"text").is_err());
        assert_eq!(record_fields(&serde_json::json!({})).unwrap(), "");
    }
}
