//! A sliding time window of two counters, shared by the breaker's failure-rate mode
//! (calls, failures) and the retry budget (deposits, withdrawals), so both forget old
//! traffic the same way without keeping one entry per call.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How many buckets a window is cut into; old traffic leaves the window one bucket
/// (a tenth of the span) at a time.
const BUCKETS: u32 = 10;

/// Two counters summed over the last `span` of time.
#[derive(Debug)]
pub(crate) struct SlidingWindow {
    /// How far back the window looks.
    span: Duration,
    /// Oldest first; each bucket holds what was added during its tenth of the span.
    buckets: VecDeque<(Instant, [u64; 2])>,
}

impl SlidingWindow {
    pub(crate) fn new(span: Duration) -> Self {
        Self { span, buckets: VecDeque::with_capacity(BUCKETS as usize + 1) }
    }

    /// Adds `amounts` to the two counters at time `now`.
    pub(crate) fn add(&mut self, now: Instant, amounts: [u64; 2]) {
        self.evict(now);
        let width = self.span / BUCKETS;
        match self.buckets.back_mut() {
            Some((start, counts)) if now < *start + width => {
                counts[0] += amounts[0];
                counts[1] += amounts[1];
            }
            _ => self.buckets.push_back((now, amounts)),
        }
    }

    /// The two counters summed over the window ending at `now`.
    pub(crate) fn sums(&mut self, now: Instant) -> [u64; 2] {
        self.evict(now);
        self.buckets.iter().fold([0, 0], |acc, (_, counts)| [acc[0] + counts[0], acc[1] + counts[1]])
    }

    /// Forgets everything, as when a breaker closes again.
    pub(crate) fn clear(&mut self) {
        self.buckets.clear();
    }

    fn evict(&mut self, now: Instant) {
        while let Some((start, _)) = self.buckets.front() {
            if *start + self.span <= now {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_only_what_is_inside_the_span() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(Duration::from_secs(10));
        window.add(start, [1, 0]);
        window.add(start + Duration::from_secs(5), [0, 2]);
        assert_eq!(window.sums(start + Duration::from_secs(9)), [1, 2]);
        assert_eq!(window.sums(start + Duration::from_secs(10)), [0, 2]);
        assert_eq!(window.sums(start + Duration::from_secs(15)), [0, 0]);
    }

    #[test]
    fn keeps_a_bounded_number_of_buckets() {
        let start = Instant::now();
        let mut window = SlidingWindow::new(Duration::from_secs(10));
        for ms in 0..100_000 {
            window.add(start + Duration::from_millis(ms), [1, 0]);
        }
        assert!(window.buckets.len() <= BUCKETS as usize + 1);
        window.clear();
        assert_eq!(window.sums(start), [0, 0]);
    }
}
