//! Fixtures shared by the workspace's tests.
//!
//! Storage and event code is tested against real PostgreSQL, Redis and NATS. On a laptop
//! without them those tests skip with a one-line reason; under
//! `AGENTMESH_REQUIRE_SERVICES=1` (CI) an unreachable service fails the test instead, so a
//! stopped server can never turn a red run green.

pub mod identity;
pub mod mcp_peers;
pub mod outbox;
pub mod ports;
pub mod postgres;
pub mod redis;
pub mod traces;

use std::time::Duration;

use tokio::net::TcpStream;

pub use crate::postgres::{PgDatabase, PgSchema};

/// Generates one `#[tokio::test]` per behaviour of a suite written once for every
/// backend of a trait (a conformance suite): each test gets the backend's fixture from
/// `$fixture` (an `async fn() -> Option<Fixture>`, `None` when its server is unreachable
/// and the test skips) and runs `$suite::$name(&fixture)`.
///
/// ```ignore
/// mod conformance; // pub async fn round_trip(f: &Fixture), pub async fn paging(f: &Fixture)
///
/// async fn fixture() -> Option<conformance::Fixture> { /* the backend under test */ }
///
/// agentmesh_testkit::suite_tests!(conformance, fixture; round_trip, paging);
/// ```
#[macro_export]
macro_rules! suite_tests {
    ($suite:ident, $fixture:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some(fixture) = $fixture().await else { return };
                $suite::$name(&fixture).await;
            }
        )*
    };
}

/// Set to `1` to make tests fail, instead of skip, when a real service is unreachable.
pub const REQUIRE_SERVICES_ENV: &str = "AGENTMESH_REQUIRE_SERVICES";

/// A real backing service a test can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// PostgreSQL; URL from `AGENTMESH_TEST_DATABASE_URL`.
    Postgres,
    /// Redis; URL from `AGENTMESH_TEST_REDIS_URL`.
    Redis,
    /// NATS with JetStream; URL from `AGENTMESH_TEST_NATS_URL`.
    Nats,
}

impl Service {
    fn url_env(self) -> &'static str {
        match self {
            Service::Postgres => "AGENTMESH_TEST_DATABASE_URL",
            Service::Redis => "AGENTMESH_TEST_REDIS_URL",
            Service::Nats => "AGENTMESH_TEST_NATS_URL",
        }
    }

    fn default_url(self) -> &'static str {
        match self {
            Service::Postgres => "postgres://postgres@127.0.0.1:5432/test",
            Service::Redis => "redis://127.0.0.1:6379",
            Service::Nats => "nats://127.0.0.1:4222",
        }
    }

    /// The URL tests use for this service.
    pub fn url(self) -> String {
        std::env::var(self.url_env()).unwrap_or_else(|_| self.default_url().to_owned())
    }
}

/// Whether unreachable services fail tests (CI) rather than skip them.
pub fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES_ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Returns the service's URL when it accepts TCP connections.
///
/// When it does not, prints a one-line skip reason and returns `None`, or panics when
/// [`services_required`] is set.
pub async fn require(service: Service) -> Option<String> {
    let url = service.url();
    let address = host_port(&url);
    let reachable =
        matches!(tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(&address)).await, Ok(Ok(_)));
    if reachable {
        return Some(url);
    }
    let reason = format!("{service:?} is not reachable at {address} ({})", service.url_env());
    assert!(!services_required(), "{reason} and {REQUIRE_SERVICES_ENV}=1");
    eprintln!("skipped: {reason}");
    None
}

/// `host:port` of a URL such as `scheme://user:pass@host:port/path`.
fn host_port(url: &str) -> String {
    let without_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = without_scheme.split(['/', '?']).next().unwrap_or(without_scheme);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    host_port.to_owned()
}

/// A name no other test (or test run) uses: `prefix_` + 16 hex characters.
///
/// Lowercase letters, digits and `_` only, so it is valid as a PostgreSQL schema, a Redis
/// key prefix, a NATS stream name and a NATS subject token.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_strips_scheme_credentials_and_path() {
        assert_eq!(host_port("postgres://u:p@db:5432/test?x=1"), "db:5432");
        assert_eq!(host_port("nats://127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(host_port("redis://127.0.0.1:6379"), "127.0.0.1:6379");
    }

    #[test]
    fn unique_names_differ_and_are_identifier_safe() {
        let a = unique_name("t");
        let b = unique_name("t");
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }
}
