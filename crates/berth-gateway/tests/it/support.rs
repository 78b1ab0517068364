//! Fixtures for the gateway's tests: in-process upstreams that count and record what they get and answer
//! as told, a gateway on a loopback port, an HTTP client, a raw TCP client for bad traffic, and a metrics
//! reader.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_gateway::{Gateway, GatewayConfig, Listeners, RoutePolicy, RoutingTable, ServiceRoutes, Upstream};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Generous bound for anything that should take milliseconds, so a loaded machine does not fail a test.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How a mock upstream answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reply {
    /// 200 with the upstream's name as body.
    Ok,
    Status(u16),
    /// 200 after this long.
    Slow(Duration),
    /// 200 to its first request, then hangs on every later one.
    FirstThenHang,
    /// `101 Switching Protocols` to `Upgrade: echo`, then echoes bytes.
    Echo,
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An upstream on 127.0.0.1:0; stops with the test's runtime.
pub struct MockUpstream {
    pub name: &'static str,
    pub addr: SocketAddr,
    state: Arc<UpstreamState>,
    _accept: AbortOnDrop,
}

struct UpstreamState {
    name: &'static str,
    reply: Mutex<Reply>,
    hits: AtomicUsize,
    completed: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

impl MockUpstream {
    pub async fn start(name: &'static str, reply: Reply) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound listener has an address");
        let state = Arc::new(UpstreamState {
            name,
            reply: Mutex::new(reply),
            hits: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(state.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades();
                    let _ = conn.await;
                });
            }
        });
        MockUpstream { name, addr, state, _accept: AbortOnDrop(accept) }
    }

    /// Requests received (counted on arrival, before the answer).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests answered (counted just before the answer is handed to hyper).
    pub fn completed(&self) -> usize {
        self.state.completed.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.state.seen).clone()
    }

    pub fn set_reply(&self, reply: Reply) {
        *lock(&self.state.reply) = reply;
    }

    /// An endpoint in its own replica group: traffic is split between groups by weight before load is
    /// looked at, so each of two such endpoints gets about half of the first attempts whatever its latency.
    pub fn grouped(&self) -> Upstream {
        Upstream { instance: self.name.to_owned(), addr: self.addr, group: self.name.to_owned(), weight: 100 }
    }
}

/// A gateway serving on 127.0.0.1:0; stops when dropped.
pub struct TestGateway {
    pub gateway: Gateway,
    /// Plain HTTP.
    pub addr: SocketAddr,
    /// HTTPS over TCP and HTTP/3 over UDP, on the same port (`start_secure` only).
    pub https_addr: Option<SocketAddr>,
    _serve: AbortOnDrop,
}

impl TestGateway {
    pub async fn start(config: GatewayConfig) -> TestGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound listener has an address");
        let gateway = Gateway::new(config);
        let serving = gateway.clone();
        // The listener is bound: connections wait in its backlog until the gateway accepts them.
        let serve = tokio::spawn(async move {
            let _ = serving.serve(Listeners { http: Some(listener), ..Listeners::default() }).await;
        });
        TestGateway { gateway, addr, https_addr: None, _serve: AbortOnDrop(serve) }
    }

    /// Plain HTTP, HTTPS and HTTP/3 (the last two on one port number); `config.tls` must be set. The
    /// table is applied before the listeners open, so its certificates are ready for the first client.
    pub async fn start_secure(config: GatewayConfig, table: &RoutingTable) -> TestGateway {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound listener has an address");
        let (https, udp) = bind_tcp_and_udp().await;
        let https_addr = https.local_addr().expect("bound listener has an address");
        let gateway = Gateway::new(config);
        gateway.update(table);
        let serving = gateway.clone();
        let serve = tokio::spawn(async move {
            let listeners = Listeners { http: Some(listener), https: Some(https), http3: Some(udp) };
            if let Err(error) = serving.serve(listeners).await {
                panic!("the gateway cannot serve: {error}");
            }
        });
        TestGateway { gateway, addr, https_addr: Some(https_addr), _serve: AbortOnDrop(serve) }
    }

    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr.expect("the gateway was started with `start_secure`")
    }

    /// Renders the metrics and sums the samples whose name and labels start with `prefix`.
    pub fn metric(&self, prefix: &str) -> f64 {
        let mut out = String::new();
        self.gateway.render_metrics(&mut out);
        out.lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// Short timers so that tests are quick.
pub fn config() -> GatewayConfig {
    GatewayConfig {
        eject_base: Duration::from_secs(1),
        stall_after: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(1),
        max_header_bytes: 8192,
        max_body_bytes: 1024,
        ..GatewayConfig::default()
    }
}

/// One service, `web`, which is also the default for unknown hosts.
pub fn table(endpoints: Vec<Upstream>) -> RoutingTable {
    table_with_routes(endpoints, Vec::new())
}

pub fn table_with_routes(endpoints: Vec<Upstream>, routes: Vec<RoutePolicy>) -> RoutingTable {
    RoutingTable {
        services: vec![ServiceRoutes {
            name: "web".to_owned(),
            hosts: Vec::new(),
            routes,
            endpoints,
            protocol: Default::default(),
            pools: Vec::new(),
            redirect_https: false,
            sticky: None,
        }],
        default_service: Some("web".to_owned()),
    }
}

/// A TCP listener and a UDP socket on the same loopback port number (retried while the UDP port is taken).
pub async fn bind_tcp_and_udp() -> (TcpListener, std::net::UdpSocket) {
    for _ in 0..20 {
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = tcp.local_addr().expect("bound listener has an address");
        if let Ok(udp) = std::net::UdpSocket::bind(addr) {
            return (tcp, udp);
        }
    }
    panic!("no loopback port was free for both TCP and UDP in 20 tries");
}

/// An address nothing listens on: bound, then released.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    listener.local_addr().expect("bound listener has an address")
}

/// An answer as the client got it.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub took: Duration,
}

/// hyper's pooled client, each request bounded by `PATIENCE`.
#[derive(Clone)]
pub struct TestClient {
    client: HyperClient<HttpConnector, Full<Bytes>>,
}

impl TestClient {
    pub fn new() -> TestClient {
        TestClient { client: HyperClient::builder(TokioExecutor::new()).build(HttpConnector::new()) }
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.send(Request::get(url).body(Full::default()).expect("valid request")).await
    }

    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Answer {
        self.send(Request::post(url).body(Full::new(body.into())).expect("valid request")).await
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Answer {
        let started = Instant::now();
        let exchange = async {
            let res = self.client.request(req).await.expect("the gateway answers");
            let (parts, body) = res.into_parts();
            let body = body.collect().await.expect("the gateway sends the whole body").to_bytes();
            (parts, body)
        };
        let (parts, body) = tokio::time::timeout(PATIENCE, exchange).await.expect("answer within the client timeout");
        Answer { status: parts.status, headers: parts.headers, body, took: started.elapsed() }
    }
}

/// What a raw connection got back: the status of the first response (if any) and whether the gateway
/// closed the connection.
#[derive(Debug)]
pub struct RawOutcome {
    pub status: Option<u16>,
    pub closed: bool,
}

/// Writes `bytes` on a fresh connection, then reads until the gateway closes it or `PATIENCE` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> RawOutcome {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the gateway");
    // A failed write means the gateway already gave up on the connection; the read says how.
    let _ = stream.write_all(bytes).await;
    read_until_closed(&mut stream).await
}

pub async fn read_until_closed(stream: &mut TcpStream) -> RawOutcome {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    RawOutcome { status: status_of(&received), closed }
}

/// The status code of an HTTP/1.1 response's first line.
pub fn status_of(response: &[u8]) -> Option<u16> {
    let line = response.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Polls `condition` every 10 ms until it holds or `PATIENCE` passes; returns whether it held.
pub async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// Runs the futures concurrently (each on its own task) and returns their outputs in order.
pub async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<JoinHandle<F::Output>> = futures.into_iter().map(tokio::spawn).collect();
    let mut res = Vec::with_capacity(tasks.len());
    for task in tasks {
        res.push(task.await.expect("test task does not panic"));
    }
    res
}

pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn answer(state: Arc<UpstreamState>, mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let n = state.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let reply = *lock(&state.reply);
    if reply == Reply::Echo {
        return Ok(switch_to_echo(&mut req));
    }
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = req.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default();
    lock(&state.seen).push(Seen { method, headers, body });
    let status = match reply {
        Reply::Ok | Reply::Echo => StatusCode::OK,
        Reply::Status(code) => StatusCode::from_u16(code).expect("tests use valid status codes"),
        Reply::Slow(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK
        }
        Reply::FirstThenHang if n == 1 => StatusCode::OK,
        Reply::FirstThenHang => std::future::pending().await,
    };
    state.completed.fetch_add(1, Ordering::SeqCst);
    let mut res = Response::new(Full::new(Bytes::from(state.name)));
    *res.status_mut() = status;
    Ok(res)
}

fn switch_to_echo(req: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    let wants_echo = req.headers().get(http::header::UPGRADE).is_some_and(|v| v == "echo");
    if !wants_echo {
        let mut res = Response::new(Full::new(Bytes::from_static(b"upgrade: echo expected")));
        *res.status_mut() = StatusCode::BAD_REQUEST;
        return res;
    }
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut io = TokioIo::new(upgraded);
        let mut chunk = [0u8; 1024];
        while let Ok(n) = io.read(&mut chunk).await {
            if n == 0 || io.write_all(&chunk[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut res = Response::new(Full::default());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    res.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("upgrade"));
    res.headers_mut().insert(http::header::UPGRADE, http::HeaderValue::from_static("echo"));
    res
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
