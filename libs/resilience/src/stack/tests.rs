use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, ServiceExt};

use super::*;
use crate::breaker::{BreakerConfig, BreakerState};
use crate::classify::{GrpcStatusClassifier, Outcome};
use crate::retry::RetryBudgetConfig;
use crate::testutil::Mock;

fn preset() -> Preset {
    Preset {
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: false,
        },
        budget: RetryBudgetConfig::default(),
        breaker: BreakerConfig {
            failure_threshold: 2,
            recovery_timeout: Duration::from_secs(10),
            ..BreakerConfig::default()
        },
        timeout: Duration::from_secs(5),
        max_concurrency: 1,
        max_queue_wait: Duration::ZERO,
    }
}

fn unavailable() -> tonic::Status {
    tonic::Status::unavailable("restarting")
}

#[tokio::test(start_paused = true)]
async fn retries_inside_and_the_breaker_sees_one_outcome_per_call() {
    let policy = Resilience::new("session-store", &preset());
    let mock = Mock::script([Err(unavailable()), Err(unavailable()), Ok("first")]);
    let service = policy.layer(GrpcStatusClassifier).layer(mock.clone());
    assert_eq!(service.clone().oneshot(1).await.unwrap(), "first");
    assert_eq!(mock.calls(), 3);
    assert_eq!(policy.breaker().snapshot().failures, 0);

    let failing = Mock::failing_forever(unavailable);
    let service = policy.layer(GrpcStatusClassifier).layer(failing.clone());
    let error = service.clone().oneshot(1).await.unwrap_err();
    assert_eq!(error.into_inner().unwrap().code(), tonic::Code::Unavailable);
    assert_eq!(failing.calls(), 3);
    assert_eq!(policy.breaker().snapshot().consecutive_failures, 1, "one call, three attempts");
}

#[tokio::test(start_paused = true)]
async fn layers_from_one_policy_share_its_breaker() {
    let policy = Resilience::new("mcp", &preset());
    let failing = Mock::failing_forever(unavailable);
    let first = policy.layer(GrpcStatusClassifier).layer(failing);
    let healthy = Mock::ok();
    let second = policy.clone().layer(GrpcStatusClassifier).layer(healthy.clone());
    assert!(first.clone().oneshot(1).await.is_err());
    assert!(first.oneshot(1).await.is_err());
    let error = second.oneshot(1).await.unwrap_err();
    assert!(matches!(error, ResilienceError::CircuitOpen { ref name, .. } if name == "mcp"));
    assert_eq!(healthy.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hung_peer_times_out_and_counts_against_the_breaker() {
    let policy = Resilience::new("llm", &preset());
    let hung = Mock::ok().with_delay(Duration::from_secs(3600));
    let service = policy.layer(GrpcStatusClassifier).layer(hung.clone());
    for _ in 0..2 {
        let start = Instant::now();
        let error = service.clone().oneshot(1).await.unwrap_err();
        assert!(matches!(error, ResilienceError::Timeout { after } if after == Duration::from_secs(5)));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }
    assert_eq!(policy.breaker().state(), BreakerState::Open);
    assert_eq!(hung.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_covers_every_attempt_and_backoff() {
    let mut settings = preset();
    settings.retry.max_attempts = 10;
    settings.retry.base_delay = Duration::from_secs(1);
    settings.retry.max_delay = Duration::from_secs(1);
    let policy = Resilience::new("db", &settings);
    let failing = Mock::failing_forever(unavailable).with_delay(Duration::from_millis(500));
    let service = policy.layer(GrpcStatusClassifier).layer(failing.clone());
    let start = Instant::now();
    assert!(matches!(service.oneshot(1).await, Err(ResilienceError::Timeout { .. })));
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(failing.calls(), 4, "attempts start at 0, 1.5, 3 and 4.5 s");
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_is_neither_retried_nor_held_against_the_peer() {
    let policy = Resilience::new("secrets", &preset());
    let slow = Mock::ok().with_delay(Duration::from_secs(1));
    let service = policy.layer(GrpcStatusClassifier).layer(slow.clone());
    let busy = tokio::spawn(service.clone().oneshot(1));
    tokio::task::yield_now().await;
    for _ in 0..3 {
        let error = service.clone().oneshot(2).await.unwrap_err();
        assert!(matches!(error, ResilienceError::BulkheadFull { ref name } if name == "secrets"));
    }
    assert_eq!(slow.calls(), 1);
    assert_eq!(policy.breaker().state(), BreakerState::Closed);
    assert_eq!(busy.await.unwrap().unwrap(), "ok");
    assert_eq!(policy.bulkhead().available(), 1);
}

#[derive(Debug)]
enum DbError {
    ConnectionLost,
    UniqueViolation,
}

fn classify_db<T>(result: &Result<T, DbError>) -> Outcome {
    match result {
        Ok(_) | Err(DbError::UniqueViolation) => Outcome::Success,
        Err(DbError::ConnectionLost) => Outcome::RETRYABLE,
    }
}

#[tokio::test(start_paused = true)]
async fn call_reinvokes_the_closure_per_attempt() {
    let policy = Resilience::new("postgres", &preset());
    let mut invocations = 0;
    let result = policy
        .call(&classify_db, || {
            invocations += 1;
            let attempt = invocations;
            async move { if attempt < 3 { Err(DbError::ConnectionLost) } else { Ok(attempt) } }
        })
        .await;
    assert_eq!(result.unwrap(), 3);

    let mut invocations = 0;
    let result: Result<(), _> = policy
        .call(&classify_db, || {
            invocations += 1;
            async { Err(DbError::UniqueViolation) }
        })
        .await;
    assert!(matches!(result, Err(ResilienceError::Inner(DbError::UniqueViolation))));
    assert_eq!(invocations, 1, "a caller error is not retried");
    assert_eq!(policy.breaker().snapshot().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn call_applies_deadline_breaker_and_bulkhead() {
    let policy = Resilience::new("nats", &preset());
    let hung = Mock::ok().with_delay(Duration::from_secs(60));
    for _ in 0..2 {
        let result = policy.call(&GrpcStatusClassifier, || hung.invoke()).await;
        assert!(matches!(result, Err(ResilienceError::Timeout { .. })));
    }
    let healthy = Mock::ok();
    let result = policy.call(&GrpcStatusClassifier, || healthy.invoke()).await;
    assert!(matches!(result, Err(ResilienceError::CircuitOpen { .. })));
    assert_eq!(healthy.calls(), 0);

    tokio::time::advance(Duration::from_secs(10)).await;
    let slow = Mock::ok().with_delay(Duration::from_secs(1));
    let probe = policy.call(&GrpcStatusClassifier, || slow.invoke());
    let crowded = async {
        tokio::task::yield_now().await;
        let other = Resilience::clone(&policy);
        other.call(&GrpcStatusClassifier, || slow.invoke()).await
    };
    let (probe, crowded) = tokio::join!(probe, crowded);
    assert_eq!(probe.unwrap(), "ok");
    assert!(matches!(crowded, Err(ResilienceError::CircuitOpen { retry_after, .. }) if retry_after.is_zero()));
    assert_eq!(policy.breaker().state(), BreakerState::Closed);

    let first = policy.call(&GrpcStatusClassifier, || slow.invoke());
    let second = async {
        tokio::task::yield_now().await;
        policy.call(&GrpcStatusClassifier, || slow.invoke()).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.unwrap(), "ok");
    assert!(matches!(second, Err(ResilienceError::BulkheadFull { .. })));
}

#[tokio::test(start_paused = true)]
async fn retries_trailers_only_grpc_errors_at_the_channel_level() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::classify::GrpcResponseClassifier;

    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let channel = tower::service_fn(move |request: http::Request<String>| {
        let attempt = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            assert_eq!(request.body(), "buffered body", "each attempt re-sends the request");
            let response = if attempt == 0 {
                let mut response = tonic::Status::unavailable("draining").into_http::<()>();
                response.extensions_mut().clear();
                response
            } else {
                http::Response::new(())
            };
            Ok::<_, std::io::Error>(response)
        }
    });
    let policy = Resilience::new("agent-orchestrator", &preset());
    let service = policy.layer(GrpcResponseClassifier).layer(channel);
    let request = http::Request::new("buffered body".to_owned());
    let response = service.oneshot(request).await.unwrap();
    assert!(response.headers().get("grpc-status").is_none());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn the_stack_error_fits_tonic_clients() {
    fn boxable<E: Into<tower::BoxError>>() {}
    boxable::<ResilienceError<tonic::transport::Error>>();
    boxable::<ResilienceError<tonic::Status>>();
}
