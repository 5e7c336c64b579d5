//! The Redis rate limiter against a real Redis: the same behaviour as the memory limiter,
//! one combined limit for two gateway replicas (the gateway issue's ±5 % acceptance), and
//! failing open within the timeout when Redis is unreachable.
//!
//! Every test uses its own key prefix and deletes its keys when it ends, pass or fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentmesh_gateway::ratelimit::{
    DEFAULT_TIMEOUT, Decision, Limit, RateLimiter, RedisRateLimiter, RedisRateLimiterOptions,
};
use agentmesh_testkit::redis::RedisPrefix;
use agentmesh_testkit::{Service, require, unique_name};

/// Redis URL and a fresh prefix with its guard; `None` (skip) without Redis.
async fn setup(name: &str) -> Option<(String, String, RedisPrefix)> {
    let url = require(Service::Redis).await?;
    let prefix = format!("{}:", unique_name(name));
    let guard = RedisPrefix::new(url.clone(), prefix.clone());
    Some((url, prefix, guard))
}

/// Options for tests that measure the algorithm: a timeout generous enough that a loaded
/// test machine never fails a check open (each test asserts none did).
fn options(prefix: &str) -> RedisRateLimiterOptions {
    RedisRateLimiterOptions { prefix: prefix.to_owned(), timeout: Duration::from_secs(5), ..Default::default() }
}

async fn limiter(url: &str, prefix: &str) -> RedisRateLimiter {
    RedisRateLimiter::connect(url, options(prefix)).await.unwrap()
}

async fn allowed_of(limiter: &RedisRateLimiter, key: &str, limit: Limit, count: u32) -> u32 {
    let mut allowed = 0;
    for _ in 0..count {
        allowed += u32::from(limiter.check(key, limit).await.unwrap().allowed);
    }
    allowed
}

#[tokio::test]
async fn exactly_the_limit_is_allowed_then_denied_with_retry_after() {
    let Some((url, prefix, guard)) = setup("ratelimit_exact").await else { return };
    let limiter = limiter(&url, &prefix).await;
    let limit = Limit::per_minute(10);
    for expected_remaining in (0..10).rev() {
        let decision = limiter.check("k", limit).await.unwrap();
        assert!(decision.allowed);
        assert_eq!((decision.limit, decision.remaining, decision.retry_after), (10, expected_remaining, None));
    }
    let denied = limiter.check("k", limit).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!((denied.limit, denied.remaining), (10, 0));
    // 60 s / 10 = 6 s after the first request, minus the (small) time the burst took.
    let retry_after = denied.retry_after.unwrap();
    assert!(retry_after > Duration::from_secs(5) && retry_after <= Duration::from_secs(6), "{retry_after:?}");
    assert_eq!(denied.retry_after_secs(), Some(6));
    assert!(denied.reset_after > Duration::from_secs(59) && denied.reset_after <= Duration::from_secs(60));

    // The key carries a TTL: it expires when it becomes idle, a minute from now.
    let keys = guard.keys_with_ttl().await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].0, format!("{prefix}k"));
    assert!(keys[0].1 > 55_000 && keys[0].1 <= 60_000, "{keys:?}");
    assert_eq!(limiter.backend_errors(), 0);
}

#[tokio::test]
async fn recovers_as_the_window_slides() {
    let Some((url, prefix, _guard)) = setup("ratelimit_slide").await else { return };
    let limiter = limiter(&url, &prefix).await;
    // 5 per second: one more every 200 ms once the burst is spent.
    let limit = Limit::new(5, Duration::from_secs(1));
    assert_eq!(allowed_of(&limiter, "k", limit, 8).await, 5);
    let denied = limiter.check("k", limit).await.unwrap();
    let retry_after = denied.retry_after.unwrap();
    assert!(retry_after <= Duration::from_millis(200), "{retry_after:?}");

    tokio::time::sleep(retry_after + Duration::from_millis(5)).await;
    let again = limiter.check("k", limit).await.unwrap();
    assert!(again.allowed, "one more after retry_after: {again:?}");

    // A full window later the whole burst is back.
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    assert_eq!(limiter.check("k", limit).await.unwrap().remaining, 4);
    assert_eq!(allowed_of(&limiter, "k", limit, 8).await, 4);
    assert_eq!(limiter.backend_errors(), 0);
}

#[tokio::test]
async fn keys_are_independent_and_expire_when_idle() {
    let Some((url, prefix, guard)) = setup("ratelimit_keys").await else { return };
    let limiter = limiter(&url, &prefix).await;
    let limit = Limit::new(3, Duration::from_millis(300));
    assert_eq!(allowed_of(&limiter, "a", limit, 5).await, 3);
    assert_eq!(allowed_of(&limiter, "b", limit, 5).await, 3);
    assert_eq!(limiter.check("c", limit).await.unwrap().remaining, 2);
    assert_eq!(guard.keys_with_ttl().await.unwrap().len(), 3);

    // Idle keys leave Redis by their TTL (the window at most).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(guard.keys_with_ttl().await.unwrap().is_empty());
    assert_eq!(limiter.backend_errors(), 0);
}

/// The gateway issue's acceptance: two gateway replicas — two limiters, each with its own
/// connection pool — sharing Redis enforce one combined limit within ±5 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_enforce_one_combined_limit() {
    let Some((url, prefix, _guard)) = setup("ratelimit_replicas").await else { return };
    let replicas = [Arc::new(limiter(&url, &prefix).await), Arc::new(limiter(&url, &prefix).await)];
    let limit = Limit::per_minute(200);
    let interval = Duration::from_millis(300); // 60 s / 200

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..600 {
        let replica = Arc::clone(&replicas[i % 2]);
        tasks.spawn(async move { replica.check("user:acme:alice", limit).await.unwrap() });
    }
    let decisions: Vec<Decision> = tasks.join_all().await;
    let elapsed = started.elapsed();

    assert_eq!(replicas.iter().map(|r| r.backend_errors()).sum::<u64>(), 0, "no check may have failed open");
    let allowed = decisions.iter().filter(|d| d.allowed).count() as u128;
    eprintln!("two replicas, 600 concurrent checks against 200/min: {allowed} allowed in {elapsed:?}");
    // GCRA bound over the burst's duration D: at least L (the first L always pass), at
    // most L + ⌊D / I⌋ (one more per emission interval that elapsed).
    let upper = 200 + elapsed.as_micros() / interval.as_micros();
    assert!((200..=upper).contains(&allowed), "allowed {allowed} in {elapsed:?}, bound [200, {upper}]");
    // And the acceptance: within ±5 % of 200 (holds for any burst under 3 s).
    assert!((190..=210).contains(&allowed), "allowed {allowed} in {elapsed:?}");
    // Every denial says when to retry; the tightest is about one interval.
    let denied: Vec<&Decision> = decisions.iter().filter(|d| !d.allowed).collect();
    assert_eq!(denied.len() as u128, 600 - allowed);
    assert!(denied.iter().all(|d| d.remaining == 0 && d.retry_after.is_some_and(|r| r <= interval)));
}

/// The same over a longer burst, where the quota refills meanwhile: 600 requests in six
/// concurrent waves 300 ms apart (one emission interval), alternating replicas. The bound
/// `L + ⌊D / I⌋` grows by one per interval and stays within ±5 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_stay_within_the_bound_while_the_quota_refills() {
    let Some((url, prefix, _guard)) = setup("ratelimit_waves").await else { return };
    let replicas = [Arc::new(limiter(&url, &prefix).await), Arc::new(limiter(&url, &prefix).await)];
    let limit = Limit::per_minute(200);
    let interval = Duration::from_millis(300);

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for wave in 0..6u32 {
        tokio::time::sleep_until((started + interval * wave).into()).await;
        for i in 0..100 {
            let replica = Arc::clone(&replicas[i % 2]);
            tasks.spawn(async move { replica.check("user:acme:bob", limit).await.unwrap().allowed });
        }
    }
    let allowed = tasks.join_all().await.into_iter().filter(|&ok| ok).count() as u128;
    let elapsed = started.elapsed();
    eprintln!("two replicas, 6 waves of 100 checks 300 ms apart against 200/min: {allowed} allowed in {elapsed:?}");

    assert_eq!(replicas.iter().map(|r| r.backend_errors()).sum::<u64>(), 0, "no check may have failed open");
    let upper = 200 + elapsed.as_micros() / interval.as_micros();
    assert!((200..=upper).contains(&allowed), "allowed {allowed} in {elapsed:?}, bound [200, {upper}]");
    assert!((190..=210).contains(&allowed), "allowed {allowed} in {elapsed:?}");
}

/// Both replicas see the same state whichever serves a request: alternating replicas count
/// down one quota.
#[tokio::test]
async fn replicas_share_one_quota_in_sequence() {
    let Some((url, prefix, _guard)) = setup("ratelimit_shared").await else { return };
    let replicas = [limiter(&url, &prefix).await, limiter(&url, &prefix).await];
    let limit = Limit::per_minute(6);
    for expected_remaining in (0..6).rev() {
        let decision = replicas[expected_remaining as usize % 2].check("k", limit).await.unwrap();
        assert_eq!((decision.allowed, decision.remaining), (true, expected_remaining));
    }
    assert!(!replicas[0].check("k", limit).await.unwrap().allowed);
    assert!(!replicas[1].check("k", limit).await.unwrap().allowed);
}

/// Redis unreachable: every check is allowed, within the timeout, and counted.
#[tokio::test]
async fn fails_open_within_the_timeout_when_redis_is_unreachable() {
    // A port nothing listens on: bind one, then close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let options = RedisRateLimiterOptions {
        prefix: "agentmesh:ratelimit:test:".to_owned(),
        connect_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    assert_eq!(options.timeout, DEFAULT_TIMEOUT);

    let started = Instant::now();
    let limiter = RedisRateLimiter::connect(&format!("redis://127.0.0.1:{port}"), options).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "connect waited {:?}", started.elapsed());

    let limit = Limit::per_minute(1);
    let slack = Duration::from_millis(200); // scheduling noise on a shared machine
    for i in 0..20 {
        let started = Instant::now();
        let decision = limiter.check("k", limit).await.unwrap();
        let took = started.elapsed();
        assert!(decision.allowed, "check {i} must fail open");
        assert_eq!((decision.limit, decision.remaining, decision.retry_after), (1, 0, None));
        assert!(took <= DEFAULT_TIMEOUT + slack, "check {i} took {took:?}");
    }
    assert_eq!(limiter.backend_errors(), 20);
    // After a few failures the breaker answers at once instead of waiting for the timeout.
    assert_eq!(limiter.breaker().state(), agentmesh_resilience::BreakerState::Open);
    let started = Instant::now();
    assert!(limiter.check("k", limit).await.unwrap().allowed);
    assert!(started.elapsed() < Duration::from_millis(10), "open breaker took {:?}", started.elapsed());
}
