//! JSON wire types of the control API. Changing them is a compatibility decision: add fields, never rename.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub release: String,
    pub state: String,
    pub desired_replicas: u32,
    pub healthy_replicas: u32,
    /// Healthy replicas on `release`, for rollout progress.
    #[serde(default)]
    pub updated_replicas: u32,
    /// Every replica is healthy on `release` and no replacement is under way: a rollout is done.
    #[serde(default)]
    pub converged: bool,
    pub memory_limit_bytes: Option<u64>,
    /// How the memory limit is enforced: "cgroup v2", "cgroup v1", "rlimit (cgroups not writable)" or "none".
    pub memory_enforcement: String,
    pub replicas: Vec<ReplicaView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplicaView {
    pub index: u32,
    pub instance: Option<String>,
    /// The release this instance runs.
    #[serde(default)]
    pub release: Option<String>,
    pub state: String,
    pub pid: Option<i32>,
    pub port: Option<u16>,
    pub started_at_ms: Option<u64>,
    pub uptime_ms: Option<u64>,
    pub restarts: u32,
    pub last_exit: Option<ExitView>,
    pub last_probe: Option<String>,
    pub in_rotation: bool,
    pub adopted: bool,
    pub retiring: bool,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExitView {
    /// One of: exited, signaled, oom-killed, unhealthy, never-healthy, stopped, vanished, spawn-failed.
    pub kind: String,
    pub message: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub replicas: u32,
}

/// Body of `POST /v1/services/{name}/cache/purge`; without a body (or `path`) every cached response goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CachePurgeRequest {
    /// Purge only paths under this prefix (segment boundary: `/a` covers `/a`, `/a/b`, `/a?x`).
    #[serde(default)]
    pub path: Option<String>,
}

/// Answer of a cache purge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachePurgeView {
    pub service: String,
    pub path: Option<String>,
    /// Cached responses removed.
    pub purged: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogsQuery {
    pub replica: Option<u32>,
    pub since_ms: Option<u64>,
    pub tail: Option<usize>,
    #[serde(default)]
    pub follow: bool,
}

/// Written by the daemon to `<state dir>/daemon.json` once its API listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub api: std::net::SocketAddr,
    /// Where the gateway listens.
    #[serde(default)]
    pub gateway: Option<std::net::SocketAddr>,
    /// Where the gateway's HTTPS listener (and HTTP/3, on the same port over UDP) listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<std::net::SocketAddr>,
    pub pid: u32,
}

impl ServiceView {
    pub fn from_status(status: &berth_supervisor::ServiceStatus) -> ServiceView {
        let replicas: Vec<ReplicaView> = status.replicas.iter().map(ReplicaView::from_status).collect();
        ServiceView {
            name: status.name.clone(),
            release: status.release.clone(),
            state: status.state.as_str().to_owned(),
            desired_replicas: status.desired_replicas,
            healthy_replicas: replicas.iter().filter(|r| r.in_rotation).count() as u32,
            updated_replicas: status.updated_replicas,
            converged: status.converged,
            memory_limit_bytes: status.memory_limit_bytes,
            memory_enforcement: status.memory_enforcement.describe().to_owned(),
            replicas,
        }
    }
}

impl ReplicaView {
    fn from_status(replica: &berth_supervisor::ReplicaStatus) -> ReplicaView {
        let now = std::time::SystemTime::now();
        ReplicaView {
            index: replica.index,
            instance: replica.instance.clone(),
            release: replica.release.clone(),
            state: replica.state.as_str().to_owned(),
            pid: replica.pid,
            port: replica.port,
            started_at_ms: replica.started_at.map(unix_ms),
            uptime_ms: replica.started_at.and_then(|at| now.duration_since(at).ok()).map(|d| d.as_millis() as u64),
            restarts: replica.restarts,
            last_exit: replica.last_exit.as_ref().map(|(reason, at)| ExitView {
                kind: reason.kind().to_owned(),
                message: reason.to_string(),
                at_ms: unix_ms(*at),
            }),
            last_probe: replica.last_probe.clone(),
            in_rotation: replica.in_rotation,
            adopted: replica.adopted,
            retiring: replica.retiring,
            cpu_percent: replica.cpu_percent,
            rss_bytes: replica.rss_bytes,
        }
    }
}

pub fn unix_ms(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
