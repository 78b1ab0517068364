//! What passes through the gateway and how: the 503 fast path, edge headers (over HTTP/2 too), and upgraded
//! connections.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{AbortOnDrop, MockUpstream, PATIENCE, Reply, TestClient, TestGateway, config, status_of, table};

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

/// HTTP/2 carries the host as `:authority` and lets a client split its cookies over fields; an HTTP/1.1
/// replica still gets `Host`, `X-Forwarded-Host` and one `Cookie` line (RFC 9113 §8.2.3).
#[tokio::test]
async fn an_http2_request_reaches_an_http1_replica_with_its_host_and_one_cookie_line() {
    let web = MockUpstream::start("web", Reply::Ok).await;
    let gw = TestGateway::start(config()).await;
    gw.gateway.update(&table(vec![web.grouped()]));
    let stream = TcpStream::connect(gw.addr).await.expect("connect to the gateway");
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("an HTTP/2 connection without TLS");
    let _conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let authority = format!("web.localhost:{}", gw.addr.port());
    let req = Request::get(format!("http://{authority}/h2"))
        .header(http::header::COOKIE, "a=1")
        .header(http::header::COOKIE, "b=2; c=3")
        .body(Full::<Bytes>::default())
        .expect("valid request");
    let res = tokio::time::timeout(PATIENCE, send.send_request(req)).await.expect("in time").expect("an answer");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), http::Version::HTTP_2);
    let seen = web.seen().pop().expect("the replica got the request");
    let cookies: Vec<_> = seen.headers.get_all(http::header::COOKIE).iter().collect();
    assert_eq!(cookies, ["a=1; b=2; c=3"]);
    assert_eq!(seen.headers[http::header::HOST], authority);
    assert_eq!(seen.headers["x-forwarded-host"], authority);
}

/// A request target in absolute form names the host; a `Host` that says otherwise is ignored (RFC 9112
/// §3.2.2), both for routing and for what the replica is told.
#[tokio::test]
async fn an_absolute_target_routes_by_its_own_host_not_the_host_field() {
    let web = MockUpstream::start("web", Reply::Ok).await;
    let api = MockUpstream::start("api", Reply::Ok).await;
    let gw = TestGateway::start(config()).await;
    let mut routing = table(vec![web.grouped()]);
    let mut api_service = routing.services[0].clone();
    (api_service.name, api_service.hosts, api_service.endpoints) =
        ("api".to_owned(), vec!["api.example".to_owned()], vec![api.grouped()]);
    routing.services.push(api_service);
    gw.gateway.update(&routing);
    let request = b"GET http://api.example:8080/abs HTTP/1.1\r\nHost: web.localhost\r\nConnection: close\r\n\r\n";
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect to the gateway");
    stream.write_all(request).await.expect("write the request");
    let head = tokio::time::timeout(PATIENCE, read_head(&mut stream)).await.expect("an answer in time");
    assert_eq!(status_of(&head), Some(200), "{}", String::from_utf8_lossy(&head));
    assert_eq!(web.hits(), 0, "routed by the Host field");
    let seen = api.seen().pop().expect("api got the request");
    assert_eq!(seen.headers[http::header::HOST], "api.example:8080");
    assert_eq!(seen.headers["x-forwarded-host"], "api.example:8080");
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

/// A replica that answers every request on a connection with `response`, as written.
async fn scripted_replica(response: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound listener has an address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = stream.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    read.extend_from_slice(&chunk[..n]);
                    while let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                        read.drain(..end + 4);
                        if stream.write_all(response).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// The response fields a raw HTTP/1.x request gets, as sorted lowercase `name: value` lines (`Date` and
/// `Connection` left out), and the body.
async fn fields_for(gateway: std::net::SocketAddr, request: &[u8]) -> (Vec<String>, String) {
    let mut stream = TcpStream::connect(gateway).await.expect("connect to the gateway");
    stream.write_all(request).await.expect("write the request");
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received)).await;
    read.expect("an answer in time").expect("read the answer");
    let text = String::from_utf8(received).expect("a text answer").to_ascii_lowercase();
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
    let mut fields: Vec<String> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| !matches!(*name, "date" | "connection"))
        .map(|(name, value)| format!("{name}: {}", value.trim()))
        .collect();
    fields.sort();
    (fields, body.to_owned())
}

#[tokio::test]
async fn a_replicas_fields_reach_clients_without_hop_by_hop_ones_and_the_gateways_replace_its_own() {
    let replica = scripted_replica(
        b"HTTP/1.1 200 OK\r\nServer: scripted\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
          X-Request-Id: theirs\r\nSet-Cookie: a=1\r\nContent-Length: 2\r\nVary: Accept\r\n\r\nok",
    )
    .await;
    let gw = TestGateway::start(config()).await;
    let web = berth_gateway::Upstream { instance: "web-0".into(), addr: replica, group: "web".into(), weight: 100 };
    gw.gateway.update(&table(vec![web]));
    let expected = ["content-length: 2", "server: scripted", "set-cookie: a=1", "vary: accept", "x-request-id: req-7"];
    // HTTP/1.1 is served by the gateway's own server side, which writes the replica's lines as read;
    // HTTP/1.0 goes to hyper, which gets them merged into the response's map. Both must show the same.
    for request in [
        &b"GET / HTTP/1.1\r\nHost: web\r\nX-Request-Id: req-7\r\nConnection: close\r\n\r\n"[..],
        &b"GET / HTTP/1.0\r\nHost: web\r\nX-Request-Id: req-7\r\n\r\n"[..],
    ] {
        let (fields, body) = fields_for(gw.addr, request).await;
        assert_eq!(fields, expected, "{}", String::from_utf8_lossy(request));
        assert_eq!(body, "ok");
    }
}
