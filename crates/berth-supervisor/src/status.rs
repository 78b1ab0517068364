//! What the supervisor reports: per-service and per-replica state, and the endpoints in rotation.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cgroup::Enforcement;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaState {
    /// Spawned, not yet healthy.
    Starting,
    /// Passing its probes and in rotation.
    Healthy,
    /// Was healthy, now failing probes below the threshold; still in rotation.
    Degraded,
    /// Waiting out its restart backoff.
    Backoff,
    /// Waiting out its backoff after repeated fast failures.
    CrashLoop,
    /// Leaving: SIGTERM sent, waiting for exit.
    Stopping,
    /// Not running because the service is stopped.
    Stopped,
}

impl ReplicaState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplicaState::Starting => "starting",
            ReplicaState::Healthy => "healthy",
            ReplicaState::Degraded => "degraded",
            ReplicaState::Backoff => "backoff",
            ReplicaState::CrashLoop => "crash-loop",
            ReplicaState::Stopping => "stopping",
            ReplicaState::Stopped => "stopped",
        }
    }
}

/// Why an instance of a replica ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    /// Killed by the kernel's OOM killer inside the replica's memory cgroup.
    OomKilled {
        limit_bytes: Option<u64>,
    },
    /// Failed its health probes and was replaced.
    Unhealthy {
        detail: String,
    },
    /// Never became healthy within its start period and was replaced.
    NeverHealthy,
    /// Stopped on request (stop, scale in, restart, shutdown).
    Stopped,
    /// An adopted process disappeared; it is not our child, so its exit status is unknown.
    Vanished,
    SpawnFailed {
        error: String,
    },
}

impl ExitReason {
    /// A short kind, from a bounded set (usable as a metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            ExitReason::Exited { .. } => "exited",
            ExitReason::Signaled { .. } => "signaled",
            ExitReason::OomKilled { .. } => "oom-killed",
            ExitReason::Unhealthy { .. } => "unhealthy",
            ExitReason::NeverHealthy => "never-healthy",
            ExitReason::Stopped => "stopped",
            ExitReason::Vanished => "vanished",
            ExitReason::SpawnFailed { .. } => "spawn-failed",
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Exited { code } => write!(f, "exited with code {code}"),
            ExitReason::Signaled { signal } => write!(f, "killed by signal {} ({signal})", signal_name(*signal)),
            ExitReason::OomKilled { limit_bytes: Some(limit) } => {
                write!(f, "OOM-killed at its memory limit of {} MiB", limit / (1024 * 1024))
            }
            ExitReason::OomKilled { limit_bytes: None } => write!(f, "OOM-killed"),
            ExitReason::Unhealthy { detail } => write!(f, "replaced after failing health checks ({detail})"),
            ExitReason::NeverHealthy => write!(f, "replaced: never healthy within its start period"),
            ExitReason::Stopped => write!(f, "stopped"),
            ExitReason::Vanished => write!(f, "exited while the daemon was away (status unknown)"),
            ExitReason::SpawnFailed { error } => write!(f, "failed to start: {error}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReplicaStatus {
    pub index: u32,
    pub instance: Option<String>,
    /// The release this instance runs; during a rollout it differs between rows.
    pub release: Option<String>,
    pub state: ReplicaState,
    pub pid: Option<i32>,
    pub port: Option<u16>,
    pub started_at: Option<SystemTime>,
    pub restarts: u32,
    pub last_exit: Option<(ExitReason, SystemTime)>,
    /// The last probe's outcome in words ("ok", "status 500", "timeout after 500ms").
    pub last_probe: Option<String>,
    pub in_rotation: bool,
    pub adopted: bool,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    /// An instance being replaced beside this one (surge) is listed as its own row with this set.
    pub retiring: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    Running,
    /// Some replicas are not healthy.
    Degraded,
    /// At least one replica is crash-looping.
    CrashLoop,
    Stopped,
}

impl ServiceState {
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceState::Running => "running",
            ServiceState::Degraded => "degraded",
            ServiceState::CrashLoop => "crash-loop",
            ServiceState::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServiceStatus {
    pub name: String,
    pub release: String,
    pub desired_replicas: u32,
    pub state: ServiceState,
    pub replicas: Vec<ReplicaStatus>,
    /// The service runs `release` and nothing else is under way: it is not stopped, no replacement is
    /// queued or starting, nothing is stopping, and every replica is healthy on `release`. A rollout is
    /// done when this turns true.
    pub converged: bool,
    /// Replicas in rotation that run `release`: a rollout's progress.
    pub updated_replicas: u32,
    pub memory_limit_bytes: Option<u64>,
    pub memory_enforcement: Enforcement,
}

/// A replica instance in rotation: where the gateway may send traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub replica: u32,
    pub instance: String,
    pub addr: SocketAddr,
}

/// Every service's endpoints in rotation; published as an immutable snapshot on each change.
pub type Endpoints = Arc<BTreeMap<String, Vec<Endpoint>>>;

/// Names of the few signals a supervisor sees; anything else by number.
pub(crate) fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}
