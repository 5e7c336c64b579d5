//! In-process rate limiter for a single service instance.
//!
//! Keys live in a fixed number of shards, each a mutex over a map from key to its GCRA
//! theoretical arrival time (microseconds on tokio's monotonic clock since the limiter was
//! created), so concurrent checks of different keys rarely contend and checks of one key are
//! atomic. A key whose TAT has passed is idle — exactly equivalent to an absent key — so it
//! can be dropped: each shard drops its idle keys lazily, at most once per `sweep_interval`,
//! on the next check that lands in it. A shard therefore holds only keys used within their
//! last window plus at most one sweep interval of idle ones; memory follows the number of
//! active callers, never the number ever seen. [`MemoryRateLimiter::purge_idle`] sweeps
//! every shard at once (for a periodic task, or tests).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::gcra::{Change, Gcra, micros};
use super::{Decision, Limit, RateLimitError, RateLimiter};

/// Settings of a [`MemoryRateLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRateLimiterOptions {
    /// Number of independently locked shards (at least 1).
    pub shards: usize,
    /// Least time between two sweeps of idle keys in one shard.
    pub sweep_interval: Duration,
}

impl Default for MemoryRateLimiterOptions {
    fn default() -> Self {
        Self { shards: 64, sweep_interval: Duration::from_secs(60) }
    }
}

/// GCRA rate limiter keeping its state in this process.
#[derive(Debug)]
pub struct MemoryRateLimiter {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// Zero of the limiter's clock.
    origin: Instant,
    /// Sweep interval, microseconds.
    sweep_every: u64,
}

#[derive(Debug, Default)]
struct Shard {
    /// Key → TAT (µs since `origin`).
    tats: HashMap<String, u64>,
    /// When this shard next drops idle keys (µs since `origin`).
    next_sweep: u64,
}

impl Shard {
    /// Drops idle keys when due; returns how many went.
    fn sweep_if_due(&mut self, now: u64, every: u64) -> usize {
        if now < self.next_sweep {
            return 0;
        }
        self.next_sweep = now.saturating_add(every);
        self.sweep(now)
    }

    fn sweep(&mut self, now: u64) -> usize {
        let before = self.tats.len();
        self.tats.retain(|_, tat| *tat > now);
        before - self.tats.len()
    }
}

impl Default for MemoryRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRateLimiter {
    /// A limiter with the default options.
    pub fn new() -> Self {
        Self::with_options(MemoryRateLimiterOptions::default())
    }

    /// A limiter with `options`.
    pub fn with_options(options: MemoryRateLimiterOptions) -> Self {
        let shards = (0..options.shards.max(1)).map(|_| Mutex::new(Shard::default())).collect();
        Self {
            shards,
            hasher: RandomState::new(),
            origin: Instant::now(),
            sweep_every: micros(options.sweep_interval).max(1),
        }
    }

    /// Keys currently held, idle ones not yet swept included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).tats.len()).sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every idle key now; returns how many were dropped.
    pub fn purge_idle(&self) -> usize {
        let now = self.now();
        self.shards.iter().map(|shard| lock(shard).sweep(now)).sum()
    }

    fn now(&self) -> u64 {
        micros(self.origin.elapsed())
    }

    fn shard(&self, key: &str) -> &Mutex<Shard> {
        let index = self.hasher.hash_one(key) % self.shards.len() as u64;
        // `index < shards.len()`, which is a usize.
        &self.shards[usize::try_from(index).unwrap_or_default()]
    }
}

/// Locks a shard; a panic elsewhere cannot leave a map half-updated, so poisoning is ignored.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryRateLimiter {
    /// Applies `change` to `key` atomically: the key's shard stays locked throughout.
    fn apply(&self, key: &str, gcra: &Gcra, change: Change) -> Decision {
        let mut shard = lock(self.shard(key));
        let now = self.now();
        shard.sweep_if_due(now, self.sweep_every);
        let (allowed, tat) = gcra.step(shard.tats.get(key).copied(), now, change);
        if allowed {
            if tat <= now {
                shard.tats.remove(key);
            } else if let Some(stored) = shard.tats.get_mut(key) {
                *stored = tat;
            } else {
                shard.tats.insert(key.to_owned(), tat);
            }
        }
        gcra.decision(allowed, now, tat, change)
    }
}

#[async_trait]
impl RateLimiter for MemoryRateLimiter {
    async fn check_cost(&self, key: &str, limit: Limit, cost: u32) -> Result<Decision, RateLimitError> {
        let gcra = Gcra::new(limit)?;
        if gcra.denies_all() {
            return Ok(gcra.deny_all());
        }
        let change = gcra.check(cost)?;
        Ok(self.apply(key, &gcra, change))
    }

    async fn adjust(&self, key: &str, limit: Limit, delta: i64) -> Result<Decision, RateLimitError> {
        let gcra = Gcra::new(limit)?;
        if gcra.denies_all() {
            return Ok(gcra.deny_all());
        }
        Ok(self.apply(key, &gcra, gcra.adjust(delta)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    async fn allowed_of(limiter: &MemoryRateLimiter, key: &str, limit: Limit, count: u32) -> u32 {
        let mut allowed = 0;
        for _ in 0..count {
            allowed += u32::from(limiter.check(key, limit).await.unwrap().allowed);
        }
        allowed
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_the_limit_is_allowed_then_denied_with_retry_after() {
        let limiter = MemoryRateLimiter::new();
        let limit = Limit::per_minute(10);
        for expected_remaining in (0..10).rev() {
            let decision = limiter.check("k", limit).await.unwrap();
            assert!(decision.allowed);
            assert_eq!((decision.limit, decision.remaining, decision.retry_after), (10, expected_remaining, None));
        }
        let denied = limiter.check("k", limit).await.unwrap();
        assert!(!denied.allowed);
        assert_eq!((denied.limit, denied.remaining), (10, 0));
        assert_eq!(denied.retry_after, Some(Duration::from_secs(6)), "60 s / 10");
        assert_eq!(denied.retry_after_secs(), Some(6));
        assert_eq!(denied.reset_after, MINUTE);
        // Denied requests use up nothing: still denied, same wait.
        assert_eq!(limiter.check("k", limit).await.unwrap(), denied);
    }

    #[tokio::test(start_paused = true)]
    async fn recovers_as_the_window_slides() {
        let limiter = MemoryRateLimiter::new();
        let limit = Limit::per_minute(10);
        assert_eq!(allowed_of(&limiter, "k", limit, 10).await, 10);
        let retry_after = limiter.check("k", limit).await.unwrap().retry_after.unwrap();

        tokio::time::advance(retry_after - Duration::from_millis(1)).await;
        assert!(!limiter.check("k", limit).await.unwrap().allowed, "not before retry_after");
        tokio::time::advance(Duration::from_millis(1)).await;
        let again = limiter.check("k", limit).await.unwrap();
        assert!(again.allowed, "one more at retry_after");
        assert_eq!(again.remaining, 0);
        assert!(!limiter.check("k", limit).await.unwrap().allowed);

        // Half a window later half the quota is back; a full window later all of it.
        tokio::time::advance(MINUTE / 2).await;
        assert_eq!(allowed_of(&limiter, "k", limit, 10).await, 5);
        tokio::time::advance(MINUTE).await;
        assert_eq!(limiter.check("k", limit).await.unwrap().remaining, 9, "a full quota again");
        assert_eq!(allowed_of(&limiter, "k", limit, 20).await, 9);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_independent() {
        let limiter = MemoryRateLimiter::new();
        let limit = Limit::per_minute(3);
        assert_eq!(allowed_of(&limiter, "a", limit, 5).await, 3);
        assert_eq!(allowed_of(&limiter, "b", limit, 5).await, 3);
        assert_eq!(limiter.check("c", limit).await.unwrap().remaining, 2);
        // The same key under another limit shares its state (one TAT per key).
        assert!(!limiter.check("a", Limit::per_minute(3)).await.unwrap().allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_swept_lazily_and_on_demand() {
        let options = MemoryRateLimiterOptions { shards: 1, sweep_interval: Duration::from_secs(10) };
        let limiter = MemoryRateLimiter::with_options(options);
        let limit = Limit::per_minute(2);
        for i in 0..100 {
            limiter.check(&format!("caller-{i}"), limit).await.unwrap();
        }
        assert_eq!(limiter.len(), 100);

        // One request leaves a key busy for one interval (30 s); after that it is idle.
        tokio::time::advance(Duration::from_secs(31)).await;
        limiter.check("newcomer", limit).await.unwrap();
        assert_eq!(limiter.len(), 1, "the next check swept the idle keys");

        // Within the sweep interval nothing is swept, on demand everything idle is.
        tokio::time::advance(Duration::from_secs(31)).await;
        limiter.check("other", limit).await.unwrap();
        limiter.check("other", limit).await.unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        limiter.check("third", limit).await.unwrap();
        assert_eq!(limiter.len(), 2, "swept on the first check after 31 s; `third` added");
        assert_eq!(limiter.purge_idle(), 0, "`other` is busy for 60 s, `third` for 30 s");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(limiter.purge_idle(), 2);
        assert!(limiter.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_under_churn() {
        let options = MemoryRateLimiterOptions { shards: 8, sweep_interval: Duration::from_secs(1) };
        let limiter = MemoryRateLimiter::with_options(options);
        let limit = Limit::per_minute(60);
        // 100,000 distinct callers, 100 per second, each seen once: each stays 1 s.
        for i in 0..100_000u32 {
            limiter.check(&i.to_string(), limit).await.unwrap();
            if i % 100 == 99 {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
        }
        assert!(limiter.len() <= 400, "held {} keys", limiter.len());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_checks_of_one_key_admit_exactly_the_limit() {
        let limiter = Arc::new(MemoryRateLimiter::new());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..500 {
            let limiter = Arc::clone(&limiter);
            tasks.spawn(async move { limiter.check("shared", Limit::per_minute(100)).await.unwrap().allowed });
        }
        let allowed = tasks.join_all().await.into_iter().filter(|&ok| ok).count();
        assert_eq!(allowed, 100);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_limit_denies_and_bad_window_errors() {
        let limiter = MemoryRateLimiter::new();
        let denied = limiter.check("k", Limit::per_minute(0)).await.unwrap();
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, Some(MINUTE));
        assert!(limiter.is_empty());
        let error = limiter.check("k", Limit::new(5, Duration::ZERO)).await.unwrap_err();
        assert!(matches!(error, RateLimitError::InvalidLimit(_)));
    }
}
