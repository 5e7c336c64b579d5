//! Retrying transient failures with capped exponential backoff and full jitter, honouring
//! the server's own hint, and only while a shared budget allows, so that retries stay a
//! bounded fraction of traffic instead of multiplying load on a struggling peer.

mod budget;
mod layer;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::time::Duration;

pub use budget::{RetryBudget, RetryBudgetConfig};
pub use layer::{RetryLayer, RetryService};

use crate::classify::{Classify, Outcome, classify_lifted};
use crate::error::{ConfigError, ResilienceError, check};

/// Counter of retries sent (not first attempts); label `client`.
pub const RETRIES_COUNTER: &str = "agentmesh_retries_total";
/// Counter of retries skipped because the budget was empty; label `client`.
pub const BUDGET_EXHAUSTED_COUNTER: &str = "agentmesh_retry_budget_exhausted_total";

/// When and how often to retry; plain data so configuration maps onto it directly.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included.
    pub max_attempts: u32,
    /// Delay ceiling before the first retry.
    pub base_delay: Duration,
    /// No wait is ever longer; a server asking for longer is not retried.
    pub max_delay: Duration,
    /// Growth of the delay ceiling per retry.
    pub multiplier: f64,
    /// Full jitter: wait a uniform random time in `[0, ceiling]`, so clients that failed
    /// together do not retry together.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// The seed's generic defaults: 3 attempts, 1 s base, 60 s cap, ×2, jitter on.
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The delay ceiling before retry `retry` (1 for the first retry):
    /// `min(max_delay, base_delay · multiplier^(retry-1))`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exponent = i32::try_from(retry.saturating_sub(1)).unwrap_or(i32::MAX);
        let seconds = self.base_delay.as_secs_f64() * self.multiplier.powi(exponent);
        Duration::try_from_secs_f64(seconds).map_or(self.max_delay, |d| d.min(self.max_delay))
    }

    /// How long to wait before retry `retry`: the server's hint when it gave one, else the
    /// jittered backoff. `None` when the server asks for more than `max_delay`: waiting
    /// longer than allowed is not an option, and retrying sooner would be ignoring it.
    pub fn delay(&self, retry: u32, server_hint: Option<Duration>) -> Option<Duration> {
        match server_hint {
            Some(hint) if hint > self.max_delay => None,
            Some(hint) => Some(hint),
            None if self.jitter => Some(rand::random_range(Duration::ZERO..=self.backoff(retry))),
            None => Some(self.backoff(retry)),
        }
    }

    /// Rejects values the retry loop cannot work with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.max_attempts >= 1, "retry.max_attempts", "at least 1", self.max_attempts)?;
        check(
            self.multiplier.is_finite() && self.multiplier >= 1.0,
            "retry.multiplier",
            "finite and at least 1",
            self.multiplier,
        )?;
        check(self.base_delay <= self.max_delay, "retry.base_delay", "at most retry.max_delay", self.base_delay)
    }
}

/// Runs `attempt` until it succeeds, fails without being retryable, or attempts, the
/// server's patience or the budget run out; returns the last result unchanged.
pub(crate) async fn run<T, E, C, F, Fut>(
    policy: &RetryPolicy,
    budget: &RetryBudget,
    client: &std::sync::Arc<str>,
    classifier: &C,
    mut attempt: F,
) -> Result<T, ResilienceError<E>>
where
    C: Classify<T, E> + ?Sized,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ResilienceError<E>>>,
{
    budget.deposit();
    let mut attempts = 1;
    loop {
        let (outcome, result) = classify_lifted(classifier, attempt().await);
        let Outcome::Failure { retryable: true, retry_after } = outcome else {
            return result;
        };
        if attempts >= policy.max_attempts {
            return result;
        }
        let Some(delay) = policy.delay(attempts, retry_after) else {
            return result;
        };
        if !budget.try_withdraw() {
            metrics::counter!(BUDGET_EXHAUSTED_COUNTER, "client" => client.clone()).increment(1);
            return result;
        }
        metrics::counter!(RETRIES_COUNTER, "client" => client.clone()).increment(1);
        tracing::debug!(client = %client, attempt = attempts, ?delay, "retrying");
        tokio::time::sleep(delay).await;
        attempts += 1;
    }
}
