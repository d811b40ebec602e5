//! How the writer is configured: rotation limits and the HMAC key, resolved from the `audit:`
//! config block, and the one minimum-key-length check every key passes. It must never log,
//! display or `Debug`-print key bytes.

use std::time::Duration;

/// Shortest HMAC key the writer accepts, in bytes: shorter keys are guessable offline.
pub const MIN_HMAC_KEY_BYTES: usize = 16;

/// An HMAC key shorter than [`MIN_HMAC_KEY_BYTES`]; holds only its length, never the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the key is {len} bytes; use at least {MIN_HMAC_KEY_BYTES} random bytes, e.g. the output of `openssl rand -hex 32`")]
pub struct KeyTooShort {
    pub len: usize,
}

/// The one check of an audit HMAC key's length, for every way a key reaches the writer.
pub fn check_hmac_key(key: &[u8]) -> Result<(), KeyTooShort> {
    if key.len() < MIN_HMAC_KEY_BYTES {
        return Err(KeyTooShort { len: key.len() });
    }
    Ok(())
}

/// Called with the duration of every batch's `fsync` (successful or not), e.g. to feed a
/// histogram. Runs on the writer thread: it must be quick and must not block.
pub type FsyncObserver = std::sync::Arc<dyn Fn(Duration) + Send + Sync>;

/// How [`AuditLog::open_with`](super::AuditLog::open_with) writes.
#[derive(Clone, Default)]
pub struct AuditOptions {
    /// Rotate before a batch that would take the current file past this many bytes. A single
    /// batch larger than this still goes into one file: records never split across files.
    pub rotate_max_bytes: Option<u64>,
    /// Rotate once the current file's first record is this old (checked between batches and
    /// while idle).
    pub rotate_max_age: Option<Duration>,
    /// HMAC-SHA256 key for a keyed chain; `None` hashes with plain SHA-256.
    pub hmac_key: Option<Vec<u8>>,
}

impl std::fmt::Debug for AuditOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditOptions")
            .field("rotate_max_bytes", &self.rotate_max_bytes)
            .field("rotate_max_age", &self.rotate_max_age)
            .field("hmac_key", &self.hmac_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Why the `audit:` configuration could not be turned into [`AuditOptions`].
#[derive(Debug, thiserror::Error)]
pub enum AuditOptionsError {
    #[error("audit.hmac_key: {0}")]
    Secret(#[from] crate::config::SecretError),
    #[error("audit.hmac_key: {0}")]
    KeyTooShort(#[from] KeyTooShort),
}

impl AuditOptions {
    /// Resolves the `audit:` block: rotation limits and, if set, the HMAC key (its secret's
    /// bytes as resolved, e.g. the 64 hex characters of `openssl rand -hex 32`).
    pub fn from_config(
        cfg: &crate::config::AuditConfig,
    ) -> Result<AuditOptions, AuditOptionsError> {
        let hmac_key = match &cfg.hmac_key {
            Some(r) => {
                let key = r.resolve()?.expose().as_bytes().to_vec();
                check_hmac_key(&key)?;
                Some(key)
            }
            None => None,
        };
        Ok(AuditOptions {
            rotate_max_bytes: cfg.rotate_max_bytes,
            rotate_max_age: cfg.rotate_max_age_seconds.map(Duration::from_secs),
            hmac_key,
        })
    }
}
