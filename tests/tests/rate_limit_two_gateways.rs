//! The gateway issue's acceptance test for shared rate limits: "two gateway instances
//! sharing Redis enforce one combined limit within ±5 %", with the real binaries.
//!
//! One `agentmesh-session-store` and two `agentmesh-gateway` processes run with
//! `USE_REDIS=true` against the test Redis (`AGENTMESH_TEST_REDIS_URL`, default
//! `127.0.0.1:6379`) under a key prefix of their own (`RATE_LIMIT_REDIS_PREFIX`, unique per
//! run, so parallel tests and runs never share state). One premium API key with a limit of
//! [`LIMIT`] per minute sends [`REQUESTS`] `GET /api/v1/sessions`, every worker alternating
//! between the two gateways, [`IN_FLIGHT`] requests in flight at a time.
//!
//! # What is expected, exactly
//!
//! GCRA with burst = limit admits exactly `L` requests of a burst from an idle key and then
//! one more per emission interval `I = 60 s / L` (300 ms here) while the pressure lasts. With
//! `t0` the Redis time of the key's first check, the total admitted is exactly
//! `L + ⌊(t − t0) / I⌋` at the time `t` of any refused check (a refusal means the quota is
//! used up to that instant), and never more than that at any later check. The test does
//! not see Redis's clock, but brackets it with its own: `t0` lies between the first send and
//! the first response; the last refused check comes after that request was sent; the last
//! check comes before the last response. So the admitted total must lie in
//! `[L + ⌊D_lo / I⌋, L + ⌊D_hi / I⌋]` (`D_lo` = last refused send − first response,
//! `D_hi` = last response − first send): the refill during the test is accounted for from
//! the measured times, not absorbed into the tolerance. The issue's ±5 % is then checked
//! against the allowance `L + D / I` for the midpoint `D` of that bracket; it can only miss
//! if the measurement itself is vaguer than ±5 % (a bracket wider than ~5 s, i.e. requests
//! stalled for seconds), and the message then shows the numbers.
//!
//! # Determinism on a loaded machine
//!
//! A check that waits for Redis longer than `RATE_LIMIT_REDIS_TIMEOUT` fails open: the
//! request is admitted without being counted. With the production 50 ms, a 2-core CI
//! machine running the whole workspace's tests could time out a few checks and the test
//! would over-admit at random. The gateways here get 1 s, which only a stuck Redis exceeds,
//! and the test asserts that neither gateway failed a check open
//! (`agentmesh_ratelimit_backend_errors_total` absent from both `/metrics`), so an
//! over-admission is never blamed on the shared limit. Nothing asserts a latency; the
//! load has a fixed size and is bounded by [`LOAD_TIMEOUT`], each request by
//! [`REQUEST_TIMEOUT`].
//!
//! # Cleanup
//!
//! The test's keys are deleted when it ends, pass or fail, by `SCAN MATCH <prefix>*` and
//! `DEL` (never `KEYS`, which blocks a shared Redis). Should that fail, nothing lingers for
//! long: every key carries a TTL of its time to idle, at most one minute here (asserted).
//! Finding the key under the test's prefix also proves the gateways honour
//! `RATE_LIMIT_REDIS_PREFIX`: binaries built from a tree without it would share the
//! production prefix with every other run and measure nothing meaningful.
//!
//! Without Redis the test is skipped with a one-line reason; under
//! `AGENTMESH_REQUIRE_SERVICES=1` it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentmesh_e2e::{Process, free_port, wait_serving};
use agentmesh_testkit::redis::RedisPrefix;
use agentmesh_testkit::{Service, require, unique_name};
use reqwest::{Client, StatusCode};
use serde_json::Value;

/// The premium tier's limit, requests per minute (`RATE_LIMIT_API_PREMIUM_LIMIT`).
const LIMIT: u32 = 200;
/// Requests sent in all, half through each gateway.
const REQUESTS: usize = 600;
/// Requests in flight at once, over both gateways.
const IN_FLIGHT: usize = 16;
/// GCRA emission interval of [`LIMIT`], whole microseconds as the gateway computes it:
/// 60 s / 200 = 300 ms.
const INTERVAL: Duration = Duration::from_micros(60_000_000 / LIMIT as u64);
/// The tolerance.
const TOLERANCE: f64 = 0.05;
/// Bound on the whole load.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A static development key (`SECURITY_API_KEYS`); its principal is the one limited key.
const API_KEY: &str = "sk-e2e-ratelimit-0123456789abcdefghijklmnopqrstuv";
const PATH: &str = "/api/v1/sessions";

/// One request as the client saw it; times are since the load started.
struct Sample {
    gateway: usize,
    sent: Duration,
    received: Duration,
    admitted: bool,
}

/// Sends one request to `base` and checks the response's shape: 200 with a JSON array, or
/// 429 with `Retry-After` and the seed's `rate_limit_error` body. Both carry the limit.
async fn send(http: &Client, base: &str) -> Result<bool, String> {
    let response = http.get(format!("{base}{PATH}")).bearer_auth(API_KEY).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (limit, retry_after) = (header("x-ratelimit-limit"), header("retry-after"));
    let body: Value = response.json().await.map_err(|e| format!("{status}: body is not JSON: {e}"))?;
    if limit.as_deref() != Some(&LIMIT.to_string()) {
        return Err(format!("{status}: X-RateLimit-Limit {limit:?}, expected {LIMIT}"));
    }
    match status {
        StatusCode::OK if body.is_array() => Ok(true),
        StatusCode::TOO_MANY_REQUESTS => {
            let seconds = retry_after.as_deref().and_then(|s| s.parse::<u64>().ok());
            if !matches!(seconds, Some(1..=60)) {
                return Err(format!("429 with Retry-After {retry_after:?}, expected 1 to 60 seconds"));
            }
            let shape = body["error"] == true
                && body["code"] == "rate_limit_error"
                && body["path"] == PATH
                && body["details"]["limit"] == LIMIT
                && body["details"]["retry_after"] == seconds.unwrap_or_default()
                && body["correlation_id"].is_string();
            if shape { Ok(false) } else { Err(format!("429 body is not the seed's rate_limit_error: {body}")) }
        }
        _ => Err(format!("unexpected {status}: {body}")),
    }
}

/// How many checks the gateway at `base` answered without Redis (failed open), from the
/// counter in its `/metrics` (absent until the first).
async fn failed_open(http: &Client, base: &str) -> u64 {
    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with("agentmesh_ratelimit_backend_errors_total"))
        .map(|line| line.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()).expect(line))
        .sum()
}

fn floor_intervals(span: Duration) -> u32 {
    u32::try_from(span.as_micros() / INTERVAL.as_micros()).unwrap()
}

#[tokio::test]
async fn two_gateways_sharing_redis_enforce_one_combined_limit() {
    let Some(redis_url) = require(Service::Redis).await else { return };
    let prefix = format!("{}:", unique_name("e2e_ratelimit"));
    let keys = RedisPrefix::new(redis_url.clone(), prefix.clone());

    let store_port = free_port().unwrap();
    let mut store = Process::spawn(
        "agentmesh-session-store",
        &[],
        &[("SESSION_STORE_ADDR", format!("127.0.0.1:{store_port}")), ("OBSERVABILITY_LOG_LEVEL", "WARNING".to_owned())],
    )
    .unwrap();
    wait_serving(&mut store, store_port).await.unwrap();

    let mut gateways = Vec::new();
    for _ in 0..2 {
        let port = free_port().unwrap();
        let env = [
            ("GATEWAY_ADDR", format!("127.0.0.1:{port}")),
            ("SESSION_STORE_URL", format!("http://127.0.0.1:{store_port}")),
            ("USE_REDIS", "true".to_owned()),
            ("REDIS_URL", redis_url.clone()),
            ("RATE_LIMIT_REDIS_PREFIX", prefix.clone()),
            ("RATE_LIMIT_REDIS_TIMEOUT", "1".to_owned()),
            ("RATE_LIMIT_API_PREMIUM_LIMIT", LIMIT.to_string()),
            ("SECURITY_API_KEYS", format!("{API_KEY}=ratelimit-e2e:premium")),
            ("OBSERVABILITY_LOG_LEVEL", "WARNING".to_owned()),
        ];
        let mut process = Process::spawn("agentmesh-gateway", &[], &env).unwrap();
        // gRPC health, which no rate limit applies to: the key is untouched until the load.
        wait_serving(&mut process, port).await.unwrap();
        gateways.push((format!("http://127.0.0.1:{port}"), process));
    }
    let bases: Arc<[String]> = gateways.iter().map(|(base, _)| base.clone()).collect();

    let http = Client::builder().timeout(REQUEST_TIMEOUT).build().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..IN_FLIGHT).map(|_| {
        let (http, bases, next) = (http.clone(), bases.clone(), next.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= REQUESTS {
                    return Ok::<_, String>(samples);
                }
                let gateway = n % 2;
                let sent = started.elapsed();
                let admitted = send(&http, &bases[gateway]).await.map_err(|e| format!("gateway {gateway}: {e}"))?;
                samples.push(Sample { gateway, sent, received: started.elapsed(), admitted });
            }
        })
    });
    let results = tokio::time::timeout(LOAD_TIMEOUT, futures::future::join_all(workers))
        .await
        .unwrap_or_else(|_| panic!("{REQUESTS} requests did not finish within {LOAD_TIMEOUT:?}"));
    let mut samples = Vec::new();
    for result in results {
        match result.unwrap() {
            Ok(mut worker) => samples.append(&mut worker),
            Err(error) => {
                for (base, process) in &mut gateways {
                    process.check_alive().await.unwrap_or_else(|e| panic!("{base}: {e}"));
                }
                panic!("{error}");
            }
        }
    }
    assert_eq!(samples.len(), REQUESTS);

    for (base, _) in &gateways {
        assert_eq!(failed_open(&http, base).await, 0, "{base} failed rate-limit checks open: results are void");
    }
    // The state is where the test looks for it: under its own prefix (a gateway binary
    // built without RATE_LIMIT_REDIS_PREFIX would use the production prefix instead), with
    // a TTL that removes it within a minute should the cleanup not run.
    let stored = keys.keys_with_ttl().await.unwrap();
    assert!(
        !stored.is_empty(),
        "no rate-limit key under {prefix}: the gateways ignore RATE_LIMIT_REDIS_PREFIX \
         (stale binaries? run `cargo build --workspace --bins`)"
    );
    for (key, ttl) in &stored {
        assert!((1..=60_000).contains(ttl), "{key} has TTL {ttl} ms, expected at most the 60 s window");
    }

    let admitted_by = |gateway: usize| samples.iter().filter(|s| s.gateway == gateway && s.admitted).count();
    let refused_by = |gateway: usize| samples.iter().filter(|s| s.gateway == gateway && !s.admitted).count();
    let admitted = u32::try_from(admitted_by(0) + admitted_by(1)).unwrap();
    let first_response = samples.iter().map(|s| s.received).min().unwrap();
    let last_response = samples.iter().map(|s| s.received).max().unwrap();
    let last_refused_send = samples.iter().filter(|s| !s.admitted).map(|s| s.sent).max().unwrap_or_default();
    let span_lo = last_refused_send.saturating_sub(first_response);
    let span_hi = last_response;
    let (lowest, highest) = (LIMIT + floor_intervals(span_lo), LIMIT + floor_intervals(span_hi));
    let span_mid = (span_lo + span_hi) / 2;
    let allowance = f64::from(LIMIT) + span_mid.as_secs_f64() / INTERVAL.as_secs_f64();
    let deviation = (f64::from(admitted) - allowance) / allowance;
    println!(
        "limit {LIMIT}/min, {REQUESTS} requests in {span_hi:?}: admitted {admitted} \
         (gateway 0: {} admitted, {} refused; gateway 1: {} admitted, {} refused); \
         GCRA allows {lowest}..={highest} for the measured span {span_lo:?}..{span_hi:?}, \
         allowance {allowance:.1} at its midpoint, deviation {:+.2} %",
        admitted_by(0),
        refused_by(0),
        admitted_by(1),
        refused_by(1),
        deviation * 100.0,
    );

    for gateway in 0..2 {
        assert!(admitted_by(gateway) > 0, "gateway {gateway} admitted nothing: the limit was not shared");
        assert!(refused_by(gateway) > 0, "gateway {gateway} refused nothing: each gateway had its own limit");
    }
    assert!(
        (lowest..=highest).contains(&admitted),
        "admitted {admitted}, but one shared GCRA limit allows {lowest}..={highest} in the measured span"
    );
    assert!(
        deviation.abs() <= TOLERANCE,
        "admitted {admitted} is {:+.2} % from the allowance {allowance:.1} (±{} % allowed)",
        deviation * 100.0,
        TOLERANCE * 100.0
    );
}
