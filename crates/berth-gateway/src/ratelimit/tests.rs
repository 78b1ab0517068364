use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::*;

const SEC: Duration = Duration::from_secs(1);

fn per_sec(requests: u32) -> Rate {
    Rate { requests, per: SEC }
}

fn policy(key: RateKey, requests: u32, burst: u32) -> RateLimitPolicy {
    RateLimitPolicy { key, rate: per_sec(requests), burst, overrides: BTreeMap::new(), pools: BTreeMap::new() }
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_static(value));
    }
    map
}

/// Sends `n` requests at the same instant and counts the admitted ones.
fn n_admitted(limiter: &RateLimiter, headers: &HeaderMap, peer: IpAddr, at: Instant, n: usize) -> usize {
    (0..n).filter(|_| limiter.check(headers, peer, "external", at).is_ok()).count()
}

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));

#[test]
fn header_keys_are_limited_separately_and_missing_headers_share_one_key() {
    let limiter = RateLimiter::new(&policy(RateKey::Header("X-Api-Key".into()), 5, 5), "web", "/", &Metrics::new());
    let now = Instant::now();
    for key in ["a", "b"] {
        let h = headers(&[("x-api-key", key)]);
        assert_eq!(n_admitted(&limiter, &h, PEER, now, 20), 5, "key {key}");
    }
    assert_eq!(n_admitted(&limiter, &HeaderMap::new(), PEER, now, 20), 5);
    let other_peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 8));
    assert_eq!(n_admitted(&limiter, &HeaderMap::new(), other_peer, now, 20), 0, "no header: one shared key");
    // An empty header value is a key of its own, not "no header".
    assert_eq!(n_admitted(&limiter, &headers(&[("x-api-key", "")]), PEER, now, 20), 5);
}

#[test]
fn overrides_get_their_own_rate_and_burst() {
    let mut p = policy(RateKey::Header("x-api-key".into()), 5, 5);
    p.overrides.insert("partner-a".into(), per_sec(20));
    p.overrides.insert("partner-b".into(), per_sec(100));
    let metrics = Metrics::new();
    let limiter = RateLimiter::new(&p, "web", "/api", &metrics);
    let start = Instant::now();
    let a = headers(&[("x-api-key", "partner-a")]);
    let b = headers(&[("x-api-key", "partner-b")]);
    let other = headers(&[("x-api-key", "someone")]);
    assert_eq!(n_admitted(&limiter, &a, PEER, start, 500), 20);
    assert_eq!(n_admitted(&limiter, &b, PEER, start, 500), 100);
    assert_eq!(n_admitted(&limiter, &other, PEER, start, 500), 5);
    // One second later each key has refilled by its own rate.
    let later = start + SEC;
    assert_eq!(n_admitted(&limiter, &a, PEER, later, 500), 20);
    assert_eq!(n_admitted(&limiter, &b, PEER, later, 500), 100);
    assert_eq!(n_admitted(&limiter, &other, PEER, later, 500), 5);
    let mut out = String::new();
    metrics.render(&mut out);
    assert!(out.contains(r#"berth_gateway_rate_limited_total{service="web",route="/api",class="override"} 1760"#));
    assert!(out.contains(r#"berth_gateway_rate_limited_total{service="web",route="/api",class="default"} 990"#));
    assert!(
        out.contains(r#"berth_gateway_rate_limit_admitted_total{service="web",route="/api",class="override"} 240"#)
    );
}

#[test]
fn ip_and_source_keys() {
    let metrics = Metrics::new();
    let by_ip = RateLimiter::new(&policy(RateKey::Ip, 2, 2), "web", "/", &metrics);
    let now = Instant::now();
    let none = HeaderMap::new();
    assert_eq!(n_admitted(&by_ip, &none, PEER, now, 10), 2);
    assert_eq!(n_admitted(&by_ip, &none, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 8)), now, 10), 2);
    let mut p = policy(RateKey::Ip, 2, 2);
    p.overrides.insert("10.0.0.7".into(), per_sec(7));
    let by_ip = RateLimiter::new(&p, "web", "/", &metrics);
    assert_eq!(n_admitted(&by_ip, &none, PEER, now, 10), 7, "overrides match the address as text");

    let by_source = RateLimiter::new(&policy(RateKey::Source, 3, 3), "web", "/", &metrics);
    let admitted = |source: &str| (0..10).filter(|_| by_source.check(&none, PEER, source, now).is_ok()).count();
    assert_eq!(admitted("external"), 3);
    assert_eq!(admitted("billing"), 3);
    assert_eq!(admitted("external"), 0);
}

#[test]
fn pools_are_chosen_by_key_value() {
    let mut p = policy(RateKey::Header("x-api-key".into()), 100, 100);
    p.pools.insert("partner-b".into(), "partner-b-pool".into());
    let limiter = RateLimiter::new(&p, "web", "/", &Metrics::new());
    let now = Instant::now();
    let pooled = limiter.check(&headers(&[("x-api-key", "partner-b")]), PEER, "external", now);
    assert_eq!(pooled.map(|a| a.groups()).ok(), Some(Groups::Pool("partner-b-pool")));
    let shared = limiter.check(&headers(&[("x-api-key", "partner-a")]), PEER, "external", now);
    assert_eq!(shared.map(|a| a.groups()).ok(), Some(Groups::Shared));
    let none = limiter.check(&HeaderMap::new(), PEER, "external", now);
    assert_eq!(none.map(|a| a.groups()).ok(), Some(Groups::Shared));
}

#[test]
fn fields_follow_the_draft() {
    let limiter = RateLimiter::new(&policy(RateKey::Header("x-api-key".into()), 2, 2), "web", "/", &Metrics::new());
    let now = Instant::now();
    let key = headers(&[("x-api-key", "k")]);
    let fields = |admission: Admission<'_>| {
        let mut map = HeaderMap::new();
        admission.write_fields(&mut map);
        (map["ratelimit-policy"].clone(), map["ratelimit"].clone())
    };
    let (policy_field, first) = fields(limiter.check(&key, PEER, "external", now).expect("admitted"));
    assert_eq!(policy_field, "\"default\";q=2;w=1");
    assert_eq!(first, "\"default\";r=1;t=1");
    let (_, second) = fields(limiter.check(&key, PEER, "external", now).expect("admitted"));
    assert_eq!(second, "\"default\";r=0;t=1");
    let rejection = limiter.check(&key, PEER, "external", now).err().expect("refused");
    let mut map = HeaderMap::new();
    rejection.write_fields(&mut map);
    assert_eq!(map["retry-after"], "1", "half a second, rounded up");
    assert_eq!(map["ratelimit"], "\"default\";r=0;t=1");
    assert_eq!(map["ratelimit-policy"], "\"default\";q=2;w=1");
    let message = rejection.to_string();
    assert!(message.contains("2 requests per second") && message.contains("x-api-key"), "{message}");
    assert!(!message.contains(": k"), "the key value itself is not echoed: {message}");

    // A slow quota: 5 per minute, burst 5 → the window is the minute it takes to refill.
    let slow =
        RateLimitPolicy { rate: Rate { requests: 5, per: Duration::from_secs(60) }, ..policy(RateKey::Ip, 5, 5) };
    let limiter = RateLimiter::new(&slow, "web", "/", &Metrics::new());
    let none = HeaderMap::new();
    for _ in 0..5 {
        assert!(limiter.check(&none, PEER, "external", now).is_ok());
    }
    let rejection = limiter.check(&none, PEER, "external", now).err().expect("refused");
    let mut map = HeaderMap::new();
    rejection.write_fields(&mut map);
    assert_eq!(map["retry-after"], "12");
    assert_eq!(map["ratelimit-policy"], "\"default\";q=5;w=60");
}
