//! A test's own corner of the shared PostgreSQL: [`PgSchema`] (a schema unique to the
//! test) and [`PgDatabase`] (a whole database, for tools that manage several schemas),
//! each dropped when the guard is dropped — also when the test panics — so parallel
//! tests never see each other's tables and nothing is left behind.

use std::time::Duration;

use sqlx::{Connection as _, PgConnection};

use crate::{Service, require, unique_name};

/// Longest the cleanup on drop may wait for locks held by the test's connections.
const LOCK_TIMEOUT: &str = "SET lock_timeout = '20s'";

/// A schema unique to one test, dropped with `CASCADE` when this is dropped.
#[derive(Debug)]
pub struct PgSchema(Claim);

impl PgSchema {
    /// A fresh schema name (`<prefix>_<16 hex>`, not created yet: the code under test
    /// creates it) on the test PostgreSQL, or `None` when PostgreSQL is unreachable and
    /// tests may skip (see [`require`]).
    pub async fn start(prefix: &str) -> Option<Self> {
        let server = require(Service::Postgres).await?;
        Some(Self::new(&server, &unique_name(prefix)))
    }

    /// Claims `name` on the PostgreSQL at `server`.
    pub fn new(server: &str, name: &str) -> Self {
        Self(Claim::new(server, server, name, format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")))
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The server's URL with `application_name` set to the schema's name: connections
    /// made with it are closed before the schema is dropped, so a test that left a pool
    /// open cannot block the cleanup.
    pub fn url(&self) -> &str {
        &self.0.url
    }
}

/// A database unique to one test, created by [`PgDatabase::create`] and dropped (with
/// its connections) when this is dropped.
#[derive(Debug)]
pub struct PgDatabase(Claim);

impl PgDatabase {
    /// Creates a fresh database on the test PostgreSQL, or `None` when PostgreSQL is
    /// unreachable and tests may skip.
    pub async fn create(prefix: &str) -> Option<Self> {
        let server = require(Service::Postgres).await?;
        let name = unique_name(prefix);
        let mut conn = PgConnection::connect(&server).await.unwrap_or_else(|e| panic!("connecting to {server}: {e}"));
        let create = format!("CREATE DATABASE \"{name}\"");
        if let Err(error) = sqlx::query(sqlx::AssertSqlSafe(create)).execute(&mut conn).await {
            panic!("creating test database {name}: {error}");
        }
        let _ = conn.close().await;
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        Some(Self(Claim::new(&server, &with_database(&server, &name), &name, drop)))
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// A URL connecting to the database (tagged like [`PgSchema::url`]).
    pub fn url(&self) -> &str {
        &self.0.url
    }
}

/// Something named on the server that `drop` removes when the guard is dropped, after
/// closing the connections tagged with its name.
#[derive(Debug)]
struct Claim {
    server: String,
    url: String,
    name: String,
    drop: String,
}

impl Claim {
    fn new(server: &str, url: &str, name: &str, drop: String) -> Self {
        let url = with_param(url, "application_name", name);
        Self { server: server.to_owned(), url, name: name.to_owned(), drop }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Err(error) = cleanup(&self.server, &self.name, std::mem::take(&mut self.drop)) {
            eprintln!("warning: could not clean up test {}: {error}", self.name);
        }
    }
}

/// Closes the connections tagged `application_name`, then runs `statement`; on a thread
/// with a runtime of its own, since drop cannot await and may run while a runtime unwinds.
fn cleanup(server: &str, application_name: &str, statement: String) -> Result<(), String> {
    let (server, application_name) = (server.to_owned(), application_name.to_owned());
    let done = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let work = async {
                let mut conn = PgConnection::connect(&server).await?;
                sqlx::query(LOCK_TIMEOUT).execute(&mut conn).await?;
                sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
                    .bind(&application_name)
                    .execute(&mut conn)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await?;
                conn.close().await
            };
            match tokio::time::timeout(Duration::from_secs(30), work).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        })
    });
    done.join().map_err(|_| "cleanup thread panicked".to_owned())?
}

/// `url` with the query parameter `name=value` added.
fn with_param(url: &str, name: &str, value: &str) -> String {
    format!("{url}{}{name}={value}", if url.contains('?') { '&' } else { '?' })
}

/// `url` with its database (path) replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_rewritten() {
        assert_eq!(with_param("postgres://h/db", "a", "b"), "postgres://h/db?a=b");
        assert_eq!(with_param("postgres://h/db?x=1", "a", "b"), "postgres://h/db?x=1&a=b");
        assert_eq!(with_database("postgres://u@h:5432/test", "t2"), "postgres://u@h:5432/t2");
        assert_eq!(with_database("postgres://u@h:5432/test?x=1", "t2"), "postgres://u@h:5432/t2?x=1");
        assert_eq!(with_database("postgres://u@h:5432", "t2"), "postgres://u@h:5432/t2");
    }
}
