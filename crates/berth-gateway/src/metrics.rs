//! The gateway's metrics: lock-free counters per route, rendered in the Prometheus text format.
//!
//! The request path touches atomics only: a route's handle (`RouteMetrics`) is looked up when the routing
//! table is compiled, not per request. Label values come from bounded sets (method, status class, reason).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const METHODS: [&str; 8] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"];
const CODES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "cancelled"];
const CANCELLED: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectReason {
    ConsecutiveFailures,
    Stalled,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryReason {
    NeverSent,
    Status5xx,
    PerTryTimeout,
    Ejected,
}

const RETRY_REASONS: [&str; 4] = ["never_sent", "status_5xx", "per_try_timeout", "ejected"];
const EJECT_REASONS: [&str; 2] = ["consecutive_failures", "stalled"];

#[derive(Default)]
pub struct Metrics {
    routes: Mutex<BTreeMap<(String, String), Arc<RouteMetrics>>>,
    ejections: Mutex<BTreeMap<String, [u64; 2]>>,
}

/// Counters of one route of one service.
pub struct RouteMetrics {
    requests: [[AtomicU64; CODES.len()]; METHODS.len()],
    /// Per method: one counter per bucket (not cumulative; summed at render time) plus +Inf.
    buckets: [[AtomicU64; BUCKETS.len() + 1]; METHODS.len()],
    sum_micros: [AtomicU64; METHODS.len()],
    in_flight: AtomicI64,
    retries: [AtomicU64; RETRY_REASONS.len()],
    budget_exhausted: AtomicU64,
}

/// A request counted as in flight; `finish` records it, dropping it unfinished counts it as cancelled.
pub struct InFlight {
    route: Arc<RouteMetrics>,
    method: usize,
    started: Instant,
    finished: bool,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    pub fn route(&self, service: &str, route: &str) -> Arc<RouteMetrics> {
        lock(&self.routes)
            .entry((service.to_owned(), route.to_owned()))
            .or_insert_with(|| Arc::new(RouteMetrics::new()))
            .clone()
    }

    pub fn ejection(&self, service: &str, reason: EjectReason) {
        let idx = match reason {
            EjectReason::ConsecutiveFailures => 0,
            EjectReason::Stalled => 1,
        };
        lock(&self.ejections).entry(service.to_owned()).or_default()[idx] += 1;
    }

    pub fn render(&self, out: &mut String) {
        let routes = lock(&self.routes).clone();
        family(out, "berth_gateway_requests_total", "counter", "Requests by service, route, method and status class.");
        for ((service, route), m) in &routes {
            for (method_idx, method) in METHODS.iter().enumerate() {
                for (code_idx, code) in CODES.iter().enumerate() {
                    let n = m.requests[method_idx][code_idx].load(Ordering::Relaxed);
                    if n > 0 {
                        let labels =
                            labels(&[("service", service), ("route", route), ("method", method), ("code", code)]);
                        let _ = writeln!(out, "berth_gateway_requests_total{{{labels}}} {n}");
                    }
                }
            }
        }
        family(
            out,
            "berth_gateway_request_duration_seconds",
            "histogram",
            "Time to the response head, retries included.",
        );
        for ((service, route), m) in &routes {
            for (method_idx, method) in METHODS.iter().enumerate() {
                let counts: Vec<u64> = m.buckets[method_idx].iter().map(|b| b.load(Ordering::Relaxed)).collect();
                let total: u64 = counts.iter().sum();
                if total == 0 {
                    continue;
                }
                let base = labels(&[("service", service), ("route", route), ("method", method)]);
                let mut cumulative = 0;
                for (bound, count) in BUCKETS.iter().zip(&counts) {
                    cumulative += count;
                    let _ = writeln!(
                        out,
                        "berth_gateway_request_duration_seconds_bucket{{{base},le=\"{bound}\"}} {cumulative}"
                    );
                }
                let _ = writeln!(out, "berth_gateway_request_duration_seconds_bucket{{{base},le=\"+Inf\"}} {total}");
                let sum = m.sum_micros[method_idx].load(Ordering::Relaxed) as f64 / 1e6;
                let _ = writeln!(out, "berth_gateway_request_duration_seconds_sum{{{base}}} {sum}");
                let _ = writeln!(out, "berth_gateway_request_duration_seconds_count{{{base}}} {total}");
            }
        }
        family(out, "berth_gateway_requests_in_flight", "gauge", "Requests being answered now.");
        for ((service, route), m) in &routes {
            let labels = labels(&[("service", service), ("route", route)]);
            let _ = writeln!(
                out,
                "berth_gateway_requests_in_flight{{{labels}}} {}",
                m.in_flight.load(Ordering::Relaxed).max(0)
            );
        }
        family(out, "berth_gateway_retries_total", "counter", "Retries on another replica, by reason.");
        for ((service, route), m) in &routes {
            for (idx, reason) in RETRY_REASONS.iter().enumerate() {
                let labels = labels(&[("service", service), ("route", route), ("reason", reason)]);
                let _ =
                    writeln!(out, "berth_gateway_retries_total{{{labels}}} {}", m.retries[idx].load(Ordering::Relaxed));
            }
        }
        family(out, "berth_gateway_retry_budget_exhausted_total", "counter", "Retries refused by the retry budget.");
        for ((service, route), m) in &routes {
            let labels = labels(&[("service", service), ("route", route)]);
            let _ = writeln!(
                out,
                "berth_gateway_retry_budget_exhausted_total{{{labels}}} {}",
                m.budget_exhausted.load(Ordering::Relaxed)
            );
        }
        family(out, "berth_gateway_ejections_total", "counter", "Replicas ejected by outlier detection, by reason.");
        for (service, counts) in lock(&self.ejections).iter() {
            for (idx, reason) in EJECT_REASONS.iter().enumerate() {
                let labels = labels(&[("service", service), ("reason", reason)]);
                let _ = writeln!(out, "berth_gateway_ejections_total{{{labels}}} {}", counts[idx]);
            }
        }
    }
}

impl RouteMetrics {
    fn new() -> RouteMetrics {
        RouteMetrics {
            requests: Default::default(),
            buckets: Default::default(),
            sum_micros: Default::default(),
            in_flight: AtomicI64::new(0),
            retries: Default::default(),
            budget_exhausted: AtomicU64::new(0),
        }
    }

    pub fn start(self: &Arc<Self>, method: &http::Method) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { route: self.clone(), method: method_idx(method), started: Instant::now(), finished: false }
    }

    pub fn retry(&self, reason: RetryReason) {
        let idx = match reason {
            RetryReason::NeverSent => 0,
            RetryReason::Status5xx => 1,
            RetryReason::PerTryTimeout => 2,
            RetryReason::Ejected => 3,
        };
        self.retries[idx].fetch_add(1, Ordering::Relaxed);
    }

    pub fn budget_exhausted(&self) {
        self.budget_exhausted.fetch_add(1, Ordering::Relaxed);
    }

    fn record(&self, method: usize, code: usize, elapsed: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.requests[method][code].fetch_add(1, Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS.iter().position(|bound| secs <= *bound).unwrap_or(BUCKETS.len());
        self.buckets[method][bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros[method].fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }
}

impl InFlight {
    pub fn finish(mut self, status: u16) {
        self.finished = true;
        let code = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        self.route.record(self.method, code, self.started.elapsed());
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.finished {
            self.route.record(self.method, CANCELLED, self.started.elapsed());
        }
    }
}

fn method_idx(method: &http::Method) -> usize {
    METHODS.iter().position(|m| *m == method.as_str()).unwrap_or(METHODS.len() - 1)
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut res = String::new();
    for (idx, (name, value)) in pairs.iter().enumerate() {
        if idx > 0 {
            res.push(',');
        }
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        let _ = write!(res, "{name}=\"{escaped}\"");
    }
    res
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_histogram_and_cancellations() {
        let metrics = Metrics::new();
        let route = metrics.route("web", "/api");
        route.start(&http::Method::GET).finish(200);
        route.start(&http::Method::GET).finish(503);
        drop(route.start(&http::Method::POST));
        let pending = route.start(&http::Method::GET);
        route.retry(RetryReason::NeverSent);
        metrics.ejection("web", EjectReason::Stalled);
        let mut out = String::new();
        metrics.render(&mut out);
        for line in [
            r#"berth_gateway_requests_total{service="web",route="/api",method="GET",code="2xx"} 1"#,
            r#"berth_gateway_requests_total{service="web",route="/api",method="GET",code="5xx"} 1"#,
            r#"berth_gateway_requests_total{service="web",route="/api",method="POST",code="cancelled"} 1"#,
            r#"berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="+Inf"} 2"#,
            r#"berth_gateway_request_duration_seconds_count{service="web",route="/api",method="GET"} 2"#,
            r#"berth_gateway_requests_in_flight{service="web",route="/api"} 1"#,
            r#"berth_gateway_retries_total{service="web",route="/api",reason="never_sent"} 1"#,
            r#"berth_gateway_ejections_total{service="web",reason="stalled"} 1"#,
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line}\n{out}");
        }
        assert_eq!(out.matches("# TYPE berth_gateway_requests_total counter").count(), 1);
        drop(pending);
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(labels(&[("route", "/a\"b\\c\n")]), r#"route="/a\"b\\c\n""#);
    }

    #[test]
    fn concurrent_finishes_add_up() {
        let metrics = Arc::new(Metrics::new());
        let route = metrics.route("web", "/");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let route = route.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        route.start(&http::Method::GET).finish(200);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(out.contains(r#"berth_gateway_requests_total{service="web",route="/",method="GET",code="2xx"} 40000"#));
        assert!(out.contains(r#"berth_gateway_requests_in_flight{service="web",route="/"} 0"#));
    }
}
