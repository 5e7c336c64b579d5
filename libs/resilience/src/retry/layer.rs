//! Retry as a tower layer. Each attempt re-sends a clone of the request through a clone
//! of the inner service, so requests must be `Clone` (gRPC bodies are buffered first).

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tower::{Layer, Service, ServiceExt as _};

use super::{RetryBudget, RetryPolicy, run};
use crate::classify::Classify;
use crate::error::ResilienceError;

/// Retries calls the classifier calls retryable; clones share the budget.
#[derive(Debug, Clone)]
pub struct RetryLayer<C> {
    /// Label of the retry metrics.
    client: Arc<str>,
    policy: RetryPolicy,
    budget: RetryBudget,
    classifier: C,
}

impl<C> RetryLayer<C> {
    /// A layer retrying per `policy` within `budget`, as `classifier` decides.
    pub fn new(client: impl Into<String>, policy: RetryPolicy, budget: RetryBudget, classifier: C) -> Self {
        Self { client: Arc::from(client.into()), policy, budget, classifier }
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryService { inner, config: self.clone() }
    }
}

/// A service that retries. It is always ready; each attempt waits for the inner
/// service's readiness itself. Returns the last attempt's result when it stops.
#[derive(Debug, Clone)]
pub struct RetryService<S, C> {
    inner: S,
    config: RetryLayer<C>,
}

impl<S, C, Req, T, E> Service<Req> for RetryService<S, C>
where
    S: Service<Req, Response = T, Error = ResilienceError<E>> + Clone + Send + 'static,
    S::Future: Send,
    C: Classify<T, E> + Clone + Send + Sync + 'static,
    Req: Clone + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    type Response = T;
    type Error = ResilienceError<E>;
    type Future = BoxFuture<'static, Result<T, ResilienceError<E>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let inner = self.inner.clone();
        let config = self.config.clone();
        Box::pin(async move {
            let attempt = move || {
                let service = inner.clone();
                let request = request.clone();
                async move { service.oneshot(request).await }
            };
            run(&config.policy, &config.budget, &config.client, &config.classifier, attempt).await
        })
    }
}
