//! The HTTP routes: identity, health, metrics, a slow and an echo endpoint, and the fault
//! switches under `/fault/`. Every answer passes through one middleware that counts it and
//! writes its access-log line.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::config::Config;
use crate::faults::{self, Flaky, Leak, MIB};
use crate::log::{AccessRecord, Logger, unix_millis};
use crate::metrics::{self, Gauges, Metrics};

/// The default wait of `/slow`.
pub const DEFAULT_SLOW_MS: u64 = 2500;
/// The longest wait `/slow` accepts, so a typo cannot pin a connection for days.
pub const MAX_SLOW_MS: u64 = 3_600_000;
/// The default size of one `/fault/leak`.
pub const DEFAULT_LEAK_MB: u64 = 10;

/// Shared by every request.
#[derive(Debug)]
pub struct AppState {
    pub logger: Logger,
    pub started: Instant,
    pub flaky: Flaky,
    pub unhealthy: AtomicBool,
    pub requests_in_flight: AtomicU64,
    pub metrics: Mutex<Metrics>,
    pub leak: Leak,
}

impl AppState {
    pub fn new(config: &Config, started: Instant) -> AppState {
        AppState {
            logger: Logger { format: config.log_format, identity: config.identity.clone() },
            started,
            flaky: Flaky::new(config.flaky_error_rate),
            unhealthy: AtomicBool::new(false),
            requests_in_flight: AtomicU64::new(0),
            metrics: Mutex::new(Metrics::default()),
            leak: Leak::default(),
        }
    }
}

/// Every route the router serves; these are the values of the `path` metric label.
pub const ROUTES: [&str; 12] = [
    "/",
    "/headers",
    "/healthz",
    "/ping",
    "/metrics",
    "/slow",
    "/echo",
    "/fault/crash",
    "/fault/hang",
    "/fault/unhealthy",
    "/fault/healthy",
    "/fault/leak",
];

/// Builds the service's router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/headers", get(headers_echo).post(headers_echo))
        .route("/healthz", get(healthz))
        .route("/ping", get(ping))
        .route("/metrics", get(metrics_text))
        .route("/slow", get(slow))
        .route("/echo", axum::routing::post(echo))
        .route("/fault/crash", get(fault_crash).post(fault_crash))
        .route("/fault/hang", get(fault_hang).post(fault_hang))
        .route("/fault/unhealthy", get(fault_unhealthy).post(fault_unhealthy))
        .route("/fault/healthy", get(fault_healthy).post(fault_healthy))
        .route("/fault/leak", get(fault_leak).post(fault_leak))
        .layer(middleware::from_fn_with_state(state.clone(), access_log))
        .with_state(state)
}

/// Leaks `mib_per_sec` MiB every second, forever.
pub async fn leak_continuously(state: Arc<AppState>, mib_per_sec: f64) {
    let bytes_per_tick = (mib_per_sec * MIB as f64) as u64;
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    loop {
        interval.tick().await;
        let leak_state = state.clone();
        let leaked = tokio::task::spawn_blocking(move || leak_state.leak.leak(bytes_per_tick)).await;
        if let Ok(Err(refused)) = leaked {
            state.logger.event("warn", &format!("leak of {} bytes refused by the allocator", refused.bytes));
        }
    }
}

async fn access_log(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let route = route_label(&path);
    let in_flight = InFlight::enter(&state.requests_in_flight);
    let response = next.run(request).await;
    drop(in_flight);
    let duration = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.lock().unwrap_or_else(PoisonError::into_inner).observe(route, status, duration);
    state.logger.access(AccessRecord { method: method.as_str(), path: &path, status, duration });
    response
}

async fn root(State(state): State<Arc<AppState>>) -> Response {
    if state.flaky.fails_next() {
        return flaky_error();
    }
    let identity = &state.logger.identity;
    axum::Json(json!({
        "service": identity.service,
        "replica": identity.replica,
        "release": identity.release,
        "pid": std::process::id(),
        "uptime_ms": state.started.elapsed().as_millis() as u64,
    }))
    .into_response()
}

/// The request headers as a JSON object (last value wins), plus the replica: lets tests see what a proxy
/// in front added or changed.
async fn headers_echo(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let mut map = serde_json::Map::new();
    for (name, value) in &headers {
        map.insert(name.as_str().to_owned(), json!(String::from_utf8_lossy(value.as_bytes())));
    }
    axum::Json(json!({ "replica": state.logger.identity.replica, "headers": map })).into_response()
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    health_answer(&state)
}

async fn ping(State(state): State<Arc<AppState>>) -> Response {
    if state.flaky.fails_next() {
        return flaky_error();
    }
    health_answer(&state)
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let gauges = Gauges {
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        requests_in_flight: state.requests_in_flight.load(Ordering::Relaxed),
        leaked_bytes: state.leak.total_bytes(),
    };
    let text = state.metrics.lock().unwrap_or_else(PoisonError::into_inner).render(gauges);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn slow(State(state): State<Arc<AppState>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let ms = match number_param(&query, "ms", DEFAULT_SLOW_MS) {
        Ok(ms) if ms <= MAX_SLOW_MS => ms,
        _ => {
            return bad_request(&format!("ms must be a number of milliseconds up to {MAX_SLOW_MS}"));
        }
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    axum::Json(json!({
        "generated_at_ms": unix_millis(),
        "replica": state.logger.identity.replica,
    }))
    .into_response()
}

async fn echo(headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(header::HeaderValue::from_static("application/octet-stream"));
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn fault_crash(State(state): State<Arc<AppState>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let code = match query.get("code").map(|code| code.trim().parse::<i32>()) {
        None => 1,
        Some(Ok(code)) => code,
        Some(Err(_)) => return bad_request("code must be an integer exit code"),
    };
    state.logger.event("warn", &format!("fault: exiting with code {code}"));
    faults::exit_soon(code);
    format!("exiting with code {code}").into_response()
}

async fn fault_hang(State(state): State<Arc<AppState>>) -> Response {
    state.logger.event("warn", "fault: hanging (SIGSTOP); send SIGCONT to resume");
    faults::hang_soon();
    "hanging".into_response()
}

async fn fault_unhealthy(State(state): State<Arc<AppState>>) -> Response {
    state.unhealthy.store(true, Ordering::Relaxed);
    state.logger.event("warn", "fault: health checks now fail");
    "health: unhealthy".into_response()
}

async fn fault_healthy(State(state): State<Arc<AppState>>) -> Response {
    state.unhealthy.store(false, Ordering::Relaxed);
    state.logger.event("info", "fault: health checks pass again");
    "health: ok".into_response()
}

async fn fault_leak(State(state): State<Arc<AppState>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let mb = match number_param(&query, "mb", DEFAULT_LEAK_MB) {
        Ok(mb) => mb,
        Err(()) => return bad_request("mb must be a whole number of MiB"),
    };
    let Some(bytes) = mb.checked_mul(MIB) else {
        return bad_request("mb is too large");
    };
    let leak_state = state.clone();
    let leaked = tokio::task::spawn_blocking(move || leak_state.leak.leak(bytes)).await;
    match leaked {
        Ok(Ok(total_bytes)) => {
            state.logger.event("warn", &format!("fault: leaked {mb} MiB, {total_bytes} bytes in total"));
            axum::Json(json!({
                "leaked_mb": mb,
                "total_leaked_bytes": total_bytes,
                "total_leaked_mb": total_bytes / MIB,
            }))
            .into_response()
        }
        Ok(Err(refused)) => {
            (StatusCode::INSUFFICIENT_STORAGE, format!("the allocator refused {} bytes", refused.bytes)).into_response()
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "leak task failed").into_response(),
    }
}

/// Counts a request as in flight until dropped, which also covers requests whose client went
/// away before the answer (axum then drops the handler's future).
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicU64) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The metric label for a request path: the route itself, or "unmatched", so that scanners
/// probing random paths cannot grow the label set.
fn route_label(path: &str) -> &'static str {
    ROUTES.iter().find(|route| **route == path).copied().unwrap_or("unmatched")
}

fn health_answer(state: &AppState) -> Response {
    if state.unhealthy.load(Ordering::Relaxed) {
        (StatusCode::INTERNAL_SERVER_ERROR, "unhealthy").into_response()
    } else {
        "ok".into_response()
    }
}

fn flaky_error() -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, "flaky error").into_response()
}

fn bad_request(message: &str) -> Response {
    (StatusCode::BAD_REQUEST, message.to_string()).into_response()
}

/// Reads a whole-number query parameter, or `default` when it is absent.
fn number_param(query: &HashMap<String, String>, key: &str, default: u64) -> Result<u64, ()> {
    match query.get(key) {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_bounded() {
        assert_eq!(route_label("/healthz"), "/healthz");
        assert_eq!(route_label("/fault/leak"), "/fault/leak");
        assert_eq!(route_label("/wp-admin.php"), "unmatched");
        assert_eq!(route_label("/healthz/"), "unmatched");
    }
}
