//! `agentmesh up`'s real backends, checked before the services start: PostgreSQL (its
//! migrations applied), Redis and NATS, each with a progress line on stderr
//! (`connecting to PostgreSQL at …… ok (migrations applied)`), and one line saying what to
//! do when one cannot be reached ([`BackendError`]), instead of each service failing on its
//! own.
//!
//! `--postgres URL`, `--redis URL` and `--nats URL` stand for the variables they set
//! ([`flag_overrides`]); the variables themselves work too.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::EventBus;
use agentmesh_postgres::{Database, PoolSettings};
use agentmesh_runtime::Config;
use agentmesh_runtime::bus::connect_bus;
use agentmesh_runtime::config::StorageBackend;

/// Longest wait for one backend to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A backend could not be reached, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach {backend} at {target} ({reason}): {advice}")]
pub struct BackendError {
    /// PostgreSQL, Redis or NATS.
    pub backend: &'static str,
    /// Where it was looked for (without a password).
    pub target: String,
    /// Why it failed, on one line.
    pub reason: String,
    /// What to do.
    pub advice: &'static str,
}

/// The variables `--postgres`, `--redis` and `--nats` set.
pub fn flag_overrides(postgres: Option<&str>, redis: Option<&str>, nats: Option<&str>) -> Vec<(String, String)> {
    let mut overrides = Vec::new();
    let mut set = |name: &str, value: &str| overrides.push((name.to_owned(), value.to_owned()));
    if let Some(url) = postgres {
        set("USE_DATABASE", "true");
        set("DB_URL", url);
    }
    if let Some(url) = redis {
        set("USE_REDIS", "true");
        set("REDIS_URL", url);
    }
    if let Some(url) = nats {
        set("NATS_URL", url);
    }
    overrides
}

/// Checks PostgreSQL (applying every service's migrations) and Redis when `config` uses
/// them.
pub async fn check(config: &Config) -> Result<(), BackendError> {
    if config.storage == StorageBackend::Postgres {
        let target = redact(config.database.url().expose());
        progress(&format!("connecting to PostgreSQL at {target}…"));
        let outcome = within(migrate_all(config)).await;
        finish(outcome, "ok (migrations applied)", |reason| BackendError {
            backend: "PostgreSQL",
            target,
            reason,
            advice: "start it, or fix --postgres / DB_URL (leave both out to keep data in memory)",
        })?;
    }
    if config.use_redis || config.storage == StorageBackend::Redis {
        let target = redact(config.redis.url().expose());
        progress(&format!("connecting to Redis at {target}…"));
        let outcome = within(reach(config.redis.url().expose(), 6379)).await;
        finish(outcome, "ok", |reason| BackendError {
            backend: "Redis",
            target,
            reason,
            advice: "start it, or fix --redis / REDIS_URL (leave both out to keep sessions in memory)",
        })?;
    }
    Ok(())
}

/// The event bus: NATS JetStream with a progress line when configured, else in-process.
pub async fn connect_events(config: &Config) -> Result<Arc<dyn EventBus>, BackendError> {
    let Some(url) = &config.nats.url else {
        return connect_bus(config).await.map_err(|error| BackendError {
            backend: "the in-process event bus",
            target: "memory".to_owned(),
            reason: one_line(&error.to_string()),
            advice: "this is a bug; please report it",
        });
    };
    let target = redact(url);
    progress(&format!("connecting to NATS at {target}…"));
    let outcome = within(async { connect_bus(config).await.map_err(|error| error.to_string()) }).await;
    let stream = format!("ok (JetStream stream {})", config.nats.stream);
    finish(outcome, &stream, |reason| BackendError {
        backend: "NATS",
        target,
        reason,
        advice: "start it with JetStream (`nats-server -js`), or fix --nats / NATS_URL (leave both out for the \
                 in-process bus)",
    })
}

async fn migrate_all(config: &Config) -> Result<(), String> {
    let db = &config.database;
    let pool = PoolSettings { min: 0, max: 1, acquire_timeout: CONNECT_TIMEOUT };
    let services = crate::migrate::services(config).map_err(|error| error.to_string())?;
    for service in services {
        let database = Database::lazy(db.url().expose(), &service.schema, pool.clone(), &config.resilience.database)
            .map_err(|error| error.to_string())?;
        database.migrate(service.migrations).await.map_err(|error| format!("{}: {error}", service.service))?;
    }
    Ok(())
}

/// Opens a TCP connection to the host and port of `url` (`default_port` when it has none).
async fn reach(url: &str, default_port: u16) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|error| format!("invalid URL: {error}"))?;
    let host = parsed.host_str().ok_or("the URL has no host")?.trim_matches(['[', ']']).to_owned();
    let port = parsed.port().unwrap_or(default_port);
    tokio::net::TcpStream::connect((host.as_str(), port)).await.map(drop).map_err(|error| error.to_string())
}

/// `step`, failed with "timed out" after [`CONNECT_TIMEOUT`].
async fn within<T>(step: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(CONNECT_TIMEOUT, step)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))
}

/// Ends the progress line with `ok` or `failed`; the failure as a [`BackendError`].
fn finish<T>(
    outcome: Result<T, String>,
    ok: &str,
    error: impl FnOnce(String) -> BackendError,
) -> Result<T, BackendError> {
    match outcome {
        Ok(value) => {
            eprintln!(" {ok}");
            Ok(value)
        }
        Err(reason) => {
            eprintln!(" failed");
            Err(error(one_line(&reason)))
        }
    }
}

fn progress(step: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "{step}");
    let _ = stderr.flush();
}

/// `url` without its password; a URL that does not parse is not repeated (it may hold one).
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "the configured URL".to_owned(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_stand_for_their_variables() {
        let overrides = flag_overrides(Some("postgres://p@db/x"), Some("redis://r:6379"), Some("nats://n:4222"));
        let pairs: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("USE_DATABASE", "true"),
                ("DB_URL", "postgres://p@db/x"),
                ("USE_REDIS", "true"),
                ("REDIS_URL", "redis://r:6379"),
                ("NATS_URL", "nats://n:4222")
            ]
        );
        assert!(flag_overrides(None, None, None).is_empty());
    }

    #[test]
    fn passwords_never_reach_the_terminal() {
        assert_eq!(redact("postgres://me:secret@db:5432/app"), "postgres://me:***@db:5432/app");
        assert_eq!(redact("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redact("not a url with secret"), "the configured URL");
    }

    #[tokio::test]
    async fn an_unreachable_backend_is_one_line_saying_what_to_do() {
        let port = agentmesh_testkit::ports::reserve().unwrap();
        let url = format!("redis://127.0.0.1:{port}");
        let reason = reach(&url, 6379).await.unwrap_err();
        let error = finish::<()>(Err(reason), "ok", |reason| BackendError {
            backend: "Redis",
            target: redact(&url),
            reason,
            advice: "start it",
        })
        .unwrap_err()
        .to_string();
        assert!(error.starts_with(&format!("cannot reach Redis at {url} (")), "{error}");
        assert!(error.ends_with("): start it") && !error.contains('\n'), "{error}");
    }
}
