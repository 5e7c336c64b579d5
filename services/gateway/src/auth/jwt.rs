//! HS256 JSON Web Tokens (RFC 7519), hand-rolled on `hmac` + `sha2`: the access tokens
//! clients send as `Authorization: Bearer <jwt>` and the refresh tokens they exchange for
//! new ones.
//!
//! # Format
//!
//! `base64url(header) . base64url(claims) . base64url(HMAC-SHA256(key, header.claims))`
//! with header `{"alg":"HS256","typ":"JWT"}` and the claims of [`Claims`]: `sub` (user),
//! `tenant`, `tier`, `scopes`, `iat`, `exp` (seconds since the epoch), `jti` (a random
//! UUID) and `typ` (`access` or `refresh`).
//!
//! # Key
//!
//! The signing key is HMAC-SHA256(secret, `"agentmesh jwt hs256 v1"`) and only the gateway
//! holds it; principals between services are Ed25519-signed with other keys
//! (`agentmesh_runtime::auth`), so a token can never pass as a principal or the reverse.
//! The secret is `SECURITY_SECRET_KEY`, or secrets-broker's `jwt-secret-key`
//! (`GATEWAY_JWT_KEY_SOURCE`). When it is rotated ([`JwtCodec::rotate`]), new tokens are
//! signed with the new key and the previous key still verifies for an overlap window, so
//! tokens already handed out keep working while the rotation spreads over the replicas.
//!
//! # Verification
//!
//! In this order, any failure refusing the token: at most [`MAX_TOKEN_LENGTH`] bytes, three
//! base64url parts; header `alg` exactly `HS256` (`none`, `HS512`, `RS256`, ... are refused,
//! and so is any `crit` header); signature, compared in constant time; claims decode;
//! `exp` not passed by more than [`LEEWAY`] and `iat` not in the future by more than
//! [`LEEWAY`]; `typ` the expected one, so a refresh token is never accepted as an access
//! token and vice versa.

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use agentmesh_runtime::auth::{Principal, Tier};
use agentmesh_runtime::config::SecurityConfig;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

use super::clock::Clock;

/// Clock skew tolerated on `exp` and `iat`.
pub const LEEWAY: Duration = Duration::from_secs(30);

/// Longest token accepted; anything longer is refused before decoding.
pub const MAX_TOKEN_LENGTH: usize = 8 * 1024;

/// The only header this codec writes.
const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Context string of the signing key's derivation from `SECURITY_SECRET_KEY`.
const KEY_CONTEXT: &[u8] = b"agentmesh jwt hs256 v1";

type HmacSha256 = Hmac<Sha256>;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// Authenticates API calls (`Authorization: Bearer`).
    Access,
    /// Only exchanged for new tokens (`RefreshToken`).
    Refresh,
}

impl fmt::Display for TokenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Access => "access",
            Self::Refresh => "refresh",
        })
    }
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: String,
    /// The user's tenant.
    pub tenant: String,
    /// Rate-limit tier.
    pub tier: Tier,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: i64,
    /// Unique token id; a refresh token's id is its server-side record.
    pub jti: Uuid,
    /// Access or refresh.
    pub typ: TokenType,
}

impl Claims {
    /// The principal the token stands for.
    pub fn principal(&self) -> Principal {
        Principal {
            user_id: self.sub.clone(),
            tenant_id: self.tenant.clone(),
            tier: self.tier,
            scopes: self.scopes.clone(),
        }
    }

    /// When the token expires.
    pub fn expires_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp(self.exp, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// Why a token was refused. Messages never contain the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of the expected JSON, or too long.
    #[error("token is malformed")]
    Malformed,
    /// The header names another algorithm than HS256 (including `none`).
    #[error("token algorithm is not supported")]
    UnsupportedAlgorithm,
    /// Signed with another key, or altered.
    #[error("token signature is invalid")]
    BadSignature,
    /// Past `exp` (plus leeway).
    #[error("token has expired")]
    Expired,
    /// `iat` is in the future (beyond leeway).
    #[error("token is not valid yet")]
    NotYetValid,
    /// An access token where a refresh token is required, or the reverse.
    #[error("{found} token cannot be used as {expected} token")]
    WrongType {
        /// The type the caller needed.
        expected: TokenType,
        /// The type the token has.
        found: TokenType,
    },
}

/// A freshly signed token and its claims.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The compact JWT.
    pub token: String,
    /// What it says.
    pub claims: Claims,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// The signing key and, during a rotation's overlap, the one before it.
struct KeyRing {
    current: Arc<[u8]>,
    /// The previous key and when it stops verifying.
    previous: Option<(Arc<[u8]>, DateTime<Utc>)>,
}

/// Issues and verifies HS256 tokens. Cheap to clone; clones share the keys, so a rotation
/// reaches every clone.
#[derive(Clone)]
pub struct JwtCodec {
    keys: Arc<RwLock<KeyRing>>,
    access_ttl: Duration,
    refresh_ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for JwtCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtCodec")
            .field("key", &"***")
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .finish_non_exhaustive()
    }
}

impl JwtCodec {
    /// A codec keyed from `secret_key` issuing tokens valid for the given lifetimes.
    pub fn new(secret_key: &str, access_ttl: Duration, refresh_ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        let keys = KeyRing { current: mac(secret_key.as_bytes(), KEY_CONTEXT).into(), previous: None };
        Self { keys: Arc::new(RwLock::new(keys)), access_ttl, refresh_ttl, clock }
    }

    /// Signs with the key derived from `secret_key` from now on; the key used until now
    /// keeps verifying for `overlap` (none at all with a zero overlap). Rotating to the
    /// key already in use changes nothing.
    pub fn rotate(&self, secret_key: &str, overlap: Duration) {
        let key: Arc<[u8]> = mac(secret_key.as_bytes(), KEY_CONTEXT).into();
        let overlap_chrono = chrono::Duration::from_std(overlap).unwrap_or(chrono::Duration::MAX);
        let until = self.clock.now().checked_add_signed(overlap_chrono).unwrap_or(DateTime::<Utc>::MAX_UTC);
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if keys.current == key {
            return;
        }
        let previous = std::mem::replace(&mut keys.current, key);
        keys.previous = (!overlap.is_zero()).then_some((previous, until));
    }

    fn current_key(&self) -> Arc<[u8]> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).current.clone()
    }

    /// The previous key while it still verifies.
    fn previous_key(&self) -> Option<Arc<[u8]>> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        keys.previous.as_ref().filter(|(_, until)| self.clock.now() < *until).map(|(key, _)| key.clone())
    }

    /// A codec from `SECURITY_SECRET_KEY` and the `SECURITY_*_EXPIRE_*` lifetimes.
    pub fn from_config(security: &SecurityConfig, clock: Arc<dyn Clock>) -> Self {
        Self::new(security.secret_key.expose(), security.access_token_expire, security.refresh_token_expire, clock)
    }

    /// How long access tokens live.
    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    /// How long refresh tokens live.
    pub fn refresh_ttl(&self) -> Duration {
        self.refresh_ttl
    }

    /// Signs a new token of type `typ` for `principal`, now, with a fresh random `jti`.
    pub fn issue(&self, principal: &Principal, typ: TokenType) -> Issued {
        self.issue_at(principal, typ, Uuid::new_v4(), self.clock.now())
    }

    /// Signs a token of type `typ` for `principal` with id `jti`, issued at `at`.
    pub fn issue_at(&self, principal: &Principal, typ: TokenType, jti: Uuid, at: DateTime<Utc>) -> Issued {
        let claims = Claims {
            sub: principal.user_id.clone(),
            tenant: principal.tenant_id.clone(),
            tier: principal.tier,
            scopes: principal.scopes.clone(),
            iat: at.timestamp(),
            exp: self.expiry_at(typ, at).timestamp(),
            jti,
            typ,
        };
        Issued { token: self.sign(&claims), claims }
    }

    /// When a token of type `typ` issued at `at` expires (whole seconds, as in `exp`).
    pub fn expiry_at(&self, typ: TokenType, at: DateTime<Utc>) -> DateTime<Utc> {
        let ttl = match typ {
            TokenType::Access => self.access_ttl,
            TokenType::Refresh => self.refresh_ttl,
        };
        let exp = at.timestamp().saturating_add(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
        DateTime::from_timestamp(exp, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Encodes and signs `claims` as they are (tests use it to forge edge cases).
    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(HEADER);
        // Serializing plain strings, numbers and enums cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let signature = URL_SAFE_NO_PAD.encode(mac(&self.current_key(), signing_input.as_bytes()));
        format!("{signing_input}.{signature}")
    }

    /// The claims of `token` if it is an authentic, unexpired token of type `expected`.
    pub fn verify(&self, token: &str, expected: TokenType) -> Result<Claims, JwtError> {
        if token.len() > MAX_TOKEN_LENGTH {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header_json = URL_SAFE_NO_PAD.decode(header).map_err(|_| JwtError::Malformed)?;
        let header_fields: Header = serde_json::from_slice(&header_json).map_err(|_| JwtError::Malformed)?;
        if header_fields.alg != "HS256" || header_fields.crit.is_some() {
            return Err(JwtError::UnsupportedAlgorithm);
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| JwtError::Malformed)?;
        let signed_by = |key: &[u8]| {
            let mut verifier = HmacSha256::new_from_slice(key).map_err(|_| JwtError::Malformed)?;
            verifier.update(header.as_bytes());
            verifier.update(b".");
            verifier.update(payload.as_bytes());
            // `verify_slice` compares in constant time.
            verifier.verify_slice(&signature).map_err(|_| JwtError::BadSignature)
        };
        signed_by(&self.current_key())
            .or_else(|error| self.previous_key().map_or(Err(error), |previous| signed_by(&previous)))?;
        let claims_json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| JwtError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&claims_json).map_err(|_| JwtError::Malformed)?;
        let now = self.clock.now().timestamp();
        let leeway = i64::try_from(LEEWAY.as_secs()).unwrap_or(0);
        if now > claims.exp.saturating_add(leeway) {
            return Err(JwtError::Expired);
        }
        if claims.iat > now.saturating_add(leeway) {
            return Err(JwtError::NotYetValid);
        }
        if claims.typ != expected {
            return Err(JwtError::WrongType { expected, found: claims.typ });
        }
        Ok(claims)
    }
}

/// HMAC-SHA256 of `data` under `key`.
fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::clock::ManualClock;

    const SECRET: &str = "test-secret-test-secret-test-secret!";

    fn setup() -> (JwtCodec, ManualClock) {
        let clock = ManualClock::new(DateTime::from_timestamp(1_800_000_000, 0).unwrap());
        let codec =
            JwtCodec::new(SECRET, Duration::from_secs(1800), Duration::from_secs(7 * 86_400), Arc::new(clock.clone()));
        (codec, clock)
    }

    fn alice() -> Principal {
        Principal {
            user_id: "alice".into(),
            tenant_id: "acme".into(),
            tier: Tier::Premium,
            scopes: vec!["sessions:read".into(), "sessions:write".into()],
        }
    }

    fn b64(value: &str) -> String {
        URL_SAFE_NO_PAD.encode(value)
    }

    #[test]
    fn tokens_round_trip_with_every_claim() {
        let (codec, _) = setup();
        let issued = codec.issue(&alice(), TokenType::Access);
        assert_eq!(issued.token.split('.').count(), 3);
        let claims = codec.verify(&issued.token, TokenType::Access).unwrap();
        assert_eq!(claims, issued.claims);
        assert_eq!(claims.principal(), alice());
        assert_eq!(claims.exp - claims.iat, 1800);
        let header = URL_SAFE_NO_PAD.decode(issued.token.split('.').next().unwrap()).unwrap();
        assert_eq!(header, HEADER.as_bytes());
        let refresh = codec.issue(&alice(), TokenType::Refresh);
        assert_eq!(refresh.claims.exp - refresh.claims.iat, 7 * 86_400);
        assert_ne!(refresh.claims.jti, issued.claims.jti);
    }

    #[test]
    fn after_a_rotation_the_previous_key_verifies_only_during_the_overlap() {
        let (codec, clock) = setup();
        let before = codec.issue(&alice(), TokenType::Access);
        let verifier = codec.clone();
        codec.rotate("the-next-secret-the-next-secret-0001", Duration::from_secs(600));
        let after = codec.issue(&alice(), TokenType::Access);
        assert_ne!(before.token.rsplit('.').next(), after.token.rsplit('.').next());
        // Clones share the keys: every replica's handler sees the rotation.
        assert!(verifier.verify(&before.token, TokenType::Access).is_ok());
        assert!(verifier.verify(&after.token, TokenType::Access).is_ok());
        // Rotating to the key in use is no rotation: the overlap is not cut short.
        codec.rotate("the-next-secret-the-next-secret-0001", Duration::ZERO);
        assert!(codec.verify(&before.token, TokenType::Access).is_ok());

        clock.advance(Duration::from_secs(601));
        assert_eq!(codec.verify(&before.token, TokenType::Access), Err(JwtError::BadSignature));
        assert!(codec.verify(&after.token, TokenType::Access).is_ok());

        // Without an overlap the old key stops at once; a key older than the previous
        // one never verifies.
        codec.rotate("a-third-secret-a-third-secret-a-0003", Duration::ZERO);
        assert_eq!(codec.verify(&after.token, TokenType::Access), Err(JwtError::BadSignature));
        codec.rotate("a-fourth-secret-a-fourth-secret-004", Duration::from_secs(600));
        assert_eq!(codec.verify(&before.token, TokenType::Access), Err(JwtError::BadSignature));
    }

    #[test]
    fn tampered_tokens_and_other_keys_are_refused() {
        let (codec, clock) = setup();
        let token = codec.issue(&alice(), TokenType::Access).token;
        let parts: Vec<&str> = token.split('.').collect();
        let mut claims = codec.verify(&token, TokenType::Access).unwrap();
        claims.scopes.push("*".into());
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let forged = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
        assert_eq!(codec.verify(&forged, TokenType::Access), Err(JwtError::BadSignature));
        let mut signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        signature[0] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&signature));
        assert_eq!(codec.verify(&flipped, TokenType::Access), Err(JwtError::BadSignature));
        let truncated = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(&signature[..16]));
        assert_eq!(codec.verify(&truncated, TokenType::Access), Err(JwtError::BadSignature));
        let other = JwtCodec::new(
            "another-secret-another-secret-another",
            codec.access_ttl,
            codec.refresh_ttl,
            Arc::new(clock),
        );
        assert_eq!(other.verify(&token, TokenType::Access), Err(JwtError::BadSignature));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let (codec, _) = setup();
        let token = codec.issue(&alice(), TokenType::Access).token;
        let parts: Vec<&str> = token.split('.').collect();
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
        ] {
            for signature in ["", parts[2]] {
                let forged = format!("{}.{}.{signature}", b64(header), parts[1]);
                assert_eq!(codec.verify(&forged, TokenType::Access), Err(JwtError::UnsupportedAlgorithm), "{header}");
            }
        }
        assert_eq!(codec.verify(&format!("{}.{}.", b64("{}"), parts[1]), TokenType::Access), Err(JwtError::Malformed));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let (codec, _) = setup();
        let token = codec.issue(&alice(), TokenType::Access).token;
        for bad in [
            String::new(),
            "a.b".to_owned(),
            format!("{token}.x"),
            "!!!.???.***".to_owned(),
            format!("{}{token}", "x".repeat(MAX_TOKEN_LENGTH)),
        ] {
            assert_eq!(codec.verify(&bad, TokenType::Access), Err(JwtError::Malformed), "{bad:.40}");
        }
        let parts: Vec<&str> = token.split('.').collect();
        let not_claims = URL_SAFE_NO_PAD.encode(b"{\"sub\":1}");
        let signed = {
            let input = format!("{}.{not_claims}", parts[0]);
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac(&codec.current_key(), input.as_bytes())))
        };
        assert_eq!(codec.verify(&signed, TokenType::Access), Err(JwtError::Malformed));
    }

    #[test]
    fn refresh_and_access_tokens_are_not_interchangeable() {
        let (codec, _) = setup();
        let access = codec.issue(&alice(), TokenType::Access).token;
        let refresh = codec.issue(&alice(), TokenType::Refresh).token;
        assert_eq!(
            codec.verify(&refresh, TokenType::Access),
            Err(JwtError::WrongType { expected: TokenType::Access, found: TokenType::Refresh })
        );
        assert_eq!(
            codec.verify(&access, TokenType::Refresh),
            Err(JwtError::WrongType { expected: TokenType::Refresh, found: TokenType::Access })
        );
        assert!(codec.verify(&refresh, TokenType::Refresh).is_ok());
    }

    #[test]
    fn expiry_allows_a_small_leeway_and_future_tokens_are_refused() {
        let (codec, clock) = setup();
        let token = codec.issue(&alice(), TokenType::Access).token;
        clock.advance(Duration::from_secs(1800) + LEEWAY);
        assert!(codec.verify(&token, TokenType::Access).is_ok(), "within leeway");
        clock.advance(Duration::from_secs(1));
        assert_eq!(codec.verify(&token, TokenType::Access), Err(JwtError::Expired));

        let (codec, clock) = setup();
        let mut claims = codec.issue(&alice(), TokenType::Access).claims;
        claims.iat = clock.now().timestamp() + 3600;
        claims.exp = claims.iat + 1800;
        assert_eq!(codec.verify(&codec.sign(&claims), TokenType::Access), Err(JwtError::NotYetValid));
    }

    #[test]
    fn the_signing_key_differs_from_the_secret_and_the_principal_key() {
        let (codec, _) = setup();
        assert_ne!(&*codec.current_key(), SECRET.as_bytes());
        assert_ne!(&*codec.current_key(), mac(SECRET.as_bytes(), b"agentmesh principal v1").as_slice());
        assert!(!format!("{codec:?}").contains(SECRET));
    }
}
