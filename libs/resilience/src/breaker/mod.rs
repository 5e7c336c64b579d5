//! Circuit breaker: stops calling a peer that keeps failing, so callers fail fast instead
//! of piling onto a sick peer, and lets a few probes through after a cool-down to find
//! out whether it has recovered.
//!
//! Closed → Open after `failure_threshold` consecutive failures, or (windowed mode) when
//! the failure rate over the window reaches its threshold with enough calls. Open → HalfOpen
//! once `recovery_timeout` has passed. HalfOpen admits `half_open_max_calls` concurrent
//! probes; `success_threshold` probe successes close it, any probe failure reopens it.
//!
//! Each call holds a [`Permit`] and records its [`Outcome`] on it. A permit dropped without
//! a record (the caller's future was cancelled) is neutral: a caller giving up says nothing
//! about the peer, and a hung peer is caught by the timeout layer inside the breaker. A
//! permit only affects the state it was issued in, so a slow success from before the
//! breaker opened can never close it.

mod layer;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

pub use layer::{CircuitBreakerFuture, CircuitBreakerLayer, CircuitBreakerService};

use crate::classify::Outcome;
use crate::error::{ConfigError, check};
use crate::window::SlidingWindow;

/// Gauge of each breaker's state: 0 closed, 1 open, 2 half-open; label `breaker`.
pub const STATE_GAUGE: &str = "agentmesh_circuit_breaker_state";
/// Counter of state changes; labels `breaker`, `from` and `to`.
pub const STATE_CHANGES_COUNTER: &str = "agentmesh_circuit_breaker_state_changes_total";

/// The three states of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed,
    /// Calls are rejected until the recovery timeout passes.
    Open,
    /// A limited number of probe calls decide between Closed and Open.
    HalfOpen,
}

impl BreakerState {
    /// The seed's name for the state, as the REST API and events spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of [`STATE_GAUGE`] for this state.
    pub fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

/// Windowed mode: open when too large a share of recent calls failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureRate {
    /// Failure share in `(0, 1]` at or above which the breaker opens.
    pub threshold: f64,
    /// How far back calls are counted (to a tenth of the window).
    pub window: Duration,
    /// Fewer calls than this in the window never open the breaker.
    pub minimum_calls: u32,
}

/// How a breaker decides; plain data so configuration maps onto it directly.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive failures that open a closed breaker.
    pub failure_threshold: u32,
    /// Optional windowed mode, checked in addition to `failure_threshold`.
    pub failure_rate: Option<FailureRate>,
    /// How long an open breaker rejects before letting probes through.
    pub recovery_timeout: Duration,
    /// Probes allowed in flight at once while half-open.
    pub half_open_max_calls: u32,
    /// Probe successes needed to close again.
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    /// The seed's generic defaults: 5 failures, 60 s recovery, one probe.
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            failure_rate: None,
            recovery_timeout: Duration::from_secs(60),
            half_open_max_calls: 1,
            success_threshold: 1,
        }
    }
}

impl BreakerConfig {
    /// Rejects values the breaker cannot work with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(self.failure_threshold >= 1, "breaker.failure_threshold", "at least 1", self.failure_threshold)?;
        check(self.half_open_max_calls >= 1, "breaker.half_open_max_calls", "at least 1", self.half_open_max_calls)?;
        check(self.success_threshold >= 1, "breaker.success_threshold", "at least 1", self.success_threshold)?;
        if let Some(rate) = &self.failure_rate {
            check(
                rate.threshold > 0.0 && rate.threshold <= 1.0,
                "breaker.failure_rate.threshold",
                "in (0, 1]",
                rate.threshold,
            )?;
            check(!rate.window.is_zero(), "breaker.failure_rate.window", "positive", rate.window)?;
            check(rate.minimum_calls >= 1, "breaker.failure_rate.minimum_calls", "at least 1", rate.minimum_calls)?;
        }
        Ok(())
    }
}

/// One transition, as given to [`CircuitBreaker::on_state_change`] callbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// Name of the breaker.
    pub breaker: String,
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// Consecutive failures after the transition (reset to 0 on closing).
    pub consecutive_failures: u32,
    /// Increases by one per transition of this breaker, so consumers can order changes
    /// that raced on different threads.
    pub sequence: u64,
}

/// A breaker's state and counters, for health output (`ServiceHealth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSnapshot {
    /// Current state.
    pub state: BreakerState,
    /// Failures since the last success or closing.
    pub consecutive_failures: u32,
    /// Successful calls since creation.
    pub successes: u64,
    /// Failed calls since creation.
    pub failures: u64,
    /// Calls rejected without being tried since creation.
    pub rejected: u64,
    /// When the current state began (creation if it never changed), on the tokio clock.
    pub last_transition: Instant,
    /// The same moment on the wall clock, for display.
    pub last_transition_at: SystemTime,
}

/// Returned when the breaker refuses a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker {name} is open; retry after {retry_after:?}")]
pub struct BreakerOpen {
    /// Name of the breaker.
    pub name: String,
    /// Time until probes are allowed; zero when half-open with every probe slot taken
    /// (the probes in flight decide the state shortly).
    pub retry_after: Duration,
}

type Listener = Arc<dyn Fn(&StateChange) + Send + Sync>;

/// A shared circuit breaker for one target; clones share the same state.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

struct Shared {
    /// Label of every metric and event; shared, not copied, per call.
    name: Arc<str>,
    config: BreakerConfig,
    /// Every decision happens under this one lock, so state changes are totally ordered.
    core: Mutex<Core>,
    /// Called after each transition, outside `core`'s lock, so they may call back in.
    listeners: RwLock<Vec<Listener>>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// Creates a closed breaker and publishes its state gauge.
    pub fn new(name: impl Into<String>, config: BreakerConfig) -> Self {
        let name: Arc<str> = Arc::from(name.into());
        let window = config.failure_rate.map(|rate| SlidingWindow::new(rate.window));
        metrics::gauge!(STATE_GAUGE, "breaker" => name.clone()).set(BreakerState::Closed.gauge_value());
        Self {
            shared: Arc::new(Shared {
                name,
                config,
                core: Mutex::new(Core {
                    phase: Phase::Closed,
                    epoch: 0,
                    consecutive_failures: 0,
                    successes: 0,
                    failures: 0,
                    rejected: 0,
                    window,
                    last_transition: Instant::now(),
                    last_transition_at: SystemTime::now(),
                }),
                listeners: RwLock::new(Vec::new()),
            }),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The breaker's configuration.
    pub fn config(&self) -> &BreakerConfig {
        &self.shared.config
    }

    /// The current state (an open breaker whose recovery timeout has passed is half-open).
    pub fn state(&self) -> BreakerState {
        self.locked(|core, now, config| {
            let transition = core.tick(now, config);
            (core.phase.state(), transition)
        })
    }

    /// State and counters for health output.
    pub fn snapshot(&self) -> BreakerSnapshot {
        self.locked(|core, now, config| {
            let transition = core.tick(now, config);
            (core.snapshot(), transition)
        })
    }

    /// Registers a callback run after every transition (to publish a domain event).
    /// It runs on the thread that caused the transition, after the breaker's lock is
    /// released; keep it short (send on a channel rather than do I/O).
    pub fn on_state_change(&self, callback: impl Fn(&StateChange) + Send + Sync + 'static) {
        self.shared.listeners.write().unwrap_or_else(PoisonError::into_inner).push(Arc::new(callback));
    }

    /// Asks to make one call: a permit to record its outcome on, or a fast rejection.
    pub fn try_acquire(&self) -> Result<Permit, BreakerOpen> {
        match self.locked(|core, now, config| core.acquire(now, config)) {
            Ok(epoch) => Ok(Permit { breaker: self.clone(), epoch, outcome: Outcome::Neutral }),
            Err(retry_after) => Err(BreakerOpen { name: self.name().to_owned(), retry_after }),
        }
    }

    fn record(&self, epoch: u64, outcome: Outcome) {
        self.locked(|core, now, config| ((), core.record(epoch, outcome, now, config)));
    }

    /// Runs `op` under the lock, publishes any transition's metrics before unlocking (so
    /// the gauge follows transitions in order) and calls listeners after.
    fn locked<R>(&self, op: impl FnOnce(&mut Core, Instant, &BreakerConfig) -> (R, Option<Transition>)) -> R {
        let (result, change) = {
            let mut core = self.shared.core.lock().unwrap_or_else(PoisonError::into_inner);
            let (result, transition) = op(&mut core, Instant::now(), &self.shared.config);
            let change = transition.map(|t| StateChange {
                breaker: self.name().to_owned(),
                from: t.from,
                to: t.to,
                consecutive_failures: t.consecutive_failures,
                sequence: t.sequence,
            });
            if let Some(change) = &change {
                self.publish(change);
            }
            (result, change)
        };
        if let Some(change) = change {
            let listeners = self.shared.listeners.read().unwrap_or_else(PoisonError::into_inner).clone();
            for listener in listeners {
                listener(&change);
            }
        }
        result
    }

    /// Updates the gauge and counter and logs the change.
    fn publish(&self, change: &StateChange) {
        let name = self.shared.name.clone();
        metrics::gauge!(STATE_GAUGE, "breaker" => name.clone()).set(change.to.gauge_value());
        metrics::counter!(
            STATE_CHANGES_COUNTER,
            "breaker" => name, "from" => change.from.as_str(), "to" => change.to.as_str()
        )
        .increment(1);
        let (breaker, from, to) = (&*self.shared.name, change.from.as_str(), change.to.as_str());
        if change.to == BreakerState::Open {
            let consecutive_failures = change.consecutive_failures;
            tracing::warn!(breaker, from, consecutive_failures, "circuit breaker opened");
        } else {
            tracing::info!(breaker, from, to, "circuit breaker state changed");
        }
    }
}

/// Leave to make one call through a [`CircuitBreaker`]; record the call's outcome on it.
/// Dropping it unrecorded is neutral (see the module docs).
#[must_use = "the permit records the call's outcome; record it after the call"]
#[derive(Debug)]
pub struct Permit {
    breaker: CircuitBreaker,
    /// The breaker state this permit was issued in; it affects no other.
    epoch: u64,
    /// Recorded when the permit is dropped.
    outcome: Outcome,
}

impl Permit {
    /// Records the call's outcome.
    pub fn record(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.breaker.record(self.epoch, self.outcome);
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Closed,
    Open { since: Instant },
    HalfOpen { in_flight: u32, successes: u32 },
}

impl Phase {
    fn state(self) -> BreakerState {
        match self {
            Self::Closed => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// A transition as the state machine reports it; named into a [`StateChange`] by the handle.
struct Transition {
    from: BreakerState,
    to: BreakerState,
    consecutive_failures: u32,
    sequence: u64,
}

/// Windowed-mode counter indexes.
const CALLS: usize = 0;
const FAILED: usize = 1;

/// The state machine; pure apart from the `now` it is given.
struct Core {
    phase: Phase,
    /// Bumped on every transition; permits carry the epoch they were issued in.
    epoch: u64,
    consecutive_failures: u32,
    successes: u64,
    failures: u64,
    rejected: u64,
    /// Recent calls and failures, only in windowed mode.
    window: Option<SlidingWindow>,
    last_transition: Instant,
    last_transition_at: SystemTime,
}

impl Core {
    fn snapshot(&self) -> BreakerSnapshot {
        BreakerSnapshot {
            state: self.phase.state(),
            consecutive_failures: self.consecutive_failures,
            successes: self.successes,
            failures: self.failures,
            rejected: self.rejected,
            last_transition: self.last_transition,
            last_transition_at: self.last_transition_at,
        }
    }

    fn enter(&mut self, phase: Phase, now: Instant) -> Transition {
        let from = self.phase.state();
        self.phase = phase;
        self.epoch += 1;
        self.last_transition = now;
        self.last_transition_at = SystemTime::now();
        if let Phase::Closed = phase {
            self.consecutive_failures = 0;
            if let Some(window) = &mut self.window {
                window.clear();
            }
        }
        Transition { from, to: phase.state(), consecutive_failures: self.consecutive_failures, sequence: self.epoch }
    }

    /// Open → HalfOpen once the recovery timeout has passed.
    fn tick(&mut self, now: Instant, config: &BreakerConfig) -> Option<Transition> {
        match self.phase {
            Phase::Open { since } if now.duration_since(since) >= config.recovery_timeout => {
                Some(self.enter(Phase::HalfOpen { in_flight: 0, successes: 0 }, now))
            }
            _ => None,
        }
    }

    fn acquire(&mut self, now: Instant, config: &BreakerConfig) -> (Result<u64, Duration>, Option<Transition>) {
        let change = self.tick(now, config);
        let admitted = match self.phase {
            Phase::Closed => Ok(self.epoch),
            Phase::Open { since } => Err(config.recovery_timeout.saturating_sub(now.duration_since(since))),
            Phase::HalfOpen { in_flight, successes } if in_flight < config.half_open_max_calls.max(1) => {
                self.phase = Phase::HalfOpen { in_flight: in_flight + 1, successes };
                Ok(self.epoch)
            }
            Phase::HalfOpen { .. } => Err(Duration::ZERO),
        };
        if admitted.is_err() {
            self.rejected += 1;
        }
        (admitted, change)
    }

    fn record(&mut self, epoch: u64, outcome: Outcome, now: Instant, config: &BreakerConfig) -> Option<Transition> {
        match outcome {
            Outcome::Success => self.successes += 1,
            Outcome::Failure { .. } => self.failures += 1,
            Outcome::Neutral => {}
        }
        if epoch != self.epoch {
            return None;
        }
        match (self.phase, outcome) {
            (Phase::Closed, Outcome::Success) => {
                self.consecutive_failures = 0;
                if let Some(window) = &mut self.window {
                    window.add(now, [1, 0]);
                }
                None
            }
            (Phase::Closed, Outcome::Failure { .. }) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let rate_tripped = match (&mut self.window, &config.failure_rate) {
                    (Some(window), Some(rate)) => {
                        window.add(now, [1, 1]);
                        let sums = window.sums(now);
                        sums[CALLS] >= u64::from(rate.minimum_calls)
                            && sums[FAILED] as f64 >= rate.threshold * sums[CALLS] as f64
                    }
                    _ => false,
                };
                (self.consecutive_failures >= config.failure_threshold || rate_tripped)
                    .then(|| self.enter(Phase::Open { since: now }, now))
            }
            (Phase::HalfOpen { in_flight, successes }, outcome) => {
                let in_flight = in_flight.saturating_sub(1);
                match outcome {
                    Outcome::Success if successes + 1 >= config.success_threshold => {
                        Some(self.enter(Phase::Closed, now))
                    }
                    Outcome::Success => {
                        self.phase = Phase::HalfOpen { in_flight, successes: successes + 1 };
                        None
                    }
                    Outcome::Failure { .. } => {
                        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                        Some(self.enter(Phase::Open { since: now }, now))
                    }
                    Outcome::Neutral => {
                        self.phase = Phase::HalfOpen { in_flight, successes };
                        None
                    }
                }
            }
            (Phase::Closed, Outcome::Neutral) | (Phase::Open { .. }, _) => None,
        }
    }
}
