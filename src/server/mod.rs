//! The accept loop shared by the gateway and admin listeners: TCP or TLS (see [`tls`]) with
//! hyper-util's HTTP/1.1 + HTTP/2 builder under connection limits ([`conn`]), wrapped in
//! tower-http layers (panic catch, sensitive `Authorization`). What a request gets is up to the
//! [`App`] it is handed to; this module knows nothing of gateways or reloads beyond the listener
//! settings in [`ServeOptions`], which a reload may replace. It never believes
//! `X-Forwarded-For` from an untrusted peer.

use crate::config::{ServerSettings, Settings, TlsConfig};
use crate::lifecycle::ConnInfo;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

pub mod client_ip;
pub mod conn;
pub mod requests;
pub mod tls;

pub use tls::{Reload, TlsError, TlsFiles, TlsReloader};

/// A request as an [`App`] receives it: the body time-bounded (see [`conn::TimedBody`]).
pub type Request = http::Request<conn::TimedBody<hyper::body::Incoming>>;
/// What an [`App`] answers.
pub type Reply = http::Response<Full<Bytes>>;

/// What a listener serves. Each request is handed over in its own task.
pub trait App: Send + Sync + 'static {
    fn call(&self, req: Request, conn: ConnInfo) -> Pin<Box<dyn Future<Output = Reply> + Send>>;

    /// The answer to a request that found every request slot of the listener taken
    /// (`server.limits.max_requests_in_flight`). Called on the connection's own task, with no
    /// task of its own: it must answer at once and never wait.
    fn shed(&self, req: Request, conn: ConnInfo) -> Reply {
        let _ = (req, conn);
        busy_reply()
    }
}

/// What a request shed at the request cap is told, on every listener.
pub const BUSY_MESSAGE: &str =
    "passgate is serving as many requests as it is configured to; nothing was done, retry in 1 s";

/// `503 gateway_busy` in Graph's error shape with `Retry-After: 1` and a `request-id`, for
/// listeners that keep no record of shed requests (the admin and console listeners count them
/// in `passgate_shed_requests_total` only).
pub fn busy_reply() -> Reply {
    let request_id = uuid::Uuid::new_v4().to_string();
    let reason = crate::error::Reason::GatewayBusy;
    let body = crate::error::graph_error_json(
        reason.as_str(),
        BUSY_MESSAGE,
        &request_id,
        &request_id,
        chrono::Utc::now(),
    );
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = reason.status();
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(http::header::RETRY_AFTER, http::HeaderValue::from(1u32));
    if let Ok(v) = http::HeaderValue::from_str(&request_id) {
        h.insert(crate::headers::REQUEST_ID, v);
    }
    r
}

#[derive(Debug, thiserror::Error)]
#[error("listener {addr}: {source}")]
pub struct ListenError {
    pub addr: String,
    #[source]
    pub source: std::io::Error,
}

/// Loads the listener's TLS configuration (see [`tls`]); the returned reloader is polled by
/// [`serve`] every `server.tls.reload_interval_seconds`.
pub fn tls_acceptor(tls: &TlsConfig) -> Result<Arc<TlsReloader>, TlsError> {
    TlsReloader::load(tls.into()).map(Arc::new)
}

pub async fn bind(addr: &str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|source| ListenError {
        addr: addr.to_string(),
        source,
    })
}

/// How a listener serves: TLS (or plain HTTP), and the `server:` settings in force. A reload
/// replaces the settings through [`ServeOptions::set_server`]; every clone shares them, so the
/// gateway and admin listeners follow the same limits.
#[derive(Clone)]
pub struct ServeOptions {
    pub tls: Option<Arc<TlsReloader>>,
    server: Arc<watch::Sender<Arc<ServerSettings>>>,
}

impl ServeOptions {
    /// From validated settings: loads the TLS files if `server.tls` is configured.
    pub fn from_settings(settings: &Settings) -> Result<ServeOptions, TlsError> {
        Ok(ServeOptions {
            tls: settings.tls.as_ref().map(tls_acceptor).transpose()?,
            ..ServeOptions::plain(settings.server.clone())
        })
    }

    /// Plain HTTP with these settings.
    pub fn plain(server: ServerSettings) -> ServeOptions {
        ServeOptions {
            tls: None,
            server: Arc::new(watch::Sender::new(Arc::new(server))),
        }
    }

    /// The same settings (shared, reloads included) without TLS: the admin listener's.
    pub fn without_tls(&self) -> ServeOptions {
        ServeOptions {
            tls: None,
            server: self.server.clone(),
        }
    }

    /// The settings in force: a new connection reads its limits here once, a new request its
    /// trusted proxies.
    pub fn server(&self) -> Arc<ServerSettings> {
        self.server.borrow().clone()
    }

    /// Replaces the settings (a reload). Connections already open keep the limits they were
    /// accepted with; the connection limit applies to the next accept at once.
    pub fn set_server(&self, server: ServerSettings) {
        self.server.send_replace(Arc::new(server));
    }
}

/// Connections being served, against a limit that may change while waiting.
#[derive(Default)]
struct Slots {
    used: Mutex<usize>,
    freed: Notify,
}

/// One connection's place; freed on drop.
struct Slot(Arc<Slots>);

impl Slots {
    fn try_take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        let mut used = match self.used.lock() {
            Ok(u) => u,
            Err(p) => p.into_inner(),
        };
        (*used < max).then(|| {
            *used += 1;
            Slot(self.clone())
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        match self.0.used.lock() {
            Ok(mut u) => *u = u.saturating_sub(1),
            Err(p) => {
                let mut u = p.into_inner();
                *u = u.saturating_sub(1);
            }
        }
        // Stores a permit when the accept loop is not waiting yet, so no wake-up is lost.
        self.0.freed.notify_one();
    }
}

/// Accepts connections until `shutdown` resolves, then lets in-flight connections finish.
///
/// At most `max_connections` connections are served at once. Over the limit passgate stops
/// calling `accept()` rather than accepting and closing: waiting clients sit in the kernel's
/// listen backlog at no cost to us and are served as soon as a slot frees, instead of getting a
/// reset they would retry in a tight loop. The limit is read from the settings in force, so a
/// reload that raises it lets waiting clients in at once.
pub async fn serve(
    app: Arc<dyn App>,
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(Slots::default());
    let request_slots = Arc::new(requests::RequestSlots::default());
    let mut settings = opts.server.subscribe();
    let watcher_task = opts.tls.as_ref().map(|t| {
        let opts = opts.clone();
        t.spawn_watcher(move || opts.server().tls_reload_interval)
    });
    tokio::pin!(shutdown);
    'accepting: loop {
        let permit = loop {
            let freed = slots.freed.notified();
            let max = settings.borrow_and_update().max_connections;
            if let Some(slot) = slots.try_take(max) {
                break slot;
            }
            tokio::select! {
                _ = freed => {}
                // The sender lives in `opts`, held here: `changed` only returns on a new value.
                _ = settings.changed() => {}
                _ = &mut shutdown => break 'accepting,
            }
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
        let app = app.clone();
        let acceptor = opts.tls.as_ref().map(|t| t.acceptor());
        let opts = opts.clone();
        let watcher = graceful.watcher();
        let request_slots = request_slots.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let limits = opts.server();
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
                            let c = Connection {
                                peer,
                                subject,
                                proto,
                                request_slots,
                            };
                            // Boxed: each kind of connection allocates only its own state,
                            // not the larger of the TLS and plaintext futures.
                            Box::pin(serve_connection(app, s, c, &limits, opts, watcher)).await
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => {
                    let c = Connection {
                        peer,
                        subject: None,
                        proto: Proto::Auto,
                        request_slots,
                    };
                    Box::pin(serve_connection(app, stream, c, &limits, opts, watcher)).await
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

/// What is known about an accepted connection before its first request.
struct Connection {
    peer: SocketAddr,
    /// Subject of the verified mTLS client certificate.
    subject: Option<String>,
    proto: Proto,
    /// The listener's request tasks, shared by all its connections.
    request_slots: Arc<requests::RequestSlots>,
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

/// A request handed to its own task, or answered at once because no request slot was free.
enum Work {
    Spawned(tokio::task::JoinHandle<Reply>),
    Shed(Reply),
}

async fn serve_connection<S>(
    app: Arc<dyn App>,
    stream: S,
    c: Connection,
    limits: &ServerSettings,
    opts: ServeOptions,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Connection {
        peer,
        subject: client_cert_subject,
        proto,
        request_slots,
    } = c;
    let activity = conn::Activity::new(limits.header_read_timeout, limits.idle_timeout)
        .with_max_age(limits.max_connection_age);
    let io = TokioIo::new(
        conn::TimedIo::new(stream, activity.clone()).with_write_timeout(limits.write_timeout),
    );
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
        // Trusted proxies and limits as in force now: a proxy taken out by a reload is not
        // believed on the next request, even on a connection it opened before.
        let in_force = opts.server();
        let conn = ConnInfo {
            client_ip: client_ip::client_ip(peer.ip(), req.headers(), &in_force.trusted_proxies),
            client_cert_subject: client_cert_subject.clone(),
        };
        let refuse = req.version() <= http::Version::HTTP_11
            && req.headers().contains_key(http::header::TRANSFER_ENCODING);
        let req = req.map(|b| conn::TimedBody::new(b, body_within, refuse));
        // Each request runs to its end in its own task: if the client hangs up after the
        // decision record is durable, the forward (if any) and its outcome record still complete.
        // The task holds one of the listener's request slots until then; with none free the
        // request is answered at once, without a task.
        let work = match request_slots.try_take(in_force.max_requests_in_flight) {
            Some(slot) => {
                let call = app.call(req, conn);
                Work::Spawned(tokio::spawn(async move {
                    let _slot = slot;
                    call.await
                }))
            }
            None => Work::Shed(app.shed(req, conn)),
        };
        async move {
            let work = match work {
                Work::Spawned(task) => task.await,
                Work::Shed(resp) => Ok(resp),
            };
            let resp = match work {
                Ok(resp) => resp,
                Err(e) => {
                    // A bug, not input: the request's own task panicked. Answer in Graph's shape
                    // with an id to quote, and leave the details to the log.
                    let request_id = uuid::Uuid::new_v4().to_string();
                    tracing::error!(%request_id, error = %e, "request task failed");
                    let body = crate::error::graph_error_json(
                        "internal_error",
                        "passgate failed while serving this request; whether Graph acted is unknown if it was allowed, check the audit log",
                        &request_id,
                        &request_id,
                        chrono::Utc::now(),
                    );
                    let mut r =
                        http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
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
