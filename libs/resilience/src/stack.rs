//! The whole policy for one target — breaker, deadline, retries, bulkhead — built in one
//! place, as a tower layer for tower clients and as [`Resilience::call`] for the rest
//! (sqlx, fred, async-nats), with one shared state per target.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tower::{Layer, ServiceBuilder};

use crate::breaker::{CircuitBreaker, CircuitBreakerLayer, CircuitBreakerService};
use crate::bulkhead::{Bulkhead, BulkheadLayer, BulkheadService};
use crate::classify::{Classify, classify_lifted};
use crate::error::ResilienceError;
use crate::lift::{Lift, LiftLayer};
use crate::presets::Preset;
use crate::retry::{self, RetryBudget, RetryLayer, RetryPolicy, RetryService};
use crate::timeout::{TimeoutLayer, TimeoutService};

/// One target's resilience state and settings. Clones (and every layer or call made from
/// them) share the breaker, retry budget and bulkhead: make one per target, not per call.
#[derive(Debug, Clone)]
pub struct Resilience {
    /// Names the breaker, bulkhead and retry metrics of this target.
    name: Arc<str>,
    timeout: Duration,
    retry: RetryPolicy,
    breaker: CircuitBreaker,
    budget: RetryBudget,
    bulkhead: Bulkhead,
}

impl Resilience {
    /// Fresh state for target `name` with `preset`'s settings.
    pub fn new(name: impl Into<String>, preset: &Preset) -> Self {
        let name: Arc<str> = Arc::from(name.into());
        Self {
            timeout: preset.timeout,
            retry: preset.retry.clone(),
            breaker: CircuitBreaker::new(&*name, preset.breaker.clone()),
            budget: RetryBudget::new(preset.budget),
            bulkhead: Bulkhead::new(&*name, preset.max_concurrency, preset.max_queue_wait),
            name,
        }
    }

    /// The target's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The target's breaker, for health output and state-change events.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// The target's bulkhead.
    pub fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
    }

    /// A tower layer applying this policy, judging results with `classifier`.
    pub fn layer<C>(&self, classifier: C) -> ResilienceLayer<C> {
        ResilienceLayer { policy: self.clone(), classifier }
    }

    /// Runs `op` under this policy, in the same order as [`ResilienceLayer`]: `op` is
    /// called again for each attempt and its results are judged by `classifier`. `op`'s
    /// future is created before it waits for a bulkhead slot and only polled after, so it
    /// must not start work until polled (async fns and client futures do not).
    pub async fn call<T, E, C, F, Fut>(&self, classifier: &C, mut op: F) -> Result<T, ResilienceError<E>>
    where
        C: Classify<T, E> + ?Sized,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.breaker.try_acquire()?;
        let attempt = || {
            let bulkhead = self.bulkhead.clone();
            let call = op();
            async move {
                let _slot = bulkhead.acquire().await?;
                call.await.map_err(ResilienceError::Inner)
            }
        };
        let attempts = retry::run(&self.retry, &self.budget, &self.name, classifier, attempt);
        let result = tokio::time::timeout(self.timeout, attempts)
            .await
            .unwrap_or(Err(ResilienceError::Timeout { after: self.timeout }));
        let (outcome, result) = classify_lifted(classifier, result);
        permit.record(outcome);
        result
    }
}

/// The composed stack over a client `S`.
pub type ResilientService<S, C> = CircuitBreakerService<TimeoutService<RetryService<BulkheadService<Lift<S>>, C>>, C>;

/// Tower layer applying a [`Resilience`] policy; every service it wraps shares the policy's
/// state. The stack's error is `ResilienceError<E>` for a client error `E`.
#[derive(Debug, Clone)]
pub struct ResilienceLayer<C> {
    policy: Resilience,
    classifier: C,
}

impl<S, C: Clone> Layer<S> for ResilienceLayer<C> {
    type Service = ResilientService<S, C>;

    fn layer(&self, client: S) -> Self::Service {
        let policy = &self.policy;
        ServiceBuilder::new()
            // Outermost: a target known to be sick is refused before anything waits, and the
            // breaker judges the one final result of each call, after retries or deadline.
            .layer(CircuitBreakerLayer::new(policy.breaker.clone(), self.classifier.clone()))
            // One deadline for all attempts and backoff; inside the breaker so a peer that
            // hangs counts as failing rather than vanishing as a cancelled call.
            .layer(TimeoutLayer::new(policy.timeout))
            // Only transient failures, only within the budget shared by the target's callers.
            .layer(RetryLayer::new(&*policy.name, policy.retry.clone(), policy.budget.clone(), self.classifier.clone()))
            // Per attempt: caps calls in flight to the target and refuses at once past that.
            .layer(BulkheadLayer::new(policy.bulkhead.clone()))
            // The client's own error becomes ResilienceError::Inner, the one error type above.
            .layer(LiftLayer)
            .service(client)
    }
}

#[cfg(test)]
mod tests;
