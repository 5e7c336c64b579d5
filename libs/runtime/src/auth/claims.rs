//! The two tokens services exchange and their wire form.
//!
//! Both are compact JWS (`header.payload.signature`, base64url, RFC 7515) signed with
//! Ed25519 (`alg: EdDSA`), so standard tooling can read them. The header's `typ` tells the
//! two kinds apart (an actor token is never accepted as a principal) and its `kid` names
//! the signer's key. Nothing in a token is trusted before its signature is checked
//! against the key the verifier holds for the claimed issuer and key id.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Tier;
use super::keys::ServiceKey;

/// `typ` of a principal token (who the user is).
pub(crate) const PRINCIPAL_TYPE: &str = "agentmesh-principal+jwt";
/// `typ` of an actor token (which service is calling).
pub(crate) const ACTOR_TYPE: &str = "agentmesh-actor+jwt";

/// The JWS header.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    /// Always `EdDSA`.
    pub alg: String,
    /// [`PRINCIPAL_TYPE`] or [`ACTOR_TYPE`].
    pub typ: String,
    /// The signing key's id.
    pub kid: String,
}

/// The claims of `x-agentmesh-principal`: who the user is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalClaims {
    /// The minting service (`gateway` or `agent-orchestrator`).
    pub iss: String,
    /// The user.
    pub sub: String,
    /// The tenant.
    pub ten: String,
    /// Rate-limit tier.
    pub tier: Tier,
    /// Granted scopes.
    pub scp: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// The run the orchestrator minted this principal for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
}

/// The claims of `x-agentmesh-actor`: which service is calling which.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorClaims {
    /// The calling service.
    pub iss: String,
    /// The called service.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// A token that cannot be read (the reason a verifier refuses it comes later).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed token")]
pub struct Malformed;

/// A parsed but not yet verified token.
pub(crate) struct Unverified<'a, C> {
    pub header: Header,
    pub claims: C,
    pub signed: &'a [u8],
    pub signature: Signature,
}

/// Signs `claims` as a token of type `typ` with `key`.
pub(crate) fn sign<C: Serialize>(key: &ServiceKey, typ: &str, claims: &C) -> String {
    let header = Header { alg: "EdDSA".to_owned(), typ: typ.to_owned(), kid: key.kid().to_owned() };
    // Serializing these plain structs cannot fail.
    let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap_or_default());
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signed = format!("{header}.{payload}");
    let signature = key.signing_key().sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// A principal token with exactly these claims, signed with `key`. Services mint through
/// [`super::PrincipalMinter`]; this is for tools and tests that need a token of their own
/// making (an expired one, one signed by a service that may not mint).
pub fn sign_principal(key: &ServiceKey, claims: &PrincipalClaims) -> String {
    sign(key, PRINCIPAL_TYPE, claims)
}

/// An actor token with exactly these claims, signed with `key` (see [`sign_principal`]).
pub fn sign_actor(key: &ServiceKey, claims: &ActorClaims) -> String {
    sign(key, ACTOR_TYPE, claims)
}

/// Splits and decodes `token` without checking its signature.
pub(crate) fn parse<C: DeserializeOwned>(token: &str) -> Result<Unverified<'_, C>, Malformed> {
    let (signed, signature) = token.rsplit_once('.').ok_or(Malformed)?;
    let (header, payload) = signed.split_once('.').ok_or(Malformed)?;
    let header: Header =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).map_err(|_| Malformed)?).map_err(|_| Malformed)?;
    if header.alg != "EdDSA" {
        return Err(Malformed);
    }
    let claims =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).map_err(|_| Malformed)?).map_err(|_| Malformed)?;
    let signature: [u8; 64] =
        URL_SAFE_NO_PAD.decode(signature).map_err(|_| Malformed)?.try_into().map_err(|_| Malformed)?;
    Ok(Unverified { header, claims, signed: signed.as_bytes(), signature: Signature::from_bytes(&signature) })
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Seconds since the Unix epoch of `time`.
pub(crate) fn unix_time(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
