//! The one outbound HTTP stack: a hyper-util client over rustls (ring provider, webpki roots plus
//! an optional extra CA file), shared by discovery/JWKS, the token endpoint, device facts and the
//! forward. It never retries a request on its own and never logs request headers (they carry tokens).

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;

pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("cannot read extra CA file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("extra CA file {path} holds no usable PEM certificate")]
    CaEmpty { path: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Installs the process-wide rustls provider once. Safe to call many times.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the outbound client. `http://` works too (config validation admits it only for loopback).
pub fn build_client(extra_ca_file: Option<&str>) -> Result<HttpsClient, ClientBuildError> {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca_file {
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(path).map_err(|source| ClientBuildError::CaFile {
            path: path.to_string(),
            source,
        })?;
        let mut added = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem).flatten() {
            if roots.add(cert).is_ok() {
                added += 1;
            }
        }
        if added == 0 {
            return Err(ClientBuildError::CaEmpty {
                path: path.to_string(),
            });
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        // Never replay a request on our own, not even one hyper believes was never sent.
        .retry_canceled_requests(false)
        .build(connector))
}

/// A fully read response.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("response body exceeded {0} bytes")]
    TooLarge(usize),
    #[error("reading response body: {0}")]
    Body(String),
}

/// Sends one request and reads the whole response (body capped at `max_body`), all within `timeout`.
pub async fn fetch(
    client: &HttpsClient,
    req: Request<Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
) -> Result<Fetched, FetchError> {
    let work = async {
        let resp = client.request(req).await.map_err(|e| {
            // hyper-util's error Display is generic; include the source chain (no headers in it).
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            FetchError::Connect(msg)
        })?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    FetchError::TooLarge(max_body)
                } else {
                    FetchError::Body(e.to_string())
                }
            })?
            .to_bytes();
        Ok(Fetched {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout(timeout)),
    }
}

/// A GET with an optional bearer token.
pub fn get(url: &str, bearer: Option<&str>) -> Result<Request<Full<Bytes>>, http::Error> {
    let mut b = Request::get(url).header(http::header::ACCEPT, "application/json");
    if let Some(t) = bearer {
        b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Full::new(Bytes::new()))
}

/// `https://` anywhere, `http://` only to a loopback host. The same rule config validation applies.
pub fn url_is_acceptable(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    match u.scheme() {
        "https" => u.host().is_some(),
        "http" => match u.host() {
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        },
        _ => false,
    }
}
