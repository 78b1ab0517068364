//! Tests for `judge` and `thresholds`: each case is a canary window, an optional stable window and the
//! expected verdict.

use std::time::Duration;

use berth_gateway::{GroupStats, LatencyHistogram};

use super::*;

/// `requests` answers, `failures` of them failed, all taking `latency_ms`.
fn window(group: &str, requests: u64, failures: u64, latency_ms: u64) -> GroupStats {
    let mut latency = LatencyHistogram::new();
    for _ in 0..requests {
        latency.record(Duration::from_millis(latency_ms));
    }
    GroupStats { group: group.to_owned(), requests, failures, latency }
}

fn limits(max_error_rate: f64, max_p90_ms: Option<u64>, min_requests: u64) -> Thresholds {
    Thresholds { max_error_rate, max_p90: max_p90_ms.map(Duration::from_millis), min_requests }
}

fn check(canary: (u64, u64, u64), stable: Option<(u64, u64, u64)>, t: &Thresholds, expected: &str) {
    let canary = window("next", canary.0, canary.1, canary.2);
    let stable = stable.map(|(requests, failures, ms)| window("stable", requests, failures, ms));
    let verdict = judge(&canary, stable.as_ref(), t);
    let shown = match &verdict {
        Verdict::Pass => "pass".to_owned(),
        Verdict::Fail(why) => format!("fail: {why}"),
        Verdict::Wait(why) => format!("wait: {why}"),
    };
    assert_eq!(shown, expected, "{verdict:?}");
}

#[test]
fn too_few_requests_wait_rather_than_pass() {
    let t = limits(0.01, Some(400), 50);
    check(
        (49, 0, 10),
        Some((1000, 0, 10)),
        &t,
        "wait: canary has 49 of the 50 requests needed to judge it; waiting for more traffic",
    );
    check((0, 0, 10), None, &t, "wait: canary has 0 of the 50 requests needed to judge it; waiting for more traffic");
    // Slow but too few: latency is not judged on noise either.
    check(
        (10, 0, 2_000),
        None,
        &t,
        "wait: canary has 10 of the 50 requests needed to judge it; waiting for more traffic",
    );
}

#[test]
fn failures_that_already_prove_the_rate_fail_before_min_requests() {
    let t = limits(0.05, None, 50);
    // 2 of 50 would be 4%: not over 5%, so wait. 3 of 50 is 6% whatever the next 40 do.
    check((10, 2, 10), None, &t, "wait: canary has 10 of the 50 requests needed to judge it; waiting for more traffic");
    check(
        (10, 3, 10),
        Some((1000, 2, 10)),
        &t,
        "fail: canary error rate at least 6% (3 failed of its first 10, judged over the 50 requests needed) over the 5% limit; stable 0.2% (2 of 1000)",
    );
}

#[test]
fn a_high_error_rate_fails() {
    let t = limits(0.01, None, 50);
    check(
        (500, 49, 10),
        Some((1000, 2, 10)),
        &t,
        "fail: canary error rate 9.8% (49 of 500) over the 1% limit; stable 0.2% (2 of 1000)",
    );
    check((500, 49, 10), None, &t, "fail: canary error rate 9.8% (49 of 500) over the 1% limit");
    // Stable with too few requests is not compared.
    check((500, 49, 10), Some((20, 10, 10)), &t, "fail: canary error rate 9.8% (49 of 500) over the 1% limit");
}

#[test]
fn good_numbers_pass() {
    let t = limits(0.01, Some(400), 50);
    check((50, 0, 100), Some((1000, 3, 100)), &t, "pass");
    check((1000, 10, 390), None, &t, "pass");
    check((1000, 10, 390), Some((1000, 50, 10)), &t, "pass");
}

#[test]
fn when_stable_fails_too_the_canary_is_blamed_only_when_clearly_worse() {
    let t = limits(0.01, None, 50);
    // A shared dependency's outage: both at ~30%.
    check(
        (500, 160, 10),
        Some((1000, 300, 10)),
        &t,
        "wait: canary error rate 32% (160 of 500) over the 1% limit, but stable fails too: 30% (300 of 1000); the canary is not clearly worse (that takes over 45%), so waiting for stable to recover (raise `error_rate` in [deploy] `analysis` if this rate is normal)",
    );
    check(
        (500, 250, 10),
        Some((1000, 300, 10)),
        &t,
        "fail: canary error rate 50% (250 of 500) over the 1% limit and clearly worse than stable, which fails too: 30% (300 of 1000)",
    );
    // A little over the limit: stable + limit is the bar, not 1.5 × stable.
    check(
        (1000, 25, 10),
        Some((1000, 12, 10)),
        &t,
        "fail: canary error rate 2.5% (25 of 1000) over the 1% limit and clearly worse than stable, which fails too: 1.2% (12 of 1000)",
    );
    // Stable healthy: over the limit is enough.
    check(
        (1000, 11, 10),
        Some((1000, 9, 10)),
        &t,
        "fail: canary error rate 1.1% (11 of 1000) over the 1% limit; stable 0.9% (9 of 1000)",
    );
}

#[test]
fn p90_over_the_limit_and_over_stable_fails() {
    let t = limits(0.01, Some(400), 50);
    // Every answer in (400, 500] ms: p90 interpolates to 490 ms.
    check((100, 0, 450), Some((1000, 0, 100)), &t, "fail: canary p90 490ms over the 400ms limit; stable p90 98ms");
    check((100, 0, 450), None, &t, "fail: canary p90 490ms over the 400ms limit");
    // Stable as slow: the canary is no worse than 1.5 × stable's p90 and passes this rule.
    check((100, 0, 450), Some((1000, 0, 420)), &t, "pass");
    // No latency limit: latency is not judged.
    check((100, 0, 5_000), None, &limits(0.01, None, 50), "pass");
    // Both rules broken: both are said.
    check(
        (100, 10, 450),
        None,
        &t,
        "fail: canary error rate 10% (10 of 100) over the 1% limit; and canary p90 490ms over the 400ms limit",
    );
}

#[test]
fn thresholds_come_from_the_analysis_then_the_strictest_route() {
    let spec = |extra: &str| {
        let source = format!("name = \"web\"\n[run]\ncommand = [\"./web\"]\n{extra}");
        berth_spec::parse("app.toml", &source)
            .unwrap_or_else(|diags| panic!("{}", berth_spec::render_all(&diags, &source)))
    };
    assert_eq!(thresholds(&spec("")), limits(0.01, None, 50));
    let routes = "[[routes]]\npath = \"/a\"\nnfr = { p90 = \"300ms\", error_rate = \"2%\" }\n\
                  [[routes]]\npath = \"/b\"\nnfr = { p90 = \"1s\", error_rate = \"0.5%\" }\n\
                  [[routes]]\npath = \"/c\"\n";
    assert_eq!(thresholds(&spec(routes)), limits(0.005, Some(300), 50));
    let analysis = "[deploy]\nanalysis = { error_rate = \"3%\", min_requests = 200 }\n";
    assert_eq!(thresholds(&spec(&format!("{routes}{analysis}"))), limits(0.03, Some(300), 200));
    let analysis = "[deploy]\nanalysis = { p90 = \"2s\" }\n";
    assert_eq!(thresholds(&spec(&format!("{routes}{analysis}"))), limits(0.005, Some(2_000), 50));
}

#[test]
fn numbers_read_naturally() {
    assert_eq!(percent(0.098), "9.8%");
    assert_eq!(percent(0.01), "1%");
    assert_eq!(percent(0.0025), "0.25%");
    assert_eq!(percent(0.0), "0%");
    assert_eq!(duration(Duration::from_micros(411_600)), "412ms");
    assert_eq!(duration(Duration::from_millis(1_250)), "1.25s");
    assert_eq!(duration(Duration::from_secs(2)), "2s");
}
