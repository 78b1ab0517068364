//! An HTTP/2 client's request reaches an HTTP/1.1 replica as the same request from an HTTP/1.1 client
//! does, and the replica's answer reaches it as it reaches an HTTP/1.1 client.
//!
//! On the way there, for generated requests (methods, targets, fields a browser or an API client sends,
//! bodies), the replica reads the same method, target, fields and body whichever protocol the client
//! spoke. What HTTP/2 does differently on the wire (the host as `:authority`, cookies split over fields,
//! lowercase names) is the gateway's to translate; fields the gateway makes up anew (a request id, a
//! `traceparent`) are compared by presence only. On the way back, for generated answers, both clients read
//! the same, or both fail to.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::one_replica::{gateway, table};
use crate::test_rng::{Choices, Rng};
use crate::upstream::h1::agreement::{
    Taken, generate as generate_answer, hyper_exchange, hyper_takes_from, replica as replica_once,
};

const METHODS: Choices = Choices { sane: "GET|GET|GET|HEAD|POST|POST|PUT|DELETE|OPTIONS|PATCH", odd: "" };
const PATHS: Choices = Choices {
    sane: "/|/api/v1/items|/a/b/c.html|/search?q=x&page=2|/%7Euser/|/p;matrix=1|/q?|/x?a=1&a=2|/*any",
    odd: "",
};
/// Fields that mean the same in HTTP/1.1 and HTTP/2 (none of the connection-specific ones HTTP/2 forbids),
/// with values that fit any of them. A `cookie` is split over fields on the HTTP/2 side.
const NAMES: Choices = Choices {
    sane: "accept|accept-encoding|accept-language|user-agent|content-type|authorization|cookie|cookie|\
           if-none-match|cache-control|x-api-key|x-custom|x-forwarded-for|x-request-id|traceparent|te|\
           x-source|x-forwarded-proto|x-forwarded-host|forwarded|referer|origin|range",
    odd: "",
};
const VALUES: Choices = Choices {
    sane: "*/*|text/html, application/json;q=0.9|gzip, br|en-US,en;q=0.5|curl/8.5.0|application/json|\
           Bearer abc.def|session=1; theme=dark; lang=en|\"v1\"|no-cache|key-42|x|10.1.2.3|req-7|\
           00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01|trailers|billing|https|evil.example|\
           for=192.0.2.60;proto=http|https://a.example/p|bytes=0-99|a=1",
    odd: "",
};

/// One request as a client means it: method, target, fields (names lowercase, as HTTP/2 has them), body.
#[derive(Debug)]
struct Case {
    method: Method,
    path: &'static str,
    fields: Vec<(&'static str, &'static str)>,
    body: Bytes,
}

fn generate(rng: &mut Rng) -> Case {
    let text = |bytes: &'static [u8]| std::str::from_utf8(bytes).unwrap_or_default();
    let method = Method::from_bytes(rng.choose(&METHODS, false)).unwrap_or(Method::GET);
    let path = text(rng.choose(&PATHS, false));
    let fields = (0..rng.below(7)).map(|_| (text(rng.choose(&NAMES, false)), text(rng.choose(&VALUES, false))));
    let fields: Vec<_> = fields.filter(|(name, value)| *name != "te" || *value == "trailers").collect();
    let body = match rng.below(3) {
        0 if method != Method::HEAD => Bytes::from(vec![b'b'; 1 + rng.below(3000)]),
        _ => Bytes::new(),
    };
    Case { method, path, fields, body }
}

/// What the replica read of one request: fields of different names sorted by name (their order is free,
/// RFC 9110 §5.3), of one name in their order; the gateway's own new ids by presence.
#[derive(Debug, PartialEq, Eq)]
struct Read {
    method: Method,
    target: String,
    fields: Vec<(String, Vec<u8>)>,
    body: Bytes,
}

impl Read {
    fn new(method: Method, target: String, headers: &HeaderMap, body: Bytes) -> Read {
        let mut fields: Vec<_> = headers
            .iter()
            .map(|(name, value)| {
                let made_anew = (name == "x-request-id" && value != "req-7")
                    || (name == "traceparent" && !value.as_bytes().starts_with(b"00-0af7651916cd43dd"));
                let value = if made_anew { b"(new)".to_vec() } else { value.as_bytes().to_vec() };
                (name.to_string(), value)
            })
            .collect();
        fields.sort_by(|(a, _), (b, _)| a.cmp(b));
        Read { method, target, fields, body }
    }
}

/// A replica (hyper's HTTP/1.1 server) that keeps what it reads and answers 200 `ok`.
async fn replica() -> (std::net::SocketAddr, Arc<Mutex<Vec<Read>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let read = Arc::new(Mutex::new(Vec::new()));
    let keeps = read.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let keeps = keeps.clone();
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let keeps = keeps.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body.collect().await.map(|body| body.to_bytes()).unwrap_or_default();
                    let target = parts.uri.to_string();
                    let read = Read::new(parts.method, target, &parts.headers, body);
                    keeps.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(read);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::spawn(conn);
        }
    });
    (addr, read)
}

/// Sends `case` to the gateway at `addr` over HTTP/1.1 (`Host`, cookies on one line) or HTTP/2 (the host
/// as `:authority`, every cookie pair a field of its own); returns the status.
async fn send(addr: std::net::SocketAddr, case: &Case, version: Version) -> Result<u16, String> {
    let mut req = Request::builder().method(case.method.clone());
    req = match version {
        Version::HTTP_2 => req.uri(format!("http://web.localhost{}", case.path)),
        _ => req.uri(case.path).header(http::header::HOST, "web.localhost"),
    };
    let mut req = req.body(Full::new(case.body.clone())).map_err(|error| error.to_string())?;
    let headers = req.headers_mut();
    // hyper's HTTP/2 client declares a length for every method that may have a body, its HTTP/1.1 client
    // only where there is one or for POST, PUT and PATCH: both say it here, as the HTTP/2 one would.
    if !case.body.is_empty() || !matches!(case.method, Method::GET | Method::HEAD | Method::DELETE) {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(case.body.len()));
    }
    for &(name, value) in &case.fields {
        let pieces: Vec<&str> = match (name, version) {
            ("cookie", Version::HTTP_2) => value.split("; ").collect(),
            _ => vec![value],
        };
        for piece in pieces {
            headers.append(name, HeaderValue::from_static(piece));
        }
    }
    let (parts, _) = hyper_exchange(addr, req, version, Duration::from_secs(5)).await?;
    Ok(parts.status.as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_reads_an_http2_request_as_the_same_request_over_http1() {
    let (seed, cases) = crate::test_rng::seed_and_cases();
    let (gateway, addr) = gateway().await;
    let (replica, read) = replica().await;
    gateway.update(&table(0, replica));
    let take = || std::mem::take(&mut *read.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    for case_number in 0..cases / 4 {
        let case = generate(&mut Rng::for_case(seed, case_number));
        let mut read_as = Vec::new();
        for version in [Version::HTTP_11, Version::HTTP_2] {
            let status = send(addr, &case, version).await;
            let status = status.unwrap_or_else(|error| panic!("case {case_number} (seed {seed:#x}) {case:?}: {error}"));
            assert_eq!(status, 200, "case {case_number} (seed {seed:#x}) over {version:?}: {case:?}");
            let mut taken = take();
            assert_eq!(taken.len(), 1, "case {case_number} (seed {seed:#x}) over {version:?}: {case:?}");
            read_as.extend(taken.pop());
        }
        assert_eq!(
            read_as[1], read_as[0],
            "case {case_number} (seed {seed:#x}): {case:?} from an HTTP/2 client (left) and an HTTP/1.1 one"
        );
    }
}

/// What an HTTP/1.1 client and then an HTTP/2 client of the gateway read of `answer` to `method` (each
/// from a replica of its own, `instance` and the next number); a read that failed is only that.
async fn both_read(
    (gateway, addr): &(crate::Gateway, std::net::SocketAddr),
    instance: u64,
    answer: &[u8],
    method: &Method,
) -> Vec<Result<Taken, &'static str>> {
    let mut taken = Vec::new();
    for (version, instance) in [(Version::HTTP_11, instance), (Version::HTTP_2, instance + 1)] {
        gateway.update(&table(instance, replica_once(answer.to_vec()).await));
        let outcome = hyper_takes_from(*addr, method, version).await.map(|mut taken| {
            let made_here = |name: &str, value: &[u8]| name == "date" && value.ends_with(b"GMT");
            taken.fields.retain(|(name, value)| name != "x-request-id" && !made_here(name, value));
            taken
        });
        // Why a read failed is said differently by the two protocols; that it failed is what counts.
        taken.push(outcome.map_err(|_| "the client could not read the answer whole"));
    }
    taken
}

/// The way back: for generated replica answers, valid, odd and broken (`upstream::h1::agreement`), an
/// HTTP/2 client of the gateway reads what an HTTP/1.1 client reads (status, end-to-end fields, body; the
/// gateway's 502 for an answer it refuses), or both fail to read it (a body cut short).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_reads_an_answer_as_an_http1_client_does() {
    let (seed, cases) = crate::test_rng::seed_and_cases();
    let gateway = gateway().await;
    let (mut read, mut cut) = (0, 0);
    // An eighth of the cases: each takes six sockets, and `answers.rs` tries a quarter over HTTP/1.1 alone.
    for case in 0..cases / 8 {
        let mut rng = Rng::for_case(seed, case);
        let answer = generate_answer(&mut rng);
        let method = if rng.one_in(8) { Method::HEAD } else { Method::GET };
        let taken = both_read(&gateway, case * 2, &answer, &method).await;
        assert_eq!(
            taken[1],
            taken[0],
            "case {case} (seed {seed:#x}): to {method} the replica answered {:?}; an HTTP/2 client read the left, \
             an HTTP/1.1 client the right",
            String::from_utf8_lossy(&answer),
        );
        if taken[0].is_ok() { read += 1 } else { cut += 1 }
    }
    println!("{} generated answers: {read} read alike over HTTP/1.1 and HTTP/2, {cut} failed alike", cases / 8);
    assert!(read > cases / 16, "only {read} of {} answers were read", cases / 8);
}

/// The answers the generated cases found read differently, before the gateway was made to:
/// - a `Content-Length` on a 204 (RFC 9110 §8.6), or a bad one on an answer without content, was passed
///   on, and an HTTP/2 client refuses it;
/// - a `101` to a request that did not ask to switch went to the client, which over HTTP/1.1 takes its
///   connection for switched; now it is the replica's failure, a 502;
/// - the gateway's own answer to a HEAD (here a 502) went to an HTTP/2 client with its content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_once_read_differently_over_http2_read_alike() {
    let gateway = gateway().await;
    let cases: [(&[u8], Method, u16); 5] = [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", Method::GET, 204),
        (b"HTTP/1.1 204 OK\r\nX-A: b\r\nContent-Length: timeout=5\r\n\r\n", Method::GET, 204),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n", Method::HEAD, 200),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", Method::GET, 502),
        (b"HTTP/1.1 200 OK\r\nX A: b\r\n\r\n", Method::HEAD, 502),
    ];
    for (number, (answer, method, status)) in cases.into_iter().enumerate() {
        let taken = both_read(&gateway, number as u64 * 2, answer, &method).await;
        let shown = String::from_utf8_lossy(answer);
        assert_eq!(taken[1], taken[0], "to {method} the replica answered {shown:?}: HTTP/2 left, HTTP/1.1 right");
        let read = taken[0].as_ref().unwrap_or_else(|error| panic!("{shown:?} to {method}: {error}"));
        assert_eq!(read.status, status, "{shown:?} to {method}");
        assert!(read.body.is_empty() || method != Method::HEAD, "{shown:?} to {method}: content {:?}", read.body);
    }
}
