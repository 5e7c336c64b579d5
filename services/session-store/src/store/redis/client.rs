//! The connection to Redis: a fred pool, the scripts loaded into it, and every call run
//! through the database resilience policy (ARCHITECTURE §5) with failures mapped to
//! [`StoreError`].
//!
//! Retries. fred is told never to resend a command itself (`max_command_attempts = 1`)
//! so that retries happen in one place, the resilience layer, within its budget. Only
//! transient failures (connection lost, timeout, `BUSY`/`LOADING`/...) are retried, and
//! only for calls that are safe to repeat when the first attempt's outcome is unknown:
//! reads; creates, because their ids are chosen before the first attempt and the scripts
//! recognise an already applied attempt by them (so a repeated append is not counted
//! twice); and updates, which converge on the same state. Deletes and idempotency claims
//! are not retried: a repeat after a lost reply would answer "not found" (or "in
//! progress") for work that was in fact done, and drop its events.

use std::future::Future;
use std::time::Duration;

use agentmesh_resilience::{Outcome, Preset, Resilience, ResilienceError};
use fred::prelude::{Builder, ClientLike, Config, Error as FredError, ErrorKind, Pool, ReconnectPolicy, Value};

use super::codec::{CodecError, Reply};
use super::scripts::{Script, Scripts};
use crate::store::{Owner, StoreError};

/// Longest wait for a TCP connection (and handshake) to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for one command's reply. Scripts here are O(messages of one session) at
/// worst; a Redis that takes longer is treated as unavailable.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a call may be sent again after a transient failure whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Retry {
    /// Reads, and writes that are safe to repeat.
    Transient,
    /// Writes whose repetition would answer differently: never resent.
    Never,
}

/// A connected pool with its scripts and resilience state.
pub(super) struct Client {
    pool: Pool,
    scripts: Scripts,
    resilience: Resilience,
    prefix: String,
}

impl Client {
    /// Connects a pool of `max_connections`, PINGs and loads the scripts.
    pub(super) async fn connect(
        url: &str,
        prefix: &str,
        max_connections: u32,
        preset: &Preset,
    ) -> Result<Self, StoreError> {
        let config = Config::from_url(url).map_err(connect_error)?;
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|connection| {
                connection.connection_timeout = CONNECT_TIMEOUT;
                connection.internal_command_timeout = COMMAND_TIMEOUT;
                connection.max_command_attempts = 1;
            })
            .with_performance_config(|performance| performance.default_command_timeout = COMMAND_TIMEOUT)
            // Reconnect forever in the background (100 ms doubling to 5 s); meanwhile calls
            // fail after COMMAND_TIMEOUT and the breaker takes over.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
        let size = usize::try_from(max_connections.max(1)).unwrap_or(1);
        let pool = builder.build_pool(size).map_err(connect_error)?;
        // The returned task drives the connections; it is detached and ends with the pool.
        let _connections = pool.init().await.map_err(connect_error)?;
        let _pong: String = pool.ping(None).await.map_err(connect_error)?;
        let scripts = Scripts::load(&pool).await.map_err(connect_error)?;
        Ok(Self { pool, scripts, resilience: Resilience::new("redis", preset), prefix: prefix.to_owned() })
    }

    /// The pool, for single commands.
    pub(super) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The scripts.
    pub(super) fn scripts(&self) -> &Scripts {
        &self.scripts
    }

    /// The key prefix.
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The resilience state every call runs under (its breaker feeds dependency health).
    pub(super) fn resilience(&self) -> &Resilience {
        &self.resilience
    }

    /// The full name of `key` under the prefix.
    pub(super) fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs `op` under the resilience policy.
    pub(super) async fn call<T, F, Fut>(&self, retry: Retry, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, FredError>>,
    {
        let classify = |result: &Result<T, FredError>| match result {
            Ok(_) => Outcome::Success,
            Err(error) if transient(error) => {
                Outcome::Failure { retryable: retry == Retry::Transient, retry_after: None }
            }
            Err(_) => Outcome::FATAL,
        };
        self.resilience.call(&classify, &mut op).await.map_err(call_error)
    }

    /// Runs `script` for `owner` with its own `args` (after prefix, tenant and user).
    pub(super) async fn script(
        &self,
        script: &Script,
        owner: &Owner,
        args: Vec<Value>,
        retry: Retry,
    ) -> Result<Reply, StoreError> {
        let mut all = Vec::with_capacity(args.len() + 3);
        all.push(Value::from(self.prefix.as_str()));
        all.push(Value::from(owner.tenant_id.as_str()));
        all.push(Value::from(owner.user_id.as_str()));
        all.extend(args);
        let value = self.call(retry, || script.run(&self.pool, all.clone())).await?;
        Reply::parse(script.name, value).map_err(internal)
    }
}

impl Drop for Client {
    /// Closes the pool's connections (they would otherwise reconnect forever in the
    /// background), when dropped inside a runtime.
    fn drop(&mut self) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pool = self.pool.clone();
            runtime.spawn(async move {
                if let Err(error) = pool.quit().await {
                    tracing::debug!(%error, "closing the Redis pool failed");
                }
            });
        }
    }
}

/// Whether `error` says Redis is unreachable or momentarily unable to answer, rather than
/// that the request or data is wrong.
fn transient(error: &FredError) -> bool {
    match error.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Routing
        | ErrorKind::Cluster
        | ErrorKind::Sentinel => true,
        _ => ["BUSY", "LOADING", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN"]
            .iter()
            .any(|prefix| error.details().starts_with(prefix)),
    }
}

/// A failure while connecting: misconfiguration is internal, the rest is unavailability.
fn connect_error(error: FredError) -> StoreError {
    match error.kind() {
        ErrorKind::Url | ErrorKind::Config | ErrorKind::InvalidArgument => StoreError::Internal(Box::new(error)),
        _ => StoreError::Unavailable(Box::new(error)),
    }
}

/// A failed call: unreachable, timed out or refused by the resilience layer is
/// `Unavailable` (retrying later may help); anything else is `Internal`.
fn call_error(error: ResilienceError<FredError>) -> StoreError {
    match error {
        ResilienceError::Inner(error) if transient(&error) || *error.kind() == ErrorKind::Auth => {
            StoreError::Unavailable(Box::new(error))
        }
        ResilienceError::Inner(error) => StoreError::Internal(Box::new(error)),
        other => StoreError::Unavailable(Box::new(other)),
    }
}

/// Bad data or an unexpected reply.
pub(super) fn internal(error: CodecError) -> StoreError {
    StoreError::Internal(Box::new(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_told_from_bad_requests() {
        assert!(transient(&FredError::new(ErrorKind::IO, "reset")));
        assert!(transient(&FredError::new(ErrorKind::Timeout, "slow")));
        assert!(transient(&FredError::new(ErrorKind::Unknown, "BUSY Redis is busy running a script")));
        assert!(transient(&FredError::new(ErrorKind::Unknown, "LOADING Redis is loading the dataset")));
        assert!(!transient(&FredError::new(ErrorKind::Unknown, "ERR user_script:1: bad")));
        assert!(!transient(&FredError::new(ErrorKind::InvalidArgument, "WRONGTYPE")));
    }

    #[test]
    fn errors_map_to_store_errors() {
        let unavailable = call_error(ResilienceError::Inner(FredError::new(ErrorKind::IO, "reset")));
        assert!(matches!(unavailable, StoreError::Unavailable(_)));
        let timeout = call_error(ResilienceError::Timeout { after: Duration::from_secs(1) });
        assert!(matches!(timeout, StoreError::Unavailable(_)));
        let bug = call_error(ResilienceError::Inner(FredError::new(ErrorKind::Unknown, "ERR script")));
        assert!(matches!(bug, StoreError::Internal(_)));
        assert!(matches!(connect_error(FredError::new(ErrorKind::Url, "bad")), StoreError::Internal(_)));
        assert!(matches!(connect_error(FredError::new(ErrorKind::IO, "refused")), StoreError::Unavailable(_)));
    }
}
