//! Who is calling: the principal every service authorises against, and the hook the
//! server bootstrap uses to establish it.
//!
//! The gateway authenticates end users (API keys, JWT) and forwards a principal in gRPC
//! metadata; each service's [`Authenticate`] implementation verifies it before any handler
//! runs. Health and reflection stay open so probes and tooling work without credentials.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{ApiError, ErrorCode};

/// A caller's rate-limit and feature tier (seed: default / authenticated / premium).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Anonymous or basic callers.
    #[default]
    Default,
    /// Callers with an API key or token.
    Authenticated,
    /// Paying callers with the highest limits.
    Premium,
}

impl Tier {
    /// The lowercase name used in keys, tokens and metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Authenticated => "authenticated",
            Self::Premium => "premium",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "default" => Some(Self::Default),
            "authenticated" => Some(Self::Authenticated),
            "premium" => Some(Self::Premium),
            _ => None,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user every owned resource is scoped to.
    pub user_id: String,
    /// The tenant (organisation) the user acts for.
    pub tenant_id: String,
    /// Rate-limit tier.
    pub tier: Tier,
    /// Granted scopes, e.g. `sessions:write`.
    pub scopes: Vec<String>,
}

impl Principal {
    /// Whether the principal holds `scope` (or the `*` wildcard).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == "*")
    }
}

/// Establishes the caller of one request from its headers (gRPC metadata).
#[async_trait::async_trait]
pub trait Authenticate: Send + Sync + 'static {
    /// `Ok(Some)` for an authenticated caller, `Ok(None)` for an anonymous one the service
    /// may still serve, `Err` to refuse the call (`authentication_error`, or a retryable
    /// error when a credential store is down).
    async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Option<Principal>, ApiError>;
}

/// Paths served without authentication: health checks (`grpc.health.v1` and dependency
/// health, which `GET /api/v1/health/services` already shows to anyone) and reflection.
pub fn is_open_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.")
        || path.starts_with("/agentmesh.health.v1.DependencyHealthService/")
}

/// gRPC metadata carrying the signed principal from the gateway to services.
pub const PRINCIPAL_HEADER: &str = "x-agentmesh-principal";

/// How long a signed principal stays valid: long enough for one request's fan-out, short
/// enough that a leaked header is soon useless.
pub const PRINCIPAL_TTL: Duration = Duration::from_secs(300);

/// Why a principal header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalError {
    /// Not `<payload>.<signature>` in base64url, or not the expected JSON.
    #[error("malformed principal")]
    Malformed,
    /// The signature does not match (wrong key or tampered payload).
    #[error("principal signature is invalid")]
    BadSignature,
    /// Past its expiry.
    #[error("principal has expired")]
    Expired,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    ten: String,
    tier: Tier,
    scp: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    exp: u64,
}

/// Signs and verifies principals with HMAC-SHA256 under a key derived from
/// `SECURITY_SECRET_KEY` (distinct from the JWT key, so one cannot stand in for the other).
#[derive(Clone)]
pub struct PrincipalCodec {
    key: Vec<u8>,
}

impl fmt::Debug for PrincipalCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrincipalCodec { key: *** }")
    }
}

type HmacSha256 = Hmac<Sha256>;

impl PrincipalCodec {
    /// A codec keyed from the service-wide secret.
    pub fn new(secret_key: &str) -> Self {
        Self { key: mac(secret_key.as_bytes(), b"agentmesh principal v1") }
    }

    /// The header value for `principal`, valid for `ttl`.
    pub fn encode(&self, principal: &Principal, ttl: Duration) -> String {
        let claims = Claims {
            sub: principal.user_id.clone(),
            ten: principal.tenant_id.clone(),
            tier: principal.tier,
            scp: principal.scopes.clone(),
            exp: unix_now().saturating_add(ttl.as_secs()),
        };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap_or_default());
        let signature = URL_SAFE_NO_PAD.encode(mac(&self.key, payload.as_bytes()));
        format!("{payload}.{signature}")
    }

    /// The principal in a header value, if it is well-formed, authentic and unexpired.
    pub fn decode(&self, value: &str) -> Result<Principal, PrincipalError> {
        let (payload, signature) = value.split_once('.').ok_or(PrincipalError::Malformed)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| PrincipalError::Malformed)?;
        let mut verifier = HmacSha256::new_from_slice(&self.key).map_err(|_| PrincipalError::Malformed)?;
        verifier.update(payload.as_bytes());
        verifier.verify_slice(&signature).map_err(|_| PrincipalError::BadSignature)?;
        let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| PrincipalError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| PrincipalError::Malformed)?;
        if claims.exp < unix_now() {
            return Err(PrincipalError::Expired);
        }
        Ok(Principal { user_id: claims.sub, tenant_id: claims.ten, tier: claims.tier, scopes: claims.scp })
    }
}

fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this never fails.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Services' authenticator: every call must carry a valid signed principal.
#[derive(Debug, Clone)]
pub struct RequireSignedPrincipal {
    codec: PrincipalCodec,
}

impl RequireSignedPrincipal {
    /// Verifies with `codec`.
    pub fn new(codec: PrincipalCodec) -> Self {
        Self { codec }
    }
}

#[async_trait::async_trait]
impl Authenticate for RequireSignedPrincipal {
    async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Option<Principal>, ApiError> {
        let value = headers
            .get(PRINCIPAL_HEADER)
            .ok_or_else(|| ApiError::new(ErrorCode::Authentication, "Authentication required"))?;
        let value = value.to_str().map_err(|_| ApiError::new(ErrorCode::Authentication, "Authentication failed"))?;
        let principal = self
            .codec
            .decode(value)
            .map_err(|error| ApiError::new(ErrorCode::Authentication, format!("Authentication failed: {error}")))?;
        Ok(Some(principal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Principal {
        Principal {
            user_id: "alice".into(),
            tenant_id: "t1".into(),
            tier: Tier::Premium,
            scopes: vec!["sessions:read".into()],
        }
    }

    #[test]
    fn a_signed_principal_round_trips() {
        let codec = PrincipalCodec::new("k".repeat(32).as_str());
        let header = codec.encode(&alice(), PRINCIPAL_TTL);
        assert_eq!(codec.decode(&header), Ok(alice()));
    }

    #[test]
    fn tampering_other_keys_expiry_and_garbage_are_refused() {
        let codec = PrincipalCodec::new("k".repeat(32).as_str());
        let header = codec.encode(&alice(), PRINCIPAL_TTL);
        let (payload, signature) = header.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD
            .encode(String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap().replace("alice", "mallory"));
        assert_eq!(codec.decode(&format!("{forged}.{signature}")), Err(PrincipalError::BadSignature));
        assert_eq!(PrincipalCodec::new("other-key").decode(&header), Err(PrincipalError::BadSignature));
        assert_eq!(codec.decode("not a principal"), Err(PrincipalError::Malformed));
        assert_eq!(codec.decode(""), Err(PrincipalError::Malformed));
        let expired =
            Claims { sub: "a".into(), ten: "t".into(), tier: Tier::Default, scp: vec![], exp: unix_now() - 1 };
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&expired).unwrap());
        let signature = URL_SAFE_NO_PAD.encode(mac(&codec.key, payload.as_bytes()));
        assert_eq!(codec.decode(&format!("{payload}.{signature}")), Err(PrincipalError::Expired));
    }

    #[tokio::test]
    async fn services_refuse_calls_without_a_valid_principal() {
        let codec = PrincipalCodec::new("secret-secret-secret-secret-secret");
        let auth = RequireSignedPrincipal::new(codec.clone());
        let mut headers = http::HeaderMap::new();
        assert_eq!(auth.authenticate(&headers).await.unwrap_err().code, ErrorCode::Authentication);
        headers.insert(PRINCIPAL_HEADER, "x.y".parse().unwrap());
        assert_eq!(auth.authenticate(&headers).await.unwrap_err().code, ErrorCode::Authentication);
        headers.insert(PRINCIPAL_HEADER, codec.encode(&alice(), PRINCIPAL_TTL).parse().unwrap());
        assert_eq!(auth.authenticate(&headers).await.unwrap(), Some(alice()));
    }
}
