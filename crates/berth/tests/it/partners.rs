//! Partners on the real binary (issue #4): a rate limit per API key and a partner's dedicated pool, declared
//! in `app.toml` and run by the daemon as their own replicas.

use std::time::Duration;

use berth_test_support::http_request;
use serde_json::Value;

use crate::support::{hello_daemon, wait_healthy};

const PARTNER_SPEC: &str = r#"
[pools.partner-b]
replicas = 1

[[routes]]
path = "/"
rate_limit = { key = "header:X-Api-Key", rate = "5/s", burst = 5, overrides = { "key-b" = "1000/s" }, pools = { "key-b" = "partner-b" } }
"#;

fn get(addr: std::net::SocketAddr, key: &str) -> (u16, Vec<(String, String)>, Value) {
    let headers = [("Host", "api.localhost"), ("X-Api-Key", key)];
    let (status, headers, body) =
        http_request(addr, "GET", "/", &headers, &[], Duration::from_secs(5)).expect("request through the gateway");
    (status, headers, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[test]
fn a_partner_key_is_limited_and_a_pooled_key_gets_its_own_replicas() {
    let (_root, daemon) = hello_daemon("api", 2, PARTNER_SPEC);
    // The pool runs as its own unit beside the service's replicas.
    wait_healthy(&daemon, "api@partner-b", 1);
    let gateway = daemon.gateway_addr();

    // key-a gets the default 5/s with a burst of 5: a quick run of 15 is cut at about 5.
    let answers: Vec<_> = (0..15).map(|_| get(gateway, "key-a")).collect();
    let admitted = answers.iter().filter(|(status, _, _)| *status == 200).count();
    let limited: Vec<_> = answers.iter().filter(|(status, _, _)| *status == 429).collect();
    println!("key-a: {admitted} admitted, {} limited of 15", limited.len());
    assert!((5..=7).contains(&admitted), "burst of 5 (plus what refilled meanwhile), admitted {admitted}");
    assert_eq!(admitted + limited.len(), 15, "every other answer is a 429");
    for (_, headers, _) in &limited {
        let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
        assert!(has("retry-after") && has("ratelimit") && has("ratelimit-policy"), "429 headers: {headers:?}");
    }
    // Answers for key-a came from the service's own replicas, never the pool.
    for (_, _, body) in answers.iter().filter(|(status, _, _)| *status == 200) {
        assert_eq!(body["service"], "api", "shared traffic stays off the pool: {body}");
    }

    // key-b is overridden to 1000/s and pinned to the pool.
    for _ in 0..20 {
        let (status, _, body) = get(gateway, "key-b");
        assert_eq!(status, 200, "key-b is within its limit");
        assert_eq!(body["service"], "api@partner-b", "key-b is served by its pool only: {body}");
    }

    let status = daemon.cli_json(&["ps"]);
    let names: Vec<&str> = status.as_array().into_iter().flatten().filter_map(|s| s["name"].as_str()).collect();
    assert!(names.contains(&"api") && names.contains(&"api@partner-b"), "ps shows the pool: {names:?}");
}
