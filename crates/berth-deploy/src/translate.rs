//! Spec to supervisor input: the one place that knows both vocabularies.

use std::path::Path;

use std::collections::BTreeMap;

use berth_gateway::{
    CachePolicy, Rate, RateKey, RateLimitPolicy, RoutePolicy, RoutingTable, ServiceRoutes, Sticky, Upstream,
    UpstreamProtocol,
};
use berth_spec::Spec;
use berth_supervisor::cgroup::Limits;
use berth_supervisor::{Endpoints, HealthConfig, ServiceConfig};

/// The supervisor's name for the replicas of `service`'s dedicated pool `pool`.
pub fn pool_unit(service: &str, pool: &str) -> String {
    format!("{service}@{pool}")
}

/// Everything the supervisor runs for `spec`: the service's own replicas first, then one unit per
/// dedicated pool (same release, the pool's replica count). Pure.
pub fn to_service_configs(spec: &Spec, dir: &Path, replicas_override: Option<u32>) -> Vec<ServiceConfig> {
    let main = to_service_config(spec, dir, replicas_override);
    let pools = spec.pools.iter().map(|(pool, declared)| ServiceConfig {
        name: pool_unit(&main.name, pool),
        replicas: declared.replicas,
        ..main.clone()
    });
    let pools: Vec<ServiceConfig> = pools.collect();
    std::iter::once(main).chain(pools).collect()
}

/// What the supervisor runs for `spec`'s own replicas (not its pools), whose directory is `dir`. Pure.
pub fn to_service_config(spec: &Spec, dir: &Path, replicas_override: Option<u32>) -> ServiceConfig {
    let env = spec.env.iter().chain(spec.run.env.iter()).map(|(k, v)| (k.clone(), v.clone())).collect();
    ServiceConfig {
        name: spec.name.to_string(),
        release: release_identity(spec),
        replicas: replicas_override.unwrap_or(*spec.replicas.get_ref()),
        command: spec.run.command.clone(),
        workdir: dir.join(&spec.run.workdir),
        env,
        health: HealthConfig {
            path: spec.health.path.get_ref().clone(),
            interval: *spec.health.interval.get_ref(),
            timeout: *spec.health.timeout.get_ref(),
            healthy_threshold: *spec.health.healthy_threshold.get_ref(),
            unhealthy_threshold: *spec.health.unhealthy_threshold.get_ref(),
            start_period: spec.health.start_period,
        },
        stop_timeout: spec.run.stop_timeout,
        limits: Limits { memory_bytes: Some(spec.size.memory_bytes), cpu_millis: Some(spec.size.cpu_millis) },
        max_surge: spec.deploy.max_surge,
        max_unavailable: spec.deploy.max_unavailable,
    }
}

/// The config's identity as the supervisor sees it (`ServiceConfig::release`). Pure.
pub fn release_identity(spec: &Spec) -> String {
    // Scaling is not a release: the replica count stays out of the release identity.
    let mut release_spec = spec.clone();
    release_spec.replicas = toml::Spanned::new(0..0, 0);
    berth_spec::release_hash(&release_spec)
}

/// Makes `config` run `program` (a release's copy of the binary) instead of `run.command[0]`.
pub fn set_program(config: &mut ServiceConfig, program: &Path) {
    match config.command.first_mut() {
        Some(first) => *first = program.display().to_string(),
        None => config.command.push(program.display().to_string()),
    }
}

/// The supervisor's name for the replicas of a release being rolled out beside the live one (blue-green's
/// new set, a canary). `~` cannot appear in a service or pool name.
pub fn next_unit(service: &str) -> String {
    format!("{service}~next")
}

/// The gateway group of a service's live replicas, and of its next release's.
pub const STABLE_GROUP: &str = "stable";
pub const NEXT_GROUP: &str = "next";

/// What the gateway routes: every service's domains and route policies, and its replicas in rotation.
/// `next_weights` gives, per service with a release rolling out beside the live one, the percentage of its
/// traffic that goes to the next release's replicas. Pure.
pub fn to_routing_table(
    specs: &BTreeMap<String, Spec>,
    next_weights: &BTreeMap<String, u32>,
    endpoints: &Endpoints,
) -> RoutingTable {
    let services = specs
        .iter()
        .map(|(name, spec)| ServiceRoutes {
            name: name.clone(),
            hosts: spec.domains.iter().map(|domain| domain.get_ref().clone()).collect(),
            routes: spec
                .routes
                .iter()
                .map(|route| RoutePolicy {
                    prefix: route.path.get_ref().clone(),
                    timeout: *route.timeout.get_ref(),
                    per_try_timeout: route.per_try_timeout.as_ref().map(|t| *t.get_ref()),
                    cache: route.cache.as_ref().map(cache_policy),
                    rate_limit: route.rate_limit.as_ref().map(rate_limit_policy),
                })
                .collect(),
            endpoints: {
                let next = next_weights.get(name).map(|weight| (*weight).min(100));
                std::iter::once((name.clone(), STABLE_GROUP.to_owned(), 100 - next.unwrap_or(0)))
                    .chain(next.map(|weight| (next_unit(name), NEXT_GROUP.to_owned(), weight)))
                    .chain(spec.pools.keys().map(|pool| (pool_unit(name, pool), pool.clone(), 100)))
                    .flat_map(|(unit, group, weight)| {
                        endpoints.get(&unit).into_iter().flatten().map(move |endpoint| Upstream {
                            instance: endpoint.instance.clone(),
                            addr: endpoint.addr,
                            group: group.clone(),
                            weight,
                        })
                    })
                    .collect()
            },
            protocol: match spec.run.protocol {
                berth_spec::Protocol::Http1 => UpstreamProtocol::Http1,
                berth_spec::Protocol::H2c => UpstreamProtocol::H2c,
            },
            pools: spec.pools.keys().cloned().collect(),
            redirect_https: spec.redirect_https,
            // Only while a release runs beside the live one: there is nothing to stick to otherwise.
            sticky: next_weights.get(name).and(spec.deploy.sticky.as_ref()).map(|sticky| match sticky {
                berth_spec::Sticky::Header(header) => {
                    Sticky::Header { name: header.clone(), group: NEXT_GROUP.to_owned() }
                }
                berth_spec::Sticky::Cookie(cookie) => Sticky::Cookie { name: cookie.clone() },
            }),
        })
        .collect();
    RoutingTable { services, default_service: None }
}

fn cache_policy(cache: &berth_spec::Cache) -> CachePolicy {
    CachePolicy {
        max_age: cache.max_age,
        stale_while_revalidate: cache.stale_while_revalidate.unwrap_or_default(),
        private: cache.private,
    }
}

fn rate_limit_policy(limit: &berth_spec::RateLimit) -> RateLimitPolicy {
    let rate = |rate: &berth_spec::Rate| Rate { requests: rate.requests, per: rate.per };
    RateLimitPolicy {
        key: match &limit.key {
            berth_spec::RateKey::Header(name) => RateKey::Header(name.clone()),
            berth_spec::RateKey::Source => RateKey::Source,
            berth_spec::RateKey::Ip => RateKey::Ip,
        },
        rate: rate(&limit.rate),
        burst: limit.burst.unwrap_or(limit.rate.requests),
        overrides: limit.overrides.iter().map(|(key, r)| (key.clone(), rate(r))).collect(),
        pools: limit.pools.iter().map(|(key, pool)| (key.clone(), pool.get_ref().clone())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use berth_supervisor::Endpoint;

    use super::*;

    const SPEC: &str = r#"
name = "api"
replicas = 2
[run]
command = "./api"
[pools.partner-b]
replicas = 3
[[routes]]
path = "/"
rate_limit = { key = "header:X-Api-Key", rate = "20/s", pools = { "key-b" = "partner-b" } }
"#;

    fn endpoint(instance: &str, port: u16) -> Endpoint {
        Endpoint { replica: 1, instance: instance.to_owned(), addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }

    #[test]
    fn pools_run_as_their_own_units_and_route_as_groups() {
        let spec = berth_spec::parse("app.toml", SPEC).expect("valid spec");
        let configs = to_service_configs(&spec, Path::new("/srv/api"), None);
        let units: Vec<(&str, u32)> = configs.iter().map(|c| (c.name.as_str(), c.replicas)).collect();
        assert_eq!(units, [("api", 2), ("api@partner-b", 3)]);
        assert_eq!(configs[0].release, configs[1].release, "a pool runs the same release");

        let endpoints: Endpoints = std::sync::Arc::new(BTreeMap::from([
            ("api".to_owned(), vec![endpoint("api-1", 1)]),
            ("api@partner-b".to_owned(), vec![endpoint("api@partner-b-1", 2)]),
        ]));
        let specs = BTreeMap::from([("api".to_owned(), spec)]);
        let table = to_routing_table(&specs, &BTreeMap::new(), &endpoints);
        let api = &table.services[0];
        let groups: Vec<(&str, &str)> = api.endpoints.iter().map(|u| (u.instance.as_str(), u.group.as_str())).collect();
        assert_eq!(groups, [("api-1", "stable"), ("api@partner-b-1", "partner-b")]);
        assert_eq!(api.pools, ["partner-b"]);
        let limit = api.routes[0].rate_limit.as_ref().expect("rate limit mapped");
        assert_eq!(limit.pools.get("key-b").map(String::as_str), Some("partner-b"));
        assert_eq!(limit.burst, 20, "burst defaults to the rate's count");
    }
}
