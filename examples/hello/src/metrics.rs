//! Request metrics and their Prometheus text exposition (format 0.0.4).
//!
//! `Metrics` is a plain value behind the server's mutex; rendering is a pure function of it and
//! of the gauges read at scrape time, so the output format is unit-tested byte for byte.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The upper bounds (seconds) of the request duration histogram. `/slow` answers after 2.5s by
/// default, so the buckets reach past it.
pub const DURATION_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters and the duration histogram, updated once per answered request.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Metrics {
    /// Requests by (route, status). Routes come from the router's fixed set, so the label
    /// values are bounded.
    requests: BTreeMap<(String, u16), u64>,
    /// Per-bucket (not cumulative) counts; the last slot holds observations above every bound.
    bucket_counts: [u64; DURATION_BUCKETS.len() + 1],
    duration_sum_seconds: f64,
    duration_count: u64,
}

/// Values read at scrape time rather than counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gauges {
    pub uptime_seconds: f64,
    /// Requests received but not answered yet, the scrape itself included.
    pub requests_in_flight: u64,
    pub leaked_bytes: u64,
}

impl Metrics {
    /// Records one answered request.
    pub fn observe(&mut self, route: &str, status: u16, duration: Duration) {
        *self.requests.entry((route.to_string(), status)).or_insert(0) += 1;
        let seconds = duration.as_secs_f64();
        let bucket_idx = DURATION_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(DURATION_BUCKETS.len());
        self.bucket_counts[bucket_idx] += 1;
        self.duration_sum_seconds += seconds;
        self.duration_count += 1;
    }

    /// Renders every metric in the Prometheus text format.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut res = String::new();

        header(&mut res, "hello_requests_total", "Requests answered, by route and status code.", "counter");
        for ((route, status), count) in &self.requests {
            let _ = writeln!(
                res,
                "hello_requests_total{{path=\"{}\",status=\"{status}\"}} {count}",
                escape_label_value(route)
            );
        }

        header(
            &mut res,
            "hello_request_duration_seconds",
            "Time from receiving a request to answering it.",
            "histogram",
        );
        let mut cumulative = 0;
        for (bound, count) in DURATION_BUCKETS.iter().zip(&self.bucket_counts) {
            cumulative += count;
            let _ = writeln!(res, "hello_request_duration_seconds_bucket{{le=\"{}\"}} {cumulative}", float(*bound));
        }
        let _ = writeln!(res, "hello_request_duration_seconds_bucket{{le=\"+Inf\"}} {}", self.duration_count);
        let _ = writeln!(res, "hello_request_duration_seconds_sum {}", float(self.duration_sum_seconds));
        let _ = writeln!(res, "hello_request_duration_seconds_count {}", self.duration_count);

        header(&mut res, "hello_requests_in_flight", "Requests received and not yet answered.", "gauge");
        let _ = writeln!(res, "hello_requests_in_flight {}", gauges.requests_in_flight);

        header(&mut res, "hello_uptime_seconds", "Seconds since the process started.", "gauge");
        let _ = writeln!(res, "hello_uptime_seconds {}", float(gauges.uptime_seconds));

        header(&mut res, "hello_leaked_bytes", "Bytes deliberately leaked by the leak fault switches.", "gauge");
        let _ = writeln!(res, "hello_leaked_bytes {}", gauges.leaked_bytes);

        res
    }
}

fn header(res: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(res, "# HELP {name} {help}");
    let _ = writeln!(res, "# TYPE {name} {kind}");
}

/// Formats a float the way Prometheus parses it; Rust's `Display` never uses exponents, and
/// the values here are finite.
fn float(value: f64) -> String {
    if value.is_finite() {
        format!("{value}")
    } else if value.is_nan() {
        "NaN".to_string()
    } else if value > 0.0 {
        "+Inf".to_string()
    } else {
        "-Inf".to_string()
    }
}

fn escape_label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_metrics_render_headers_and_zeroes() {
        let text = Metrics::default().render(Gauges { uptime_seconds: 1.5, requests_in_flight: 1, leaked_bytes: 0 });
        assert!(text.starts_with(
            "# HELP hello_requests_total Requests answered, by route and status code.\n\
             # TYPE hello_requests_total counter\n\
             # HELP hello_request_duration_seconds"
        ));
        assert!(text.contains("hello_request_duration_seconds_bucket{le=\"+Inf\"} 0\n"));
        assert!(text.ends_with(
            "hello_uptime_seconds 1.5\n\
             # HELP hello_leaked_bytes Bytes deliberately leaked by the leak fault switches.\n\
             # TYPE hello_leaked_bytes gauge\n\
             hello_leaked_bytes 0\n"
        ));
    }

    #[test]
    fn observations_render_exactly() {
        let mut metrics = Metrics::default();
        metrics.observe("/healthz", 200, Duration::from_millis(1));
        metrics.observe("/healthz", 200, Duration::from_millis(3));
        metrics.observe("/", 500, Duration::from_millis(300));
        metrics.observe("/slow", 200, Duration::from_secs(20));
        let text = metrics.render(Gauges { uptime_seconds: 12.25, requests_in_flight: 2, leaked_bytes: 1_048_576 });
        let expected = "\
# HELP hello_requests_total Requests answered, by route and status code.
# TYPE hello_requests_total counter
hello_requests_total{path=\"/\",status=\"500\"} 1
hello_requests_total{path=\"/healthz\",status=\"200\"} 2
hello_requests_total{path=\"/slow\",status=\"200\"} 1
# HELP hello_request_duration_seconds Time from receiving a request to answering it.
# TYPE hello_request_duration_seconds histogram
hello_request_duration_seconds_bucket{le=\"0.005\"} 2
hello_request_duration_seconds_bucket{le=\"0.01\"} 2
hello_request_duration_seconds_bucket{le=\"0.025\"} 2
hello_request_duration_seconds_bucket{le=\"0.05\"} 2
hello_request_duration_seconds_bucket{le=\"0.1\"} 2
hello_request_duration_seconds_bucket{le=\"0.25\"} 2
hello_request_duration_seconds_bucket{le=\"0.5\"} 3
hello_request_duration_seconds_bucket{le=\"1\"} 3
hello_request_duration_seconds_bucket{le=\"2.5\"} 3
hello_request_duration_seconds_bucket{le=\"5\"} 3
hello_request_duration_seconds_bucket{le=\"10\"} 3
hello_request_duration_seconds_bucket{le=\"+Inf\"} 4
hello_request_duration_seconds_sum 20.304
hello_request_duration_seconds_count 4
# HELP hello_requests_in_flight Requests received and not yet answered.
# TYPE hello_requests_in_flight gauge
hello_requests_in_flight 2
# HELP hello_uptime_seconds Seconds since the process started.
# TYPE hello_uptime_seconds gauge
hello_uptime_seconds 12.25
# HELP hello_leaked_bytes Bytes deliberately leaked by the leak fault switches.
# TYPE hello_leaked_bytes gauge
hello_leaked_bytes 1048576
";
        assert_eq!(text, expected);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NAN), "NaN");
    }
}
