//! Bulkhead: a cap on calls in flight to one target that refuses at once (or after a
//! short, bounded wait) when full, so a slow target cannot soak up every task and
//! connection of its callers. Tower's `ConcurrencyLimit` would queue without bound.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service, ServiceExt as _};

use crate::error::ResilienceError;

/// Counter of calls refused because the bulkhead was full; label `bulkhead`.
pub const REJECTIONS_COUNTER: &str = "agentmesh_bulkhead_rejections_total";

/// Returned when a bulkhead has no free slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead {name} is full")]
pub struct BulkheadFull {
    /// Name of the bulkhead.
    pub name: String,
}

/// A shared concurrency cap for one target; clones share the same slots.
#[derive(Debug, Clone)]
pub struct Bulkhead {
    name: Arc<str>,
    slots: Arc<Semaphore>,
    /// How long a call may wait for a slot; zero refuses at once.
    max_wait: Duration,
}

impl Bulkhead {
    /// A bulkhead of `max_concurrency` slots (at most tokio's semaphore limit) whose
    /// callers wait at most `max_wait` for one.
    pub fn new(name: impl Into<String>, max_concurrency: usize, max_wait: Duration) -> Self {
        Self {
            name: Arc::from(name.into()),
            slots: Arc::new(Semaphore::new(max_concurrency.min(Semaphore::MAX_PERMITS))),
            max_wait,
        }
    }

    /// The bulkhead's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Free slots right now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }

    /// Takes a slot, held until the returned permit is dropped.
    pub async fn acquire(&self) -> Result<BulkheadPermit, BulkheadFull> {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if self.max_wait.is_zero() => None,
            Err(_) => tokio::time::timeout(self.max_wait, Arc::clone(&self.slots).acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        };
        match permit {
            Some(permit) => Ok(BulkheadPermit { _slot: permit }),
            None => {
                metrics::counter!(REJECTIONS_COUNTER, "bulkhead" => self.name.clone()).increment(1);
                Err(BulkheadFull { name: self.name.to_string() })
            }
        }
    }
}

/// One slot of a [`Bulkhead`], freed when dropped.
#[derive(Debug)]
pub struct BulkheadPermit {
    _slot: OwnedSemaphorePermit,
}

/// Puts a service behind a [`Bulkhead`]; clones of the layer share its slots.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    bulkhead: Bulkhead,
}

impl BulkheadLayer {
    /// A layer sharing `bulkhead`'s slots among every service it wraps.
    pub fn new(bulkhead: Bulkhead) -> Self {
        Self { bulkhead }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService { inner, bulkhead: self.bulkhead.clone() }
    }
}

/// A service behind a bulkhead. It is always ready: the slot, not readiness, decides; a
/// call without a slot fails with [`ResilienceError::BulkheadFull`]. The slot is held
/// until the response future completes or is dropped (for a streaming response, until
/// its headers arrive).
#[derive(Debug, Clone)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Bulkhead,
}

impl<S, Req, E> Service<Req> for BulkheadService<S>
where
    S: Service<Req, Error = ResilienceError<E>> + Clone + Send + 'static,
    S::Future: Send,
    Req: Send + 'static,
    E: 'static,
{
    type Response = S::Response;
    type Error = ResilienceError<E>;
    type Future = BoxFuture<'static, Result<S::Response, ResilienceError<E>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let bulkhead = self.bulkhead.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            let _slot = bulkhead.acquire().await?;
            inner.oneshot(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lift::LiftLayer;
    use crate::testutil::Mock;
    use tokio::time::Instant;
    use tower::ServiceBuilder;

    fn service(mock: &Mock, slots: usize, wait: Duration) -> BulkheadService<crate::Lift<Mock>> {
        ServiceBuilder::new()
            .layer(BulkheadLayer::new(Bulkhead::new("db", slots, wait)))
            .layer(LiftLayer)
            .service(mock.clone())
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_at_once_when_full_and_frees_on_completion() {
        let mock = Mock::ok().with_delay(Duration::from_secs(1));
        let service = service(&mock, 2, Duration::ZERO);
        let first = tokio::spawn(service.clone().oneshot(1));
        let second = tokio::spawn(service.clone().oneshot(2));
        tokio::task::yield_now().await;
        assert_eq!(mock.in_flight(), 2);

        let start = Instant::now();
        let error = service.clone().oneshot(3).await.unwrap_err();
        assert!(matches!(error, ResilienceError::BulkheadFull { ref name } if name == "db"));
        assert_eq!(start.elapsed(), Duration::ZERO, "rejection is immediate");
        assert_eq!(mock.calls(), 2, "a rejected call never reaches the client");

        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(service.oneshot(4).await.unwrap(), "ok");
    }

    #[tokio::test(start_paused = true)]
    async fn frees_the_slot_when_the_response_future_is_dropped() {
        let mock = Mock::ok().with_delay(Duration::from_secs(60));
        let service = service(&mock, 1, Duration::ZERO);
        let mut pending = Box::pin(service.clone().oneshot(1));
        assert!(futures::poll!(pending.as_mut()).is_pending());
        assert!(matches!(service.clone().oneshot(2).await, Err(ResilienceError::BulkheadFull { .. })));
        drop(pending);
        assert_eq!(mock.in_flight(), 0);
        let mut next = Box::pin(service.oneshot(3));
        assert!(futures::poll!(next.as_mut()).is_pending(), "admitted, now waiting on the client");
        assert_eq!(mock.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_a_bounded_time_for_a_slot() {
        let mock = Mock::ok().with_delay(Duration::from_secs(1));
        let service = service(&mock, 1, Duration::from_secs(2));
        let first = tokio::spawn(service.clone().oneshot(1));
        tokio::task::yield_now().await;
        let start = Instant::now();
        assert_eq!(service.clone().oneshot(2).await.unwrap(), "ok");
        assert_eq!(start.elapsed(), Duration::from_secs(2), "waited for the first call, then ran");
        first.await.unwrap().unwrap();

        let slow = Mock::ok().with_delay(Duration::from_secs(10));
        let service = self::service(&slow, 1, Duration::from_millis(500));
        let _busy = tokio::spawn(service.clone().oneshot(1));
        tokio::task::yield_now().await;
        let start = Instant::now();
        assert!(service.oneshot(2).await.is_err());
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }
}
