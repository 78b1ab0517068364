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

/// One release of a service, as `GET /v1/services/{name}/releases` lists them (newest first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseView {
    pub service: String,
    pub number: u32,
    /// SHA-256 (hex) of the release's files.
    pub artifact_hash: String,
    /// The config's identity, as `ServiceView::release` shows the running one.
    pub config_hash: String,
    /// Full git commit id, when the service directory was in a git work tree.
    pub commit: Option<String>,
    /// The work tree had changes not in `commit`.
    pub dirty: bool,
    pub author: String,
    pub created_ms: u64,
    /// One of: rolling, bluegreen, canary; none before the release is deployed.
    pub strategy: Option<String>,
    /// One of: built, deploying, live, superseded, rolled-back, failed.
    pub outcome: String,
    /// Why it was rolled back or failed.
    pub reason: Option<String>,
    pub deploy_started_ms: Option<u64>,
    pub deploy_finished_ms: Option<u64>,
    /// The release directory on the daemon's machine.
    pub dir: String,
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

impl ReleaseView {
    pub fn from_release(release: &berth_deploy::Release) -> ReleaseView {
        ReleaseView {
            service: release.service.clone(),
            number: release.number,
            artifact_hash: release.artifact_hash.clone(),
            config_hash: release.config_hash.clone(),
            commit: release.commit.as_ref().map(|commit| commit.sha.clone()),
            dirty: release.commit.as_ref().is_some_and(|commit| commit.dirty),
            author: release.author.clone(),
            created_ms: release.created_ms,
            strategy: release.strategy.map(|strategy| {
                match strategy {
                    berth_spec::Strategy::Rolling => "rolling",
                    berth_spec::Strategy::Bluegreen => "bluegreen",
                    berth_spec::Strategy::Canary => "canary",
                }
                .to_owned()
            }),
            outcome: release.outcome.as_str().to_owned(),
            reason: release.outcome.reason().map(str::to_owned),
            deploy_started_ms: release.deploy_started_ms,
            deploy_finished_ms: release.deploy_finished_ms,
            dir: release.dir.display().to_string(),
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

/// `POST /v1/deploy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployBody {
    /// The service directory, absolute (the daemon reads it).
    pub dir: String,
    /// `rolling`, `bluegreen` or `canary`; default: the app.toml's `[deploy] strategy`.
    #[serde(default)]
    pub strategy: Option<String>,
    /// Deploy a preview copy named `<service>-<branch>`.
    #[serde(default)]
    pub branch: Option<String>,
}

/// `POST /v1/services/{name}/rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RollbackBody {
    /// The release to return to; default: the one before the live one.
    #[serde(default)]
    pub to: Option<u32>,
}

/// One line of a deploy's NDJSON progress stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DeployEventView {
    Step { step: String, detail: String },
    Output { step: String, line: String },
    Progress { message: String },
    Live { message: String },
    Done { service: String, release: Option<u32>, ok: bool, message: String },
}

impl DeployEventView {
    pub fn from_event(event: berth_deploy::DeployEvent) -> DeployEventView {
        use berth_deploy::DeployEvent;
        match event {
            DeployEvent::Step { step, detail } => DeployEventView::Step { step, detail },
            DeployEvent::Output { step, line } => DeployEventView::Output { step, line },
            DeployEvent::Progress { message } => DeployEventView::Progress { message },
            DeployEvent::Live { message } => DeployEventView::Live { message },
            DeployEvent::Done { service, release, ok, message } => {
                DeployEventView::Done { service, release, ok, message }
            }
        }
    }
}
