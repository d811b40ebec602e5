//! passgate's own credential: certificate (`private_key_jwt`) in both forms Entra accepts.

use crate::common::*;
use base64::Engine;
use rsa::pkcs8::{EncodePrivateKey, LineEnding};

/// A PEM "certificate" whose DER bytes are fixed: the emulator (like Entra) only hashes the DER
/// for the thumbprint, and passgate only needs the bytes to compute it.
fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let body: Vec<String> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).to_string())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

async fn run(format: &str) {
    let dir = tempfile::tempdir().unwrap();
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).unwrap();
    let key_pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
    let cert_der: Vec<u8> = (0u8..=255).cycle().take(700).collect();
    let cert_path = dir.path().join("app.crt");
    let key_path = dir.path().join("app.key");
    std::fs::write(&cert_path, pem("CERTIFICATE", &cert_der)).unwrap();
    std::fs::write(&key_path, key_pem.as_bytes()).unwrap();
    let cfg = passgate::dev::DEV_CONFIG.replace(
        "  client_secret: \"env:PASSGATE_SANDBOX_CLIENT_SECRET\"",
        &format!(
            "  certificate:\n    cert_file: \"{}\"\n    private_key: \"file:{}\"\n    assertion_format: {format}",
            cert_path.display(),
            key_path.display()
        ),
    );
    assert!(cfg.contains("assertion_format"));
    let env = start_with(Some(cfg)).await;
    env.sandbox
        .register_app_certificate(&cert_der, rsa::RsaPublicKey::from(&key));
    let alice = token(&env, "alice");
    let r = send(
        "POST",
        &action_url(&env, "kiosk-phone"),
        &[bearer(&alice)],
        b"",
    )
    .await;
    assert_eq!(
        r.status,
        204,
        "{format}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let token_calls: Vec<_> = env
        .sandbox
        .entra_calls()
        .into_iter()
        .filter(|c| c.path_and_query.ends_with("/oauth2/v2.0/token"))
        .collect();
    assert_eq!(token_calls.len(), 1, "one token request, then cached");
    let body = String::from_utf8_lossy(&token_calls[0].body).to_string();
    assert!(body.contains("client_assertion="), "{body}");
    assert!(!body.contains("client_secret"), "no secret sent: {body}");
    assert_eq!(token_calls[0].status, 200);
    // The private key never leaves: not in the audit file, not in the request.
    let audit = std::fs::read_to_string(&env.audit_log).unwrap();
    assert!(!audit.contains("PRIVATE KEY") && !body.contains("PRIVATE"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_credential_ps256_with_sha256_thumbprint() {
    run("ps256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_credential_rs256_with_sha1_thumbprint() {
    run("rs256").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_client_secret_fails_closed_with_app_token_unavailable() {
    let env = start().await;
    env.sandbox
        .set_fault(passgate::sandbox::Fault::TokenEndpointStatus(401));
    let alice = token(&env, "alice");
    let r = send(
        "POST",
        &action_url(&env, "kiosk-phone"),
        &[bearer(&alice)],
        b"",
    )
    .await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        ["device_facts_unavailable", "app_token_unavailable"].contains(&r.code().as_str()),
        "{}",
        r.code()
    );
    assert!(env.sandbox.recover_passcode_calls().is_empty());
    assert!(!String::from_utf8_lossy(&r.body).contains(&env.sandbox.client_secret()));
    env.stop().await;
}
