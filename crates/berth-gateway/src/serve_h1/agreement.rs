//! Generated request heads, valid and broken: whatever `serve_h1` serves itself, hyper behind the framing
//! guard (the gateway's path for every other request) reads as the same request, field for field and byte
//! for byte of body. A head the two read differently is a request the replica and a peer would disagree
//! on, the stuff of request smuggling; one `serve_h1` leaves to hyper needs no agreement.
//!
//! The cases come from a seeded generator (`crate::test_rng`), so that a failure names its input and can
//! be made again.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{Limits, parse_frozen};
use crate::framing::FramingGuard;
use crate::test_rng::{Choices, Rng};

const LIMITS: Limits = Limits { max_head: 8192, max_body: 1024, header_read_timeout: Duration::from_secs(1) };

/// What a server took a request to be.
#[derive(Debug, PartialEq, Eq)]
struct Read {
    method: String,
    uri: String,
    version: http::Version,
    fields: Vec<(String, Vec<u8>)>,
    body: Result<Bytes, String>,
}

impl Read {
    fn new(parts: &http::request::Parts, body: Result<Bytes, String>) -> Read {
        Read {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            version: parts.version,
            fields: parts.headers.iter().map(|(name, value)| (name.to_string(), value.as_bytes().to_vec())).collect(),
            body,
        }
    }
}

const METHODS: Choices =
    Choices { sane: "GET|GET|GET|POST|PUT|HEAD|DELETE|OPTIONS|PATCH", odd: "CONNECT|get|BREW|M-SEARCH|G\u{e9}T|" };
const TARGETS: Choices = Choices {
    sane: "/|/|/a/b?c=d&e|/x/%20y|*|http://example.com/x?y|//x",
    odd: "/%zz|/a b|/\u{7f}|/\u{e9}|example.com:80|/?q=\"<>\"|/#frag||/\t",
};
const VERSIONS: Choices = Choices { sane: "HTTP/1.1", odd: "HTTP/1.0|HTTP/2.0|http/1.1|HTTP/1.10|HTTP/1.1 " };
const NAMES: Choices = Choices {
    sane: "Host|Host|host|Content-Length|content-length|Connection|Cookie|X-Api-Key|X-Source|X-Forwarded-For|traceparent|Accept|X-A",
    odd: "Transfer-Encoding|Upgrade|Expect|TE|x_b|X A|X-A | X-Lead|\tX||X(A)|X-\u{dc}|Content-Length |Transfer-Encoding\u{0}",
};
const VALUES: Choices = Choices {
    sane: "example.com|berth.localhost|x.example.com:8080||a\tb|0|5|keep-alive|close|a=b; c=d|*/*|1.2.3.4",
    odd: " padded |05|+5|5, 5|5,6|-1|0x5|99999999999999999999|chunked|Chunked|gzip, chunked|Close, foo|upgrade|100-continue|trailers|\u{e9}t\u{e9}|x\u{0}y|x\u{7f}|x\ry",
};

/// One input: a request line, fields, an end of head, a body and sometimes what follows it; a wild one
/// takes odd parts too and has a few bytes changed.
pub(crate) fn generate(rng: &mut Rng) -> Vec<u8> {
    let wild = rng.one_in(2);
    let mut out = Vec::new();
    out.extend_from_slice(rng.choose(&METHODS, wild));
    out.extend_from_slice(if wild && rng.one_in(10) { b"  " } else { b" " });
    out.extend_from_slice(rng.choose(&TARGETS, wild));
    out.push(b' ');
    out.extend_from_slice(rng.choose(&VERSIONS, wild));
    out.extend_from_slice(rng.eol(wild));
    let body_len = rng.below(24);
    rng.fields(&mut out, (&NAMES, &VALUES), wild, body_len, 6);
    out.extend((0..body_len).map(|i| b'a' + (i % 26) as u8));
    if rng.one_in(4) {
        out.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n");
    }
    if wild {
        rng.mutate(&mut out);
    }
    out
}

/// The first request hyper, behind the framing guard, hands its service when a client sends `input`;
/// `None` when it ends the connection (or waits for more) without one.
async fn hyper_reads(input: &[u8]) -> Option<Read> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|body| body.to_bytes()).map_err(|error| error.to_string());
            let _ = tx.send(Read::new(&parts, body));
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<Bytes>::new()))
        }
    });
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1.timer(TokioTimer::new()).header_read_timeout(Duration::from_secs(1)).max_buf_size(LIMITS.max_head);
    let conn = http1.serve_connection(TokioIo::new(FramingGuard::new(server, LIMITS.max_head)), service);
    let served = tokio::spawn(conn.with_upgrades());
    client.write_all(input).await.ok()?;
    let read = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.ok().flatten();
    served.abort();
    read
}

#[tokio::test]
async fn what_serve_h1_serves_hyper_reads_the_same() {
    let (seed, cases) = crate::test_rng::seed_and_cases();
    let (mut served, mut left) = (0, 0);
    for case in 0..cases {
        let mut rng = Rng::for_case(seed, case);
        let input = generate(&mut rng);
        let read = Bytes::from(input.clone());
        let Ok(Some((head, taken))) = parse_frozen(&read, &LIMITS, &mut None) else {
            left += 1;
            continue;
        };
        served += 1;
        let (parts, body) = head.req.into_parts();
        let body = body.collect().await.map(|body| body.to_bytes()).map_err(|error| error.to_string());
        let ours = Read::new(&parts, body);
        let theirs = hyper_reads(&input).await;
        assert_eq!(
            Some(&ours),
            theirs.as_ref(),
            "case {case} (seed {seed:#x}): serve_h1 served {:?} (taking {taken} bytes) and hyper read it otherwise",
            String::from_utf8_lossy(&input),
        );
        let head_len = taken - ours.body.as_ref().map_or(0, Bytes::len);
        assert!(input[..head_len].ends_with(b"\n"), "case {case}: the body is taken from the head's end");
    }
    println!("{cases} generated inputs: {served} served by serve_h1 and read the same by hyper, {left} left to hyper");
    // The generator must reach both sides, or the test proves nothing.
    assert!(served > cases / 10 && left > cases / 10, "served {served}, left {left} of {cases}");
}
