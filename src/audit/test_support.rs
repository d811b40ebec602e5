//! Helpers for tests that read and tamper with audit files, shared by this crate's unit tests
//! and the integration tests in `tests/` (which cannot see `cfg(test)` code). Hidden from the
//! docs and not for production code: every function panics on any error, as a test should.

use std::path::Path;

/// The file's lines, without their `\n`.
///
/// # Panics
/// If the file cannot be read as UTF-8 text.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Replaces the file's content with `lines`, each ended by `\n`.
///
/// # Panics
/// If the file cannot be written.
pub fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(path, s).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The value of `key` in the JSON object `line` (`Null` if absent).
///
/// # Panics
/// If `line` is not JSON.
pub fn field(line: &str, key: &str) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    v[key].clone()
}

/// Rewrites a plain (unkeyed) audit file as if its lines had been written with record version
/// `v`: each line's `"v":N` becomes `"v":v`, and its `prev` and `hash` are recomputed so the
/// chain still links (the first line keeps its `prev`). Builds version 1 files for the
/// compatibility tests, and versions passgate never wrote for the refusal tests.
///
/// # Panics
/// If the file cannot be read or written, or a line is not a plain audit line.
pub fn rewrite_version(path: &Path, v: u32) {
    use sha2::Digest;
    const SUFFIX: usize = ",\"hash\":\"".len() + 64 + 2;
    let mut prev: Option<String> = None;
    let mut out = Vec::new();
    for line in lines(path) {
        assert!(!line.contains("\"alg\":"), "a keyed line: {line}");
        let body = &line[..line.len() - SUFFIX];
        let rest = body
            .strip_prefix("{\"v\":")
            .and_then(|r| r.split_once(','))
            .map(|(_, r)| r)
            .unwrap_or_else(|| panic!("no version: {line}"));
        let mut body = format!("{{\"v\":{v},{rest}");
        if let Some(p) = &prev {
            let at = body.find("\"prev\":\"").expect("prev") + "\"prev\":\"".len();
            body.replace_range(at..at + 64, p);
        }
        let hash = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        out.push(format!("{body},\"hash\":\"{hash}\"}}"));
        prev = Some(hash);
    }
    write_lines(path, &out);
}
