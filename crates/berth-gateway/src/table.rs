//! The routing table: what `berth-deploy` hands the gateway (plain data), and the compiled snapshot the
//! request path reads. A snapshot is immutable; an update builds a new one and swaps it in.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::budget::RetryBudget;
use crate::cache::RouteCache;
use crate::endpoint::EndpointState;
use crate::group_stats::{GroupCounters, GroupStats};
use crate::metrics::{Metrics, RouteMetrics};
use crate::ratelimit::RateLimiter;

/// Everything the gateway routes, as data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingTable {
    pub services: Vec<ServiceRoutes>,
    /// Where a request for an unknown host goes; `None` answers 404.
    pub default_service: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceRoutes {
    pub name: String,
    /// Host names besides `<name>.localhost`.
    pub hosts: Vec<String>,
    /// Path prefixes with their policies; a catch-all `/` with defaults is added when none matches.
    pub routes: Vec<RoutePolicy>,
    pub endpoints: Vec<Upstream>,
    /// What the replicas speak.
    pub protocol: UpstreamProtocol,
    /// Groups (by `Upstream::group`) that are dedicated pools: they get only the requests a rate limit's
    /// `pools` sends them, never the service's general traffic.
    pub pools: Vec<String>,
    /// On the plain HTTP listener, answer `308` to the same URL on HTTPS instead of serving.
    pub redirect_https: bool,
    /// Keeps chosen clients on one group while a canary runs.
    pub sticky: Option<Sticky>,
}

/// Keeps clients on one side of a canary: requests with `header` go to `group`; with `cookie`, a client
/// stays with the group that first answered it (the gateway sets the cookie to that group's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    Header { name: String, group: String },
    Cookie { name: String },
}

/// The protocol spoken to a service's replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over cleartext: what gRPC servers speak; trailers pass through.
    H2c,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    pub prefix: String,
    /// Deadline of the whole request (retries included) until the response head.
    pub timeout: Duration,
    /// Deadline of one attempt; `None`: the whole remaining time.
    pub per_try_timeout: Option<Duration>,
    pub cache: Option<CachePolicy>,
    pub rate_limit: Option<RateLimitPolicy>,
}

impl RoutePolicy {
    /// `/` with defaults: what a service without declared routes gets.
    pub fn catch_all() -> RoutePolicy {
        RoutePolicy {
            prefix: "/".to_owned(),
            timeout: Duration::from_secs(30),
            per_try_timeout: None,
            cache: None,
            rate_limit: None,
        }
    }
}

impl Default for RoutePolicy {
    fn default() -> Self {
        RoutePolicy::catch_all()
    }
}

/// Response caching of a route (GET and HEAD only).
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    /// A stored response is fresh this long (or less, when the replica's `Cache-Control` says so).
    pub max_age: Duration,
    /// After `max_age`, a stored response may still be served this long while one background request
    /// refreshes it; nothing older than `max_age + stale_while_revalidate` is ever served.
    pub stale_while_revalidate: Duration,
    /// Also store responses marked `no-store`/`private` or carrying `Set-Cookie`, and responses to requests
    /// with `Authorization`. Off by default.
    pub private: bool,
}

/// Request rate limiting of a route, per key.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitPolicy {
    pub key: RateKey,
    /// The rate every key gets unless overridden.
    pub rate: Rate,
    /// Requests a key may send at once above its steady rate (for an override: the override's count).
    pub burst: u32,
    /// Per-key rates, by key value (e.g. a partner's API key).
    pub overrides: BTreeMap<String, Rate>,
    /// Key values whose requests go only to the named pool (a group listed in `ServiceRoutes::pools`).
    pub pools: BTreeMap<String, String>,
}

/// What a rate limit counts requests against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The value of this request header (e.g. `X-Api-Key`); requests without it share one key.
    Header(String),
    /// The calling side, as in `X-Source`.
    Source,
    /// The client's IP address.
    Ip,
}

/// `requests` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests: u32,
    pub per: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// Identifies the endpoint across updates (a replica instance id).
    pub instance: String,
    pub addr: SocketAddr,
    /// Replica group ("stable", "canary", a partner's pool...). Traffic is split between groups by weight.
    pub group: String,
    pub weight: u32,
}

#[derive(Clone)]
pub(crate) struct Snapshot {
    /// Fx-hashed: looked up by every request; the keys come from the table, never from clients.
    by_host: FxHashMap<String, Arc<ServiceEntry>>,
    default: Option<Arc<ServiceEntry>>,
}

pub(crate) struct ServiceEntry {
    pub(crate) name: String,
    pub(crate) protocol: UpstreamProtocol,
    /// Longest prefix first.
    routes: Vec<RouteEntry>,
    pub(crate) groups: Vec<Group>,
    pub(crate) budget: Arc<RetryBudget>,
    pub(crate) redirect_https: bool,
    pub(crate) sticky: Option<Sticky>,
}

pub(crate) struct Group {
    /// `Upstream::group`.
    pub(crate) name: String,
    /// Listed in `ServiceRoutes::pools`: only requests a rate limit maps to it come here.
    pub(crate) pool: bool,
    pub(crate) weight: u32,
    pub(crate) endpoints: Vec<Arc<EndpointState>>,
    /// This (service, group)'s counters, kept by the `Registry` across snapshots.
    pub(crate) stats: Arc<GroupCounters>,
}

pub(crate) struct RouteEntry {
    pub(crate) prefix: String,
    pub(crate) timeout: Duration,
    pub(crate) per_try_timeout: Option<Duration>,
    pub(crate) metrics: Arc<RouteMetrics>,
    pub(crate) rate_limit: Option<Arc<RateLimiter>>,
    pub(crate) cache: Option<RouteCache>,
}

/// State that outlives snapshots: endpoints (by instance id), retry budgets (by service), rate limiters
/// (by service and route prefix, while the route's policy stays the same) and group counters (by service
/// and group, while the service is in the table).
pub(crate) struct Registry {
    pub(crate) epoch: Instant,
    endpoints: HashMap<String, Arc<EndpointState>>,
    budgets: HashMap<String, Arc<RetryBudget>>,
    limiters: HashMap<(String, String), Arc<RateLimiter>>,
    groups: BTreeMap<(String, String), Arc<GroupCounters>>,
}

impl Registry {
    pub(crate) fn new() -> Registry {
        Registry {
            epoch: Instant::now(),
            endpoints: HashMap::new(),
            budgets: HashMap::new(),
            limiters: HashMap::new(),
            groups: BTreeMap::new(),
        }
    }

    /// The numbers of every group `service` has had since it entered the table, by group name.
    pub(crate) fn group_stats(&self, service: &str) -> Vec<GroupStats> {
        self.groups
            .iter()
            .filter(|((name, _), _)| name == service)
            .map(|((_, group), counters)| counters.read(group))
            .collect()
    }

    /// Every group's counters, by (service, group), for rendering outside the registry's lock.
    pub(crate) fn group_counters(&self) -> Vec<((String, String), Arc<GroupCounters>)> {
        self.groups.iter().map(|(key, counters)| (key.clone(), counters.clone())).collect()
    }

    /// The endpoint's live state, if it is in a table or still has requests in flight.
    pub(crate) fn endpoint(&self, instance: &str) -> Option<Arc<EndpointState>> {
        self.endpoints.get(instance).cloned()
    }

    /// Compiles `table`, reusing the live state of endpoints it already knew.
    pub(crate) fn compile(&mut self, table: &RoutingTable, metrics: &Metrics) -> Snapshot {
        let mut by_host = FxHashMap::default();
        let mut by_name = HashMap::new();
        let mut seen = Vec::new();
        let mut limiters = HashMap::new();
        for service in &table.services {
            let entry = Arc::new(self.compile_service(service, metrics, &mut seen, &mut limiters));
            by_host.insert(format!("{}.localhost", service.name), entry.clone());
            for host in &service.hosts {
                by_host.insert(normalize_host(host).into_owned(), entry.clone());
            }
            by_name.insert(service.name.clone(), entry);
        }
        // Forget endpoints that left the table once no request is in flight on them. (Not by reference
        // count: each worker thread keeps its copy of the last snapshot until its next request, so an
        // instance that comes back must not find the state, ejection included, of its predecessor.)
        self.endpoints.retain(|instance, state| seen.contains(instance) || state.outstanding() > 0);
        self.budgets.retain(|name, _| by_name.contains_key(name));
        // A group that leaves keeps its counters while its service stays: a canary rolled back still has its
        // numbers, and one that comes back continues them.
        self.groups.retain(|(name, _), _| by_name.contains_key(name));
        // Limiters of routes that left the table, or whose policy changed, start over if they come back.
        self.limiters = limiters;
        let default = table.default_service.as_ref().and_then(|name| by_name.get(name).cloned());
        Snapshot { by_host, default }
    }

    fn compile_service(
        &mut self,
        service: &ServiceRoutes,
        metrics: &Metrics,
        seen: &mut Vec<String>,
        limiters: &mut HashMap<(String, String), Arc<RateLimiter>>,
    ) -> ServiceEntry {
        for pool in &service.pools {
            // Registered at zero, so the pool's series exists before its first request.
            metrics.pool(&service.name, pool);
        }
        let mut routes: Vec<RouteEntry> = service
            .routes
            .iter()
            .chain(std::iter::once(&RoutePolicy::catch_all()))
            .map(|route| RouteEntry {
                prefix: route.prefix.clone(),
                timeout: route.timeout,
                per_try_timeout: route.per_try_timeout,
                metrics: metrics.route(&service.name, &route.prefix),
                rate_limit: route.rate_limit.as_ref().map(|policy| {
                    let key = (service.name.clone(), route.prefix.clone());
                    let limiter = match self.limiters.get(&key) {
                        Some(limiter) if limiter.policy() == policy => limiter.clone(),
                        _ => Arc::new(RateLimiter::new(policy, &service.name, &route.prefix, metrics)),
                    };
                    limiters.insert(key, limiter.clone());
                    limiter
                }),
                cache: route
                    .cache
                    .clone()
                    .map(|policy| RouteCache { policy, metrics: metrics.cache.route(&service.name, &route.prefix) }),
            })
            .collect();
        // A declared `/` wins over the implicit catch-all, which is last among equals.
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        routes.dedup_by(|later, earlier| later.prefix == earlier.prefix);

        let mut groups: Vec<Group> = Vec::new();
        let mut group_names: Vec<&str> = Vec::new();
        for upstream in &service.endpoints {
            let state = self
                .endpoints
                .entry(upstream.instance.clone())
                .and_modify(|state| {
                    if state.addr != upstream.addr {
                        *state = Arc::new(EndpointState::new(upstream.instance.clone(), upstream.addr, self.epoch));
                    }
                })
                .or_insert_with(|| Arc::new(EndpointState::new(upstream.instance.clone(), upstream.addr, self.epoch)))
                .clone();
            seen.push(upstream.instance.clone());
            match group_names.iter().position(|name| *name == upstream.group) {
                Some(idx) => groups[idx].endpoints.push(state),
                None => {
                    group_names.push(&upstream.group);
                    let stats = self
                        .groups
                        .entry((service.name.clone(), upstream.group.clone()))
                        .or_insert_with(|| Arc::new(GroupCounters::new()))
                        .clone();
                    groups.push(Group {
                        name: upstream.group.clone(),
                        pool: service.pools.contains(&upstream.group),
                        weight: upstream.weight,
                        endpoints: vec![state],
                        stats,
                    });
                }
            }
        }
        let budget = self.budgets.entry(service.name.clone()).or_insert_with(|| Arc::new(RetryBudget::new())).clone();
        ServiceEntry {
            name: service.name.clone(),
            protocol: service.protocol,
            routes,
            groups,
            budget,
            redirect_https: service.redirect_https,
            sticky: service.sticky.clone(),
        }
    }
}

impl Snapshot {
    pub(crate) fn empty() -> Snapshot {
        Snapshot { by_host: FxHashMap::default(), default: None }
    }

    pub(crate) fn service_for(&self, host: Option<&str>) -> Option<&Arc<ServiceEntry>> {
        host.and_then(|host| self.by_host.get(normalize_host(host).as_ref())).or(self.default.as_ref())
    }

    /// Every service once.
    pub(crate) fn services(&self) -> Vec<&Arc<ServiceEntry>> {
        let mut res: Vec<&Arc<ServiceEntry>> = Vec::new();
        for service in self.by_host.values().chain(self.default.iter()) {
            if !res.iter().any(|seen| Arc::ptr_eq(seen, service)) {
                res.push(service);
            }
        }
        res
    }

    pub(crate) fn contains(&self, instance: &str) -> bool {
        self.by_host
            .values()
            .chain(self.default.iter())
            .flat_map(|service| service.groups.iter())
            .flat_map(|group| group.endpoints.iter())
            .any(|endpoint| endpoint.instance == instance)
    }
}

impl ServiceEntry {
    /// The longest route prefix matching `path` on a segment boundary (`/api` matches `/api/x`, not `/apix`).
    pub(crate) fn route_for(&self, path: &str) -> &RouteEntry {
        self.routes
            .iter()
            .find(|route| prefix_matches(&route.prefix, path))
            .or(self.routes.last())
            .expect("every service has the catch-all route")
    }

    /// The group `endpoint` is in, in this snapshot.
    pub(crate) fn group_of(&self, endpoint: &Arc<EndpointState>) -> Option<&Group> {
        self.groups.iter().find(|group| group.endpoints.iter().any(|candidate| Arc::ptr_eq(candidate, endpoint)))
    }

    pub(crate) fn n_endpoints(&self) -> usize {
        self.groups.iter().map(|group| group.endpoints.len()).sum()
    }
}

pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let prefix = prefix.trim_end_matches('/');
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
}

/// Lowercase, without port and trailing dot; `[::1]:80` keeps its brackets.
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let name = without_port.trim_end_matches('.');
    // Most clients send the name in lower case already: no copy then.
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(prefix_matches("/api/", "/api/v1"));
        assert!(!prefix_matches("/api", "/apix"));
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(normalize_host("Web.Localhost:8080"), "web.localhost");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("example.com"), "example.com");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
    }

    #[test]
    fn longest_route_wins_and_endpoints_keep_state_across_updates() {
        let metrics = Metrics::new();
        let mut registry = Registry::new();
        let upstream = |instance: &str, port| Upstream {
            instance: instance.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            group: "stable".into(),
            weight: 100,
        };
        let table = |endpoints| RoutingTable {
            services: vec![ServiceRoutes {
                name: "web".into(),
                hosts: vec!["example.com".into()],
                routes: vec![RoutePolicy {
                    prefix: "/api".into(),
                    timeout: Duration::from_secs(5),
                    per_try_timeout: None,
                    ..RoutePolicy::default()
                }],
                endpoints,
                protocol: UpstreamProtocol::Http1,
                pools: Vec::new(),
                redirect_https: false,
                sticky: None,
            }],
            default_service: None,
        };
        let first = registry.compile(&table(vec![upstream("a", 1), upstream("b", 2)]), &metrics);
        let web = first.service_for(Some("example.com:80")).expect("routed by domain");
        assert_eq!(web.route_for("/api/users").prefix, "/api");
        assert_eq!(web.route_for("/other").prefix, "/");
        let a_before = web.groups[0].endpoints[0].clone();
        let second = registry.compile(&table(vec![upstream("a", 1)]), &metrics);
        let web = second.service_for(Some("web.localhost")).expect("routed by name");
        assert!(Arc::ptr_eq(&web.groups[0].endpoints[0], &a_before), "live state kept");
        assert!(second.contains("a") && !second.contains("b"));
        assert!(second.service_for(Some("unknown")).is_none());
    }
}
