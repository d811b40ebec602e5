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
