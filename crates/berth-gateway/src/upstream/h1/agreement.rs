//! Generated replica answers, valid and broken: whatever response the gateway's own HTTP/1.1 client
//! takes from a replica, hyper's client takes the same (status, end-to-end fields, body byte for byte).
//! Where the two disagree on a response's framing, a pooled connection would hand the next client the
//! tail of someone else's answer. An answer the gateway refuses (an error, never a response) needs no
//! agreement: it goes to the client as a 502.
//!
//! The cases come from a seeded generator (`crate::test_rng`), so that a failure names its input and can
//! be made again.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, Version};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::test_rng::{Choices, Rng};
use crate::upstream::{UpstreamBody, UpstreamClient};

/// What a client took an answer to be; hop-by-hop fields, which stop at a proxy, left out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Taken {
    pub(crate) status: u16,
    pub(crate) fields: Vec<(String, Vec<u8>)>,
    pub(crate) body: Bytes,
}

impl Taken {
    pub(crate) fn new(status: http::StatusCode, headers: &http::HeaderMap, body: Bytes) -> Taken {
        const HOP_BY_HOP: &[&str] =
            &["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];
        // Fields a `Connection` names are hop-by-hop too (RFC 9110 §7.6.1).
        let named: Vec<String> = headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|value| crate::headers::list_tokens(value.as_bytes()))
            .map(|token| String::from_utf8_lossy(token).to_ascii_lowercase())
            .collect();
        // The gateway drops a `Content-Length` that `Transfer-Encoding` overrides; the body says the rest.
        let mut fields: Vec<_> = headers
            .iter()
            .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()) && !named.iter().any(|n| n == name.as_str()))
            .filter(|(name, _)| *name != http::header::CONTENT_LENGTH)
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect();
        // Fields of different names may come in any order (RFC 9110 §5.3); of one name, only in theirs.
        fields.sort_by(|(a, _), (b, _)| a.cmp(b));
        Taken { status: status.as_u16(), fields, body }
    }
}

const VERSIONS: Choices = Choices { sane: "HTTP/1.1|HTTP/1.1|HTTP/1.0", odd: "http/1.1|HTTP/2|HTTP/1.1 " };
const CODES: Choices = Choices { sane: "200|200|200|201|204|301|304|404|500|503", odd: "101|099|1000|2OO|999|" };
const REASONS: Choices = Choices { sane: "OK|OK||Some Reason", odd: "\u{e9}|x\ty" };
const NAMES: Choices = Choices {
    sane: "Content-Length|Content-Length|content-length|Transfer-Encoding|Connection|Keep-Alive|Date|Content-Type|X-A|Set-Cookie",
    odd: "Trailer|Upgrade|X A|X-A ||Transfer-Encoding\u{0}",
};
const VALUES: Choices = Choices {
    sane: "0|5|chunked|chunked|gzip, chunked|close|keep-alive|x-a|timeout=5|text/plain|a=b|",
    odd: "05|+5|5, 5|5,6|-1|99999999999999999999|Chunked|chunked, gzip|gzip|x\u{0}y",
};

/// One answer: sometimes an interim `100` first, then a status line, fields and a body, framed by what
/// the fields say (mostly truthfully); a wild one takes odd parts too and has a few bytes changed.
pub(crate) fn generate(rng: &mut Rng) -> Vec<u8> {
    let wild = rng.one_in(2);
    let mut out = Vec::new();
    if rng.one_in(10) {
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    out.extend_from_slice(rng.choose(&VERSIONS, wild));
    out.push(b' ');
    out.extend_from_slice(rng.choose(&CODES, wild));
    out.push(b' ');
    out.extend_from_slice(rng.choose(&REASONS, wild));
    out.extend_from_slice(rng.eol(wild));
    let body: Vec<u8> = (0..rng.below(40)).map(|i| b'a' + (i % 26) as u8).collect();
    let chunked = rng.fields(&mut out, (&NAMES, &VALUES), wild, body.len(), 5);
    if chunked && !rng.one_in(5) {
        let mut rest = &body[..];
        while !rest.is_empty() {
            let n = (1 + rng.below(16)).min(rest.len());
            out.extend_from_slice(format!("{n:x}").as_bytes());
            out.extend_from_slice(if rng.one_in(6) { b";ext=1\r\n" } else { b"\r\n" });
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        out.extend_from_slice(if rng.one_in(4) { b"0\r\nx-trailer: 1\r\n\r\n" } else { b"0\r\n\r\n" });
    } else {
        out.extend_from_slice(&body);
    }
    if wild {
        rng.mutate(&mut out);
    }
    out
}

/// A replica for one connection: it reads a request head, sends `answer` and closes its side.
pub(crate) async fn replica(answer: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else { return };
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        if stream.write_all(&answer).await.is_ok() {
            let _ = stream.shutdown().await;
            // Until the client is done, so that it reads an end and not a reset.
            let _ = stream.read(&mut chunk).await;
        }
    });
    addr
}

/// The gateway's client: the answer it took, or `None` when it made an error of it.
async fn gateway_takes(answer: Vec<u8>, method: &Method) -> Option<Taken> {
    let addr = replica(answer).await;
    let client = UpstreamClient::new(Duration::from_secs(30));
    let authority: http::uri::Authority = addr.to_string().parse().expect("authority");
    let req = Request::builder().method(method).uri("/").header(http::header::HOST, "svc");
    let (head, body) = req.body(Either::Left(Full::new(Bytes::new()))).expect("request").into_parts();
    let added = crate::upstream::tests::added();
    let send = client.send(addr, &authority, crate::table::UpstreamProtocol::Http1, (&head, &added), body);
    let mut res = tokio::time::timeout(Duration::from_secs(2), send).await.ok()?.ok()?;
    if let UpstreamBody::Http1(body) = res.body_mut()
        && let Some(fields) = body.take_fields()
    {
        fields.merge_into(res.headers_mut());
    }
    let (parts, body) = res.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(2), body.collect()).await.ok()?.ok()?;
    Some(Taken::new(parts.status, &parts.headers, body.to_bytes()))
}

/// hyper's client on the same answer: what it took, or why not.
async fn hyper_takes(answer: Vec<u8>, method: &Method) -> Result<Taken, String> {
    hyper_takes_from(replica(answer).await, method, Version::HTTP_11).await
}

/// What hyper's client takes from the server at `addr` for one request, over HTTP/1.1 or (prior
/// knowledge, no TLS) HTTP/2.
pub(crate) async fn hyper_takes_from(addr: SocketAddr, method: &Method, version: Version) -> Result<Taken, String> {
    let req = Request::builder().method(method);
    let req = match version {
        Version::HTTP_2 => req.uri("http://svc/"),
        _ => req.uri("/").header(http::header::HOST, "svc"),
    };
    let req = req.body(Empty::<Bytes>::new()).expect("request");
    let (parts, body) = hyper_exchange(addr, req, version, Duration::from_secs(2)).await?;
    Ok(Taken::new(parts.status, &parts.headers, body))
}

/// `req` sent by hyper's client on a new connection to `addr` (HTTP/1.1, or HTTP/2 with prior knowledge),
/// and the answer read whole within `bound`; the connection's task ends with the exchange.
pub(crate) async fn hyper_exchange<B>(
    addr: SocketAddr,
    req: Request<B>,
    version: Version,
    bound: Duration,
) -> Result<(http::response::Parts, Bytes), String>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// The connection's task, stopped when the exchange ends or times out.
    struct Aborts(tokio::task::AbortHandle);
    impl Drop for Aborts {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let exchange = async {
        let io = TokioIo::new(TcpStream::connect(addr).await.map_err(|error| error.to_string())?);
        let hyper = async {
            let (_conn, res): (_, Response<_>) = if version == Version::HTTP_2 {
                let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                (Aborts(tokio::spawn(conn).abort_handle()), sender.send_request(req).await?)
            } else {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
                (Aborts(tokio::spawn(conn).abort_handle()), sender.send_request(req).await?)
            };
            let (parts, body) = res.into_parts();
            Ok::<_, hyper::Error>((parts, body.collect().await?.to_bytes()))
        };
        hyper.await.map_err(|error| error.to_string())
    };
    tokio::time::timeout(bound, exchange).await.unwrap_or_else(|_| Err(format!("no answer in {bound:?}")))
}

#[tokio::test]
async fn what_the_gateway_takes_from_a_replica_hyper_takes_the_same() {
    let (seed, cases) = crate::test_rng::seed_and_cases();
    let (mut taken, mut refused) = (0, 0);
    for case in 0..cases {
        let mut rng = Rng::for_case(seed, case);
        let answer = generate(&mut rng);
        let method = if rng.one_in(8) { Method::HEAD } else { Method::GET };
        let Some(ours) = gateway_takes(answer.clone(), &method).await else {
            refused += 1;
            continue;
        };
        taken += 1;
        let theirs = hyper_takes(answer.clone(), &method).await;
        assert_eq!(
            Ok(&ours),
            theirs.as_ref(),
            "case {case} (seed {seed:#x}): to {method} the gateway took {:?} as shown, hyper otherwise",
            String::from_utf8_lossy(&answer),
        );
    }
    println!("{cases} generated answers: {taken} taken by the gateway and by hyper alike, {refused} refused");
    assert!(taken > cases / 10 && refused > cases / 10, "taken {taken}, refused {refused} of {cases}");
}
