//! Loopback HTTP plumbing shared by both emulators: accept loop, body collection, dispatch to
//! a synchronous handler, and recording of every exchange. It must never bind anything but
//! 127.0.0.1 and never log request contents.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming as HyperBody;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use super::{entra, graph, Fault, RecordedCall, Shared};

/// Request bodies above this are refused; nothing the emulator serves needs more.
const MAX_BODY: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Entra,
    Graph,
}

/// A fully read request, handed to the synchronous handlers.
pub(crate) struct Incoming {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Incoming {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Decoded query pairs (`+` and `%XX` decoded).
    pub(crate) fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .as_deref()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
            .unwrap_or_default()
    }
}

pub(crate) type Reply = Response<Full<Bytes>>;

pub(crate) fn reply(status: StatusCode, content_type: Option<&str>, body: Vec<u8>) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        set_header(&mut r, "content-type", ct);
    }
    r
}

pub(crate) fn set_header(r: &mut Reply, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

/// RFC 7231 IMF-fixdate, as in the `Date` header.
pub(crate) fn http_date() -> String {
    chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// Runs the accept loop. With `stop`, signalling it closes the listener and ends every open
/// connection before the task finishes (so a caller awaiting the task knows they are closed).
pub(crate) fn spawn(
    listener: TcpListener,
    shared: Arc<Shared>,
    side: Side,
    stop: Option<oneshot::Receiver<()>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Connections live in this set so aborting the accept loop also ends them.
        let mut conns = JoinSet::new();
        let stopped = async move {
            match stop {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = &mut stopped => {
                    drop(listener);
                    conns.shutdown().await;
                    return;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        conns.spawn(serve_conn(stream, shared.clone(), side));
                    }
                    // Out of descriptors and the like: back off instead of spinning.
                    Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

async fn serve_conn(stream: TcpStream, shared: Arc<Shared>, side: Side) {
    let svc = service_fn(move |req: Request<HyperBody>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(&shared, side, req).await) }
    });
    // A client hanging up mid-request is not our problem to report.
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

async fn handle(shared: &Shared, side: Side, req: Request<HyperBody>) -> Reply {
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".to_string());
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let (body, response) = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => {
            let incoming = Incoming {
                method: parts.method.clone(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().map(str::to_string),
                headers: parts.headers,
                body: collected.to_bytes(),
            };
            let response = match side {
                Side::Entra => entra::handle(shared, &incoming),
                Side::Graph => graph::handle(shared, &incoming),
            };
            (incoming.body.to_vec(), response)
        }
        Err(_) => (
            Vec::new(),
            reply(StatusCode::PAYLOAD_TOO_LARGE, None, Vec::new()),
        ),
    };
    let call = RecordedCall {
        method: parts.method.as_str().to_string(),
        path_and_query,
        headers,
        body,
        status: response.status().as_u16(),
    };
    let delay = {
        let mut st = shared.lock();
        let delay = match (side, &st.fault) {
            (Side::Graph, Fault::ActionDelay(d))
                if call.method == "POST"
                    && graph::is_recover_passcode_path(&call.path_and_query) =>
            {
                Some(*d)
            }
            (Side::Entra, Fault::TokenEndpointDelay(d))
                if call.path_and_query.contains("/oauth2/") && call.method == "POST" =>
            {
                Some(*d)
            }
            _ => None,
        };
        match side {
            Side::Entra => st.entra_calls.push(call),
            Side::Graph => st.graph_calls.push(call),
        }
        delay
    };
    // Recorded before the delay: the call reached the emulator even if the client gives up.
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    response
}
