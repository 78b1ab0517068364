//! gRPC-shaped traffic: HTTP/2 end to end (h2c to the gateway, h2c to the replica), `te: trailers` kept,
//! and response trailers (`grpc-status`) delivered to the client.

use std::convert::Infallible;

use berth_gateway::{RoutingTable, ServiceRoutes, UpstreamProtocol};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::support::{PATIENCE, TestGateway, config};

/// An HTTP/2-only (prior knowledge) upstream that answers like a unary gRPC method: a length-prefixed
/// message, then trailers. It echoes whether it saw `te: trailers` in a trailer of its own.
async fn grpc_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound listener has an address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let saw_te = req.headers().get("te").is_some_and(|te| te == "trailers");
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    trailers.insert("x-saw-te-trailers", HeaderValue::from_static(if saw_te { "yes" } else { "no" }));
                    let body = Full::new(Bytes::from_static(b"\0\0\0\0\x02hi"))
                        .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
                    let res = Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body)
                        .expect("a valid response");
                    Ok::<_, Infallible>(res)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn trailers_pass_through_over_http2_end_to_end() {
    let upstream = grpc_upstream().await;
    let gw = TestGateway::start(config()).await;
    gw.gateway.update(&RoutingTable {
        services: vec![ServiceRoutes {
            name: "greeter".to_owned(),
            hosts: Vec::new(),
            routes: Vec::new(),
            endpoints: vec![berth_gateway::Upstream {
                instance: "greeter-0".to_owned(),
                addr: upstream,
                group: "stable".to_owned(),
                weight: 100,
            }],
            protocol: UpstreamProtocol::H2c,
            pools: Vec::new(),
            redirect_https: false,
            sticky: None,
        }],
        default_service: Some("greeter".to_owned()),
    });

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    let req = Request::post(gw.url("/helloworld.Greeter/SayHello"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x02yo")))
        .expect("a valid request");
    let res = tokio::time::timeout(PATIENCE, client.request(req)).await.expect("in time").expect("an answer");
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), http::Version::HTTP_2);
    let collected = tokio::time::timeout(PATIENCE, res.into_body().collect()).await.expect("in time").expect("a body");
    let trailers = collected.trailers().cloned().expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-saw-te-trailers"], "yes", "te: trailers reached the replica");
    assert_eq!(collected.to_bytes(), Bytes::from_static(b"\0\0\0\0\x02hi"));
}
