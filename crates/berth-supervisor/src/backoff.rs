//! Restart backoff and crash-loop detection: a pure policy, tested without processes or clocks.

use std::time::Duration;

/// How quickly an exited replica is started again.
///
/// A run that was healthy for at least `min_uptime` is a good run: its replica restarts at once and the
/// backoff resets. Any shorter run is a fast failure: the delay doubles from `initial` up to `max`, and
/// `crash_loop_after` fast failures in a row mark the replica as crash-looping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartBackoff {
    pub initial: Duration,
    pub max: Duration,
    pub min_uptime: Duration,
    pub crash_loop_after: u32,
}

impl Default for RestartBackoff {
    fn default() -> Self {
        RestartBackoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            min_uptime: Duration::from_secs(10),
            crash_loop_after: 3,
        }
    }
}

/// Per-replica memory of recent failures.
#[derive(Debug, Default, Clone)]
pub(crate) struct RestartTracker {
    fast_failures: u32,
}

impl RestartTracker {
    /// Records the end of a run and returns how long to wait before the next start.
    pub(crate) fn on_exit(&mut self, policy: &RestartBackoff, uptime: Duration, was_healthy: bool) -> Duration {
        if was_healthy && uptime >= policy.min_uptime {
            self.fast_failures = 0;
            return Duration::ZERO;
        }
        self.fast_failures = self.fast_failures.saturating_add(1);
        let doublings = (self.fast_failures - 1).min(20);
        policy.initial.saturating_mul(1 << doublings).min(policy.max)
    }

    /// A replica that stays healthy long enough forgets its past failures.
    pub(crate) fn on_healthy_for(&mut self, policy: &RestartBackoff, healthy_for: Duration) {
        if healthy_for >= policy.min_uptime {
            self.fast_failures = 0;
        }
    }

    pub(crate) fn crash_loop(&self, policy: &RestartBackoff) -> bool {
        self.fast_failures >= policy.crash_loop_after
    }

    pub(crate) fn fast_failures(&self) -> u32 {
        self.fast_failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(runs: &[(u64, bool)], expect_delays_ms: &[u64], expect_crash_loop: bool) {
        let policy = RestartBackoff::default();
        let mut tracker = RestartTracker::default();
        let delays: Vec<u64> = runs
            .iter()
            .map(|&(uptime_s, healthy)| {
                tracker.on_exit(&policy, Duration::from_secs(uptime_s), healthy).as_millis() as u64
            })
            .collect();
        assert_eq!(delays, expect_delays_ms);
        assert_eq!(tracker.crash_loop(&policy), expect_crash_loop);
    }

    #[test]
    fn a_good_run_restarts_at_once() {
        check(&[(60, true)], &[0], false);
    }

    #[test]
    fn fast_failures_double_up_to_the_cap() {
        check(&[(0, false); 10], &[250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000], true);
    }

    #[test]
    fn crash_loop_after_three_fast_failures() {
        check(&[(1, false), (1, false)], &[250, 500], false);
        check(&[(1, false), (1, false), (1, false)], &[250, 500, 1000], true);
    }

    #[test]
    fn a_good_run_resets_the_backoff() {
        check(&[(0, false), (0, false), (0, false), (30, true), (0, false)], &[250, 500, 1000, 0, 250], false);
    }

    #[test]
    fn long_but_never_healthy_is_a_failure() {
        check(&[(100, false), (100, false)], &[250, 500], false);
    }
}
