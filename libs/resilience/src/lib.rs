//! Resilience for every client in the mesh — gRPC channels to other services, LLM
//! providers, MCP servers, PostgreSQL, Redis, NATS, secret providers — as tower layers
//! and as a plain async helper, so every call to a peer is bounded, judged and shed the
//! same way.
//!
//! # The stack
//!
//! [`Resilience`] holds one target's state; [`Resilience::layer`] builds, outermost first:
//!
//! 1. **circuit breaker** ([`breaker`]) — refuses calls to a sick target at once; it sees
//!    one result per call, after retries, like the seed's `@circuit_protected` over `@retry`;
//! 2. **timeout** ([`timeout`]) — one deadline over all attempts and backoff. It sits
//!    inside the breaker so that a hung peer counts as a breaker failure (the breaker
//!    never waits, so nothing else changes);
//! 3. **retry** ([`retry`]) — capped exponential backoff with full jitter, server hints
//!    (`Retry-After`, google.rpc `RetryInfo`) and a retry budget;
//! 4. **bulkhead** ([`bulkhead`]) — a per-attempt cap on calls in flight that refuses
//!    rather than queues.
//!
//! [`Resilience::call`] runs the same order around a closure for clients that are not
//! tower services. [`Preset`] carries the seed's numbers per kind of target.
//!
//! ```
//! use agentmesh_resilience::{GrpcStatusClassifier, Preset, Resilience};
//!
//! # async fn get_session() -> Result<String, tonic::Status> { Ok("s-1".into()) }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // One per target, shared by every clone of that target's client.
//! let session_store = Resilience::new("session-store", &Preset::internal());
//! session_store.breaker().on_state_change(|change| {
//!     println!("{}: {} -> {}", change.breaker, change.from.as_str(), change.to.as_str());
//! });
//! // A tower client: `session_store.layer(GrpcResponseClassifier).layer(channel)`.
//! // Anything else: a closure called once per attempt.
//! let session = session_store.call(&GrpcStatusClassifier, get_session).await;
//! assert_eq!(session.unwrap(), "s-1");
//! # }
//! ```
//!
//! # Errors: one type, never nested
//!
//! Every layer returns [`ResilienceError<E>`], where `E` is the client's own error, and
//! every layer expects its inner service to fail with `ResilienceError<E>` too. The client
//! is wrapped once at the bottom by [`LiftLayer`] (done by [`ResilienceLayer`]; add it
//! yourself when using single layers), so errors never nest and callers match typed
//! variants: `Inner(E)`, `Timeout`, `CircuitOpen`, `BulkheadFull`.
//!
//! # Judging results
//!
//! A [`Classify`] implementation turns each result into an [`Outcome`]: success (including
//! caller errors such as NotFound — the peer is healthy), neutral (no evidence), or failure
//! (retryable or not, with the server's retry hint). The breaker and the retry layer share
//! it. See [`classify_grpc_code`] and [`classify_http_status`] for the tables.
//!
//! # Retries and the mesh
//!
//! Istio may retry too. The budget bounds our retries to about `retry_ratio` of traffic
//! per target; mesh retries should stay off (or at one attempt) for routes whose clients
//! use this crate, or the two multiply.
//!
//! Hand-rolled rather than taken from `tower-resilience`: the breaker must share a
//! classifier with retries that reads gRPC status from HTTP headers, expose permits to
//! non-tower clients, and all layers must share one flat, typed error.

#![forbid(unsafe_code)]

pub mod breaker;
pub mod bulkhead;
pub mod classify;
pub mod error;
pub mod lift;
pub mod presets;
pub mod retry;
pub mod stack;
pub mod timeout;

#[cfg(test)]
mod testutil;
mod window;

pub use breaker::{
    BreakerConfig, BreakerOpen, BreakerSnapshot, BreakerState, CircuitBreaker, CircuitBreakerLayer,
    CircuitBreakerService, FailureRate, Permit, StateChange,
};
pub use bulkhead::{Bulkhead, BulkheadFull, BulkheadLayer, BulkheadPermit, BulkheadService};
pub use classify::{
    Classify, GrpcResponseClassifier, GrpcStatusClassifier, Outcome, classify_grpc_code, classify_http_status,
    parse_retry_after, retry_info,
};
pub use error::{ConfigError, ResilienceError};
pub use lift::{Lift, LiftLayer};
pub use presets::Preset;
pub use retry::{RetryBudget, RetryBudgetConfig, RetryLayer, RetryPolicy, RetryService};
pub use stack::{Resilience, ResilienceLayer, ResilientService};
pub use timeout::{TimeoutLayer, TimeoutService};
