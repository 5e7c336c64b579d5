//! [`ApiKeyStore`] on PostgreSQL, in the gateway's own schema.
//!
//! Connecting creates the schema if missing, points every pooled connection's
//! `search_path` at `<schema>, public` and applies `services/gateway/migrations/` (their
//! bookkeeping table lives in the schema too). All statements are static SQL checked at
//! run time (no compile-time database needed); filters that may be absent are written as
//! `($n IS NULL OR column = $n)` so there is one statement per operation.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_runtime::auth::Tier;
use agentmesh_runtime::config::DatabaseConfig;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection as _, Executor as _, Row as _};
use uuid::Uuid;

use super::{ApiKeyStore, KeyPage, KeyQuery, RefreshRecord, Rotation, StoreError, TOUCH_INTERVAL};
use crate::auth::keys::{ApiKeyRecord, KeyHash};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Longest accepted schema name (PostgreSQL identifiers have 63 bytes).
const MAX_SCHEMA_LENGTH: usize = 63;

/// Most keys `find_by_prefix` returns.
const MAX_PREFIX_MATCHES: i64 = 100;

macro_rules! key_columns {
    () => {
        "id, prefix, user_id, tenant_id, tier, scopes, name, created_at, revoked_at, last_used_at"
    };
}

const INSERT: &str = "INSERT INTO api_keys (id, key_hash, prefix, user_id, tenant_id, tier, scopes, name, created_at) \
                      VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const FIND_BY_HASH: &str = concat!("SELECT ", key_columns!(), " FROM api_keys WHERE key_hash = $1");
const GET: &str = concat!("SELECT ", key_columns!(), " FROM api_keys WHERE id = $1");
const FIND_BY_PREFIX: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM api_keys WHERE starts_with(prefix, $1) ORDER BY created_at DESC, id DESC LIMIT $2"
);
/// `$1` tenant, `$2` user, `$3` include revoked.
macro_rules! list_filter {
    () => {
        " FROM api_keys WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2) \
          AND ($3 OR revoked_at IS NULL)"
    };
}
const COUNT: &str = concat!("SELECT count(*) AS total", list_filter!());
/// `$4`/`$5` cursor (created_at, id), `$6` limit, `$7` offset.
const LIST: &str = concat!(
    "SELECT ",
    key_columns!(),
    list_filter!(),
    " AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::uuid)) ",
    "ORDER BY created_at DESC, id DESC LIMIT $6 OFFSET $7"
);
const REVOKE: &str = concat!(
    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2) ",
    "RETURNING ",
    key_columns!()
);
/// `$3` = `$2` minus the touch interval.
const TOUCH: &str =
    "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at <= $3)";
const INSERT_REFRESH: &str =
    "INSERT INTO refresh_tokens (jti, family_id, api_key_id, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5)";
const LOCK_REFRESH: &str =
    "SELECT family_id, api_key_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE jti = $1 FOR UPDATE";
const USE_REFRESH: &str = "UPDATE refresh_tokens SET used_at = $2 WHERE jti = $1";
const REVOKE_FAMILY: &str =
    "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE family_id = $1 AND revoked_at IS NULL";
const REVOKE_FAMILY_OF: &str = "UPDATE refresh_tokens SET revoked_at = COALESCE(revoked_at, $2) \
                                WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE jti = $1)";
const PURGE_REFRESH: &str = "DELETE FROM refresh_tokens WHERE expires_at < $1";

/// Why connecting failed, beyond the database being unreachable.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The schema name cannot be used.
    #[error("invalid schema name {0:?}: use 1 to 63 ASCII letters, digits or `_`, not starting with a digit")]
    InvalidSchema(String),
    /// The connection URL does not parse (the URL is not repeated: it may hold a password).
    #[error("invalid database URL")]
    InvalidUrl(#[source] sqlx::Error),
    /// A migration failed.
    #[error("migrating schema {schema}: {source}")]
    Migrate {
        /// The schema being migrated.
        schema: String,
        /// What failed.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
}

/// The PostgreSQL key store. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PostgresKeyStore {
    pool: PgPool,
    schema: Arc<str>,
}

impl std::fmt::Debug for PostgresKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresKeyStore").field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl PostgresKeyStore {
    /// Connects with the `DB_*` settings (at most `DB_MAX_POOL_SIZE` connections, opened
    /// on demand, waiting `DB_POOL_TIMEOUT` for one) and prepares `schema`.
    pub async fn connect(database: &DatabaseConfig, schema: &str) -> Result<Self, StoreError> {
        Self::connect_url(database.url().expose(), schema, database.max_pool_size, database.pool_timeout).await
    }

    /// Connects to `url` with a pool of at most `max_connections` and prepares `schema`:
    /// creates it if missing and applies the migrations. Connecting again is a no-op.
    pub async fn connect_url(
        url: &str,
        schema: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        validate_schema(schema).map_err(internal)?;
        let options: PgConnectOptions = url.parse().map_err(|e| internal(ConnectError::InvalidUrl(e)))?;
        let set_path: Arc<str> = Arc::from(format!("SET search_path TO {}, public", quote_ident(schema)));
        let pool = PgPoolOptions::new()
            .min_connections(0)
            .max_connections(max_connections.max(1))
            .acquire_timeout(acquire_timeout)
            .after_connect(move |conn, _meta| {
                let set_path = Arc::clone(&set_path);
                Box::pin(async move {
                    conn.execute(sqlx::AssertSqlSafe(set_path.to_string())).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(db)?;
        create_schema(&pool, schema).await?;
        migrate(&pool, schema).await?;
        Ok(Self { pool, schema: Arc::from(schema) })
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The connection pool (tests and maintenance).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn create_schema(pool: &PgPool, schema: &str) -> Result<(), StoreError> {
    let sql = format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema));
    match pool.execute(sqlx::AssertSqlSafe(sql)).await {
        Ok(_) => Ok(()),
        // Two replicas creating the schema at once: one wins, the other sees a duplicate.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => Ok(()),
        Err(e) => Err(db(e)),
    }
}

/// Applies the migrations on a dedicated connection. sqlx holds a database-wide advisory
/// lock while migrating and keeps it if a migration fails, so that connection is closed
/// rather than returned to the pool.
///
/// `run_direct` is `Migrator::run` without its generic `Acquire` step, whose future the
/// compiler cannot prove `Send` ("implementation of `Acquire` is not general enough");
/// sqlx keeps it public for exactly this.
async fn migrate(pool: &PgPool, schema: &str) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await.map_err(db)?;
    match MIGRATOR.run_direct(None, &mut *conn, false).await {
        Ok(()) => Ok(()),
        Err(source) => {
            let _ = conn.detach().close().await;
            Err(match source {
                sqlx::migrate::MigrateError::Execute(e) => db(e),
                source => internal(ConnectError::Migrate { schema: schema.to_owned(), source }),
            })
        }
    }
}

fn validate_schema(schema: &str) -> Result<(), ConnectError> {
    let valid = !schema.is_empty()
        && schema.len() <= MAX_SCHEMA_LENGTH
        && schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if valid { Ok(()) } else { Err(ConnectError::InvalidSchema(schema.to_owned())) }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn internal(error: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Internal(Box::new(error))
}

/// Connection-level and transient server failures are `Unavailable`; the rest `Internal`.
fn db(error: sqlx::Error) -> StoreError {
    let transient = match &error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || matches!(code.as_ref(), "40001" | "40P01" | "57014")
        }),
        _ => false,
    };
    if transient { StoreError::Unavailable(Box::new(error)) } else { StoreError::Internal(Box::new(error)) }
}

fn key(row: &PgRow) -> Result<ApiKeyRecord, StoreError> {
    let tier: String = row.try_get("tier").map_err(db)?;
    Ok(ApiKeyRecord {
        id: row.try_get("id").map_err(db)?,
        prefix: row.try_get("prefix").map_err(db)?,
        user_id: row.try_get("user_id").map_err(db)?,
        tenant_id: row.try_get("tenant_id").map_err(db)?,
        tier: Tier::parse(&tier).ok_or_else(|| StoreError::Internal(format!("unknown tier {tier:?}").into()))?,
        scopes: row.try_get("scopes").map_err(db)?,
        name: row.try_get("name").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
        revoked_at: row.try_get("revoked_at").map_err(db)?,
        last_used_at: row.try_get("last_used_at").map_err(db)?,
    })
}

fn touch_threshold(at: DateTime<Utc>) -> DateTime<Utc> {
    let interval = chrono::Duration::from_std(TOUCH_INTERVAL).unwrap_or(chrono::Duration::zero());
    at.checked_sub_signed(interval).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Compile-time check that connecting can be awaited on any runtime thread (`Send`).
const _: fn(&DatabaseConfig) = |database| {
    fn assert_send<T: Send>(_: T) {}
    assert_send(PostgresKeyStore::connect(database, super::DEFAULT_SCHEMA));
};

#[async_trait]
impl ApiKeyStore for PostgresKeyStore {
    async fn insert(&self, record: &ApiKeyRecord, hash: &KeyHash) -> Result<(), StoreError> {
        sqlx::query(INSERT)
            .bind(record.id)
            .bind(hash.as_bytes().as_slice())
            .bind(&record.prefix)
            .bind(&record.user_id)
            .bind(&record.tenant_id)
            .bind(record.tier.as_str())
            .bind(&record.scopes)
            .bind(&record.name)
            .bind(record.created_at)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query(FIND_BY_HASH).bind(hash.as_bytes().as_slice()).fetch_optional(&self.pool).await;
        row.map_err(db)?.as_ref().map(key).transpose()
    }

    async fn get(&self, id: Uuid) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query(GET).bind(id).fetch_optional(&self.pool).await.map_err(db)?;
        row.as_ref().map(key).transpose()
    }

    async fn find_by_prefix(&self, prefix: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = sqlx::query(FIND_BY_PREFIX).bind(prefix).bind(MAX_PREFIX_MATCHES).fetch_all(&self.pool).await;
        rows.map_err(db)?.iter().map(key).collect()
    }

    async fn list(&self, query: &KeyQuery) -> Result<KeyPage, StoreError> {
        let total: i64 = sqlx::query(COUNT)
            .bind(query.tenant_id.as_deref())
            .bind(query.user_id.as_deref())
            .bind(query.include_revoked)
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get("total"))
            .map_err(db)?;
        let rows = sqlx::query(LIST)
            .bind(query.tenant_id.as_deref())
            .bind(query.user_id.as_deref())
            .bind(query.include_revoked)
            .bind(query.after.map(|c| c.created_at))
            .bind(query.after.map(|c| c.id))
            .bind(i64::from(query.limit))
            .bind(if query.after.is_some() { 0 } else { i64::try_from(query.offset).unwrap_or(i64::MAX) })
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let items = rows.iter().map(key).collect::<Result<_, _>>()?;
        Ok(KeyPage { items, total: u64::try_from(total).unwrap_or(0) })
    }

    async fn revoke(
        &self,
        tenant_id: Option<&str>,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query(REVOKE).bind(id).bind(tenant_id).bind(at).fetch_optional(&self.pool).await;
        row.map_err(db)?.as_ref().map(key).transpose()
    }

    async fn touch(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let done = sqlx::query(TOUCH).bind(id).bind(at).bind(touch_threshold(at)).execute(&self.pool).await;
        Ok(done.map_err(db)?.rows_affected() > 0)
    }

    async fn insert_refresh(&self, token: &RefreshRecord) -> Result<(), StoreError> {
        sqlx::query(INSERT_REFRESH)
            .bind(token.jti)
            .bind(token.family_id)
            .bind(token.api_key_id)
            .bind(token.issued_at)
            .bind(token.expires_at)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn rotate_refresh(&self, jti: Uuid, next: &RefreshRecord, at: DateTime<Utc>) -> Result<Rotation, StoreError> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        // The row lock makes concurrent presentations of one token take turns: the second
        // sees the first's `used_at` and counts as reuse.
        let Some(row) = sqlx::query(LOCK_REFRESH).bind(jti).fetch_optional(&mut *tx).await.map_err(db)? else {
            return Ok(Rotation::Unknown);
        };
        let family_id: Uuid = row.try_get("family_id").map_err(db)?;
        let api_key_id: Uuid = row.try_get("api_key_id").map_err(db)?;
        let expires_at: DateTime<Utc> = row.try_get("expires_at").map_err(db)?;
        let used_at: Option<DateTime<Utc>> = row.try_get("used_at").map_err(db)?;
        let revoked_at: Option<DateTime<Utc>> = row.try_get("revoked_at").map_err(db)?;
        if expires_at <= at {
            return Ok(Rotation::Unknown);
        }
        if used_at.is_some() || revoked_at.is_some() {
            sqlx::query(REVOKE_FAMILY).bind(family_id).bind(at).execute(&mut *tx).await.map_err(db)?;
            tx.commit().await.map_err(db)?;
            return Ok(Rotation::Reused);
        }
        sqlx::query(USE_REFRESH).bind(jti).bind(at).execute(&mut *tx).await.map_err(db)?;
        sqlx::query(INSERT_REFRESH)
            .bind(next.jti)
            .bind(family_id)
            .bind(api_key_id)
            .bind(next.issued_at)
            .bind(next.expires_at)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Rotation::Rotated { api_key_id })
    }

    async fn revoke_refresh_family(&self, jti: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(REVOKE_FAMILY_OF).bind(jti).bind(at).execute(&self.pool).await.map_err(db)?;
        Ok(())
    }

    async fn purge_refresh(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query(PURGE_REFRESH).bind(before).execute(&self.pool).await.map_err(db)?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked_and_quoted() {
        for ok in ["gateway", "gw_0123456789abcdef", "_x", "A1"] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "a-b", "a b", "a\"b", "é", &"x".repeat(64)] {
            assert!(validate_schema(bad).is_err(), "{bad:?}");
        }
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn the_touch_threshold_is_one_interval_back() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(touch_threshold(at).timestamp(), 1_800_000_000 - 60);
    }
}
