//! Resolves a [`SecretRef`] (environment variable, file, or the sandbox's inline value) into a
//! [`Secret`]. A `Secret` never prints its value (Debug and Display say `<redacted>`), and no error
//! built here ever contains the value — only the variable name or file path.

use super::schema::SecretRef;

/// A resolved secret. The only way to see the value is [`Secret::expose`], so every use of the
/// raw value is greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value obtained elsewhere (the sandbox's generated credentials, tests).
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a secret reference could not be resolved. Messages name the reference, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set (referenced as env:{0}); export it before starting passgate")]
    EnvMissing(String),
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("cannot read secret file {path}: {source}")]
    FileUnreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("secret file {0} is not valid UTF-8")]
    FileNotUnicode(String),
    #[error("secret referenced as {0} is empty")]
    Empty(String),
}

impl SecretRef {
    /// Reads the secret. Files lose exactly one trailing newline (`\n` or `\r\n`), the one editors
    /// and `echo` add; other whitespace is kept because it could be part of the secret.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let value = match self {
            SecretRef::Env(name) => match std::env::var(name) {
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => {
                    return Err(SecretError::EnvMissing(name.clone()))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(SecretError::EnvNotUnicode(name.clone()))
                }
            },
            SecretRef::File(path) => {
                let bytes = std::fs::read(path).map_err(|source| SecretError::FileUnreadable {
                    path: path.clone(),
                    source,
                })?;
                let mut v = String::from_utf8(bytes)
                    .map_err(|_| SecretError::FileNotUnicode(path.clone()))?;
                if v.ends_with("\r\n") {
                    v.truncate(v.len() - 2);
                } else if v.ends_with('\n') {
                    v.truncate(v.len() - 1);
                }
                v
            }
            SecretRef::Inline(v) => v.clone(),
        };
        if value.is_empty() {
            return Err(SecretError::Empty(format!("{self:?}")));
        }
        Ok(Secret(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const VALUE: &str = "s3cr3t~Value.With-Chars";

    #[test]
    fn secret_never_prints_its_value() {
        let s = Secret::new(VALUE);
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(s.expose(), VALUE);
        let inline = SecretRef::Inline(VALUE.into());
        assert!(!format!("{inline:?}").contains(VALUE));
    }

    #[test]
    fn env_reference_resolves_and_missing_names_the_variable() {
        // Unique names: tests run in parallel in one process.
        std::env::set_var("PASSGATE_TEST_SECRET_PRESENT", VALUE);
        let s = SecretRef::Env("PASSGATE_TEST_SECRET_PRESENT".into())
            .resolve()
            .unwrap();
        assert_eq!(s.expose(), VALUE);

        let e = SecretRef::Env("PASSGATE_TEST_SECRET_ABSENT".into())
            .resolve()
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("PASSGATE_TEST_SECRET_ABSENT"), "{msg}");

        std::env::set_var("PASSGATE_TEST_SECRET_EMPTY", "");
        let e = SecretRef::Env("PASSGATE_TEST_SECRET_EMPTY".into())
            .resolve()
            .unwrap_err();
        assert!(matches!(e, SecretError::Empty(_)));
    }

    #[test]
    fn file_reference_trims_exactly_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (format!("{VALUE}\n"), VALUE.to_string()),
            (format!("{VALUE}\r\n"), VALUE.to_string()),
            (format!("{VALUE}\n\n"), format!("{VALUE}\n")),
            (format!(" {VALUE} "), format!(" {VALUE} ")),
        ];
        for (i, (content, want)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("s{i}"));
            std::fs::File::create(&path)
                .unwrap()
                .write_all(content.as_bytes())
                .unwrap();
            let s = SecretRef::File(path.display().to_string())
                .resolve()
                .unwrap();
            assert_eq!(s.expose(), want);
        }
    }

    #[test]
    fn file_errors_name_the_path_not_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = SecretRef::File(missing.display().to_string())
            .resolve()
            .unwrap_err();
        assert!(e.to_string().contains("nope"));

        let bad = dir.path().join("bin");
        let mut bytes = VALUE.as_bytes().to_vec();
        bytes.push(0xff);
        std::fs::write(&bad, &bytes).unwrap();
        let e = SecretRef::File(bad.display().to_string())
            .resolve()
            .unwrap_err();
        let msg = format!("{e} {e:?}");
        assert!(!msg.contains(VALUE), "{msg}");

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = SecretRef::File(empty.display().to_string())
            .resolve()
            .unwrap_err();
        assert!(matches!(e, SecretError::Empty(_)));
    }
}
