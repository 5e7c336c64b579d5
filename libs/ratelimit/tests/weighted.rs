//! Weighted costs on both backends: the memory limiter (with tokio's paused clock where
//! time matters) and the Redis limiter against a real Redis, each test under its own key
//! prefix, deleted when it ends. The same scenarios run on both, so the two backends are
//! held to one behaviour; the Redis ones use a day-long window so that the milliseconds a
//! test takes never refill a unit (one unit of 1,000 per day is 86.4 s).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use agentmesh_ratelimit::{
    Decision, Limit, MemoryRateLimiter, RateLimitError, RateLimiter, RedisRateLimiter, RedisRateLimiterOptions,
};
use agentmesh_testkit::redis::RedisPrefix;
use agentmesh_testkit::{Service, require, unique_name};

/// 1,000 units (tokens) a day.
const DAILY: Limit = Limit::new(1_000, Duration::from_secs(86_400));

async fn spend(limiter: &dyn RateLimiter, key: &str, cost: u32) -> Decision {
    limiter.check_cost(key, DAILY, cost).await.unwrap()
}

/// A budget of N admits costs summing to N, refuses the next, and says how long to wait.
async fn budget_admits_costs_summing_to_it(limiter: &dyn RateLimiter) {
    let first = spend(limiter, "tenant-a", 400).await;
    assert_eq!((first.allowed, first.limit, first.remaining), (true, 1_000, 600));
    let second = spend(limiter, "tenant-a", 600).await;
    assert_eq!((second.allowed, second.remaining), (true, 0));

    let refused = spend(limiter, "tenant-a", 1).await;
    assert_eq!((refused.allowed, refused.remaining), (false, 0));
    let unit = Duration::from_millis(86_400);
    let retry_after = refused.retry_after.unwrap();
    assert!(retry_after <= unit && retry_after > unit - Duration::from_secs(10), "{retry_after:?}");
    let bigger = spend(limiter, "tenant-a", 10).await;
    assert!(!bigger.allowed);
    assert!(bigger.retry_after.unwrap() > unit * 9, "a bigger cost waits for more budget: {bigger:?}");
    // A refusal spent nothing, and another key has its own budget.
    assert_eq!(spend(limiter, "tenant-a", 0).await.remaining, 0);
    assert_eq!(spend(limiter, "tenant-b", 1_000).await.remaining, 0);
}

/// Refunds give budget back (never beyond a full bucket); `settle` debits or refunds the
/// difference between an estimate and the actual usage.
async fn refunds_and_settling_restore_budget(limiter: &dyn RateLimiter) {
    assert!(spend(limiter, "k", 1_000).await.allowed);
    let refunded = limiter.adjust("k", DAILY, -250).await.unwrap();
    assert_eq!((refunded.allowed, refunded.remaining), (true, 250));
    assert!(spend(limiter, "k", 250).await.allowed);
    assert!(!spend(limiter, "k", 1).await.allowed);

    let full = limiter.adjust("k", DAILY, -5_000).await.unwrap();
    assert_eq!(full.remaining, 1_000, "a refund never leaves more than the quota");

    // Estimate 300 before the call, 120 used: 180 come back.
    assert_eq!(spend(limiter, "k", 300).await.remaining, 700);
    let settled = limiter.settle("k", DAILY, 300, 120).await.unwrap().unwrap();
    assert_eq!(settled.remaining, 880);
    assert_eq!(limiter.settle("k", DAILY, 50, 50).await.unwrap(), None, "nothing to settle");
    // Estimate 100, 2,000 used: the debit overdraws; every check is refused meanwhile.
    assert!(spend(limiter, "k", 100).await.allowed);
    let overdrawn = limiter.settle("k", DAILY, 100, 2_000).await.unwrap().unwrap();
    assert_eq!((overdrawn.allowed, overdrawn.remaining), (true, 0));
    assert!(overdrawn.reset_after > DAILY.window, "in debt beyond a window: {overdrawn:?}");
    let refused = spend(limiter, "k", 0).await;
    assert!(!refused.allowed, "a zero-cost check reports the debt");
    assert!(!spend(limiter, "k", 1).await.allowed);
}

/// A cost above the whole budget is an error, never a wait, and spends nothing.
async fn costs_above_the_budget_are_errors(limiter: &dyn RateLimiter) {
    let error = limiter.check_cost("k", DAILY, 1_001).await.unwrap_err();
    assert_eq!(error, RateLimitError::CostExceedsLimit { cost: 1_001, quota: 1_000 });
    assert_eq!(error.to_string(), "cost 1001 exceeds the whole budget of 1000 per window and can never be admitted");
    assert_eq!(spend(limiter, "k", 1_000).await.remaining, 0, "the refused cost spent nothing");
    // A zero quota refuses everything, whatever the cost.
    let none = limiter.check_cost("k", Limit::new(0, DAILY.window), 5).await.unwrap();
    assert!(!none.allowed);
}

#[tokio::test(start_paused = true)]
async fn memory_budget_admits_costs_summing_to_it() {
    budget_admits_costs_summing_to_it(&MemoryRateLimiter::new()).await;
}

#[tokio::test(start_paused = true)]
async fn memory_refunds_and_settling_restore_budget() {
    refunds_and_settling_restore_budget(&MemoryRateLimiter::new()).await;
}

#[tokio::test(start_paused = true)]
async fn memory_costs_above_the_budget_are_errors() {
    costs_above_the_budget_are_errors(&MemoryRateLimiter::new()).await;
}

/// Tokens per minute: the budget refills continuously, and an overdraft drains first.
#[tokio::test(start_paused = true)]
async fn memory_budget_refills_over_time_and_debt_drains_first() {
    let limiter = MemoryRateLimiter::new();
    let tpm = Limit::per_minute(50_000);
    assert!(limiter.check_cost("k", tpm, 50_000).await.unwrap().allowed);
    let refused = limiter.check_cost("k", tpm, 20_000).await.unwrap();
    assert_eq!(refused.retry_after, Some(Duration::from_secs(24)), "20,000 of 50,000 per minute");

    tokio::time::advance(Duration::from_secs(24) - Duration::from_millis(1)).await;
    assert!(!limiter.check_cost("k", tpm, 20_000).await.unwrap().allowed);
    tokio::time::advance(Duration::from_millis(1)).await;
    let admitted = limiter.check_cost("k", tpm, 20_000).await.unwrap();
    assert_eq!((admitted.allowed, admitted.remaining), (true, 0));

    // 200,000 used against an estimate of 1: two windows of debt at most, then it drains.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(limiter.check_cost("k", tpm, 1).await.unwrap().allowed);
    limiter.settle("k", tpm, 1, 200_000).await.unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(!limiter.check_cost("k", tpm, 1).await.unwrap().allowed, "still a window of debt");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(limiter.check_cost("k", tpm, 0).await.unwrap().remaining, 25_000);
}

/// Redis URL, a fresh prefix, its guard and a limiter on it; `None` (skip) without Redis.
async fn redis(name: &str) -> Option<(String, String, RedisPrefix, RedisRateLimiter)> {
    let url = require(Service::Redis).await?;
    let prefix = format!("{}:", unique_name(name));
    let guard = RedisPrefix::new(url.clone(), prefix.clone());
    let limiter = RedisRateLimiter::connect(&url, options(&prefix)).await.unwrap();
    Some((url, prefix, guard, limiter))
}

/// A timeout generous enough that a loaded machine never fails a call open (each test
/// asserts none did).
fn options(prefix: &str) -> RedisRateLimiterOptions {
    RedisRateLimiterOptions { prefix: prefix.to_owned(), timeout: Duration::from_secs(5), ..Default::default() }
}

#[tokio::test]
async fn redis_budget_admits_costs_summing_to_it() {
    let Some((_url, prefix, guard, limiter)) = redis("ratelimit_weighted_budget").await else { return };
    budget_admits_costs_summing_to_it(&limiter).await;
    assert_eq!(limiter.backend_errors(), 0);
    let mut keys = guard.keys_with_ttl().await.unwrap();
    keys.sort();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0].0, format!("{prefix}tenant-a"));
    assert!(keys[0].1 > 86_000_000 && keys[0].1 <= 86_400_000, "expires when idle: {keys:?}");
}

#[tokio::test]
async fn redis_refunds_and_settling_restore_budget() {
    let Some((_url, _prefix, guard, limiter)) = redis("ratelimit_weighted_refund").await else { return };
    refunds_and_settling_restore_budget(&limiter).await;
    assert_eq!(limiter.backend_errors(), 0);
    // A refund to idle deletes the key rather than leaving an idle one behind.
    limiter.adjust("k", DAILY, -1_000_000).await.unwrap();
    assert!(guard.keys_with_ttl().await.unwrap().is_empty());
}

#[tokio::test]
async fn redis_costs_above_the_budget_are_errors() {
    let Some((_url, _prefix, _guard, limiter)) = redis("ratelimit_weighted_error").await else { return };
    costs_above_the_budget_are_errors(&limiter).await;
    assert_eq!(limiter.backend_errors(), 0);
}

/// Two limiter instances (two replicas, each with its own pool) sharing Redis enforce one
/// combined budget, in turn and concurrently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_enforce_one_combined_budget() {
    let Some((url, prefix, _guard, first)) = redis("ratelimit_weighted_replicas").await else { return };
    let second = RedisRateLimiter::connect(&url, options(&prefix)).await.unwrap();
    let replicas = [Arc::new(first), Arc::new(second)];

    // In turn: ten costs of 100 from alternating replicas spend the one budget.
    for (i, remaining) in (0..10).rev().enumerate() {
        let decision = replicas[i % 2].check_cost("in-turn", DAILY, 100).await.unwrap();
        assert_eq!((decision.allowed, decision.remaining), (true, remaining * 100));
    }
    assert!(!replicas[0].check_cost("in-turn", DAILY, 1).await.unwrap().allowed);
    assert!(!replicas[1].check_cost("in-turn", DAILY, 1).await.unwrap().allowed);
    // A refund through one replica is budget for the other.
    replicas[0].adjust("in-turn", DAILY, -100).await.unwrap();
    assert!(replicas[1].check_cost("in-turn", DAILY, 100).await.unwrap().allowed);

    // Concurrently: 60 costs of 37 against 1,000 admit exactly ⌊1000 / 37⌋ = 27.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let replica = Arc::clone(&replicas[i % 2]);
        tasks.spawn(async move { replica.check_cost("concurrent", DAILY, 37).await.unwrap().allowed });
    }
    let admitted = tasks.join_all().await.into_iter().filter(|&allowed| allowed).count();
    assert_eq!(admitted, 27);
    assert_eq!(replicas.iter().map(|replica| replica.backend_errors()).sum::<u64>(), 0, "none failed open");
}

/// Redis unreachable: weighted checks and adjustments fail open, reported as an idle key
/// would be, and are counted; a cost above the budget is still an error (no Redis needed).
#[tokio::test]
async fn weighted_calls_fail_open_when_redis_is_unreachable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let options = RedisRateLimiterOptions {
        prefix: "agentmesh:ratelimit:unreachable:".to_owned(),
        connect_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let limiter = RedisRateLimiter::connect(&format!("redis://127.0.0.1:{port}"), options).await.unwrap();

    let decision = limiter.check_cost("k", DAILY, 400).await.unwrap();
    assert_eq!((decision.allowed, decision.remaining), (true, 600));
    let adjusted = limiter.adjust("k", DAILY, 2_000).await.unwrap();
    assert!(adjusted.allowed);
    assert_eq!(limiter.backend_errors(), 2);
    let error = limiter.check_cost("k", DAILY, 1_001).await.unwrap_err();
    assert_eq!(error, RateLimitError::CostExceedsLimit { cost: 1_001, quota: 1_000 });
    assert_eq!(limiter.backend_errors(), 2, "refused before Redis is asked");
}
