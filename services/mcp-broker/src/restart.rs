//! When a crashed stdio MCP server is started again: exponential backoff, so that a server
//! that dies at once is not restarted in a tight loop, yet one that ran well for a while
//! comes back quickly.
//!
//! The delay before restart `n` (1 for the first) is `0.5 s · 2^(n-1)` capped at 30 s,
//! jittered to a uniform time in its upper half so that servers that crashed together do
//! not restart together; a server that stayed up [`STABLE_AFTER`] starts the schedule over.

use std::time::Duration;

use agentmesh_resilience::RetryPolicy;

/// The delay before the first restart (before jitter).
const FIRST_DELAY: Duration = Duration::from_millis(500);
/// No restart waits longer than this.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// A server up at least this long before it exited starts the schedule over.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);

/// Where one session's restarts stand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backoff {
    /// Restarts since the server last stayed up [`STABLE_AFTER`].
    restarts: u32,
}

impl Backoff {
    /// The server exited after running `uptime`: the schedule starts over when it was
    /// stable.
    pub fn exited_after(&mut self, uptime: Duration) {
        if uptime >= STABLE_AFTER {
            self.restarts = 0;
        }
    }

    /// The unjittered delay before the next restart, which this counts.
    pub fn next_ceiling(&mut self) -> Duration {
        self.restarts = self.restarts.saturating_add(1);
        schedule().backoff(self.restarts)
    }

    /// The delay before the next restart, which this counts: [`Self::next_ceiling`]
    /// jittered into its upper half.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next_ceiling();
        rand::random_range(ceiling / 2..=ceiling)
    }
}

/// The schedule as the mesh's retry policy (jitter is applied here, not there).
fn schedule() -> RetryPolicy {
    RetryPolicy {
        max_attempts: u32::MAX,
        base_delay: FIRST_DELAY,
        max_delay: MAX_DELAY,
        multiplier: 2.0,
        jitter: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_from_half_a_second_up_to_thirty_seconds() {
        let mut backoff = Backoff::default();
        let ceilings: Vec<f64> = (0..10).map(|_| backoff.next_ceiling().as_secs_f64()).collect();
        assert_eq!(ceilings, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0]);
    }

    #[test]
    fn a_server_that_stayed_up_starts_the_schedule_over_and_one_that_did_not_keeps_it() {
        let mut backoff = Backoff::default();
        for _ in 0..4 {
            backoff.next_ceiling();
        }
        backoff.exited_after(STABLE_AFTER - Duration::from_secs(1));
        assert_eq!(backoff.next_ceiling(), Duration::from_secs(8));
        backoff.exited_after(STABLE_AFTER);
        assert_eq!(backoff.next_ceiling(), FIRST_DELAY);
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_each_step() {
        for _ in 0..200 {
            let mut ceilings = Backoff::default();
            let mut delays = ceilings.clone();
            for _ in 0..8 {
                let (ceiling, delay) = (ceilings.next_ceiling(), delays.next_delay());
                assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
            }
        }
    }
}
