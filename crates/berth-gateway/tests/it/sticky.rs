//! Sticky canaries: a header sends a tester to the canary whatever the weights; a cookie keeps a client with
//! the group that first answered it, and a cookie naming a gone group is ignored.

use berth_gateway::{RoutingTable, Sticky, Upstream};
use http::Request;
use http_body_util::Full;

use crate::support::{MockUpstream, Reply, TestClient, TestGateway, config, table};

fn split(stable: &MockUpstream, next: &MockUpstream, sticky: Sticky) -> RoutingTable {
    let group = |upstream: &MockUpstream, weight| Upstream { weight, ..upstream.grouped() };
    let mut table = table(vec![group(stable, 95), group(next, 5)]);
    table.services[0].sticky = Some(sticky);
    table
}

async fn get(client: &TestClient, url: &str, header: Option<(&str, &str)>) -> (String, Option<String>) {
    let mut req = Request::get(url);
    if let Some((name, value)) = header {
        req = req.header(name, value);
    }
    let answer = client.send(req.body(Full::default()).expect("valid request")).await;
    let cookie = answer.headers.get("set-cookie").and_then(|v| v.to_str().ok()).map(str::to_owned);
    (String::from_utf8_lossy(&answer.body).into_owned(), cookie)
}

#[tokio::test]
async fn a_header_pins_testers_to_the_canary() {
    let (stable, next) = (MockUpstream::start("stable", Reply::Ok).await, MockUpstream::start("next", Reply::Ok).await);
    let gw = TestGateway::start(config()).await;
    let sticky = Sticky::Header { name: "X-Canary".to_owned(), group: "next".to_owned() };
    gw.gateway.update(&split(&stable, &next, sticky));
    let client = TestClient::new();
    for _ in 0..30 {
        let (served, _) = get(&client, &gw.url("/"), Some(("X-Canary", "1"))).await;
        assert_eq!(served, "next", "a tester always reaches the canary");
    }
    let mut to_next = 0;
    for _ in 0..200 {
        to_next += usize::from(get(&client, &gw.url("/"), None).await.0 == "next");
    }
    assert!(to_next < 40, "everyone else follows the 5% weight: {to_next} of 200 reached the canary");
}

#[tokio::test]
async fn a_cookie_keeps_a_client_with_the_group_that_first_answered() {
    let (stable, next) = (MockUpstream::start("stable", Reply::Ok).await, MockUpstream::start("next", Reply::Ok).await);
    let gw = TestGateway::start(config()).await;
    gw.gateway.update(&split(&stable, &next, Sticky::Cookie { name: "berth_canary".to_owned() }));
    let client = TestClient::new();

    // A new client gets a cookie naming the group that answered it.
    let (served, cookie) = get(&client, &gw.url("/"), None).await;
    let cookie = cookie.expect("a first answer sets the sticky cookie");
    assert!(cookie.starts_with(&format!("berth_canary={served};")), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");

    // With a cookie, the client stays where it is, even on the 5% side, and gets no new cookie.
    for group in ["next", "stable"] {
        let header = format!("theme=dark; berth_canary={group}");
        for _ in 0..30 {
            let (served, cookie) = get(&client, &gw.url("/"), Some(("Cookie", &header))).await;
            assert_eq!(served, group);
            assert_eq!(cookie, None);
        }
    }

    // A cookie naming a group that is gone (the canary was promoted or rolled back) counts for nothing.
    let (served, cookie) = get(&client, &gw.url("/"), Some(("Cookie", "berth_canary=old"))).await;
    assert!(["stable", "next"].contains(&served.as_str()));
    assert!(cookie.is_some_and(|c| c.starts_with(&format!("berth_canary={served};"))), "a fresh cookie");
}
