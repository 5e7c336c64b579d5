//! The GCRA arithmetic both backends share (see the module docs of `ratelimit` for the
//! algorithm and its bound).
//!
//! Times are integer microseconds on the backend's clock: tokio's monotonic clock since the
//! limiter was created (memory) or Redis's `TIME` (Redis). `gcra.lua` repeats [`Gcra::step`]
//! in Lua; every header field comes from [`Gcra::decision`] for both backends, so the two
//! cannot drift apart in what they report.

use std::time::Duration;

use super::{Decision, Limit, RateLimitError};

/// Longest accepted window (a year): keeps Redis-clock timestamps plus any TAT below 2^53,
/// where Lua's doubles are exact integers.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// One limit in GCRA form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Requests per window (0: refuse everything).
    limit: u32,
    /// The window, microseconds (at least 1).
    window: u64,
    /// Emission interval `I = ⌊window / limit⌋`, at least 1 µs.
    interval: u64,
    /// Burst tolerance `τ = (limit − 1)·I`.
    tolerance: u64,
}

impl Gcra {
    /// The GCRA parameters of `limit`.
    pub(crate) fn new(limit: Limit) -> Result<Self, RateLimitError> {
        if limit.window.is_zero() {
            return Err(RateLimitError::InvalidLimit("the window must be positive"));
        }
        if limit.window > MAX_WINDOW {
            return Err(RateLimitError::InvalidLimit("the window must be at most 366 days"));
        }
        let window = micros(limit.window).max(1);
        let requests = u64::from(limit.requests.max(1));
        let interval = (window / requests).max(1);
        let tolerance = interval.saturating_mul(requests - 1);
        Ok(Self { limit: limit.requests, window, interval, tolerance })
    }

    /// Whether the limit refuses every request (`requests == 0`); no state is involved.
    pub(crate) fn denies_all(&self) -> bool {
        self.limit == 0
    }

    /// Emission interval, microseconds.
    pub(crate) fn interval(&self) -> u64 {
        self.interval
    }

    /// Burst tolerance, microseconds.
    pub(crate) fn tolerance(&self) -> u64 {
        self.tolerance
    }

    /// One request at `now` against the stored TAT (`None`: no state): whether it is
    /// allowed, and the TAT afterwards (unchanged when denied). Mirrored by `gcra.lua`.
    pub(crate) fn step(&self, stored: Option<u64>, now: u64) -> (bool, u64) {
        let tat = stored.map_or(now, |tat| tat.max(now));
        if tat - now > self.tolerance { (false, tat) } else { (true, tat.saturating_add(self.interval)) }
    }

    /// The decision for a check at `now` that left the key at `tat`.
    pub(crate) fn decision(&self, allowed: bool, now: u64, tat: u64) -> Decision {
        if self.denies_all() {
            return self.deny_all();
        }
        let ahead = tat.saturating_sub(now);
        let remaining = if ahead > self.tolerance { 0 } else { (self.tolerance - ahead) / self.interval + 1 };
        Decision {
            allowed,
            limit: self.limit,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX).min(self.limit),
            reset_after: from_micros(ahead),
            retry_after: (!allowed).then(|| from_micros(ahead.saturating_sub(self.tolerance).max(1))),
        }
    }

    /// The decision of a zero limit: refused, try again after a window.
    pub(crate) fn deny_all(&self) -> Decision {
        let window = from_micros(self.window);
        Decision { allowed: false, limit: 0, remaining: 0, reset_after: window, retry_after: Some(window) }
    }

    /// The decision an idle key gives its first request: what a limiter reports when it
    /// fails open and cannot know the real state.
    pub(crate) fn fresh(&self) -> Decision {
        let (allowed, tat) = self.step(None, 0);
        self.decision(allowed, 0, tat)
    }
}

/// Whole microseconds of `duration`, saturating.
pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn from_micros(micros: u64) -> Duration {
    Duration::from_micros(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra(requests: u32, window_secs: u64) -> Gcra {
        Gcra::new(Limit::new(requests, Duration::from_secs(window_secs))).unwrap()
    }

    /// Runs `count` requests at `now` from `tat`, returning how many passed and the TAT.
    fn burst(g: &Gcra, mut tat: Option<u64>, now: u64, count: u32) -> (u32, Option<u64>) {
        let mut allowed = 0;
        for _ in 0..count {
            let (ok, next) = g.step(tat, now);
            allowed += u32::from(ok);
            tat = Some(next);
        }
        (allowed, tat)
    }

    #[test]
    fn parameters() {
        let g = gcra(100, 60);
        assert_eq!((g.interval(), g.tolerance()), (600_000, 99 * 600_000));
        let g = gcra(1, 60);
        assert_eq!((g.interval(), g.tolerance()), (60_000_000, 0));
        assert!(gcra(0, 60).denies_all());
        assert_eq!(
            Gcra::new(Limit::new(1, Duration::ZERO)),
            Err(RateLimitError::InvalidLimit("the window must be positive"))
        );
        assert!(Gcra::new(Limit::new(1, MAX_WINDOW + Duration::from_secs(1))).is_err());
        // Windows shorter than the limit in microseconds still admit a positive interval.
        assert_eq!(Gcra::new(Limit::new(1_000, Duration::from_nanos(10))).unwrap().interval(), 1);
    }

    #[test]
    fn burst_from_idle_admits_exactly_the_limit() {
        for limit in [1, 2, 5, 7, 10, 100, 1_000, 5_000] {
            let g = gcra(limit, 60);
            let (allowed, _) = burst(&g, None, 1_000_000, limit * 3);
            assert_eq!(allowed, limit, "limit {limit}");
        }
    }

    #[test]
    fn decision_counts_down_and_reports_waits() {
        let g = gcra(5, 60);
        let now = 42;
        let mut tat = None;
        for expected_remaining in (0..5).rev() {
            let (ok, next) = g.step(tat, now);
            assert!(ok);
            let d = g.decision(ok, now, next);
            assert_eq!(d.remaining, expected_remaining);
            assert_eq!(d.retry_after, None);
            tat = Some(next);
        }
        let (ok, next) = g.step(tat, now);
        assert!(!ok);
        assert_eq!(Some(next), tat, "a denied request changes nothing");
        let d = g.decision(ok, now, next);
        assert_eq!((d.allowed, d.limit, d.remaining), (false, 5, 0));
        assert_eq!(d.retry_after, Some(Duration::from_secs(12)), "one interval: 60 s / 5");
        assert_eq!(d.reset_after, Duration::from_secs(60), "the whole burst to refill");
    }

    #[test]
    fn quota_comes_back_one_interval_at_a_time() {
        let g = gcra(5, 60);
        let (_, tat) = burst(&g, None, 0, 5);
        let just_before = 12_000_000 - 1;
        assert!(!g.step(tat, just_before).0);
        let (ok, tat) = g.step(tat, 12_000_000);
        assert!(ok);
        assert!(!g.step(Some(tat), 12_000_000).0);
        // A full window later the key is idle again: a fresh burst of 5.
        let (allowed, _) = burst(&g, Some(tat), 12_000_000 + 60_000_000, 10);
        assert_eq!(allowed, 5);
    }

    #[test]
    fn admitted_over_any_span_is_at_most_limit_plus_span_over_interval() {
        // Steady pressure: one request every 7 ms for 3 minutes against 100/min.
        let g = gcra(100, 60);
        let mut tat = None;
        let mut admitted_at = Vec::new();
        for i in 0..(180_000 / 7) {
            let now = i * 7_000;
            let (ok, next) = g.step(tat, now);
            tat = Some(next);
            if ok {
                admitted_at.push(now);
            }
        }
        for (first, &start) in admitted_at.iter().enumerate() {
            for span in [1_000_000u64, 10_000_000, 60_000_000] {
                let count = admitted_at[first..].iter().take_while(|&&t| t < start + span).count() as u64;
                assert!(count <= 100 + span / g.interval(), "span {span} from {start}: {count}");
            }
        }
        // The long-run rate is the limit: 100 initial + one per 600 ms afterwards.
        assert_eq!(admitted_at.len() as u64, 100 + (180_000_000 - 1) / 600_000);
    }

    #[test]
    fn fresh_and_deny_all() {
        let g = gcra(10, 60);
        let fresh = g.fresh();
        assert!(fresh.allowed);
        assert_eq!((fresh.limit, fresh.remaining, fresh.reset_after), (10, 9, Duration::from_secs(6)));
        let none = gcra(0, 60).deny_all();
        assert_eq!((none.allowed, none.limit, none.remaining), (false, 0, 0));
        assert_eq!(none.retry_after, Some(Duration::from_secs(60)));
    }
}
