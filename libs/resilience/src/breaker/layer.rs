//! The breaker as a tower layer: one permit per call, recorded from the classified result,
//! so a tower stack gets the same breaker as code that uses permits by hand.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{BreakerOpen, CircuitBreaker, Permit};
use crate::classify::{Classify, classify_lifted};
use crate::error::ResilienceError;

/// Wraps a service in a [`CircuitBreaker`]; clones of the layer share the breaker.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C> {
    breaker: CircuitBreaker,
    /// Turns each result into the outcome recorded on the breaker.
    classifier: C,
}

impl<C> CircuitBreakerLayer<C> {
    /// A layer recording outcomes decided by `classifier` on `breaker`.
    pub fn new(breaker: CircuitBreaker, classifier: C) -> Self {
        Self { breaker, classifier }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService { inner, breaker: self.breaker.clone(), classifier: self.classifier.clone() }
    }
}

/// A service behind a circuit breaker; rejects with [`ResilienceError::CircuitOpen`]
/// without calling the inner service while the breaker refuses.
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S, C> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S, C, Req, T, E> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req, Response = T, Error = ResilienceError<E>>,
    C: Classify<T, E> + Clone,
{
    type Response = T;
    type Error = ResilienceError<E>;
    type Future = CircuitBreakerFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let state = match self.breaker.try_acquire() {
            Ok(permit) => State::Running {
                inner: self.inner.call(request),
                permit: Some(permit),
                classifier: self.classifier.clone(),
            },
            Err(open) => State::Rejected { open },
        };
        CircuitBreakerFuture { state }
    }
}

pin_project! {
    /// Response future of [`CircuitBreakerService`].
    pub struct CircuitBreakerFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Running {
            #[pin]
            inner: F,
            // Taken when the call completes; dropping the future first is neutral.
            permit: Option<Permit>,
            classifier: C,
        },
        Rejected {
            open: BreakerOpen,
        },
    }
}

impl<F, C, T, E> Future for CircuitBreakerFuture<F, C>
where
    F: Future<Output = Result<T, ResilienceError<E>>>,
    C: Classify<T, E>,
{
    type Output = Result<T, ResilienceError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Running { inner, permit, classifier } => {
                let result = ready!(inner.poll(cx));
                let (outcome, result) = classify_lifted(classifier, result);
                if let Some(permit) = permit.take() {
                    permit.record(outcome);
                }
                Poll::Ready(result)
            }
            StateProj::Rejected { open } => Poll::Ready(Err(open.clone().into())),
        }
    }
}
