//! Per-kind defaults from the seed's `RETRY_*` / `CIRCUIT_*` settings, as plain data the
//! runtime overrides field by field from the environment.

use std::time::Duration;

use crate::breaker::BreakerConfig;
use crate::error::{ConfigError, check};
use crate::retry::{RetryBudgetConfig, RetryPolicy};

/// Everything one target's resilience stack needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    /// Retry schedule.
    pub retry: RetryPolicy,
    /// Bound on retries as a share of traffic.
    pub budget: RetryBudgetConfig,
    /// When to stop calling the target.
    pub breaker: BreakerConfig,
    /// Deadline of one call, all attempts and backoff included.
    pub timeout: Duration,
    /// Calls in flight to the target at once.
    pub max_concurrency: usize,
    /// How long a call may wait for a bulkhead slot; zero refuses at once.
    pub max_queue_wait: Duration,
}

fn retry(max_attempts: u32, base_ms: u64, max_ms: u64, multiplier: f64) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(base_ms),
        max_delay: Duration::from_millis(max_ms),
        multiplier,
        jitter: true,
    }
}

fn breaker(failure_threshold: u32, recovery_secs: u64) -> BreakerConfig {
    BreakerConfig {
        failure_threshold,
        recovery_timeout: Duration::from_secs(recovery_secs),
        ..BreakerConfig::default()
    }
}

impl Preset {
    /// LLM providers (seed `RETRY_LLM_*`, `CIRCUIT_LLM_*`).
    pub fn llm() -> Self {
        Self {
            retry: retry(3, 1_000, 60_000, 2.0),
            budget: RetryBudgetConfig::default(),
            breaker: breaker(5, 60),
            // A long non-streaming completion takes a minute or two; beyond that the user has gone.
            timeout: Duration::from_secs(120),
            // Providers rate-limit per key; more in flight only collects 429s.
            max_concurrency: 32,
            max_queue_wait: Duration::ZERO,
        }
    }

    /// PostgreSQL and Redis (seed `RETRY_DB_*`, `CIRCUIT_DB_*`).
    pub fn database() -> Self {
        Self {
            retry: retry(5, 500, 30_000, 1.5),
            budget: RetryBudgetConfig::default(),
            breaker: breaker(3, 30),
            // The seed's pool_timeout; the four backoffs add at most ≈ 4 s on top of queries.
            timeout: Duration::from_secs(30),
            // The seed's max_pool_size: more would only queue inside the pool.
            max_concurrency: 20,
            // Bursts above the pool size wait briefly for a slot (as they would for a pooled
            // connection) instead of failing: 50 concurrent appends to one session must all land.
            max_queue_wait: Duration::from_secs(5),
        }
    }

    /// MCP servers (seed `RETRY_MCP_*`, `CIRCUIT_MCP_*`).
    pub fn mcp() -> Self {
        Self {
            retry: retry(3, 2_000, 120_000, 2.0),
            budget: RetryBudgetConfig::default(),
            breaker: breaker(3, 120),
            // Tools may run long (crawls, builds); the seed waits as long for a server to recover.
            timeout: Duration::from_secs(120),
            // Many MCP servers are single-process stdio children; a few calls at once suffice.
            max_concurrency: 16,
            max_queue_wait: Duration::ZERO,
        }
    }

    /// Secret providers (seed `RETRY_SECRET_*`; the seed has no secret breaker, so it
    /// uses the internal one).
    pub fn secret() -> Self {
        Self {
            retry: retry(2, 1_000, 10_000, 2.0),
            budget: RetryBudgetConfig::default(),
            breaker: Self::internal().breaker,
            // Secret reads are tiny and cached for 300 s; a slow provider should fail over to the cache.
            timeout: Duration::from_secs(10),
            // Reads are rare thanks to the cache; a burst past this is a bug worth refusing.
            max_concurrency: 8,
            max_queue_wait: Duration::ZERO,
        }
    }

    /// Service-to-service gRPC inside the mesh. Peers answer in milliseconds and their
    /// failures are mostly pods restarting during a rollout, so retries start at 50 ms and
    /// stop within 2 s, and the breaker probes again after 10 s. Calls to a peer that
    /// itself waits on an LLM or a tool (llm-proxy, mcp-broker) need that kind's timeout:
    /// `Preset { timeout: Preset::llm().timeout, ..Preset::internal() }`.
    pub fn internal() -> Self {
        Self {
            retry: retry(3, 50, 2_000, 2.0),
            budget: RetryBudgetConfig::default(),
            breaker: breaker(5, 10),
            // Reads and writes of sessions and secrets take milliseconds; 10 s is a sick peer.
            timeout: Duration::from_secs(10),
            // HTTP/2 multiplexes freely; past this a peer replica is saturated and shedding is kinder.
            max_concurrency: 512,
            // A burst (clients reconnecting after a rollout, a fan-out) waits briefly for a slot
            // instead of failing at once; a peer still saturated after this is shed.
            max_queue_wait: Duration::from_secs(1),
        }
    }

    /// Rejects values the stack cannot work with, naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.retry.validate()?;
        self.budget.validate()?;
        self.breaker.validate()?;
        check(!self.timeout.is_zero(), "timeout", "positive", self.timeout)?;
        check(self.max_concurrency >= 1, "max_concurrency", "at least 1", self.max_concurrency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carry_the_seed_numbers() {
        let llm = Preset::llm();
        assert_eq!(llm.retry, retry(3, 1_000, 60_000, 2.0));
        assert_eq!((llm.breaker.failure_threshold, llm.breaker.recovery_timeout), (5, Duration::from_secs(60)));
        let db = Preset::database();
        assert_eq!(db.retry, retry(5, 500, 30_000, 1.5));
        assert_eq!((db.breaker.failure_threshold, db.breaker.recovery_timeout), (3, Duration::from_secs(30)));
        let mcp = Preset::mcp();
        assert_eq!(mcp.retry, retry(3, 2_000, 120_000, 2.0));
        assert_eq!((mcp.breaker.failure_threshold, mcp.breaker.recovery_timeout), (3, Duration::from_secs(120)));
        assert_eq!(Preset::secret().retry, retry(2, 1_000, 10_000, 2.0));
        assert_eq!(Preset::secret().breaker, Preset::internal().breaker);
    }

    #[test]
    fn all_presets_are_valid() {
        for preset in [Preset::llm(), Preset::database(), Preset::mcp(), Preset::secret(), Preset::internal()] {
            assert_eq!(preset.validate(), Ok(()));
        }
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut preset = Preset::internal();
        preset.max_concurrency = 0;
        assert_eq!(preset.validate().unwrap_err().field, "max_concurrency");
        let mut preset = Preset::internal();
        preset.retry.max_attempts = 0;
        assert_eq!(preset.validate().unwrap_err().field, "retry.max_attempts");
        let mut preset = Preset::internal();
        preset.breaker.half_open_max_calls = 0;
        let error = preset.validate().unwrap_err();
        assert_eq!(error.field, "breaker.half_open_max_calls");
        assert_eq!(error.to_string(), "breaker.half_open_max_calls must be at least 1, got 0");
    }
}
