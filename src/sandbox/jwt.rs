//! Compact JWS encoding, RS256/PS256 signing and checking for the emulator's own tokens and
//! for client assertions it receives. It only ever signs with keys it generated itself and never
//! prints key material or tokens.

use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::signature::{SignatureEncoding, Signer, Verifier};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use serde_json::{json, Value};
use sha2::Sha256;

use super::crypto::{b64url, b64url_decode, sha1};

/// An RSA signing key with its published id. `kid` (= `x5t`) mimics Entra: base64url SHA-1
/// of the key's DER (Entra hashes the certificate; we have no certificate).
#[derive(Clone)]
pub(crate) struct KeyPair {
    pub(crate) kid: String,
    private: RsaPrivateKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair").field("kid", &self.kid).finish()
    }
}

impl KeyPair {
    pub(crate) fn generate() -> Result<KeyPair, rsa::Error> {
        let private = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)?;
        let der = private
            .to_public_key()
            .to_pkcs1_der()
            .map_err(|_| rsa::Error::Internal)?;
        Ok(KeyPair {
            kid: b64url(&sha1(der.as_bytes())),
            private,
        })
    }

    pub(crate) fn public(&self) -> RsaPublicKey {
        self.private.to_public_key()
    }

    /// The JWKS entry, shaped like Entra's (graph-notes §6).
    pub(crate) fn jwk(&self, issuer: &str) -> Value {
        let public = self.public();
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": b64url(&public.n().to_bytes_be()),
            "e": b64url(&public.e().to_bytes_be()),
            "issuer": issuer,
        })
    }

    pub(crate) fn sign_rs256(&self, msg: &[u8]) -> Vec<u8> {
        let key = rsa::pkcs1v15::SigningKey::<Sha256>::new(self.private.clone());
        key.sign(msg).to_vec()
    }

    /// Signs `header.claims` with RS256 and returns the compact token.
    pub(crate) fn token(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let sig = self.sign_rs256(input.as_bytes());
        format!("{input}.{}", b64url(&sig))
    }
}

pub(crate) fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// A compact JWS split into its parts. Parsing checks structure only, never trust.
pub(crate) struct Parsed {
    pub(crate) header: Value,
    pub(crate) claims: Value,
    pub(crate) signing_input: String,
    pub(crate) signature: Vec<u8>,
}

pub(crate) fn parse(token: &str) -> Option<Parsed> {
    let mut parts = token.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Value = serde_json::from_slice(&b64url_decode(h)?).ok()?;
    let claims: Value = serde_json::from_slice(&b64url_decode(c)?).ok()?;
    if !header.is_object() || !claims.is_object() {
        return None;
    }
    Some(Parsed {
        header,
        claims,
        signing_input: format!("{h}.{c}"),
        signature: b64url_decode(s)?,
    })
}

pub(crate) fn verify_rs256(key: &RsaPublicKey, msg: &[u8], sig: &[u8]) -> bool {
    let Ok(sig) = rsa::pkcs1v15::Signature::try_from(sig) else {
        return false;
    };
    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key.clone())
        .verify(msg, &sig)
        .is_ok()
}

pub(crate) fn verify_ps256(key: &RsaPublicKey, msg: &[u8], sig: &[u8]) -> bool {
    let Ok(sig) = rsa::pss::Signature::try_from(sig) else {
        return false;
    };
    rsa::pss::VerifyingKey::<Sha256>::new(key.clone())
        .verify(msg, &sig)
        .is_ok()
}

/// Seconds since the epoch.
pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A random `uti`/`jti`-like id: 16 random bytes, base64url (Entra's `uti` looks like this).
pub(crate) fn random_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b64url(&b)
}
