//! Serves the gateway: TCP (or TLS via rustls) with
//! hyper-util's auto HTTP/1.1 + HTTP/2 builder, wrapped in tower-http layers (panic catch,
//! sensitive `Authorization`). It never serves anything but the pipeline on the gateway port.

use crate::outbound;
use crate::runtime::Live;
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
    live: Arc<Live>,
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
        let gw = live.clone();
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
    gw: Arc<Live>,
    io: I,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let gw = gw.clone();
        // The gateway in force when the request arrived serves it to the end, across reloads.
        let gateway = gw.get();
        async move { Ok::<_, std::convert::Infallible>(gateway.handle(req, peer.ip()).await) }
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
