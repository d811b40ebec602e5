//! Serves the gateway: TCP or TLS (see [`tls`]) with
//! hyper-util's HTTP/1.1 + HTTP/2 builder under connection limits ([`conn`]), wrapped in
//! tower-http layers (panic catch, sensitive `Authorization`). It never serves anything but the
//! pipeline on the gateway port, and never believes `X-Forwarded-For` from an untrusted peer.

use crate::config::{ServerSettings, Settings, TlsConfig};
use crate::outbound;
use crate::pipeline::ConnInfo;
use crate::runtime::Live;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub mod client_ip;
pub mod conn;
pub mod tls;

pub use tls::{Reload, TlsReloader};

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

/// Loads the listener's TLS configuration (see [`tls`]); the returned reloader is polled by
/// [`serve`] every `server.tls.reload_interval_seconds`.
pub fn tls_acceptor(tls: &TlsConfig) -> Result<Arc<TlsReloader>, StartError> {
    TlsReloader::load(tls.into())
        .map(Arc::new)
        .map_err(|e| StartError::Tls(e.to_string()))
}

pub async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// How the listener serves: TLS (or plain HTTP) and the connection limits.
#[derive(Clone)]
pub struct ServeOptions {
    pub tls: Option<Arc<TlsReloader>>,
    pub server: ServerSettings,
}

impl ServeOptions {
    /// From validated settings: loads the TLS files if `server.tls` is configured.
    pub fn from_settings(settings: &Settings) -> Result<ServeOptions, StartError> {
        Ok(ServeOptions {
            tls: settings.tls.as_ref().map(tls_acceptor).transpose()?,
            server: settings.server.clone(),
        })
    }
}

/// Accepts connections until `shutdown` resolves, then lets in-flight connections finish.
///
/// At most `max_connections` connections are served at once. Over the limit passgate stops
/// calling `accept()` rather than accepting and closing: waiting clients sit in the kernel's
/// listen backlog at no cost to us and are served as soon as a slot frees, instead of getting a
/// reset they would retry in a tight loop.
pub async fn serve(
    live: Arc<Live>,
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(opts.server.max_connections));
    let watcher_task = opts
        .tls
        .as_ref()
        .map(|t| t.spawn_watcher(opts.server.tls_reload_interval));
    let limits = Arc::new(opts.server);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break, // the semaphore is never closed
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning on the error.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let gw = live.clone();
        let acceptor = opts.tls.as_ref().map(|t| t.acceptor());
        let limits = limits.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            match acceptor {
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(stream))
                            .await;
                    match handshake {
                        Ok(Ok(s)) => {
                            let (_, session) = s.get_ref();
                            let subject = tls::client_cert_subject(session);
                            let proto = match session.alpn_protocol() {
                                Some(b"h2") => Proto::H2,
                                _ => Proto::H1,
                            };
                            serve_connection(gw, s, peer, subject, proto, &limits, watcher).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => {
                    serve_connection(gw, stream, peer, None, Proto::Auto, &limits, watcher).await
                }
            }
        });
    }
    if let Some(t) = watcher_task {
        t.abort();
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Which HTTP versions a connection may speak: decided by ALPN under TLS (so a client cannot
/// switch to a protocol it did not negotiate), sniffed on plain HTTP (h2 prior knowledge only;
/// `Upgrade: h2c` is never honoured).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
    Auto,
}

async fn serve_connection<S>(
    gw: Arc<Live>,
    stream: S,
    peer: SocketAddr,
    client_cert_subject: Option<String>,
    proto: Proto,
    limits: &ServerSettings,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = conn::Activity::new(limits.header_read_timeout, limits.idle_timeout);
    let io = TokioIo::new(conn::TimedIo::new(stream, activity.clone()));
    let proxies = Arc::new(limits.trusted_proxies.clone());
    let body_within = limits.header_read_timeout;
    let svc = tower::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let in_flight = activity.begin();
        // hyper builds HTTP/2 request URIs from :scheme/:authority/:path; the pipeline reads a
        // scheme as an HTTP/1.1 absolute-form target and refuses it, so hand it the origin form.
        if req.version() == http::Version::HTTP_2 {
            if let Some(pq) = req.uri().path_and_query().cloned() {
                *req.uri_mut() = http::Uri::from(pq);
            }
        }
        // The gateway in force when the request arrived serves it to the end, across reloads.
        let gw = gw.get();
        let conn = ConnInfo {
            client_ip: client_ip::client_ip(peer.ip(), req.headers(), &proxies),
            client_cert_subject: client_cert_subject.clone(),
        };
        let refuse = req.version() <= http::Version::HTTP_11
            && req.headers().contains_key(http::header::TRANSFER_ENCODING);
        let req = req.map(|b| conn::TimedBody::new(b, body_within, refuse));
        // Each request runs to its end in its own task: if the client hangs up after the
        // decision record is durable, the forward (if any) and its outcome record still complete.
        let work = tokio::spawn(async move { gw.handle(req, conn).await });
        async move {
            let resp = match work.await {
                Ok(resp) => resp,
                Err(_) => {
                    let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    r
                }
            };
            drop(in_flight);
            Ok::<_, std::convert::Infallible>(resp)
        }
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
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = match proto {
        Proto::H1 => builder.http1_only(),
        Proto::H2 => builder.http2_only(),
        Proto::Auto => builder,
    };
    let conn = builder.serve_connection(io, svc);
    let conn = watcher.watch(conn.into_owned());
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}
