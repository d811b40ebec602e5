//! The admin listener: `/metrics` (Prometheus text format), `/healthz` (the process is alive)
//! and `/readyz` (ready to serve: keys fetched, app token obtainable, audit writable). It is a
//! separate port, loopback by default, and never serves the privileged action.

use crate::pipeline::Gateway;
use crate::runtime::Live;
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use tokio::net::TcpListener;

/// One readiness check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Runs every readiness check. Cheap: the app token and keys are cached.
pub async fn readiness(gw: &Gateway) -> Vec<Check> {
    let mut checks = vec![Check {
        name: "config",
        ok: true,
        detail: format!("{} policies loaded", gw.policies.policies().len()),
    }];
    if !gw.auth.keys().has_keys() {
        // Try once more now: the floor keeps probes from hammering Entra.
        let _ = gw.auth.keys().refresh_if_allowed().await;
    }
    let keys = gw.auth.keys().has_keys();
    checks.push(Check {
        name: "jwks",
        ok: keys,
        detail: if keys {
            "operator-token signing keys fetched".into()
        } else {
            "no signing keys: OIDC discovery / JWKS unreachable".into()
        },
    });
    let token = gw.tokens.token().await;
    checks.push(Check {
        name: "app_token",
        ok: token.is_ok(),
        detail: match token {
            Ok(_) => "app token obtainable".into(),
            Err(e) => e.to_string(),
        },
    });
    let audit = gw.audit.healthy();
    checks.push(Check {
        name: "audit",
        ok: audit,
        detail: if audit {
            "audit log writable".into()
        } else {
            "audit log is failing writes (requests fail closed)".into()
        },
    });
    checks
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

pub async fn route(gw: &Gateway, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match path {
        "/metrics" => {
            gw.sync_metrics();
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                gw.metrics.encode(),
            )
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let checks = readiness(gw).await;
            let ready = checks.iter().all(|c| c.ok);
            let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
            for c in &checks {
                body.push_str(&format!(
                    "{} {}: {}\n",
                    if c.ok { "ok  " } else { "FAIL" },
                    c.name,
                    c.detail
                ));
            }
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, "text/plain; charset=utf-8", body)
        }
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve(
    live: Arc<Live>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning a core.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let live = live.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let gw = live.get();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            route(&gw, req.method(), req.uri().path()).await,
                        )
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
