//! Health judgement from a sequence of probe outcomes: a pure state machine with the clock passed in.

use std::time::{Duration, Instant};

use crate::config::HealthConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Starting,
    Healthy,
    /// Terminal: the instance is to be replaced.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transition {
    None,
    BecameHealthy,
    BecameUnhealthy,
    NeverHealthy,
}

#[derive(Debug)]
pub(crate) struct HealthTracker {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    start_deadline: Instant,
    phase: Phase,
    consecutive_ok: u32,
    consecutive_failures: u32,
}

impl HealthTracker {
    pub(crate) fn new(config: &HealthConfig, started: Instant) -> HealthTracker {
        HealthTracker {
            healthy_threshold: config.healthy_threshold.max(1),
            unhealthy_threshold: config.unhealthy_threshold.max(1),
            start_deadline: started + config.start_period,
            phase: Phase::Starting,
            consecutive_ok: 0,
            consecutive_failures: 0,
        }
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub(crate) fn observe(&mut self, ok: bool, now: Instant) -> Transition {
        if ok {
            self.consecutive_ok += 1;
            self.consecutive_failures = 0;
        } else {
            self.consecutive_ok = 0;
            self.consecutive_failures += 1;
        }
        match self.phase {
            Phase::Starting if self.consecutive_ok >= self.healthy_threshold => {
                self.phase = Phase::Healthy;
                Transition::BecameHealthy
            }
            Phase::Starting if now >= self.start_deadline => {
                self.phase = Phase::Failed;
                Transition::NeverHealthy
            }
            Phase::Healthy if self.consecutive_failures >= self.unhealthy_threshold => {
                self.phase = Phase::Failed;
                Transition::BecameUnhealthy
            }
            _ => Transition::None,
        }
    }

    /// How long to wait before the next probe. Starting instances are probed more often, so that a new
    /// replica enters rotation soon after it can serve.
    pub(crate) fn next_probe_in(&self, config: &HealthConfig) -> Duration {
        match self.phase {
            Phase::Starting => config.interval.min(Duration::from_millis(200)),
            _ => config.interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(outcomes: &[(bool, u64)], expect: &[Transition]) {
        let config = HealthConfig {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            start_period: Duration::from_secs(10),
            ..HealthConfig::default()
        };
        let t0 = Instant::now();
        let mut tracker = HealthTracker::new(&config, t0);
        let got: Vec<Transition> =
            outcomes.iter().map(|&(ok, at_s)| tracker.observe(ok, t0 + Duration::from_secs(at_s))).collect();
        assert_eq!(got, expect);
    }

    use Transition::*;

    #[test]
    fn healthy_after_threshold_successes() {
        check(&[(false, 1), (true, 2), (true, 3)], &[None, None, BecameHealthy]);
    }

    #[test]
    fn failures_during_start_period_do_not_count() {
        check(
            &[(false, 1), (false, 2), (false, 3), (false, 4), (true, 5), (true, 6)],
            &[None, None, None, None, None, BecameHealthy],
        );
    }

    #[test]
    fn never_healthy_by_the_deadline() {
        check(&[(false, 5), (true, 9), (false, 10)], &[None, None, NeverHealthy]);
    }

    #[test]
    fn unhealthy_after_consecutive_failures_only() {
        check(
            &[(true, 1), (true, 2), (false, 3), (false, 4), (true, 5), (false, 6), (false, 7), (false, 8)],
            &[None, BecameHealthy, None, None, None, None, None, BecameUnhealthy],
        );
    }
}
