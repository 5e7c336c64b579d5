//! Schema migrations that several replicas may start at the same moment.
//!
//! Each service embeds its migrations with `sqlx::migrate!("./migrations")` (plus, for an
//! outbox owner, [`outbox::migration`](crate::outbox::migration), combined with
//! [`with_migrations`]); their bookkeeping table `_sqlx_migrations` lives in the service's
//! schema. [`migrate`] runs them on a dedicated connection that holds a PostgreSQL
//! advisory lock keyed by the schema while it creates the schema and applies what is
//! missing: replicas of one service take turns (the first applies, the others find
//! nothing to do), while other services' schemas migrate in parallel. sqlx's own lock
//! (one per database, kept when a migration fails) is not used. The lock is released
//! when migrating ends, failed or not, and in any case when the dedicated connection
//! closes, so a failed migration never blocks the next attempt.
//!
//! DDL that is global to the database (`CREATE EXTENSION IF NOT EXISTS`) is not covered
//! by a per-schema lock: two schemas migrating at once on a fresh database may both try
//! to create the extension, and one fails with a unique violation on a system catalog.
//! Its migration rolled back as a whole, so such a failure is simply tried again.

use sqlx::migrate::{MigrateError, Migration, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection as _, Executor as _};

use crate::database::SetupError;
use crate::error::classify;
use crate::schema::Schema;

/// Takes the schema's migration lock, waiting for other holders.
const LOCK: &str = "SELECT pg_advisory_lock(hashtextextended('agentmesh.migrate.' || $1, 0))";
/// Releases it.
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended('agentmesh.migrate.' || $1, 0))";

/// A migration not applied yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMigration {
    /// Its version (the number its file name starts with).
    pub version: i64,
    /// Its description (the rest of the file name).
    pub description: String,
}

/// `embedded` plus `extra` (such as the outbox table from the library), ordered by
/// version. Versions must not repeat.
pub fn with_migrations(embedded: &Migrator, extra: impl IntoIterator<Item = Migration>) -> Migrator {
    Migrator::with_migrations(embedded.iter().cloned().chain(extra).collect())
}

/// Creates `schema` if missing and applies the migrations of `migrations` not applied
/// yet, under the schema's advisory lock (see the module documentation). Applying to an
/// up-to-date schema changes nothing.
pub async fn migrate(options: &PgConnectOptions, schema: &Schema, migrations: &Migrator) -> Result<(), SetupError> {
    let mut conn = PgConnection::connect_with(options).await.map_err(classify)?;
    let result = migrate_locked(&mut conn, schema, migrations).await;
    // Closing ends the session and with it any advisory lock it still holds.
    let _ = conn.close().await;
    result
}

async fn migrate_locked(conn: &mut PgConnection, schema: &Schema, migrations: &Migrator) -> Result<(), SetupError> {
    sqlx::query(LOCK).bind(schema.as_str()).execute(&mut *conn).await.map_err(classify)?;
    let result = create_and_apply(conn, schema, migrations).await;
    let unlocked = sqlx::query(UNLOCK).bind(schema.as_str()).execute(&mut *conn).await;
    result?;
    unlocked.map_err(classify)?;
    Ok(())
}

async fn create_and_apply(conn: &mut PgConnection, schema: &Schema, migrations: &Migrator) -> Result<(), SetupError> {
    let create = format!("CREATE SCHEMA IF NOT EXISTS {}", schema.quoted());
    match conn.execute(sqlx::AssertSqlSafe(create)).await {
        // A concurrent creator outside this lock (another tool): the schema exists.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {}
        Err(e) => return Err(classify(e).into()),
        Ok(_) => {}
    }
    conn.execute(sqlx::AssertSqlSafe(schema.set_search_path())).await.map_err(classify)?;
    let mut unlocked = with_migrations(migrations, []);
    unlocked.set_locking(false);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match unlocked.run_direct(None, &mut *conn, false).await {
            Ok(()) => return Ok(()),
            Err(MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _))
                if attempts < CATALOG_RACE_ATTEMPTS && is_catalog_race(&e) =>
            {
                tracing::info!(%schema, error = %e, "migration raced another schema's DDL; trying again");
            }
            Err(MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _)) if crate::error::is_transient(&e) => {
                return Err(classify(e).into());
            }
            Err(source) => return Err(SetupError::Migrate { schema: schema.to_string(), source }),
        }
    }
}

/// How often a migration that lost a catalog race is tried in all.
const CATALOG_RACE_ATTEMPTS: u32 = 3;

/// Whether `error` is a unique violation on a system catalog: DDL that is global to the
/// database (e.g. `CREATE EXTENSION IF NOT EXISTS`) run at the same moment by another
/// schema's migration, which the per-schema lock does not serialise. The failed
/// migration's transaction rolled back, and repeating it finds the object in place.
fn is_catalog_race(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23505") && db.constraint().is_some_and(|c| c.starts_with("pg_")))
}

/// The migrations of `migrations` not applied to `schema` yet, in order; all of them when
/// the schema or its bookkeeping table does not exist. Reads only: creates nothing.
pub async fn pending(
    options: &PgConnectOptions,
    schema: &Schema,
    migrations: &Migrator,
) -> Result<Vec<PendingMigration>, SetupError> {
    let mut conn = PgConnection::connect_with(options).await.map_err(classify)?;
    let applied = applied_versions(&mut conn, schema).await;
    let _ = conn.close().await;
    let applied = applied.map_err(classify)?;
    Ok(migrations
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| PendingMigration { version: m.version, description: m.description.to_string() })
        .collect())
}

async fn applied_versions(conn: &mut PgConnection, schema: &Schema) -> Result<Vec<i64>, sqlx::Error> {
    let table = format!("{}._sqlx_migrations", schema.quoted());
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(&table).fetch_one(&mut *conn).await?;
    if !exists {
        return Ok(Vec::new());
    }
    let sql = format!("SELECT version FROM {table} WHERE success ORDER BY version");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&mut *conn).await
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use sqlx::SqlSafeStr as _;
    use sqlx::migrate::MigrationType;

    use super::*;

    fn migration(version: i64) -> Migration {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {version}")).into_sql_str();
        Migration::new(version, Cow::Owned(format!("m{version}")), MigrationType::Simple, sql, false)
    }

    #[test]
    fn extra_migrations_are_merged_in_version_order() {
        let embedded = Migrator::with_migrations(vec![migration(1), migration(3)]);
        let merged = with_migrations(&embedded, [migration(2)]);
        assert_eq!(merged.iter().map(|m| m.version).collect::<Vec<_>>(), [1, 2, 3]);
    }
}
