//! An open-loop, fixed-rate HTTP/1.1 load generator for integration tests: it issues request `i`
//! at `start + i / rate` whether or not earlier requests have finished (no coordinated omission),
//! runs in the background while the test does other things, and afterwards reports counts per
//! method, statuses, transport errors and latency percentiles.
//!
//! One scheduler thread hands due requests to a pool of worker threads that grows on demand up to
//! `max_in_flight`. Each worker keeps one keep-alive connection and reconnects after an error or a
//! `Connection: close`. Latency is measured from the time a request was scheduled, not from the time
//! a worker picked it up, so a late generator shows up in the numbers instead of hiding.
//! Responses are parsed by the same reader as [`crate::http_request`]; [`start_observed`] also hands each
//! one (status, headers, body, arrival time) to a callback, for checks on the content.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::http::{read_response, request_head};

/// What to send, how fast and for how long.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub addr: SocketAddr,
    /// Requests issued per second, e.g. `120.0`.
    pub rate_per_sec: f64,
    /// How long to issue requests; request `i` is due at `i / rate_per_sec` if that is before `duration`.
    pub duration: Duration,
    /// Cycled round-robin: request `i` is `requests[i % requests.len()]`.
    pub requests: Vec<RequestSpec>,
    /// The client's own timeout for one request (connecting, writing and reading the response).
    pub timeout: Duration,
    /// Bound on concurrent requests. A request due while this many are in flight is not sent and
    /// counts as the error `"saturated"`; it is never silently skipped.
    pub max_in_flight: usize,
}

/// One request to cycle through.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub method: String,
    /// The request target, e.g. `/hello?x=1`.
    pub path: String,
    /// The `Host` header; empty means the address the load is sent to.
    pub host: String,
    /// Extra headers. `Host`, `Connection: keep-alive` and `Content-Length` (for a body, or for
    /// POST/PUT/PATCH) are added unless set here.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A run in progress; [`LoadRun::wait`] ends it and returns the report. Dropping it without
/// waiting stops issuing new requests; requests in flight finish on their own within `timeout`.
pub struct LoadRun {
    started: Instant,
    scheduler: Option<JoinHandle<LoadReport>>,
    /// Dropping this sender tells the scheduler to stop early.
    stop: Option<Sender<()>>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Requests actually issued (saturated ones are not counted here).
    pub sent: u64,
    /// Outcomes per request method, keyed by [`RequestSpec::method`] as given.
    pub by_method: BTreeMap<String, MethodReport>,
    /// How long requests were actually issued for: the schedule window as it really ran, without the
    /// wait for the last responses.
    pub duration: Duration,
    /// `sent` per second of `duration`.
    pub achieved_rate: f64,
}

/// Outcomes of the requests of one method.
#[derive(Debug, Clone, Default)]
pub struct MethodReport {
    /// Responses with a 2xx or 3xx status.
    pub ok: u64,
    /// Every status seen, with its count.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests without a response, by kind: "timeout", "connection refused", "reset", "closed",
    /// "invalid response", "saturated" (not sent), or the `io::ErrorKind` in words.
    pub errors: BTreeMap<String, u64>,
    /// Latency of every request that got a response (any status), in microseconds, measured from
    /// the time the request was scheduled. Sorted ascending in a finished report.
    pub latencies_us: Vec<u64>,
    /// The first 50 failures: when the request was scheduled (since the start of the run), and the
    /// status with the start of the body, or the error.
    pub failures: Vec<(Duration, String)>,
}

/// What a response looked like, for [`start_observed`]'s callback.
#[derive(Debug)]
pub struct Received<'a> {
    pub status: u16,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    /// When the whole response had been read.
    pub at: Instant,
    /// Measured like [`MethodReport::latencies_us`]: from the time the request was scheduled.
    pub latency: Duration,
}

/// Called on a worker thread with every response as soon as it is read (e.g. to check a timestamp in the
/// body against the time it arrived).
pub type OnResponse = Arc<dyn Fn(&Received<'_>) + Send + Sync>;

/// Starts the load on background threads and returns at once.
///
/// # Panics
///
/// Panics if `requests` is empty, `rate_per_sec` is not a positive finite number, or
/// `max_in_flight` is 0: these are mistakes in the test, not conditions to report.
pub fn start(config: LoadConfig) -> LoadRun {
    start_inner(config, None)
}

/// [`start`], and calls `on_response` with every response the run gets.
///
/// # Panics
///
/// As [`start`].
pub fn start_observed(config: LoadConfig, on_response: OnResponse) -> LoadRun {
    start_inner(config, Some(on_response))
}

fn start_inner(config: LoadConfig, on_response: Option<OnResponse>) -> LoadRun {
    assert!(!config.requests.is_empty(), "load config has no requests to send");
    assert!(
        config.rate_per_sec.is_finite() && config.rate_per_sec > 0.0,
        "load rate must be a positive number of requests per second, got {}",
        config.rate_per_sec
    );
    assert!(config.max_in_flight > 0, "load max_in_flight must be at least 1");
    let (stop_tx, stop_rx) = mpsc::channel();
    let started = Instant::now();
    let scheduler = thread::Builder::new()
        .name("berth-load-scheduler".to_string())
        .spawn(move || schedule(config, on_response, started, &stop_rx))
        .unwrap_or_else(|error| panic!("failed to spawn the load scheduler thread: {error}"));
    LoadRun { started, scheduler: Some(scheduler), stop: Some(stop_tx) }
}

/// Runs the load to the end and reports: `start(config).wait()`.
pub fn run(config: LoadConfig) -> LoadReport {
    start(config).wait()
}

impl LoadRun {
    /// Time since the run started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits for the schedule to end and for the requests in flight to finish, which takes at most
    /// `duration + timeout` and a little slack, and returns the report.
    ///
    /// # Panics
    ///
    /// Resumes a panic of the generator's own threads (a bug in this module).
    pub fn wait(mut self) -> LoadReport {
        let scheduler = self.scheduler.take().expect("only `wait` takes the scheduler handle, and it consumes the run");
        let res = scheduler.join();
        // Keep `stop` alive until the scheduler is done, so that it runs the whole schedule.
        drop(self.stop.take());
        res.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for LoadRun {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

impl MethodReport {
    /// Requests that did not get a 2xx or 3xx response: other statuses, transport errors and
    /// requests not sent because the generator was saturated.
    pub fn failed(&self) -> u64 {
        let bad_statuses: u64 =
            self.by_status.iter().filter(|(status, _)| !is_ok_status(**status)).map(|(_, n)| n).sum();
        bad_statuses + self.errors.values().sum::<u64>()
    }

    /// The `p`th percentile (`p` in 0..=100, e.g. 99.0) of the latencies, by nearest rank; `None`
    /// when no request got a response.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut latencies = self.latencies_us.clone();
        latencies.sort_unstable();
        let n = latencies.len();
        if n == 0 {
            return None;
        }
        let rank = (p.clamp(0.0, 100.0) / 100.0 * n as f64).ceil() as usize;
        Some(Duration::from_micros(latencies[rank.clamp(1, n) - 1]))
    }
}

impl LoadReport {
    /// [`MethodReport::failed`] of `method`, 0 if no such request was scheduled.
    pub fn failed(&self, method: &str) -> u64 {
        self.by_method.get(method).map_or(0, MethodReport::failed)
    }

    /// A table for humans: per method, ok and failed counts, p50/p90/p99/max latency in
    /// milliseconds, statuses and errors; then the first few failures.
    pub fn summary(&self) -> String {
        let mut res = format!(
            "load: {} sent in {:.2}s ({:.1}/s achieved)\n",
            self.sent,
            self.duration.as_secs_f64(),
            self.achieved_rate
        );
        res.push_str("method        ok  failed   p50 ms   p90 ms   p99 ms   max ms  statuses; errors\n");
        for (method, report) in &self.by_method {
            let ms = |p: f64| report.percentile(p).map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e3));
            let statuses: Vec<String> = report.by_status.iter().map(|(status, n)| format!("{status}:{n}")).collect();
            let errors: Vec<String> = report.errors.iter().map(|(kind, n)| format!("{kind}:{n}")).collect();
            let _ = writeln!(
                res,
                "{method:<8} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8}  {}; {}",
                report.ok,
                report.failed(),
                ms(50.0),
                ms(90.0),
                ms(99.0),
                ms(100.0),
                if statuses.is_empty() { "-".to_string() } else { statuses.join(" ") },
                if errors.is_empty() { "-".to_string() } else { errors.join(" ") },
            );
        }
        for (method, report) in &self.by_method {
            for (at, failure) in report.failures.iter().take(FAILURES_IN_SUMMARY) {
                let _ = writeln!(res, "  {method} at {:.3}s: {failure}", at.as_secs_f64());
            }
        }
        res
    }
}

/// How many failures a [`MethodReport`] keeps.
const MAX_FAILURES: usize = 50;
/// How many failures per method [`LoadReport::summary`] prints.
const FAILURES_IN_SUMMARY: usize = 5;
/// How much of a failed response's body is kept for diagnosis.
const BODY_PREFIX_LEN: usize = 200;
/// Workers need little stack: one 16 KiB read buffer and the response being read.
const WORKER_STACK_SIZE: usize = 256 * 1024;

/// A request handed from the scheduler to a worker.
struct Job {
    spec_idx: usize,
    /// When the request was due; latency is measured from here.
    scheduled: Instant,
    /// `scheduled` relative to the start of the run.
    offset: Duration,
}

/// A prepared request: the method (for the report) and the bytes to write.
struct Prepared {
    method: String,
    is_head: bool,
    bytes: Vec<u8>,
}

/// What the scheduler shares with its workers.
struct Shared {
    addr: SocketAddr,
    timeout: Duration,
    requests: Vec<Prepared>,
    /// Jobs finished by workers; the scheduler's count of dispatched jobs minus this is the
    /// number in flight.
    completed: AtomicU64,
    tally: Mutex<BTreeMap<String, MethodReport>>,
    jobs: Mutex<Receiver<Job>>,
    on_response: Option<OnResponse>,
}

/// How one request ended.
enum Outcome {
    Response { status: u16, body_prefix: Vec<u8>, latency: Duration },
    Error { kind: String, detail: String },
}

/// The scheduler thread: issues request `i` at `started + i / rate` until `duration` or until the
/// run is dropped, then waits for the workers and builds the report.
fn schedule(config: LoadConfig, on_response: Option<OnResponse>, started: Instant, stop: &Receiver<()>) -> LoadReport {
    let requests = config.requests.iter().map(|spec| prepare(config.addr, spec)).collect();
    let (job_tx, job_rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        addr: config.addr,
        timeout: config.timeout,
        requests,
        completed: AtomicU64::new(0),
        tally: Mutex::new(BTreeMap::new()),
        jobs: Mutex::new(job_rx),
        on_response,
    });
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut dispatched: u64 = 0;
    let mut stopped = false;
    for request_idx in 0u64.. {
        let offset = Duration::from_secs_f64(request_idx as f64 / config.rate_per_sec);
        if offset >= config.duration {
            break;
        }
        if !sleep_until(started + offset, stop) {
            stopped = true;
            break;
        }
        let spec_idx = (request_idx % shared.requests.len() as u64) as usize;
        let in_flight = dispatched - shared.completed.load(Ordering::Acquire);
        // Every dispatched job that is not completed occupies one worker, so a worker is free
        // exactly when there are more workers than jobs in flight.
        let no_worker = if in_flight >= config.max_in_flight as u64 {
            Some(format!("not sent: {in_flight} requests in flight (max_in_flight)"))
        } else if in_flight < workers.len() as u64 {
            None
        } else {
            match spawn_worker(&shared) {
                Ok(worker) => {
                    workers.push(worker);
                    None
                }
                Err(error) => Some(format!("not sent: failed to start a worker thread: {error}")),
            }
        };
        if let Some(detail) = no_worker {
            let method = &shared.requests[spec_idx].method;
            let outcome = Outcome::Error { kind: "saturated".to_string(), detail };
            record(&mut lock(&shared.tally), method, offset, outcome);
            continue;
        }
        let job = Job { spec_idx, scheduled: started + offset, offset };
        job_tx.send(job).expect("`shared` holds the receiver for as long as the scheduler runs");
        dispatched += 1;
    }
    if !stopped {
        sleep_until(started + config.duration, stop);
    }
    let duration = started.elapsed();
    drop(job_tx);
    for worker in workers {
        if let Err(panic) = worker.join() {
            std::panic::resume_unwind(panic);
        }
    }
    let mut by_method = std::mem::take(&mut *lock(&shared.tally));
    for report in by_method.values_mut() {
        report.latencies_us.sort_unstable();
        report.failures.sort_by_key(|(at, _)| *at);
    }
    let secs = duration.as_secs_f64();
    LoadReport {
        sent: dispatched,
        by_method,
        duration,
        achieved_rate: if secs > 0.0 { dispatched as f64 / secs } else { 0.0 },
    }
}

fn spawn_worker(shared: &Arc<Shared>) -> io::Result<JoinHandle<()>> {
    let shared = Arc::clone(shared);
    thread::Builder::new().name("berth-load-worker".to_string()).stack_size(WORKER_STACK_SIZE).spawn(move || {
        let mut connection = None;
        loop {
            // The lock is held while waiting, so idle workers queue on the mutex and one at a time
            // on the channel; that is the usual way to share an mpsc receiver.
            let job = lock(&shared.jobs).recv();
            let Ok(job) = job else { break };
            let request = &shared.requests[job.spec_idx];
            let outcome = match exchange(&mut connection, &shared, request) {
                Ok((status, headers, mut body)) => {
                    let latency = job.scheduled.elapsed();
                    if let Some(on_response) = &shared.on_response {
                        let at = Instant::now();
                        on_response(&Received { status, headers: &headers, body: &body, at, latency });
                    }
                    body.truncate(BODY_PREFIX_LEN);
                    Outcome::Response { status, body_prefix: body, latency }
                }
                Err(error) => Outcome::Error { kind: error_kind(&error), detail: error.to_string() },
            };
            record(&mut lock(&shared.tally), &request.method, job.offset, outcome);
            shared.completed.fetch_add(1, Ordering::Release);
        }
    })
}

/// Sends one request on the worker's connection (opening one if there is none or the server has
/// closed it) and reads the response; returns the status and body. Drops the connection after an
/// error or when the server will not keep it open.
fn exchange(
    connection: &mut Option<TcpStream>,
    shared: &Shared,
    request: &Prepared,
) -> io::Result<crate::http::Response> {
    let deadline = Instant::now() + shared.timeout;
    if connection.as_ref().is_some_and(|stream| !still_open(stream)) {
        *connection = None;
    }
    let stream = match connection {
        Some(stream) => stream,
        None => {
            let stream = TcpStream::connect_timeout(&shared.addr, shared.timeout)?;
            // Requests are written whole, so Nagle's algorithm would only add delay.
            stream.set_nodelay(true)?;
            connection.insert(stream)
        }
    };
    let res = send(stream, request, deadline);
    match &res {
        Ok((status, headers, _)) if keeps_open(*status, headers, request.is_head) => {}
        _ => *connection = None,
    }
    res
}

fn send(stream: &mut TcpStream, request: &Prepared, deadline: Instant) -> io::Result<crate::http::Response> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out connecting"));
    }
    stream.set_write_timeout(Some(left))?;
    stream.write_all(&request.bytes)?;
    stream.flush()?;
    read_response(stream, deadline, request.is_head)
}

fn prepare(addr: SocketAddr, spec: &RequestSpec) -> Prepared {
    let has = |name: &str| spec.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if !spec.host.is_empty() && !has("host") {
        headers.push(("Host", &spec.host));
    }
    if !has("connection") {
        headers.push(("Connection", "keep-alive"));
    }
    headers.extend(spec.headers.iter().map(|(name, value)| (name.as_str(), value.as_str())));
    let mut bytes = request_head(addr, &spec.method, &spec.path, &headers, spec.body.len());
    bytes.extend_from_slice(&spec.body);
    Prepared { method: spec.method.clone(), is_head: spec.method.eq_ignore_ascii_case("HEAD"), bytes }
}

fn record(tally: &mut BTreeMap<String, MethodReport>, method: &str, offset: Duration, outcome: Outcome) {
    let report = tally.entry(method.to_string()).or_default();
    let failure = match outcome {
        Outcome::Response { status, body_prefix, latency } => {
            *report.by_status.entry(status).or_default() += 1;
            report.latencies_us.push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            if is_ok_status(status) {
                report.ok += 1;
                None
            } else {
                Some(format!("status {status}: {}", String::from_utf8_lossy(&body_prefix).trim()))
            }
        }
        Outcome::Error { kind, detail } => {
            let failure = format!("{kind}: {detail}");
            *report.errors.entry(kind).or_default() += 1;
            Some(failure)
        }
    };
    if let Some(failure) = failure
        && report.failures.len() < MAX_FAILURES
    {
        report.failures.push((offset, failure));
    }
}

/// Whether the server will keep the connection open after this response: it did not say
/// `Connection: close`, and the body was not delimited by the end of the connection.
fn keeps_open(status: u16, headers: &[(String, String)], is_head: bool) -> bool {
    let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let close = header("connection").is_some_and(|value| value.to_ascii_lowercase().contains("close"));
    let delimited = is_head
        || status == 204
        || status == 304
        || header("content-length").is_some()
        || header("transfer-encoding").is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
    !close && delimited
}

/// Whether an idle keep-alive connection can take another request: the server has neither
/// closed it nor sent anything unasked (such as a 408). Checking first keeps a connection that
/// the server closed while idle from counting as a failed request.
fn still_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let idle = matches!(stream.peek(&mut byte), Err(error) if error.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && idle
}

fn error_kind(error: &io::Error) -> String {
    let kind = match error.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout",
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => "reset",
        io::ErrorKind::UnexpectedEof => "closed",
        io::ErrorKind::InvalidData => "invalid response",
        other => return other.to_string(),
    };
    kind.to_string()
}

/// Sleeps until `at`; returns false if the run was dropped meanwhile.
fn sleep_until(at: Instant, stop: &Receiver<()>) -> bool {
    let left = at.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return !matches!(stop.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    }
    !matches!(stop.recv_timeout(left), Err(RecvTimeoutError::Disconnected))
}

fn is_ok_status(status: u16) -> bool {
    (200..400).contains(&status)
}

/// Locks a mutex, ignoring poisoning: a panicking worker is reported by `wait`, and the data
/// (counters) stays meaningful.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
