//! HTTP/3 end to end: the repository's own quinn/h3 client (GET and POST with a body) and, where Python's
//! `aioquic` is installed, an independent client, through the gateway to an in-process upstream.

use std::process::Command;

use bytes::Bytes;
use http::{Request, StatusCode};

use berth_test_support::h3_client::{Trust, h3_get, h3_request};

use crate::support::{MockUpstream, Reply, TestGateway};
use crate::tls::{tls_config, two_services};

#[tokio::test]
async fn http3_get_and_post_reach_the_replica() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let web = MockUpstream::start("web", Reply::Ok).await;
    let api = MockUpstream::start("api", Reply::Ok).await;
    let gw = TestGateway::start_secure(tls_config(tmp.path(), Vec::new()), &two_services(&web, &api)).await;
    let trust = Trust::CaFile(tmp.path().join("certs").join("api.crt"));

    let res = h3_get(gw.https_addr(), "api.localhost", "/hello?x=1", &trust).await.expect("HTTP/3 GET");
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body, "api");
    assert!(res.headers.contains_key("x-request-id"));
    let seen = api.seen();
    let got = seen.last().expect("the replica got the GET");
    assert_eq!(got.headers["x-forwarded-proto"], "https");
    assert_eq!(got.headers["host"], "api.localhost");

    let body = Bytes::from(vec![b'x'; 900]);
    let req = Request::post("https://api.localhost/upload").body(body.clone()).expect("valid request");
    let res = h3_request(gw.https_addr(), req, &trust).await.expect("HTTP/3 POST");
    assert_eq!(res.status, StatusCode::OK);
    let seen = api.seen();
    let got = seen.last().expect("the replica got the POST");
    assert_eq!(got.method, http::Method::POST);
    assert_eq!(got.body, body);
    assert_eq!(web.hits(), 0);
}

/// An HTTP/3 client this repository did not write. Skipped, saying why, when `aioquic` is not installed
/// (`python3 -m pip install aioquic`).
#[tokio::test]
async fn an_independent_http3_client_gets_an_answer() {
    let probe = Command::new("python3").args(["-c", "import aioquic"]).output();
    if !probe.is_ok_and(|out| out.status.success()) {
        eprintln!("skipped: python3 cannot import aioquic (install it with `python3 -m pip install aioquic`)");
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let web = MockUpstream::start("web", Reply::Ok).await;
    let api = MockUpstream::start("api", Reply::Ok).await;
    let gw = TestGateway::start_secure(tls_config(tmp.path(), Vec::new()), &two_services(&web, &api)).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h3_aioquic.py");
    let ca = tmp.path().join("certs").join("web.crt");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(gw.https_addr().port().to_string())
        .arg("web.localhost")
        .arg(&ca)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), out)
        .await
        .expect("the aioquic client finishes within 30 s")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "aioquic client failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("status 200"), "{stdout}");
    assert!(stdout.contains("body web"), "{stdout}");
}
