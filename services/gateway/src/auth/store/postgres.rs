//! [`ApiKeyStore`] on PostgreSQL, in the gateway's own schema.
//!
//! Setting up (schema, pool, advisory-locked migrations of `services/gateway/migrations/`)
//! is [`agentmesh_postgres::Database`]'s, and every operation runs under its database
//! policy (breaker → timeout → retry → bulkhead): while PostgreSQL is down the breaker
//! opens and authenticated requests are answered "unavailable" at once instead of each
//! waiting out the pool timeout. All statements are static SQL checked at run time (no
//! compile-time database needed); filters that may be absent are written as
//! `($n IS NULL OR column = $n)` so there is one statement per operation.

use agentmesh_postgres::{Database, DbError, PoolSettings, classify, classify_commit};
use agentmesh_resilience::{Preset, ResilienceError};
use agentmesh_runtime::auth::Tier;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgRow};
use uuid::Uuid;

use super::{ApiKeyStore, KeyPage, KeyQuery, RefreshRecord, Rotation, StoreError, TOUCH_INTERVAL};
use crate::auth::keys::{ApiKeyRecord, KeyHash};

/// The migrations in `services/gateway/migrations`.
static MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// The gateway's migrations (for `agentmesh migrate`).
pub fn migrations() -> &'static Migrator {
    &MIGRATIONS
}

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

/// The PostgreSQL key store. Cheap to clone; clones share the pool and the policy.
#[derive(Clone)]
pub struct PostgresKeyStore {
    database: Database,
}

impl std::fmt::Debug for PostgresKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresKeyStore").field("schema", &self.schema()).finish_non_exhaustive()
    }
}

impl PostgresKeyStore {
    /// Connects to `url` and prepares `schema` (created if missing, migrated under its
    /// advisory lock); operations run under `preset`. Connecting again is a no-op.
    pub async fn connect(url: &str, schema: &str, pool: PoolSettings, preset: &Preset) -> Result<Self, StoreError> {
        let database = Database::connect(url, schema, pool, preset, migrations()).await.map_err(|error| {
            if error.is_unavailable() {
                StoreError::Unavailable(Box::new(error))
            } else {
                StoreError::Internal(Box::new(error))
            }
        })?;
        Ok(Self::new(database))
    }

    /// A store on an already prepared `database` (nothing is checked or migrated).
    pub fn new(database: Database) -> Self {
        Self { database }
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        self.database.schema().as_str()
    }

    /// The connection pool (tests and maintenance).
    pub fn pool(&self) -> &PgPool {
        self.database.pool()
    }

    /// The database policy's state (breaker for health output).
    pub fn resilience(&self) -> &agentmesh_resilience::Resilience {
        self.database.resilience()
    }

    /// Runs one operation under the database policy; `op` is one attempt.
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DbError>>,
    {
        self.database.run(op).await.map_err(store_error)
    }
}

/// Unavailable (transient, timed out, breaker open, bulkhead full) or internal.
fn store_error(error: ResilienceError<DbError>) -> StoreError {
    if DbError::unavailable(&error) {
        StoreError::Unavailable(Box::new(error))
    } else {
        StoreError::Internal(Box::new(error))
    }
}

fn key(row: &PgRow) -> Result<ApiKeyRecord, DbError> {
    let tier: String = row.try_get("tier").map_err(classify)?;
    Ok(ApiKeyRecord {
        id: row.try_get("id").map_err(classify)?,
        prefix: row.try_get("prefix").map_err(classify)?,
        user_id: row.try_get("user_id").map_err(classify)?,
        tenant_id: row.try_get("tenant_id").map_err(classify)?,
        tier: Tier::parse(&tier).ok_or_else(|| DbError::corrupt(format!("unknown tier {tier:?}")))?,
        scopes: row.try_get("scopes").map_err(classify)?,
        name: row.try_get("name").map_err(classify)?,
        created_at: row.try_get("created_at").map_err(classify)?,
        revoked_at: row.try_get("revoked_at").map_err(classify)?,
        last_used_at: row.try_get("last_used_at").map_err(classify)?,
    })
}

fn touch_threshold(at: DateTime<Utc>) -> DateTime<Utc> {
    let interval = chrono::Duration::from_std(TOUCH_INTERVAL).unwrap_or(chrono::Duration::zero());
    at.checked_sub_signed(interval).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Compile-time check that connecting can be awaited on any runtime thread (`Send`).
const _: fn(&str, PoolSettings, &Preset) = |url, pool, preset| {
    fn assert_send<T: Send>(_: T) {}
    assert_send(PostgresKeyStore::connect(url, super::DEFAULT_SCHEMA, pool, preset));
};

#[async_trait]
impl ApiKeyStore for PostgresKeyStore {
    async fn insert(&self, record: &ApiKeyRecord, hash: &KeyHash) -> Result<(), StoreError> {
        let pool = self.pool();
        self.call(|| async {
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
                .execute(pool)
                .await
                .map_err(classify_commit)
        })
        .await?;
        Ok(())
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKeyRecord>, StoreError> {
        let pool = self.pool();
        self.call(|| async {
            let row = sqlx::query(FIND_BY_HASH).bind(hash.as_bytes().as_slice()).fetch_optional(pool).await;
            row.map_err(classify)?.as_ref().map(key).transpose()
        })
        .await
    }

    async fn get(&self, id: Uuid) -> Result<Option<ApiKeyRecord>, StoreError> {
        let pool = self.pool();
        self.call(|| async {
            let row = sqlx::query(GET).bind(id).fetch_optional(pool).await.map_err(classify)?;
            row.as_ref().map(key).transpose()
        })
        .await
    }

    async fn find_by_prefix(&self, prefix: &str) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let pool = self.pool();
        self.call(|| async {
            let rows = sqlx::query(FIND_BY_PREFIX).bind(prefix).bind(MAX_PREFIX_MATCHES).fetch_all(pool).await;
            rows.map_err(classify)?.iter().map(key).collect()
        })
        .await
    }

    async fn list(&self, query: &KeyQuery) -> Result<KeyPage, StoreError> {
        let pool = self.pool();
        self.call(|| list(pool, query)).await
    }

    async fn revoke(
        &self,
        tenant_id: Option<&str>,
        id: Uuid,
        at: DateTime<Utc>,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let pool = self.pool();
        self.call(|| async {
            // Idempotent (the first `revoked_at` is kept), so safe to repeat.
            let row = sqlx::query(REVOKE).bind(id).bind(tenant_id).bind(at).fetch_optional(pool).await;
            row.map_err(classify)?.as_ref().map(key).transpose()
        })
        .await
    }

    async fn touch(&self, id: Uuid, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let pool = self.pool();
        self.call(|| async {
            let done = sqlx::query(TOUCH).bind(id).bind(at).bind(touch_threshold(at)).execute(pool).await;
            Ok(done.map_err(classify)?.rows_affected() > 0)
        })
        .await
    }

    async fn insert_refresh(&self, token: &RefreshRecord) -> Result<(), StoreError> {
        let pool = self.pool();
        self.call(|| async {
            sqlx::query(INSERT_REFRESH)
                .bind(token.jti)
                .bind(token.family_id)
                .bind(token.api_key_id)
                .bind(token.issued_at)
                .bind(token.expires_at)
                .execute(pool)
                .await
                .map_err(classify_commit)
        })
        .await?;
        Ok(())
    }

    async fn rotate_refresh(&self, jti: Uuid, next: &RefreshRecord, at: DateTime<Utc>) -> Result<Rotation, StoreError> {
        let pool = self.pool();
        self.call(|| rotate(pool, jti, next, at)).await
    }

    async fn revoke_refresh_family(&self, jti: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        let pool = self.pool();
        self.call(|| async { sqlx::query(REVOKE_FAMILY_OF).bind(jti).bind(at).execute(pool).await.map_err(classify) })
            .await?;
        Ok(())
    }

    async fn purge_refresh(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let pool = self.pool();
        self.call(|| async { sqlx::query(PURGE_REFRESH).bind(before).execute(pool).await.map_err(classify) })
            .await
            .map(|done| done.rows_affected())
    }
}

/// One attempt at a page of keys.
async fn list(pool: &PgPool, query: &KeyQuery) -> Result<KeyPage, DbError> {
    let total: i64 = sqlx::query(COUNT)
        .bind(query.tenant_id.as_deref())
        .bind(query.user_id.as_deref())
        .bind(query.include_revoked)
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get("total"))
        .map_err(classify)?;
    let rows = sqlx::query(LIST)
        .bind(query.tenant_id.as_deref())
        .bind(query.user_id.as_deref())
        .bind(query.include_revoked)
        .bind(query.after.map(|c| c.created_at))
        .bind(query.after.map(|c| c.id))
        .bind(i64::from(query.limit))
        .bind(if query.after.is_some() { 0 } else { i64::try_from(query.offset).unwrap_or(i64::MAX) })
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    let items = rows.iter().map(key).collect::<Result<_, _>>()?;
    Ok(KeyPage { items, total: u64::try_from(total).unwrap_or(0) })
}

/// One attempt at rotating a refresh token, in a transaction: everything before `COMMIT`
/// is safe to repeat (the server rolls back), the commit itself is not.
async fn rotate(pool: &PgPool, jti: Uuid, next: &RefreshRecord, at: DateTime<Utc>) -> Result<Rotation, DbError> {
    let mut tx = pool.begin().await.map_err(classify)?;
    // The row lock makes concurrent presentations of one token take turns: the second
    // sees the first's `used_at` and counts as reuse.
    let Some(row) = sqlx::query(LOCK_REFRESH).bind(jti).fetch_optional(&mut *tx).await.map_err(classify)? else {
        return Ok(Rotation::Unknown);
    };
    let family_id: Uuid = row.try_get("family_id").map_err(classify)?;
    let api_key_id: Uuid = row.try_get("api_key_id").map_err(classify)?;
    let expires_at: DateTime<Utc> = row.try_get("expires_at").map_err(classify)?;
    let used_at: Option<DateTime<Utc>> = row.try_get("used_at").map_err(classify)?;
    let revoked_at: Option<DateTime<Utc>> = row.try_get("revoked_at").map_err(classify)?;
    if expires_at <= at {
        return Ok(Rotation::Unknown);
    }
    if used_at.is_some() || revoked_at.is_some() {
        sqlx::query(REVOKE_FAMILY).bind(family_id).bind(at).execute(&mut *tx).await.map_err(classify)?;
        tx.commit().await.map_err(classify_commit)?;
        return Ok(Rotation::Reused);
    }
    sqlx::query(USE_REFRESH).bind(jti).bind(at).execute(&mut *tx).await.map_err(classify)?;
    sqlx::query(INSERT_REFRESH)
        .bind(next.jti)
        .bind(family_id)
        .bind(api_key_id)
        .bind(next.issued_at)
        .bind(next.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(classify)?;
    tx.commit().await.map_err(classify_commit)?;
    Ok(Rotation::Rotated { api_key_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_touch_threshold_is_one_interval_back() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(touch_threshold(at).timestamp(), 1_800_000_000 - 60);
    }
}
