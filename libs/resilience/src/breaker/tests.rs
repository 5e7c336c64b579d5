use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{ServiceBuilder, ServiceExt};

use super::*;
use crate::classify::GrpcStatusClassifier;
use crate::error::ResilienceError;
use crate::lift::LiftLayer;
use crate::testutil::{Mock, TestRecorder};

fn config(failure_threshold: u32, recovery_secs: u64) -> BreakerConfig {
    BreakerConfig {
        failure_threshold,
        recovery_timeout: Duration::from_secs(recovery_secs),
        ..BreakerConfig::default()
    }
}

fn fail(breaker: &CircuitBreaker) {
    breaker.try_acquire().unwrap().record(Outcome::FATAL);
}

fn succeed(breaker: &CircuitBreaker) {
    breaker.try_acquire().unwrap().record(Outcome::Success);
}

fn record_changes(breaker: &CircuitBreaker) -> Arc<Mutex<Vec<(BreakerState, BreakerState)>>> {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let sink = changes.clone();
    breaker.on_state_change(move |change| sink.lock().unwrap().push((change.from, change.to)));
    changes
}

#[tokio::test(start_paused = true)]
async fn opens_after_the_threshold_of_consecutive_failures() {
    let breaker = CircuitBreaker::new("db", config(3, 30));
    fail(&breaker);
    fail(&breaker);
    succeed(&breaker);
    fail(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), BreakerState::Closed, "a success resets the count");
    fail(&breaker);
    assert_eq!(breaker.state(), BreakerState::Open);
    let snapshot = breaker.snapshot();
    assert_eq!(snapshot.consecutive_failures, 3);
    assert_eq!((snapshot.successes, snapshot.failures), (1, 5));
}

#[tokio::test(start_paused = true)]
async fn rejects_fast_with_the_time_left_until_half_open() {
    let breaker = CircuitBreaker::new("db", config(1, 30));
    fail(&breaker);
    tokio::time::advance(Duration::from_secs(10)).await;
    let open = breaker.try_acquire().unwrap_err();
    assert_eq!(open.name, "db");
    assert_eq!(open.retry_after, Duration::from_secs(20));
    assert_eq!(breaker.snapshot().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn half_opens_after_recovery_and_closes_on_probe_success() {
    let breaker = CircuitBreaker::new("db", config(1, 30));
    fail(&breaker);
    tokio::time::advance(Duration::from_millis(29_999)).await;
    assert_eq!(breaker.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    succeed(&breaker);
    assert_eq!(breaker.state(), BreakerState::Closed);
    let snapshot = breaker.snapshot();
    assert_eq!(snapshot.consecutive_failures, 0);
    assert_eq!(snapshot.last_transition, tokio::time::Instant::now());
}

#[tokio::test(start_paused = true)]
async fn reopens_on_probe_failure_and_restarts_the_timer() {
    let breaker = CircuitBreaker::new("db", config(1, 30));
    fail(&breaker);
    tokio::time::advance(Duration::from_secs(30)).await;
    fail(&breaker);
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(breaker.try_acquire().unwrap_err().retry_after, Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_only_the_configured_probes() {
    let breaker =
        CircuitBreaker::new("llm", BreakerConfig { half_open_max_calls: 2, success_threshold: 2, ..config(1, 5) });
    fail(&breaker);
    tokio::time::advance(Duration::from_secs(5)).await;
    let first = breaker.try_acquire().unwrap();
    let second = breaker.try_acquire().unwrap();
    let refused = breaker.try_acquire().unwrap_err();
    assert_eq!(refused.retry_after, Duration::ZERO);

    drop(first);
    assert_eq!(breaker.state(), BreakerState::HalfOpen, "a dropped probe decides nothing");
    let third = breaker.try_acquire().expect("the dropped probe freed its slot");
    second.record(Outcome::Success);
    assert_eq!(breaker.state(), BreakerState::HalfOpen, "one of two successes");
    third.record(Outcome::Success);
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn permits_only_count_in_the_state_they_were_issued_in() {
    let breaker = CircuitBreaker::new("db", config(1, 5));
    let slow_success = breaker.try_acquire().unwrap();
    let slow_failure = breaker.try_acquire().unwrap();
    fail(&breaker);
    slow_success.record(Outcome::Success);
    assert_eq!(breaker.state(), BreakerState::Open, "a late success cannot close it");

    tokio::time::advance(Duration::from_secs(5)).await;
    succeed(&breaker);
    assert_eq!(breaker.state(), BreakerState::Closed);
    slow_failure.record(Outcome::FATAL);
    assert_eq!(breaker.state(), BreakerState::Closed, "nor a late failure reopen it");
    assert_eq!(breaker.snapshot().consecutive_failures, 0);
    assert_eq!(breaker.snapshot().failures, 2, "both still count in the totals");
}

#[tokio::test(start_paused = true)]
async fn a_dropped_permit_is_neutral_when_closed() {
    let breaker = CircuitBreaker::new("db", config(1, 5));
    for _ in 0..10 {
        drop(breaker.try_acquire().unwrap());
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(breaker.snapshot().failures, 0);
}

#[tokio::test(start_paused = true)]
async fn windowed_mode_opens_on_the_failure_rate() {
    let breaker = CircuitBreaker::new(
        "llm",
        BreakerConfig {
            failure_threshold: u32::MAX,
            failure_rate: Some(FailureRate { threshold: 0.5, window: Duration::from_secs(10), minimum_calls: 4 }),
            ..config(1, 5)
        },
    );
    fail(&breaker);
    fail(&breaker);
    fail(&breaker);
    assert_eq!(breaker.state(), BreakerState::Closed, "below minimum_calls");
    tokio::time::advance(Duration::from_secs(11)).await;
    succeed(&breaker);
    fail(&breaker);
    succeed(&breaker);
    assert_eq!(breaker.state(), BreakerState::Closed, "old failures left the window");
    fail(&breaker);
    assert_eq!(breaker.state(), BreakerState::Open, "2 of 4 failed");
}

#[tokio::test(start_paused = true)]
async fn callbacks_see_every_transition_in_order() {
    let breaker = CircuitBreaker::new("db", config(2, 5));
    let changes = record_changes(&breaker);
    let sequences = Arc::new(Mutex::new(Vec::new()));
    let sink = sequences.clone();
    breaker.on_state_change(move |change| {
        assert_eq!(change.breaker, "db");
        sink.lock().unwrap().push((change.sequence, change.consecutive_failures));
    });
    fail(&breaker);
    fail(&breaker);
    tokio::time::advance(Duration::from_secs(5)).await;
    fail(&breaker);
    tokio::time::advance(Duration::from_secs(5)).await;
    succeed(&breaker);
    use BreakerState::*;
    assert_eq!(
        *changes.lock().unwrap(),
        [(Closed, Open), (Open, HalfOpen), (HalfOpen, Open), (Open, HalfOpen), (HalfOpen, Closed)]
    );
    assert_eq!(*sequences.lock().unwrap(), [(1, 2), (2, 2), (3, 3), (4, 3), (5, 0)]);
}

#[tokio::test(start_paused = true)]
async fn callbacks_may_call_back_into_the_breaker() {
    let breaker = CircuitBreaker::new("db", config(1, 5));
    let seen = Arc::new(Mutex::new(None));
    let (sink, handle) = (seen.clone(), breaker.clone());
    breaker.on_state_change(move |_| *sink.lock().unwrap() = Some(handle.snapshot().state));
    fail(&breaker);
    assert_eq!(*seen.lock().unwrap(), Some(BreakerState::Open));
}

#[test]
fn publishes_state_gauge_and_transition_counter() {
    let recorder = TestRecorder::default();
    metrics::with_local_recorder(&recorder, || {
        let breaker = CircuitBreaker::new("llm", config(1, 0));
        let gauge = "agentmesh_circuit_breaker_state{breaker=llm}";
        assert_eq!(recorder.gauge(gauge), Some(0.0));
        fail(&breaker);
        assert_eq!(recorder.gauge(gauge), Some(1.0));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(recorder.gauge(gauge), Some(2.0));
        fail(&breaker);
        breaker.state();
        succeed(&breaker);
        assert_eq!(recorder.gauge(gauge), Some(0.0));
        let counter = |from: &str, to: &str| {
            recorder
                .counter(&format!("agentmesh_circuit_breaker_state_changes_total{{breaker=llm,from={from},to={to}}}"))
        };
        assert_eq!(counter("closed", "open"), 1);
        assert_eq!(counter("open", "half_open"), 2);
        assert_eq!(counter("half_open", "open"), 1);
        assert_eq!(counter("half_open", "closed"), 1);
        assert_eq!(counter("closed", "half_open"), 0);
    });
}

fn guarded(mock: &Mock, breaker: &CircuitBreaker) -> CircuitBreakerService<crate::Lift<Mock>, GrpcStatusClassifier> {
    ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker.clone(), GrpcStatusClassifier))
        .layer(LiftLayer)
        .service(mock.clone())
}

#[tokio::test(start_paused = true)]
async fn layer_rejects_without_calling_the_client_once_open() {
    let breaker = CircuitBreaker::new("session-store", config(3, 10));
    let mock = Mock::failing(10, || tonic::Status::unavailable("down"));
    let service = guarded(&mock, &breaker);
    for _ in 0..3 {
        let error = service.clone().oneshot(1).await.unwrap_err();
        assert_eq!(error.into_inner().unwrap().code(), tonic::Code::Unavailable);
    }
    let error = service.clone().oneshot(1).await.unwrap_err();
    assert!(matches!(
        error,
        ResilienceError::CircuitOpen { ref name, retry_after }
            if name == "session-store" && retry_after == Duration::from_secs(10)
    ));
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn caller_errors_do_not_open_it() {
    let breaker = CircuitBreaker::new("session-store", config(2, 10));
    let mock = Mock::failing(20, || tonic::Status::not_found("no such session"));
    let service = guarded(&mock, &breaker);
    for _ in 0..20 {
        assert!(service.clone().oneshot(1).await.is_err());
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(breaker.snapshot().successes, 20);
    assert_eq!(mock.calls(), 20);
}

#[tokio::test(start_paused = true)]
async fn layer_future_dropped_mid_call_is_neutral() {
    let breaker = CircuitBreaker::new("db", config(1, 10));
    let mock = Mock::ok().with_delay(Duration::from_secs(5));
    let service = guarded(&mock, &breaker);
    let mut call = Box::pin(service.oneshot(1));
    assert!(futures::poll!(call.as_mut()).is_pending());
    drop(call);
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(breaker.snapshot().failures, 0);
}
