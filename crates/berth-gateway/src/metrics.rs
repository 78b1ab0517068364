//! The gateway's metrics: lock-free counters per route, rendered in the Prometheus text exposition format
//! (version 0.0.4).
//!
//! The request path touches atomics only. A route's handle (`RouteMetrics`) is looked up once, when the
//! routing table is compiled, and the proxy keeps the `Arc`; starting and finishing a request then costs a
//! handful of relaxed atomic adds, with no lock, no map lookup and no allocation. Maps and locks are used only
//! at registration (`Metrics::route`), for the rare ejection, and at render time.
//!
//! Every label value except `service` and `route` comes from a bounded set (method, status class, reason),
//! so the number of series is bounded by the routes the gateway was ever given.

use std::collections::BTreeMap;
use std::fmt::{self, Write};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use rate_limit::{KeyClass, PoolMetrics, RateLimitMetrics};

mod rate_limit;

use crate::sharded::Sharded;

/// The metrics of one gateway: a registry of per-route handles plus per-service ejection counters.
///
/// Handles are never removed: a route that leaves the routing table keeps its series (frozen) until the
/// process exits, so counters never go backwards while a route is briefly absent during a redeploy.
#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<(String, String), Arc<RouteMetrics>>>,
    ejections: Mutex<BTreeMap<String, [u64; EJECT_REASONS.len()]>>,
    rate_limits: rate_limit::RateLimitRegistry,
    /// The response cache's counters (rendered only once a cached route exists).
    pub(crate) cache: Arc<crate::cache::CacheMetrics>,
    /// The workers' waits for answers on the CPU (rendered only when they poll, see `busy_poll.rs`).
    pub(crate) busy_polls: Arc<crate::busy_poll::PollCounts>,
}

/// Why outlier detection ejected a replica of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectReason {
    ConsecutiveFailures,
    Stalled,
}

/// Why a request was retried on another replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryReason {
    NeverSent,
    Status5xx,
    PerTryTimeout,
    Ejected,
}

/// The counters of one route of one service, updated with atomics only.
///
/// Arrays are indexed by the position of a label value in `METHODS`, `CODES`, `RETRY_REASONS` and the
/// latency buckets, which are listed in sorted order so rendering in index order is rendering sorted by label.
pub struct RouteMetrics {
    /// What every request moves, a copy per worker thread (see `sharded.rs`).
    counts: Sharded<RequestCounts>,
    retries: [AtomicU64; RETRY_REASONS.len()],
    budget_exhausted: AtomicU64,
}

/// One thread's share of a route's per-request counters.
#[derive(Default)]
struct RequestCounts {
    /// Per method and status class.
    requests: [[AtomicU64; CODES.len()]; METHODS.len()],
    /// Per method: one counter per bucket, the last one being +Inf. Not cumulative; summed at render time so
    /// recording a request is a single add.
    buckets: [[AtomicU64; BUCKET_LABELS.len()]; METHODS.len()],
    /// Per method: total latency in microseconds. Microseconds rather than nanoseconds so the sum cannot wrap
    /// in any realistic lifetime (u64 microseconds is over 5,000 years of latency at 100 busy seconds per second).
    sum_micros: [AtomicU64; METHODS.len()],
    /// Started minus finished on this thread; only the sum over threads is a count.
    in_flight: AtomicI64,
}

/// A request counted as in flight. `finish` records its status class and latency; dropping it unfinished
/// (the client went away and the handler future was dropped) records it as `code="cancelled"`.
pub struct InFlight<'r> {
    route: &'r RouteMetrics,
    method: usize,
    started: Instant,
    /// Set once the request is recorded, so `Drop` does not record it a second time.
    recorded: bool,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Get-or-create the handle of a route (called when the routing table is rebuilt, not per request).
    ///
    /// Registering a route also registers its service for `berth_gateway_ejections_total`, so the ejection
    /// counters exist (at zero) before the first ejection.
    pub fn route(&self, service: &str, route: &str) -> Arc<RouteMetrics> {
        let handle = lock(&self.routes)
            .entry((service.to_owned(), route.to_owned()))
            .or_insert_with(|| Arc::new(RouteMetrics::new()))
            .clone();
        let mut ejections = lock(&self.ejections);
        if !ejections.contains_key(service) {
            ejections.insert(service.to_owned(), [0; EJECT_REASONS.len()]);
        }
        handle
    }

    /// Counts one replica of `service` ejected by outlier detection.
    pub fn ejection(&self, service: &str, reason: EjectReason) {
        let mut ejections = lock(&self.ejections);
        let counts = match ejections.get_mut(service) {
            Some(counts) => counts,
            None => ejections.entry(service.to_owned()).or_default(),
        };
        counts[reason.idx()] += 1;
    }

    /// Prometheus text exposition format 0.0.4, deterministic order (sorted by labels).
    ///
    /// Families come in a fixed order, each with `# HELP` and `# TYPE` exactly once. Requests and latency
    /// series appear only for the methods and status classes seen; every other series of a registered
    /// route or service appears even at zero.
    pub fn render(&self, out: &mut String) {
        // Snapshot the registry so `route` (a routing-table rebuild) never waits on a render.
        let routes: Vec<((String, String), Arc<RouteMetrics>)> =
            lock(&self.routes).iter().map(|(key, handle)| (key.clone(), handle.clone())).collect();
        let ejections = lock(&self.ejections).clone();
        // Writing into a `String` cannot fail.
        let _ = render_families(out, &routes, &ejections);
        let _ = self.rate_limits.render(out);
        let _ = self.cache.render(out);
        let _ = self.busy_polls.render(out);
    }
}

impl RouteMetrics {
    /// Counts the request as in flight until the guard is finished or dropped.
    pub fn start(&self, method: &http::Method) -> InFlight<'_> {
        self.start_at(method, Instant::now())
    }

    /// `start` for a request received at `started` (the request path has read the clock already).
    pub(crate) fn start_at(&self, method: &http::Method, started: Instant) -> InFlight<'_> {
        self.counts.local().in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { route: self, method: method_idx(method), started, recorded: false }
    }

    /// Counts a retry on another replica.
    pub fn retry(&self, reason: RetryReason) {
        self.retries[reason.idx()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a retry that was wanted but refused by the retry budget.
    pub fn budget_exhausted(&self) {
        self.budget_exhausted.fetch_add(1, Ordering::Relaxed);
    }

    fn new() -> RouteMetrics {
        RouteMetrics { counts: Sharded::default(), retries: Default::default(), budget_exhausted: AtomicU64::new(0) }
    }

    fn record(&self, method: usize, code: usize, elapsed: Duration) {
        let counts = self.counts.local();
        counts.requests[method][code].fetch_add(1, Ordering::Relaxed);
        counts.buckets[method][bucket_idx(elapsed)].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        counts.sum_micros[method].fetch_add(micros, Ordering::Relaxed);
        // Last, so a request is never missing from both the gauge and the counters.
        counts.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The sum over threads of one of `RequestCounts`' counters.
    fn total(&self, counter: impl Fn(&RequestCounts) -> &AtomicU64) -> u64 {
        self.counts.sum(counter)
    }

    fn in_flight(&self) -> i64 {
        self.counts.all().map(|counts| counts.in_flight.load(Ordering::Relaxed)).sum()
    }
}

impl InFlight<'_> {
    /// Records the final status (what the client got) and the latency since `start`.
    pub fn finish(self, status: u16) {
        let elapsed = self.started.elapsed();
        self.record(status_class_idx(status), elapsed);
    }

    /// Records with a given latency: `finish` measures it; tests inject it for exact rendering.
    fn record(mut self, code: usize, elapsed: Duration) {
        self.recorded = true;
        self.route.record(self.method, code, elapsed);
    }
}

impl Drop for InFlight<'_> {
    /// Not finished means the client went away: counted with `code="cancelled"`, latency recorded.
    fn drop(&mut self) {
        if !self.recorded {
            self.route.record(self.method, CANCELLED, self.started.elapsed());
        }
    }
}

impl EjectReason {
    fn idx(self) -> usize {
        match self {
            EjectReason::ConsecutiveFailures => 0,
            EjectReason::Stalled => 1,
        }
    }
}

impl RetryReason {
    fn idx(self) -> usize {
        match self {
            RetryReason::Ejected => 0,
            RetryReason::NeverSent => 1,
            RetryReason::PerTryTimeout => 2,
            RetryReason::Status5xx => 3,
        }
    }
}

// Label sets, each in sorted order (ASCII, so uppercase methods sort before `other`).

const METHODS: [&str; 8] = ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "other"];
const OTHER_METHOD: usize = METHODS.len() - 1;
const CODES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "cancelled"];
const CANCELLED: usize = CODES.len() - 1;
const RETRY_REASONS: [&str; 4] = ["ejected", "never_sent", "per_try_timeout", "status_5xx"];
const EJECT_REASONS: [&str; 2] = ["consecutive_failures", "stalled"];

/// Upper bounds of the latency histogram; a request falls in the first bucket whose bound is not below its
/// latency, or in +Inf.
const BUCKET_BOUNDS: [Duration; 13] = [
    Duration::from_micros(1_000),
    Duration::from_micros(2_500),
    Duration::from_micros(5_000),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_millis(2_500),
    Duration::from_secs(5),
    Duration::from_secs(10),
];
/// The `le` label of each bucket, written out so rendering never depends on float formatting.
const BUCKET_LABELS: [&str; 14] =
    ["0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"];

const REQUESTS: &str = "berth_gateway_requests_total";
const DURATION: &str = "berth_gateway_request_duration_seconds";
const IN_FLIGHT: &str = "berth_gateway_requests_in_flight";
const RETRIES: &str = "berth_gateway_retries_total";
const BUDGET_EXHAUSTED: &str = "berth_gateway_retry_budget_exhausted_total";
const EJECTIONS: &str = "berth_gateway_ejections_total";

fn render_families(
    out: &mut String,
    routes: &[((String, String), Arc<RouteMetrics>)],
    ejections: &BTreeMap<String, [u64; EJECT_REASONS.len()]>,
) -> fmt::Result {
    family(
        out,
        REQUESTS,
        "counter",
        "Requests answered, by method and status class of the response the client got; \
         cancelled means the client went away first.",
    )?;
    for ((service, route), handle) in routes {
        for (method_idx, method) in METHODS.iter().enumerate() {
            for (code_idx, code) in CODES.iter().enumerate() {
                let n = handle.total(|counts| &counts.requests[method_idx][code_idx]);
                if n > 0 {
                    let labels = [("service", service.as_str()), ("route", route), ("method", method), ("code", code)];
                    sample(out, REQUESTS, "", &labels, n)?;
                }
            }
        }
    }

    family(
        out,
        DURATION,
        "histogram",
        "Time from receiving a request to the response head the client got, retries included.",
    )?;
    for ((service, route), handle) in routes {
        for (method_idx, method) in METHODS.iter().enumerate() {
            let counts: [u64; BUCKET_LABELS.len()] =
                std::array::from_fn(|bucket| handle.total(|counts| &counts.buckets[method_idx][bucket]));
            let n_total: u64 = counts.iter().sum();
            if n_total == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (le, count) in BUCKET_LABELS.iter().zip(counts) {
                cumulative += count;
                let labels = [("service", service.as_str()), ("route", route), ("method", method), ("le", le)];
                sample(out, DURATION, "_bucket", &labels, cumulative)?;
            }
            let labels = [("service", service.as_str()), ("route", route), ("method", method)];
            // Exact: a u64 of microseconds divided by a power of ten prints as the decimal it stands for.
            let sum_secs = handle.total(|counts| &counts.sum_micros[method_idx]) as f64 / 1e6;
            sample(out, DURATION, "_sum", &labels, sum_secs)?;
            sample(out, DURATION, "_count", &labels, n_total)?;
        }
    }

    family(out, IN_FLIGHT, "gauge", "Requests received and not yet answered.")?;
    for ((service, route), handle) in routes {
        let labels = [("service", service.as_str()), ("route", route)];
        sample(out, IN_FLIGHT, "", &labels, handle.in_flight())?;
    }

    family(out, RETRIES, "counter", "Attempts retried on another replica, by reason.")?;
    for ((service, route), handle) in routes {
        for (reason_idx, reason) in RETRY_REASONS.iter().enumerate() {
            let labels = [("service", service.as_str()), ("route", route), ("reason", reason)];
            sample(out, RETRIES, "", &labels, handle.retries[reason_idx].load(Ordering::Relaxed))?;
        }
    }

    family(out, BUDGET_EXHAUSTED, "counter", "Retries wanted but refused by the retry budget.")?;
    for ((service, route), handle) in routes {
        let labels = [("service", service.as_str()), ("route", route)];
        sample(out, BUDGET_EXHAUSTED, "", &labels, handle.budget_exhausted.load(Ordering::Relaxed))?;
    }

    family(out, EJECTIONS, "counter", "Replicas ejected by outlier detection, by reason.")?;
    for (service, counts) in ejections {
        for (reason, n) in EJECT_REASONS.iter().zip(counts) {
            sample(out, EJECTIONS, "", &[("service", service), ("reason", reason)], n)?;
        }
    }
    Ok(())
}

pub(crate) fn family(out: &mut String, name: &str, kind: &str, help: &str) -> fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {kind}")
}

/// Writes `name{label="value",...} value` with the label values escaped.
pub(crate) fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    value: impl fmt::Display,
) -> fmt::Result {
    write!(out, "{name}{suffix}{{")?;
    for (idx, (label, label_value)) in labels.iter().enumerate() {
        if idx > 0 {
            out.push(',');
        }
        write!(out, "{label}=\"")?;
        escape_label_value(out, label_value);
        out.push('"');
    }
    writeln!(out, "}} {value}")
}

/// Escapes a label value as the text format requires: backslash, double quote and line feed.
fn escape_label_value(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            ch => out.push(ch),
        }
    }
}

fn method_idx(method: &http::Method) -> usize {
    match method.as_str() {
        "DELETE" => 0,
        "GET" => 1,
        "HEAD" => 2,
        "OPTIONS" => 3,
        "PATCH" => 4,
        "POST" => 5,
        "PUT" => 6,
        _ => OTHER_METHOD,
    }
}

/// The status class of what the client got. `http::StatusCode` allows 100..=999; anything past 599 is not a
/// status a client can act on, so it is counted as a server error.
fn status_class_idx(status: u16) -> usize {
    match status {
        0..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

fn bucket_idx(elapsed: Duration) -> usize {
    BUCKET_BOUNDS.iter().position(|bound| elapsed <= *bound).unwrap_or(BUCKET_BOUNDS.len())
}

/// Locks a registry, ignoring poisoning: the maps hold only counters and handles, and a panic elsewhere must
/// not turn every later render into one.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;

/// Runs `promtool check metrics` (Debian package `prometheus`) on `out` and asserts it has nothing to say.
/// Without promtool on `PATH` it prints that the check was skipped (CI installs it).
#[cfg(test)]
pub(crate) fn promtool_check(out: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped: `promtool check metrics` (promtool is not on PATH; CI installs it)");
            return;
        }
        Err(error) => panic!("failed to start promtool: {error}"),
    };
    child.stdin.take().expect("stdin was piped").write_all(out.as_bytes()).expect("promtool reads all of stdin");
    let output = child.wait_with_output().expect("promtool runs to completion");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics: {}\nstdout: {stdout}\nstderr: {stderr}\ninput:\n{out}",
        output.status,
    );
}
