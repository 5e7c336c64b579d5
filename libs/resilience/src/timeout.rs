//! Per-call deadline with a typed error that names the duration, so callers can tell a
//! timeout from the peer's own errors without downcasting tower's opaque `Elapsed`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Sleep, sleep};
use tower::{Layer, Service};

use crate::error::ResilienceError;

/// Fails calls that take longer than `after` with [`ResilienceError::Timeout`].
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    after: Duration,
}

impl TimeoutLayer {
    /// A layer giving each call `after` to complete.
    pub fn new(after: Duration) -> Self {
        Self { after }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService { inner, after: self.after }
    }
}

/// A service whose calls fail with [`ResilienceError::Timeout`] past a deadline; the
/// clock starts when `call` is invoked, and the inner future is dropped on expiry.
#[derive(Debug, Clone)]
pub struct TimeoutService<S> {
    inner: S,
    after: Duration,
}

impl<S, Req, E> Service<Req> for TimeoutService<S>
where
    S: Service<Req, Error = ResilienceError<E>>,
{
    type Response = S::Response;
    type Error = ResilienceError<E>;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        TimeoutFuture { inner: self.inner.call(request), sleep: sleep(self.after), after: self.after }
    }
}

pin_project! {
    /// Response future of [`TimeoutService`].
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Sleep,
        after: Duration,
    }
}

impl<F, T, E> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, ResilienceError<E>>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result);
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(ResilienceError::Timeout { after: *this.after })),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lift::LiftLayer;
    use crate::testutil::Mock;
    use tokio::time::Instant;
    use tower::{ServiceBuilder, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn fails_a_slow_call_with_the_duration() {
        let mock = Mock::ok().with_delay(Duration::from_secs(5));
        let service = ServiceBuilder::new()
            .layer(TimeoutLayer::new(Duration::from_secs(2)))
            .layer(LiftLayer)
            .service(mock.clone());
        let start = Instant::now();
        let error = service.oneshot(1).await.unwrap_err();
        assert!(matches!(error, ResilienceError::Timeout { after } if after == Duration::from_secs(2)));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(mock.in_flight(), 0, "the inner call is dropped on expiry");
    }

    #[tokio::test(start_paused = true)]
    async fn passes_a_fast_call_through() {
        let mock = Mock::script([Err(tonic::Status::not_found("x"))]).with_delay(Duration::from_secs(1));
        let service = ServiceBuilder::new()
            .layer(TimeoutLayer::new(Duration::from_secs(2)))
            .layer(LiftLayer)
            .service(mock.clone());
        let error = service.clone().oneshot(1).await.unwrap_err();
        assert_eq!(error.into_inner().unwrap().code(), tonic::Code::NotFound);
        assert_eq!(service.oneshot(2).await.unwrap(), "ok");
    }
}
