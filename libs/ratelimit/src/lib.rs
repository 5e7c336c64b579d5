//! One rate limiter for every service: GCRA (generic cell rate algorithm) with weighted
//! costs, kept in this process ([`MemoryRateLimiter`]) or shared by replicas through Redis
//! ([`RedisRateLimiter`], one atomic Lua script per call). The gateway limits requests per
//! minute with it (cost 1 per request); llm-proxy limits requests *and* tokens per minute
//! (cost = tokens). Which keys and limits apply, and how a decision is reported to callers
//! (headers, status codes), is the caller's policy, not this crate's.
//!
//! # Algorithm
//!
//! A limit of `L` units per window `W` (microseconds) gives each unit a weight of `W / L`.
//! Each key stores one number, its theoretical arrival time `TAT`; `ahead = max(TAT, now) −
//! now` is how much of the window's budget is in use. A check of `cost` units has the
//! increment `⌊cost · W / L⌋` µs (at least 1 for a positive cost) and passes when `ahead +
//! increment ≤ W`; it then moves `TAT` to `max(TAT, now) + increment`. A refused check
//! changes nothing, so refused requests spend no budget. This is a token bucket of `L` units
//! refilled continuously at `L` per `W`, with no window edges, kept as one integer per key
//! that expires by itself once `TAT ≤ now` (memory: swept; Redis: `PX = TAT − now`).
//!
//! Both backends run the same integer arithmetic (`gcra.rs` in Rust, `gcra.lua` in Redis,
//! which mirrors it line for line), and every [`Decision`] field is computed by the same
//! Rust code from `(allowed, now, TAT)`.
//!
//! ## Error bound
//!
//! Per key, with the state updated atomically (a mutex in memory, one script in Redis):
//!
//! - from an idle key, a burst admits costs summing to **exactly** `L` when `W / L` is a
//!   whole number of microseconds (every per-minute limit up to 7,745 requests, and token
//!   budgets such as 50,000 or 1,000,000 per minute); otherwise each check rounds its
//!   increment down by under one microsecond, i.e. by under `L / W` units (1/60 of a token
//!   at 1,000,000 tokens per minute);
//! - over any span of length `D`, costs summing to at most `L + L · D / W` are admitted: the
//!   sustained rate is `L` per `W`;
//! - the price of having no window edges: a key idle for a whole window may spend its full
//!   budget and then refill at the sustained rate, i.e. up to `2L` in one arbitrary span of
//!   `W`. Never more than `L` at once.
//!
//! Time: the memory backend uses tokio's monotonic clock; the Redis backend uses Redis's
//! own `TIME` inside the script, never the caller's clock, so replicas with skewed clocks
//! agree. A Redis failover that loses recent writes forgets those keys: at most one extra
//! burst.
//!
//! # Weighted costs: check with an estimate, then settle
//!
//! A caller that knows the cost only afterwards (an LLM call's tokens) uses **debit and
//! refund**, not reservations:
//!
//! 1. [`RateLimiter::check_cost`] with an estimate (prompt tokens plus the requested
//!    maximum output) before the call: all or nothing, refused when the budget cannot
//!    cover it, and a cost above the whole budget `L` is an error
//!    ([`RateLimitError::CostExceedsLimit`]) because no wait would ever admit it;
//! 2. [`RateLimiter::settle`] with the estimate and the actual usage afterwards. It applies
//!    the difference with [`RateLimiter::adjust`]: unconditionally, because the usage has
//!    already happened. A refund gives budget back (never more than a full bucket); a debit
//!    may overdraw the budget, by at most one more window's worth, after which the key
//!    refuses checks until the debt has drained at the sustained rate.
//!
//! Nothing is held between the two steps, so a caller that crashes in between leaves no
//! stale reservation: the estimate simply stays spent and drains like any other usage.
//!
//! ```
//! use agentmesh_ratelimit::{Limit, MemoryRateLimiter, RateLimiter};
//!
//! # async fn call(limiter: &dyn RateLimiter) -> Result<(), agentmesh_ratelimit::RateLimitError> {
//! let (rpm, tpm) = (Limit::per_minute(60), Limit::per_minute(50_000));
//! let estimate = 1_200; // prompt tokens + max_tokens
//! let tokens = limiter.check_cost("tpm:acme", tpm, estimate).await?;
//! if tokens.allowed && limiter.check("rpm:acme", rpm).await?.allowed {
//!     let used = 830; // from the provider's usage report
//!     limiter.settle("tpm:acme", tpm, estimate, used).await?;
//! } else if tokens.allowed {
//!     // Refused by the request limit: give the token estimate back.
//!     limiter.adjust("tpm:acme", tpm, -i64::from(estimate)).await?;
//! }
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
//! #     .block_on(call(&MemoryRateLimiter::new())).unwrap();
//! ```
//!
//! # Failure policy
//!
//! The Redis limiter fails **open**: when Redis is unreachable, slow (50 ms by default,
//! `RATE_LIMIT_REDIS_TIMEOUT`) or answers nonsense, the check is allowed, a warning is
//! logged and `agentmesh_ratelimit_backend_errors_total` is incremented. A limiter protects
//! capacity; refusing every request because its bookkeeping store is down would turn a Redis
//! outage into a full outage. A circuit breaker stops even the timeout's wait while Redis is
//! known to be down.
//!
//! # Metrics
//!
//! - `agentmesh_ratelimit_backend_errors_total{backend="redis", reason="error"|"timeout"|"circuit_open"}`.

mod gcra;
mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use gcra::MAX_WINDOW;
pub use memory::{MemoryRateLimiter, MemoryRateLimiterOptions};
pub use redis::{DEFAULT_PREFIX, DEFAULT_TIMEOUT, RedisRateLimiter, RedisRateLimiterOptions};

/// Counter of calls answered without the backend (failed open); labels `backend` and `reason`.
pub const BACKEND_ERRORS_COUNTER: &str = "agentmesh_ratelimit_backend_errors_total";

/// A rate: at most `quota` units (requests, tokens) per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Units allowed per window, also the largest burst; 0 refuses everything.
    pub quota: u32,
    /// The window; must be positive and at most [`MAX_WINDOW`].
    pub window: Duration,
}

impl Limit {
    /// `quota` units per `window`.
    pub const fn new(quota: u32, window: Duration) -> Self {
        Self { quota, window }
    }

    /// `quota` units per minute.
    pub const fn per_minute(quota: u32) -> Self {
        Self::new(quota, Duration::from_secs(60))
    }
}

/// The answer to one call, with everything a caller needs to report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the cost was admitted (always true for [`RateLimiter::adjust`]).
    pub allowed: bool,
    /// The limit's quota (units per window).
    pub limit: u32,
    /// Units still available right now, after this call.
    pub remaining: u32,
    /// Time until the full quota is available again.
    pub reset_after: Duration,
    /// When refused: time until the same cost would be admitted.
    pub retry_after: Option<Duration>,
}

impl Decision {
    /// An allowed decision that limits nothing (rate limiting disabled): the full quota
    /// remains and nothing needs resetting.
    pub const fn unrestricted(limit: u32) -> Self {
        Self { allowed: true, limit, remaining: limit, reset_after: Duration::ZERO, retry_after: None }
    }

    /// [`Self::reset_after`] in whole seconds, rounded up.
    pub fn reset_after_secs(&self) -> u64 {
        ceil_secs(self.reset_after)
    }

    /// [`Self::retry_after`] in whole seconds, rounded up and at least 1; `None` when allowed.
    pub fn retry_after_secs(&self) -> Option<u64> {
        if self.allowed {
            return None;
        }
        self.retry_after.map(|after| ceil_secs(after).max(1))
    }

    /// Whether `self` is tighter than `other`: denied beats allowed, then fewer units
    /// remaining, then a longer wait for the quota to come back.
    pub fn is_tighter_than(&self, other: &Decision) -> bool {
        let key = |d: &Decision| (d.allowed, d.remaining, std::cmp::Reverse(d.reset_after));
        key(self) < key(other)
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Why a call could not be answered.
///
/// Backend trouble is not among them at run time: [`RedisRateLimiter`] fails open instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// The [`Limit`] cannot be enforced (zero or overlong window).
    #[error("invalid rate limit: {0}")]
    InvalidLimit(&'static str),
    /// The cost is larger than the limit's whole quota, so no wait would ever admit it.
    #[error("cost {cost} exceeds the whole budget of {quota} per window and can never be admitted")]
    CostExceedsLimit {
        /// The cost asked for.
        cost: u32,
        /// The limit's quota per window.
        quota: u32,
    },
    /// The backend could not be set up (bad URL or pool settings). Never contains secrets.
    #[error("rate-limit backend configuration: {0}")]
    Config(String),
    /// The backend failed (only seen by internal callers; calls fail open).
    #[error("rate-limit backend error: {0}")]
    Backend(String),
}

/// Spends and settles weighted costs under keys against limits.
///
/// Implementations must be atomic per key: concurrent calls on one key (from any number of
/// tasks or, for shared backends, processes) admit no more than the algorithm allows.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Admits `cost` units under `key` when `limit`'s budget covers all of them, and spends
    /// them; otherwise spends nothing. A cost of 0 spends nothing and reports the state
    /// (refused only while a debit has overdrawn the budget).
    async fn check_cost(&self, key: &str, limit: Limit, cost: u32) -> Result<Decision, RateLimitError>;

    /// Unconditionally spends `delta` more units (a debit, `delta > 0`) or gives `-delta`
    /// back (a refund, `delta < 0`). A refund never leaves more than a full quota; a debit
    /// may overdraw by at most one more quota. The decision is always `allowed`.
    async fn adjust(&self, key: &str, limit: Limit, delta: i64) -> Result<Decision, RateLimitError>;

    /// Admits one unit (one request): [`Self::check_cost`] with cost 1.
    async fn check(&self, key: &str, limit: Limit) -> Result<Decision, RateLimitError> {
        self.check_cost(key, limit, 1).await
    }

    /// Settles a [`Self::check_cost`] of `estimated` units once the `actual` usage is known:
    /// debits or refunds the difference. `None` when they are equal (nothing to do).
    async fn settle(
        &self,
        key: &str,
        limit: Limit,
        estimated: u32,
        actual: u64,
    ) -> Result<Option<Decision>, RateLimitError> {
        let delta = i64::try_from(actual).unwrap_or(i64::MAX).saturating_sub(i64::from(estimated));
        if delta == 0 {
            return Ok(None);
        }
        self.adjust(key, limit, delta).await.map(Some)
    }
}

#[async_trait]
impl<T: RateLimiter + ?Sized> RateLimiter for Arc<T> {
    async fn check_cost(&self, key: &str, limit: Limit, cost: u32) -> Result<Decision, RateLimitError> {
        (**self).check_cost(key, limit, cost).await
    }

    async fn adjust(&self, key: &str, limit: Limit, delta: i64) -> Result<Decision, RateLimitError> {
        (**self).adjust(key, limit, delta).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(allowed: bool, remaining: u32, reset_ms: u64, retry_ms: Option<u64>) -> Decision {
        Decision {
            allowed,
            limit: 10,
            remaining,
            reset_after: Duration::from_millis(reset_ms),
            retry_after: retry_ms.map(Duration::from_millis),
        }
    }

    #[test]
    fn seconds_round_up() {
        let allowed = decision(true, 7, 1_200, None);
        assert_eq!((allowed.reset_after_secs(), allowed.retry_after_secs()), (2, None));
        let denied = decision(false, 0, 60_000, Some(1));
        assert_eq!(denied.reset_after_secs(), 60);
        assert_eq!(denied.retry_after_secs(), Some(1), "a sub-second wait still says 1");
    }

    #[test]
    fn unrestricted_has_full_quota_and_no_wait() {
        let open = Decision::unrestricted(100);
        assert!(open.allowed);
        assert_eq!((open.limit, open.remaining, open.reset_after_secs(), open.retry_after_secs()), (100, 100, 0, None));
    }

    #[test]
    fn tighter_orders_denied_then_remaining_then_reset() {
        let denied = decision(false, 0, 10_000, Some(100));
        let low = decision(true, 1, 5_000, None);
        let high = decision(true, 5, 5_000, None);
        let low_longer = decision(true, 1, 9_000, None);
        assert!(denied.is_tighter_than(&low));
        assert!(low.is_tighter_than(&high));
        assert!(low_longer.is_tighter_than(&low));
        assert!(!high.is_tighter_than(&denied));
    }

    #[test]
    fn cost_error_says_why() {
        let error = RateLimitError::CostExceedsLimit { cost: 120, quota: 100 };
        assert_eq!(error.to_string(), "cost 120 exceeds the whole budget of 100 per window and can never be admitted");
    }
}
