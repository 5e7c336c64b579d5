use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

use super::*;
use crate::classify::GrpcStatusClassifier;
use crate::lift::{Lift, LiftLayer};
use crate::testutil::{Mock, TestRecorder};
use tonic_types::{ErrorDetails, StatusExt};

fn policy(max_attempts: u32, base_ms: u64, max_ms: u64, jitter: bool) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(base_ms),
        max_delay: Duration::from_millis(max_ms),
        multiplier: 2.0,
        jitter,
    }
}

fn roomy_budget() -> RetryBudget {
    RetryBudget::new(RetryBudgetConfig { min_retries_per_sec: 1_000, ..RetryBudgetConfig::default() })
}

fn retrying(mock: &Mock, policy: RetryPolicy, budget: RetryBudget) -> RetryService<Lift<Mock>, GrpcStatusClassifier> {
    ServiceBuilder::new()
        .layer(RetryLayer::new("test", policy, budget, GrpcStatusClassifier))
        .layer(LiftLayer)
        .service(mock.clone())
}

fn unavailable() -> tonic::Status {
    tonic::Status::unavailable("restarting")
}

/// Gaps between consecutive calls.
fn gaps(mock: &Mock) -> Vec<Duration> {
    mock.starts().windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn succeeds_within_the_attempts() {
    let mock = Mock::failing(2, unavailable);
    let service = retrying(&mock, policy(3, 100, 1_000, false), roomy_budget());
    assert_eq!(service.oneshot(1).await.unwrap(), "ok");
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn stops_at_max_attempts_with_the_last_error() {
    let mock = Mock::script([
        Err(unavailable()),
        Err(tonic::Status::resource_exhausted("first")),
        Err(tonic::Status::aborted("last")),
    ]);
    let service = retrying(&mock, policy(3, 100, 1_000, false), roomy_budget());
    let error = service.oneshot(1).await.unwrap_err();
    assert_eq!(error.into_inner().unwrap().message(), "last");
    assert_eq!(mock.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn does_not_retry_non_retryable_failures() {
    for status in [
        tonic::Status::internal("bug"),
        tonic::Status::deadline_exceeded("spent"),
        tonic::Status::invalid_argument("caller"),
    ] {
        let mock = Mock::script([Err(status)]);
        let service = retrying(&mock, policy(5, 100, 1_000, false), roomy_budget());
        assert!(service.oneshot(1).await.is_err());
        assert_eq!(mock.calls(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn honours_the_server_retry_info() {
    let slow_down = || {
        tonic::Status::with_error_details(
            tonic::Code::Unavailable,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(3))),
        )
    };
    let mock = Mock::failing(1, slow_down);
    let service = retrying(&mock, policy(3, 10, 5_000, true), roomy_budget());
    let start = Instant::now();
    assert_eq!(service.oneshot(1).await.unwrap(), "ok");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(gaps(&mock), [Duration::from_secs(3)]);
}

#[tokio::test(start_paused = true)]
async fn gives_up_when_the_server_asks_for_longer_than_max_delay() {
    let slow_down = || {
        tonic::Status::with_error_details(
            tonic::Code::Unavailable,
            "come back in a minute",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(60))),
        )
    };
    let mock = Mock::failing(1, slow_down);
    let service = retrying(&mock, policy(3, 10, 5_000, false), roomy_budget());
    let start = Instant::now();
    assert!(service.oneshot(1).await.is_err());
    assert_eq!(mock.calls(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_and_caps_at_max_delay() {
    let mock = Mock::failing(5, unavailable);
    let service = retrying(&mock, policy(6, 100, 500, false), roomy_budget());
    assert_eq!(service.oneshot(1).await.unwrap(), "ok");
    let ms = Duration::from_millis;
    assert_eq!(gaps(&mock), [ms(100), ms(200), ms(400), ms(500), ms(500)]);
}

#[tokio::test(start_paused = true)]
async fn jittered_delays_stay_within_the_ceiling() {
    let retry_policy = policy(6, 100, 500, true);
    let mock = Mock::failing(5, unavailable);
    let service = retrying(&mock, retry_policy.clone(), roomy_budget());
    assert_eq!(service.oneshot(1).await.unwrap(), "ok");
    for (retry, gap) in (1..).zip(gaps(&mock)) {
        assert!(gap <= retry_policy.backoff(retry), "retry {retry} waited {gap:?}");
    }
    let draws: Vec<Duration> = (0..200).filter_map(|_| retry_policy.delay(3, None)).collect();
    assert!(draws.iter().all(|d| *d <= Duration::from_millis(400)));
    assert!(draws.iter().any(|d| *d < Duration::from_millis(200)), "full jitter reaches well below the ceiling");
}

#[test]
fn backoff_formula() {
    let policy = RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(500),
        max_delay: Duration::from_secs(30),
        multiplier: 1.5,
        jitter: false,
    };
    let ms = Duration::from_millis;
    assert_eq!(
        (1..=4).map(|n| policy.backoff(n)).collect::<Vec<_>>(),
        [ms(500), ms(750), ms(1125), ms(1687) + Duration::from_micros(500)]
    );
    assert_eq!(policy.backoff(1_000), Duration::from_secs(30), "huge exponents cap");
    assert_eq!(policy.delay(1, Some(ms(2))), Some(ms(2)));
    assert_eq!(policy.delay(1, Some(Duration::from_secs(31))), None);
}

#[tokio::test(start_paused = true)]
async fn budget_bounds_retries_under_sustained_failure() {
    let mock = Mock::failing_forever(unavailable);
    let budget =
        RetryBudget::new(RetryBudgetConfig { ttl: Duration::from_secs(10), min_retries_per_sec: 1, retry_ratio: 0.2 });
    let service = retrying(&mock, policy(3, 1, 1, false), budget);
    for _ in 0..100 {
        assert!(service.clone().oneshot(1).await.is_err());
    }
    let retries = mock.calls() - 100;
    assert!((25..=30).contains(&retries), "{retries} retries; the budget allows 10 + 0.2 × 100 = 30, without it 200");
}

#[tokio::test(start_paused = true)]
async fn counts_retries_in_metrics() {
    let recorder = TestRecorder::default();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let mock = Mock::failing(2, unavailable);
    let budget = RetryBudget::new(RetryBudgetConfig {
        min_retries_per_sec: 0,
        retry_ratio: 1.0,
        ..RetryBudgetConfig::default()
    });
    let service = retrying(&mock, policy(5, 1, 1, false), budget);
    assert!(service.oneshot(1).await.is_err(), "one deposit at ratio 1 buys one retry");
    assert_eq!(mock.calls(), 2);
    assert_eq!(recorder.counter("agentmesh_retries_total{client=test}"), 1);
    assert_eq!(recorder.counter("agentmesh_retry_budget_exhausted_total{client=test}"), 1);
}

#[tokio::test(start_paused = true)]
async fn run_retries_plain_closures() {
    let mock = Mock::failing(1, unavailable);
    let result = run(&policy(2, 5, 5, false), &roomy_budget(), &Arc::from("plain"), &GrpcStatusClassifier, || {
        let mock = mock.clone();
        async move { mock.invoke().await.map_err(ResilienceError::Inner) }
    })
    .await;
    assert_eq!(result.unwrap(), "ok");
    assert_eq!(mock.calls(), 2);
}

#[test]
fn validation_names_the_field() {
    let bad = RetryPolicy { multiplier: 0.5, ..RetryPolicy::default() };
    assert_eq!(bad.validate().unwrap_err().field, "retry.multiplier");
    let bad =
        RetryPolicy { base_delay: Duration::from_secs(2), max_delay: Duration::from_secs(1), ..RetryPolicy::default() };
    assert_eq!(bad.validate().unwrap_err().field, "retry.base_delay");
}
