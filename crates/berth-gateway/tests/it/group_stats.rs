//! Per-group numbers: with traffic split 90/10 between a stable group and a canary that answers 500 to
//! every fifth request, the gateway's counters per group match what the clients saw per group, its
//! histogram puts the canary's slower answers where they belong, and the Prometheus text is promtool-clean.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use berth_gateway::{GroupStats, Upstream};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::support::{AbortOnDrop, TestClient, TestGateway, config, eventually, join_all, table};

const N_REQUESTS: usize = 600;
const N_CLIENTS: usize = 12;
/// The canary takes at least this long, so its latency quantiles are known from below.
const CANARY_DELAY: Duration = Duration::from_millis(25);

#[tokio::test]
async fn group_counters_match_what_the_clients_saw() {
    let stable = GroupUpstream::start("stable", 0, Duration::ZERO).await;
    let canary = GroupUpstream::start("next", 5, CANARY_DELAY).await;
    let gw = TestGateway::start(config()).await;
    gw.gateway.update(&table(vec![stable.upstream(90), canary.upstream(10)]));
    // Some traffic before the window, so the test also checks `since`.
    let client = TestClient::new();
    for _ in 0..20 {
        client.get(&gw.url("/warm-up")).await;
    }
    let before = by_group(gw.gateway.group_stats("web"));
    let canary_failed_before = canary.failed.load(Ordering::SeqCst);

    // N_CLIENTS concurrent clients, each sending its share in sequence; each tallies per group (from the
    // body, which names the group that answered) the requests, the 5xx and the slowest answer.
    let clients = (0..N_CLIENTS).map(|_| {
        let (client, url) = (client.clone(), gw.url("/orders"));
        async move {
            let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
            for _ in 0..N_REQUESTS / N_CLIENTS {
                let answer = client.get(&url).await;
                let group = String::from_utf8_lossy(&answer.body).into_owned();
                let entry = seen.entry(group).or_default();
                entry.requests += 1;
                entry.failures += u64::from(answer.status.is_server_error());
                entry.slowest = entry.slowest.max(answer.took);
            }
            seen
        }
    });
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    for client_seen in join_all(clients).await {
        for (group, tally) in client_seen {
            let entry = seen.entry(group).or_default();
            entry.requests += tally.requests;
            entry.failures += tally.failures;
            entry.slowest = entry.slowest.max(tally.slowest);
        }
    }
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["next", "stable"], "every answer came from one of the groups");

    let after = by_group(gw.gateway.group_stats("web"));
    for (group, tally) in &seen {
        let window = after[group].since(&before[group]);
        let p50 = window.latency.quantile(0.5).expect("the group answered");
        let p90 = window.latency.quantile(0.9).expect("the group answered");
        println!(
            "{group}: clients saw {} requests, {} 5xx, slowest {:?}; gateway counted {} requests, {} failures, \
             p50 {p50:?}, p90 {p90:?}",
            tally.requests, tally.failures, tally.slowest, window.requests, window.failures
        );
        assert_eq!((window.requests, window.failures), (tally.requests, tally.failures), "{group}");
        assert_eq!(window.latency.total(), tally.requests, "{group}: one duration per request");
        assert!(p50 <= p90, "{group}: quantiles are ordered");
        // The gateway's duration is within the client's; interpolation can place it up to one bucket higher.
        let ceiling = window.latency.bounds.iter().copied().find(|bound| *bound >= tally.slowest);
        assert!(ceiling.is_none_or(|ceiling| p90 <= ceiling), "{group}: p90 {p90:?} above {ceiling:?}");
    }
    let (canary_seen, stable_seen) = (&seen["next"], &seen["stable"]);
    let canary_failed = canary.failed.load(Ordering::SeqCst) - canary_failed_before;
    assert_eq!(canary_seen.failures, canary_failed, "every 500 reached a client: none was retried away");
    assert!(canary_seen.failures.abs_diff(canary_seen.requests / 5) <= 1, "one in five failed: {canary_seen:?}");
    assert_eq!(stable_seen.failures, 0);
    assert!(canary_seen.requests >= 20, "the canary got {} requests: the split is off", canary_seen.requests);
    assert!(stable_seen.requests > 4 * canary_seen.requests, "90/10 split: {stable_seen:?} vs {canary_seen:?}");
    let canary_p50 = after["next"].since(&before["next"]).latency.quantile(0.5).expect("the canary answered");
    assert!(canary_p50 >= Duration::from_millis(20), "every canary answer took {CANARY_DELAY:?}: p50 {canary_p50:?}");

    // The Prometheus text carries the cumulative counters, and promtool accepts it.
    let labels = |group: &str| format!(r#"{{service="web",group="{group}"}}"#);
    for (group, stats) in &after {
        let requests = gw.metric(&format!("berth_gateway_group_requests_total{}", labels(group)));
        let failures = gw.metric(&format!("berth_gateway_group_failures_total{}", labels(group)));
        assert_eq!((requests as u64, failures as u64), (stats.requests, stats.failures), "{group}");
    }
    promtool_check(&gw);
}

#[tokio::test]
async fn counters_survive_weight_changes_and_a_group_leaving() {
    let stable = GroupUpstream::start("stable", 0, Duration::ZERO).await;
    let canary = GroupUpstream::start("next", 2, Duration::ZERO).await;
    let gw = TestGateway::start(config()).await;
    let client = TestClient::new();
    gw.gateway.update(&table(vec![stable.upstream(50), canary.upstream(50)]));
    for _ in 0..40 {
        client.get(&gw.url("/")).await;
    }
    let first = by_group(gw.gateway.group_stats("web"));
    assert_eq!(first.values().map(|stats| stats.requests).sum::<u64>(), 40);
    assert!(first["next"].requests > 0 && first["next"].failures > 0, "{first:?}");

    // The canary goes to 100, then is rolled back: its numbers stay, and stable's keep counting.
    gw.gateway.update(&table(vec![stable.upstream(0), canary.upstream(100)]));
    client.get(&gw.url("/")).await;
    gw.gateway.update(&table(vec![stable.upstream(100)]));
    client.get(&gw.url("/")).await;
    let last = by_group(gw.gateway.group_stats("web"));
    assert_eq!(last["next"].requests, first["next"].requests + 1);
    assert_eq!(last["stable"].requests, first["stable"].requests + 1);

    // A service that leaves the table takes its counters with it.
    gw.gateway.update(&berth_gateway::RoutingTable::default());
    assert!(gw.gateway.group_stats("web").is_empty());
}

#[tokio::test]
async fn a_request_abandoned_while_a_replica_hangs_is_a_failure() {
    let hanging = GroupUpstream::start("next", 0, Duration::from_secs(60)).await;
    let gw = TestGateway::start(config()).await;
    gw.gateway.update(&table(vec![hanging.upstream(100)]));
    let gave_up = tokio::time::timeout(Duration::from_millis(300), TestClient::new().get(&gw.url("/"))).await;
    assert!(gave_up.is_err(), "the replica hangs, so the client gives up");
    let failed = eventually(|| {
        let stats = gw.gateway.group_stats("web");
        stats.len() == 1 && stats[0].requests == 1 && stats[0].failures == 1
    })
    .await;
    assert!(failed, "the abandoned request was not counted: {:?}", gw.gateway.group_stats("web"));
    let took = gw.gateway.group_stats("web")[0].latency.quantile(1.0).expect("one request");
    assert!(took >= Duration::from_millis(200), "recorded with the time it ran: {took:?}");
}

#[derive(Debug, Default)]
struct Seen {
    requests: u64,
    failures: u64,
    slowest: Duration,
}

fn by_group(stats: Vec<GroupStats>) -> BTreeMap<String, GroupStats> {
    stats.into_iter().map(|stats| (stats.group.clone(), stats)).collect()
}

fn promtool_check(gw: &TestGateway) {
    let mut text = String::new();
    gw.gateway.render_metrics(&mut text);
    let mut child = match std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => return println!("promtool not run ({error}): install it to lint the metrics text"),
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(text.as_bytes()).expect("promtool reads the metrics");
    }
    let output = child.wait_with_output().expect("promtool runs");
    let report = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && report.trim().is_empty(), "promtool check metrics: {report}\n{text}");
}

/// A replica group of one upstream that names its group in every body, answers 500 to every `fail_every`th
/// request (0: never) and waits `delay` before answering.
struct GroupUpstream {
    group: &'static str,
    addr: SocketAddr,
    failed: Arc<AtomicU64>,
    _accept: AbortOnDrop,
}

impl GroupUpstream {
    async fn start(group: &'static str, fail_every: u64, delay: Duration) -> GroupUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound listener has an address");
        let (hits, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let counted = failed.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (hits, failed) = (hits.clone(), counted.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                        let fail = fail_every > 0 && n % fail_every == 0;
                        if fail {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                        async move {
                            tokio::time::sleep(delay).await;
                            let mut res = Response::new(Full::new(Bytes::from(group)));
                            if fail {
                                *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            Ok::<_, Infallible>(res)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        GroupUpstream { group, addr, failed, _accept: AbortOnDrop(accept) }
    }

    fn upstream(&self, weight: u32) -> Upstream {
        Upstream { instance: self.group.to_owned(), addr: self.addr, group: self.group.to_owned(), weight }
    }
}
