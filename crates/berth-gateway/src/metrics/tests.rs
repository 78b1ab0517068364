use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicBool;
use std::thread;

use http::Method;

use super::*;

#[test]
fn renders_a_small_scenario_exactly() {
    check(
        &[
            finish("web", "/api", "GET", 200, 3_000),
            finish("web", "/api", "GET", 503, 40_000),
            cancel("web", "/api", "POST", 12_000_000),
            pending("web", "/api", "GET"),
            Event::Retry("web", "/api", RetryReason::NeverSent),
            Event::Retry("web", "/api", RetryReason::Status5xx),
            Event::BudgetExhausted("web", "/api"),
            Event::Register("admin", "/"),
            Event::Eject("web", EjectReason::Stalled),
        ],
        r#"
# HELP berth_gateway_requests_total Requests answered, by method and status class of the response the client got; cancelled means the client went away first.
# TYPE berth_gateway_requests_total counter
berth_gateway_requests_total{service="web",route="/api",method="GET",code="2xx"} 1
berth_gateway_requests_total{service="web",route="/api",method="GET",code="5xx"} 1
berth_gateway_requests_total{service="web",route="/api",method="POST",code="cancelled"} 1
# HELP berth_gateway_request_duration_seconds Time from receiving a request to the response head the client got, retries included.
# TYPE berth_gateway_request_duration_seconds histogram
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="0.001"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="0.0025"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="0.005"} 1
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="0.01"} 1
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="0.025"} 1
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="0.05"} 2
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="0.1"} 2
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="0.25"} 2
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="0.5"} 2
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="1"} 2
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="2.5"} 2
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="5"} 2
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="10"} 2
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="GET",le="+Inf"} 2
berth_gateway_request_duration_seconds_sum{service="web",route="/api",method="GET"} 0.043
berth_gateway_request_duration_seconds_count{service="web",route="/api",method="GET"} 2
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="0.001"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="0.0025"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="0.005"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="0.01"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="0.025"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="0.05"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="0.1"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="0.25"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="0.5"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="1"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="2.5"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="5"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="10"} 0
berth_gateway_request_duration_seconds_bucket{service="web",route="/api",method="POST",le="+Inf"} 1
berth_gateway_request_duration_seconds_sum{service="web",route="/api",method="POST"} 12
berth_gateway_request_duration_seconds_count{service="web",route="/api",method="POST"} 1
# HELP berth_gateway_requests_in_flight Requests received and not yet answered.
# TYPE berth_gateway_requests_in_flight gauge
berth_gateway_requests_in_flight{service="admin",route="/"} 0
berth_gateway_requests_in_flight{service="web",route="/api"} 1
# HELP berth_gateway_retries_total Attempts retried on another replica, by reason.
# TYPE berth_gateway_retries_total counter
berth_gateway_retries_total{service="admin",route="/",reason="ejected"} 0
berth_gateway_retries_total{service="admin",route="/",reason="never_sent"} 0
berth_gateway_retries_total{service="admin",route="/",reason="per_try_timeout"} 0
berth_gateway_retries_total{service="admin",route="/",reason="status_5xx"} 0
berth_gateway_retries_total{service="web",route="/api",reason="ejected"} 0
berth_gateway_retries_total{service="web",route="/api",reason="never_sent"} 1
berth_gateway_retries_total{service="web",route="/api",reason="per_try_timeout"} 0
berth_gateway_retries_total{service="web",route="/api",reason="status_5xx"} 1
# HELP berth_gateway_retry_budget_exhausted_total Retries wanted but refused by the retry budget.
# TYPE berth_gateway_retry_budget_exhausted_total counter
berth_gateway_retry_budget_exhausted_total{service="admin",route="/"} 0
berth_gateway_retry_budget_exhausted_total{service="web",route="/api"} 1
# HELP berth_gateway_ejections_total Replicas ejected by outlier detection, by reason.
# TYPE berth_gateway_ejections_total counter
berth_gateway_ejections_total{service="admin",reason="consecutive_failures"} 0
berth_gateway_ejections_total{service="admin",reason="stalled"} 0
berth_gateway_ejections_total{service="web",reason="consecutive_failures"} 0
berth_gateway_ejections_total{service="web",reason="stalled"} 1
"#,
    );
}

#[test]
fn renders_only_headers_when_nothing_is_registered() {
    check(
        &[],
        r#"
# HELP berth_gateway_requests_total Requests answered, by method and status class of the response the client got; cancelled means the client went away first.
# TYPE berth_gateway_requests_total counter
# HELP berth_gateway_request_duration_seconds Time from receiving a request to the response head the client got, retries included.
# TYPE berth_gateway_request_duration_seconds histogram
# HELP berth_gateway_requests_in_flight Requests received and not yet answered.
# TYPE berth_gateway_requests_in_flight gauge
# HELP berth_gateway_retries_total Attempts retried on another replica, by reason.
# TYPE berth_gateway_retries_total counter
# HELP berth_gateway_retry_budget_exhausted_total Retries wanted but refused by the retry budget.
# TYPE berth_gateway_retry_budget_exhausted_total counter
# HELP berth_gateway_ejections_total Replicas ejected by outlier detection, by reason.
# TYPE berth_gateway_ejections_total counter
"#,
    );
}

#[test]
fn escapes_label_values() {
    let route = "/a\"b\\c\nd";
    let out = render(&[finish("we\"b", route, "GET", 200, 1_000), Event::Eject("we\"b", EjectReason::Stalled)]);
    for line in [
        r#"berth_gateway_requests_total{service="we\"b",route="/a\"b\\c\nd",method="GET",code="2xx"} 1"#,
        r#"berth_gateway_requests_in_flight{service="we\"b",route="/a\"b\\c\nd"} 0"#,
        r#"berth_gateway_ejections_total{service="we\"b",reason="stalled"} 1"#,
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line}\n{out}");
    }
    assert!(!out.contains("c\nd"), "raw newline in a label value\n{out}");
    assert_well_formed(&out);
}

#[test]
fn histogram_buckets_are_cumulative_and_count_matches_requests() {
    let mut events = vec![finish("web", "/", "GET", 200, 0)];
    let mut sum_micros = 0;
    for (idx, bound) in BUCKET_BOUNDS.iter().enumerate() {
        let micros = u64::try_from(bound.as_micros()).expect("bounds are at most 10s");
        // Exactly on a bound falls in that bucket; one microsecond above falls in the next one.
        let status = [200, 404, 503, 302][idx % 4];
        events.push(finish("web", "/", "GET", status, micros));
        events.push(finish("web", "/", "GET", status, micros + 1));
        sum_micros += 2 * micros + 1;
    }
    events.push(cancel("web", "/", "GET", 60_000_000));
    sum_micros += 60_000_000;
    let out = render(&events);
    let samples = assert_well_formed(&out);

    let series = r#"service="web",route="/",method="GET""#;
    for (idx, le) in BUCKET_LABELS.iter().enumerate().take(BUCKET_BOUNDS.len()) {
        let expected = 1 + (idx + 1) + idx; // the zero, the exact hits so far, the just-above hits so far
        let got = samples[&format!("berth_gateway_request_duration_seconds_bucket{{{series},le=\"{le}\"}}")];
        assert_eq!(got, expected as f64, "le={le}\n{out}");
    }
    let n_requests = 1 + 2 * BUCKET_BOUNDS.len() + 1;
    let inf = samples[&format!("berth_gateway_request_duration_seconds_bucket{{{series},le=\"+Inf\"}}")];
    let count = samples[&format!("berth_gateway_request_duration_seconds_count{{{series}}}")];
    let requests: f64 = CODES
        .iter()
        .filter_map(|code| samples.get(&format!("berth_gateway_requests_total{{{series},code=\"{code}\"}}")))
        .sum();
    assert_eq!((inf, count, requests), (n_requests as f64, n_requests as f64, n_requests as f64), "{out}");
    let sum = samples[&format!("berth_gateway_request_duration_seconds_sum{{{series}}}")];
    assert_eq!(sum, sum_micros as f64 / 1e6, "{out}");
}

#[test]
fn dropped_guard_counts_as_cancelled_with_latency() {
    let metrics = Metrics::new();
    let route = metrics.route("web", "/");
    drop(route.start(&Method::PUT));
    route.start(&Method::PUT).finish(201);
    let samples = render_samples(&metrics);
    let series = r#"service="web",route="/",method="PUT""#;
    assert_eq!(samples[&format!("berth_gateway_requests_total{{{series},code=\"cancelled\"}}")], 1.0);
    assert_eq!(samples[&format!("berth_gateway_requests_total{{{series},code=\"2xx\"}}")], 1.0);
    assert_eq!(samples[&format!("berth_gateway_request_duration_seconds_count{{{series}}}")], 2.0);
    assert_eq!(samples[r#"berth_gateway_requests_in_flight{service="web",route="/"}"#], 0.0);
}

#[test]
fn in_flight_gauge_goes_up_and_back_down() {
    let metrics = Metrics::new();
    let route = metrics.route("web", "/");
    let gauge =
        |metrics: &Metrics| render_samples(metrics)[r#"berth_gateway_requests_in_flight{service="web",route="/"}"#];
    assert_eq!(gauge(&metrics), 0.0);
    let first = route.start(&Method::GET);
    let second = route.start(&Method::POST);
    let third = route.start(&Method::from_bytes(b"PROPFIND").expect("a valid method token"));
    assert_eq!(gauge(&metrics), 3.0);
    first.finish(200);
    assert_eq!(gauge(&metrics), 2.0);
    drop(second);
    third.finish(500);
    assert_eq!(gauge(&metrics), 0.0);
}

#[test]
fn route_returns_one_handle_per_service_and_route() {
    let metrics = Metrics::new();
    let first = metrics.route("web", "/api");
    assert!(Arc::ptr_eq(&first, &metrics.route("web", "/api")));
    assert!(!Arc::ptr_eq(&first, &metrics.route("web", "/")));
    assert!(!Arc::ptr_eq(&first, &metrics.route("api", "/api")));
    first.start(&Method::GET).finish(200);
    let samples = render_samples(&metrics);
    let series = r#"service="web",route="/api",method="GET",code="2xx""#;
    assert_eq!(samples[&format!("berth_gateway_requests_total{{{series}}}")], 1.0);
}

#[test]
fn methods_status_classes_and_buckets_map_to_their_labels() {
    for (idx, name) in METHODS.iter().enumerate().take(OTHER_METHOD) {
        let method = Method::from_bytes(name.as_bytes()).expect("a valid method token");
        assert_eq!(method_idx(&method), idx, "{name}");
    }
    for name in ["get", "CONNECT", "TRACE", "PROPFIND"] {
        let method = Method::from_bytes(name.as_bytes()).expect("a valid method token");
        assert_eq!(METHODS[method_idx(&method)], "other", "{name}");
    }
    for (status, class) in [
        (100, "1xx"),
        (199, "1xx"),
        (200, "2xx"),
        (299, "2xx"),
        (304, "3xx"),
        (400, "4xx"),
        (499, "4xx"),
        (500, "5xx"),
        (599, "5xx"),
        (999, "5xx"),
    ] {
        assert_eq!(CODES[status_class_idx(status)], class, "{status}");
    }
    for (bound, label) in BUCKET_BOUNDS.iter().zip(BUCKET_LABELS) {
        assert_eq!(label.parse::<f64>(), Ok(bound.as_secs_f64()), "{label}");
    }
    // Rendering in index order is rendering sorted by label only if every label set is sorted.
    for labels in [METHODS.as_slice(), &CODES, &RETRY_REASONS, &EJECT_REASONS] {
        assert!(labels.is_sorted(), "{labels:?}");
    }
}

#[test]
fn concurrent_finishes_add_up_exactly() {
    const N_THREADS: usize = 8;
    const N_PER_THREAD: usize = 10_000;
    let metrics = Arc::new(Metrics::new());
    let route = metrics.route("web", "/");
    let done = Arc::new(AtomicBool::new(false));
    let renderer = {
        let metrics = Arc::clone(&metrics);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut n_renders = 0;
            while !done.load(Ordering::Relaxed) || n_renders == 0 {
                let samples = render_samples(&metrics);
                let in_flight = samples[r#"berth_gateway_requests_in_flight{service="web",route="/"}"#];
                assert!((0.0..=N_THREADS as f64).contains(&in_flight), "in flight {in_flight}");
                n_renders += 1;
            }
        })
    };
    let workers: Vec<_> = (0..N_THREADS)
        .map(|_| {
            let route = Arc::clone(&route);
            thread::spawn(move || {
                for idx in 0..N_PER_THREAD {
                    let status = if idx % 4 == 0 { 503 } else { 200 };
                    route.start(&Method::GET).finish(status);
                    if idx % 2 == 0 {
                        route.retry(RetryReason::PerTryTimeout);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a worker does not panic");
    }
    done.store(true, Ordering::Relaxed);
    renderer.join().expect("the renderer does not panic");

    let samples = render_samples(&metrics);
    let n_total = (N_THREADS * N_PER_THREAD) as f64;
    let series = r#"service="web",route="/",method="GET""#;
    for (name, expected) in [
        (format!("berth_gateway_requests_total{{{series},code=\"2xx\"}}"), n_total * 0.75),
        (format!("berth_gateway_requests_total{{{series},code=\"5xx\"}}"), n_total * 0.25),
        (format!("berth_gateway_request_duration_seconds_count{{{series}}}"), n_total),
        (format!("berth_gateway_request_duration_seconds_bucket{{{series},le=\"+Inf\"}}"), n_total),
        (r#"berth_gateway_requests_in_flight{service="web",route="/"}"#.to_owned(), 0.0),
        (r#"berth_gateway_retries_total{service="web",route="/",reason="per_try_timeout"}"#.to_owned(), n_total / 2.0),
    ] {
        assert_eq!(samples.get(&name), Some(&expected), "{name}");
    }
}

#[test]
fn busy_scenario_passes_promtool() {
    let mut events = Vec::new();
    for (service, route) in [("web", "/"), ("web", "/api"), ("api", "/v1/"), ("we\"ird", "/a\\b\nc")] {
        for (idx, method) in METHODS.iter().enumerate() {
            let method = if *method == "other" { "PROPFIND" } else { method };
            for (status_idx, status) in [101, 200, 301, 404, 502].into_iter().enumerate() {
                let micros = 500 * 3_u64.pow(u32::try_from(idx + status_idx).expect("small"));
                events.push(finish(service, route, method, status, micros));
            }
            events.push(cancel(service, route, method, 20_000_000));
            events.push(pending(service, route, method));
        }
        for reason in [RetryReason::NeverSent, RetryReason::Status5xx, RetryReason::PerTryTimeout, RetryReason::Ejected]
        {
            events.push(Event::Retry(service, route, reason));
        }
        events.push(Event::BudgetExhausted(service, route));
        events.push(Event::Eject(service, EjectReason::ConsecutiveFailures));
    }
    events.push(Event::Register("idle", "/"));
    events.push(Event::Eject("unrouted", EjectReason::Stalled));
    let out = render(&events);
    assert_well_formed(&out);

    super::promtool_check(&out);
}

/// Something that happens to the metrics; `check` replays a list of them and compares the rendering.
enum Event {
    /// A request finished with a status after a latency in microseconds.
    Finish {
        service: &'static str,
        route: &'static str,
        method: &'static str,
        status: u16,
        micros: u64,
    },
    /// A request whose client went away after a latency in microseconds.
    Cancel {
        service: &'static str,
        route: &'static str,
        method: &'static str,
        micros: u64,
    },
    /// A request still in flight when the metrics are rendered.
    Pending {
        service: &'static str,
        route: &'static str,
        method: &'static str,
    },
    Retry(&'static str, &'static str, RetryReason),
    BudgetExhausted(&'static str, &'static str),
    Eject(&'static str, EjectReason),
    /// A route registered by a routing-table rebuild that saw no traffic.
    Register(&'static str, &'static str),
}

fn finish(service: &'static str, route: &'static str, method: &'static str, status: u16, micros: u64) -> Event {
    Event::Finish { service, route, method, status, micros }
}

fn cancel(service: &'static str, route: &'static str, method: &'static str, micros: u64) -> Event {
    Event::Cancel { service, route, method, micros }
}

fn pending(service: &'static str, route: &'static str, method: &'static str) -> Event {
    Event::Pending { service, route, method }
}

fn check(events: &[Event], expected: &str) {
    let out = render(events);
    let expected = expected.trim_start();
    assert_eq!(out, expected, "\n--- rendered ---\n{out}--- expected ---\n{expected}");
    assert_well_formed(&out);
}

/// Replays events (latencies injected, so the rendering is exact) and renders with requests still pending.
fn render(events: &[Event]) -> String {
    let metrics = Metrics::new();
    // The handles of pending requests, registered in event order as they come; the guards borrow them.
    let pending_routes: Vec<_> = events
        .iter()
        .map(|event| match *event {
            Event::Pending { service, route, .. } => Some(metrics.route(service, route)),
            _ => None,
        })
        .collect();
    let mut pending = Vec::new();
    let method = |name: &str| Method::from_bytes(name.as_bytes()).expect("tests use valid method tokens");
    for (event, pending_route) in events.iter().zip(&pending_routes) {
        match *event {
            Event::Finish { service, route, method: name, status, micros } => {
                let handle = metrics.route(service, route);
                handle.start(&method(name)).record(status_class_idx(status), Duration::from_micros(micros));
            }
            Event::Cancel { service, route, method: name, micros } => {
                let handle = metrics.route(service, route);
                handle.start(&method(name)).record(CANCELLED, Duration::from_micros(micros));
            }
            Event::Pending { method: name, .. } => {
                if let Some(handle) = pending_route {
                    pending.push(handle.start(&method(name)));
                }
            }
            Event::Retry(service, route, reason) => metrics.route(service, route).retry(reason),
            Event::BudgetExhausted(service, route) => metrics.route(service, route).budget_exhausted(),
            Event::Eject(service, reason) => metrics.ejection(service, reason),
            Event::Register(service, route) => drop(metrics.route(service, route)),
        }
    }
    let mut out = String::new();
    metrics.render(&mut out);
    // The pending guards were alive during the render; dropping them now records them as cancelled.
    drop(pending);
    out
}

fn render_samples(metrics: &Metrics) -> BTreeMap<String, f64> {
    let mut out = String::new();
    metrics.render(&mut out);
    assert_well_formed(&out)
}

/// Checks what promtool would, without promtool: each family once with HELP before TYPE, every sample in the
/// family last declared, no duplicate series, histograms cumulative with `+Inf` equal to `_count`. Returns the
/// samples by series.
fn assert_well_formed(text: &str) -> BTreeMap<String, f64> {
    let mut families = BTreeSet::new();
    let mut current: Option<(&str, &str)> = None;
    let mut samples = BTreeMap::new();
    let mut previous_bucket: Option<(String, f64)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("HELP has a name and a text");
            assert!(families.insert(name), "family {name} declared twice\n{text}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a name and a kind");
            assert!(families.contains(name), "TYPE before HELP for {name}");
            current = Some((name, kind));
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a series and a value");
        let value: f64 = value.parse().expect("sample values are numbers");
        let name = series.split_once('{').map_or(series, |(name, _)| name);
        let (family, kind) = current.expect("samples follow a TYPE line");
        let suffix = name.strip_prefix(family).unwrap_or_else(|| panic!("{name} outside family {family}"));
        match kind {
            "histogram" => assert!(["_bucket", "_sum", "_count"].contains(&suffix), "{name}"),
            _ => assert_eq!(suffix, "", "{name}"),
        }
        if suffix == "_bucket" {
            let (base, _) = series.rsplit_once(",le=").expect("a bucket has an le label");
            if let Some((previous_base, previous_value)) = &previous_bucket
                && previous_base == base
            {
                assert!(value >= *previous_value, "buckets not cumulative at {series}\n{text}");
            }
            previous_bucket = Some((base.to_owned(), value));
        }
        if suffix == "_count" {
            let base = series.strip_prefix(name).expect("series starts with its name");
            let inf = format!("{family}_bucket{},le=\"+Inf\"}}", base.trim_end_matches('}'));
            assert_eq!(samples.get(&inf), Some(&value), "+Inf bucket differs from {series}\n{text}");
        }
        assert!(samples.insert(series.to_owned(), value).is_none(), "duplicate series {series}\n{text}");
    }
    samples
}
