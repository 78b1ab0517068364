//! HTTPS and HTTP/3 through the real daemon to a replica of the example service, with the self-signed
//! certificate the daemon generated in its state dir; `redirect_https` on the plain listener.

use std::time::Duration;

use berth_test_support::h3_client::{Trust, h3_get};
use berth_test_support::{http_request, https_get};

use crate::support::*;

#[test]
fn https_and_http3_reach_a_replica_and_plain_http_redirects_when_asked() {
    let (_root, daemon) = hello_daemon("web", 1, "redirect_https = true");
    let https = daemon.https_addr();
    let cert = daemon.state_dir().join("certs").join("web.crt");
    let alt_svc = format!("alt-svc: h3=\":{}\"; ma=86400", https.port());

    let (status, head, _) =
        https_get(https, "web.localhost", "/", &cert, Duration::from_secs(5)).expect("HTTPS to the replica");
    assert_eq!(status, 200, "{head}");
    assert!(head.to_ascii_lowercase().contains(&alt_svc), "{head}");

    let (status, headers, _) =
        http_request(daemon.gateway_addr(), "GET", "/x?y=1", &[("Host", "web.localhost")], b"", Duration::from_secs(5))
            .expect("plain HTTP answers");
    assert_eq!(status, 308);
    let location = headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("location")).map(|(_, v)| v.as_str());
    assert_eq!(location, Some(format!("https://web.localhost:{}/x?y=1", https.port()).as_str()));

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let res =
        runtime.block_on(h3_get(https, "web.localhost", "/", &Trust::CaFile(cert))).expect("HTTP/3 to the replica");
    assert_eq!(res.status, 200);
}
