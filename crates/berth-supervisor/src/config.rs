//! Inputs of the supervisor: what to run for a service and how to judge its health.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::backoff::RestartBackoff;
use crate::cgroup::Limits;
use crate::logs::LogLimits;

/// Daemon-wide settings of the supervisor.
pub struct SupervisorConfig {
    /// The daemon's state directory; canonical, since replicas carry it in `BERTH_STATE_DIR`.
    pub state_dir: PathBuf,
    pub log_limits: LogLimits,
    pub backoff: RestartBackoff,
    /// Called before an orderly stop of an instance, with its id and a time bound: returns once nothing
    /// routes to it any more and its requests in flight are done (the gateway's drain).
    pub drain: Option<DrainHook>,
}

pub type DrainHook = Arc<dyn Fn(String, Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Everything the supervisor needs to run one service. Two configs that compare equal run the same processes.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    pub name: String,
    /// Identifies what the replicas run; replicas of another release are never adopted.
    pub release: String,
    pub replicas: u32,
    /// `command[0]` is resolved against `workdir` when it is a relative path with a slash.
    pub command: Vec<String>,
    pub workdir: PathBuf,
    pub env: Vec<(String, String)>,
    pub health: HealthConfig,
    /// SIGTERM grace before SIGKILL for an orderly stop.
    pub stop_timeout: Duration,
    pub limits: Limits,
    /// During a rolling replacement, instances started above `replicas` at a time (Kubernetes'
    /// `maxSurge`): each of these slots gets its successor beside its serving instance.
    pub max_surge: u32,
    /// During a rolling replacement, replicas that may be out of rotation at a time (Kubernetes'
    /// `maxUnavailable`): each of these slots has its instance stopped before its successor starts.
    /// With `max_surge` also 0 no replacement could ever start, so that pair counts as `max_surge` 1.
    pub max_unavailable: u32,
}

impl ServiceConfig {
    /// A config with the defaults of everything but what identifies the service: one replica, no extra
    /// environment, default health checks, a 10s stop timeout, no limits, `max_surge` 1, `max_unavailable` 0.
    /// Set the other fields with struct update syntax.
    pub fn new(name: &str, release: &str, command: Vec<String>, workdir: PathBuf) -> ServiceConfig {
        ServiceConfig {
            name: name.to_owned(),
            release: release.to_owned(),
            replicas: 1,
            command,
            workdir,
            env: Vec::new(),
            health: HealthConfig::default(),
            stop_timeout: Duration::from_secs(10),
            limits: Limits::default(),
            max_surge: 1,
            max_unavailable: 0,
        }
    }

    /// `max_surge`, with the invalid pair (both 0) read as one surge instance.
    pub(crate) fn effective_max_surge(&self) -> u32 {
        if self.max_surge == 0 && self.max_unavailable == 0 { 1 } else { self.max_surge }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Failures during this period after start do not count; a replica never healthy by its end is replaced.
    pub start_period: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: "/healthz".to_owned(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 3,
            start_period: Duration::from_secs(30),
        }
    }
}
