//! The supervisor's handle: starts service actors, routes commands to them, collects their status.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

use crate::backoff::RestartBackoff;
use crate::cgroup::{Cgroups, Enforcement};
use crate::config::{ServiceConfig, SupervisorConfig};
use crate::instance::{self, Adoptable, Ctx};
use crate::logs::LogStore;
use crate::service::{self, Command};
use crate::status::{Endpoints, ServiceStatus};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no service named `{0}` is running")]
    UnknownService(String),
    #[error("cannot prepare the state directory {path}: {source}")]
    StateDir { path: String, source: std::io::Error },
}

/// Cheap to clone; every clone drives the same services.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<Ctx>,
    backoff: RestartBackoff,
    services: Mutex<BTreeMap<String, mpsc::UnboundedSender<Command>>>,
    /// Replica processes of an earlier daemon, waiting for their service to claim them.
    adoptable: Mutex<Vec<Adoptable>>,
    /// Processes of an earlier daemon that are not group leaders (a replica's own children).
    strays: Mutex<Vec<i32>>,
    endpoints: watch::Sender<Endpoints>,
}

impl Supervisor {
    /// Prepares cgroups and log capture and finds the replicas an earlier daemon left running.
    /// Must be called inside a tokio runtime.
    pub fn start(config: SupervisorConfig) -> Result<Supervisor, SupervisorError> {
        let state_dir = &config.state_dir;
        let io_err = |source| SupervisorError::StateDir { path: state_dir.display().to_string(), source };
        let logs = LogStore::new(state_dir.join("logs"), state_dir.join("run").join("fifo"), config.log_limits)
            .map_err(io_err)?;
        let cgroups = Cgroups::detect(&cgroup_group_name(state_dir));
        let (adoptable, strays) = instance::scan_adoptable(state_dir);
        let keep: Vec<&str> = adoptable.iter().map(|a| a.instance.as_str()).collect();
        cgroups.cleanup_stale(&keep);
        logs.remove_fifos_except(&adoptable.iter().map(|a| a.instance.clone()).collect::<Vec<_>>());
        if !adoptable.is_empty() {
            info!(n_replicas = adoptable.len(), "found running replicas of an earlier daemon");
        }
        info!(memory_enforcement = cgroups.enforcement().describe(), "supervisor ready");
        let ctx = Arc::new(Ctx { state_dir: state_dir.clone(), cgroups, logs, drain: config.drain.clone() });
        Ok(Supervisor {
            inner: Arc::new(Inner {
                ctx,
                backoff: config.backoff,
                services: Mutex::new(BTreeMap::new()),
                adoptable: Mutex::new(adoptable),
                strays: Mutex::new(strays),
                endpoints: watch::Sender::new(Arc::new(BTreeMap::new())),
            }),
        })
    }

    /// Runs `config`: starts the service, or moves a running one to the new config (rolling restart when
    /// anything but the replica count changed).
    pub fn apply(&self, config: ServiceConfig) {
        self.apply_as(config, true);
    }

    /// Like `apply`, but the service is known and stopped: nothing runs until `start_service`.
    pub fn apply_stopped(&self, config: ServiceConfig) {
        self.apply_as(config, false);
    }

    fn apply_as(&self, config: ServiceConfig, running: bool) {
        let mut services = lock(&self.inner.services);
        if let Some(cmd_tx) = services.get(&config.name) {
            let _ = cmd_tx.send(Command::Update(Box::new(config)));
            let _ = cmd_tx.send(if running { Command::Start } else { Command::Stop });
            return;
        }
        let claimed = {
            let mut adoptable = lock(&self.inner.adoptable);
            let (mine, rest): (Vec<_>, Vec<_>) =
                adoptable.drain(..).partition(|a| a.service == config.name && a.release == config.release);
            *adoptable = rest;
            mine
        };
        let name = config.name.clone();
        let cmd_tx = service::spawn_actor(
            self.inner.ctx.clone(),
            config,
            self.inner.backoff,
            claimed,
            self.inner.endpoints.clone(),
            running,
        );
        services.insert(name, cmd_tx);
    }

    /// Kills what an earlier daemon left running that no service claimed. Call once, after the startup
    /// `apply` of every desired service.
    pub fn reap_unclaimed(&self) {
        let unclaimed: Vec<Adoptable> = lock(&self.inner.adoptable).drain(..).collect();
        let strays: Vec<i32> = lock(&self.inner.strays).drain(..).collect();
        for found in &unclaimed {
            info!(service = %found.service, replica = found.replica, pid = found.pid, "stopping a replica no service claims");
            instance::kill_group(found.pid);
            if let Some(cgroup) = self.inner.ctx.cgroups.open(&found.instance) {
                cgroup.kill_all();
                cgroup.remove();
            }
        }
        let unclaimed_groups: Vec<i32> = unclaimed.iter().map(|a| a.pid).collect();
        for pid in strays {
            let leader_claimed = crate::procfs::stat(pid).is_some_and(|stat| {
                stat.pgid != pid && !unclaimed_groups.contains(&stat.pgid) && crate::procfs::stat(stat.pgid).is_some()
            });
            if !leader_claimed {
                instance::kill_group(pid);
            }
        }
    }

    pub fn scale(&self, name: &str, n_replicas: u32) -> Result<(), SupervisorError> {
        self.send(name, Command::Scale(n_replicas))
    }

    /// Replaces every replica, one at a time, each new one healthy before the old one leaves.
    pub fn restart(&self, name: &str) -> Result<(), SupervisorError> {
        self.send(name, Command::Restart)
    }

    /// Stops every replica but keeps the service known, so `start` brings it back.
    pub fn stop(&self, name: &str) -> Result<(), SupervisorError> {
        self.send(name, Command::Stop)
    }

    pub fn start_service(&self, name: &str) -> Result<(), SupervisorError> {
        self.send(name, Command::Start)
    }

    /// Stops a service's replicas and forgets it. Returns once they are gone.
    pub async fn remove(&self, name: &str) -> Result<(), SupervisorError> {
        let cmd_tx = lock(&self.inner.services).remove(name).ok_or_else(|| unknown(name))?;
        let (reply, done) = oneshot::channel();
        if cmd_tx.send(Command::Shutdown(reply)).is_ok() {
            let _ = done.await;
        }
        Ok(())
    }

    /// Stops every service. Returns once every replica is gone.
    pub async fn shutdown(&self) {
        let services: Vec<_> = std::mem::take(&mut *lock(&self.inner.services)).into_values().collect();
        let mut waiting = Vec::new();
        for cmd_tx in services {
            let (reply, done) = oneshot::channel();
            if cmd_tx.send(Command::Shutdown(reply)).is_ok() {
                waiting.push(done);
            }
        }
        for done in waiting {
            let _ = done.await;
        }
    }

    pub async fn status(&self) -> Vec<ServiceStatus> {
        let names: Vec<String> = lock(&self.inner.services).keys().cloned().collect();
        let mut res = Vec::new();
        for name in names {
            if let Ok(status) = self.service_status(&name).await {
                res.push(status);
            }
        }
        res
    }

    pub async fn service_status(&self, name: &str) -> Result<ServiceStatus, SupervisorError> {
        let (reply, answer) = oneshot::channel();
        self.send(name, Command::Status(reply))?;
        // The actor never blocks; the bound only protects callers from a bug.
        match tokio::time::timeout(Duration::from_secs(5), answer).await {
            Ok(Ok(status)) => Ok(status),
            _ => Err(unknown(name)),
        }
    }

    pub fn has_service(&self, name: &str) -> bool {
        lock(&self.inner.services).contains_key(name)
    }

    /// Live view of the endpoints in rotation, for the gateway.
    pub fn endpoints(&self) -> watch::Receiver<Endpoints> {
        self.inner.endpoints.subscribe()
    }

    pub fn logs(&self) -> &LogStore {
        &self.inner.ctx.logs
    }

    pub fn memory_enforcement(&self) -> Enforcement {
        self.inner.ctx.cgroups.enforcement()
    }

    fn send(&self, name: &str, cmd: Command) -> Result<(), SupervisorError> {
        let services = lock(&self.inner.services);
        let cmd_tx = services.get(name).ok_or_else(|| unknown(name))?;
        cmd_tx.send(cmd).map_err(|_| unknown(name))
    }
}

fn unknown(name: &str) -> SupervisorError {
    SupervisorError::UnknownService(name.to_owned())
}

/// A poisoned lock only means another thread panicked mid-update of a plain collection; keep going.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One cgroup subtree per state dir, so two daemons on one host never touch each other's replicas.
fn cgroup_group_name(state_dir: &Path) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in state_dir.as_os_str().as_encoded_bytes() {
        hash = (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193);
    }
    format!("berth-{hash:08x}")
}
