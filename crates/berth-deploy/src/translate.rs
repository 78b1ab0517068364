//! Spec to supervisor input: the one place that knows both vocabularies.

use std::path::Path;

use std::collections::BTreeMap;

use berth_gateway::{RoutePolicy, RoutingTable, ServiceRoutes, Upstream, UpstreamProtocol};
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
        })
        .collect();
    RoutingTable { services, default_service: None }
}
