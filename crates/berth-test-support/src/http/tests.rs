use std::net::TcpListener;
use std::thread::{self, JoinHandle};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(5);

/// How the in-test server ends the exchange after writing its response.
#[derive(Clone, Copy, PartialEq)]
enum End {
    /// Close the connection right away.
    Close,
    /// Keep the connection open until the client closes it.
    WaitForClient,
}

/// Serves one connection on 127.0.0.1:0: reads the request (head and `Content-Length` body),
/// writes `response`, and hands the raw request back through the join handle.
fn serve_once(response: &[u8], end: End) -> (SocketAddr, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let response = response.to_vec();
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let request = read_request(&mut stream);
        stream.write_all(&response).unwrap();
        if end == End::WaitForClient {
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        }
        request
    });
    (addr, handle)
}

fn read_request(stream: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "client closed before sending a request");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let body_len: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().unwrap());
    while buf.len() < head_end + body_len {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "client closed before sending the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[test]
fn content_length_body_does_not_wait_for_close() {
    let (addr, server) = serve_once(
        b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
        End::WaitForClient,
    );
    let (status, headers, body) =
        http_request(addr, "POST", "/echo?x=1", &[("X-Test", "yes")], b"ping", TIMEOUT).unwrap();
    assert_eq!(status, 201);
    assert_eq!(
        headers,
        vec![("Content-Type".to_string(), "text/plain".to_string()), ("Content-Length".to_string(), "5".to_string()),]
    );
    assert_eq!(body, b"hello");

    let request = server.join().unwrap();
    assert_eq!(
        request,
        format!(
            "POST /echo?x=1 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Length: 4\r\nX-Test: yes\r\n\r\nping"
        )
    );
}

#[test]
fn chunked_body_with_extensions_and_trailers() {
    let (addr, server) = serve_once(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        End::WaitForClient,
    );
    let (status, body) = http_get(addr, "/", TIMEOUT).unwrap();
    assert_eq!((status, body.as_str()), (200, "hello, world"));
    assert!(server.join().unwrap().starts_with("GET / HTTP/1.1\r\n"));
}

#[test]
fn body_without_length_runs_until_close() {
    let (addr, server) = serve_once(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", End::Close);
    assert_eq!(http_get(addr, "/", TIMEOUT).unwrap(), (200, "until the end".to_string()));
    server.join().unwrap();
}

#[test]
fn interim_responses_are_skipped() {
    let (addr, server) = serve_once(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope",
        End::WaitForClient,
    );
    assert_eq!(http_get(addr, "/missing", TIMEOUT).unwrap(), (404, "nope".to_string()));
    server.join().unwrap();
}

#[test]
fn head_and_no_content_answers_have_no_body() {
    let (addr, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", End::WaitForClient);
    let (status, _, body) = http_request(addr, "HEAD", "/", &[], b"", TIMEOUT).unwrap();
    assert_eq!((status, body.len()), (200, 0));
    server.join().unwrap();

    let (addr, server) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n", End::WaitForClient);
    assert_eq!(http_get(addr, "/", TIMEOUT).unwrap(), (204, String::new()));
    server.join().unwrap();
}

#[test]
fn silent_server_times_out() {
    let (addr, server) = serve_once(b"", End::WaitForClient);
    let started = Instant::now();
    let error = http_get(addr, "/slow", Duration::from_millis(300)).unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    assert!(error.to_string().starts_with("GET http://"), "{error}");
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    server.join().unwrap();
}

#[test]
fn truncated_body_is_an_error() {
    let (addr, server) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", End::Close);
    let error = http_get(addr, "/", TIMEOUT).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof, "{error}");
    server.join().unwrap();
}

#[test]
fn refused_connection_is_an_error() {
    let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // The listener is dropped, so nothing listens on `addr` any more.
    let error = http_get(addr, "/healthz", TIMEOUT).unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused, "{error}");
    assert!(error.to_string().contains(&format!("GET http://{addr}/healthz")), "{error}");
}

#[test]
fn chunked_decoding_waits_for_the_whole_body() {
    let full = b"3\r\nabc\r\n0\r\n\r\n";
    for end in 0..full.len() {
        assert_eq!(decode_chunked(&full[..end]).unwrap(), None, "prefix {end}");
    }
    assert_eq!(decode_chunked(full).unwrap(), Some(b"abc".to_vec()));
    assert!(decode_chunked(b"zz\r\n").is_err());
    assert!(decode_chunked(b"3\r\nabcXY0\r\n\r\n").is_err());
}

#[test]
fn request_head_respects_given_headers() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let head = request_head(addr, "PUT", "/x", &[("host", "example.test"), ("Content-Length", "0")], 0);
    assert_eq!(
        String::from_utf8(head).unwrap(),
        "PUT /x HTTP/1.1\r\nConnection: close\r\nhost: example.test\r\nContent-Length: 0\r\n\r\n"
    );
    let head = request_head(addr, "GET", "/", &[], 0);
    assert_eq!(String::from_utf8(head).unwrap(), "GET / HTTP/1.1\r\nHost: 127.0.0.1:9\r\nConnection: close\r\n\r\n");
}
