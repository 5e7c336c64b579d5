//! Rate limiter shared by every replica of a service through Redis.
//!
//! One call (a check or an adjustment) is one `EVALSHA` of `gcra.lua`: read the key's TAT,
//! decide with Redis's own `TIME`, write the new TAT with a TTL (`PX` = time until the key
//! is idle) — atomically, so any number of replicas, each with its own connection pool,
//! enforce one combined limit.
//! The script's SHA-1 is computed locally; when Redis does not know it (first use, restart,
//! `SCRIPT FLUSH`) the `NOSCRIPT` answer is followed by one `EVAL` of the full source, which
//! runs the check and caches the script again (on the node owning the key, also in a
//! cluster). Keys are `<prefix><key>`, production prefix [`DEFAULT_PREFIX`]
//! (`RATE_LIMIT_REDIS_PREFIX`).
//!
//! # Failing open
//!
//! Every call is bounded by a short timeout (50 ms by default, `RATE_LIMIT_REDIS_TIMEOUT`)
//! and runs under a circuit breaker. When Redis errs, is too slow, or the breaker is open,
//! the check is *allowed* (an adjustment is lost), reported as an idle key would be, a warning
//! is logged and `agentmesh_ratelimit_backend_errors_total{backend="redis"}` is
//! incremented: a rate limiter exists to protect capacity, and refusing all traffic because
//! its bookkeeping store is unavailable would turn a Redis incident into a complete API
//! outage. The breaker
//! (5 consecutive failures, 5 s cool-down) keeps a dead Redis from adding the timeout to
//! every request. Calls are never retried: a lost reply may already have used up quota,
//! and a retry would not fit the latency budget anyway.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use agentmesh_resilience::{BreakerConfig, CircuitBreaker, Outcome};
use agentmesh_runtime::config::{DEFAULT_RATE_LIMIT_REDIS_PREFIX, DEFAULT_RATE_LIMIT_REDIS_TIMEOUT, RedisConfig};
use async_trait::async_trait;
use fred::prelude::{Builder, ClientLike, Config, Error as FredError, LuaInterface, Pool, ReconnectPolicy};
use sha1::{Digest, Sha1};

use super::gcra::{Change, Gcra};
use super::{BACKEND_ERRORS_COUNTER, Decision, Limit, RateLimitError, RateLimiter};

/// Key prefix of production deployments (`RATE_LIMIT_REDIS_PREFIX` overrides it).
pub const DEFAULT_PREFIX: &str = DEFAULT_RATE_LIMIT_REDIS_PREFIX;

/// Default bound on one check, after which it fails open (`RATE_LIMIT_REDIS_TIMEOUT`).
pub const DEFAULT_TIMEOUT: Duration = DEFAULT_RATE_LIMIT_REDIS_TIMEOUT;

/// The check script.
const SCRIPT: &str = include_str!("gcra.lua");

/// Settings of a [`RedisRateLimiter`].
#[derive(Debug, Clone)]
pub struct RedisRateLimiterOptions {
    /// Prepended to every key (default [`DEFAULT_PREFIX`]).
    pub prefix: String,
    /// Connections in the pool (at least 1).
    pub pool_size: usize,
    /// Longest a check may wait for Redis before failing open.
    pub timeout: Duration,
    /// Longest [`RedisRateLimiter::connect`] waits for the first connection, and the TCP
    /// connect timeout of every (re)connection.
    pub connect_timeout: Duration,
    /// The circuit breaker in front of Redis.
    pub breaker: BreakerConfig,
}

impl Default for RedisRateLimiterOptions {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            pool_size: 4,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: Duration::from_secs(2),
            breaker: BreakerConfig {
                failure_threshold: 5,
                failure_rate: None,
                recovery_timeout: Duration::from_secs(5),
                half_open_max_calls: 1,
                success_threshold: 1,
            },
        }
    }
}

/// GCRA rate limiter with its state in Redis, shared by replicas.
pub struct RedisRateLimiter {
    pool: Pool,
    /// Hex SHA-1 of [`SCRIPT`].
    sha: String,
    source: &'static str,
    prefix: String,
    timeout: Duration,
    breaker: CircuitBreaker,
    backend_errors: AtomicU64,
}

impl fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker.state())
            .field("backend_errors", &self.backend_errors())
            .finish_non_exhaustive()
    }
}

/// Why a check did not reach a decision in Redis.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Error,
    Timeout,
    CircuitOpen,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Timeout => "timeout",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

impl RedisRateLimiter {
    /// Connects to the Redis at `url` (`redis://…`, `rediss://…`, `redis-cluster://…`).
    ///
    /// Waits up to `options.connect_timeout` for the connection; if Redis is not reachable
    /// by then the limiter is returned anyway, keeps reconnecting in the background and fails
    /// open until it succeeds. Errors only for settings that can never work (a malformed URL).
    pub async fn connect(url: &str, options: RedisRateLimiterOptions) -> Result<Self, RateLimitError> {
        let mut config = Config::from_url(url)
            .map_err(|error| RateLimitError::Config(format!("invalid Redis URL ({:?})", error.kind())))?;
        // Start even when Redis is down: the first connection uses the reconnect policy too.
        config.fail_fast = false;
        let mut builder = Builder::from_config(config);
        builder
            .with_connection_config(|connection| {
                connection.connection_timeout = options.connect_timeout;
                connection.internal_command_timeout = options.connect_timeout;
                connection.max_command_attempts = 1;
            })
            .with_performance_config(|performance| performance.default_command_timeout = options.timeout)
            // Reconnect forever, 100 ms doubling to 2 s; meanwhile checks fail open.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let pool = builder
            .build_pool(options.pool_size.max(1))
            .map_err(|error| RateLimitError::Config(format!("Redis pool ({:?}): {}", error.kind(), error.details())))?;
        // The returned task drives the connections; detached, it ends with the pool.
        let _connections = pool.connect();
        match tokio::time::timeout(options.connect_timeout, pool.wait_for_connect()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "rate-limit Redis is unreachable; rate limits fail open until it is back");
            }
            Err(_) => tracing::warn!(
                timeout_ms = options.connect_timeout.as_millis(),
                "rate-limit Redis did not connect in time; rate limits fail open until it does"
            ),
        }
        Ok(Self {
            pool,
            sha: sha1_hex(SCRIPT),
            source: SCRIPT,
            prefix: options.prefix,
            timeout: options.timeout,
            breaker: CircuitBreaker::new("ratelimit-redis", options.breaker),
            backend_errors: AtomicU64::new(0),
        })
    }

    /// Connects with the `REDIS_*` settings: [`RedisConfig::url`] and a pool of
    /// `REDIS_MAX_CONNECTIONS`; everything else from `options`.
    pub async fn from_config(redis: &RedisConfig, options: RedisRateLimiterOptions) -> Result<Self, RateLimitError> {
        let pool_size = usize::try_from(redis.max_connections).unwrap_or(options.pool_size);
        Self::connect(redis.url().expose(), RedisRateLimiterOptions { pool_size, ..options }).await
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The circuit breaker in front of Redis, for health output.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Checks this limiter answered without Redis (failed open) since it was created.
    pub fn backend_errors(&self) -> u64 {
        self.backend_errors.load(Ordering::Relaxed)
    }

    /// Closes the connections (checks fail open afterwards).
    pub async fn quit(&self) {
        if let Err(error) = self.pool.quit().await {
            tracing::debug!(%error, "closing the rate-limit Redis pool");
        }
    }

    /// Runs the script for `key`: `(allowed, now, tat)`.
    async fn run(&self, key: &str, gcra: &Gcra, change: Change) -> Result<(bool, u64, u64), RateLimitError> {
        let (increment, forced) = change.script_args();
        let window = i64::try_from(gcra.window()).unwrap_or(i64::MAX);
        let args = vec![increment, window, i64::from(forced)];
        let key = format!("{}{key}", self.prefix);
        let reply = evaluate(&self.pool, &self.sha, self.source, key, args)
            .await
            .map_err(|error| RateLimitError::Backend(error.to_string()))?;
        match reply.as_slice() {
            &[allowed @ (0 | 1), now, tat] => match (u64::try_from(now), u64::try_from(tat)) {
                (Ok(now), Ok(tat)) => Ok((allowed == 1, now, tat)),
                _ => Err(RateLimitError::Backend(format!("negative time in script reply {reply:?}"))),
            },
            _ => Err(RateLimitError::Backend(format!("unexpected script reply {reply:?}"))),
        }
    }

    /// Applies `change` in Redis within the timeout, or fails open.
    async fn apply(&self, key: &str, gcra: &Gcra, change: Change) -> Decision {
        let Ok(permit) = self.breaker.try_acquire() else {
            return self.fail_open(gcra, change, Failure::CircuitOpen, None);
        };
        match tokio::time::timeout(self.timeout, self.run(key, gcra, change)).await {
            Ok(Ok((allowed, now, tat))) => {
                permit.record(Outcome::Success);
                gcra.decision(allowed, now, tat, change)
            }
            Ok(Err(error)) => {
                permit.record(Outcome::FATAL);
                self.fail_open(gcra, change, Failure::Error, Some(&error))
            }
            Err(_elapsed) => {
                permit.record(Outcome::FATAL);
                self.fail_open(gcra, change, Failure::Timeout, None)
            }
        }
    }

    /// The fail-open answer: allowed, reported as an idle key would be.
    fn fail_open(&self, gcra: &Gcra, change: Change, failure: Failure, error: Option<&RateLimitError>) -> Decision {
        self.backend_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(BACKEND_ERRORS_COUNTER, "backend" => "redis", "reason" => failure.as_str()).increment(1);
        match (failure, error) {
            // The breaker logged when it opened; once per request would flood the logs.
            (Failure::CircuitOpen, _) => tracing::debug!("rate-limit Redis breaker open; request allowed"),
            (_, Some(error)) => tracing::warn!(reason = failure.as_str(), %error, "rate-limit call failed open"),
            (_, None) => tracing::warn!(
                reason = failure.as_str(),
                timeout_ms = self.timeout.as_millis(),
                "rate-limit call failed open"
            ),
        }
        gcra.fresh(change)
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn check_cost(&self, key: &str, limit: Limit, cost: u32) -> Result<Decision, RateLimitError> {
        let gcra = Gcra::new(limit)?;
        if gcra.denies_all() {
            return Ok(gcra.deny_all());
        }
        let change = gcra.check(cost)?;
        Ok(self.apply(key, &gcra, change).await)
    }

    async fn adjust(&self, key: &str, limit: Limit, delta: i64) -> Result<Decision, RateLimitError> {
        let gcra = Gcra::new(limit)?;
        if gcra.denies_all() {
            return Ok(gcra.deny_all());
        }
        Ok(self.apply(key, &gcra, gcra.adjust(delta)).await)
    }
}

/// `EVALSHA sha`, or `EVAL source` when Redis answers `NOSCRIPT` (which also caches it).
async fn evaluate(pool: &Pool, sha: &str, source: &str, key: String, args: Vec<i64>) -> Result<Vec<i64>, FredError> {
    match pool.evalsha(sha, key.clone(), args.clone()).await {
        Err(error) if error.details().starts_with("NOSCRIPT") => pool.eval(source, key, args).await,
        result => result,
    }
}

/// Lowercase hex SHA-1 of `text`, as Redis names scripts.
fn sha1_hex(text: &str) -> String {
    Sha1::digest(text.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use agentmesh_testkit::{Service, require, unique_name};
    use fred::prelude::KeysInterface;

    use super::*;

    #[test]
    fn sha1_matches_redis_naming() {
        // SHA-1("") and SHA-1("abc"), the FIPS 180 test vectors.
        assert_eq!(sha1_hex(""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(sha1_hex("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[tokio::test]
    async fn invalid_url_is_a_config_error() {
        let error =
            RedisRateLimiter::connect("redis://127.0.0.1:99999", RedisRateLimiterOptions::default()).await.unwrap_err();
        assert!(matches!(error, RateLimitError::Config(_)), "{error:?}");
    }

    /// A script Redis has never seen goes through the NOSCRIPT → EVAL path, and is cached
    /// by it. (The real script may already be cached by an earlier run, so a variant with a
    /// unique comment stands in for it; flushing the shared script cache is not an option.)
    #[tokio::test]
    async fn noscript_is_answered_by_eval_which_caches_the_script() {
        let Some(url) = require(Service::Redis).await else { return };
        let prefix = format!("{}:", unique_name("ratelimit_unit"));
        let options =
            RedisRateLimiterOptions { prefix: prefix.clone(), timeout: Duration::from_secs(5), ..Default::default() };
        let limiter = RedisRateLimiter::connect(&url, options).await.unwrap();
        let source: &'static str = Box::leak(format!("{SCRIPT}\n-- {prefix}\n").into_boxed_str());
        let sha = sha1_hex(source);
        let cached = |pool: Pool, sha: String| async move {
            let exists: Vec<bool> = pool.script_exists(vec![sha]).await.unwrap();
            exists[0]
        };
        assert!(!cached(limiter.pool.clone(), sha.clone()).await);

        let gcra = Gcra::new(Limit::per_minute(2)).unwrap();
        let (increment, _) = gcra.check(1).unwrap().script_args();
        let args = vec![increment, i64::try_from(gcra.window()).unwrap(), 0];
        let key = format!("{prefix}k");
        let first = evaluate(&limiter.pool, &sha, source, key.clone(), args.clone()).await.unwrap();
        assert!(cached(limiter.pool.clone(), sha.clone()).await, "EVAL cached the script");
        let second = evaluate(&limiter.pool, &sha, source, key.clone(), args.clone()).await.unwrap();
        let third = evaluate(&limiter.pool, &sha, source, key.clone(), args).await.unwrap();
        assert_eq!((first[0], second[0], third[0]), (1, 1, 0), "2/min: two pass, the third does not");

        let _: i64 = limiter.pool.del(key).await.unwrap();
    }
}
