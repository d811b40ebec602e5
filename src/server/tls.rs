//! The gateway listener's TLS: rustls (ring) restricted to TLS 1.2/1.3 and AEAD + ECDHE suites,
//! ALPN h2/http1.1, optional mTLS, and hot reload of the certificate files. A broken new file set
//! never replaces a working one: the served configuration only changes to one that loaded fully.

use crate::config::TlsConfig;
use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Every suite the listener may negotiate, as an explicit allow-list: all are AEAD with
/// (EC)DHE forward secrecy. This is today exactly the ring provider's default set; naming it means
/// a future rustls default can never widen what passgate offers.
pub const CIPHER_SUITES: [CipherSuite; 9] = [
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// ALPN protocols offered, in server preference order.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {detail}")]
    File { path: String, detail: String },
    #[error("{path}: no certificate found (expected PEM `BEGIN CERTIFICATE` blocks)")]
    NoCertificate { path: String },
    #[error("client CA {path}: {detail}")]
    ClientCa { path: String, detail: String },
    #[error("certificate and key: {0}")]
    Config(String),
}

/// The ring provider reduced to [`CIPHER_SUITES`].
pub fn provider() -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .retain(|s| CIPHER_SUITES.contains(&s.suite()));
    p
}

fn file_err(path: &Path, detail: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// The file contents a configuration is built from (read once, hashed, then parsed).
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Material {
    fn read(files: &TlsFiles) -> Result<Material, TlsError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| file_err(p, e));
        Ok(Material {
            cert: read(&files.cert_file)?,
            key: read(&files.key_file)?,
            client_ca: files.client_ca_file.as_deref().map(read).transpose()?,
        })
    }

    fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        // Length-prefixed so moving bytes between files changes the digest.
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            match part {
                Some(b) => {
                    h.update((b.len() as u64).to_be_bytes());
                    h.update(b);
                }
                None => h.update(u64::MAX.to_be_bytes()),
            }
        }
        h.finalize().into()
    }

    fn build(&self, files: &TlsFiles) -> Result<ServerConfig, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(&files.cert_file, e))?;
        if certs.is_empty() {
            return Err(TlsError::NoCertificate {
                path: files.cert_file.display().to_string(),
            });
        }
        // The key's bytes never appear in an error: only the parser's verdict does.
        let key = PrivateKeyDer::from_pem_slice(&self.key)
            .map_err(|e| file_err(&files.key_file, format!("no usable PEM private key ({e})")))?;
        let provider = Arc::new(provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match (&self.client_ca, &files.client_ca_file) {
            (Some(pem), Some(path)) => {
                let ca_err = |detail: String| TlsError::ClientCa {
                    path: path.display().to_string(),
                    detail,
                };
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem) {
                    let c = c.map_err(|e| ca_err(e.to_string()))?;
                    roots.add(c).map_err(|e| ca_err(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(ca_err("no CA certificate found".into()));
                }
                // Required, not optional: without a valid client certificate there is no session.
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| ca_err(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut cfg = builder
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        Ok(cfg)
    }
}

/// Where the listener's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
}

impl From<&TlsConfig> for TlsFiles {
    fn from(t: &TlsConfig) -> TlsFiles {
        TlsFiles {
            cert_file: t.cert_file.clone().into(),
            key_file: t.key_file.clone().into(),
            client_ca_file: t.client_ca_file.clone().map(PathBuf::from),
        }
    }
}

/// What a reload check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    /// The files are byte-for-byte what is being served.
    Unchanged,
    /// New files loaded; new connections get them.
    Reloaded,
}

struct Served {
    files: TlsFiles,
    config: Arc<ServerConfig>,
    digest: [u8; 32],
}

/// A file set that loaded into a working configuration, not yet served (see
/// [`TlsReloader::stage`]): a config reload stages first and installs only once every other part
/// of the new configuration is valid too.
pub struct Staged(Served);

/// The served TLS configuration, swapped whole when the files change (certificate, key and
/// client CA bundle together, so a CA rotation needs no restart either), or when a config reload
/// names other files. Existing connections keep the configuration they were accepted with.
pub struct TlsReloader {
    served: RwLock<Served>,
    /// Digest of the last file set that failed to load, so a broken renewal is logged once,
    /// not every poll.
    last_failed: Mutex<Option<[u8; 32]>>,
}

impl TlsReloader {
    /// Loads the files; fails if they do not make a working configuration.
    pub fn load(files: TlsFiles) -> Result<TlsReloader, TlsError> {
        let Staged(served) = Self::build(files)?;
        Ok(TlsReloader {
            served: RwLock::new(served),
            last_failed: Mutex::new(None),
        })
    }

    fn build(files: TlsFiles) -> Result<Staged, TlsError> {
        crate::outbound::install_crypto_provider();
        let m = Material::read(&files)?;
        let config = Arc::new(m.build(&files)?);
        Ok(Staged(Served {
            digest: m.digest(),
            files,
            config,
        }))
    }

    fn served(&self) -> std::sync::RwLockReadGuard<'_, Served> {
        // A poisoned lock still holds a complete configuration (it is swapped in one store).
        match self.served.read() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    fn served_mut(&self) -> std::sync::RwLockWriteGuard<'_, Served> {
        match self.served.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// The configuration new connections are accepted with.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.served().config.clone()
    }

    /// The files being served.
    pub fn files(&self) -> TlsFiles {
        self.served().files.clone()
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config())
    }

    /// Loads another file set (a config reload changed the paths) without serving it yet.
    pub fn stage(&self, files: TlsFiles) -> Result<Staged, TlsError> {
        Self::build(files)
    }

    /// Serves a staged file set to new connections from now on; later polls re-read its files.
    pub fn install(&self, staged: Staged) {
        *self.served_mut() = staged.0;
        if let Ok(mut f) = self.last_failed.lock() {
            *f = None;
        }
    }

    /// Re-reads the files now. On error the served configuration is kept and the error returned.
    pub fn reload_now(&self) -> Result<Reload, TlsError> {
        let (files, current) = {
            let s = self.served();
            (s.files.clone(), s.digest)
        };
        let m = Material::read(&files)?;
        let digest = m.digest();
        if digest == current {
            return Ok(Reload::Unchanged);
        }
        let config = Arc::new(m.build(&files)?);
        let mut s = self.served_mut();
        if s.files != files {
            // A config reload installed other files meanwhile; they are the ones to serve.
            return Ok(Reload::Unchanged);
        }
        *s = Served {
            files,
            config,
            digest,
        };
        Ok(Reload::Reloaded)
    }

    /// One poll: reload if changed and log the result (a failure once per distinct file set).
    pub fn poll_and_log(&self) {
        match self.reload_now() {
            Ok(Reload::Unchanged) => {}
            Ok(Reload::Reloaded) => {
                tracing::info!(cert = %self.files().cert_file.display(), "TLS certificate reloaded");
                if let Ok(mut f) = self.last_failed.lock() {
                    *f = None;
                }
            }
            Err(e) => {
                let digest = Material::read(&self.files()).ok().map(|m| m.digest());
                let mut f = match self.last_failed.lock() {
                    Ok(f) => f,
                    Err(p) => p.into_inner(),
                };
                if digest.is_none() || *f != digest {
                    tracing::warn!(error = %e, "TLS files changed but do not load; still serving the previous certificate");
                }
                *f = digest;
            }
        }
    }

    /// Polls the files every `interval()` (read again before each wait, so a config reload
    /// changes it) until the returned task is aborted.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        interval: impl Fn() -> Duration + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                // The first wait comes first: the files were just loaded.
                tokio::time::sleep(interval()).await;
                let Some(me) = me.upgrade() else { return };
                // File reads and key parsing are blocking; keep them off the async workers.
                let _ = tokio::task::spawn_blocking(move || me.poll_and_log()).await;
            }
        })
    }
}

/// Subject of the verified client certificate of a finished handshake, RFC 4514 style.
pub fn client_cert_subject(conn: &rustls::ServerConnection) -> Option<String> {
    conn.peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| subject_rfc4514(c.as_ref()))
}

// --- A minimal DER walk, just far enough to read a certificate's subject Name. ---
// Why not x509-parser: it adds ~10 crates (nom, asn1-rs, der-parser, oid-registry...) for one
// string, and the certificate was already parsed and verified by webpki before we look at it.

/// One DER TLV: (tag, contents, the whole TLV, rest).
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// Reads one TLV. Single-byte tags and definite lengths only.
fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high-tag-number form: never used by the structures we read
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None; // indefinite (BER) or absurd
        }
        let mut len = 0usize;
        for _ in 0..n {
            let (&b, r) = rest.split_first()?;
            len = (len << 8) | usize::from(b);
            rest = r;
        }
        len
    };
    if rest.len() < len {
        return None;
    }
    let header = input.len() - rest.len();
    Some((tag, &rest[..len], &input[..header + len], &rest[len..]))
}

fn tagged(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, body, _, rest) = tlv(input)?;
    (tag == want).then_some((body, rest))
}

fn oid_string(body: &[u8]) -> Option<String> {
    let (&first, rest) = body.split_first()?;
    let mut parts = vec![u64::from(first / 40).min(2), 0];
    parts[1] = u64::from(first) - parts[0] * 40;
    let mut v: u64 = 0;
    for &b in rest {
        v = v.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            parts.push(v);
            v = 0;
        }
    }
    Some(
        parts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// Decodes the directory-string types; `None` for anything else (rendered as `#hex`).
fn string_value(tag: u8, body: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, NumericString, PrintableString, IA5String, VisibleString
        0x0c | 0x12 | 0x13 | 0x16 | 0x1a => String::from_utf8(body.to_vec()).ok(),
        // TeletexString: in practice Latin-1
        0x14 => Some(body.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16BE
        0x1e => {
            if !body.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = body
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        // UniversalString: UTF-32BE
        0x1c => {
            if !body.len().is_multiple_of(4) {
                return None;
            }
            body.chunks(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

/// RFC 4514 §2.4 escaping, plus control characters as `\XX` so a subject can never break a log
/// line or an audit record.
fn escape(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                o.push('\\');
                o.push(c);
            }
            ' ' if i == 0 || i + 1 == n => o.push_str("\\ "),
            '#' if i == 0 => o.push_str("\\#"),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    o.push_str(&format!("\\{b:02X}"));
                }
            }
            c => o.push(c),
        }
    }
    o
}

/// The subject of a DER certificate as an RFC 4514 string: RDNs in reverse order, e.g.
/// `CN=helpdesk-01,O=Contoso`. `None` if the DER does not have the expected shape.
pub fn subject_rfc4514(cert_der: &[u8]) -> Option<String> {
    let (cert, _) = tagged(cert_der, 0x30)?;
    let (tbs, _) = tagged(cert, 0x30)?;
    let mut rest = tbs;
    // version [0] EXPLICIT, optional
    if let Some((0xa0, _, _, r)) = tlv(rest) {
        rest = r;
    }
    let (_, rest) = tagged(rest, 0x02)?; // serialNumber
    let (_, rest) = tagged(rest, 0x30)?; // signature AlgorithmIdentifier
    let (_, rest) = tagged(rest, 0x30)?; // issuer
    let (_, rest) = tagged(rest, 0x30)?; // validity
    let (mut name, _) = tagged(rest, 0x30)?; // subject
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (mut set, r) = tagged(name, 0x31)?;
        name = r;
        let mut avas = Vec::new();
        while !set.is_empty() {
            let (ava, r) = tagged(set, 0x30)?;
            set = r;
            let (oid, ava_rest) = tagged(ava, 0x06)?;
            let (vtag, vbody, whole, _) = tlv(ava_rest)?;
            let oid = oid_string(oid)?;
            let text = match (short_name(&oid), string_value(vtag, vbody)) {
                (Some(k), Some(v)) => format!("{k}={}", escape(&v)),
                (k, _) => format!("{}=#{}", k.unwrap_or(&oid), hex::encode(whole)),
            };
            avas.push(text);
        }
        rdns.push(avas.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_offers_only_the_listed_suites() {
        let p = provider();
        let got: Vec<CipherSuite> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(got.len(), CIPHER_SUITES.len(), "{got:?}");
        for s in &got {
            assert!(CIPHER_SUITES.contains(s));
            let name = format!("{s:?}");
            assert!(
                name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_"),
                "{name}"
            );
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
        }
    }

    #[test]
    fn escaping_follows_rfc4514_and_neutralises_controls() {
        assert_eq!(escape("Contoso, Ltd"), "Contoso\\, Ltd");
        assert_eq!(escape(" #lead"), "\\ #lead");
        assert_eq!(escape("#x"), "\\#x");
        assert_eq!(escape("trail "), "trail\\ ");
        assert_eq!(escape("a+b;c<d>e\"f\\g"), "a\\+b\\;c\\<d\\>e\\\"f\\\\g");
        assert_eq!(escape("line\nbreak"), "line\\0Abreak");
    }

    #[test]
    fn oids_decode() {
        assert_eq!(oid_string(&[0x55, 0x04, 0x03]).as_deref(), Some("2.5.4.3"));
        assert_eq!(
            oid_string(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]).as_deref(),
            Some("1.2.840.113549.1.9.1")
        );
    }

    #[test]
    fn malformed_der_is_none_not_a_panic() {
        assert_eq!(subject_rfc4514(&[]), None);
        assert_eq!(subject_rfc4514(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject_rfc4514(&[0x30, 0x80, 0x00, 0x00]), None);
        assert_eq!(subject_rfc4514(&[0x30, 0x03, 0x30, 0x01]), None);
        // Every prefix of a small made-up structure.
        let blob = [
            0x30, 0x0a, 0x30, 0x08, 0x02, 0x01, 0x01, 0x30, 0x00, 0x30, 0x00, 0x30,
        ];
        for n in 0..blob.len() {
            let _ = subject_rfc4514(&blob[..n]);
        }
    }
}
