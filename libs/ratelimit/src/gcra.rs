//! The GCRA arithmetic both backends share (see the crate docs for the algorithm and its
//! bound).
//!
//! Times are integer microseconds on the backend's clock: tokio's monotonic clock since the
//! limiter was created (memory) or Redis's `TIME` (Redis). `gcra.lua` repeats [`Gcra::step`]
//! in Lua; every decision field comes from [`Gcra::decision`] for both backends, so the two
//! cannot drift apart in what they report.

use std::time::Duration;

use super::{Decision, Limit, RateLimitError};

/// Longest accepted window (a year): keeps Redis-clock timestamps plus any TAT below 2^53,
/// where Lua's doubles are exact integers.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// One limit in GCRA form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Units per window (0: refuse everything).
    quota: u32,
    /// The window, microseconds (at least 1): the budget in time.
    window: u64,
}

/// What one call does to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Spend this many microseconds of budget if it fits, else nothing.
    Check(u64),
    /// Spend (positive) or give back (negative) this many microseconds unconditionally.
    Adjust(i64),
}

impl Change {
    /// The signed increment and whether it is forced: the script's arguments.
    pub(crate) fn script_args(self) -> (i64, bool) {
        match self {
            Self::Check(increment) => (i64::try_from(increment).unwrap_or(i64::MAX), false),
            Self::Adjust(increment) => (increment, true),
        }
    }
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
        Ok(Self { quota: limit.quota, window: micros(limit.window).max(1) })
    }

    /// Whether the limit refuses everything (`quota == 0`); no state is involved.
    pub(crate) fn denies_all(&self) -> bool {
        self.quota == 0
    }

    /// The window in microseconds: the most budget a key can have in use.
    pub(crate) fn window(&self) -> u64 {
        self.window
    }

    /// The check of `cost` units: its increment, or an error when it can never pass.
    pub(crate) fn check(&self, cost: u32) -> Result<Change, RateLimitError> {
        if cost > self.quota {
            return Err(RateLimitError::CostExceedsLimit { cost, quota: self.quota });
        }
        let increment = self.scaled(u128::from(cost));
        Ok(Change::Check(if cost > 0 { increment.max(1) } else { 0 }))
    }

    /// The adjustment by `delta` units. Beyond two windows either way the result is the
    /// same (clamped), so larger values are cut there.
    pub(crate) fn adjust(&self, delta: i64) -> Change {
        let magnitude = self.scaled(u128::from(delta.unsigned_abs())).min(2 * self.window);
        let magnitude = i64::try_from(magnitude).unwrap_or(i64::MAX);
        Change::Adjust(if delta < 0 { -magnitude } else { magnitude })
    }

    /// `units · window / quota` microseconds, rounded down.
    fn scaled(&self, units: u128) -> u64 {
        let quota = u128::from(self.quota.max(1));
        u64::try_from(units * u128::from(self.window) / quota).unwrap_or(u64::MAX)
    }

    /// Applies `change` at `now` to the stored TAT (`None`: no state): whether it was
    /// admitted, and the TAT afterwards (unchanged when refused; `now` or less means idle).
    /// Mirrored by `gcra.lua`.
    pub(crate) fn step(&self, stored: Option<u64>, now: u64, change: Change) -> (bool, u64) {
        let tat = stored.map_or(now, |tat| tat.max(now));
        match change {
            Change::Check(increment) => {
                let next = tat.saturating_add(increment);
                if next - now > self.window { (false, tat) } else { (true, next) }
            }
            Change::Adjust(increment) => {
                let next = tat.saturating_add_signed(increment).max(now);
                (true, next.min(now.saturating_add(2 * self.window)))
            }
        }
    }

    /// The decision for `change` at `now` that left the key at `tat`.
    pub(crate) fn decision(&self, allowed: bool, now: u64, tat: u64, change: Change) -> Decision {
        if self.denies_all() {
            return self.deny_all();
        }
        let ahead = tat.saturating_sub(now);
        let free = u128::from(self.window.saturating_sub(ahead));
        let remaining = free * u128::from(self.quota) / u128::from(self.window);
        let retry_after = match change {
            Change::Check(increment) if !allowed => Some((ahead + increment).saturating_sub(self.window).max(1)),
            _ => None,
        };
        Decision {
            allowed,
            limit: self.quota,
            remaining: u32::try_from(remaining).unwrap_or(u32::MAX).min(self.quota),
            reset_after: Duration::from_micros(ahead),
            retry_after: retry_after.map(Duration::from_micros),
        }
    }

    /// The decision of a zero quota: refused, try again after a window.
    pub(crate) fn deny_all(&self) -> Decision {
        let window = Duration::from_micros(self.window);
        Decision { allowed: false, limit: 0, remaining: 0, reset_after: window, retry_after: Some(window) }
    }

    /// The decision an idle key gives `change`: what a limiter reports when it fails open
    /// and cannot know the real state.
    pub(crate) fn fresh(&self, change: Change) -> Decision {
        let (_, tat) = self.step(None, 0, change);
        self.decision(true, 0, tat, change)
    }
}

/// Whole microseconds of `duration`, saturating.
pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn gcra(quota: u32, window_secs: u64) -> Gcra {
        Gcra::new(Limit::new(quota, Duration::from_secs(window_secs))).unwrap()
    }

    fn check(g: &Gcra, cost: u32) -> Change {
        g.check(cost).unwrap()
    }

    /// Runs `count` checks of `cost` at `now` from `tat`: how many passed, and the TAT.
    fn burst(g: &Gcra, mut tat: Option<u64>, now: u64, cost: u32, count: u32) -> (u32, Option<u64>) {
        let mut allowed = 0;
        for _ in 0..count {
            let (ok, next) = g.step(tat, now, check(g, cost));
            allowed += u32::from(ok);
            tat = Some(next);
        }
        (allowed, tat)
    }

    #[test]
    fn parameters_and_invalid_limits() {
        assert_eq!(gcra(100, 60).check(1), Ok(Change::Check(600_000)));
        assert_eq!(gcra(50_000, 60).check(1_000), Ok(Change::Check(1_200_000)));
        assert_eq!(gcra(100, 60).check(0), Ok(Change::Check(0)));
        assert_eq!(gcra(100, 60).check(101), Err(RateLimitError::CostExceedsLimit { cost: 101, quota: 100 }));
        assert!(gcra(0, 60).denies_all());
        assert_eq!(
            Gcra::new(Limit::new(1, Duration::ZERO)),
            Err(RateLimitError::InvalidLimit("the window must be positive"))
        );
        assert!(Gcra::new(Limit::new(1, MAX_WINDOW + Duration::from_secs(1))).is_err());
        // Windows shorter than the quota in microseconds still charge a positive cost.
        let tiny = Gcra::new(Limit::new(1_000, Duration::from_nanos(10))).unwrap();
        assert_eq!(tiny.check(1), Ok(Change::Check(1)));
        // Adjustments beyond two windows are cut there.
        assert_eq!(gcra(10, 60).adjust(-1_000), Change::Adjust(-120_000_000));
        assert_eq!(gcra(10, 60).adjust(i64::MIN), Change::Adjust(-120_000_000));
    }

    #[test]
    fn burst_from_idle_admits_exactly_the_quota() {
        for quota in [1, 2, 5, 7, 10, 100, 1_000, 5_000] {
            let g = gcra(quota, 60);
            let (allowed, _) = burst(&g, None, 1_000_000, 1, quota * 3);
            assert_eq!(allowed, quota, "quota {quota}");
        }
    }

    #[test]
    fn decision_counts_down_and_reports_waits() {
        let g = gcra(5, 60);
        let now = 42;
        let mut tat = None;
        for expected_remaining in (0..5).rev() {
            let (ok, next) = g.step(tat, now, check(&g, 1));
            assert!(ok);
            let d = g.decision(ok, now, next, check(&g, 1));
            assert_eq!((d.remaining, d.retry_after), (expected_remaining, None));
            tat = Some(next);
        }
        let (ok, next) = g.step(tat, now, check(&g, 1));
        assert!(!ok);
        assert_eq!(Some(next), tat, "a refused check changes nothing");
        let d = g.decision(ok, now, next, check(&g, 1));
        assert_eq!((d.allowed, d.limit, d.remaining), (false, 5, 0));
        assert_eq!(d.retry_after, Some(Duration::from_secs(12)), "one unit: 60 s / 5");
        assert_eq!(d.reset_after, Duration::from_secs(60), "the whole burst to refill");
        // A bigger cost waits for more of the budget to come back.
        let d = g.decision(false, now, next, check(&g, 3));
        assert_eq!(d.retry_after, Some(Duration::from_secs(36)));
    }

    #[test]
    fn quota_comes_back_one_unit_at_a_time() {
        let g = gcra(5, 60);
        let (_, tat) = burst(&g, None, 0, 1, 5);
        assert!(!g.step(tat, 12_000_000 - 1, check(&g, 1)).0);
        let (ok, tat) = g.step(tat, 12_000_000, check(&g, 1));
        assert!(ok);
        assert!(!g.step(Some(tat), 12_000_000, check(&g, 1)).0);
        // A full window later the key is idle again: a fresh burst of 5.
        let (allowed, _) = burst(&g, Some(tat), 12_000_000 + 60_000_000, 1, 10);
        assert_eq!(allowed, 5);
    }

    #[test]
    fn admitted_over_any_span_is_at_most_quota_plus_refill() {
        // Steady pressure: one request every 7 ms for 3 minutes against 100/min.
        let g = gcra(100, 60);
        let interval = 600_000;
        let mut tat = None;
        let mut admitted_at = Vec::new();
        for i in 0..(180_000 / 7) {
            let now = i * 7_000;
            let (ok, next) = g.step(tat, now, check(&g, 1));
            tat = Some(next);
            if ok {
                admitted_at.push(now);
            }
        }
        for (first, &start) in admitted_at.iter().enumerate() {
            for span in [1_000_000u64, 10_000_000, 60_000_000] {
                let count = admitted_at[first..].iter().take_while(|&&t| t < start + span).count() as u64;
                assert!(count <= 100 + span / interval, "span {span} from {start}: {count}");
            }
        }
        // The long-run rate is the limit: 100 initial + one per 600 ms afterwards.
        assert_eq!(admitted_at.len() as u64, 100 + (180_000_000 - 1) / interval);
    }

    #[test]
    fn adjustments_refund_to_a_full_bucket_and_overdraw_by_one_window_at_most() {
        let g = gcra(100, 60);
        let (_, tat) = burst(&g, None, 0, 60, 1);
        // Refund more than was spent: back to idle, never beyond.
        let (ok, tat) = g.step(tat, 0, g.adjust(-500));
        assert!(ok);
        assert_eq!(tat, 0);
        assert_eq!(g.decision(true, 0, tat, g.adjust(-500)).remaining, 100);
        // Debit far beyond the budget: two windows of debt at most, all refused meanwhile.
        let (_, tat) = g.step(Some(tat), 0, g.adjust(1_000));
        assert_eq!(tat, 120_000_000);
        assert!(!g.step(Some(tat), 0, check(&g, 0)).0, "a zero-cost check reports the debt");
        assert!(!g.step(Some(tat), 60_000_000, check(&g, 1)).0);
        assert!(g.step(Some(tat), 60_600_000, check(&g, 1)).0, "one unit back after the debt drained");
    }

    #[test]
    fn fresh_and_deny_all() {
        let g = gcra(10, 60);
        let fresh = g.fresh(check(&g, 1));
        assert!(fresh.allowed);
        assert_eq!((fresh.limit, fresh.remaining, fresh.reset_after), (10, 9, Duration::from_secs(6)));
        let none = gcra(0, 60).deny_all();
        assert_eq!((none.allowed, none.limit, none.remaining), (false, 0, 0));
        assert_eq!(none.retry_after, Some(Duration::from_secs(60)));
    }

    proptest! {
        /// At one instant, from an idle key, costs are admitted while they fit: a refusal is
        /// a cost that would overflow the quota, and the admitted sum exceeds the quota by
        /// no more than the rounding allows (under one microsecond per check).
        #[test]
        fn admitted_costs_stay_within_the_quota(
            quota in 1u32..1_000_000,
            window_secs in 1u64..3_600,
            costs in proptest::collection::vec(0u32..200_000, 1..60),
        ) {
            let g = gcra(quota, window_secs);
            let window = window_secs * 1_000_000;
            let (mut tat, mut spent, mut checks) = (None, 0u64, 0u64);
            for cost in costs {
                let Ok(change) = g.check(cost) else {
                    prop_assert!(cost > quota);
                    continue;
                };
                checks += 1;
                let (ok, next) = g.step(tat, 7, change);
                if ok {
                    spent += u64::from(cost);
                    tat = Some(next);
                } else {
                    prop_assert_eq!(next, tat.map_or(7, |t: u64| t.max(7)));
                    prop_assert!(spent + u64::from(cost) > u64::from(quota), "refused {} with {} spent", cost, spent);
                }
                prop_assert!(spent <= u64::from(quota) + (checks * u64::from(quota)).div_ceil(window));
            }
        }
    }
}
