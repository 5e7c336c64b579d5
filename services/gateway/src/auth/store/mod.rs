//! Where API keys and refresh-token state live: the [`ApiKeyStore`] contract, an
//! in-memory implementation ([`MemoryKeyStore`]) and a PostgreSQL one ([`PostgresKeyStore`]).
//!
//! # Refresh tokens
//!
//! Refresh tokens are JWTs, but each one also has a server-side record (its `jti`), so
//! that rotation can be enforced: [`ApiKeyStore::rotate_refresh`] consumes a token and
//! records its successor in one atomic step. Tokens descending from one `IssueToken` form
//! a *family*. Presenting an already consumed token again means it was copied (either the
//! client or an attacker holds a stale copy), so the whole family is revoked and both
//! parties have to exchange the API key again (the reuse detection of the OAuth 2.0
//! Security Best Current Practice, RFC 9700 §4.14).
//!
//! # Choosing a store
//!
//! [`open`] picks PostgreSQL when the configuration selects it (`USE_DATABASE`), in the
//! schema named by [`SCHEMA_ENV`] (default [`DEFAULT_SCHEMA`]), and memory otherwise
//! (keys then last as long as the process: development only).

mod memory;
mod postgres;

use std::sync::Arc;
use std::time::Duration;

use agentmesh_runtime::Config;
use agentmesh_runtime::config::StorageBackend;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use self::memory::MemoryKeyStore;
pub use self::postgres::{ConnectError, PostgresKeyStore};
use super::keys::{ApiKeyRecord, KeyHash};

/// `last_used_at` is written at most once per this interval per key.
pub const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// The schema the gateway's tables live in unless [`SCHEMA_ENV`] names another.
pub const DEFAULT_SCHEMA: &str = "gateway";

/// Variable naming the PostgreSQL schema of the key tables (tests use a unique one per
/// run); read as [`GatewaySettings::db_schema`](crate::settings::GatewaySettings).
pub const SCHEMA_ENV: &str = "GATEWAY_DB_SCHEMA";

/// Why a store operation failed. Never carries a key or a hash.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached now; retrying later may work.
    #[error("key storage unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A bug, corrupt data or a misconfiguration.
    #[error("key storage failure: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A position in a listing: the last item's creation time and id (newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` of the last item returned.
    pub created_at: DateTime<Utc>,
    /// Its id (ties on `created_at` are ordered by id).
    pub id: Uuid,
}

/// Which keys to list, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyQuery {
    /// Only this tenant's keys; `None` for every tenant (operators' CLI only).
    pub tenant_id: Option<String>,
    /// Only this user's keys.
    pub user_id: Option<String>,
    /// Include revoked keys.
    pub include_revoked: bool,
    /// Most keys to return.
    pub limit: u32,
    /// Keys to skip (ignored with `after`).
    pub offset: u64,
    /// Continue after this position.
    pub after: Option<Cursor>,
}

/// A page of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// The keys, newest first.
    pub items: Vec<ApiKeyRecord>,
    /// Keys matching the filter across all pages.
    pub total: u64,
}

/// The server-side record of one refresh token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshRecord {
    /// The token's `jti`.
    pub jti: Uuid,
    /// The token family (one per `IssueToken`).
    pub family_id: Uuid,
    /// The API key the family was issued for.
    pub api_key_id: Uuid,
    /// When the token was issued.
    pub issued_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// The token was valid: it is now consumed and its successor recorded.
    Rotated {
        /// The API key the family belongs to.
        api_key_id: Uuid,
    },
    /// The token had already been consumed (or its family revoked): the family is now
    /// revoked.
    Reused,
    /// No such token, or it has expired.
    Unknown,
}

/// Storage of API keys (hashed) and refresh-token state.
#[async_trait]
pub trait ApiKeyStore: Send + Sync + std::fmt::Debug {
    /// Stores a new key under its hash.
    async fn insert(&self, record: &ApiKeyRecord, hash: &KeyHash) -> Result<(), StoreError>;

    /// The key with this hash, revoked or not.
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// The key with this id, revoked or not.
    async fn get(&self, id: Uuid) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Keys whose visible prefix starts with `prefix`, across tenants (for the CLI).
    async fn find_by_prefix(&self, prefix: &str) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// A page of keys.
    async fn list(&self, query: &KeyQuery) -> Result<KeyPage, StoreError>;

    /// Revokes the key `id` at `at` if it belongs to `tenant_id` (`None`: any tenant).
    /// Revoking a revoked key keeps its first `revoked_at`. `None` when there is no such
    /// key (or it is another tenant's).
    async fn revoke(
        &self,
        tenant_id: Option<&str>,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Sets `last_used_at` to `at` unless it was set less than [`TOUCH_INTERVAL`] before;
    /// whether it wrote.
    async fn touch(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Records the first refresh token of a new family.
    async fn insert_refresh(&self, token: &RefreshRecord) -> Result<(), StoreError>;

    /// Atomically consumes the refresh token `jti` at `at` and records `next` (same family)
    /// as its successor; see [`Rotation`] for the outcomes.
    async fn rotate_refresh(&self, jti: Uuid, next: &RefreshRecord, at: DateTime<Utc>) -> Result<Rotation, StoreError>;

    /// Revokes every refresh token of the family `jti` belongs to (used when the family's
    /// key turns out to be revoked). Revoking a key needs no call: refreshing checks the key.
    async fn revoke_refresh_family(&self, jti: Uuid, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Deletes refresh-token records that expired before `before`; how many.
    async fn purge_refresh(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
}

/// The store the configuration selects: PostgreSQL with `USE_DATABASE` (schema from
/// [`SCHEMA_ENV`]), memory otherwise. With `USE_REDIS` keys stay in memory (a warning is
/// logged): there is no Redis key store.
pub async fn open(config: &Config) -> Result<Arc<dyn ApiKeyStore>, StoreError> {
    match config.storage {
        StorageBackend::Postgres => {
            let store = PostgresKeyStore::connect(&config.database, &schema(config)?).await?;
            Ok(Arc::new(store))
        }
        StorageBackend::Redis => {
            tracing::warn!("API keys are kept in memory: set USE_DATABASE=true to persist them");
            Ok(Arc::new(MemoryKeyStore::new()))
        }
        StorageBackend::Memory => Ok(Arc::new(MemoryKeyStore::new())),
    }
}

/// The schema named by [`SCHEMA_ENV`], or [`DEFAULT_SCHEMA`].
pub fn schema(config: &Config) -> Result<String, StoreError> {
    let settings = config.settings::<crate::settings::GatewaySettings>();
    Ok(settings.map_err(|error| StoreError::Internal(Box::new(error)))?.db_schema)
}
