//! Outlier ejection: a replica failing in a row is ejected for `eject_base` and then comes back; a
//! replica that stops answering is ejected as stalled and the GETs waiting on it move elsewhere.

use std::time::{Duration, Instant};

use berth_gateway::{GatewayConfig, RoutePolicy};
use bytes::Bytes;
use http::{Method, StatusCode};

use crate::support::{
    MockUpstream, PATIENCE, Reply, TestClient, TestGateway, config, join_all, table, table_with_routes,
};

#[tokio::test]
async fn failing_replica_is_ejected_gets_no_traffic_and_returns_after_eject_base() {
    let a = MockUpstream::start("a", Reply::Status(500)).await;
    let b = MockUpstream::start("b", Reply::Ok).await;
    let eject_base = Duration::from_secs(2);
    let gw = TestGateway::start(GatewayConfig { eject_base, ..config() }).await;
    gw.gateway.update(&table(vec![a.grouped(), b.grouped()]));
    let client = TestClient::new();

    // 500 is not retried but counts as a failure; the fifth in a row ejects.
    let deadline = Instant::now() + PATIENCE;
    let mut last_sent = Instant::now();
    while !gw.gateway.is_ejected("a") {
        assert!(Instant::now() < deadline, "`a` not ejected after {} failures", a.hits());
        last_sent = Instant::now();
        let answer = client.get(&gw.url("/")).await;
        let expected = if answer.body == "a" { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
        assert_eq!(answer.status, expected);
    }
    assert_eq!(a.hits(), 5);
    assert_eq!(gw.metric(r#"berth_gateway_ejections_total{service="web",reason="consecutive_failures"}"#), 1.0);
    a.set_reply(Reply::Ok);

    for _ in 0..50 {
        assert_eq!(client.get(&gw.url("/")).await.body, "b");
    }
    assert_eq!(a.hits(), 5, "an ejected replica got traffic");
    assert!(gw.gateway.is_ejected("a"), "the ejection ended before the check did, the check proves nothing");

    let deadline = Instant::now() + eject_base + PATIENCE;
    loop {
        assert!(Instant::now() < deadline, "`a` never got traffic again");
        let answer = client.get(&gw.url("/")).await;
        if answer.body == "a" {
            assert_eq!(answer.status, StatusCode::OK);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(last_sent.elapsed() >= eject_base, "`a` came back before eject_base");
    assert!(!gw.gateway.is_ejected("a"));
}

#[tokio::test]
async fn stalled_replica_is_ejected_and_gets_waiting_on_it_move_on() {
    let a = MockUpstream::start("a", Reply::FirstThenHang).await;
    let b = MockUpstream::start("b", Reply::Ok).await;
    let gw = TestGateway::start(GatewayConfig { eject_base: Duration::from_secs(30), ..config() }).await;
    gw.gateway.update(&table(vec![a.grouped(), b.grouped()]));
    let client = TestClient::new();
    answer_once_from_a(&gw, &client, &a).await;

    let gets = (0..20).map(|_| {
        let (client, url) = (client.clone(), gw.url("/"));
        async move { client.get(&url).await }
    });
    for answer in join_all(gets).await {
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, "b");
        assert!(answer.took < Duration::from_secs(3), "a GET took {:?}", answer.took);
    }
    assert!(a.hits() > 1, "no GET waited on the stalled replica, the test proves nothing");
    assert!(gw.gateway.is_ejected("a"));
    assert_eq!(gw.metric(r#"berth_gateway_ejections_total{service="web",reason="stalled"}"#), 1.0);
}

/// A POST is not idempotent: one stuck on a stalled replica stays there until the route's deadline and
/// is answered 504, even though the replica is ejected meanwhile.
#[tokio::test]
async fn a_post_stuck_on_a_stalled_replica_is_not_retried_and_times_out() {
    let a = MockUpstream::start("a", Reply::FirstThenHang).await;
    let b = MockUpstream::start("b", Reply::Ok).await;
    let gw = TestGateway::start(GatewayConfig { eject_base: Duration::from_secs(30), ..config() }).await;
    let timeout = Duration::from_secs(3);
    let route = RoutePolicy { prefix: "/".to_owned(), timeout, ..RoutePolicy::default() };
    gw.gateway.update(&table_with_routes(vec![a.grouped(), b.grouped()], vec![route]));
    let client = TestClient::new();
    answer_once_from_a(&gw, &client, &a).await;

    let posts = (0..12).map(|idx| {
        let (client, url) = (client.clone(), gw.url("/"));
        let body = Bytes::from(format!("post {idx}"));
        async move { (body.clone(), client.post(&url, body).await) }
    });
    let mut timed_out = Vec::new();
    for (body, answer) in join_all(posts).await {
        match answer.status {
            StatusCode::OK => assert_eq!(answer.body, "b"),
            StatusCode::GATEWAY_TIMEOUT => {
                assert!(answer.took >= timeout - Duration::from_millis(100), "504 after {:?}", answer.took);
                timed_out.push(body);
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(!timed_out.is_empty(), "no POST went to the stalled replica, the test proves nothing");
    let stuck: Vec<Bytes> =
        a.seen().into_iter().filter(|seen| seen.method == Method::POST).map(|seen| seen.body).collect();
    timed_out.sort();
    let mut stuck_sorted = stuck.clone();
    stuck_sorted.sort();
    assert_eq!(stuck_sorted, timed_out, "each timed-out POST reached `a` exactly once");
    assert!(b.seen().iter().all(|seen| !stuck.contains(&seen.body)), "a stuck POST was retried on `b`");
    assert!(gw.gateway.is_ejected("a"), "`a` was not ejected as stalled");
}

/// Sends GETs until `a` has answered its one request.
async fn answer_once_from_a(gw: &TestGateway, client: &TestClient, a: &MockUpstream) {
    let deadline = Instant::now() + PATIENCE;
    while a.completed() == 0 {
        assert!(Instant::now() < deadline, "`a` got no request");
        assert_eq!(client.get(&gw.url("/")).await.status, StatusCode::OK);
    }
}
