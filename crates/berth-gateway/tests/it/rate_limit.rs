//! Rate limits through a real gateway: a heavy key held to its rate while a light key is unaffected (the
//! acceptance run, 30 s, printing its numbers), keys mapped to dedicated pools, overrides, keys by IP and
//! by source, and limiter state across routing-table updates.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use berth_gateway::{RateKey, RateLimitPolicy, RoutePolicy, RoutingTable, Upstream};
use berth_test_support::load::{self, LoadConfig, LoadReport, RequestSpec};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::support::{Answer, MockUpstream, Reply, TestClient, TestGateway, config, table_with_routes};

fn per_sec(requests: u32) -> berth_gateway::Rate {
    berth_gateway::Rate { requests, per: Duration::from_secs(1) }
}

fn limited(prefix: &str, key: RateKey, requests: u32, burst: u32) -> RoutePolicy {
    RoutePolicy {
        prefix: prefix.to_owned(),
        rate_limit: Some(RateLimitPolicy {
            key,
            rate: per_sec(requests),
            burst,
            overrides: BTreeMap::new(),
            pools: BTreeMap::new(),
        }),
        ..RoutePolicy::default()
    }
}

fn api_key() -> RateKey {
    RateKey::Header("X-Api-Key".to_owned())
}

async fn get_with_key(client: &TestClient, url: &str, key: Option<&str>) -> Answer {
    let mut req = Request::get(url);
    if let Some(key) = key {
        req = req.header("x-api-key", key);
    }
    client.send(req.body(Full::<Bytes>::default()).expect("valid request")).await
}

/// What a 429 must carry: `Retry-After` in whole seconds (at least 1) and the draft's two fields.
fn assert_refusal(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after = answer.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    assert!(retry_after.is_some_and(|secs: u64| secs >= 1), "Retry-After: {:?}", answer.headers);
    let ratelimit = answer.headers.get("ratelimit").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(ratelimit.contains(";r=0;t="), "RateLimit: {ratelimit:?}");
    assert!(answer.headers.contains_key("ratelimit-policy"));
    let body = String::from_utf8_lossy(&answer.body);
    assert!(body.starts_with("too many requests"), "{body}");
}

/// Open-loop load with one API key on `path`.
fn load_with_key(gw: &TestGateway, key: &str, rate_per_sec: f64, duration: Duration) -> LoadConfig {
    LoadConfig {
        addr: gw.addr,
        rate_per_sec,
        duration,
        requests: vec![RequestSpec {
            method: "GET".to_owned(),
            path: format!("/{key}"),
            host: String::new(),
            headers: vec![("X-Api-Key".to_owned(), key.to_owned())],
            body: Vec::new(),
        }],
        timeout: Duration::from_secs(5),
        max_in_flight: 64,
    }
}

async fn finish(run: load::LoadRun) -> LoadReport {
    tokio::task::spawn_blocking(move || run.wait()).await.expect("the load generator does not panic")
}

fn ms(report: &LoadReport, p: f64) -> f64 {
    report.by_method["GET"].percentile(p).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

/// Issue #4, acceptance 2: one key offered 250 RPS against 20 RPS for 30 s is admitted at 20 RPS (after its
/// burst of 20), every refusal is a 429 with `Retry-After`, and a second key at 20 RPS in the same run sees
/// no 429 and no latency change beyond noise compared to a baseline without the heavy key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_key_is_held_to_its_rate_and_a_light_key_does_not_notice() {
    const RATE: u32 = 20;
    const BURST: u32 = 20;
    const RUN: Duration = Duration::from_secs(30);
    let upstream = MockUpstream::start("replica", Reply::Ok).await;
    let gw = TestGateway::start(config()).await;
    gw.gateway.update(&table_with_routes(vec![upstream.grouped()], vec![limited("/", api_key(), RATE, BURST)]));

    let baseline = finish(load::start(load_with_key(&gw, "light", 20.0, Duration::from_secs(10)))).await;
    println!("baseline, light key alone:\n{}", baseline.summary());
    assert_eq!(baseline.failed("GET"), 0, "{}", baseline.summary());

    let light = load::start(load_with_key(&gw, "light", 20.0, RUN));
    let heavy = load::start(load_with_key(&gw, "heavy", 250.0, RUN));
    // Besides the load generator (which counts statuses only), a probe on the heavy key looks at the
    // headers of its answers; its admitted requests count toward the heavy key's rate.
    let client = TestClient::new();
    let url = gw.url("/heavy");
    let probe_until = Instant::now() + RUN;
    let (mut probe_ok, mut probe_refused) = (0u64, 0u64);
    while Instant::now() < probe_until {
        let answer = get_with_key(&client, &url, Some("heavy")).await;
        if answer.status == StatusCode::OK {
            assert!(answer.headers.contains_key("ratelimit"), "{:?}", answer.headers);
            probe_ok += 1;
        } else {
            assert_refusal(&answer);
            probe_refused += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let heavy = finish(heavy).await;
    let light = finish(light).await;
    println!("light key beside the heavy one:\n{}", light.summary());
    println!("heavy key:\n{}", heavy.summary());

    let heavy_get = &heavy.by_method["GET"];
    let statuses: Vec<u16> = heavy_get.by_status.keys().copied().collect();
    assert_eq!(statuses, [200, 429], "{}", heavy.summary());
    assert!(heavy_get.errors.is_empty(), "{}", heavy.summary());
    let admitted = heavy_get.ok + probe_ok;
    let refused_by_load = heavy_get.by_status[&429];
    let secs = heavy.duration.as_secs_f64();
    let steady = (admitted - u64::from(BURST)) as f64 / secs;
    println!(
        "heavy key: offered {:.1}/s (+ probe {:.1}/s), admitted {admitted} in {secs:.2}s: burst {BURST} + {steady:.2}/s \
         (limit {RATE}/s); refused {} (probe saw {probe_refused} refusals, each with Retry-After and RateLimit)",
        heavy.achieved_rate,
        (probe_ok + probe_refused) as f64 / secs,
        refused_by_load + probe_refused,
    );
    assert!((steady - f64::from(RATE)).abs() <= 0.05 * f64::from(RATE), "admitted {steady:.2}/s, limit {RATE}/s");
    // Every refusal is the limiter's 429 (which always carries Retry-After), none reached the replica.
    let counted = gw.metric(r#"berth_gateway_rate_limited_total{service="web",route="/",class="default"}"#);
    assert_eq!(counted as u64, refused_by_load + probe_refused);
    let light_ok = light.by_method["GET"].ok + baseline.by_method["GET"].ok;
    assert_eq!(upstream.hits() as u64, admitted + light_ok, "only admitted requests reach the replica");

    assert_eq!(light.failed("GET"), 0, "the light key saw no 429: {}", light.summary());
    let (base_p50, base_p99, p50, p99) = (ms(&baseline, 50.0), ms(&baseline, 99.0), ms(&light, 50.0), ms(&light, 99.0));
    println!(
        "light key latency: baseline p50 {base_p50:.2} ms p99 {base_p99:.2} ms; beside the heavy key p50 {p50:.2} ms \
         p99 {p99:.2} ms"
    );
    // Noise on a shared machine: a few milliseconds at the median, tens at the tail.
    assert!(p50 <= base_p50 * 2.0 + 2.0, "p50 {p50:.2} ms against a baseline of {base_p50:.2} ms");
    assert!(p99 <= base_p99 * 3.0 + 20.0, "p99 {p99:.2} ms against a baseline of {base_p99:.2} ms");
}

fn pooled_table(stable: &[&MockUpstream], pool: &[&MockUpstream]) -> RoutingTable {
    let mut endpoints: Vec<Upstream> =
        stable.iter().map(|upstream| Upstream { group: "stable".to_owned(), ..upstream.grouped() }).collect();
    endpoints.extend(pool.iter().map(|upstream| Upstream { group: "partner-b".to_owned(), ..upstream.grouped() }));
    let mut route = limited("/", api_key(), 1000, 1000);
    if let Some(policy) = &mut route.rate_limit {
        policy.pools.insert("key-b".to_owned(), "partner-b".to_owned());
    }
    let mut res = table_with_routes(endpoints, vec![route]);
    res.services[0].pools = vec!["partner-b".to_owned()];
    res
}

#[tokio::test]
async fn a_key_mapped_to_a_pool_is_served_only_by_that_pool() {
    let stable_1 = MockUpstream::start("stable-1", Reply::Ok).await;
    let stable_2 = MockUpstream::start("stable-2", Reply::Ok).await;
    let pool_1 = MockUpstream::start("pool-1", Reply::Ok).await;
    let pool_2 = MockUpstream::start("pool-2", Reply::Ok).await;
    let gw = TestGateway::start(config()).await;
    gw.gateway.update(&pooled_table(&[&stable_1, &stable_2], &[&pool_1, &pool_2]));
    let client = TestClient::new();
    let url = gw.url("/work");

    let mut served: BTreeMap<(Option<&str>, String), usize> = BTreeMap::new();
    for _ in 0..40 {
        for key in [Some("key-b"), Some("key-a"), None] {
            let answer = get_with_key(&client, &url, key).await;
            assert_eq!(answer.status, StatusCode::OK, "{key:?}: {:?}", answer.body);
            *served.entry((key, String::from_utf8_lossy(&answer.body).into_owned())).or_default() += 1;
        }
    }
    println!("served by (key, replica): {served:?}");
    for ((key, replica), n) in &served {
        let in_pool = replica.starts_with("pool-");
        assert_eq!(in_pool, *key == Some("key-b"), "{key:?} was served {n} times by {replica}");
    }
    assert!(pool_1.hits() > 0 && pool_2.hits() > 0, "the pool's replicas share its load");
    assert_eq!(pool_1.hits() + pool_2.hits(), 40);
    assert_eq!(gw.metric(r#"berth_gateway_pool_requests_total{service="web",pool="partner-b"}"#), 40.0);

    // The pool empties (its replicas are replaced, say): its key gets 503 at once, no fallback to the
    // shared replicas, which keep serving everyone else.
    gw.gateway.update(&pooled_table(&[&stable_1, &stable_2], &[]));
    let shared_before = stable_1.hits() + stable_2.hits();
    let answer = get_with_key(&client, &url, Some("key-b")).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", answer.body);
    assert_eq!(answer.headers["retry-after"], "1");
    assert!(String::from_utf8_lossy(&answer.body).contains("pool `partner-b`"), "{:?}", answer.body);
    assert_eq!(stable_1.hits() + stable_2.hits(), shared_before, "the pooled key never reached a shared replica");
    assert_eq!(get_with_key(&client, &url, Some("key-a")).await.status, StatusCode::OK);
}

/// Sends requests one after another until `n` are sent; returns how many were admitted and how long it took.
async fn burst(client: &TestClient, url: &str, key: Option<&str>, n: usize) -> (usize, Duration) {
    let started = Instant::now();
    let mut admitted = 0;
    for _ in 0..n {
        let answer = get_with_key(client, url, key).await;
        if answer.status == StatusCode::OK {
            admitted += 1;
        } else {
            assert_refusal(&answer);
        }
    }
    (admitted, started.elapsed())
}

/// The burst plus what the rate refilled while the requests were being sent (and one for rounding).
fn assert_admitted(what: &str, admitted: usize, took: Duration, rate: u32, burst: u32) {
    let most = burst as f64 + took.as_secs_f64() * f64::from(rate) + 1.0;
    println!("{what}: {admitted} admitted in {:.0} ms (burst {burst}, {rate}/s)", took.as_secs_f64() * 1e3);
    assert!(
        admitted >= burst as usize && admitted as f64 <= most,
        "{what}: {admitted} admitted, expected {burst}..={most:.1}"
    );
}

#[tokio::test]
async fn overrides_and_keys_by_header_ip_and_source() {
    let upstream = MockUpstream::start("replica", Reply::Ok).await;
    let gw = TestGateway::start(config()).await;
    let mut api = limited("/api", api_key(), 5, 5);
    if let Some(policy) = &mut api.rate_limit {
        policy.overrides.insert("partner-a".to_owned(), per_sec(20));
        policy.overrides.insert("partner-b".to_owned(), per_sec(100));
    }
    let by_ip = limited("/by-ip", RateKey::Ip, 3, 3);
    let mut by_source = limited("/by-source", RateKey::Source, 1, 1);
    if let Some(policy) = &mut by_source.rate_limit {
        // Ingress traffic through this listener is `external`.
        policy.overrides.insert("external".to_owned(), per_sec(7));
    }
    gw.gateway.update(&table_with_routes(vec![upstream.grouped()], vec![api, by_ip, by_source]));
    let client = TestClient::new();

    let (a, took) = burst(&client, &gw.url("/api/x"), Some("partner-a"), 60).await;
    assert_admitted("partner A", a, took, 20, 20);
    let (b, took) = burst(&client, &gw.url("/api/x"), Some("partner-b"), 200).await;
    assert_admitted("partner B", b, took, 100, 100);
    let (other, took) = burst(&client, &gw.url("/api/x"), Some("someone"), 30).await;
    assert_admitted("another key", other, took, 5, 5);
    let (none, took) = burst(&client, &gw.url("/api/x"), None, 30).await;
    assert_admitted("requests without the header", none, took, 5, 5);
    let (ip, took) = burst(&client, &gw.url("/by-ip"), None, 20).await;
    assert_admitted("by IP (all from 127.0.0.1)", ip, took, 3, 3);
    let (source, took) = burst(&client, &gw.url("/by-source"), Some("any"), 30).await;
    assert_admitted("by source `external` (override)", source, took, 7, 7);

    let overrides =
        gw.metric(r#"berth_gateway_rate_limit_admitted_total{service="web",route="/api",class="override"}"#);
    assert_eq!(overrides as usize, a + b);
    assert_eq!(upstream.hits(), a + b + other + none + ip + source, "refused requests never reached the replica");
}

#[tokio::test]
async fn limiter_state_survives_updates_and_resets_when_the_policy_changes() {
    let upstream = MockUpstream::start("replica", Reply::Ok).await;
    let gw = TestGateway::start(config()).await;
    let client = TestClient::new();
    let url = gw.url("/api");
    let table = |requests| table_with_routes(vec![upstream.grouped()], vec![limited("/api", api_key(), requests, 2)]);
    // One per minute: nothing refills during the test.
    let per_minute = |requests| {
        let mut table = table(requests);
        if let Some(policy) = &mut table.services[0].routes[0].rate_limit {
            policy.rate.per = Duration::from_secs(60);
        }
        table
    };
    gw.gateway.update(&per_minute(1));
    let (admitted, _) = burst(&client, &url, Some("k"), 5).await;
    assert_eq!(admitted, 2);
    gw.gateway.update(&per_minute(1));
    assert_eq!(burst(&client, &url, Some("k"), 3).await.0, 0, "same policy: the key's state is kept");
    let answer = get_with_key(&client, &url, Some("k")).await;
    assert_eq!(answer.headers["retry-after"], "60", "a minute until the next request fits");
    gw.gateway.update(&per_minute(2));
    assert_eq!(burst(&client, &url, Some("k"), 5).await.0, 2, "a changed policy starts from scratch");
}
