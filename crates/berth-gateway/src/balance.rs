//! Choosing an endpoint: a replica group by weight, then power of two choices by load (peak-EWMA latency ×
//! requests in flight), skipping ejected endpoints unless too few are left (panic mode) and those this
//! request already tried.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use crate::endpoint::EndpointState;
use crate::table::{Group, ServiceEntry};

/// Which of a service's replica groups a request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Groups<'a> {
    /// Every group that is not a dedicated pool (split by weight): the service's general traffic.
    Shared,
    /// Only this dedicated pool's endpoints: a key a rate limit maps to the pool. Nothing else, even when
    /// the pool is empty.
    Pool(&'a str),
    /// This (non-pool) group if it can take the request, else the shared groups: a sticky canary client.
    Prefer(&'a str),
}

/// Below this share of endpoints not ejected, ejection is ignored: trusting it would overload the rest.
const PANIC_THRESHOLD: f64 = 0.5;

/// An endpoint of `service`, borrowed: a request holds no reference count of its own (on two busy cores,
/// a count that both workers' requests move costs more than the choice).
pub(crate) fn pick<'s>(
    service: &'s ServiceEntry,
    groups: Groups<'_>,
    tried: &[&Arc<EndpointState>],
    now: Instant,
) -> Option<&'s Arc<EndpointState>> {
    match groups {
        Groups::Shared => pick_among(service, &|g| !g.pool, false, tried, now),
        // Within a pool, weights split traffic as usual; a pool group's weight of 0 still takes its keys.
        Groups::Pool(pool) => pick_among(service, &|g| g.name == pool, true, tried, now),
        // A sticky client goes to its group whatever the weights, and to the others only when it cannot.
        Groups::Prefer(name) => pick_among(service, &|g| !g.pool && g.name == name, true, tried, now)
            .or_else(|| pick_among(service, &|g| !g.pool, false, tried, now)),
    }
}

fn pick_among<'s>(
    service: &'s ServiceEntry,
    eligible: &dyn Fn(&Group) -> bool,
    any_weight: bool,
    tried: &[&Arc<EndpointState>],
    now: Instant,
) -> Option<&'s Arc<EndpointState>> {
    let eligible = |group: &&Group| eligible(group);
    let n_total: usize = service.groups.iter().filter(eligible).map(|g| g.endpoints.len()).sum();
    if n_total == 0 {
        return None;
    }
    let n_ejected = service
        .groups
        .iter()
        .filter(eligible)
        .flat_map(|g| g.endpoints.iter())
        .filter(|endpoint| endpoint.is_ejected(now))
        .count();
    let panic = ((n_total - n_ejected) as f64) < PANIC_THRESHOLD * n_total as f64;
    let usable = |endpoint: &Arc<EndpointState>| {
        (panic || !endpoint.is_ejected(now)) && !tried.iter().any(|t| Arc::ptr_eq(t, endpoint))
    };
    let n_usable = |group: &Group| group.endpoints.iter().filter(|e| usable(e)).count();

    // Weighted choice among the groups that have something usable; no allocation on this path.
    let weight = |g: &Group| u64::from(if any_weight { g.weight.max(1) } else { g.weight });
    // A group weighted 0 (a canary rolled back, the old set kept warm after a blue-green switch) takes traffic
    // only when no weighted group can: better the old release than a 503.
    let weighted = service.groups.iter().filter(eligible).any(|g| weight(g) > 0 && n_usable(g) > 0);
    let weight_of = |g: &Group| if weighted { weight(g) } else { 1 };
    let candidates = || service.groups.iter().filter(eligible).filter(|g| weight_of(g) > 0 && n_usable(g) > 0);
    let total_weight: u64 = candidates().map(weight_of).sum();
    if total_weight == 0 {
        return None;
    }
    let mut ticket = random() % total_weight;
    let group = candidates().find(|g| {
        let hit = ticket < weight_of(g);
        ticket = ticket.saturating_sub(weight_of(g));
        hit
    })?;

    let n = n_usable(group);
    let nth_usable = |k: usize| group.endpoints.iter().filter(|e| usable(e)).nth(k);
    match n {
        0 => None,
        1 => nth_usable(0),
        n => {
            let a = (random() % n as u64) as usize;
            let b = (a + 1 + (random() % (n as u64 - 1)) as usize) % n;
            let (ea, eb) = (nth_usable(a)?, nth_usable(b)?);
            let (la, lb) = (ea.load(now), eb.load(now));
            // Near-equal loads (idle endpoints whose costs differ by decay noise) are a tie: the first
            // pick is already random, so keep it rather than always favouring the older endpoint.
            let tie = (la - lb).abs() <= 0.01 * la.max(lb);
            Some(if tie || la < lb { ea } else { eb })
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
        service_with_pools(groups, &[])
    }

    fn service_with_pools(groups: &[(&str, u32, usize)], pools: &[&str]) -> (Registry, Arc<ServiceEntry>) {
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
                pools: pools.iter().map(|pool| (*pool).to_owned()).collect(),
                redirect_https: false,
                sticky: None,
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
            let endpoint = pick(service, Groups::Shared, &[], Instant::now()).expect("something to pick");
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
    fn a_group_weighted_zero_serves_only_when_no_weighted_group_can() {
        // Blue-green just switched: the old set (weight 0) stays warm beside the new one (weight 100).
        let (_registry, web) = service(&[("stable", 0, 2), ("next", 100, 1)]);
        let picked = counts(&web, 500);
        assert_eq!(picked.keys().collect::<Vec<_>>(), ["next-3"], "{picked:?}");
        // The only weighted endpoint was tried (or is gone): the warm set answers rather than a 503.
        let next = &web.groups[1].endpoints[0];
        let fallback = pick(&web, Groups::Shared, &[next], Instant::now()).expect("the warm set takes it");
        assert!(fallback.instance.starts_with("stable-"), "{}", fallback.instance);
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
        let first = pick(&web, Groups::Shared, &[], Instant::now()).expect("one");
        let second = pick(&web, Groups::Shared, std::slice::from_ref(&first), Instant::now()).expect("the other");
        assert!(!Arc::ptr_eq(first, second));
        assert!(pick(&web, Groups::Shared, &[first, second], Instant::now()).is_none());
        web.groups[0].endpoints[0].begin().finish(Outcome::Success);
    }

    #[test]
    fn pools_take_only_their_keys_and_shared_traffic_never_reaches_them() {
        let (_registry, web) =
            service_with_pools(&[("stable", 100, 2), ("partner", 100, 2), ("empty", 0, 0)], &["partner"]);
        let now = Instant::now();
        for _ in 0..500 {
            let shared = pick(&web, Groups::Shared, &[], now).expect("stable has replicas");
            assert!(shared.instance.starts_with("stable"), "{}", shared.instance);
            let pooled = pick(&web, Groups::Pool("partner"), &[], now).expect("the pool has replicas");
            assert!(pooled.instance.starts_with("partner"), "{}", pooled.instance);
        }
        assert!(pick(&web, Groups::Pool("empty"), &[], now).is_none(), "an empty pool has no fallback");
        // Retries stay in the pool.
        let first = pick(&web, Groups::Pool("partner"), &[], now).expect("one");
        let second = pick(&web, Groups::Pool("partner"), std::slice::from_ref(&first), now).expect("the other");
        assert!(second.instance.starts_with("partner") && !Arc::ptr_eq(first, second));
        assert!(pick(&web, Groups::Pool("partner"), &[first, second], now).is_none());
    }
}
