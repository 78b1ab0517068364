//! Per-key request rate limits of routes, and the choice of a dedicated pool by key.
//!
//! Each rate-limited route has one `RateLimiter`. A request's key is a header's value (requests without
//! the header share one key), the `X-Source` the gateway assigns, or the client's IP address. The key's
//! rate is the route's, or a per-key override; the key may also be mapped to a dedicated pool, whose
//! replicas then serve it alone (see `balance::Groups`).
//!
//! The algorithm is GCRA (`gcra.rs`), written here rather than taken from `governor`: we need a quota per
//! key (overrides) in one limiter, keys stored only as keyed hashes (an API key is a secret and may be
//! long), and a hard memory bound with idle keys forgotten as a matter of course. `governor`'s keyed store
//! has one quota per limiter, keeps the keys themselves, and grows until someone calls `retain_recent`.
//!
//! State: `KeyCells` (`store.rs`) holds the TAT of every key ahead of schedule, by SipHash of the key value
//! with a random per-limiter key, with a hard cap. Override keys, a short list the operator wrote, each get
//! a dedicated atomic cell instead, so a flood of unknown keys can never push a partner into the shared
//! overflow cell. A limiter lives in the `Registry` under its service and route prefix, so it survives
//! routing-table updates; a changed policy gets a fresh limiter.
//!
//! Over the limit the answer is `429 Too Many Requests` with `Retry-After` (whole seconds, rounded up, at
//! least 1), the `RateLimit-Policy` and `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-11 and a
//! line for humans; the request never reaches a replica. Admitted responses carry the same two fields.

mod gcra;
mod store;

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue, header};

use self::gcra::{Quota, Verdict};
use self::store::{KeyCells, check_atomic};
use crate::balance::Groups;
use crate::error::ProxyError;
use crate::metrics::{KeyClass, Metrics, PoolMetrics, RateLimitMetrics};
use crate::table::{Rate, RateKey, RateLimitPolicy, RouteEntry};

pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The rate limit of one route.
pub(crate) struct RateLimiter {
    /// What it was built from: an update with an equal policy keeps this limiter and its state.
    policy: RateLimitPolicy,
    epoch: Instant,
    hasher: RandomState,
    default: Limit,
    overrides: Vec<Override>,
    /// Overrides and pools by key value; empty when the policy has neither.
    rules: HashMap<Vec<u8>, KeyRule>,
    cells: KeyCells,
    metrics: Arc<RateLimitMetrics>,
    /// For the 429 body: what the key is (`the X-Api-Key header`, `the client IP`...).
    key_name: String,
}

/// A request the rate limit let through: where it may go, and the fields to add to its response.
pub(crate) struct Admission<'a> {
    pool: Option<&'a str>,
    fields: Option<(&'a HeaderValue, HeaderValue)>,
}

/// A request the rate limit refused; becomes the 429 answer (`ProxyError::RateLimited`).
#[derive(Debug)]
pub(crate) struct Rejection {
    policy: HeaderValue,
    ratelimit: HeaderValue,
    retry_after: HeaderValue,
    message: String,
}

struct Limit {
    quota: Quota,
    class: KeyClass,
    rate: Rate,
    /// `RateLimit-Policy`, the same on every response.
    policy_field: HeaderValue,
}

struct Override {
    limit: Limit,
    tat: AtomicU64,
}

#[derive(Default)]
struct KeyRule {
    override_idx: Option<usize>,
    pool: Option<(String, Arc<PoolMetrics>)>,
}

impl RateLimiter {
    /// The limiter of route `route` of `service`, with fresh state.
    pub(crate) fn new(policy: &RateLimitPolicy, service: &str, route: &str, metrics: &Metrics) -> RateLimiter {
        let default = Limit::new(policy.rate, policy.burst, KeyClass::Default);
        let mut overrides = Vec::new();
        let mut rules: HashMap<Vec<u8>, KeyRule> = HashMap::new();
        for (value, rate) in &policy.overrides {
            rules.entry(value.as_bytes().to_vec()).or_default().override_idx = Some(overrides.len());
            // An override's burst is its own count: a partner at 100/s may send 100 at once.
            overrides
                .push(Override { limit: Limit::new(*rate, rate.requests, KeyClass::Override), tat: AtomicU64::new(0) });
        }
        for (value, pool) in &policy.pools {
            rules.entry(value.as_bytes().to_vec()).or_default().pool =
                Some((pool.clone(), metrics.pool(service, pool)));
        }
        let key_name = match &policy.key {
            RateKey::Header(name) => format!("{name} value"),
            RateKey::Source => "calling side (X-Source)".to_owned(),
            RateKey::Ip => "client IP address".to_owned(),
        };
        RateLimiter {
            policy: policy.clone(),
            epoch: Instant::now(),
            hasher: RandomState::new(),
            default,
            overrides,
            rules,
            cells: KeyCells::new(),
            metrics: metrics.rate_limit(service, route),
            key_name,
        }
    }

    pub(crate) fn policy(&self) -> &RateLimitPolicy {
        &self.policy
    }

    /// Decides a request with these headers from `peer` through a listener whose `X-Source` is `source`.
    pub(crate) fn check(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
        source: &str,
        now: Instant,
    ) -> Result<Admission<'_>, Box<Rejection>> {
        let value: Option<Cow<'_, [u8]>> = match &self.policy.key {
            RateKey::Header(name) => headers.get(name.as_str()).map(|value| Cow::Borrowed(value.as_bytes())),
            RateKey::Source => Some(Cow::Borrowed(source.as_bytes())),
            RateKey::Ip => Some(Cow::Owned(peer.to_string().into_bytes())),
        };
        self.check_value(value.as_deref(), now)
    }

    /// Decides a request whose key value is `value` (`None`: the request has no key, e.g. no header).
    fn check_value(&self, value: Option<&[u8]>, now: Instant) -> Result<Admission<'_>, Box<Rejection>> {
        let now_ns = u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let rule = match value {
            Some(value) if !self.rules.is_empty() => self.rules.get(value),
            _ => None,
        };
        let (limit, verdict) = match rule.and_then(|rule| rule.override_idx) {
            Some(idx) => {
                let cell = &self.overrides[idx];
                (&cell.limit, check_atomic(&cell.tat, now_ns, &cell.limit.quota))
            }
            None => (&self.default, self.cells.check(self.hasher.hash_one(value), now_ns, &self.default.quota).0),
        };
        match verdict {
            Verdict::Admit { tat } => {
                self.metrics.admitted(limit.class);
                let pool = rule.and_then(|rule| rule.pool.as_ref()).map(|(name, metrics)| {
                    metrics.admitted();
                    name.as_str()
                });
                let remaining = limit.quota.remaining(tat, now_ns);
                let full_in = Duration::from_nanos(tat.saturating_sub(now_ns));
                Ok(Admission { pool, fields: Some((&limit.policy_field, limit.ratelimit_field(remaining, full_in))) })
            }
            Verdict::Reject { wait_ns } => {
                self.metrics.rejected(limit.class);
                let retry_after = ceil_secs(Duration::from_nanos(wait_ns)).max(1);
                let whose = match limit.class {
                    KeyClass::Default => format!("each {}", self.key_name),
                    KeyClass::Override => format!("this {}", self.key_name),
                };
                let message = format!(
                    "too many requests: this route allows {whose} {} (bursts of {}); retry in {retry_after} s",
                    describe(limit.rate),
                    limit.quota.burst(),
                );
                Err(Box::new(Rejection {
                    policy: limit.policy_field.clone(),
                    ratelimit: limit.ratelimit_field(0, Duration::from_secs(retry_after)),
                    retry_after: HeaderValue::from(retry_after),
                    message,
                }))
            }
        }
    }
}

/// The rate-limit decision for a request on `route`: the hook `proxy::handle` calls first.
pub(crate) fn admit<'a>(
    route: &'a RouteEntry,
    headers: &HeaderMap,
    peer: IpAddr,
    source: &str,
) -> Result<Admission<'a>, ProxyError> {
    match &route.rate_limit {
        None => Ok(Admission::unlimited()),
        Some(limiter) => limiter.check(headers, peer, source, Instant::now()).map_err(ProxyError::RateLimited),
    }
}

impl<'a> Admission<'a> {
    /// A request on a route without a rate limit.
    pub(crate) fn unlimited() -> Admission<'a> {
        Admission { pool: None, fields: None }
    }

    /// The replica groups this request may be balanced over.
    pub(crate) fn groups(&self) -> Groups<'a> {
        match self.pool {
            Some(pool) => Groups::Pool(pool),
            None => Groups::Shared,
        }
    }

    /// Adds `RateLimit-Policy` and `RateLimit` to the response.
    pub(crate) fn write_fields(self, headers: &mut HeaderMap) {
        if let Some((policy, ratelimit)) = self.fields {
            headers.insert(RATELIMIT_POLICY, policy.clone());
            headers.insert(RATELIMIT, ratelimit);
        }
    }
}

impl Rejection {
    pub(crate) fn write_fields(&self, headers: &mut HeaderMap) {
        headers.insert(header::RETRY_AFTER, self.retry_after.clone());
        headers.insert(RATELIMIT_POLICY, self.policy.clone());
        headers.insert(RATELIMIT, self.ratelimit.clone());
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Limit {
    fn new(rate: Rate, burst: u32, class: KeyClass) -> Limit {
        let quota = Quota::new(rate, burst);
        // The quota is a full burst, and the window the time it takes to refill: `q` requests per `w`
        // seconds is the steady rate, and an idle key may spend `q` at once.
        let field = format!("\"{}\";q={};w={}", class.label(), quota.burst(), ceil_secs(quota.window()).max(1));
        let policy_field = HeaderValue::try_from(field).unwrap_or(HeaderValue::from_static("\"default\";q=1"));
        Limit { quota, class, rate, policy_field }
    }

    /// `RateLimit`: `r` requests available now; `t` seconds until the key is back at full quota (on a
    /// refusal: until the next request fits, which equals `Retry-After`).
    fn ratelimit_field(&self, remaining: u32, window: Duration) -> HeaderValue {
        HeaderValue::try_from(format!("\"{}\";r={remaining};t={}", self.class.label(), ceil_secs(window)))
            .unwrap_or_else(|_| HeaderValue::from_static("\"default\";r=0"))
    }
}

/// `20 requests per second`, `5 requests per 10s`.
fn describe(rate: Rate) -> String {
    let per = match rate.per.as_secs() {
        1 if rate.per.subsec_nanos() == 0 => "second".to_owned(),
        60 if rate.per.subsec_nanos() == 0 => "minute".to_owned(),
        3600 if rate.per.subsec_nanos() == 0 => "hour".to_owned(),
        _ => format!("{:?}", rate.per),
    };
    format!("{} requests per {per}", rate.requests)
}

fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests;
