//! Per replica group numbers: how many requests each group of a service finished, how many of them failed,
//! and how long they took. Canary analysis compares a new release's group with the stable one from these.
//!
//! A request counts for the group of the replica that handled its last attempt, once its final status is
//! known: the status the client got, so a gateway 502/503/504 or timeout after that attempt is the group's
//! failure, and a failure a retry hid on another group's replica is not. A request that never reached a
//! replica (rate limited, no replica in rotation) belongs to no group. A request whose client went away while
//! a replica was working on it counts as failed, with the time it had run: a canary that hangs must not look
//! better than one that answers 500.
//!
//! Counters are cumulative and live in the gateway's `Registry`, keyed by (service, group), so routing-table
//! updates (a canary's weight changing from 5 to 25) keep them. A caller takes two readings and subtracts
//! them (`GroupStats::since`) to get the numbers of a window. Recording is three relaxed atomic adds.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sharded::Sharded;
use std::time::{Duration, Instant};

use crate::endpoint::EndpointState;
use crate::metrics::{family, sample};
use crate::table::ServiceEntry;

/// The numbers of one replica group of a service: cumulative since the gateway first saw the group, or a
/// window's worth after `since`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStats {
    /// `Upstream::group`.
    pub group: String,
    /// Requests whose final answer (or the client going away) came after an attempt on this group.
    pub requests: u64,
    /// Of `requests`, those the client got a 5xx for (the replica's or the gateway's own 502/503/504), plus
    /// those whose client went away while a replica of the group had the request.
    pub failures: u64,
    /// Whole-request durations (retries included) until the response head.
    pub latency: LatencyHistogram,
}

/// A latency histogram with fixed buckets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Upper bounds of the buckets, ascending; a duration falls in the first bucket whose bound is not below it.
    pub bounds: Vec<Duration>,
    /// Per bucket, not cumulative; `bounds.len() + 1` entries, the last one counting what is above every bound.
    pub counts: Vec<u64>,
}

impl GroupStats {
    /// The numbers of the window between `earlier` and `self` (two readings of the same group). Saturating:
    /// a counter that went backwards (the group left the table with its service and came back) gives 0, never
    /// an underflow. A histogram with other bounds than `earlier`'s is taken whole.
    pub fn since(&self, earlier: &GroupStats) -> GroupStats {
        GroupStats {
            group: self.group.clone(),
            requests: self.requests.saturating_sub(earlier.requests),
            failures: self.failures.saturating_sub(earlier.failures),
            latency: self.latency.since(&earlier.latency),
        }
    }

    /// `failures / requests`, or `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.failures as f64 / self.requests as f64)
    }
}

impl LatencyHistogram {
    /// An empty histogram with the gateway's buckets (5 ms to 10 s, about 1.5x apart).
    pub fn new() -> LatencyHistogram {
        LatencyHistogram { bounds: BOUNDS.to_vec(), counts: vec![0; BOUNDS.len() + 1] }
    }

    /// Counts one duration.
    pub fn record(&mut self, latency: Duration) {
        let idx = self.bounds.iter().position(|bound| latency <= *bound).unwrap_or(self.bounds.len());
        if let Some(count) = self.counts.get_mut(idx) {
            *count += 1;
        }
    }

    /// Durations counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The `q` quantile (`0.9` for p90), interpolated linearly within its bucket as Prometheus's
    /// `histogram_quantile` does: exact to within one bucket's width. `None` for an empty histogram or a
    /// `q` that is not a number; `q` is clamped to `0..=1`. A quantile in the overflow bucket is reported as
    /// the highest bound (the histogram knows nothing above it).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if q.is_nan() {
            return None;
        }
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (idx, count) in self.counts.iter().copied().enumerate() {
            if count == 0 || ((below + count) as f64) < rank {
                below += count;
                continue;
            }
            let Some(upper) = self.bounds.get(idx).copied() else {
                return self.bounds.last().copied();
            };
            let lower = if idx == 0 { Duration::ZERO } else { self.bounds[idx - 1] };
            let within = ((rank - below as f64) / count as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower).mul_f64(within));
        }
        self.bounds.last().copied()
    }

    fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        if self.bounds != earlier.bounds || self.counts.len() != earlier.counts.len() {
            return self.clone();
        }
        let counts = self.counts.iter().zip(&earlier.counts).map(|(now, then)| now.saturating_sub(*then)).collect();
        LatencyHistogram { bounds: self.bounds.clone(), counts }
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

/// The live counters of one (service, group); the request path updates them with relaxed atomics.
/// A copy per worker thread (see `sharded.rs`).
pub(crate) struct GroupCounters {
    counts: Sharded<Counts>,
}

/// One thread's share of a group's counters.
#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    failures: AtomicU64,
    buckets: [AtomicU64; BOUNDS.len() + 1],
}

impl GroupCounters {
    pub(crate) fn new() -> GroupCounters {
        GroupCounters { counts: Sharded::default() }
    }

    fn record(&self, failed: bool, latency: Duration) {
        let counts = self.counts.local();
        let idx = BOUNDS.iter().position(|bound| latency <= *bound).unwrap_or(BOUNDS.len());
        counts.buckets[idx].fetch_add(1, Ordering::Relaxed);
        if failed {
            counts.failures.fetch_add(1, Ordering::Relaxed);
        }
        // Last, so a reading never shows more failures than requests.
        counts.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn total(&self, counter: impl Fn(&Counts) -> &AtomicU64) -> u64 {
        self.counts.sum(counter)
    }

    pub(crate) fn read(&self, group: &str) -> GroupStats {
        // Requests first: a request recorded meanwhile can then only add failures and buckets, never a
        // request without its failure.
        let requests = self.total(|counts| &counts.requests);
        let failures = self.total(|counts| &counts.failures).min(requests);
        let counts = (0..=BOUNDS.len()).map(|idx| self.total(|counts| &counts.buckets[idx])).collect();
        GroupStats {
            group: group.to_owned(),
            requests,
            failures,
            latency: LatencyHistogram { bounds: BOUNDS.to_vec(), counts },
        }
    }
}

/// A request on its way to a group: knows the endpoint of the latest attempt (set by the attempt loop) and
/// records the request for that endpoint's group when finished, or as failed when dropped unfinished (the
/// client went away).
pub(crate) struct GroupRecord<'a> {
    service: &'a ServiceEntry,
    started: Instant,
    /// The endpoint of the latest attempt; `None` while no attempt has started.
    pub(crate) endpoint: Option<&'a Arc<EndpointState>>,
}

impl<'a> GroupRecord<'a> {
    pub(crate) fn new(service: &'a ServiceEntry, started: Instant) -> GroupRecord<'a> {
        GroupRecord { service, started, endpoint: None }
    }

    /// Records the final status the client got.
    pub(crate) fn finish(mut self, status: u16) {
        self.record(status >= 500);
    }

    fn record(&mut self, failed: bool) {
        let Some(endpoint) = self.endpoint.take() else { return };
        if let Some(group) = self.service.group_of(endpoint) {
            group.stats.record(failed, self.started.elapsed());
        }
    }
}

impl Drop for GroupRecord<'_> {
    fn drop(&mut self) {
        // `finish` took the endpoint; one still here means the request was abandoned mid-attempt.
        self.record(true);
    }
}

const REQUESTS: &str = "berth_gateway_group_requests_total";
const FAILURES: &str = "berth_gateway_group_failures_total";

/// Renders the per-group families (only once some service has a group, so a gateway without any exposes
/// exactly what it did before).
pub(crate) fn render(out: &mut String, groups: &[((String, String), Arc<GroupCounters>)]) {
    // Writing into a `String` cannot fail.
    let _ = render_families(out, groups);
}

fn render_families(out: &mut String, groups: &[((String, String), Arc<GroupCounters>)]) -> fmt::Result {
    if groups.is_empty() {
        return Ok(());
    }
    let help = "Requests finished after an attempt on a replica group, by the group of the last attempt's replica.";
    family(out, REQUESTS, "counter", help)?;
    for ((service, group), counters) in groups {
        let labels = [("service", service.as_str()), ("group", group.as_str())];
        sample(out, REQUESTS, "", &labels, counters.total(|counts| &counts.requests))?;
    }
    let help = "Of berth_gateway_group_requests_total, those the client got a 5xx for or gave up on.";
    family(out, FAILURES, "counter", help)?;
    for ((service, group), counters) in groups {
        let labels = [("service", service.as_str()), ("group", group.as_str())];
        sample(out, FAILURES, "", &labels, counters.total(|counts| &counts.failures))?;
    }
    Ok(())
}

/// Bucket bounds: about 1.5x apart from 5 ms to 10 s, finer than the Prometheus histogram's, because a
/// p90 read from them is compared against limits such as 400 ms.
const BOUNDS: [Duration; 20] = [
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(15),
    Duration::from_millis(20),
    Duration::from_millis(30),
    Duration::from_millis(50),
    Duration::from_millis(75),
    Duration::from_millis(100),
    Duration::from_millis(150),
    Duration::from_millis(200),
    Duration::from_millis(300),
    Duration::from_millis(400),
    Duration::from_millis(500),
    Duration::from_millis(750),
    Duration::from_secs(1),
    Duration::from_millis(1_500),
    Duration::from_secs(2),
    Duration::from_secs(3),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(latencies_ms: &[u64]) -> LatencyHistogram {
        let mut res = LatencyHistogram::new();
        for ms in latencies_ms {
            res.record(Duration::from_millis(*ms));
        }
        res
    }

    fn stats(requests: u64, failures: u64, latency: LatencyHistogram) -> GroupStats {
        GroupStats { group: "next".to_owned(), requests, failures, latency }
    }

    #[test]
    fn durations_fall_in_the_first_bucket_not_below_them() {
        let res = histogram(&[0, 5, 6, 10_000, 10_001]);
        assert_eq!(res.counts.len(), res.bounds.len() + 1);
        assert_eq!(res.counts[0], 2, "0 and 5 ms: bounds are inclusive");
        assert_eq!(res.counts[1], 1);
        assert_eq!(res.counts[res.bounds.len() - 1], 1, "10 s is the last bound");
        assert_eq!(res.counts[res.bounds.len()], 1, "above every bound");
        assert_eq!(res.total(), 5);
    }

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        // 10 in (10, 15] ms and 10 in (300, 400] ms.
        let res = histogram(&[12; 10].into_iter().chain([350; 10]).collect::<Vec<_>>());
        assert_eq!(res.quantile(0.5), Some(Duration::from_millis(15)), "rank 10 is the top of the first bucket");
        assert_eq!(res.quantile(0.25), Some(Duration::from_micros(12_500)), "halfway through (10, 15]");
        assert_eq!(res.quantile(0.9), Some(Duration::from_millis(380)), "8 of 10 through (300, 400]");
        assert_eq!(res.quantile(1.0), Some(Duration::from_millis(400)));
        assert_eq!(res.quantile(0.0), Some(Duration::from_millis(10)), "the bottom of the lowest used bucket");
        assert_eq!(res.quantile(7.0), res.quantile(1.0), "clamped");
        assert_eq!(res.quantile(f64::NAN), None);
        assert_eq!(LatencyHistogram::new().quantile(0.9), None, "nothing to say about an empty histogram");
    }

    #[test]
    fn a_quantile_above_every_bound_is_the_highest_bound() {
        let res = histogram(&[1, 60_000, 60_000]);
        assert_eq!(res.quantile(0.9), Some(Duration::from_secs(10)));
        assert_eq!(res.quantile(0.1), Some(Duration::from_micros(1_500)), "30% into (0, 5] ms");
    }

    #[test]
    fn since_is_the_window_and_saturates() {
        let earlier = stats(10, 2, histogram(&[12; 10]));
        let later = stats(25, 3, histogram(&[12; 10].into_iter().chain([350; 15]).collect::<Vec<_>>()));
        let window = later.since(&earlier);
        assert_eq!((window.requests, window.failures), (15, 1));
        assert_eq!(window.latency, histogram(&[350; 15]));
        assert_eq!(window.error_rate(), Some(1.0 / 15.0));

        let reset = earlier.since(&later);
        assert_eq!((reset.requests, reset.failures, reset.latency.total()), (0, 0, 0), "no underflow");
        assert_eq!(reset.error_rate(), None);

        let other_bounds = LatencyHistogram { bounds: vec![Duration::from_secs(1)], counts: vec![1, 0] };
        assert_eq!(later.latency.since(&other_bounds), later.latency, "incomparable: taken whole");
    }

    #[test]
    fn counters_read_back_what_was_recorded() {
        let counters = GroupCounters::new();
        counters.record(false, Duration::from_millis(12));
        counters.record(true, Duration::from_millis(350));
        counters.record(false, Duration::from_secs(60));
        let read = counters.read("stable");
        assert_eq!(read, stats(3, 1, histogram(&[12, 350, 60_000])).with_group("stable"));
    }

    impl GroupStats {
        fn with_group(mut self, group: &str) -> GroupStats {
            self.group = group.to_owned();
            self
        }
    }
}
