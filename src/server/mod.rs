//! Assembles the gateway from validated settings and serves it: TCP (or TLS via rustls) with
//! hyper-util's auto HTTP/1.1 + HTTP/2 builder, wrapped in tower-http layers (panic catch,
//! sensitive `Authorization`). It never serves anything but the pipeline on the gateway port.

use crate::audit::AuditLog;
use crate::auth::{keys::KeyStore, AuthSettings, Authenticator};
use crate::config::{AssertionFormat, Settings};
use crate::graph::facts::FactsClient;
use crate::graph::forward::Forwarder;
use crate::graph::token::{AppCredential, AppTokenProvider};
use crate::outbound;
use crate::pipeline::Gateway;
use crate::policy::{PolicySet, RateLimiter};
use crate::telemetry::Metrics;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("secret {what}: {detail}")]
    Secret { what: &'static str, detail: String },
    #[error("certificate credential: {0}")]
    Certificate(String),
    #[error("outbound client: {0}")]
    Client(#[from] outbound::ClientBuildError),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("listener {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS: {0}")]
    Tls(String),
}

fn app_credential(settings: &Settings) -> Result<AppCredential, StartError> {
    if let Some(secret) = &settings.app.client_secret {
        let s = secret.resolve().map_err(|e| StartError::Secret {
            what: "app.client_secret",
            detail: e.to_string(),
        })?;
        return Ok(AppCredential::Secret(s.expose().to_string()));
    }
    let cert = settings.app.certificate.as_ref().ok_or_else(|| {
        StartError::Certificate("neither client_secret nor certificate set".into())
    })?;
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rustls_pki_types::pem::PemObject;
    let cert_der = rustls_pki_types::CertificateDer::from_pem_file(&cert.cert_file)
        .map_err(|e| StartError::Certificate(format!("{}: {e}", cert.cert_file)))?
        .to_vec();
    let pem = cert.private_key.resolve().map_err(|e| StartError::Secret {
        what: "app.certificate.private_key",
        detail: e.to_string(),
    })?;
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem.expose())
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem.expose()))
        .map_err(|_| {
            StartError::Certificate("private key is not an RSA PKCS#8 or PKCS#1 PEM key".into())
        })?;
    Ok(AppCredential::Certificate {
        cert_der,
        key: Box::new(key),
        ps256: cert.assertion_format == AssertionFormat::Ps256,
    })
}

/// Builds every component from settings. Fetches the signing keys once (a failure is logged and
/// retried on demand: requests get `keys_unavailable` until Entra answers).
pub async fn build_gateway(
    settings: &Settings,
    limiter: Arc<RateLimiter>,
    metrics: Metrics,
) -> Result<Gateway, StartError> {
    let ep = &settings.endpoints;
    let client = outbound::build_client(ep.extra_ca_file.as_deref())?;
    let read_timeout = Duration::from_secs(settings.graph.read_timeout_seconds);
    let oa = &settings.operator_auth;
    let keys = KeyStore::new(
        client.clone(),
        ep.oidc_discovery_url.clone(),
        read_timeout,
        oa.jwks_refresh_floor,
        oa.jwks_max_age,
    );
    if let Err(e) = keys.refresh_if_allowed().await {
        tracing::error!(error = %e, "could not fetch operator-token signing keys at start-up");
    }
    let auth = Authenticator::new(
        AuthSettings {
            tenant_id: settings.tenant_id.clone(),
            audiences: oa.audiences.clone(),
            accept_v1: oa.accept_v1,
            accept_v2: oa.accept_v2,
            v1_issuer: ep.v1_issuer.clone(),
            algorithms: oa.algorithms.clone(),
            token_types: oa.token_types.clone(),
            leeway: oa.leeway,
            required_scope: oa.required_scope.clone(),
        },
        keys,
    );
    let tokens = AppTokenProvider::new(
        client.clone(),
        ep.token_url.clone(),
        settings.app.client_id.clone(),
        ep.graph_scope.clone(),
        app_credential(settings)?,
        read_timeout,
        Duration::from_secs(settings.graph.token_refresh_ahead_seconds),
    );
    let facts = FactsClient::new(
        client.clone(),
        ep.graph.clone(),
        tokens.clone(),
        read_timeout,
        Duration::from_secs(settings.graph.facts_cache_ttl_seconds),
    );
    let forwarder = Forwarder::new(
        client,
        ep.graph.clone(),
        tokens.clone(),
        Duration::from_secs(settings.graph.action_timeout_seconds),
    );
    let audit = AuditLog::open(std::path::Path::new(&settings.audit.path))
        .map_err(|e| StartError::Audit(format!("{}: {e}", settings.audit.path)))?;
    Ok(Gateway {
        auth,
        policies: PolicySet::new(settings.policies.clone()),
        limiter,
        facts,
        forwarder,
        tokens,
        audit,
        metrics,
    })
}

/// Loads the rustls server config for the gateway listener (HTTP/2 and HTTP/1.1 via ALPN).
pub fn tls_acceptor(
    cert_file: &str,
    key_file: &str,
) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    use rustls_pki_types::pem::PemObject;
    outbound::install_crypto_provider();
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| StartError::Tls(format!("{cert_file}: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| StartError::Tls(format!("{cert_file}: {e}")))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| StartError::Tls(format!("{key_file}: {e}")))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StartError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| StartError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

pub async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// Accepts connections until `shutdown` resolves, then lets in-flight connections finish.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gw = gateway.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(s) => serve_connection(gw, TokioIo::new(s), peer, watcher).await,
                    Err(e) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                },
                None => serve_connection(gw, TokioIo::new(stream), peer, watcher).await,
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn serve_connection<I>(
    gw: Arc<Gateway>,
    io: I,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let gw = gw.clone();
        async move { Ok::<_, std::convert::Infallible>(gw.handle(req, peer.ip()).await) }
    });
    let svc = tower::ServiceBuilder::new()
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(
            tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new([
                http::header::AUTHORIZATION,
            ]),
        )
        .service(svc);
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024);
    builder.http2().max_header_list_size(64 * 1024);
    let conn = builder.serve_connection(io, svc);
    let conn = watcher.watch(conn.into_owned());
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}
