//! Sign-in with Entra ID: the OpenID Connect authorization-code flow with PKCE through the
//! `openidconnect` crate, as a confidential client (secret or `private_key_jwt`), over passgate's
//! one outbound HTTP stack. Discovery and keys are cached and refetched on age or on an unknown
//! signing key (no more often than a floor). It must never accept an ID token whose signature,
//! issuer, audience, expiry, nonce or tenant does not check, and never log a code or a token.

use crate::graph::token::{client_assertion, AppCredential};
use crate::outbound::{self, HttpsClient};
use bytes::Bytes;
use http_body_util::Full;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm, CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, StandardErrorResponse,
    StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAX_DOC_BYTES: usize = 512 * 1024;
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Entra's claims beyond the standard ones that the console needs (ID token claims reference).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EntraClaims {
    #[serde(default)]
    pub oid: Option<String>,
    #[serde(default)]
    pub tid: Option<String>,
    /// Group object ids (`groupMembershipClaims` on the app registration).
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    /// App roles assigned to the user on the console's app.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// Present instead of `groups` when the user is in too many groups (overage).
    #[serde(default, rename = "_claim_names")]
    pub claim_names: Option<serde_json::Value>,
}

impl AdditionalClaims for EntraClaims {}

type IdFields = IdTokenFields<
    EntraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type EntraTokenResponse = StandardTokenResponse<IdFields, CoreTokenType>;
type EntraClient<HasTokenUrl = EndpointMaybeSet> = Client<
    EntraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    EntraTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    HasTokenUrl,
    EndpointMaybeSet,
>;

/// Why a sign-in failed. Display never includes a code, a token or a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OidcError {
    /// Discovery or keys could not be fetched.
    #[error("Entra ID could not be reached: {0}")]
    Provider(String),
    /// The token endpoint refused the code (or could not be reached).
    #[error("the sign-in code could not be redeemed: {0}")]
    Exchange(String),
    /// The ID token did not verify.
    #[error("the ID token was not accepted: {0}")]
    IdToken(String),
    /// A valid ID token from another tenant.
    #[error("the account belongs to another tenant")]
    WrongTenant,
}

impl OidcError {
    /// The reason code in the console audit record.
    pub fn reason(&self) -> &'static str {
        match self {
            OidcError::Provider(_) => "provider_unavailable",
            OidcError::Exchange(_) => "sign_in_failed",
            OidcError::IdToken(_) => "id_token_invalid",
            OidcError::WrongTenant => "wrong_tenant",
        }
    }
}

/// Who signed in, from a verified ID token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// Lower-case GUID.
    pub oid: String,
    pub tid: String,
    pub upn: Option<String>,
    pub name: Option<String>,
    /// Lower-case group ids.
    pub groups: Vec<String>,
    pub groups_overage: bool,
    pub roles: Vec<String>,
}

/// Adapter: openidconnect's [`openidconnect::AsyncHttpClient`] over passgate's outbound client
/// (rustls, the configured CA bundle, a timeout and a body cap; no redirects are followed).
pub struct OidcHttp {
    client: HttpsClient,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcHttpError {
    #[error(transparent)]
    Fetch(#[from] outbound::FetchError),
    #[error("response could not be built: {0}")]
    Response(#[from] http::Error),
}

impl<'c> openidconnect::AsyncHttpClient<'c> for OidcHttp {
    type Error = OidcHttpError;
    type Future = Pin<
        Box<dyn Future<Output = Result<openidconnect::HttpResponse, OidcHttpError>> + Send + 'c>,
    >;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let req = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
            let resp = outbound::fetch(&self.client, req, self.timeout, MAX_DOC_BYTES).await?;
            let mut b = http::Response::builder().status(resp.status);
            for (k, v) in &resp.headers {
                b = b.header(k, v);
            }
            Ok(b.body(resp.body.to_vec())?)
        })
    }
}

/// The console's relying party: client registration, provider cache, verification rules.
pub struct Oidc {
    http: OidcHttp,
    discovery_url: String,
    client_id: String,
    credential: Arc<AppCredential>,
    redirect_uri: String,
    tenant_id: String,
    refresh_floor: Duration,
    max_age: Duration,
    provider: tokio::sync::Mutex<Option<(Instant, CoreProviderMetadata)>>,
}

/// What to send the browser to Entra with, and what to keep for the callback.
pub struct Authorize {
    pub url: String,
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

pub struct OidcSettings {
    pub client: HttpsClient,
    pub timeout: Duration,
    pub discovery_url: String,
    pub client_id: String,
    pub credential: AppCredential,
    pub redirect_uri: String,
    pub tenant_id: String,
    pub refresh_floor: Duration,
    pub max_age: Duration,
}

impl Oidc {
    pub fn new(s: OidcSettings) -> Oidc {
        Oidc {
            http: OidcHttp {
                client: s.client,
                timeout: s.timeout,
            },
            discovery_url: s.discovery_url,
            client_id: s.client_id,
            credential: Arc::new(s.credential),
            redirect_uri: s.redirect_uri,
            tenant_id: s.tenant_id,
            refresh_floor: s.refresh_floor,
            max_age: s.max_age,
            provider: tokio::sync::Mutex::new(None),
        }
    }

    /// The discovery document with its keys: cached; refetched past `max_age`, or when `force`
    /// (an unknown signing key) and the last fetch is older than the floor.
    async fn provider(&self, force: bool) -> Result<CoreProviderMetadata, OidcError> {
        let mut slot = self.provider.lock().await;
        if let Some((at, meta)) = slot.as_ref() {
            let age = at.elapsed();
            if age < self.max_age && !(force && age >= self.refresh_floor) {
                return Ok(meta.clone());
            }
        }
        match self.fetch_provider().await {
            Ok(meta) => {
                *slot = Some((Instant::now(), meta.clone()));
                Ok(meta)
            }
            // Keep serving with what we have if a refresh fails.
            Err(e) => match slot.as_ref() {
                Some((_, meta)) => {
                    tracing::warn!(error = %e, "console: OIDC provider refresh failed; keeping the cached document");
                    Ok(meta.clone())
                }
                None => Err(e),
            },
        }
    }

    async fn fetch_provider(&self) -> Result<CoreProviderMetadata, OidcError> {
        let req = outbound::get(&self.discovery_url, None)
            .map_err(|e| OidcError::Provider(e.to_string()))?;
        let resp = outbound::fetch(&self.http.client, req, self.http.timeout, MAX_DOC_BYTES)
            .await
            .map_err(|e| OidcError::Provider(format!("discovery: {e}")))?;
        if !resp.status.is_success() {
            return Err(OidcError::Provider(format!(
                "discovery answered HTTP {}",
                resp.status.as_u16()
            )));
        }
        let meta: CoreProviderMetadata = serde_json::from_slice(&resp.body)
            .map_err(|e| OidcError::Provider(format!("discovery document: {e}")))?;
        for (what, url) in [
            ("jwks_uri", meta.jwks_uri().url().as_str()),
            (
                "authorization_endpoint",
                meta.authorization_endpoint().url().as_str(),
            ),
        ] {
            if !outbound::url_is_acceptable(url) {
                return Err(OidcError::Provider(format!(
                    "{what} must be https (http only on loopback)"
                )));
            }
        }
        let jwks = CoreJsonWebKeySet::fetch_async(meta.jwks_uri(), &self.http)
            .await
            .map_err(|e| OidcError::Provider(format!("keys: {e}")))?;
        Ok(meta.set_jwks(jwks))
    }

    fn client(&self, meta: CoreProviderMetadata) -> Result<EntraClient, OidcError> {
        let secret = match self.credential.as_ref() {
            AppCredential::Secret(s) => Some(ClientSecret::new(s.clone())),
            AppCredential::Certificate { .. } => None,
        };
        let redirect = RedirectUrl::new(self.redirect_uri.clone())
            .map_err(|e| OidcError::Provider(format!("redirect_uri: {e}")))?;
        Ok(
            EntraClient::from_provider_metadata(
                meta,
                ClientId::new(self.client_id.clone()),
                secret,
            )
            // client_secret_post, as for the app's own client credentials.
            .set_auth_type(openidconnect::AuthType::RequestBody)
            .set_redirect_uri(redirect),
        )
    }

    /// Where to send the browser: Entra's authorization endpoint with a fresh state, nonce and
    /// PKCE (S256) challenge, asking for `openid profile`.
    pub async fn authorize(&self) -> Result<Authorize, OidcError> {
        let client = self.client(self.provider(false).await?)?;
        let state = super::session::random_b64(32);
        let nonce = super::session::random_b64(32);
        let verifier = PkceCodeVerifier::new(super::session::random_b64(48));
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&verifier);
        let (s, n) = (state.clone(), nonce.clone());
        let (url, _, _) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(s),
                move || Nonce::new(n),
            )
            .add_scope(Scope::new("profile".into()))
            .set_pkce_challenge(challenge)
            .url();
        Ok(Authorize {
            url: url.to_string(),
            state,
            nonce,
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Redeems the code (with the PKCE verifier and the client's credential) and verifies the
    /// ID token: signature by a published key, issuer, audience (this client), expiry, nonce,
    /// then the tenant.
    pub async fn sign_in(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<Identity, OidcError> {
        let meta = self.provider(false).await?;
        let token_url = meta
            .token_endpoint()
            .cloned()
            .ok_or_else(|| OidcError::Provider("no token_endpoint".into()))?;
        if !outbound::url_is_acceptable(token_url.url().as_str()) {
            return Err(OidcError::Provider(
                "token_endpoint must be https (http only on loopback)".into(),
            ));
        }
        let client = self.client(meta)?.set_token_uri(token_url.clone());
        let mut req = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()));
        if let AppCredential::Certificate {
            cert_der,
            key,
            ps256,
        } = self.credential.as_ref()
        {
            let assertion = client_assertion(
                &self.client_id,
                token_url.url().as_str(),
                cert_der,
                key,
                *ps256,
                chrono::Utc::now().timestamp(),
            )
            .map_err(|e| OidcError::Exchange(e.to_string()))?;
            req = req
                .add_extra_param("client_assertion_type", JWT_BEARER)
                .add_extra_param("client_assertion", assertion);
        }
        let response = req
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Exchange(describe_token_error(&e)))?;
        let id_token = response
            .id_token()
            .ok_or_else(|| OidcError::IdToken("the token response carries no id_token".into()))?
            .clone();
        let nonce = Nonce::new(nonce.to_string());
        let verified = {
            let client = self.client(self.provider(false).await?)?;
            let verifier = client.id_token_verifier();
            id_token.claims(&verifier, &nonce).cloned()
        };
        let claims = match verified {
            Ok(c) => c,
            // Keys may have rotated since they were fetched: refetch (floored) and try once more.
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(_)) => {
                let client = self.client(self.provider(true).await?)?;
                let verifier = client.id_token_verifier();
                id_token
                    .claims(&verifier, &nonce)
                    .cloned()
                    .map_err(|e| OidcError::IdToken(e.to_string()))?
            }
            Err(e) => return Err(OidcError::IdToken(e.to_string())),
        };
        let extra = claims.additional_claims();
        let tid = extra
            .tid
            .as_deref()
            .and_then(crate::text::guid)
            .ok_or_else(|| OidcError::IdToken("no tid claim".into()))?;
        if tid != self.tenant_id {
            return Err(OidcError::WrongTenant);
        }
        let oid = extra
            .oid
            .as_deref()
            .and_then(crate::text::guid)
            .ok_or_else(|| OidcError::IdToken("no oid claim".into()))?;
        let overage = extra
            .claim_names
            .as_ref()
            .is_some_and(|n| n.get("groups").is_some());
        Ok(Identity {
            oid,
            tid,
            upn: claims.preferred_username().map(|u| u.as_str().to_string()),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_string()),
            groups: extra
                .groups
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|g| g.to_ascii_lowercase())
                .collect(),
            groups_overage: overage,
            roles: extra.roles.clone().unwrap_or_default(),
        })
    }
}

/// A token-endpoint failure in words: Entra's `error` and AADSTS code, never the request.
fn describe_token_error<RE: std::error::Error + 'static>(
    e: &openidconnect::RequestTokenError<RE, StandardErrorResponse<CoreErrorResponseType>>,
) -> String {
    match e {
        openidconnect::RequestTokenError::ServerResponse(r) => {
            let code = r
                .error_description()
                .and_then(|d| d.split(':').next())
                .filter(|c| c.starts_with("AADSTS"))
                .unwrap_or("");
            format!("{} {code}", r.error().as_ref()).trim().to_string()
        }
        openidconnect::RequestTokenError::Request(e) => format!("request failed: {e}"),
        openidconnect::RequestTokenError::Parse(_, _) => "unreadable token response".into(),
        openidconnect::RequestTokenError::Other(s) => s.chars().take(120).collect(),
    }
}
