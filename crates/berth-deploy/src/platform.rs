//! The platform: desired state in the store, actual state in the supervisor, and the one path between them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use berth_gateway::Gateway;
use berth_spec::Spec;
use berth_supervisor::{ServiceStatus, Supervisor, SupervisorError};
use tokio::sync::Notify;
use tracing::{error, info};

use crate::load::{LoadError, LoadedService};
use crate::release::Release;
use crate::store::{DesiredService, Store, StoreError};
use crate::translate::{pool_unit, set_program, to_routing_table, to_service_configs};

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
}

pub struct Platform {
    store: Store,
    supervisor: Supervisor,
    gateway: Gateway,
    /// The specs of the services being run, for the routing table.
    specs: Arc<Mutex<BTreeMap<String, Spec>>>,
    specs_changed: Arc<Notify>,
}

impl Platform {
    /// Must be called inside a tokio runtime: it starts the task that keeps the gateway's routing table in
    /// step with the supervisor's endpoints.
    pub fn new(store: Store, supervisor: Supervisor, gateway: Gateway) -> Platform {
        let platform = Platform {
            store,
            supervisor,
            gateway,
            specs: Arc::new(Mutex::new(BTreeMap::new())),
            specs_changed: Arc::new(Notify::new()),
        };
        tokio::spawn(route_updates(
            platform.supervisor.endpoints(),
            platform.specs.clone(),
            platform.specs_changed.clone(),
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

    fn apply(&self, name: &str, desired: &DesiredService) -> Result<(), PlatformError> {
        let spec = crate::load::parse(&desired.dir.join("app.toml"), &desired.source)?;
        let mut configs = to_service_configs(&spec, &desired.dir, desired.replicas);
        if let Some(program) = &desired.program {
            configs.iter_mut().for_each(|config| set_program(config, program));
        }
        lock(&self.specs).insert(name.to_owned(), spec);
        self.specs_changed.notify_one();
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
        let pools: Vec<String> = lock(&self.specs)
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
    specs: Arc<Mutex<BTreeMap<String, Spec>>>,
    specs_changed: Arc<Notify>,
    gateway: Gateway,
) {
    loop {
        let current = endpoints.borrow_and_update().clone();
        let table = to_routing_table(&lock(&specs), &current);
        gateway.update(&table);
        tokio::select! {
            changed = endpoints.changed() => if changed.is_err() { return },
            _ = specs_changed.notified() => {}
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
