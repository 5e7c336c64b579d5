//! Calls between services that share one process (`agentmesh up`), without a socket.
//!
//! A server that opts in ([`ServerConfig::in_process_calls`]) registers its whole request
//! stack — routing, the per-call layer with authentication, deadlines and metrics — under
//! the address it listens on. A client of the same process whose peer URL names that
//! address ([`crate::balance::Balanced`]) hands each request straight to that stack
//! instead of writing it to a loopback HTTP/2 connection: the same headers, the same
//! encoded protobuf, the same server code, without the kernel, the HTTP/2 framing and the
//! connection tasks on both sides. As hyper does for each HTTP/2 stream, the server
//! handles the call in a task of its own, which is dropped when the caller gives up.
//! The registration ends when the server stops accepting; later calls go to the socket
//! and find it closed, exactly as a separate process's would.
//!
//! [`ServerConfig::in_process_calls`]: crate::config::ServerConfig::in_process_calls

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, PoisonError, RwLock};
use std::task::{Context, Poll};

use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::{Request, Response};
use tonic::body::Body;
use tower::ServiceExt;

use crate::error::ApiError;

/// The servers of this process that accept in-process calls, by listening address, each
/// with the number of its registration.
static SERVERS: LazyLock<RwLock<HashMap<SocketAddr, (u64, axum::Router)>>> = LazyLock::new(Default::default);

/// Numbers registrations, so an old one ending cannot remove a newer server that took
/// over the same address.
static NEXT_REGISTRATION: AtomicU64 = AtomicU64::new(0);

/// Keeps a server reachable in process; dropping it ends that.
#[derive(Debug)]
pub(crate) struct Registration {
    address: SocketAddr,
    number: u64,
}

/// Makes `server` (the stack a listener on `address` serves) callable by this process's
/// clients of `address`.
pub(crate) fn register(address: SocketAddr, server: axum::Router) -> Registration {
    let number = NEXT_REGISTRATION.fetch_add(1, Ordering::Relaxed);
    SERVERS.write().unwrap_or_else(PoisonError::into_inner).insert(address, (number, server));
    Registration { address, number }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut servers = SERVERS.write().unwrap_or_else(PoisonError::into_inner);
        if servers.get(&self.address).is_some_and(|(number, _)| *number == self.number) {
            servers.remove(&self.address);
        }
    }
}

/// The in-process server listening on `address`, if there is one.
pub(crate) fn server_at(address: SocketAddr) -> Option<axum::Router> {
    SERVERS.read().unwrap_or_else(PoisonError::into_inner).get(&address).map(|(_, server)| server.clone())
}

/// Serves `request` with `server` in a task of its own, as if it had arrived on a
/// loopback connection; dropping the returned future drops the call.
pub(crate) fn call(server: axum::Router, request: &Request<Bytes>) -> InProcessCall {
    let mut forwarded = Request::new(axum::body::Body::from(request.body().clone()));
    *forwarded.method_mut() = request.method().clone();
    *forwarded.uri_mut() = request.uri().clone();
    *forwarded.version_mut() = request.version();
    *forwarded.headers_mut() = request.headers().clone();
    forwarded.extensions_mut().insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 0))));
    InProcessCall { task: tokio::spawn(server.oneshot(forwarded)) }
}

/// A call being served in process. See [`call`].
pub(crate) struct InProcessCall {
    task: tokio::task::JoinHandle<Result<Response<axum::body::Body>, std::convert::Infallible>>,
}

impl Future for InProcessCall {
    type Output = Response<Body>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        Pin::new(&mut self.task).poll(cx).map(|joined| match joined {
            Ok(Ok(response)) => response.map(Body::new),
            Ok(Err(never)) => match never {},
            Err(error) => {
                // What a client sees when a server's stream task dies: the call failed.
                tracing::error!(%error, "in-process call failed in the server");
                tonic::Status::from(ApiError::internal()).into_http()
            }
        })
    }
}

impl Drop for InProcessCall {
    fn drop(&mut self) {
        self.task.abort();
    }
}
