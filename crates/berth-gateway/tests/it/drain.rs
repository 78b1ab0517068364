//! Draining: an endpoint removed from the table is drained once its requests in flight are answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::support::{MockUpstream, Reply, TestClient, TestGateway, config, eventually, table};

#[tokio::test]
async fn drain_waits_for_the_request_in_flight() {
    let slow = MockUpstream::start("slow", Reply::Slow(Duration::from_secs(1))).await;
    let gw = TestGateway::start(config()).await;
    gw.gateway.update(&table(vec![slow.grouped()]));

    let answered = Arc::new(AtomicBool::new(false));
    let request = tokio::spawn({
        let (client, url, answered) = (TestClient::new(), gw.url("/"), answered.clone());
        async move {
            let answer = client.get(&url).await;
            answered.store(true, Ordering::SeqCst);
            answer
        }
    });
    assert!(eventually(|| slow.hits() == 1).await, "the request never reached the replica");
    gw.gateway.update(&table(Vec::new()));

    let started = Instant::now();
    assert!(!gw.gateway.drain("slow", Duration::from_millis(200)).await, "drained with a request in flight");
    assert!(started.elapsed() >= Duration::from_millis(200), "gave up before its timeout");
    assert_eq!(slow.completed(), 0, "the replica answered already, the check proves nothing");

    assert!(gw.gateway.drain("slow", Duration::from_secs(10)).await, "never drained");
    assert_eq!(slow.completed(), 1, "drained before the replica answered");
    let answer = request.await.expect("request task does not panic");
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answered.load(Ordering::SeqCst));
    // Drained and out of the table: nothing is in flight and nothing new goes there.
    assert!(gw.gateway.drain("slow", Duration::ZERO).await);
}
