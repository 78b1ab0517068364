use std::io::Read as _;
use std::net::TcpListener;
use std::sync::atomic::AtomicBool;

use super::*;

/// What the in-test server answers to one request.
enum Reply {
    /// A response with `Content-Length`; the connection stays open.
    Status(u16, &'static str),
    /// A 200 with a chunked body; the connection stays open.
    Chunked,
    /// A 200 with `Connection: close`, then the server closes.
    CloseAfter,
    /// Close the connection without answering.
    Hangup,
}

/// How the in-test server behaves.
struct Behavior {
    /// Decides the reply from the method, path and body.
    reply: fn(&str, &str, &[u8]) -> Reply,
    /// Waits this long before replying.
    delay: Duration,
    /// Serves one connection at a time (and closes each after one response), like an overloaded
    /// single-threaded upstream; otherwise every connection gets a thread and keep-alive.
    sequential: bool,
}

/// A loopback HTTP/1.1 server on 127.0.0.1:0 that counts connections and requests.
struct TestServer {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

fn ok(_: &str, _: &str, _: &[u8]) -> Reply {
    Reply::Status(200, "hello")
}

fn serve(behavior: Behavior) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let behavior = Arc::new(behavior);
    let accept = {
        let (connections, requests, stop) = (connections.clone(), requests.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                connections.fetch_add(1, Ordering::SeqCst);
                let (requests, behavior) = (requests.clone(), behavior.clone());
                if behavior.sequential {
                    handle_connection(stream, &behavior, &requests);
                } else {
                    thread::spawn(move || handle_connection(stream, &behavior, &requests));
                }
            }
        })
    };
    TestServer { addr, connections, requests, stop, accept: Some(accept) }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

impl TestServer {
    fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

fn handle_connection(mut stream: TcpStream, behavior: &Behavior, requests: &AtomicU64) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = Vec::new();
    while let Some((method, path, body)) = read_request(&mut stream, &mut buf) {
        requests.fetch_add(1, Ordering::SeqCst);
        thread::sleep(behavior.delay);
        let reply = (behavior.reply)(&method, &path, &body);
        let close = behavior.sequential || matches!(reply, Reply::CloseAfter | Reply::Hangup);
        let response = match reply {
            Reply::Status(status, body) => {
                let connection = if close { "Connection: close\r\n" } else { "" };
                format!("HTTP/1.1 {status} X\r\n{connection}Content-Length: {}\r\n\r\n{body}", body.len())
            }
            Reply::Chunked => {
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_string()
            }
            Reply::CloseAfter => "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok".to_string(),
            Reply::Hangup => String::new(),
        };
        if stream.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// Reads one request (head and `Content-Length` body) from `stream`, keeping extra bytes in
/// `buf`; `None` when the client closed the connection or went quiet.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, String, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|window| window == b"\r\n\r\n") {
            break pos + 4;
        }
        match stream.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_string();
    let path = request_line.next().unwrap_or_default().to_string();
    let body_len: usize = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0);
    while buf.len() < head_end + body_len {
        match stream.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    let body = buf[head_end..head_end + body_len].to_vec();
    buf.drain(..head_end + body_len);
    Some((method, path, body))
}

fn get(path: &str) -> RequestSpec {
    RequestSpec { method: "GET".into(), path: path.into(), host: "web.test".into(), headers: vec![], body: vec![] }
}

fn post(path: &str, body: &[u8]) -> RequestSpec {
    RequestSpec {
        method: "POST".into(),
        path: path.into(),
        host: String::new(),
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: body.to_vec(),
    }
}

fn config(addr: SocketAddr, rate_per_sec: f64, duration_ms: u64, requests: Vec<RequestSpec>) -> LoadConfig {
    LoadConfig {
        addr,
        rate_per_sec,
        duration: Duration::from_millis(duration_ms),
        requests,
        timeout: Duration::from_secs(10),
        max_in_flight: 256,
    }
}

fn errors(report: &LoadReport, method: &str, kind: &str) -> u64 {
    report.by_method.get(method).and_then(|m| m.errors.get(kind).copied()).unwrap_or(0)
}

#[test]
fn issues_requests_at_the_configured_rate_in_the_background() {
    let server = serve(Behavior { reply: ok, delay: Duration::ZERO, sequential: false });
    let before_start = Instant::now();
    let run = start(config(server.addr, 200.0, 1000, vec![get("/")]));
    assert!(before_start.elapsed() < Duration::from_millis(200), "start must return at once");
    assert!(run.elapsed() < Duration::from_secs(1));
    let report = run.wait();
    println!("{}", report.summary());
    assert!((190..=210).contains(&report.sent), "sent {}", report.sent);
    assert_eq!(server.requests(), report.sent, "the server must see every request sent");
    assert_eq!(report.by_method["GET"].ok, report.sent);
    assert_eq!(report.failed("GET"), 0);
    assert!(report.duration >= Duration::from_secs(1) && report.duration < Duration::from_millis(1500));
    assert!((180.0..=210.0).contains(&report.achieved_rate), "achieved {}", report.achieved_rate);
}

#[test]
fn latency_is_measured_from_the_scheduled_time() {
    let server = serve(Behavior { reply: ok, delay: Duration::from_millis(100), sequential: false });
    let report = run(config(server.addr, 20.0, 500, vec![get("/")]));
    let get = &report.by_method["GET"];
    assert_eq!(get.ok, 10, "{}", report.summary());
    assert!(get.percentile(50.0).unwrap() >= Duration::from_millis(100), "{}", report.summary());
}

#[test]
fn requests_are_sent_on_schedule_even_when_the_server_falls_behind() {
    // The server answers one request per 100ms, one at a time, but 20 are due within 1s: a closed-loop
    // client would see 100ms latencies; an open-loop one sees the queue grow to about a second.
    let server = serve(Behavior { reply: ok, delay: Duration::from_millis(100), sequential: true });
    let report = run(config(server.addr, 20.0, 1000, vec![get("/")]));
    let get = &report.by_method["GET"];
    assert_eq!((report.sent, get.ok), (20, 20), "{}", report.summary());
    assert!(get.percentile(99.0).unwrap() >= Duration::from_millis(700), "{}", report.summary());
    assert_eq!(server.requests(), 20);
}

#[test]
fn server_errors_count_as_failures_of_their_method() {
    fn reply(method: &str, _: &str, body: &[u8]) -> Reply {
        match method {
            "POST" if body == b"payload" => Reply::Status(500, "boom"),
            "POST" => Reply::Status(400, "the body did not arrive whole"),
            _ => Reply::Status(200, "hello"),
        }
    }
    let server = serve(Behavior { reply, delay: Duration::ZERO, sequential: false });
    let report = run(config(server.addr, 40.0, 500, vec![get("/"), post("/items", b"payload")]));
    let (get, post) = (&report.by_method["GET"], &report.by_method["POST"]);
    assert_eq!((get.ok, report.failed("GET")), (10, 0), "{}", report.summary());
    assert_eq!((post.ok, report.failed("POST")), (0, 10), "{}", report.summary());
    assert_eq!(post.by_status, BTreeMap::from([(500, 10)]));
    assert_eq!(post.latencies_us.len(), 10, "a 500 is a completed request");
    assert_eq!(post.failures.len(), 10);
    assert_eq!(post.failures[0].1, "status 500: boom");
    assert!(post.failures.windows(2).all(|pair| pair[0].0 <= pair[1].0), "failures are in schedule order");
    assert!(report.summary().contains("500:10"), "{}", report.summary());
}

#[test]
fn a_server_that_hangs_up_counts_as_closed() {
    let server = serve(Behavior { reply: |_, _, _| Reply::Hangup, delay: Duration::ZERO, sequential: false });
    let report = run(config(server.addr, 40.0, 250, vec![get("/")]));
    assert_eq!(report.sent, 10);
    assert_eq!(errors(&report, "GET", "closed"), 10, "{}", report.summary());
    assert_eq!(report.failed("GET"), 10);
    assert!(report.by_method["GET"].latencies_us.is_empty());
    assert_eq!(server.connections(), 10, "a worker reconnects after the server hung up");
}

#[test]
fn a_closed_port_counts_as_connection_refused() {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let report = run(config(addr, 40.0, 250, vec![get("/")]));
    assert_eq!(errors(&report, "GET", "connection refused"), 10, "{}", report.summary());
}

#[test]
fn a_slow_server_counts_as_timeout_and_wait_stays_bounded() {
    let server = serve(Behavior { reply: ok, delay: Duration::from_secs(3), sequential: false });
    let before_run = Instant::now();
    let report =
        run(LoadConfig { timeout: Duration::from_millis(300), ..config(server.addr, 10.0, 300, vec![get("/")]) });
    assert!(before_run.elapsed() < Duration::from_millis(1500), "wait took {:?}", before_run.elapsed());
    assert_eq!(errors(&report, "GET", "timeout"), 3, "{}", report.summary());
}

#[test]
fn keeps_connections_alive() {
    let server = serve(Behavior { reply: ok, delay: Duration::ZERO, sequential: false });
    let report = run(config(server.addr, 100.0, 1000, vec![get("/")]));
    assert_eq!(report.by_method["GET"].ok, 100, "{}", report.summary());
    assert!(server.connections() <= 20, "{} connections for 100 requests", server.connections());
}

#[test]
fn reads_chunked_bodies_and_reconnects_after_connection_close() {
    fn reply(_: &str, path: &str, _: &[u8]) -> Reply {
        if path == "/close" { Reply::CloseAfter } else { Reply::Chunked }
    }
    let server = serve(Behavior { reply, delay: Duration::ZERO, sequential: false });
    let report = run(config(server.addr, 40.0, 500, vec![get("/chunked"), get("/close")]));
    assert_eq!(report.by_method["GET"].ok, 20, "{}", report.summary());
    assert!(server.connections() >= 10, "every `Connection: close` needs a new connection");
}

#[test]
fn reports_saturation_instead_of_skipping_requests() {
    let server = serve(Behavior { reply: ok, delay: Duration::from_millis(500), sequential: false });
    let report = run(LoadConfig { max_in_flight: 2, ..config(server.addr, 40.0, 500, vec![get("/")]) });
    let saturated = errors(&report, "GET", "saturated");
    assert_eq!(report.sent + saturated, 20, "{}", report.summary());
    assert!(saturated >= 15, "{}", report.summary());
    assert_eq!(report.failed("GET"), saturated);
    assert!(report.by_method["GET"].failures[0].1.contains("max_in_flight"), "{}", report.summary());
}

#[test]
fn percentile_uses_the_nearest_rank() {
    let report = MethodReport { latencies_us: (1..=100).rev().map(|ms| ms * 1000).collect(), ..Default::default() };
    let ms = |p: f64| report.percentile(p).unwrap().as_millis();
    assert_eq!((ms(0.0), ms(50.0), ms(90.0), ms(99.0), ms(100.0)), (1, 50, 90, 99, 100));
    assert_eq!(MethodReport::default().percentile(50.0), None);
}

#[test]
fn summary_lists_counts_statuses_errors_and_failures() {
    let method = MethodReport {
        ok: 2,
        by_status: BTreeMap::from([(200, 2), (503, 1)]),
        errors: BTreeMap::from([("timeout".to_string(), 1)]),
        latencies_us: vec![1000, 2000, 3000],
        failures: vec![(Duration::from_millis(1500), "status 503: no upstream".to_string())],
    };
    let report = LoadReport {
        sent: 4,
        by_method: BTreeMap::from([("GET".to_string(), method)]),
        duration: Duration::from_secs(2),
        achieved_rate: 2.0,
    };
    assert_eq!(report.failed("GET"), 2);
    assert_eq!(report.failed("POST"), 0);
    let summary = report.summary();
    for expected in ["4 sent in 2.00s (2.0/s achieved)", "200:2 503:1; timeout:1", "GET at 1.500s: status 503"] {
        assert!(summary.contains(expected), "missing {expected:?} in\n{summary}");
    }
}

#[test]
fn an_observed_run_hands_every_response_to_the_callback() {
    let server = serve(Behavior { reply: ok, delay: Duration::ZERO, sequential: false });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let on_response: OnResponse = {
        let seen = seen.clone();
        Arc::new(move |received: &Received<'_>| {
            lock(&seen).push((received.status, received.body.to_vec()));
        })
    };
    let report = start_observed(config(server.addr, 50.0, 200, vec![get("/")]), on_response).wait();
    let seen = lock(&seen);
    assert_eq!(seen.len() as u64, report.sent, "{}", report.summary());
    assert!(seen.iter().all(|(status, body)| *status == 200 && body == b"hello"), "{seen:?}");
}
