//! In-process emulator of Entra ID and Microsoft Graph for `passgate dev` and the tests.
//! Only loopback listeners. Never imported by the gateway's request path, and it never logs or
//! prints a secret or token (recorded calls redact them in `Debug`).

mod authorize;
mod claims;
mod crypto;
mod entra;
mod graph;
mod jwt;
mod server;
mod tenant;
mod token;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rsa::RsaPublicKey;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use tenant::{
    OperatorKind, SampleAdminUnit, SampleDevice, SampleGroup, SampleOperator, SampleTenant,
    CONSOLE_AUDITOR_ROLE, OPERATOR_APP_ROLE, OPERATOR_SCOPE, ZERO_GUID,
};

use jwt::KeyPair;

/// The Graph resource the emulated token endpoint issues app tokens for.
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
/// The only scope the emulated token endpoint accepts.
pub const GRAPH_DEFAULT_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Application permissions granted to passgate's privileged app by default.
pub const DEFAULT_APP_ROLES: [&str; 4] = [
    "DeviceManagementManagedDevices.PrivilegedOperations.All",
    "DeviceManagementManagedDevices.Read.All",
    "Device.Read.All",
    "GroupMember.Read.All",
];

/// Which access-token version to shape claims as (graph-notes §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenForm {
    V1,
    V2,
}

/// How `Sandbox::mint` signs. Everything but `Valid` must be refused by a correct verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// RS256 with the current published key.
    Valid,
    /// RS256 with a fresh key whose kid is not published.
    UnknownKey,
    /// Header alg "none", empty signature.
    AlgNone,
    /// HS256 keyed with the current public key's SPKI PEM text (key-confusion attack).
    Hs256WithPublicKey,
    /// A valid RS256 signature with some bytes flipped.
    CorruptSignature,
}

/// Fault switch for reliability tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// Every Graph call answers this status (with `Retry-After` if given).
    GraphStatus {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Only recoverPasscode POSTs answer this status (after authentication).
    ActionStatus {
        status: u16,
        retry_after: Option<u64>,
    },
    /// The token endpoint answers this status.
    TokenEndpointStatus(u16),
    /// The JWKS endpoints answer 503.
    JwksDown,
    /// recoverPasscode POSTs are recorded and answered as usual, but only after this delay: the
    /// action ran at "Graph" and the answer is late (a client timeout must not look like "not run").
    ActionDelay(Duration),
    /// The token endpoint answers (normally) after this delay.
    TokenEndpointDelay(Duration),
    /// Every Graph call except recoverPasscode answers 200 with a body that is not valid JSON.
    MalformedReads,
    /// Reads still see every device, but recoverPasscode answers Intune's 404: the device was
    /// deleted between the facts lookup and the action.
    DeviceGoneForAction,
    /// The token endpoint rejects the client secret as Entra does after the secret was removed
    /// from the app registration (401 `invalid_client`, AADSTS7000215).
    ClientSecretRejected,
}

/// One HTTP exchange as the emulator saw it.
#[derive(Clone, PartialEq, Eq)]
pub struct RecordedCall {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub status: u16,
}

impl RecordedCall {
    /// First value of the named header, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl std::fmt::Debug for RecordedCall {
    // Headers may carry bearer tokens or Basic credentials and token-endpoint bodies carry
    // client secrets, so Debug shows header names and the body length only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("RecordedCall")
            .field("method", &self.method)
            .field("path_and_query", &self.path_and_query)
            .field("header_names", &names)
            .field("body_len", &self.body.len())
            .field("status", &self.status)
            .finish()
    }
}

/// A certificate credential registered on passgate's privileged app.
#[derive(Clone)]
pub(crate) struct RegisteredCert {
    pub(crate) sha1: [u8; 20],
    pub(crate) sha256: [u8; 32],
    pub(crate) key: RsaPublicKey,
}

/// Mutable emulator state. Locked briefly, never across an await.
pub(crate) struct State {
    /// Published operator-token keys; the last one is current.
    pub(crate) signing_keys: Vec<KeyPair>,
    pub(crate) unknown_key: Option<KeyPair>,
    pub(crate) certs: Vec<RegisteredCert>,
    pub(crate) used_jtis: HashSet<String>,
    pub(crate) issued_app_tokens: Vec<String>,
    pub(crate) app_roles: Vec<String>,
    pub(crate) graph_calls: Vec<RecordedCall>,
    pub(crate) entra_calls: Vec<RecordedCall>,
    pub(crate) fault: Fault,
    /// Authorization codes issued to the console and not yet redeemed.
    pub(crate) codes: std::collections::HashMap<String, authorize::IssuedCode>,
    /// Redirect URIs registered on the console's app.
    pub(crate) redirect_uris: Vec<String>,
    /// ID tokens the authorization-code grant issued (tests look for them in logs).
    pub(crate) issued_id_tokens: Vec<String>,
}

impl State {
    pub(crate) fn current_key(&self) -> &KeyPair {
        // Invariant: `signing_keys` is never empty (start pushes one; rotation pushes before
        // retiring).
        &self.signing_keys[self.signing_keys.len() - 1]
    }
}

/// What the HTTP handlers share.
pub(crate) struct Shared {
    pub(crate) tenant: SampleTenant,
    pub(crate) authority_url: String,
    pub(crate) graph_url: String,
    pub(crate) client_secret: String,
    /// Secret of the console's app registration (random per start).
    pub(crate) console_client_secret: String,
    /// Signs Graph app tokens; deliberately not in any published JWKS.
    pub(crate) graph_key: KeyPair,
    pub(crate) state: Mutex<State>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not wedge every later request.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The Graph emulator's accept loop and the switch that stops it (for "connection refused").
struct GraphTask {
    handle: JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

/// Aborts the accept loops when the last `Sandbox` clone goes away.
struct TaskGuard {
    entra: JoinHandle<()>,
    graph: tokio::sync::Mutex<Option<GraphTask>>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.entra.abort();
        if let Some(g) = self.graph.get_mut().take() {
            g.handle.abort();
        }
    }
}

/// The running emulator. Clones share one emulator; dropping the last clone stops it.
#[derive(Clone)]
pub struct Sandbox {
    shared: Arc<Shared>,
    tasks: Arc<TaskGuard>,
}

fn spawn_graph(listener: TcpListener, shared: &Arc<Shared>) -> GraphTask {
    let (stop, stopped) = oneshot::channel();
    let handle = server::spawn(listener, shared.clone(), server::Side::Graph, Some(stopped));
    GraphTask { handle, stop }
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("authority_url", &self.shared.authority_url)
            .field("graph_url", &self.shared.graph_url)
            .finish_non_exhaustive()
    }
}

async fn generate_key() -> std::io::Result<KeyPair> {
    tokio::task::spawn_blocking(KeyPair::generate)
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)
}

impl Sandbox {
    /// Starts Entra and Graph emulators on two ephemeral 127.0.0.1 ports.
    pub async fn start(tenant: SampleTenant) -> std::io::Result<Sandbox> {
        let (signing, graph_key) = tokio::join!(generate_key(), generate_key());
        let (signing, graph_key) = (signing?, graph_key?);
        let entra_listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let graph_listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let authority_url = format!("http://{}", entra_listener.local_addr()?);
        let graph_url = format!("http://{}", graph_listener.local_addr()?);
        let shared = Arc::new(Shared {
            tenant,
            authority_url,
            graph_url,
            client_secret: token::random_client_secret(),
            console_client_secret: token::random_client_secret(),
            graph_key,
            state: Mutex::new(State {
                signing_keys: vec![signing],
                unknown_key: None,
                certs: Vec::new(),
                used_jtis: HashSet::new(),
                issued_app_tokens: Vec::new(),
                app_roles: DEFAULT_APP_ROLES.iter().map(|r| r.to_string()).collect(),
                graph_calls: Vec::new(),
                entra_calls: Vec::new(),
                fault: Fault::None,
                codes: std::collections::HashMap::new(),
                redirect_uris: Vec::new(),
                issued_id_tokens: Vec::new(),
            }),
        });
        let entra = server::spawn(entra_listener, shared.clone(), server::Side::Entra, None);
        let graph = spawn_graph(graph_listener, &shared);
        Ok(Sandbox {
            shared,
            tasks: Arc::new(TaskGuard {
                entra,
                graph: tokio::sync::Mutex::new(Some(graph)),
            }),
        })
    }

    /// Closes the Graph emulator's listener and every open connection to it, and returns once
    /// they are closed: from then on connecting to [`Sandbox::graph_url`] is refused.
    pub async fn stop_graph(&self) {
        let task = self.tasks.graph.lock().await.take();
        if let Some(g) = task {
            let _ = g.stop.send(());
            let _ = g.handle.await;
        }
    }

    /// Listens again on the same Graph address after [`Sandbox::stop_graph`] (no-op if running).
    pub async fn restart_graph(&self) -> std::io::Result<()> {
        let mut slot = self.tasks.graph.lock().await;
        if slot.is_none() {
            let addr = self
                .shared
                .graph_url
                .trim_start_matches("http://")
                .to_string();
            let listener = TcpListener::bind(addr).await?;
            *slot = Some(spawn_graph(listener, &self.shared));
        }
        Ok(())
    }

    /// `http://127.0.0.1:PORT` (no version, no trailing slash).
    pub fn graph_url(&self) -> String {
        self.shared.graph_url.clone()
    }

    /// `http://127.0.0.1:PORT`, the login host.
    pub fn authority_url(&self) -> String {
        self.shared.authority_url.clone()
    }

    pub fn tenant(&self) -> &SampleTenant {
        &self.shared.tenant
    }

    /// Secret of passgate's privileged app registration (random per start).
    pub fn client_secret(&self) -> String {
        self.shared.client_secret.clone()
    }

    /// Secret of the console's app registration (random per start).
    pub fn console_client_secret(&self) -> String {
        self.shared.console_client_secret.clone()
    }

    /// Registers a redirect URI on the console's app (exact match, as Entra's Web platform).
    pub fn register_console_redirect_uri(&self, uri: &str) {
        let mut st = self.shared.lock();
        if !st.redirect_uris.iter().any(|r| r == uri) {
            st.redirect_uris.push(uri.to_string());
        }
    }

    /// A valid v2 operator access token for the named sample operator.
    ///
    /// # Panics
    /// If `operator` is not a sample operator (a test bug).
    pub fn operator_token(&self, operator: &str, lifetime: Duration) -> String {
        let claims = self.operator_claims(operator, TokenForm::V2, lifetime);
        self.mint(&claims, &Value::Null, Signing::Valid)
    }

    /// Base claims of a sample operator's token, for tests to tweak and then `mint`.
    ///
    /// # Panics
    /// If `operator` is not a sample operator (a test bug).
    pub fn operator_claims(&self, operator: &str, version: TokenForm, lifetime: Duration) -> Value {
        let Some(op) = self.shared.tenant.operator(operator) else {
            panic!("no sample operator named {operator:?}");
        };
        claims::operator_claims(&self.shared, op, version, lifetime)
    }

    /// Signs arbitrary claims; `header_overrides` (an object; `null` values delete) is merged
    /// over the default header.
    ///
    /// # Panics
    /// `Signing::UnknownKey` generates (once per sandbox) an RSA key; panics if that fails.
    pub fn mint(&self, claims: &Value, header_overrides: &Value, signing: Signing) -> String {
        claims::mint(&self.shared, claims, header_overrides, signing)
    }

    /// Every HTTP request the Graph emulator received, in order.
    pub fn graph_calls(&self) -> Vec<RecordedCall> {
        self.shared.lock().graph_calls.clone()
    }

    /// Only the recoverPasscode POSTs (any route form) the Graph emulator received.
    pub fn recover_passcode_calls(&self) -> Vec<RecordedCall> {
        self.graph_calls()
            .into_iter()
            .filter(|c| c.method == "POST" && graph::is_recover_passcode_path(&c.path_and_query))
            .collect()
    }

    /// Every request the Entra emulator received (discovery, keys, token).
    pub fn entra_calls(&self) -> Vec<RecordedCall> {
        self.shared.lock().entra_calls.clone()
    }

    /// ID tokens the authorization-code grant has issued to the console.
    pub fn issued_id_tokens(&self) -> Vec<String> {
        self.shared.lock().issued_id_tokens.clone()
    }

    /// App tokens the token endpoint has issued.
    pub fn issued_app_tokens(&self) -> Vec<String> {
        self.shared.lock().issued_app_tokens.clone()
    }

    /// Registers a certificate credential for passgate's app: DER bytes (for the x5t and
    /// x5t#S256 thumbprints) and its RSA public key.
    pub fn register_app_certificate(&self, cert_der: &[u8], public_key: RsaPublicKey) {
        let cert = RegisteredCert {
            sha1: crypto::sha1(cert_der),
            sha256: crypto::sha256(cert_der),
            key: public_key,
        };
        self.shared.lock().certs.push(cert);
    }

    /// Rotates the operator-token signing key and returns the new kid. The old keys stay
    /// published unless `retire_old`, which unpublishes every key but the new one.
    /// Generates a 2048-bit key synchronously (tens to hundreds of milliseconds).
    ///
    /// # Panics
    /// If the OS random source fails.
    pub fn rotate_signing_key(&self, retire_old: bool) -> String {
        let key = match KeyPair::generate() {
            Ok(k) => k,
            Err(e) => panic!("RSA key generation failed: {e}"),
        };
        let kid = key.kid.clone();
        let mut st = self.shared.lock();
        if retire_old {
            st.signing_keys.clear();
        }
        st.signing_keys.push(key);
        kid
    }

    /// Sets the fault mode (`Fault::None` by default).
    pub fn set_fault(&self, fault: Fault) {
        self.shared.lock().fault = fault;
    }

    /// Application permissions put into app tokens issued from now on (default
    /// [`DEFAULT_APP_ROLES`]); lets tests exercise Graph's 403 paths.
    pub fn set_app_roles(&self, roles: Vec<String>) {
        self.shared.lock().app_roles = roles;
    }

    /// The kid of the current operator-token signing key.
    pub fn current_kid(&self) -> String {
        self.shared.lock().current_key().kid.clone()
    }
}
