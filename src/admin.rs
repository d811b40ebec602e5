//! The admin listener: `/metrics` (Prometheus text format), `/healthz` (the process is alive)
//! and `/readyz` (ready to serve: keys fetched, app token obtainable, audit writable, rate-limit
//! state answering; it also names config keys that changed but wait for a restart). It is a
//! separate port, loopback by
//! default, served by the same accept loop, connection limit and timeouts as the gateway
//! ([`crate::server::serve`]), and never serves the privileged action.

use crate::lifecycle::ConnInfo;
use crate::pipeline::Gateway;
use crate::runtime::Live;
use crate::server::{self, ServeOptions};
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
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
    checks.push(audit_disk(gw));
    let store = gw.limiter.store();
    let state = store.ping().await;
    checks.push(Check {
        name: "state",
        ok: state.is_ok(),
        detail: match state {
            Ok(()) => format!("rate-limit state ({}) answering", store.backend()),
            // Store errors name the server and the cause, never a credential.
            Err(e) => format!(
                "rate-limit state ({}) unavailable, requests fail closed: {e}",
                store.backend()
            ),
        },
    });
    checks
}

/// Free space on the audit filesystem against `audit.min_free_bytes`: failing before the disk is
/// full takes the replica out of rotation while an operator still has time to act.
fn audit_disk(gw: &Gateway) -> Check {
    let floor = gw.audit_min_free_bytes;
    let mib = |b: u64| b / (1024 * 1024);
    match gw.audit.free_bytes() {
        Ok(free) if floor == 0 => Check {
            name: "audit_disk",
            ok: true,
            detail: format!("{} MiB free (no floor set)", mib(free)),
        },
        Ok(free) => Check {
            name: "audit_disk",
            ok: free >= floor,
            detail: if free >= floor {
                format!("{} MiB free, floor {} MiB", mib(free), mib(floor))
            } else {
                format!(
                    "only {} MiB free on the audit filesystem, below audit.min_free_bytes ({} MiB); free space before the log fills the disk",
                    mib(free),
                    mib(floor)
                )
            },
        },
        Err(e) => Check {
            name: "audit_disk",
            ok: floor == 0,
            detail: format!("free space on the audit filesystem unknown: {e}"),
        },
    }
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

/// The `/readyz` line naming restart-only keys the config file changed (none: `None`). It does
/// not fail readiness: the process serves correctly, with the values it started with.
pub fn restart_note(pending: &[&str]) -> Option<String> {
    (!pending.is_empty()).then(|| {
        format!(
            "note restart_required: changed in the config file, applied only after a restart: {}\n",
            pending.join(", ")
        )
    })
}

pub async fn route(live: &Live, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match path {
        "/metrics" => {
            live.sync_metrics();
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                live.get().metrics.encode(),
            )
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => {
            let checks = readiness(&live.get()).await;
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
            if let Some(note) = restart_note(&live.restart_pending()) {
                body.push_str(&note);
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

/// The admin endpoints as an [`server::App`].
struct Admin(Arc<Live>);

impl server::App for Admin {
    fn call(
        &self,
        req: server::Request,
        _conn: ConnInfo,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = server::Reply> + Send>> {
        let live = self.0.clone();
        Box::pin(async move { route(&live, req.method(), req.uri().path()).await })
    }

    fn shed(&self, _req: server::Request, _conn: ConnInfo) -> server::Reply {
        self.0.shed_unrecorded(crate::telemetry::Listener::Admin)
    }
}

/// Serves the admin endpoints until `shutdown` resolves: plain HTTP, under the limits in `opts`
/// (the gateway's `server:` settings, reloads included) with a connection pool of its own, so a
/// flood on one port cannot take the other's slots.
pub async fn serve(
    live: Arc<Live>,
    listener: TcpListener,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    server::serve(
        Arc::new(Admin(live)),
        listener,
        opts.without_tls(),
        shutdown,
    )
    .await
}
