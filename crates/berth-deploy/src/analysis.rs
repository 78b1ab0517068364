//! Canary analysis: the pure judgement of a new release's numbers against limits and against the release
//! it replaces. No IO and no clock: the rollout takes two readings of the gateway's `group_stats`, subtracts
//! them (`GroupStats::since`) and asks `judge` whether to promote, roll back or wait.
//!
//! The rules, in order:
//!
//! 1. **Errors, decided early when they can be.** The canary's error rate is `failures / max(requests,
//!    min_requests)`: below `min_requests` that is the lowest rate the window can still end with once it
//!    has enough requests, so a canary whose failures alone already put it over the limit fails at once
//!    instead of serving more errors while it waits. Above the limit it fails, unless the comparison group
//!    (stable, or for the watch window the release's own pre-deploy baseline) has at least `min_requests`
//!    and is itself over the limit: then a shared cause (a database, a dependency's outage) is likely, and
//!    the canary fails only when it is clearly worse, over both `stable + limit` and `stable × 1.5`. A canary
//!    over the limit but not clearly worse than a failing stable gets `Wait`: it is neither blamed for the
//!    outage nor promoted on numbers the outage makes meaningless.
//! 2. **Too few requests.** Fewer than `min_requests` in the canary's window gives `Wait`, never `Pass` or
//!    `Fail` on noise (Flagger and Argo Rollouts are known to misfire on low traffic). The rollout decides
//!    how long to wait. Note that `min_requests` and the limit together set how noisy the judgement is:
//!    with the defaults (1%, 50), a single failed request among the first 50 fails the canary. A service
//!    whose normal error rate is close to its limit needs a larger `min_requests`.
//! 3. **Latency.** With a `max_p90`, the canary fails when its p90 is over the limit and, when the comparison
//!    group has enough requests, also over 1.5 × that group's p90. A canary no slower than 1.5 × a stable
//!    that is itself over the limit passes this rule: the service already misses its objective (the default
//!    limit, the strictest route's `nfr.p90`, applies to the whole service's mix of routes), and holding the
//!    rollout would not make it faster. Errors are treated more strictly because an outage can hide a
//!    canary's own errors, while a p90 1.5 times stable's is still caught.
//!
//! p90 comes from the gateway's bucketed histogram, interpolated within a bucket: exact to one bucket
//! (buckets are about 1.5x apart).

use std::time::Duration;

use berth_gateway::GroupStats;
use berth_spec::Spec;

/// The error-rate limit when neither `[deploy] analysis` nor any route's `nfr` gives one.
pub const DEFAULT_ERROR_RATE: f64 = 0.01;
/// Requests a canary window needs before it is judged, unless `[deploy] analysis` says otherwise.
pub const DEFAULT_MIN_REQUESTS: u64 = 50;
/// How much worse than a failing (or slow) comparison group the canary must be to be blamed.
const RELATIVE_MARGIN: f64 = 1.5;

/// Limits a canary window is judged against.
#[derive(Debug, Clone, PartialEq)]
pub struct Thresholds {
    /// Highest acceptable share of failed requests, as a fraction (`0.01` is 1%).
    pub max_error_rate: f64,
    /// Highest acceptable 90th percentile latency; `None`: latency is not judged.
    pub max_p90: Option<Duration>,
    /// Requests a window needs before it can pass (it can fail earlier; see the module docs).
    pub min_requests: u64,
}

/// What to do with a canary after one analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limits: go on to the next step (or promote).
    Pass,
    /// Over a limit: roll back. The message says which numbers and which limit.
    Fail(String),
    /// Cannot tell yet: too few requests, or stable is failing too. The message says why.
    Wait(String),
}

/// Judges the canary's window against `t` and, when given and with enough requests, the comparison group's
/// window (stable's, or the release's own pre-deploy baseline in the watch window after a promotion).
pub fn judge(canary: &GroupStats, stable: Option<&GroupStats>, t: &Thresholds) -> Verdict {
    let stable = stable.filter(|stable| stable.requests >= t.min_requests);
    let enough = canary.requests >= t.min_requests;
    let mut fails = Vec::new();
    let mut waits = Vec::new();

    // The lowest rate the window can end with once it has `min_requests`; the real rate once it has them.
    let judged_over = canary.requests.max(t.min_requests).max(1);
    let rate = canary.failures as f64 / judged_over as f64;
    if rate > t.max_error_rate {
        let canary_text = if enough {
            format!("canary error rate {} ({} of {})", percent(rate), canary.failures, canary.requests)
        } else {
            format!(
                "canary error rate at least {} ({} failed of its first {}, judged over the {} requests needed)",
                percent(rate),
                canary.failures,
                canary.requests,
                t.min_requests
            )
        };
        let limit = percent(t.max_error_rate);
        match stable.map(|stable| (stable, stable.failures as f64 / stable.requests as f64)) {
            Some((stable, stable_rate)) if stable_rate > t.max_error_rate => {
                let blame_above = (stable_rate + t.max_error_rate).max(stable_rate * RELATIVE_MARGIN);
                let stable_text = format!("{} ({} of {})", percent(stable_rate), stable.failures, stable.requests);
                if rate > blame_above {
                    fails.push(format!(
                        "{canary_text} over the {limit} limit and clearly worse than stable, which fails too: \
                         {stable_text}"
                    ));
                } else {
                    waits.push(format!(
                        "{canary_text} over the {limit} limit, but stable fails too: {stable_text}; the canary is \
                         not clearly worse (that takes over {}), so waiting for stable to recover (raise \
                         `error_rate` in [deploy] `analysis` if this rate is normal)",
                        percent(blame_above)
                    ));
                }
            }
            Some((stable, stable_rate)) => fails.push(format!(
                "{canary_text} over the {limit} limit; stable {} ({} of {})",
                percent(stable_rate),
                stable.failures,
                stable.requests
            )),
            None => fails.push(format!("{canary_text} over the {limit} limit")),
        }
    }
    if !enough {
        if !fails.is_empty() {
            return Verdict::Fail(fails.join("; and "));
        }
        return Verdict::Wait(format!(
            "canary has {} of the {} requests needed to judge it; waiting for more traffic",
            canary.requests, t.min_requests
        ));
    }

    if let (Some(max_p90), Some(p90)) = (t.max_p90, canary.latency.quantile(0.9))
        && p90 > max_p90
    {
        let stable_p90 = stable.and_then(|stable| stable.latency.quantile(0.9));
        match stable_p90 {
            Some(stable_p90) if p90 <= stable_p90.mul_f64(RELATIVE_MARGIN) => {}
            Some(stable_p90) => fails.push(format!(
                "canary p90 {} over the {} limit; stable p90 {}",
                duration(p90),
                duration(max_p90),
                duration(stable_p90)
            )),
            None => fails.push(format!("canary p90 {} over the {} limit", duration(p90), duration(max_p90))),
        }
    }
    if !fails.is_empty() {
        return Verdict::Fail(fails.join("; and "));
    }
    if !waits.is_empty() {
        return Verdict::Wait(waits.join("; and "));
    }
    Verdict::Pass
}

/// The analysis limits of a service: `[deploy] analysis` where given; otherwise the strictest route
/// `nfr.error_rate` (else 1%), the strictest route `nfr.p90` (else no latency limit) and 50 requests.
pub fn thresholds(spec: &Spec) -> Thresholds {
    let analysis = &spec.deploy.analysis;
    let nfrs = || spec.routes.iter().filter_map(|route| route.nfr.as_ref());
    let strictest_error_rate = nfrs().filter_map(|nfr| nfr.error_rate).min_by(f64::total_cmp);
    let strictest_p90 = nfrs().filter_map(|nfr| nfr.p90).min();
    Thresholds {
        max_error_rate: analysis.error_rate.or(strictest_error_rate).unwrap_or(DEFAULT_ERROR_RATE),
        max_p90: analysis.p90.or(strictest_p90),
        min_requests: analysis.min_requests.as_ref().map_or(DEFAULT_MIN_REQUESTS, |n| *n.get_ref()).max(1),
    }
}

/// `0.098` as `9.8%`: at most two decimals, no trailing zeros.
fn percent(fraction: f64) -> String {
    let text = format!("{:.2}", fraction * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// Milliseconds below a second (`412ms`), seconds with at most two decimals above (`1.25s`).
fn duration(value: Duration) -> String {
    let millis = (value.as_secs_f64() * 1_000.0).round();
    if millis < 1_000.0 {
        return format!("{millis}ms");
    }
    let text = format!("{:.2}", value.as_secs_f64());
    format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
}

#[cfg(test)]
mod tests;
