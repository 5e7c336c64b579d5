//! `agentmesh migrate [--check]`: applies (or, with `--check`, lists) the PostgreSQL
//! migrations of every service that owns tables, against the `DB_*` settings.
//!
//! ```text
//! agentmesh migrate           # apply what is pending; exit 0, or 1 on failure
//! agentmesh migrate --check   # list what is pending; exit 1 when anything is, 0 when nothing
//! ```
//!
//! Each service's migrations are those it applies itself when it starts, in its own
//! schema and under the same per-schema advisory lock ([`agentmesh_postgres::migrate()`]),
//! so running this while services start is safe. Running it first lets a deployment
//! apply schema changes as a separate step (e.g. a Kubernetes Job before the rollout)
//! and `--check` lets CI or an operator see whether a database is up to date.

use std::io::Write as _;

use agentmesh_postgres::{Database, PendingMigration, PoolSettings, SetupError};
use agentmesh_runtime::{Config, ServerError};
use sqlx::migrate::Migrator;

/// One service's tables: where they live and how they are made.
#[derive(Debug)]
pub struct ServiceMigrations {
    /// The service's name.
    pub service: &'static str,
    /// The schema its tables live in.
    pub schema: String,
    /// Its migrations, as it embeds them.
    pub migrations: &'static Migrator,
}

/// Every service that owns PostgreSQL tables, with the schema `config` gives it;
/// services gaining tables join this list.
pub fn services(config: &Config) -> Result<Vec<ServiceMigrations>, MigrateError> {
    Ok(vec![
        ServiceMigrations {
            service: "session-store",
            schema: agentmesh_session_store::POSTGRES_SCHEMA.to_owned(),
            migrations: agentmesh_session_store::store::postgres::migrations(),
        },
        ServiceMigrations {
            service: "mcp-broker",
            schema: agentmesh_mcp_broker::POSTGRES_SCHEMA.to_owned(),
            migrations: agentmesh_mcp_broker::store::postgres::migrations(),
        },
        ServiceMigrations {
            service: "agent-orchestrator",
            schema: agentmesh_agent_orchestrator::backend::POSTGRES_SCHEMA.to_owned(),
            migrations: agentmesh_agent_orchestrator::store::postgres::migrations(),
        },
        ServiceMigrations {
            service: "gateway",
            schema: agentmesh_gateway::auth::store::schema(config)?,
            migrations: agentmesh_gateway::auth::store::migrations(),
        },
    ])
}

/// Why `agentmesh migrate` failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// Starting the process failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// A service's schema could not be checked or migrated.
    #[error("{service}: {source}")]
    Setup {
        /// The service.
        service: &'static str,
        /// What failed.
        #[source]
        source: SetupError,
    },
    /// A service's settings are unusable.
    #[error("gateway: {0}")]
    Settings(#[from] agentmesh_gateway::auth::store::StoreError),
    /// `--check` found migrations not applied yet.
    #[error("{0} migration(s) pending: run `agentmesh migrate`")]
    Pending(usize),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs `agentmesh migrate`, or `agentmesh migrate --check` when `check`.
pub async fn run(config: Config, check: bool) -> Result<(), MigrateError> {
    let db = &config.database;
    let url = db.url();
    let pool = PoolSettings { min: 0, max: 1, acquire_timeout: db.pool_timeout };
    let mut out = std::io::stdout().lock();
    let mut pending_total = 0;
    for service in services(&config)? {
        let setup = |source| MigrateError::Setup { service: service.service, source };
        let database =
            Database::lazy(url.expose(), &service.schema, pool.clone(), &config.resilience.database).map_err(setup)?;
        let pending = database.pending(service.migrations).await.map_err(setup)?;
        pending_total += pending.len();
        if !check && !pending.is_empty() {
            database.migrate(service.migrations).await.map_err(setup)?;
        }
        report(&mut out, &service, &pending, check)?;
    }
    out.flush()?;
    if check && pending_total > 0 { Err(MigrateError::Pending(pending_total)) } else { Ok(()) }
}

/// One service's lines: a summary, then one line per pending (or just applied) migration.
fn report(
    out: &mut impl std::io::Write,
    service: &ServiceMigrations,
    pending: &[PendingMigration],
    check: bool,
) -> std::io::Result<()> {
    let status = match (pending.len(), check) {
        (0, _) => "up to date".to_owned(),
        (n, true) => format!("{n} pending"),
        (n, false) => format!("applied {n}"),
    };
    writeln!(out, "{} (schema {}): {status}", service.service, service.schema)?;
    for migration in pending {
        writeln!(out, "  {:04} {}", migration.version, migration.description)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_list_pending_migrations_per_service() {
        let service = ServiceMigrations {
            service: "gateway",
            schema: "gateway".into(),
            migrations: agentmesh_gateway::auth::store::migrations(),
        };
        let pending = [PendingMigration { version: 1, description: "api keys".into() }];
        let mut out = Vec::new();
        report(&mut out, &service, &pending, true).unwrap_or_else(|e| panic!("{e}"));
        report(&mut out, &service, &[], true).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            String::from_utf8_lossy(&out),
            "gateway (schema gateway): 1 pending\n  0001 api keys\ngateway (schema gateway): up to date\n"
        );
    }

    #[test]
    fn every_service_with_tables_is_listed_once() {
        let config = Config::load(None, [("GATEWAY_DB_SCHEMA".to_owned(), "gw_test".to_owned())])
            .unwrap_or_else(|e| panic!("{e}"));
        let services = services(&config).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<_> = services.iter().map(|s| (s.service, s.schema.as_str())).collect();
        assert_eq!(
            names,
            [
                ("session-store", "session_store"),
                ("mcp-broker", "mcp_broker"),
                ("agent-orchestrator", "agent_orchestrator"),
                ("gateway", "gw_test")
            ]
        );
    }
}
