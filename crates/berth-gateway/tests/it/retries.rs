//! Retries: what is retried (never-sent always, 503 for idempotent methods only) and the budget that caps
//! them.

use std::collections::BTreeSet;

use berth_gateway::GatewayConfig;
use bytes::Bytes;
use http::StatusCode;

use crate::support::{MockUpstream, Reply, TestClient, TestGateway, closed_port, config, join_all, table};

#[tokio::test]
async fn a_request_that_never_reached_a_replica_is_retried_whatever_its_method() {
    let good = MockUpstream::start("good", Reply::Ok).await;
    let gw = TestGateway::start(config()).await;
    let mut closed = good.grouped();
    closed.instance = "closed".to_owned();
    closed.group = "closed".to_owned();
    closed.addr = closed_port().await;
    gw.gateway.update(&table(vec![closed, good.grouped()]));

    let client = TestClient::new();
    let url = gw.url("/orders");
    let posts = (0..50).map(|idx| {
        let (client, url) = (client.clone(), url.clone());
        async move { (idx, client.post(&url, format!("order {idx}")).await) }
    });
    for (idx, answer) in join_all(posts).await {
        assert_eq!(answer.status, StatusCode::OK, "POST {idx}: {:?}", answer.body);
        assert_eq!(answer.body, "good");
    }
    let bodies: Vec<Bytes> = good.seen().into_iter().map(|seen| seen.body).collect();
    let expected: BTreeSet<Bytes> = (0..50).map(|idx| Bytes::from(format!("order {idx}"))).collect();
    assert_eq!(bodies.len(), 50, "each POST reached the good replica once");
    assert_eq!(bodies.into_iter().collect::<BTreeSet<_>>(), expected);
    let retried = gw.metric(r#"berth_gateway_retries_total{service="web",route="/",reason="never_sent"}"#);
    assert!(retried >= 1.0, "the closed port was never tried, the test proves nothing");
}

#[tokio::test]
async fn a_503_is_retried_for_a_get() {
    let a = MockUpstream::start("a", Reply::Status(503)).await;
    let b = MockUpstream::start("b", Reply::Ok).await;
    // A few failures eject `a` before the budget's floor of 3 retries can run out.
    let gw = TestGateway::start(GatewayConfig { eject_after_failures: 3, ..config() }).await;
    gw.gateway.update(&table(vec![a.grouped(), b.grouped()]));

    let client = TestClient::new();
    for idx in 0..100 {
        let answer = client.get(&gw.url("/")).await;
        assert_eq!(answer.status, StatusCode::OK, "GET {idx}");
        assert_eq!(answer.body, "b");
    }
    assert!(a.hits() >= 1, "`a` got no GET, the test proves nothing");
    assert_eq!(b.hits(), 100);
    let retried = gw.metric(r#"berth_gateway_retries_total{service="web",route="/",reason="status_5xx"}"#);
    assert_eq!(retried as usize, a.hits());
}

#[tokio::test]
async fn a_503_is_not_retried_for_a_post() {
    let a = MockUpstream::start("a", Reply::Status(503)).await;
    let b = MockUpstream::start("b", Reply::Ok).await;
    // `a` stays in rotation, so that POSTs keep going to it.
    let gw = TestGateway::start(GatewayConfig { eject_after_failures: u32::MAX, ..config() }).await;
    gw.gateway.update(&table(vec![a.grouped(), b.grouped()]));

    let client = TestClient::new();
    let mut refused = BTreeSet::new();
    let mut accepted = BTreeSet::new();
    for idx in 0..40 {
        let body = Bytes::from(format!("payment {idx}"));
        let answer = client.post(&gw.url("/pay"), body.clone()).await;
        match answer.status {
            StatusCode::SERVICE_UNAVAILABLE => assert!(refused.insert(body)),
            StatusCode::OK => assert!(accepted.insert(body)),
            other => panic!("POST {idx}: unexpected {other}"),
        }
    }
    assert!(!refused.is_empty(), "no POST went to `a`, the test proves nothing");
    let seen_by = |upstream: &MockUpstream| -> Vec<Bytes> { upstream.seen().into_iter().map(|s| s.body).collect() };
    let (seen_by_a, seen_by_b) = (seen_by(&a), seen_by(&b));
    assert_eq!(seen_by_a.len(), refused.len(), "`a` saw each refused POST exactly once");
    assert_eq!(seen_by_a.into_iter().collect::<BTreeSet<_>>(), refused);
    assert_eq!(seen_by_b.into_iter().collect::<BTreeSet<_>>(), accepted, "no refused POST was retried on `b`");
}

#[tokio::test]
async fn the_retry_budget_caps_retries() {
    let a = MockUpstream::start("a", Reply::Status(503)).await;
    let b = MockUpstream::start("b", Reply::Status(503)).await;
    // No ejection: every request could retry, only the budget stops it.
    let gw = TestGateway::start(GatewayConfig { eject_after_failures: u32::MAX, ..config() }).await;
    gw.gateway.update(&table(vec![a.grouped(), b.grouped()]));

    let client = TestClient::new();
    let started = std::time::Instant::now();
    for _ in 0..200 {
        let answer = client.get(&gw.url("/")).await;
        assert!(answer.status.is_server_error(), "{}", answer.status);
    }
    // 20% of 200 requests, plus the floor of 3 per second and the initial balance.
    let allowed = 200.0 * 1.2 + 15.0 + 3.0 * started.elapsed().as_secs_f64();
    let hits = (a.hits() + b.hits()) as f64;
    assert!(hits <= allowed, "{hits} upstream hits for 200 requests (at most {allowed})");
    assert!(hits > 200.0, "nothing was retried, the test proves nothing");
    let exhausted = gw.metric(r#"berth_gateway_retry_budget_exhausted_total{service="web""#);
    assert!(exhausted > 0.0, "budget never exhausted");
}
