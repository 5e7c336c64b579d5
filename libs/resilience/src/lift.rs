//! Wraps a client's own error as [`ResilienceError::Inner`] once, at the bottom of a
//! stack, so every layer above shares one error type and none wraps another's error.

use std::task::{Context, Poll};

use futures::TryFutureExt as _;
use futures::future::MapErr;
use tower::{Layer, Service};

use crate::error::ResilienceError;

/// Layer producing [`Lift`]; put it directly around the client, below this crate's
/// other layers (which all expect an inner error of type `ResilienceError<E>`).
#[derive(Debug, Clone, Copy, Default)]
pub struct LiftLayer;

impl<S> Layer<S> for LiftLayer {
    type Service = Lift<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Lift { inner }
    }
}

/// A client whose error `E` is reported as `ResilienceError::Inner(E)`.
#[derive(Debug, Clone)]
pub struct Lift<S> {
    inner: S,
}

impl<S, Req> Service<Req> for Lift<S>
where
    S: Service<Req>,
{
    type Response = S::Response;
    type Error = ResilienceError<S::Error>;
    type Future = MapErr<S::Future, fn(S::Error) -> ResilienceError<S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(ResilienceError::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.inner.call(request).map_err(ResilienceError::Inner)
    }
}
