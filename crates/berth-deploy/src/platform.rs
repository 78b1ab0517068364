//! The platform: desired state in the store, actual state in the supervisor, and the one path between them.

mod rollout;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use berth_gateway::Gateway;
use berth_spec::Spec;
use berth_supervisor::{ServiceConfig, ServiceStatus, Supervisor, SupervisorError};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::load::{LoadError, LoadedService};
use crate::release::{Release, ReleaseOutcome};
use crate::store::{DesiredService, Store, StoreError};
use crate::translate::{pool_unit, set_program, to_routing_table, to_service_configs};

pub use rollout::{Control, DeployEvent, DeployRequest, RollbackRequest};

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no service named `{0}`")]
    UnknownService(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    /// A rollout of the service is under way; one at a time.
    #[error("a rollout of `{service}` is under way ({what})")]
    RolloutInProgress { service: String, what: String },
    #[error("no rollout of `{0}` is under way")]
    NoRollout(String),
    #[error("{0}")]
    Invalid(String),
}

impl PlatformError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            PlatformError::RolloutInProgress { service, .. } => Some(format!(
                "wait for it to finish, or end it: `berth promote {service}` (go ahead now) or `berth abort {service}` \
                 (roll back)"
            )),
            PlatformError::NoRollout(service) => Some(format!("`berth releases {service}` shows what ran when")),
            PlatformError::UnknownService(_) => Some("`berth ps` lists the services".to_owned()),
            _ => None,
        }
    }
}

pub struct Platform {
    store: Store,
    supervisor: Supervisor,
    gateway: Gateway,
    /// Where releases are kept (`<state dir>/releases`).
    state_dir: PathBuf,
    /// What the gateway's routing table is made of besides the endpoints.
    routing: Arc<Mutex<Routing>>,
    routing_changed: Arc<Notify>,
    /// The rollout under way per service (at most one).
    rollouts: Mutex<BTreeMap<String, rollout::Running>>,
}

/// The specs of the services being run and the traffic share of releases rolling out beside the live ones.
#[derive(Default)]
struct Routing {
    specs: BTreeMap<String, Spec>,
    next_weights: BTreeMap<String, u32>,
}

impl Platform {
    /// Must be called inside a tokio runtime: it starts the task that keeps the gateway's routing table in
    /// step with the supervisor's endpoints.
    pub fn new(store: Store, supervisor: Supervisor, gateway: Gateway, state_dir: PathBuf) -> Platform {
        let platform = Platform {
            store,
            supervisor,
            gateway,
            state_dir,
            routing: Arc::new(Mutex::new(Routing::default())),
            routing_changed: Arc::new(Notify::new()),
            rollouts: Mutex::new(BTreeMap::new()),
        };
        tokio::spawn(route_updates(
            platform.supervisor.endpoints(),
            platform.routing.clone(),
            platform.routing_changed.clone(),
            platform.gateway.clone(),
        ));
        platform
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Records `service` as desired, as its file says (an explicit deploy clears `scale` and `stop` overrides).
    /// Takes effect at the next `apply`.
    pub fn put(&self, service: &LoadedService) -> Result<(), PlatformError> {
        let desired = DesiredService {
            dir: service.dir.clone(),
            source: service.source.clone(),
            replicas: None,
            stopped: false,
            program: service.program.clone(),
            release: None,
        };
        self.store.put(&service.spec.name.to_string(), &desired)?;
        Ok(())
    }

    /// Makes the supervisor run what the store says. At boot this is a deploy from the empty state: it also
    /// adopts replicas an earlier daemon left running and reaps the ones nobody wants. Returns the problems
    /// of services that could not be applied (they are skipped, the rest run).
    pub fn apply_all(&self) -> Result<Vec<String>, PlatformError> {
        let mut problems = Vec::new();
        for (name, desired) in self.store.list()? {
            if let Err(error) = self.settle_interrupted_rollout(&name, &desired) {
                warn!(service = %name, error = %error, "cannot settle the records of an interrupted rollout");
            }
            if let Err(error) = self.apply(&name, &desired) {
                error!(service = %name, error = %error, "cannot run stored service");
                problems.push(format!("{name}: {error}"));
            }
        }
        self.supervisor.reap_unclaimed();
        Ok(problems)
    }

    pub fn scale(&self, name: &str, n_replicas: u32) -> Result<(), PlatformError> {
        self.update(name, |desired| desired.replicas = Some(n_replicas))?;
        info!(service = %name, n_replicas, "scaled");
        Ok(self.supervisor.scale(name, n_replicas)?)
    }

    pub fn stop(&self, name: &str) -> Result<(), PlatformError> {
        self.update(name, |desired| desired.stopped = true)?;
        for unit in self.units(name) {
            self.supervisor.stop(&unit)?;
        }
        Ok(())
    }

    pub fn start(&self, name: &str) -> Result<(), PlatformError> {
        self.update(name, |desired| desired.stopped = false)?;
        for unit in self.units(name) {
            self.supervisor.start_service(&unit)?;
        }
        Ok(())
    }

    /// Rolling restart of the service's replicas and of its dedicated pools.
    pub fn restart(&self, name: &str) -> Result<(), PlatformError> {
        self.desired(name)?;
        for unit in self.units(name) {
            self.supervisor.restart(&unit)?;
        }
        Ok(())
    }

    /// Removes `name`'s responses from the gateway's cache (only those under `path_prefix`, if given).
    /// Returns how many were removed.
    pub fn purge_cache(&self, name: &str, path_prefix: Option<&str>) -> Result<usize, PlatformError> {
        self.desired(name)?;
        let purged = self.gateway.purge_cache(name, path_prefix);
        info!(service = %name, path = path_prefix.unwrap_or("/"), purged, "cache purged");
        Ok(purged)
    }

    pub async fn status(&self) -> Vec<ServiceStatus> {
        self.supervisor.status().await
    }

    pub async fn service_status(&self, name: &str) -> Result<ServiceStatus, PlatformError> {
        Ok(self.supervisor.service_status(name).await?)
    }

    /// The service's releases, newest first.
    pub fn releases(&self, name: &str) -> Result<Vec<Release>, PlatformError> {
        let releases = self.store.releases(name)?;
        if releases.is_empty() {
            self.desired(name)?;
        }
        Ok(releases)
    }

    pub fn supervisor(&self) -> &Supervisor {
        &self.supervisor
    }

    /// Stops every replica; the desired state stays stored, so the next `berth up` brings it all back.
    pub async fn shutdown(&self) {
        self.supervisor.shutdown().await;
    }

    /// A rollout the daemon did not live to finish ended with the stored (committed) release: the records say
    /// so. The next release's replicas are not applied, so `reap_unclaimed` stops them.
    fn settle_interrupted_rollout(&self, name: &str, desired: &DesiredService) -> Result<(), StoreError> {
        for release in self.store.releases(name)? {
            let committed = desired.release == Some(release.number);
            let interrupted = match release.outcome {
                ReleaseOutcome::Deploying => true,
                ReleaseOutcome::Live => !committed,
                _ => false,
            };
            if interrupted {
                let runs = desired.release.map_or("the service's directory".to_owned(), |n| format!("release {n}"));
                let reason = format!("the daemon stopped during the rollout; {runs} runs");
                warn!(service = %name, release = release.number, "{reason}");
                self.store.update_release(name, release.number, |r| {
                    r.outcome = ReleaseOutcome::RolledBack { reason };
                    r.deploy_finished_ms.get_or_insert_with(rollout::now_ms);
                })?;
            } else if committed && release.outcome != ReleaseOutcome::Live {
                self.store.update_release(name, release.number, |r| r.outcome = ReleaseOutcome::Live)?;
            }
        }
        Ok(())
    }

    /// The supervisor configs of a stored service: its own replicas first, then its pools.
    fn configs(&self, name: &str, desired: &DesiredService) -> Result<(Spec, Vec<ServiceConfig>), PlatformError> {
        let mut spec = crate::load::parse(&desired.dir.join("app.toml"), &desired.source)?;
        if spec.name.get_ref() != name {
            // A preview copy (`berth deploy --branch`) runs the same app.toml under its own name.
            rollout::rename_for_preview(&mut spec, name);
        }
        let mut configs = to_service_configs(&spec, &desired.dir, desired.replicas);
        for config in &mut configs {
            if let Some(program) = &desired.program {
                set_program(config, program);
            }
            if let Some(number) = desired.release {
                // Files can change between releases while the config does not: the release number tells
                // the supervisor (and adoption after a restart) which release a replica runs.
                config.release = format!("{}-r{number}", config.release);
            }
        }
        Ok((spec, configs))
    }

    fn apply(&self, name: &str, desired: &DesiredService) -> Result<(), PlatformError> {
        let (spec, configs) = self.configs(name, desired)?;
        lock(&self.routing).specs.insert(name.to_owned(), spec);
        self.routing_changed.notify_one();
        for config in configs {
            if desired.stopped {
                self.supervisor.apply_stopped(config);
            } else {
                self.supervisor.apply(config);
            }
        }
        info!(service = %name, stopped = desired.stopped, "service applied");
        Ok(())
    }

    /// The supervisor units of a service: its own replicas, then one per dedicated pool.
    fn units(&self, name: &str) -> Vec<String> {
        let pools: Vec<String> = lock(&self.routing)
            .specs
            .get(name)
            .map(|spec| spec.pools.keys().map(|pool| pool_unit(name, pool)).collect())
            .unwrap_or_default();
        std::iter::once(name.to_owned()).chain(pools).collect()
    }

    fn desired(&self, name: &str) -> Result<DesiredService, PlatformError> {
        self.store.get(name)?.ok_or_else(|| PlatformError::UnknownService(name.to_owned()))
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut DesiredService)) -> Result<(), PlatformError> {
        let mut desired = self.desired(name)?;
        change(&mut desired);
        Ok(self.store.put(name, &desired)?)
    }
}

/// Rebuilds the gateway's routing table whenever the endpoints in rotation or the specs change.
async fn route_updates(
    mut endpoints: tokio::sync::watch::Receiver<berth_supervisor::Endpoints>,
    routing: Arc<Mutex<Routing>>,
    routing_changed: Arc<Notify>,
    gateway: Gateway,
) {
    loop {
        let current = endpoints.borrow_and_update().clone();
        publish(&routing, &current, &gateway);
        tokio::select! {
            changed = endpoints.changed() => if changed.is_err() { return },
            _ = routing_changed.notified() => {}
        }
    }
}

/// Computes and installs the routing table. The routing lock is held throughout, so two publishers cannot
/// install their tables in the opposite order of the state they read.
fn publish(routing: &Mutex<Routing>, endpoints: &berth_supervisor::Endpoints, gateway: &Gateway) {
    let routing = lock(routing);
    gateway.update(&to_routing_table(&routing.specs, &routing.next_weights, endpoints));
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
