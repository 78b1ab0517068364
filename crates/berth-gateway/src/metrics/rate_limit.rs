//! Rate-limit and dedicated-pool counters: requests admitted and refused (429) per service, route and key
//! class, and requests admitted to each dedicated pool.
//!
//! Key values never become labels (an API key is a secret, and the set of keys is unbounded): a request is
//! counted under its class, `default` (the route's rate) or `override` (a per-key rate). The families are
//! rendered only once some route has a rate limit or some service a pool, so a gateway without either
//! exposes exactly what it did before.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Metrics, family, lock, sample};

/// Which rate a key was held to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyClass {
    /// The route's rate.
    Default,
    /// A per-key override.
    Override,
}

/// The counters of one rate-limited route.
#[derive(Default)]
pub struct RateLimitMetrics {
    admitted: [AtomicU64; CLASSES.len()],
    rejected: [AtomicU64; CLASSES.len()],
}

/// The counter of one dedicated pool.
#[derive(Default)]
pub struct PoolMetrics {
    admitted: AtomicU64,
}

#[derive(Default)]
pub(super) struct RateLimitRegistry {
    routes: Mutex<BTreeMap<(String, String), Arc<RateLimitMetrics>>>,
    pools: Mutex<BTreeMap<(String, String), Arc<PoolMetrics>>>,
}

impl Metrics {
    /// Get-or-create the rate-limit counters of a route (when the routing table is compiled).
    pub fn rate_limit(&self, service: &str, route: &str) -> Arc<RateLimitMetrics> {
        lock(&self.rate_limits.routes).entry((service.to_owned(), route.to_owned())).or_default().clone()
    }

    /// Get-or-create the counter of a service's dedicated pool (when the routing table is compiled).
    pub fn pool(&self, service: &str, pool: &str) -> Arc<PoolMetrics> {
        lock(&self.rate_limits.pools).entry((service.to_owned(), pool.to_owned())).or_default().clone()
    }
}

impl RateLimitMetrics {
    pub fn admitted(&self, class: KeyClass) {
        self.admitted[class.idx()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, class: KeyClass) {
        self.rejected[class.idx()].fetch_add(1, Ordering::Relaxed);
    }
}

impl PoolMetrics {
    pub fn admitted(&self) {
        self.admitted.fetch_add(1, Ordering::Relaxed);
    }
}

impl KeyClass {
    pub fn label(self) -> &'static str {
        CLASSES[self.idx()]
    }

    fn idx(self) -> usize {
        match self {
            KeyClass::Default => 0,
            KeyClass::Override => 1,
        }
    }
}

const CLASSES: [&str; 2] = ["default", "override"];
const ADMITTED: &str = "berth_gateway_rate_limit_admitted_total";
const REJECTED: &str = "berth_gateway_rate_limited_total";
const POOL_REQUESTS: &str = "berth_gateway_pool_requests_total";

impl RateLimitRegistry {
    pub(super) fn render(&self, out: &mut String) -> fmt::Result {
        let routes: Vec<((String, String), Arc<RateLimitMetrics>)> =
            lock(&self.routes).iter().map(|(key, handle)| (key.clone(), handle.clone())).collect();
        let pools: Vec<((String, String), Arc<PoolMetrics>)> =
            lock(&self.pools).iter().map(|(key, handle)| (key.clone(), handle.clone())).collect();
        if !routes.is_empty() {
            let help =
                "Requests a route's rate limit let through, by key class (the route's rate or a per-key override).";
            family(out, ADMITTED, "counter", help)?;
            for ((service, route), handle) in &routes {
                for (idx, class) in CLASSES.iter().enumerate() {
                    let labels = [("service", service.as_str()), ("route", route), ("class", class)];
                    sample(out, ADMITTED, "", &labels, handle.admitted[idx].load(Ordering::Relaxed))?;
                }
            }
            let help = "Requests refused with 429 by a route's rate limit, by key class (the route's rate or a per-key override).";
            family(out, REJECTED, "counter", help)?;
            for ((service, route), handle) in &routes {
                for (idx, class) in CLASSES.iter().enumerate() {
                    let labels = [("service", service.as_str()), ("route", route), ("class", class)];
                    sample(out, REJECTED, "", &labels, handle.rejected[idx].load(Ordering::Relaxed))?;
                }
            }
        }
        if !pools.is_empty() {
            family(out, POOL_REQUESTS, "counter", "Requests a rate limit admitted to a dedicated pool of replicas.")?;
            for ((service, pool), handle) in &pools {
                let labels = [("service", service.as_str()), ("pool", pool.as_str())];
                sample(out, POOL_REQUESTS, "", &labels, handle.admitted.load(Ordering::Relaxed))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn renders_classes_and_pools_and_nothing_when_unused() {
        let metrics = Metrics::new();
        let mut before = String::new();
        metrics.render(&mut before);
        assert!(!before.contains("rate_limit") && !before.contains("pool"), "{before}");

        let api = metrics.rate_limit("web", "/api");
        api.admitted(KeyClass::Default);
        api.admitted(KeyClass::Override);
        api.rejected(KeyClass::Override);
        metrics.rate_limit("web", "/");
        metrics.pool("web", "partner-b").admitted();
        let mut out = String::new();
        metrics.render(&mut out);
        let ours: Vec<&str> = out.lines().skip_while(|line| !line.contains(ADMITTED)).collect();
        let expected = [
            "# HELP berth_gateway_rate_limit_admitted_total Requests a route's rate limit let through, by key class (the route's rate or a per-key override).",
            "# TYPE berth_gateway_rate_limit_admitted_total counter",
            r#"berth_gateway_rate_limit_admitted_total{service="web",route="/",class="default"} 0"#,
            r#"berth_gateway_rate_limit_admitted_total{service="web",route="/",class="override"} 0"#,
            r#"berth_gateway_rate_limit_admitted_total{service="web",route="/api",class="default"} 1"#,
            r#"berth_gateway_rate_limit_admitted_total{service="web",route="/api",class="override"} 1"#,
            "# HELP berth_gateway_rate_limited_total Requests refused with 429 by a route's rate limit, by key class (the route's rate or a per-key override).",
            "# TYPE berth_gateway_rate_limited_total counter",
            r#"berth_gateway_rate_limited_total{service="web",route="/",class="default"} 0"#,
            r#"berth_gateway_rate_limited_total{service="web",route="/",class="override"} 0"#,
            r#"berth_gateway_rate_limited_total{service="web",route="/api",class="default"} 0"#,
            r#"berth_gateway_rate_limited_total{service="web",route="/api",class="override"} 1"#,
            "# HELP berth_gateway_pool_requests_total Requests a rate limit admitted to a dedicated pool of replicas.",
            "# TYPE berth_gateway_pool_requests_total counter",
            r#"berth_gateway_pool_requests_total{service="web",pool="partner-b"} 1"#,
        ];
        assert_eq!(ours, expected, "\n{out}");
        crate::metrics::promtool_check(&out);
    }
}
