//! The retry budget: every original request deposits, every retry withdraws, and deposits
//! expire after `ttl`, so retries stay near `retry_ratio` of recent traffic (plus a small
//! floor for quiet clients) no matter how many layers or callers retry.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{ConfigError, check};
use crate::window::SlidingWindow;

/// Budget parameters; plain data so configuration maps onto it directly.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// How long a deposit counts.
    pub ttl: Duration,
    /// Retries allowed per second of `ttl` even without traffic.
    pub min_retries_per_sec: u32,
    /// Retries allowed per original request.
    pub retry_ratio: f32,
}

impl Default for RetryBudgetConfig {
    /// 10 s, 10 retries/s floor, 20 % of traffic.
    fn default() -> Self {
        Self { ttl: Duration::from_secs(10), min_retries_per_sec: 10, retry_ratio: 0.2 }
    }
}

impl RetryBudgetConfig {
    /// Rejects values the budget cannot work with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(!self.ttl.is_zero(), "budget.ttl", "positive", self.ttl)?;
        check(
            self.retry_ratio.is_finite() && self.retry_ratio >= 0.0,
            "budget.retry_ratio",
            "finite and at least 0",
            self.retry_ratio,
        )
    }
}

/// Deposit and withdrawal indexes in the ledger.
const DEPOSITS: usize = 0;
const WITHDRAWALS: usize = 1;

/// A retry budget shared by every clone of a target's stack.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    /// Deposits and withdrawals over the last `ttl`.
    ledger: Arc<Mutex<SlidingWindow>>,
}

impl RetryBudget {
    /// An empty budget (only the `min_retries_per_sec` floor is available).
    pub fn new(config: RetryBudgetConfig) -> Self {
        Self { config, ledger: Arc::new(Mutex::new(SlidingWindow::new(config.ttl))) }
    }

    /// Records one original request.
    pub fn deposit(&self) {
        self.lock().add(Instant::now(), [1, 0]);
    }

    /// Takes one retry from the budget; false (and nothing taken) when it is empty.
    pub fn try_withdraw(&self) -> bool {
        let now = Instant::now();
        let mut ledger = self.lock();
        let sums = ledger.sums(now);
        let floor = f64::from(self.config.min_retries_per_sec) * self.config.ttl.as_secs_f64();
        let earned = f64::from(self.config.retry_ratio) * sums[DEPOSITS] as f64;
        let available = floor + earned - sums[WITHDRAWALS] as f64;
        if available >= 1.0 {
            ledger.add(now, [0, 1]);
            true
        } else {
            false
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlidingWindow> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_the_floor_plus_a_ratio_of_traffic_and_refills_after_ttl() {
        let budget = RetryBudget::new(RetryBudgetConfig {
            ttl: Duration::from_secs(10),
            min_retries_per_sec: 1,
            retry_ratio: 0.5,
        });
        for _ in 0..10 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 10 + 5);
        tokio::time::advance(Duration::from_secs(11)).await;
        let granted = (0..100).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 10, "old deposits and withdrawals expired; the floor is back");
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_budget() {
        let budget = RetryBudget::new(RetryBudgetConfig {
            ttl: Duration::from_secs(1),
            min_retries_per_sec: 2,
            retry_ratio: 0.0,
        });
        let clone = budget.clone();
        assert!(budget.try_withdraw());
        assert!(clone.try_withdraw());
        assert!(!budget.try_withdraw());
    }

    #[test]
    fn validation_names_the_field() {
        let bad = RetryBudgetConfig { retry_ratio: f32::NAN, ..RetryBudgetConfig::default() };
        assert_eq!(bad.validate().unwrap_err().field, "budget.retry_ratio");
        assert!(RetryBudgetConfig::default().validate().is_ok());
    }
}
