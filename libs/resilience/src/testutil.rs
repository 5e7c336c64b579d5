//! Test doubles shared by the unit tests: a scripted client that counts its calls, and a
//! metrics recorder that keeps what was recorded so tests can read it back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use metrics::{Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tokio::time::Instant;
use tower::Service;

/// A client answering from a script, then `Ok("ok")` (or a fixed failure) forever, each
/// answer after an optional delay.
#[derive(Clone, Default)]
pub(crate) struct Mock {
    state: Arc<Mutex<MockState>>,
}

#[derive(Default)]
struct MockState {
    script: VecDeque<Result<&'static str, tonic::Status>>,
    /// Answer once the script is used up; `None` answers `Ok("ok")`.
    then: Option<fn() -> tonic::Status>,
    delay: Duration,
    starts: Vec<Instant>,
    in_flight: usize,
}

/// Decrements the in-flight count when a call ends or is dropped.
struct InFlight(Arc<Mutex<MockState>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lock().unwrap().in_flight -= 1;
    }
}

impl Mock {
    pub(crate) fn ok() -> Self {
        Self::default()
    }

    pub(crate) fn script(results: impl IntoIterator<Item = Result<&'static str, tonic::Status>>) -> Self {
        let mock = Self::default();
        mock.state.lock().unwrap().script = results.into_iter().collect();
        mock
    }

    /// Fails `n` times with `status()`, then succeeds.
    pub(crate) fn failing(n: usize, status: fn() -> tonic::Status) -> Self {
        Self::script((0..n).map(|_| Err(status())))
    }

    /// Fails with `status()` on every call.
    pub(crate) fn failing_forever(status: fn() -> tonic::Status) -> Self {
        let mock = Self::default();
        mock.state.lock().unwrap().then = Some(status);
        mock
    }

    pub(crate) fn with_delay(self, delay: Duration) -> Self {
        self.state.lock().unwrap().delay = delay;
        self
    }

    pub(crate) fn calls(&self) -> usize {
        self.state.lock().unwrap().starts.len()
    }

    pub(crate) fn starts(&self) -> Vec<Instant> {
        self.state.lock().unwrap().starts.clone()
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.state.lock().unwrap().in_flight
    }

    /// The next scripted result, as a plain async call for `Resilience::call` tests.
    pub(crate) async fn invoke(&self) -> Result<&'static str, tonic::Status> {
        let (result, delay, guard) = {
            let mut state = self.state.lock().unwrap();
            state.starts.push(Instant::now());
            state.in_flight += 1;
            let then = state.then;
            let result = state.script.pop_front().unwrap_or_else(|| then.map_or(Ok("ok"), |status| Err(status())));
            (result, state.delay, InFlight(self.state.clone()))
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        drop(guard);
        result
    }
}

impl Service<u32> for Mock {
    type Response = &'static str;
    type Error = tonic::Status;
    type Future = BoxFuture<'static, Result<&'static str, tonic::Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: u32) -> Self::Future {
        let mock = self.clone();
        Box::pin(async move { mock.invoke().await })
    }
}

/// Keeps counters and gauges by `name{label=value,...}` (labels in recorded order).
#[derive(Clone, Default)]
pub(crate) struct TestRecorder {
    values: Arc<Mutex<BTreeMap<String, Arc<AtomicU64>>>>,
}

impl TestRecorder {
    fn slot(&self, key: &Key) -> Arc<AtomicU64> {
        let labels: Vec<String> = key.labels().map(|label| format!("{}={}", label.key(), label.value())).collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.values.lock().unwrap().entry(name).or_default().clone()
    }

    /// A counter's value, 0 if never recorded.
    pub(crate) fn counter(&self, name: &str) -> u64 {
        self.values.lock().unwrap().get(name).map_or(0, |value| value.load(Ordering::SeqCst))
    }

    /// A gauge's value, if ever set.
    pub(crate) fn gauge(&self, name: &str) -> Option<f64> {
        self.values.lock().unwrap().get(name).map(|value| f64::from_bits(value.load(Ordering::SeqCst)))
    }
}

struct Slot(Arc<AtomicU64>);

impl CounterFn for Slot {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl GaugeFn for Slot {
    fn increment(&self, value: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::SeqCst)) + value);
    }
    fn decrement(&self, value: f64) {
        self.set(f64::from_bits(self.0.load(Ordering::SeqCst)) - value);
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::SeqCst);
    }
}

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(Arc::new(Slot(self.slot(key))))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(Arc::new(Slot(self.slot(key))))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
