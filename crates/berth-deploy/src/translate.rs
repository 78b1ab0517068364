//! Spec to supervisor input: the one place that knows both vocabularies.

use std::path::Path;

use berth_spec::Spec;
use berth_supervisor::cgroup::Limits;
use berth_supervisor::{HealthConfig, ServiceConfig};

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
