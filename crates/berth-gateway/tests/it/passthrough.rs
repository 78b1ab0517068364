//! What passes through the gateway and how: the 503 fast path, edge headers, and upgraded connections.

use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{MockUpstream, PATIENCE, Reply, TestClient, TestGateway, config, status_of, table};

#[tokio::test]
async fn a_service_without_replicas_answers_503_with_retry_after_at_once() {
    let gw = TestGateway::start(config()).await;
    gw.gateway.update(&table(Vec::new()));
    let answer = TestClient::new().get(&gw.url("/")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.headers.contains_key(http::header::RETRY_AFTER));
    assert!(answer.took < Duration::from_millis(500), "took {:?}", answer.took);
}

#[tokio::test]
async fn edge_headers_are_set_and_source_cannot_be_forged() {
    let web = MockUpstream::start("web", Reply::Ok).await;
    let gw = TestGateway::start(config()).await;
    gw.gateway.update(&table(vec![web.grouped()]));
    let req = Request::get(gw.url("/"))
        .header("x-source", "billing")
        .header("x-request-id", "req-42")
        .body(Full::default())
        .expect("valid request");
    let answer = TestClient::new().send(req).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["x-request-id"], "req-42");
    let seen = web.seen().pop().expect("the replica got the request");
    assert_eq!(seen.headers["x-source"], "external");
    assert_eq!(seen.headers["x-request-id"], "req-42");
    let traceparent = seen.headers["traceparent"].to_str().expect("ascii traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    let lengths: Vec<usize> = parts.iter().map(|part| part.len()).collect();
    assert_eq!(lengths, [2, 32, 16, 2], "{traceparent}");
    assert!(traceparent.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()), "{traceparent}");
}

#[tokio::test]
async fn an_upgraded_connection_passes_bytes_both_ways() {
    let echo = MockUpstream::start("echo", Reply::Echo).await;
    let gw = TestGateway::start(config()).await;
    gw.gateway.update(&table(vec![echo.grouped()]));

    let mut stream = TcpStream::connect(gw.addr).await.expect("connect to the gateway");
    let upgrade = "GET /ws HTTP/1.1\r\nHost: web.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
    stream.write_all(upgrade.as_bytes()).await.expect("send the upgrade request");
    let head = tokio::time::timeout(PATIENCE, read_head(&mut stream)).await.expect("an answer in time");
    assert_eq!(status_of(&head), Some(101), "{}", String::from_utf8_lossy(&head));

    for message in [&b"ping"[..], b"GET / HTTP/1.1\r\n", b"\x00\x01 binary \xff"] {
        stream.write_all(message).await.expect("write through the tunnel");
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut echoed))
            .await
            .expect("echo in time")
            .expect("read the echo");
        assert_eq!(echoed, message);
    }
}

/// Reads a response head byte by byte, so that nothing after it is consumed.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read_u8().await {
            Ok(byte) => head.push(byte),
            Err(_) => break,
        }
    }
    head
}
