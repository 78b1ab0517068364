//! Choosing an endpoint: a replica group by weight, then power of two choices by load (peak-EWMA latency ×
//! requests in flight), skipping ejected endpoints unless too few are left (panic mode) and those this
//! request already tried.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use crate::endpoint::EndpointState;
use crate::table::{Group, ServiceEntry};

/// Below this share of endpoints not ejected, ejection is ignored: trusting it would overload the rest.
const PANIC_THRESHOLD: f64 = 0.5;

pub(crate) fn pick(service: &ServiceEntry, tried: &[Arc<EndpointState>], now: Instant) -> Option<Arc<EndpointState>> {
    let n_total = service.n_endpoints();
    if n_total == 0 {
        return None;
    }
    let n_ejected =
        service.groups.iter().flat_map(|g| g.endpoints.iter()).filter(|endpoint| endpoint.is_ejected(now)).count();
    let panic = ((n_total - n_ejected) as f64) < PANIC_THRESHOLD * n_total as f64;
    let usable = |endpoint: &Arc<EndpointState>| {
        (panic || !endpoint.is_ejected(now)) && !tried.iter().any(|t| Arc::ptr_eq(t, endpoint))
    };
    let n_usable = |group: &Group| group.endpoints.iter().filter(|e| usable(e)).count();

    // Weighted choice among the groups that have something usable; no allocation on this path.
    let total_weight: u64 =
        service.groups.iter().filter(|g| g.weight > 0 && n_usable(g) > 0).map(|g| u64::from(g.weight)).sum();
    if total_weight == 0 {
        return None;
    }
    let mut ticket = random() % total_weight;
    let group = service.groups.iter().filter(|g| g.weight > 0 && n_usable(g) > 0).find(|g| {
        let hit = ticket < u64::from(g.weight);
        ticket = ticket.saturating_sub(u64::from(g.weight));
        hit
    })?;

    let n = n_usable(group);
    let nth_usable = |k: usize| group.endpoints.iter().filter(|e| usable(e)).nth(k);
    match n {
        0 => None,
        1 => nth_usable(0).cloned(),
        n => {
            let a = (random() % n as u64) as usize;
            let b = (a + 1 + (random() % (n as u64 - 1)) as usize) % n;
            let (ea, eb) = (nth_usable(a)?, nth_usable(b)?);
            let (la, lb) = (ea.load(now), eb.load(now));
            // Near-equal loads (idle endpoints whose costs differ by decay noise) are a tie: the first
            // pick is already random, so keep it rather than always favouring the older endpoint.
            let tie = (la - lb).abs() <= 0.01 * la.max(lb);
            Some(if tie || la < lb { ea.clone() } else { eb.clone() })
        }
    }
}

/// A fast per-thread xorshift generator: choices and ids need spread, not cryptographic quality.
pub(crate) fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
            let local = 0u8;
            (nanos ^ (&local as *const u8 as u64)) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::endpoint::Outcome;
    use crate::metrics::Metrics;
    use crate::table::{Registry, RoutingTable, ServiceRoutes, Upstream};

    fn service(groups: &[(&str, u32, usize)]) -> (Registry, Arc<ServiceEntry>) {
        let mut registry = Registry::new();
        let mut endpoints = Vec::new();
        let mut port = 1;
        for (group, weight, n) in groups {
            for _ in 0..*n {
                endpoints.push(Upstream {
                    instance: format!("{group}-{port}"),
                    addr: ([127, 0, 0, 1], port).into(),
                    group: (*group).into(),
                    weight: *weight,
                });
                port += 1;
            }
        }
        let table = RoutingTable {
            services: vec![ServiceRoutes {
                name: "web".into(),
                hosts: vec![],
                routes: vec![],
                endpoints,
                protocol: Default::default(),
                pools: Vec::new(),
                redirect_https: false,
            }],
            default_service: Some("web".into()),
        };
        let snapshot = registry.compile(&table, &Metrics::new());
        let entry = snapshot.service_for(None).expect("default service").clone();
        (registry, entry)
    }

    fn counts(service: &ServiceEntry, n: usize) -> std::collections::HashMap<String, usize> {
        let mut res = std::collections::HashMap::new();
        for _ in 0..n {
            let endpoint = pick(service, &[], Instant::now()).expect("something to pick");
            *res.entry(endpoint.instance.clone()).or_default() += 1;
        }
        res
    }

    #[test]
    fn busy_endpoints_are_avoided() {
        let (_registry, web) = service(&[("stable", 100, 2)]);
        let busy = web.groups[0].endpoints[0].clone();
        let _in_flight: Vec<_> = (0..5).map(|_| busy.begin()).collect();
        let picked = counts(&web, 1000);
        assert_eq!(picked.get(&busy.instance), None, "{picked:?}");
    }

    #[test]
    fn groups_split_by_weight() {
        let (_registry, web) = service(&[("stable", 90, 2), ("canary", 10, 1)]);
        let picked = counts(&web, 10_000);
        let canary = picked.get("canary-3").copied().unwrap_or(0);
        assert!((700..1300).contains(&canary), "{picked:?}");
    }

    #[test]
    fn ejected_endpoints_are_skipped_unless_most_are_ejected() {
        let (_registry, web) = service(&[("stable", 100, 3)]);
        let now = Instant::now();
        let first = web.groups[0].endpoints[0].clone();
        first.eject(Duration::from_secs(30), Duration::from_secs(300), now);
        assert!(!counts(&web, 300).contains_key(&first.instance));
        // Two of three ejected: panic mode, everything is used again.
        web.groups[0].endpoints[1].eject(Duration::from_secs(30), Duration::from_secs(300), now);
        let picked = counts(&web, 600);
        assert_eq!(picked.len(), 3, "{picked:?}");
    }

    #[test]
    fn tried_endpoints_are_not_picked_again() {
        let (_registry, web) = service(&[("stable", 100, 2)]);
        let first = pick(&web, &[], Instant::now()).expect("one");
        let second = pick(&web, std::slice::from_ref(&first), Instant::now()).expect("the other");
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(pick(&web, &[first, second], Instant::now()).is_none());
        web.groups[0].endpoints[0].begin().finish(Outcome::Success);
    }
}
