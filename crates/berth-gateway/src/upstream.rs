//! Connections to replicas: a pool per gateway worker (and one for HTTP/3), keyed by replica address.
//!
//! HTTP/1.1 (`h1.rs`): idle connections wait in a stack per replica, the most recently used on top; one is
//! taken per request and comes back when its response body has been read to the end. A connection idle
//! longer than `idle_timeout` is never used again: it should be below the replicas' own idle timeout, so
//! that the gateway, not the replica, closes idle connections and a request is never written on a
//! connection the replica is closing. h2c (hyper's client): one shared connection per replica.
//!
//! A request that could not be written on a pooled connection (it had closed) goes on the next one, then a
//! fresh one; a failed connect, or a fresh connection that takes no byte of the request, is `NeverSent`,
//! which the request path may retry on another replica whatever the method.

pub(crate) mod h1;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tracing::debug;

use rustc_hash::FxHashMap;

use crate::headers::Added;
use crate::proxy::ReqBody;
use crate::table::UpstreamProtocol;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle HTTP/1.1 connections kept per replica; more are closed when they come back.
const MAX_IDLE_PER_REPLICA: usize = 512;

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No byte of the request reached the replica: safe to send elsewhere.
    NeverSent(String),
    /// The request may have reached the replica.
    Failed(String),
}

/// A replica's response body, over either protocol.
pub(crate) enum UpstreamBody {
    Http1(h1::Body),
    H2c(Incoming),
}

impl UpstreamBody {
    /// The replica's side of a `101 Switching Protocols` (HTTP/1.1): its connection and what it already
    /// sent past the head.
    pub(crate) fn into_upgraded(self) -> Option<(TcpStream, Bytes)> {
        match self {
            UpstreamBody::Http1(body) => body.into_upgraded(),
            UpstreamBody::H2c(_) => None,
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Frame<Bytes>>>> {
        match self.get_mut() {
            UpstreamBody::Http1(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::H2c(body) => Pin::new(body).poll_frame(cx).map_err(std::io::Error::other),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Http1(body) => body.is_end_stream(),
            UpstreamBody::H2c(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Http1(body) => body.size_hint(),
            UpstreamBody::H2c(body) => body.size_hint(),
        }
    }
}

/// A worker's upstream connections. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    pool: Arc<Pool>,
}

pub(crate) struct Pool {
    idle_timeout: Duration,
    http1: Mutex<FxHashMap<SocketAddr, VecDeque<Idle>>>,
    h2c: Mutex<FxHashMap<SocketAddr, http2::SendRequest<ReqBody>>>,
}

struct Idle {
    conn: Box<h1::Conn>,
    since: Instant,
}

impl Idle {
    /// Idle since before `fresh_after` (`None`: the clock is younger than the idle timeout, nothing is).
    fn expired(&self, fresh_after: Option<Instant>) -> bool {
        fresh_after.is_some_and(|after| self.since < after)
    }
}

impl UpstreamClient {
    /// A new, empty pool; must be called inside a tokio runtime (it starts the task that closes connections
    /// idle too long, which ends with the last clone).
    pub(crate) fn new(idle_timeout: Duration) -> UpstreamClient {
        let pool = Arc::new(Pool { idle_timeout, http1: Mutex::default(), h2c: Mutex::default() });
        tokio::spawn(sweep(Arc::downgrade(&pool)));
        UpstreamClient { pool }
    }

    /// Sends a request to the replica at `addr`: `head` (an origin-form URI, the `Host` header, and the
    /// fields the gateway adds) stays with the caller, so a retry sends it again.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        authority: &http::uri::Authority,
        protocol: UpstreamProtocol,
        head: (&http::request::Parts, &Added<'_>),
        body: ReqBody,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let (head, added) = head;
        match protocol {
            UpstreamProtocol::Http1 => self
                .send_http1(addr, h1::Outgoing::new(head, added, body))
                .await
                .map(|res| res.map(UpstreamBody::Http1)),
            UpstreamProtocol::H2c => {
                let mut req = Request::new(body);
                *req.method_mut() = head.method.clone();
                *req.uri_mut() = head.uri.clone();
                *req.headers_mut() = head.headers.clone();
                added.insert_into(req.headers_mut());
                self.send_h2c(addr, authority, req).await.map(|res| res.map(UpstreamBody::H2c))
            }
        }
    }

    async fn send_http1(&self, addr: SocketAddr, mut out: h1::Outgoing) -> Result<Response<h1::Body>, SendError> {
        let pool = Arc::downgrade(&self.pool);
        let failed = |error| SendError::Failed(format!("HTTP/1.1 to {addr}: {error}"));
        while let Some(conn) = self.pool.checkout(addr) {
            match conn.exchange(&mut out).await {
                Ok(res) => return Ok(res),
                // The connection had closed before taking a byte: try the next one.
                Err(h1::Failure::Unsent(_)) => {}
                Err(h1::Failure::Sent(error)) => return Err(failed(error)),
            }
        }
        let conn = h1::Conn::new(connect(addr).await?, addr, pool);
        conn.exchange(&mut out).await.map_err(|failure| match failure {
            h1::Failure::Unsent(error) => SendError::NeverSent(format!("HTTP/1.1 to {addr}: {error}")),
            h1::Failure::Sent(error) => failed(error),
        })
    }

    async fn send_h2c(
        &self,
        addr: SocketAddr,
        authority: &http::uri::Authority,
        mut req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, SendError> {
        // HTTP/2 carries scheme and authority as pseudo-headers: the URI must be absolute.
        let mut uri = std::mem::take(req.uri_mut()).into_parts();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(authority.clone());
        *req.uri_mut() =
            http::Uri::from_parts(uri).map_err(|error| SendError::NeverSent(format!("request target: {error}")))?;
        *req.version_mut() = Version::HTTP_2;
        let shared = lock(&self.pool.h2c).get(&addr).filter(|sender| !sender.is_closed()).cloned();
        if let Some(mut sender) = shared {
            match sender.try_send_request(req).await {
                Ok(res) => return Ok(res),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Failed(error_chain(error.error()))),
                },
            }
        }
        let mut sender = connect_h2c(addr).await?;
        lock(&self.pool.h2c).insert(addr, sender.clone());
        sender.try_send_request(req).await.map_err(fresh_failure)
    }
}

impl Pool {
    /// The most recently used idle connection to `addr` that can still carry a request.
    fn checkout(&self, addr: SocketAddr) -> Option<Box<h1::Conn>> {
        let mut idle = lock(&self.http1);
        let stack = idle.get_mut(&addr)?;
        let fresh_after = Instant::now().checked_sub(self.idle_timeout);
        while let Some(idle) = stack.pop_back() {
            if idle.expired(fresh_after) {
                // Everything below is older still.
                stack.clear();
                break;
            }
            if idle.conn.is_usable() {
                return Some(idle.conn);
            }
        }
        None
    }

    /// Takes back a connection whose response has been read whole.
    pub(crate) fn checkin(&self, conn: Box<h1::Conn>) {
        let mut idle = lock(&self.http1);
        let stack = idle.entry(conn.addr()).or_default();
        if stack.len() < MAX_IDLE_PER_REPLICA {
            stack.push_back(Idle { conn, since: Instant::now() });
        }
    }

    /// Closes connections idle too long (and forgets closed ones), so that replicas that are gone or quiet
    /// hold no sockets.
    fn expire(&self) {
        let fresh_after = Instant::now().checked_sub(self.idle_timeout);
        lock(&self.http1).retain(|_, stack| {
            stack.retain(|idle| idle.conn.is_usable() && !idle.expired(fresh_after));
            !stack.is_empty()
        });
        lock(&self.h2c).retain(|_, sender| !sender.is_closed());
    }
}

async fn sweep(pool: Weak<Pool>) {
    let Some(period) = pool.upgrade().map(|pool| pool.idle_timeout.max(Duration::from_millis(100))) else {
        return;
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.expire(),
            None => return,
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, SendError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(SendError::NeverSent(format!("connect to {addr}: {error}"))),
        Err(_) => {
            return Err(SendError::NeverSent(format!("connect to {addr}: no answer in {CONNECT_TIMEOUT:?}")));
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn connect_h2c(addr: SocketAddr) -> Result<http2::SendRequest<ReqBody>, SendError> {
    let io = TokioIo::new(connect(addr).await?);
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|error| SendError::NeverSent(format!("h2c to {addr}: {}", error_chain(&error))))?;
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            debug!(%addr, error = %error_chain(&error), "upstream h2c connection ended with an error");
        }
    });
    Ok(sender)
}

/// A fresh connection's failure: with the request handed back, none of it was written.
fn fresh_failure(error: TrySendError<Request<ReqBody>>) -> SendError {
    let detail = error_chain(error.error());
    if error.message().is_some() { SendError::NeverSent(detail) } else { SendError::Failed(detail) }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut res = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        res.push_str(": ");
        res.push_str(&cause.to_string());
        source = cause.source();
    }
    res
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Either, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// A replica speaking raw bytes: the connections it accepted, each one's end, and every request head.
    pub(crate) struct Replica {
        pub(crate) addr: SocketAddr,
        pub(crate) accepted: Arc<AtomicUsize>,
        pub(crate) closed: mpsc::UnboundedReceiver<()>,
        pub(crate) heads: mpsc::UnboundedReceiver<String>,
    }

    /// A replica that answers each request head it reads with `script` as is, then (with `close`) closes.
    pub(crate) async fn scripted(script: &'static [u8], close: bool) -> Replica {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (closed_tx, closed) = mpsc::unbounded_channel();
        let (heads_tx, heads) = mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (closed_tx, heads_tx) = (closed_tx.clone(), heads_tx.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    'conn: loop {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = buf.drain(..end + 4).collect();
                            let _ = heads_tx.send(String::from_utf8_lossy(&head).into_owned());
                            if stream.write_all(script).await.is_err() || close {
                                break 'conn;
                            }
                        }
                    }
                    let _ = closed_tx.send(());
                });
            }
        });
        Replica { addr, accepted, closed, heads }
    }

    /// A replica that answers every HTTP/1.1 request on a connection with `200 ok`.
    async fn replica() -> (SocketAddr, Arc<AtomicUsize>, mpsc::UnboundedReceiver<()>) {
        let replica = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
        (replica.addr, replica.accepted, replica.closed)
    }

    /// What `rewrite_request` adds to a request with no fields of its own.
    pub(crate) fn added() -> Added<'static> {
        static EXTERNAL: http::HeaderValue = http::HeaderValue::from_static("external");
        let forwarding =
            crate::headers::Forwarding { client_ip: [127, 0, 0, 1].into(), proto: "http", source: &EXTERNAL };
        crate::headers::rewrite_request(&mut http::HeaderMap::new(), &forwarding, false).1
    }

    async fn get(client: &UpstreamClient, addr: SocketAddr) -> Bytes {
        let authority: http::uri::Authority = addr.to_string().parse().expect("authority");
        let req = Request::builder()
            .uri("/")
            .header(http::header::HOST, addr.to_string())
            .body(Either::Left(Full::new(Bytes::new())))
            .expect("request");
        let (head, body) = req.into_parts();
        let res =
            client.send(addr, &authority, UpstreamProtocol::Http1, (&head, &added()), body).await.expect("response");
        assert_eq!(res.status(), http::StatusCode::OK);
        res.into_body().collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (addr, accepted, _closed) = replica().await;
        let client = UpstreamClient::new(Duration::from_secs(30));
        for _ in 0..5 {
            assert_eq!(get(&client, addr).await, "ok");
            // The connection goes back to the pool once hyper has read the body: wait for it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while lock(&client.pool.http1).get(&addr).is_none_or(VecDeque::is_empty) {
                assert!(Instant::now() < deadline, "the connection never came back to the pool");
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_timeout_is_closed_and_not_reused() {
        let (addr, accepted, mut closed) = replica().await;
        let client = UpstreamClient::new(Duration::from_millis(100));
        assert_eq!(get(&client, addr).await, "ok");
        // The sweep closes it: the replica sees the connection end.
        tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .expect("the idle connection was not closed within 5 s");
        assert_eq!(get(&client, addr).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connect_is_never_sent() {
        let addr = TcpListener::bind("127.0.0.1:0").await.expect("bind").local_addr().expect("addr");
        // The listener is dropped: nothing listens there any more.
        let client = UpstreamClient::new(Duration::from_secs(30));
        let authority: http::uri::Authority = addr.to_string().parse().expect("authority");
        let req = Request::builder().uri("/").body(Either::Left(Full::new(Bytes::new()))).expect("request");
        let (head, body) = req.into_parts();
        match client.send(addr, &authority, UpstreamProtocol::Http1, (&head, &added()), body).await {
            Err(SendError::NeverSent(detail)) => assert!(detail.contains(&addr.to_string()), "{detail}"),
            Err(SendError::Failed(detail)) => panic!("a refused connect must be NeverSent, got Failed: {detail}"),
            Ok(res) => panic!("nothing listens, yet got {}", res.status()),
        }
    }
}
