//! Request smuggling through the plain listener: a request that carries both `Content-Length` and
//! `Transfer-Encoding` never reaches the request path, whatever came before it on the connection: valid
//! requests of every framing, odd and broken ones, pipelined, served by `serve_h1` or left to hyper behind
//! the framing guard. Both entries of the request path (`serve_h1`'s handler and hyper's service, with the
//! gateway's rule for answers to upgrade requests) record the paths they are handed.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{GatewayConfig, hyper_service, serve_plain_with, servers};
use crate::serve_h1::CarriesFields;
use crate::test_rng::Rng;
use crate::upstream::h1::ReplicaFields;

impl CarriesFields for Full<Bytes> {
    fn take_fields(&mut self) -> Option<Box<ReplicaFields>> {
        None
    }
}

/// Ends every input, after whatever came before: a request that must never be served.
const CONFLICT: &[u8] =
    b"POST /smuggled HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

/// Requests that ask to switch protocols, which the request path here never does.
const UPGRADES: &[&[u8]] = &[
    b"GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /h2c HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    b"HEAD /up HTTP/1.1\r\nupgrade: x\r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: web\r\nUpgrade: x\r\nContent-Length: 3\r\n\r\nabc",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
];

/// The paths the request path was handed, in order, when a client sends `input` and ends its side.
async fn served_paths(input: &[u8]) -> Vec<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("address")).await.expect("connect");
    let (stream, _) = listener.accept().await.expect("accept");
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let hyper_seen = seen_tx.clone();
    let server = tokio::spawn(async move {
        let servers = servers(&GatewayConfig::default());
        let handle = |req: Request<crate::proxy::ClientBody>| {
            let _ = seen_tx.send(req.uri().path().to_owned());
            async move {
                let _ = req.into_body().collect().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        };
        let service = move || {
            hyper_service(move |req: Request<hyper::body::Incoming>| {
                let _ = hyper_seen.send(req.uri().path().to_owned());
                async move {
                    let _ = req.into_body().collect().await;
                    Response::new(Full::new(Bytes::from_static(b"ok")))
                }
            })
        };
        let _ = serve_plain_with(stream, &servers, handle, service).await;
    });
    client.write_all(input).await.expect("write");
    client.shutdown().await.expect("shutdown");
    let mut answers = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answers)).await;
    assert!(read.is_ok(), "the connection did not end after {:?}", String::from_utf8_lossy(input));
    server.abort();
    let mut paths = Vec::new();
    while let Ok(path) = seen.try_recv() {
        paths.push(path);
    }
    paths
}

#[tokio::test]
async fn a_request_with_both_framing_fields_never_reaches_the_request_path() {
    let (seed, cases) = crate::test_rng::seed_and_cases();
    let mut reached_the_end = 0;
    for case in 0..cases / 4 {
        let mut rng = Rng::for_case(seed, case);
        let mut input = Vec::new();
        let before = 1 + rng.below(3);
        for _ in 0..before {
            input.extend(match rng.below(3) {
                0 => crate::framing::tests::random_request(&mut rng),
                1 => crate::serve_h1::agreement::generate(&mut rng),
                _ => UPGRADES[rng.below(UPGRADES.len())].to_vec(),
            });
        }
        input.extend_from_slice(CONFLICT);
        input.extend_from_slice(b"GET /after HTTP/1.1\r\nHost: web\r\n\r\n");
        let paths = served_paths(&input).await;
        assert!(
            !paths.iter().any(|path| path == "/smuggled" || path == "/after"),
            "case {case} (seed {seed:#x}): {paths:?} served from {:?}",
            String::from_utf8_lossy(&input),
        );
        reached_the_end += usize::from(paths.len() == before);
    }
    println!("reached the end in {reached_the_end} of {}", cases / 4);
    // In many cases every request before the conflict was served: the conflict was there to be refused.
    assert!(reached_the_end as u64 > cases / 20, "only {reached_the_end} cases served all before the conflict");
}
