//! The HTTP/1.1 server side against a real socket, with a small handler in place of the request path.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use std::task::Context;

use super::*;

type TestBody = Either<Full<Bytes>, Frames>;

impl CarriesFields for TestBody {
    fn take_fields(&mut self) -> Option<Box<ReplicaFields>> {
        None
    }
}

/// A body of unknown length from a channel of chunks, so that its response is chunked.
struct Frames(mpsc::Receiver<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<io::Result<http_body::Frame<Bytes>>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|chunk| Ok(http_body::Frame::data(chunk))))
    }
}

const LIMITS: Limits = Limits { max_head: 8192, max_body: 1024, header_read_timeout: Duration::from_millis(300) };

/// What the test handler saw and how the connection ended.
struct Server {
    addr: std::net::SocketAddr,
    /// `METHOD path body` of every request served here.
    seen: mpsc::UnboundedReceiver<String>,
    /// What hyper would have been handed: the unserved bytes, or `None` when the connection closed.
    ended: oneshot::Receiver<Option<Bytes>>,
    /// Requests whose futures were dropped before they finished.
    cancelled: Arc<AtomicUsize>,
}

/// One connection served by `serve`. Paths: `/chunked` answers with a body of unknown length (two chunks),
/// `/hang` never answers, `/slow` echoes after 100 ms, `/head` answers like a replica does to HEAD;
/// anything else echoes the request.
async fn server() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (ended_tx, ended) = oneshot::channel();
    let cancelled = Arc::new(AtomicUsize::new(0));
    let counter = cancelled.clone();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let handle = |req: Request<ClientBody>| {
            let seen_tx = seen_tx.clone();
            let counter = counter.clone();
            async move {
                let guard = CancelGuard(Some(counter));
                let (parts, body) = req.into_parts();
                let body = body.collect().await.map(|body| body.to_bytes()).unwrap_or_default();
                let line = format!("{} {} {}", parts.method, parts.uri, String::from_utf8_lossy(&body));
                let _ = seen_tx.send(line.clone());
                let res = match parts.uri.path() {
                    "/hang" => std::future::pending().await,
                    // A slow replica: still answering when the client's next bytes (or its end) arrive.
                    "/slow" => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Response::new(Either::Left(Full::new(Bytes::from(line))))
                    }
                    "/chunked" => {
                        let (tx, rx) = mpsc::channel(2);
                        tokio::spawn(async move {
                            let _ = tx.send(Bytes::from_static(b"hello, ")).await;
                            let _ = tx.send(Bytes::from_static(b"world")).await;
                        });
                        Response::new(Either::Right(Frames(rx)))
                    }
                    "/head" => {
                        let mut res = Response::new(Either::Left(Full::default()));
                        res.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
                        res
                    }
                    _ => Response::new(Either::Left(Full::new(Bytes::from(line)))),
                };
                guard.finish();
                Ok::<Response<TestBody>, Infallible>(res)
            }
        };
        let ended = match serve(stream, LIMITS, handle).await {
            Ended::Closed => None,
            Ended::Handover(_, read) => Some(read),
        };
        let _ = ended_tx.send(ended);
    });
    Server { addr, seen, ended, cancelled }
}

struct CancelGuard(Option<Arc<AtomicUsize>>);

impl CancelGuard {
    fn finish(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(counter) = &self.0 {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A raw client connection; bytes read past one response wait for the next.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write to the server");
    }

    /// Reads until `done` says how many buffered bytes make a whole item.
    async fn read_until(&mut self, what: &str, done: impl Fn(&[u8]) -> Option<usize>) -> Vec<u8> {
        loop {
            if let Some(len) = done(&self.buf) {
                return self.buf.drain(..len).collect();
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.expect("read from the server");
            assert!(n > 0, "connection closed in the middle of {what}: {:?}", String::from_utf8_lossy(&self.buf));
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// One response: its head (lowercased), and a body framed by `Content-Length` or chunked
    /// (`head_only`: none).
    async fn response(&mut self, head_only: bool) -> (String, String) {
        let head =
            self.read_until("a head", |buf| buf.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4)).await;
        let head = String::from_utf8_lossy(&head).to_lowercase();
        let length = head.lines().find_map(|line| line.strip_prefix("content-length: ")).map(str::trim);
        let body = if head_only {
            Vec::new()
        } else if let Some(length) = length {
            let length: usize = length.parse().expect("a numeric content-length");
            self.read_until("a body", |buf| (buf.len() >= length).then_some(length)).await
        } else {
            assert!(head.contains("transfer-encoding: chunked"), "neither length nor chunked: {head}");
            let body = self
                .read_until("a chunked body", |buf| buf.windows(5).position(|w| w == b"0\r\n\r\n").map(|at| at + 5));
            dechunk(&body.await)
        };
        (head, String::from_utf8_lossy(&body).into_owned())
    }

    async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut byte)).await;
        self.buf.is_empty() && matches!(read, Ok(Ok(0) | Err(_)))
    }
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|w| w == b"\r\n").expect("a chunk-size line");
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[..line_end]).expect("ascii"), 16).expect("hex");
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

async fn connect(server: &Server) -> Client {
    Client { stream: TcpStream::connect(server.addr).await.expect("connect"), buf: Vec::new() }
}

#[tokio::test]
async fn keep_alive_requests_are_answered_in_order_with_length_and_date() {
    let mut server = server().await;
    let mut stream = connect(&server).await;
    for path in ["/one", "/two?x=1"] {
        stream.write(format!("GET {path} HTTP/1.1\r\nHost: web\r\n\r\n").as_bytes()).await;
        let (head, body) = stream.response(false).await;
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert!(head.contains("\r\ndate: "), "no date: {head}");
        assert_eq!(body, format!("GET {path} "));
    }
    assert_eq!(server.seen.recv().await.as_deref(), Some("GET /one "));
}

#[tokio::test]
async fn pipelined_requests_and_an_inline_body_are_served_from_one_read() {
    let server = server().await;
    let mut stream = connect(&server).await;
    let pipeline =
        "POST /a HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: web\r\n\r\n";
    stream.write(pipeline.as_bytes()).await;
    assert_eq!(stream.response(false).await.1, "POST /a hello");
    assert_eq!(stream.response(false).await.1, "GET /b ");
}

#[tokio::test]
async fn a_body_of_unknown_length_is_chunked() {
    let server = server().await;
    let mut stream = connect(&server).await;
    stream.write(b"GET /chunked HTTP/1.1\r\nHost: web\r\n\r\n").await;
    let (head, body) = stream.response(false).await;
    assert!(!head.contains("content-length"), "{head}");
    assert_eq!(body, "hello, world");
    // The connection goes on after the last chunk.
    stream.write(b"GET /after HTTP/1.1\r\nHost: web\r\n\r\n").await;
    assert_eq!(stream.response(false).await.1, "GET /after ");
}

#[tokio::test]
async fn a_head_answer_keeps_its_length_and_sends_no_body() {
    let server = server().await;
    let mut stream = connect(&server).await;
    stream.write(b"HEAD /head HTTP/1.1\r\nHost: web\r\n\r\nGET /next HTTP/1.1\r\nHost: web\r\n\r\n").await;
    let (head, _) = stream.response(true).await;
    assert!(head.contains("content-length: 42"), "{head}");
    assert_eq!(stream.response(false).await.1, "GET /next ");
}

#[tokio::test]
async fn connection_close_is_answered_then_closed() {
    let server = server().await;
    let mut stream = connect(&server).await;
    stream.write(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").await;
    let (head, _) = stream.response(false).await;
    assert!(head.contains("connection: close"), "{head}");
    assert!(stream.closed().await, "still open after connection: close");
    assert_eq!(server.ended.await.expect("ended"), None);
}

#[tokio::test]
async fn unusual_requests_go_to_hyper_with_their_bytes() {
    let cases: [&[u8]; 6] = [
        b"POST /c HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: web\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: web\r\n\r\n",
        b"POST /big HTTP/1.1\r\nHost: web\r\nContent-Length: 2000\r\n\r\nxx",
    ];
    for case in cases {
        let server = server().await;
        let mut stream = connect(&server).await;
        let served = b"GET /first HTTP/1.1\r\nHost: web\r\n\r\n";
        stream.write(served).await;
        assert_eq!(stream.response(false).await.1, "GET /first ");
        stream.write(case).await;
        let prefix = server.ended.await.expect("ended").expect("handed over");
        assert_eq!(&prefix[..], case, "{}", String::from_utf8_lossy(case));
    }
}

#[tokio::test]
async fn a_body_still_on_its_way_goes_to_hyper() {
    let server = server().await;
    let mut stream = connect(&server).await;
    let head = b"POST /slow HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhe";
    stream.write(head).await;
    assert_eq!(&server.ended.await.expect("ended").expect("handed over")[..], head);
}

#[tokio::test]
async fn the_end_of_input_after_a_pipeline_does_not_cancel_what_came_before() {
    let server = server().await;
    let mut stream = connect(&server).await;
    stream.write(b"GET /slow HTTP/1.1\r\nHost: web\r\n\r\nGET /b HTTP/1.1\r\nHost: web\r\n\r\n").await;
    stream.stream.shutdown().await.expect("half-close");
    assert_eq!(stream.response(false).await.1, "GET /slow ");
}

#[tokio::test]
async fn a_client_that_leaves_cancels_its_request() {
    let mut server = server().await;
    let mut stream = connect(&server).await;
    stream.write(b"GET /hang HTTP/1.1\r\nHost: web\r\n\r\n").await;
    assert_eq!(server.seen.recv().await.as_deref(), Some("GET /hang "));
    drop(stream);
    assert_eq!(server.ended.await.expect("ended"), None);
    assert_eq!(server.cancelled.load(Ordering::SeqCst), 1, "the request's future was not dropped");
}

#[tokio::test]
async fn silent_and_idle_connections_are_closed_after_the_header_timeout() {
    let silent_server = server().await;
    let mut silent = connect(&silent_server).await;
    assert!(silent.closed().await, "a silent connection stayed open");
    assert_eq!(silent_server.ended.await.expect("ended"), None);

    let idle_server = server().await;
    let mut idle = connect(&idle_server).await;
    idle.write(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await;
    idle.response(false).await;
    assert!(idle.closed().await, "an idle keep-alive connection stayed open");

    let dribble_server = server().await;
    let mut dribble = connect(&dribble_server).await;
    dribble.write(b"GET / HTTP/1.1\r\n").await;
    let dribbling = async {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if dribble.stream.write_all(b"X").await.is_err() {
                break;
            }
        }
    };
    let ((), ended) = tokio::join!(dribbling, dribble_server.ended);
    assert_eq!(ended.expect("ended"), None, "a dribbled head was not cut off");
}

#[test]
fn hex_chunk_sizes() {
    for n in [0usize, 1, 15, 16, 255, 4096, 1 << 40] {
        let mut out = Vec::new();
        write_hex(&mut out, n);
        assert_eq!(String::from_utf8(out).expect("ascii"), format!("{n:x}"));
    }
}
