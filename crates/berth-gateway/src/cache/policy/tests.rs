use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};

use super::*;

fn route(max_age: u64, swr: u64, private: bool) -> CachePolicy {
    CachePolicy { max_age: Duration::from_secs(max_age), stale_while_revalidate: Duration::from_secs(swr), private }
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_static(value));
    }
    map
}

/// `expected`: `Ok((fresh_s, serve_s))` or the reason it is not stored.
fn check(
    policy: &CachePolicy,
    authorization: bool,
    status: u16,
    pairs: &[(&'static str, &'static str)],
    expected: Result<(u64, u64), NotStored>,
) {
    let got = freshness(policy, authorization, status, &headers(pairs))
        .map(|f| (f.fresh_for.as_secs(), f.serve_for.as_secs()));
    assert_eq!(got, expected, "status {status}, headers {pairs:?}, {policy:?}");
}

#[test]
fn the_route_bounds_freshness_and_the_replica_can_only_shorten_it() {
    let policy = route(60, 30, false);
    check(&policy, false, 200, &[], Ok((60, 90)));
    check(&policy, false, 200, &[("cache-control", "max-age=10")], Ok((10, 40)));
    check(&policy, false, 200, &[("cache-control", "max-age=3600")], Ok((60, 90)));
    check(&policy, false, 200, &[("cache-control", "public, s-maxage=5, max-age=3600")], Ok((5, 35)));
    check(&policy, false, 200, &[("cache-control", "Max-Age=20")], Ok((20, 50)));
    check(&policy, false, 200, &[("cache-control", "must-revalidate, max-age=20")], Ok((20, 20)));
    check(&policy, false, 200, &[("cache-control", "max-age=0")], Err(NotStored::Expired));
    check(&policy, false, 200, &[("cache-control", "max-age=oops")], Err(NotStored::Expired));
    check(
        &policy,
        false,
        200,
        &[("cache-control", "max-age=20"), ("cache-control", "max-age=30")],
        Err(NotStored::Expired),
    );
}

#[test]
fn only_cacheable_statuses_are_stored() {
    let policy = route(60, 0, false);
    for status in CACHEABLE_STATUSES {
        check(&policy, false, status, &[], Ok((60, 60)));
    }
    for status in [201, 206, 302, 304, 307, 400, 403, 500, 502, 503] {
        check(&policy, false, status, &[], Err(NotStored::Status));
    }
}

#[test]
fn private_responses_are_stored_only_when_the_route_opts_in() {
    type Case = (&'static [(&'static str, &'static str)], bool, NotStored);
    let cases: [Case; 5] = [
        (&[("cache-control", "no-store")], false, NotStored::NoStore),
        (&[("cache-control", "private")], false, NotStored::Private),
        (&[("cache-control", "private=\"x-user\", max-age=5")], false, NotStored::Private),
        (&[("set-cookie", "session=1")], false, NotStored::SetCookie),
        (&[], true, NotStored::Authorization),
    ];
    for (pairs, authorization, reason) in cases {
        check(&route(60, 0, false), authorization, 200, pairs, Err(reason));
        let opted_in = if pairs.iter().any(|(_, v)| v.contains("max-age=5")) { 5 } else { 60 };
        check(&route(60, 0, true), authorization, 200, pairs, Ok((opted_in, opted_in)));
    }
    // `no-cache` asks for revalidation on every use, which the gateway does not do: never stored.
    check(&route(60, 0, true), false, 200, &[("cache-control", "no-cache")], Err(NotStored::NoCache));
}

#[test]
fn vary_names_are_collected_and_star_is_never_stored() {
    let policy = route(60, 0, false);
    let got = freshness(&policy, false, 200, &headers(&[("vary", "Accept-Encoding, accept"), ("vary", "X-Tenant")]))
        .expect("storable");
    let names: Vec<&str> = got.vary.iter().map(|name| name.as_str()).collect();
    assert_eq!(names, ["accept", "accept-encoding", "x-tenant"]);
    check(&policy, false, 200, &[("vary", "accept, *")], Err(NotStored::VaryStar));
}

#[test]
fn the_replicas_age_counts_against_the_bound() {
    let policy = route(60, 30, false);
    let got = freshness(&policy, false, 200, &headers(&[("age", "50")])).expect("storable");
    assert_eq!((got.initial_age, got.serve_for), (Duration::from_secs(50), Duration::from_secs(90)));
    check(&policy, false, 200, &[("age", "90")], Err(NotStored::Expired));
}

#[test]
fn only_get_and_head_use_the_cache_and_authorization_needs_the_opt_in() {
    let auth = headers(&[("authorization", "Bearer x")]);
    let none = HeaderMap::new();
    assert!(request_uses_cache(&route(1, 0, false), &Method::GET, &none));
    assert!(request_uses_cache(&route(1, 0, false), &Method::HEAD, &none));
    assert!(!request_uses_cache(&route(1, 0, false), &Method::POST, &none));
    assert!(!request_uses_cache(&route(1, 0, false), &Method::GET, &auth));
    assert!(request_uses_cache(&route(1, 0, true), &Method::GET, &auth));
}
