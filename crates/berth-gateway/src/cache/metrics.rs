//! The response cache's metrics, in the style of `crate::metrics`: lookups per route by result and stores
//! per route (atomics, handles looked up when the routing table is compiled), evictions and the bytes and
//! entries held per service (updated when an entry is stored or removed, under a lock, not per lookup).
//!
//! The families are rendered only once a route with a cache has been registered, so a gateway without
//! caching exposes exactly what it did before.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::metrics::{family, sample};

/// Every cache counter of one gateway.
#[derive(Default)]
pub struct CacheMetrics {
    routes: Mutex<BTreeMap<(String, String), Arc<RouteCacheMetrics>>>,
    services: Mutex<BTreeMap<String, ServiceCounters>>,
}

/// What a lookup found, as the client sees it in `X-Cache`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Hit,
    Miss,
    Stale,
}

/// The counters of one cached route, updated with atomics only.
#[derive(Default)]
pub struct RouteCacheMetrics {
    /// Indexed like `RESULTS`.
    lookups: [AtomicU64; RESULTS.len()],
    stores: AtomicU64,
}

#[derive(Default, Clone, Copy)]
struct ServiceCounters {
    evictions: u64,
    bytes: u64,
    entries: u64,
}

const RESULTS: [&str; 3] = ["hit", "miss", "stale"];

impl CacheMetrics {
    /// Get-or-create the handle of a cached route (at routing-table compile time).
    pub(crate) fn route(&self, service: &str, route: &str) -> Arc<RouteCacheMetrics> {
        lock(&self.services).entry(service.to_owned()).or_default();
        lock(&self.routes).entry((service.to_owned(), route.to_owned())).or_default().clone()
    }

    /// An entry of `weight` bytes entered the cache (`response`: a stored response, not a `Vary` marker).
    pub(crate) fn added(&self, service: &str, weight: u64, response: bool) {
        let mut services = lock(&self.services);
        let counters = services.entry(service.to_owned()).or_default();
        counters.bytes += weight;
        counters.entries += u64::from(response);
    }

    /// An entry left the cache; `evicted` when it was pushed out for room.
    pub(crate) fn removed(&self, service: &str, weight: u64, response: bool, evicted: bool) {
        let mut services = lock(&self.services);
        let counters = services.entry(service.to_owned()).or_default();
        counters.bytes = counters.bytes.saturating_sub(weight);
        counters.entries = counters.entries.saturating_sub(u64::from(response));
        counters.evictions += u64::from(evicted);
    }

    /// The cache families, or nothing when no cached route was ever registered.
    pub(crate) fn render(&self, out: &mut String) -> fmt::Result {
        let routes: Vec<((String, String), Arc<RouteCacheMetrics>)> =
            lock(&self.routes).iter().map(|(key, handle)| (key.clone(), handle.clone())).collect();
        if routes.is_empty() {
            return Ok(());
        }
        let services = lock(&self.services).clone();

        const LOOKUPS: &str = "berth_gateway_cache_lookups_total";
        family(out, LOOKUPS, "counter", "Requests to cached routes, by what the cache had: hit, miss or stale.")?;
        for ((service, route), handle) in &routes {
            for (idx, result) in RESULTS.iter().enumerate() {
                let labels = [("service", service.as_str()), ("route", route.as_str()), ("result", result)];
                sample(out, LOOKUPS, "", &labels, handle.lookups[idx].load(Ordering::Relaxed))?;
            }
        }
        const STORES: &str = "berth_gateway_cache_stores_total";
        family(out, STORES, "counter", "Replica responses stored in the cache.")?;
        for ((service, route), handle) in &routes {
            let labels = [("service", service.as_str()), ("route", route.as_str())];
            sample(out, STORES, "", &labels, handle.stores.load(Ordering::Relaxed))?;
        }
        const EVICTIONS: &str = "berth_gateway_cache_evictions_total";
        family(out, EVICTIONS, "counter", "Cache entries evicted (or refused) to keep the cache within its size.")?;
        for (service, counters) in &services {
            sample(out, EVICTIONS, "", &[("service", service.as_str())], counters.evictions)?;
        }
        const BYTES: &str = "berth_gateway_cache_bytes";
        family(out, BYTES, "gauge", "Bytes held in the cache (bodies, headers and keys).")?;
        for (service, counters) in &services {
            sample(out, BYTES, "", &[("service", service.as_str())], counters.bytes)?;
        }
        const ENTRIES: &str = "berth_gateway_cache_entries";
        family(out, ENTRIES, "gauge", "Responses held in the cache.")?;
        for (service, counters) in &services {
            sample(out, ENTRIES, "", &[("service", service.as_str())], counters.entries)?;
        }
        Ok(())
    }
}

impl RouteCacheMetrics {
    pub(crate) fn lookup(&self, result: Lookup) {
        let idx = match result {
            Lookup::Hit => 0,
            Lookup::Miss => 1,
            Lookup::Stale => 2,
        };
        self.lookups[idx].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stored(&self) {
        self.stores.fetch_add(1, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_nothing_until_a_cached_route_exists_then_every_series() {
        let metrics = CacheMetrics::default();
        let mut out = String::new();
        metrics.render(&mut out).expect("writing to a string");
        assert_eq!(out, "");
        let route = metrics.route("web", "/api");
        route.lookup(Lookup::Hit);
        route.lookup(Lookup::Hit);
        route.lookup(Lookup::Stale);
        route.stored();
        metrics.added("web", 1000, true);
        metrics.added("web", 100, false);
        metrics.added("web", 500, true);
        metrics.removed("web", 500, true, true);
        metrics.render(&mut out).expect("writing to a string");
        let expected = r#"# HELP berth_gateway_cache_lookups_total Requests to cached routes, by what the cache had: hit, miss or stale.
# TYPE berth_gateway_cache_lookups_total counter
berth_gateway_cache_lookups_total{service="web",route="/api",result="hit"} 2
berth_gateway_cache_lookups_total{service="web",route="/api",result="miss"} 0
berth_gateway_cache_lookups_total{service="web",route="/api",result="stale"} 1
# HELP berth_gateway_cache_stores_total Replica responses stored in the cache.
# TYPE berth_gateway_cache_stores_total counter
berth_gateway_cache_stores_total{service="web",route="/api"} 1
# HELP berth_gateway_cache_evictions_total Cache entries evicted (or refused) to keep the cache within its size.
# TYPE berth_gateway_cache_evictions_total counter
berth_gateway_cache_evictions_total{service="web"} 1
# HELP berth_gateway_cache_bytes Bytes held in the cache (bodies, headers and keys).
# TYPE berth_gateway_cache_bytes gauge
berth_gateway_cache_bytes{service="web"} 1100
# HELP berth_gateway_cache_entries Responses held in the cache.
# TYPE berth_gateway_cache_entries gauge
berth_gateway_cache_entries{service="web"} 1
"#;
        assert_eq!(out, expected);
    }

    #[test]
    fn the_gateways_whole_exposition_with_a_cached_route_passes_promtool() {
        let metrics = crate::metrics::Metrics::new();
        metrics.route("web", "/").start(&http::Method::GET).finish(200);
        let route = metrics.cache.route("we\"b", "/a\\b");
        route.lookup(Lookup::Miss);
        route.stored();
        metrics.cache.added("we\"b", 2048, true);
        metrics.cache.removed("we\"b", 2048, true, true);
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(
            out.contains("berth_gateway_cache_lookups_total{service=\"we\\\"b\",route=\"/a\\\\b\",result=\"miss\"} 1"),
            "{out}"
        );
        crate::metrics::promtool_check(&out);
    }
}
