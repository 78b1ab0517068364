//! The generic cell rate algorithm (GCRA) on one `u64`: a key's theoretical arrival time (TAT), in
//! nanoseconds since the limiter's epoch. Pure: the caller brings the clock and stores the TAT.
//!
//! A key may send one request every `interval` on average and run up to `tolerance` (= burst × interval)
//! ahead of that schedule. A request at `now` is admitted when `max(tat, now) + interval - now <=
//! tolerance`, and then moves the TAT to `max(tat, now) + interval`. This admits exactly `burst` requests
//! at once from an idle key, then one per `interval`.
//!
//! A TAT at or before `now` decides exactly like no TAT at all (both start from `now`): such a key is at
//! full burst, and its entry can be dropped without changing any later decision. That is what lets the
//! store forget idle keys.

use std::time::Duration;

use crate::table::Rate;

/// A rate and burst in the form the algorithm uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Quota {
    /// Nanoseconds between requests at the steady rate (`per / requests`), at least 1.
    interval_ns: u64,
    /// How far ahead of the steady schedule a key may run (`burst × interval`).
    tolerance_ns: u64,
    burst: u32,
}

/// What the algorithm decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Admitted: store `tat` as the key's new TAT.
    Admit { tat: u64 },
    /// Refused: the key may send again in `wait_ns`.
    Reject { wait_ns: u64 },
}

impl Quota {
    /// `rate` with `burst` requests at once. A zero count or burst is treated as 1, so that a quota always
    /// admits something (the spec validator refuses zeros; this only keeps the arithmetic total).
    pub(crate) fn new(rate: Rate, burst: u32) -> Quota {
        let per_ns = u64::try_from(rate.per.as_nanos()).unwrap_or(u64::MAX).max(1);
        let interval_ns = (per_ns / u64::from(rate.requests.max(1))).max(1);
        let burst = burst.max(1);
        Quota { interval_ns, tolerance_ns: interval_ns.saturating_mul(u64::from(burst)), burst }
    }

    pub(crate) fn burst(&self) -> u32 {
        self.burst
    }

    /// The time a full burst takes to refill: the window the quota is advertised over.
    pub(crate) fn window(&self) -> Duration {
        Duration::from_nanos(self.tolerance_ns)
    }

    /// The decision for a request at `now` from a key whose TAT is `tat` (0 for a key never seen).
    pub(crate) fn check(&self, tat: u64, now: u64) -> Verdict {
        let next = tat.max(now).saturating_add(self.interval_ns);
        let ahead = next - now;
        if ahead <= self.tolerance_ns {
            Verdict::Admit { tat: next }
        } else {
            Verdict::Reject { wait_ns: ahead - self.tolerance_ns }
        }
    }

    /// Requests the key could still send at once after a request admitted with the new TAT `tat`.
    pub(crate) fn remaining(&self, tat: u64, now: u64) -> u32 {
        let ahead = tat.saturating_sub(now);
        let left = self.tolerance_ns.saturating_sub(ahead) / self.interval_ns;
        u32::try_from(left).unwrap_or(u32::MAX).min(self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn quota(requests: u32, per: Duration, burst: u32) -> Quota {
        Quota::new(Rate { requests, per }, burst)
    }

    /// Runs requests at the given times (ns) through one key and returns which were admitted.
    fn admitted(quota: Quota, times: impl IntoIterator<Item = u64>) -> Vec<bool> {
        let mut tat = 0;
        times
            .into_iter()
            .map(|now| match quota.check(tat, now) {
                Verdict::Admit { tat: next } => {
                    tat = next;
                    true
                }
                Verdict::Reject { .. } => false,
            })
            .collect()
    }

    #[test]
    fn an_idle_key_gets_exactly_its_burst_at_once() {
        let q = quota(20, Duration::from_secs(1), 20);
        let res = admitted(q, std::iter::repeat_n(5 * SEC, 30));
        assert_eq!(res.iter().filter(|a| **a).count(), 20);
        assert!(res[..20].iter().all(|a| *a) && res[20..].iter().all(|a| !*a));
    }

    #[test]
    fn steady_rate_after_the_burst_over_a_long_run() {
        // 250 requests per second for 30 s against 20/s with burst 20: 20 + 30 × 20 admitted.
        let q = quota(20, Duration::from_secs(1), 20);
        let times = (0..250 * 30).map(|i| SEC + i * SEC / 250);
        let n = admitted(q, times).iter().filter(|a| **a).count();
        assert!((619..=621).contains(&n), "{n}");
    }

    #[test]
    fn rejection_says_when_the_next_request_fits() {
        let q = quota(2, Duration::from_secs(1), 2);
        let now = 10 * SEC;
        let Verdict::Admit { tat } = q.check(0, now) else { panic!("first admitted") };
        assert_eq!(q.remaining(tat, now), 1);
        let Verdict::Admit { tat } = q.check(tat, now) else { panic!("second admitted") };
        assert_eq!(q.remaining(tat, now), 0);
        assert_eq!(q.check(tat, now), Verdict::Reject { wait_ns: SEC / 2 });
        assert!(matches!(q.check(tat, now + SEC / 2), Verdict::Admit { .. }));
    }

    #[test]
    fn a_past_tat_decides_like_no_tat() {
        let q = quota(5, Duration::from_secs(1), 3);
        for now in [SEC, 7 * SEC] {
            assert_eq!(q.check(now - 1, now), q.check(0, now));
            assert_eq!(q.check(now, now), q.check(0, now));
        }
    }

    #[test]
    fn extreme_quotas_do_not_overflow() {
        let q = quota(0, Duration::MAX, u32::MAX);
        assert!(matches!(q.check(0, u64::MAX - 1), Verdict::Admit { .. }));
        let q = quota(u32::MAX, Duration::from_nanos(1), 0);
        assert_eq!(q.burst(), 1);
        assert!(matches!(q.check(0, 0), Verdict::Admit { tat: 1 }));
    }
}
