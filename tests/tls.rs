//! The TLS listener over real sockets: ALPN h2/http1.1, protocol versions, mTLS (missing, rogue and
//! good client certificates, subject in the audit record) and certificate reload without restart.
//! Certificates are made at test time with rcgen.

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use passgate::dev::{DevEnv, DEV_CONFIG};
use passgate::server::Reload;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOUND: Duration = Duration::from_secs(10);

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "Contoso");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(p, key),
    }
}

/// (cert PEM, key PEM, cert DER)
fn leaf(ca: &Ca, cn: &str, sans: &[&str], client: bool, serial: u64) -> (String, String, Vec<u8>) {
    let mut p =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    // rcgen's default name already holds a CN; start empty so the order is ours (O, then CN).
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "Contoso");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.serial_number = Some(SerialNumber::from(serial));
    p.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

struct Pki {
    dir: PathBuf,
    ca: Ca,
    server_der: Vec<u8>,
    client: (String, String),
    rogue: (String, String),
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap().keep();
        let ca_ = ca("Passgate Test CA");
        let (cert, key, server_der) =
            leaf(&ca_, "passgate-test", &["localhost", "127.0.0.1"], false, 1);
        std::fs::write(dir.join("server.pem"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        std::fs::write(dir.join("clients-ca.pem"), &ca_.pem).unwrap();
        let (c, k, _) = leaf(&ca_, "helpdesk-01", &[], true, 2);
        let rogue_ca = ca("Passgate Test CA"); // same name, different key
        let (rc, rk, _) = leaf(&rogue_ca, "helpdesk-01", &[], true, 2);
        Pki {
            dir,
            ca: ca_,
            server_der,
            client: (c, k),
            rogue: (rc, rk),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn config(&self, mtls: bool) -> String {
        let mut tls = format!(
            "  tls:\n    cert_file: \"{}\"\n    key_file: \"{}\"\n",
            self.path("server.pem"),
            self.path("server.key")
        );
        if mtls {
            tls.push_str(&format!(
                "    client_ca_file: \"{}\"\n",
                self.path("clients-ca.pem")
            ));
        }
        let anchor = "  plaintext: true\n";
        assert!(DEV_CONFIG.contains(anchor));
        DEV_CONFIG.replacen(anchor, &tls, 1)
    }
}

fn client_config(
    pki: &Pki,
    alpn: &[&[u8]],
    identity: Option<&(String, String)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.pem.as_bytes()).unwrap())
        .unwrap();
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn handshake(env: &DevEnv, cfg: rustls::ClientConfig) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(gateway_addr(env)).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    tokio::time::timeout(
        BOUND,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// One POST over an established TLS stream, HTTP/2 if ALPN chose it. Returns the status.
async fn post(tls: Tls, path: &str, bearer: Option<&str>) -> Result<u16, String> {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let mut b = http::Request::builder().method("POST");
    b = if h2 {
        b.uri(format!("https://localhost{path}"))
    } else {
        b.uri(path).header("host", "localhost")
    };
    if let Some(t) = bearer {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let req = b.body(Empty::<Bytes>::new()).unwrap();
    let fut = async move {
        let resp = if h2 {
            let (mut s, c) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(c);
            s.send_request(req).await.map_err(|e| e.to_string())?
        } else {
            let (mut s, c) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(c);
            s.send_request(req).await.map_err(|e| e.to_string())?
        };
        assert!(resp.headers().get("server").is_none(), "no version banner");
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok(status)
    };
    tokio::time::timeout(BOUND, fut)
        .await
        .map_err(|_| "request timed out".to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_negotiates_h2_and_http1_and_an_allowed_call_returns_204() {
    let pki = Pki::new();
    let env = start_with(Some(pki.config(false))).await;
    assert!(env.gateway_url.starts_with("https://"));
    let all = [&rustls::version::TLS13, &rustls::version::TLS12];
    let t = token(&env, "alice");

    let tls = handshake(&env, client_config(&pki, &[b"h2", b"http/1.1"], None, &all))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let served = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    assert_eq!(served, pki.server_der);
    assert_eq!(
        post(tls, &action_path(&env, "kiosk-phone"), Some(&t)).await,
        Ok(204)
    );
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 1);

    let tls = handshake(&env, client_config(&pki, &[b"http/1.1"], None, &all))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        post(tls, &action_path(&env, "kiosk-phone"), None).await,
        Ok(401)
    );

    // No ALPN at all: HTTP/1.1.
    let tls = handshake(&env, client_config(&pki, &[], None, &all))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    assert_eq!(
        post(tls, &action_path(&env, "kiosk-phone"), None).await,
        Ok(401)
    );

    // A TLS 1.2-only client still gets an ECDHE + AEAD suite.
    let tls = handshake(
        &env,
        client_config(&pki, &[b"http/1.1"], None, &[&rustls::version::TLS12]),
    )
    .await
    .unwrap();
    let (_, c) = tls.get_ref();
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let suite = format!("{:?}", c.negotiated_cipher_suite().unwrap().suite());
    assert!(
        suite.starts_with("TLS_ECDHE_") && suite.contains("GCM"),
        "{suite}"
    );

    // Only the one forwarded call above.
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 1);
    env.stop().await;
}

/// A TLS 1.1 ClientHello, by hand (rustls cannot even offer TLS 1.1). Apart from the version it
/// is one the server could accept: an ECDHE-GCM suite, signature algorithms and groups it
/// supports. So the refusal can only be about the version.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1, no supported_versions extension
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2b, 0xc0, 0x2f]); // ECDHE-{ECDSA,RSA}-AES128-GCM
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let exts: &[u8] = &[
        0x00, 0x0d, 0x00, 0x08, 0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, // sig algs
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, // groups x25519, p256
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec point formats: uncompressed
    ];
    body.extend_from_slice(&[(exts.len() >> 8) as u8, exts.len() as u8]);
    body.extend_from_slice(exts);
    let mut hs = vec![0x01, 0x00, (body.len() >> 8) as u8, body.len() as u8];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01, (hs.len() >> 8) as u8, hs.len() as u8];
    rec.extend_from_slice(&hs);
    rec
}

/// The same hello claiming TLS 1.2: accepted (a ServerHello comes back), which shows the bytes
/// above are a well-formed hello and the refusal is the version's.
fn tls12_client_hello() -> Vec<u8> {
    let mut h = tls11_client_hello();
    h[10] = 0x03; // client_version minor: 5-byte record header + 4-byte handshake header + 1
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_is_refused_with_a_protocol_version_alert() {
    let pki = Pki::new();
    let env = start_with(Some(pki.config(false))).await;
    let mut s = TcpStream::connect(gateway_addr(&env)).await.unwrap();
    s.write_all(&tls11_client_hello()).await.unwrap();
    let mut got = Vec::new();
    let r = tokio::time::timeout(BOUND, s.read_to_end(&mut got)).await;
    assert!(r.is_ok(), "server closed the connection");
    assert!(got.len() >= 7, "an alert record: {got:02x?}");
    assert_eq!(got[0], 0x15, "alert, not a ServerHello: {got:02x?}");
    assert_eq!(got[5], 2, "fatal");
    assert_eq!(got[6], 70, "protocol_version");

    let mut s = TcpStream::connect(gateway_addr(&env)).await.unwrap();
    let hello = tls12_client_hello();
    assert_eq!(&hello[9..11], &[0x03, 0x03]);
    s.write_all(&hello).await.unwrap();
    let mut got = [0u8; 6];
    tokio::time::timeout(BOUND, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got[0], 0x16, "handshake record: {got:02x?}");
    assert_eq!(got[5], 0x02, "ServerHello: {got:02x?}");
    no_calls(&env);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_certificate_from_the_configured_ca() {
    let pki = Pki::new();
    let env = start_with(Some(pki.config(true))).await;
    let all = [&rustls::version::TLS13, &rustls::version::TLS12];
    let path = action_path(&env, "kiosk-phone");
    let t = token(&env, "alice");

    for (what, identity) in [("no certificate", None), ("rogue CA", Some(&pki.rogue))] {
        for versions in [
            &[&rustls::version::TLS13][..],
            &[&rustls::version::TLS12][..],
        ] {
            // TLS 1.3 clients finish their side before the server rejects the certificate, so
            // the refusal may only show on the first request.
            let outcome = match handshake(
                &env,
                client_config(&pki, &[b"http/1.1"], identity, versions),
            )
            .await
            {
                Err(_) => Err("handshake refused".to_string()),
                Ok(tls) => post(tls, &path, Some(&t)).await,
            };
            assert!(outcome.is_err(), "{what} over {versions:?}: {outcome:?}");
        }
    }
    no_calls(&env);
    assert!(
        decision_records(&env).is_empty(),
        "refused before any request"
    );

    let tls = handshake(&env, client_config(&pki, &[b"h2"], Some(&pki.client), &all))
        .await
        .unwrap();
    assert_eq!(post(tls, &path, Some(&t)).await, Ok(204));
    let d = decision_records(&env);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["client_cert_subject"], "CN=helpdesk-01,O=Contoso");
    assert_eq!(d[0]["decision"], "allow");
    assert_eq!(env.sandbox.recover_passcode_calls().len(), 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificate_is_served_without_restart_and_broken_files_are_ignored() {
    let pki = Pki::new();
    let env = start_with(Some(pki.config(false))).await;
    let reloader = env.tls.clone().expect("TLS configured");
    let all = [&rustls::version::TLS13, &rustls::version::TLS12];
    let cfg = || client_config(&pki, &[b"http/1.1"], None, &all);
    let served = |tls: &Tls| tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();

    assert_eq!(reloader.reload_now().unwrap(), Reload::Unchanged);
    let before = handshake(&env, cfg()).await.unwrap();
    assert_eq!(served(&before), pki.server_der);

    // Renewal: new key, new serial, new CN.
    let (cert, key, renewed_der) = leaf(
        &pki.ca,
        "passgate-renewed",
        &["localhost", "127.0.0.1"],
        false,
        77,
    );
    std::fs::write(pki.path("server.pem"), &cert).unwrap();
    std::fs::write(pki.path("server.key"), &key).unwrap();
    assert_eq!(reloader.reload_now().unwrap(), Reload::Reloaded);
    let after = handshake(&env, cfg()).await.unwrap();
    assert_eq!(served(&after), renewed_der);
    assert_ne!(renewed_der, pki.server_der);
    assert_eq!(
        passgate::server::tls::subject_rfc4514(&renewed_der).as_deref(),
        Some("CN=passgate-renewed,O=Contoso")
    );
    // The connection made before the reload keeps working.
    assert_eq!(
        post(before, &action_path(&env, "kiosk-phone"), None).await,
        Ok(401)
    );

    // A half-written renewal (certificate of another key) is refused; the renewed one stays.
    let (other_cert, _, _) = leaf(&pki.ca, "half-written", &["localhost"], false, 78);
    std::fs::write(pki.path("server.pem"), &other_cert).unwrap();
    assert!(reloader.reload_now().is_err());
    std::fs::write(pki.path("server.pem"), "not a certificate").unwrap();
    assert!(reloader.reload_now().is_err());
    let still = handshake(&env, cfg()).await.unwrap();
    assert_eq!(served(&still), renewed_der);
    assert_eq!(
        post(still, &action_path(&env, "kiosk-phone"), None).await,
        Ok(401)
    );
    no_calls(&env);
    env.stop().await;
}

/// What a config reload that names other TLS files does (`runtime::Reloader` stages them with the
/// rest of the new configuration and installs them only when all of it is valid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_tls_files_named_by_a_reload_are_served_after_install() {
    let pki = Pki::new();
    let env = start_with(Some(pki.config(false))).await;
    let reloader = env.tls.clone().expect("TLS configured");
    let all = [&rustls::version::TLS13, &rustls::version::TLS12];
    let cfg = || client_config(&pki, &[b"http/1.1"], None, &all);
    let served = |tls: &Tls| tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let files = |cert: &str, key: &str| passgate::server::tls::TlsFiles {
        cert_file: pki.path(cert).into(),
        key_file: pki.path(key).into(),
        client_ca_file: None,
    };

    let (cert, key, moved_der) = leaf(
        &pki.ca,
        "passgate-moved",
        &["localhost", "127.0.0.1"],
        false,
        79,
    );
    std::fs::write(pki.path("moved.pem"), &cert).unwrap();
    std::fs::write(pki.path("moved.key"), &key).unwrap();
    // A set that does not load is refused at staging; nothing changes.
    assert!(reloader.stage(files("absent.pem", "moved.key")).is_err());
    assert_eq!(
        served(&handshake(&env, cfg()).await.unwrap()),
        pki.server_der
    );

    let staged = reloader.stage(files("moved.pem", "moved.key")).unwrap();
    assert_eq!(
        served(&handshake(&env, cfg()).await.unwrap()),
        pki.server_der,
        "staged is not served yet"
    );
    reloader.install(staged);
    assert_eq!(reloader.files(), files("moved.pem", "moved.key"));
    assert_eq!(served(&handshake(&env, cfg()).await.unwrap()), moved_der);
    // Later polls watch the new files, not the old ones.
    std::fs::write(pki.path("server.pem"), "not a certificate").unwrap();
    assert_eq!(reloader.reload_now().unwrap(), Reload::Unchanged);
    assert_eq!(served(&handshake(&env, cfg()).await.unwrap()), moved_der);
    no_calls(&env);
    env.stop().await;
}

#[test]
fn client_subject_is_rfc4514_with_escaping() {
    let ca_ = ca("Passgate Test CA");
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CountryName, "DE");
    p.distinguished_name
        .push(DnType::OrganizationName, "Contoso, Ltd");
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, "Help+desk");
    p.distinguished_name.push(DnType::CommonName, "Zoë #1 ");
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca_.issuer).unwrap();
    assert_eq!(
        passgate::server::tls::subject_rfc4514(cert.der()).as_deref(),
        Some("CN=Zoë #1\\ ,OU=Help\\+desk,O=Contoso\\, Ltd,C=DE")
    );
}

#[test]
fn missing_or_broken_tls_files_fail_at_start() {
    let pki = Pki::new();
    let files = |cert: &str, key: &str| passgate::server::tls::TlsFiles {
        cert_file: pki.dir.join(cert),
        key_file: pki.dir.join(key),
        client_ca_file: None,
    };
    assert!(passgate::server::TlsReloader::load(files("server.pem", "server.key")).is_ok());
    let e = passgate::server::TlsReloader::load(files("missing.pem", "server.key"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("missing.pem"), "{e}");
    std::fs::write(pki.dir.join("empty.pem"), "").unwrap();
    let e = passgate::server::TlsReloader::load(files("server.pem", "empty.pem"))
        .err()
        .unwrap();
    assert!(e.to_string().contains("private key"), "{e}");
    assert!(!e.to_string().contains("BEGIN"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_cut_off() {
    let pki = Pki::new();
    let text = pki.config(false).replacen(
        "  tls:\n",
        "  limits:\n    tls_handshake_timeout_seconds: 1\n  tls:\n",
        1,
    );
    let env = start_with(Some(text)).await;
    // Half a ClientHello record header, then nothing.
    let mut s = TcpStream::connect(gateway_addr(&env)).await.unwrap();
    let started = std::time::Instant::now();
    s.write_all(&[0x16, 0x03]).await.unwrap();
    let mut got = Vec::new();
    let r = tokio::time::timeout(BOUND, s.read_to_end(&mut got)).await;
    assert!(r.is_ok(), "connection closed within {BOUND:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    no_calls(&env);
    env.stop().await;
}
