//! Random operation sequences against the breaker, checked step by step against a
//! reference model written as plainly as possible, plus invariants that must hold
//! whatever the model says.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Acquire,
    Record(usize, Outcome),
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..1_500).prop_map(Op::Advance),
        Just(Op::Acquire),
        Just(Op::Acquire),
        (any::<usize>(), outcome()).prop_map(|(i, o)| Op::Record(i, o)),
        any::<usize>().prop_map(Op::Drop),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![Just(Outcome::Success), Just(Outcome::FATAL), Just(Outcome::Neutral),]
}

/// The reference: what the breaker must do, state by state.
#[derive(Debug)]
struct Model {
    threshold: u32,
    recovery: Duration,
    max_probes: u32,
    success_threshold: u32,
    state: BreakerState,
    consecutive: u32,
    opened_at: Instant,
    probes: u32,
    probe_successes: u32,
    /// Which state-period each outstanding permit belongs to.
    period: u64,
}

impl Model {
    fn enter(&mut self, state: BreakerState, now: Instant) {
        self.state = state;
        self.period += 1;
        match state {
            BreakerState::Open => self.opened_at = now,
            BreakerState::HalfOpen => (self.probes, self.probe_successes) = (0, 0),
            BreakerState::Closed => self.consecutive = 0,
        }
    }

    fn tick(&mut self, now: Instant) {
        if self.state == BreakerState::Open && now - self.opened_at >= self.recovery {
            self.enter(BreakerState::HalfOpen, now);
        }
    }

    /// `Some(period)` when admitted, else the expected `retry_after`.
    fn acquire(&mut self, now: Instant) -> Result<u64, Duration> {
        self.tick(now);
        match self.state {
            BreakerState::Closed => Ok(self.period),
            BreakerState::Open => Err(self.recovery - (now - self.opened_at)),
            BreakerState::HalfOpen if self.probes < self.max_probes => {
                self.probes += 1;
                Ok(self.period)
            }
            BreakerState::HalfOpen => Err(Duration::ZERO),
        }
    }

    fn record(&mut self, period: u64, outcome: Outcome, now: Instant) {
        if period != self.period {
            return;
        }
        match (self.state, outcome) {
            (BreakerState::Closed, Outcome::Success) => self.consecutive = 0,
            (BreakerState::Closed, Outcome::Failure { .. }) => {
                self.consecutive += 1;
                if self.consecutive >= self.threshold {
                    self.enter(BreakerState::Open, now);
                }
            }
            (BreakerState::HalfOpen, _) => {
                self.probes -= 1;
                match outcome {
                    Outcome::Success => {
                        self.probe_successes += 1;
                        if self.probe_successes >= self.success_threshold {
                            self.enter(BreakerState::Closed, now);
                        }
                    }
                    Outcome::Failure { .. } => {
                        self.consecutive += 1;
                        self.enter(BreakerState::Open, now);
                    }
                    Outcome::Neutral => {}
                }
            }
            _ => {}
        }
    }
}

fn check_sequence(
    threshold: u32,
    recovery_ms: u64,
    max_probes: u32,
    success_threshold: u32,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
    runtime.block_on(async move {
        let recovery = Duration::from_millis(recovery_ms);
        let breaker = CircuitBreaker::new(
            "prop",
            BreakerConfig {
                failure_threshold: threshold,
                failure_rate: None,
                recovery_timeout: recovery,
                half_open_max_calls: max_probes,
                success_threshold,
            },
        );
        let transitions = Arc::new(Mutex::new(Vec::new()));
        let sink = transitions.clone();
        breaker.on_state_change(move |change| sink.lock().unwrap().push((change.from, change.to)));
        let mut model = Model {
            threshold,
            recovery,
            max_probes,
            success_threshold,
            state: BreakerState::Closed,
            consecutive: 0,
            opened_at: Instant::now(),
            probes: 0,
            probe_successes: 0,
            period: 0,
        };
        let mut permits: Vec<(Permit, u64)> = Vec::new();

        for op in ops {
            let now = Instant::now();
            match op {
                Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                Op::Acquire => {
                    let was_open_and_waiting = model.state == BreakerState::Open && now - model.opened_at < recovery;
                    let expected = model.acquire(now);
                    match (breaker.try_acquire(), expected) {
                        (Ok(permit), Ok(period)) => permits.push((permit, period)),
                        (Err(open), Err(retry_after)) => {
                            prop_assert_eq!(open.retry_after, retry_after)
                        }
                        (actual, expected) => {
                            prop_assert!(false, "acquire: breaker {:?}, model {:?}", actual.map(|_| ()), expected)
                        }
                    }
                    if was_open_and_waiting {
                        prop_assert_eq!(model.state, BreakerState::Open, "open must reject until recovery");
                    }
                }
                Op::Record(index, outcome) if !permits.is_empty() => {
                    let (permit, period) = permits.swap_remove(index % permits.len());
                    permit.record(outcome);
                    model.record(period, outcome, now);
                }
                Op::Drop(index) if !permits.is_empty() => {
                    let (permit, period) = permits.swap_remove(index % permits.len());
                    drop(permit);
                    model.record(period, Outcome::Neutral, now);
                }
                Op::Record(..) | Op::Drop(_) => {}
            }

            model.tick(Instant::now());
            let snapshot = breaker.snapshot();
            prop_assert_eq!(snapshot.state, model.state);
            if snapshot.state == BreakerState::Closed {
                prop_assert!(snapshot.consecutive_failures < threshold);
                prop_assert_eq!(snapshot.consecutive_failures, model.consecutive);
            }
            let probes = permits.iter().filter(|(_, period)| *period == model.period).count();
            if snapshot.state == BreakerState::HalfOpen {
                prop_assert!(probes <= max_probes as usize, "{} probes in flight", probes);
            }
        }

        for (from, to) in transitions.lock().unwrap().iter() {
            let allowed = matches!(
                (from, to),
                (BreakerState::Closed, BreakerState::Open)
                    | (BreakerState::Open, BreakerState::HalfOpen)
                    | (BreakerState::HalfOpen, BreakerState::Open)
                    | (BreakerState::HalfOpen, BreakerState::Closed)
            );
            prop_assert!(allowed, "illegal transition {:?} -> {:?}", from, to);
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn breaker_follows_the_reference_model(
        threshold in 1u32..5,
        recovery_ms in 1u64..3_000,
        max_probes in 1u32..4,
        success_threshold in 1u32..3,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        check_sequence(threshold, recovery_ms, max_probes, success_threshold, ops)?;
    }
}
