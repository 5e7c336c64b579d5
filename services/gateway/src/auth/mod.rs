//! Authentication and authorisation at the gateway (ARCHITECTURE §8).
//!
//! The router calls [`GatewayAuth::authenticate`] on every request, then [`authorize`]
//! with the route's `required_scopes` from the contract, then has the gateway's
//! [`PrincipalMinter`](agentmesh_runtime::auth::PrincipalMinter) sign the principal into
//! `x-agentmesh-principal` for the services.
//!
//! # Credentials
//!
//! | header | credential |
//! |---|---|
//! | `Authorization: Bearer sk-…` or `X-API-Key: sk-…` | API key ([`keys`]): looked up by SHA-256 hash, must not be revoked |
//! | `Authorization: Bearer <jwt>` | access token ([`jwt`]) from `POST /api/v1/auth/token` |
//! | none | anonymous: `Ok(None)`, the router decides whether the route allows it |
//!
//! Anything else (unknown, revoked or expired credentials, a refresh token, another
//! scheme such as `Basic`, two different credentials) is a 401 `authentication_error`
//! whose message says what is wrong without repeating the credential. A storage outage
//! is a 503, never a 401. Credentials are never logged.
//!
//! # Design choices
//!
//! - **No key cache.** Every API-key request is one indexed lookup, so a revoked key stops
//!   working at once on every replica. Clients wanting fewer lookups use access tokens.
//! - **Access tokens are stateless.** They stay valid until they expire (30 minutes by
//!   default) even if their key is revoked; refreshing checks the key, so a revoked key
//!   gets no new tokens.
//! - **Refresh tokens rotate** and reuse is detected (see [`store`]).
//! - **`last_used_at`** is written at most once a minute per key, from the lookup's own
//!   result (no extra state), in the background so it adds no latency.

pub mod clock;
pub mod jwt;
pub mod keys;
pub mod service;
pub mod signing;
pub mod store;

use std::sync::Arc;

use agentmesh_runtime::auth::Authenticate;
use agentmesh_runtime::auth::Principal;
use agentmesh_runtime::config::SecurityConfig;
use agentmesh_runtime::{ApiError, Config, ErrorCode};
use chrono::{DateTime, Utc};
use http::HeaderMap;
use http::header::AUTHORIZATION;
use uuid::Uuid;

pub use self::clock::{Clock, ManualClock, SystemClock};
pub use self::jwt::{Claims, JwtCodec, JwtError, TokenType};
pub use self::keys::{ApiKeyRecord, KeySettings, NewApiKey, StaticKeys, create_key, default_scopes};
pub use self::service::AuthApi;
pub use self::store::{ApiKeyStore, MemoryKeyStore, PostgresKeyStore, StoreError};

/// The header carrying an API key as an alternative to `Authorization: Bearer`.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Longest credential header value accepted.
const MAX_CREDENTIAL_LENGTH: usize = jwt::MAX_TOKEN_LENGTH;

/// The gateway's authenticator: API keys (stored and static) and access tokens.
#[derive(Debug)]
pub struct GatewayAuth {
    store: Arc<dyn ApiKeyStore>,
    static_keys: StaticKeys,
    jwt: JwtCodec,
    settings: KeySettings,
    clock: Arc<dyn Clock>,
}

/// A credential found in the headers.
#[derive(Clone, Copy)]
enum Credential<'a> {
    ApiKey(&'a str),
    Token(&'a str),
}

impl GatewayAuth {
    /// An authenticator over `store` and the `SECURITY_*` settings (secret key, token
    /// lifetimes, key format, `SECURITY_API_KEYS`), on the system clock.
    pub fn new(security: &SecurityConfig, store: Arc<dyn ApiKeyStore>) -> Self {
        Self::with_clock(security, store, Arc::new(SystemClock))
    }

    /// The authenticator the configuration describes, over the key store it selects
    /// ([`store::open`]: PostgreSQL with `USE_DATABASE`, memory otherwise).
    pub async fn connect(config: &Config) -> Result<Self, StoreError> {
        Ok(Self::new(&config.security, store::open(config).await?))
    }

    /// Like [`new`](Self::new) with another clock (tests).
    pub fn with_clock(security: &SecurityConfig, store: Arc<dyn ApiKeyStore>, clock: Arc<dyn Clock>) -> Self {
        let settings = KeySettings::from_config(security);
        let static_keys = StaticKeys::new(&security.api_keys, &settings, clock.now());
        if !static_keys.is_empty() {
            tracing::warn!(count = security.api_keys.len(), "static development API keys (SECURITY_API_KEYS) enabled");
        }
        let jwt = JwtCodec::from_config(security, Arc::clone(&clock));
        Self { store, static_keys, jwt, settings, clock }
    }

    /// The caller of a request: `Ok(None)` without credentials, `Ok(Some)` for a valid API
    /// key or access token, `Err` (401 `authentication_error`) for bad credentials, 503 or
    /// 500 when the key store fails.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
        match credential(headers, &self.settings)? {
            None => Ok(None),
            Some(Credential::ApiKey(key)) => Ok(Some(self.authenticate_key(key).await?.principal())),
            Some(Credential::Token(token)) => self.authenticate_token(token).map(Some),
        }
    }

    /// The active key `key` (static or stored); 401 when unknown or revoked.
    pub async fn authenticate_key(&self, key: &str) -> Result<ApiKeyRecord, ApiError> {
        if !self.settings.is_key(key) || key.len() > MAX_CREDENTIAL_LENGTH {
            return Err(unauthenticated("Invalid API key"));
        }
        let hash = keys::KeyHash::of(key);
        if let Some(record) = self.static_keys.find(&hash) {
            return Ok(record.clone());
        }
        let record = self.store.find_by_hash(&hash).await.map_err(store_error)?;
        let Some(record) = record else { return Err(unauthenticated("Invalid API key")) };
        if !record.is_active() {
            return Err(unauthenticated("API key has been revoked"));
        }
        self.touch_later(&record);
        Ok(record)
    }

    /// The principal of access token `token`; 401 when invalid, expired or not an access
    /// token.
    pub fn authenticate_token(&self, token: &str) -> Result<Principal, ApiError> {
        self.jwt.verify(token, TokenType::Access).map(|claims| claims.principal()).map_err(|error| {
            unauthenticated(match error {
                JwtError::Expired => "Access token has expired",
                JwtError::NotYetValid => "Access token is not valid yet",
                JwtError::WrongType { .. } => "A refresh token cannot be used to authenticate requests",
                JwtError::Malformed | JwtError::UnsupportedAlgorithm | JwtError::BadSignature => "Invalid access token",
            })
        })
    }

    /// The key `id`, static or stored, revoked or not.
    pub async fn key_by_id(&self, id: Uuid) -> Result<Option<ApiKeyRecord>, StoreError> {
        match self.static_keys.get(id) {
            Some(record) => Ok(Some(record.clone())),
            None => self.store.get(id).await,
        }
    }

    /// Updates `last_used_at` in the background when it is older than the throttle
    /// interval. Failures are logged, never surfaced: the request is already authenticated.
    fn touch_later(&self, record: &ApiKeyRecord) {
        let now = self.clock.now();
        if !touch_due(record.last_used_at, now) {
            return;
        }
        let (store, id) = (Arc::clone(&self.store), record.id);
        tokio::spawn(async move {
            if let Err(error) = store.touch(id, now).await {
                tracing::warn!(%error, key_id = %id, "could not record API key use");
            }
        });
    }

    /// The key store.
    pub fn store(&self) -> &Arc<dyn ApiKeyStore> {
        &self.store
    }

    /// The token codec.
    pub fn jwt(&self) -> &JwtCodec {
        &self.jwt
    }

    /// The key format.
    pub fn key_settings(&self) -> &KeySettings {
        &self.settings
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

/// Compile-time check that the authenticator's futures can run on any runtime thread.
const _: fn(&Config, &GatewayAuth, &HeaderMap) = |config, auth, headers| {
    fn assert_send<T: Send>(_: T) {}
    assert_send(GatewayAuth::connect(config));
    assert_send(auth.authenticate(headers));
};

/// Whether a key last used at `last` should be touched at `now`.
fn touch_due(last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    let interval = chrono::Duration::from_std(store::TOUCH_INTERVAL).unwrap_or(chrono::Duration::MAX);
    last.is_none_or(|last| last.checked_add_signed(interval).is_some_and(|next| next <= now))
}

/// Checks that `principal` holds every scope in `required_scopes` (`*` holds them all);
/// 403 `authorization_error` naming the missing ones otherwise.
pub fn authorize(principal: &Principal, required_scopes: &[String]) -> Result<(), ApiError> {
    let missing: Vec<&str> =
        required_scopes.iter().filter(|scope| !principal.has_scope(scope)).map(String::as_str).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let message =
        format!("Missing required scope{}: {}", if missing.len() == 1 { "" } else { "s" }, missing.join(", "));
    Err(ApiError::new(ErrorCode::Authorization, message).with_detail("missing_scopes", missing))
}

fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Authentication, message)
}

/// How a store failure looks to a client: 503 when the database is unreachable (retry
/// later), 500 otherwise. The cause is logged, without credentials (errors carry none).
pub(crate) fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Unavailable(source) => {
            tracing::warn!(error = %source, "API key storage unavailable");
            ApiError::external_service("key-storage", "database", true)
        }
        StoreError::Internal(source) => {
            tracing::error!(error = %source, "API key storage failure");
            ApiError::internal()
        }
    }
}

/// The one header value named `name`, if present; 401 when repeated or unreadable.
fn single_header<'a>(headers: &'a HeaderMap, name: &str, label: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(unauthenticated(&format!("Send one {label} header, not several")));
    }
    let value = value.to_str().map_err(|_| unauthenticated(&format!("Malformed {label} header")))?.trim();
    if value.is_empty() {
        return Err(unauthenticated(&format!("Empty {label} header")));
    }
    if value.len() > MAX_CREDENTIAL_LENGTH {
        return Err(unauthenticated(&format!("{label} header is too long")));
    }
    Ok(Some(value))
}

/// The credential in `headers`, if any.
fn credential<'a>(headers: &'a HeaderMap, settings: &KeySettings) -> Result<Option<Credential<'a>>, ApiError> {
    let api_key = single_header(headers, API_KEY_HEADER, "X-API-Key")?;
    let bearer = match single_header(headers, AUTHORIZATION.as_str(), "Authorization")? {
        None => None,
        Some(value) => {
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(unauthenticated("Unsupported authorization scheme: use `Authorization: Bearer <token>`"));
            }
            let token = rest.trim();
            if token.is_empty() {
                return Err(unauthenticated("Missing bearer token"));
            }
            Some(token)
        }
    };
    match (bearer, api_key) {
        (None, None) => Ok(None),
        (Some(bearer), Some(key)) if bearer != key => {
            Err(unauthenticated("Conflicting credentials: send either Authorization or X-API-Key"))
        }
        (_, Some(key)) if !settings.is_key(key) => Err(unauthenticated("Invalid API key")),
        (_, Some(key)) => Ok(Some(Credential::ApiKey(key))),
        (Some(bearer), None) if settings.is_key(bearer) => Ok(Some(Credential::ApiKey(bearer))),
        (Some(token), None) => Ok(Some(Credential::Token(token))),
    }
}

#[cfg(test)]
mod tests;

/// The server bootstrap and the REST router authenticate through the same trait.
#[async_trait::async_trait]
impl Authenticate for GatewayAuth {
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
        GatewayAuth::authenticate(self, headers).await
    }
}
