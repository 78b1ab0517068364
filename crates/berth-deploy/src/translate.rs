//! Spec to supervisor input: the one place that knows both vocabularies.

use std::path::Path;

use std::collections::BTreeMap;

use berth_gateway::{
    CachePolicy, Rate, RateKey, RateLimitPolicy, RoutePolicy, RoutingTable, ServiceRoutes, Upstream, UpstreamProtocol,
};
use berth_spec::Spec;
use berth_supervisor::cgroup::Limits;
use berth_supervisor::{Endpoints, HealthConfig, ServiceConfig};

/// What the supervisor runs for `spec`, whose directory is `dir`. Pure.
pub fn to_service_config(spec: &Spec, dir: &Path, replicas_override: Option<u32>) -> ServiceConfig {
    let env = spec.env.iter().chain(spec.run.env.iter()).map(|(k, v)| (k.clone(), v.clone())).collect();
    // Scaling is not a release: the replica count stays out of the release identity.
    let mut release_spec = spec.clone();
    release_spec.replicas = toml::Spanned::new(0..0, 0);
    ServiceConfig {
        name: spec.name.to_string(),
        release: berth_spec::release_hash(&release_spec),
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
    }
}

/// What the gateway routes: every service's domains and route policies, and its replicas in rotation.
/// Pure.
pub fn to_routing_table(specs: &BTreeMap<String, Spec>, endpoints: &Endpoints) -> RoutingTable {
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
            endpoints: endpoints
                .get(name)
                .into_iter()
                .flatten()
                .map(|endpoint| Upstream {
                    instance: endpoint.instance.clone(),
                    addr: endpoint.addr,
                    group: "stable".to_owned(),
                    weight: 100,
                })
                .collect(),
            protocol: match spec.run.protocol {
                berth_spec::Protocol::Http1 => UpstreamProtocol::Http1,
                berth_spec::Protocol::H2c => UpstreamProtocol::H2c,
            },
            pools: spec.pools.keys().cloned().collect(),
            redirect_https: spec.redirect_https,
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
