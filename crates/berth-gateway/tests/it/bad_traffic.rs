//! Bad traffic is answered at the edge (4xx, or the connection closed) and never reaches a replica, while
//! a well-behaved client on another connection is served meanwhile.

use std::time::{Duration, Instant};

use berth_gateway::{RoutingTable, ServiceRoutes};
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{
    MockUpstream, PATIENCE, RawOutcome, Reply, TestClient, TestGateway, config, raw_exchange, read_until_closed,
};

#[tokio::test]
async fn a_malformed_request_line_gets_400() {
    check_refused(b"GET /index.html HTTP/1.1 extra\r\nHost: web.localhost\r\n\r\n", 400).await;
}

#[tokio::test]
async fn oversize_headers_get_431() {
    // Past max_header_bytes (8 KiB in these tests).
    let head = format!("GET / HTTP/1.1\r\nHost: web.localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    check_refused(head.as_bytes(), 431).await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    // Past max_body_bytes (1 KiB in these tests).
    let mut req = b"POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 2048\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'x'; 2048]);
    check_refused(&req, 413).await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_gets_400_in_either_order() {
    for headers in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "transfer-encoding: chunked\r\ncontent-length: 0\r\n",
    ] {
        let req = format!("POST / HTTP/1.1\r\nHost: web.localhost\r\n{headers}\r\n0\r\n\r\n");
        check_refused(req.as_bytes(), 400).await;
    }
}

#[tokio::test]
async fn two_different_content_lengths_get_400() {
    let req = "POST / HTTP/1.1\r\nHost: web.localhost\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
    check_refused(req.as_bytes(), 400).await;
}

#[tokio::test]
async fn an_unknown_transfer_encoding_gets_400() {
    let req = "POST / HTTP/1.1\r\nHost: web.localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n";
    check_refused(req.as_bytes(), 400).await;
}

#[tokio::test]
async fn slowloris_is_disconnected_and_others_are_served() {
    let fixture = Fixture::start().await;
    let mut stream = TcpStream::connect(fixture.gw.addr).await.expect("connect to the gateway");
    let started = Instant::now();
    // One header byte every 100 ms: the head is never complete within header_read_timeout (1 s).
    let dribble = async {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: web.localhost\r\n").await?;
        for byte in b"X-Slow: ".iter().cycle().take(100) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stream.write_all(&[*byte]).await?;
        }
        std::io::Result::Ok(())
    };
    let (dribbled, served) = tokio::join!(dribble, fixture.good_request());
    assert_eq!(served, StatusCode::OK, "a well-behaved client was not served meanwhile");
    assert!(dribbled.is_err(), "the gateway let a head be dribbled for {:?}", started.elapsed());
    let outcome = read_until_closed(&mut stream).await;
    assert!(outcome.closed, "connection still open");
    assert!(started.elapsed() < Duration::from_secs(5), "closed only after {:?}", started.elapsed());
    assert_eq!(fixture.target.hits(), 0);
}

#[tokio::test]
async fn a_silent_connection_is_closed_and_others_are_served() {
    let fixture = Fixture::start().await;
    let mut stream = TcpStream::connect(fixture.gw.addr).await.expect("connect to the gateway");
    let started = Instant::now();
    let (outcome, served) = tokio::join!(read_until_closed(&mut stream), fixture.good_request());
    assert_eq!(served, StatusCode::OK, "a well-behaved client was not served meanwhile");
    assert!(outcome.closed, "a client that sends nothing holds its connection");
    assert!(started.elapsed() < Duration::from_secs(5), "closed only after {:?}", started.elapsed());
}

/// The gateway with two services: `web` (the default), which bad traffic targets, and `good`.
struct Fixture {
    gw: TestGateway,
    target: MockUpstream,
    _good: MockUpstream,
}

impl Fixture {
    async fn start() -> Fixture {
        let target = MockUpstream::start("web", Reply::Ok).await;
        let good = MockUpstream::start("good", Reply::Ok).await;
        let gw = TestGateway::start(config()).await;
        let service = |name: &str, upstream: &MockUpstream| ServiceRoutes {
            name: name.to_owned(),
            hosts: Vec::new(),
            routes: Vec::new(),
            endpoints: vec![upstream.grouped()],
            protocol: Default::default(),
            pools: Vec::new(),
            redirect_https: false,
            sticky: None,
        };
        gw.gateway.update(&RoutingTable {
            services: vec![service("web", &target), service("good", &good)],
            default_service: Some("web".to_owned()),
        });
        Fixture { gw, target, _good: good }
    }

    async fn good_request(&self) -> StatusCode {
        let req = Request::get(self.gw.url("/"))
            .header(http::header::HOST, "good.localhost")
            .body(Full::default())
            .expect("valid request");
        let answer = TestClient::new().send(req).await;
        assert_eq!(answer.body, "good");
        answer.status
    }
}

/// Sends `bytes` on one connection and a good request on another, at the same time.
async fn check_refused(bytes: &[u8], status: u16) {
    let fixture = Fixture::start().await;
    let (outcome, served): (RawOutcome, StatusCode) =
        tokio::join!(raw_exchange(fixture.gw.addr, bytes), fixture.good_request());
    assert_eq!(outcome.status, Some(status), "{}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)]));
    assert!(outcome.closed, "the gateway kept a refused connection open past {PATIENCE:?}");
    assert_eq!(served, StatusCode::OK, "a well-behaved client was not served meanwhile");
    assert_eq!(fixture.target.hits(), 0, "bad traffic reached the replica");
}
