//! Live state of one upstream endpoint (a replica instance), shared by every routing-table snapshot that
//! lists it: in-flight count, a peak-EWMA latency cost, failure streak, ejection and stall bookkeeping.
//!
//! Everything a request touches is an atomic (no lock: every worker's requests to the endpoint come
//! through here); snapshots come and go, this state stays for as long as the endpoint is in a table or has
//! requests in flight.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Latency assumed for an endpoint that has not answered yet: modest, so a new replica gets traffic soon
/// but not all of it at once.
const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast the latency cost forgets (peak-EWMA time constant, as linkerd2-proxy does it).
const DECAY: Duration = Duration::from_secs(10);
/// A failed answer is scored as if it took this long, so that an endpoint failing fast does not win
/// the latency comparison.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

pub(crate) struct EndpointState {
    pub(crate) instance: String,
    pub(crate) addr: SocketAddr,
    /// `addr` as a URI authority, built once rather than per request.
    pub(crate) authority: http::uri::Authority,
    epoch: Instant,
    outstanding: AtomicU32,
    /// The peak-EWMA cost (`f64` bits, nanoseconds) and when it was last updated (nanoseconds since
    /// `epoch`). Two answers observed at the same moment may overwrite each other: one sample of a moving
    /// average lost, which a lock on every answer would cost more than it is worth.
    cost_bits: AtomicU64,
    cost_stamp_ns: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch`; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    ejections: AtomicU32,
    /// Milliseconds since `epoch` of the last answer (or of becoming busy), for stall detection.
    last_progress_ms: AtomicU64,
    /// Slowly decaying maximum of observed latencies, in ms: what "slow but alive" means for this endpoint.
    slow_watermark_ms: AtomicU64,
    answered_once: std::sync::atomic::AtomicBool,
    /// Woken when the endpoint is ejected, so in-flight idempotent requests move elsewhere at once.
    pub(crate) ejected: Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    /// 5xx, connection failure, per-try timeout: counts towards ejection.
    Failure,
}

impl EndpointState {
    pub(crate) fn new(instance: String, addr: SocketAddr, epoch: Instant) -> EndpointState {
        let authority = http::uri::Authority::try_from(addr.to_string().as_str())
            .expect("a socket address is a valid URI authority");
        EndpointState {
            instance,
            addr,
            authority,
            epoch,
            outstanding: AtomicU32::new(0),
            cost_bits: AtomicU64::new((DEFAULT_RTT.as_nanos() as f64).to_bits()),
            cost_stamp_ns: AtomicU64::new(Instant::now().saturating_duration_since(epoch).as_nanos() as u64),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            last_progress_ms: AtomicU64::new(0),
            slow_watermark_ms: AtomicU64::new(0),
            answered_once: std::sync::atomic::AtomicBool::new(false),
            ejected: Notify::new(),
        }
    }

    pub(crate) fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Load score for power-of-two-choices: latency cost weighted by work in flight. Lower is better.
    pub(crate) fn load(&self, now: Instant) -> f64 {
        self.ewma().current(now) * f64::from(self.outstanding() + 1)
    }

    /// Marks a request as sent to this endpoint until the guard drops.
    #[cfg(test)]
    pub(crate) fn begin(&self) -> Attempt<'_> {
        self.begin_at(Instant::now())
    }

    /// `begin` for an attempt starting at `now` (the attempt loop has read the clock already).
    pub(crate) fn begin_at(&self, now: Instant) -> Attempt<'_> {
        if self.outstanding.fetch_add(1, Ordering::Relaxed) == 0 {
            // Idle until now: the stall clock starts with this request.
            self.last_progress_ms.store(self.ms_since_epoch(now), Ordering::Relaxed);
        }
        Attempt { endpoint: self, started: now }
    }

    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.ms_since_epoch(now) < until
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Ejects for `base × ejection count`, capped, and wakes the requests in flight on it.
    pub(crate) fn eject(&self, base: Duration, max: Duration, now: Instant) -> Duration {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let period = base.saturating_mul(n).min(max);
        let until = self.ms_since_epoch(now) + period.as_millis() as u64;
        self.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.ejected.notify_waiters();
        period
    }

    /// An endpoint is stalled when it has work in flight and has answered nothing for much longer than it
    /// ever needed: a hung process whose port is still open. (The stall watcher compares `stalls_at` itself.)
    #[cfg(test)]
    pub(crate) fn is_stalled(&self, now: Instant, min_stall: Duration) -> bool {
        self.stalls_at(min_stall).is_some_and(|at| now >= at)
    }

    /// When the endpoint counts as stalled if it answers nothing until then: `None` while it has no work in
    /// flight (or has never answered), when it cannot be before `min_stall` after its next request starts.
    pub(crate) fn stalls_at(&self, min_stall: Duration) -> Option<Instant> {
        if self.outstanding() == 0 || !self.answered_once.load(Ordering::Relaxed) {
            return None;
        }
        let threshold = (self.slow_watermark_ms.load(Ordering::Relaxed) * 4).max(min_stall.as_millis() as u64);
        let silent_since = self.last_progress_ms.load(Ordering::Relaxed);
        Some(self.epoch + Duration::from_millis(silent_since + threshold + 1))
    }

    /// Stores only what changes: every worker's answers from this endpoint come through here, and a store
    /// of the same value still takes the cache line from the other cores.
    fn observe(&self, rtt: Duration, now: Instant, outcome: Outcome) {
        store_if_changed(&self.last_progress_ms, self.ms_since_epoch(now));
        if !self.answered_once.load(Ordering::Relaxed) {
            self.answered_once.store(true, Ordering::Relaxed);
        }
        let sample = match outcome {
            Outcome::Success => {
                if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
                rtt
            }
            Outcome::Failure => {
                self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                rtt.max(FAILURE_PENALTY)
            }
        };
        let mut ewma = self.ewma();
        ewma.observe(sample, now);
        self.cost_bits.store(ewma.cost_ns.to_bits(), Ordering::Relaxed);
        self.cost_stamp_ns.store(ewma.stamp.saturating_duration_since(self.epoch).as_nanos() as u64, Ordering::Relaxed);
        if outcome == Outcome::Success {
            // Decay the watermark by ~1% per answer, raise it at once to any slower answer.
            let ms = rtt.as_millis() as u64;
            let old = self.slow_watermark_ms.load(Ordering::Relaxed);
            store_if_changed(&self.slow_watermark_ms, ms.max(old - old / 100));
        }
    }

    fn ewma(&self) -> PeakEwma {
        PeakEwma {
            cost_ns: f64::from_bits(self.cost_bits.load(Ordering::Relaxed)),
            stamp: self.epoch + Duration::from_nanos(self.cost_stamp_ns.load(Ordering::Relaxed)),
        }
    }

    fn ms_since_epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }
}

fn store_if_changed(cell: &AtomicU64, value: u64) {
    if cell.load(Ordering::Relaxed) != value {
        cell.store(value, Ordering::Relaxed);
    }
}

/// One attempt in flight on an endpoint; dropping it without `finish` (cancelled) records nothing but the
/// end of the work.
pub(crate) struct Attempt<'a> {
    endpoint: &'a EndpointState,
    started: Instant,
}

impl Attempt<'_> {
    pub(crate) fn finish(self, outcome: Outcome) {
        let now = Instant::now();
        self.endpoint.observe(now.saturating_duration_since(self.started), now, outcome);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Peak-sensitive exponentially weighted moving average of latency: jumps up at once, decays with time.
struct PeakEwma {
    cost_ns: f64,
    stamp: Instant,
}

impl PeakEwma {
    fn current(&self, now: Instant) -> f64 {
        self.cost_ns * (-(now.saturating_duration_since(self.stamp).as_secs_f64()) / DECAY.as_secs_f64()).exp().max(0.0)
    }

    fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt_ns = rtt.as_nanos() as f64;
        if rtt_ns > self.cost_ns {
            self.cost_ns = rtt_ns;
        } else {
            let elapsed = now.saturating_duration_since(self.stamp).as_secs_f64();
            let weight = (-elapsed / DECAY.as_secs_f64()).exp();
            self.cost_ns = self.cost_ns * weight + rtt_ns * (1.0 - weight);
        }
        self.stamp = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> EndpointState {
        EndpointState::new("web-0".into(), "127.0.0.1:1".parse().expect("addr"), Instant::now())
    }

    #[test]
    fn outstanding_follows_attempts() {
        let ep = endpoint();
        let a = ep.begin();
        let b = ep.begin();
        assert_eq!(ep.outstanding(), 2);
        a.finish(Outcome::Success);
        drop(b);
        assert_eq!(ep.outstanding(), 0);
    }

    #[test]
    fn failures_cost_more_than_fast_successes() {
        let (good, bad) = (endpoint(), endpoint());
        for _ in 0..5 {
            good.begin().finish(Outcome::Success);
            bad.begin().finish(Outcome::Failure);
        }
        let now = Instant::now();
        assert!(bad.load(now) > good.load(now) * 10.0);
        assert_eq!(bad.consecutive_failures(), 5);
        assert_eq!(good.consecutive_failures(), 0);
    }

    #[test]
    fn ejection_grows_with_each_ejection_and_is_capped() {
        let ep = endpoint();
        let now = Instant::now();
        let base = Duration::from_secs(30);
        let max = Duration::from_secs(300);
        assert_eq!(ep.eject(base, max, now), Duration::from_secs(30));
        assert!(ep.is_ejected(now));
        assert!(!ep.is_ejected(now + Duration::from_secs(31)));
        assert_eq!(ep.eject(base, max, now), Duration::from_secs(60));
        for _ in 0..20 {
            ep.eject(base, max, now);
        }
        assert_eq!(ep.eject(base, max, now), max);
    }

    #[test]
    fn a_silent_busy_endpoint_is_stalled_a_slow_one_is_not() {
        let ep = endpoint();
        let t0 = Instant::now();
        ep.begin().finish(Outcome::Success);
        let _pending = ep.begin();
        assert!(!ep.is_stalled(t0 + Duration::from_millis(500), Duration::from_secs(1)));
        assert!(ep.is_stalled(t0 + Duration::from_millis(1500), Duration::from_secs(1)));
        // An endpoint known to take 2 s per answer is given 4x that.
        ep.slow_watermark_ms.store(2000, Ordering::Relaxed);
        assert!(!ep.is_stalled(t0 + Duration::from_secs(5), Duration::from_secs(1)));
        assert!(ep.is_stalled(t0 + Duration::from_secs(9), Duration::from_secs(1)));
    }

    #[test]
    fn an_endpoint_stalls_when_its_silence_passes_the_threshold_and_not_before() {
        let ep = endpoint();
        let min_stall = Duration::from_secs(1);
        assert_eq!(ep.stalls_at(min_stall), None, "nothing in flight");
        ep.begin().finish(Outcome::Success);
        assert_eq!(ep.stalls_at(min_stall), None, "answered, nothing in flight");
        let _pending = ep.begin();
        let at = ep.stalls_at(min_stall).expect("work in flight");
        assert!(!ep.is_stalled(at - Duration::from_millis(1), min_stall));
        assert!(ep.is_stalled(at, min_stall));
    }
}
