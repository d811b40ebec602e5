//! Tests that start the sandbox and talk to it over real loopback HTTP, as the gateway will.
//! Shared client helpers live here; each file covers one emulator surface.

mod entra_tests;
mod graph_tests;
mod jwt_tests;
mod token_tests;

use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::{SampleTenant, Sandbox};

pub(super) struct Resp {
    pub(super) status: u16,
    pub(super) headers: HeaderMap,
    pub(super) body: Vec<u8>,
}

impl Resp {
    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(super) async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Resp {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = client
        .request(b.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

pub(super) async fn start() -> Sandbox {
    Sandbox::start(SampleTenant::contoso()).await.unwrap()
}

pub(super) fn token_url(sb: &Sandbox) -> String {
    format!(
        "{}/{}/oauth2/v2.0/token",
        sb.authority_url(),
        sb.tenant().tenant_id
    )
}

pub(super) fn form(pairs: &[(&str, &str)]) -> Vec<u8> {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
        .into_bytes()
}

pub(super) async fn post_token(sb: &Sandbox, pairs: &[(&str, &str)]) -> Resp {
    send(
        "POST",
        &token_url(sb),
        &[("content-type", "application/x-www-form-urlencoded")],
        form(pairs),
    )
    .await
}

/// An app token obtained the way the gateway will: client secret, Graph's .default scope.
pub(super) async fn app_token(sb: &Sandbox) -> String {
    let secret = sb.client_secret();
    let r = post_token(
        sb,
        &[
            ("client_id", &sb.tenant().gateway_app_client_id),
            ("scope", super::GRAPH_DEFAULT_SCOPE),
            ("client_secret", &secret),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["access_token"].as_str().unwrap().to_string()
}

pub(super) async fn graph(
    sb: &Sandbox,
    method: &str,
    path: &str,
    token: &str,
    body: &[u8],
) -> Resp {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("accept", "application/json")];
    if !token.is_empty() {
        headers.push(("authorization", auth.as_str()));
    }
    if !body.is_empty() {
        headers.push(("content-type", "application/json"));
    }
    send(
        method,
        &format!("{}{path}", sb.graph_url()),
        &headers,
        body.to_vec(),
    )
    .await
}
