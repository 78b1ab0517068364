//! A supervisor in a temporary state directory running `hello` replicas, plus a rollout observer that
//! samples the running processes and the endpoints in rotation while a config change rolls out.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_supervisor::{
    HealthConfig, ReplicaState, ReplicaStatus, RestartBackoff, ServiceConfig, ServiceStatus, Supervisor,
    SupervisorConfig,
};
use berth_test_support::{example_bin, kill_processes_with_env, processes_with_env, temp_dir, wait_until};

/// How long the stand-in for the gateway's drain takes: an instance stopped in order lingers this long, as
/// it does in the daemon, so that overlaps of old and new instances are visible to a sampler.
const DRAIN: Duration = Duration::from_millis(300);

/// A supervisor of its own, on a multi-threaded runtime, with everything it started killed on drop.
pub struct Fixture {
    pub rt: tokio::runtime::Runtime,
    pub supervisor: Supervisor,
    state_dir: PathBuf,
    hello: PathBuf,
    root: tempfile::TempDir,
}

impl Fixture {
    pub fn start() -> Fixture {
        let hello = example_bin("hello");
        let root = temp_dir();
        let state_dir = root.path().join("state");
        std::fs::create_dir_all(&state_dir).expect("the temp dir is writable");
        let state_dir = state_dir.canonicalize().expect("the state dir exists");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime can be built");
        let supervisor = {
            let _entered = rt.enter();
            Supervisor::start(SupervisorConfig {
                state_dir: state_dir.clone(),
                log_limits: Default::default(),
                backoff: RestartBackoff::default(),
                drain: Some(Arc::new(|_instance, grace: Duration| Box::pin(tokio::time::sleep(DRAIN.min(grace))))),
            })
            .expect("the supervisor starts in a fresh state dir")
        };
        Fixture { rt, supervisor, state_dir, hello, root }
    }

    /// `hello` replicas of `release`: probed every 200ms, `max_surge` 1, `max_unavailable` 0.
    pub fn config(&self, name: &str, release: &str, n_replicas: u32) -> ServiceConfig {
        let command = vec![self.hello.to_string_lossy().into_owned()];
        ServiceConfig {
            replicas: n_replicas,
            health: HealthConfig {
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(500),
                start_period: Duration::from_secs(10),
                ..HealthConfig::default()
            },
            stop_timeout: Duration::from_secs(2),
            ..ServiceConfig::new(name, release, command, self.root.path().to_path_buf())
        }
    }

    /// [`Supervisor::apply`], inside the runtime (a new service's actor is spawned on it).
    pub fn apply(&self, config: ServiceConfig) {
        let _entered = self.rt.enter();
        self.supervisor.apply(config);
    }

    pub fn status(&self, name: &str) -> ServiceStatus {
        self.rt.block_on(self.supervisor.service_status(name)).expect("the service is known")
    }

    /// Live processes started by this supervisor (read from /proc, independent of its status).
    pub fn n_processes(&self) -> usize {
        processes_with_env("BERTH_STATE_DIR", &self.state_dir.to_string_lossy()).len()
    }

    /// Waits until `name` is converged on `release`, and returns that status.
    pub fn wait_converged(&self, name: &str, release: &str, timeout: Duration) -> ServiceStatus {
        wait_until(timeout, &format!("{name} converged on {release}"), || {
            let status = self.status(name);
            (status.converged && status.release == release).then_some(status)
        })
    }

    /// Counts, from now on, the fewest endpoints of `name` in rotation in every snapshot published.
    pub fn watch_in_rotation(&self, name: &str) -> Arc<AtomicUsize> {
        let fewest = Arc::new(AtomicUsize::new(usize::MAX));
        let mut endpoints = self.supervisor.endpoints();
        let (name, fewest_seen) = (name.to_owned(), fewest.clone());
        let count = move |endpoints: &berth_supervisor::Endpoints| endpoints.get(&name).map_or(0, Vec::len);
        fewest_seen.fetch_min(count(&endpoints.borrow_and_update()), Ordering::SeqCst);
        // Ends with the runtime, when the fixture is dropped.
        self.rt.spawn(async move {
            while endpoints.changed().await.is_ok() {
                let n = count(&endpoints.borrow_and_update());
                fewest_seen.fetch_min(n, Ordering::SeqCst);
            }
        });
        fewest
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let supervisor = self.supervisor.clone();
        let _ =
            self.rt.block_on(async move { tokio::time::timeout(Duration::from_secs(15), supervisor.shutdown()).await });
        kill_processes_with_env("BERTH_STATE_DIR", &self.state_dir.to_string_lossy());
    }
}

/// What a rollout looked like from outside.
#[derive(Debug)]
pub struct Observed {
    pub n_samples: usize,
    pub max_running: usize,
    /// Fewest replicas in rotation, by status rows and by every published endpoint snapshot.
    pub min_in_rotation: usize,
    pub elapsed: Duration,
    /// Every pid seen, per release.
    pub pids: Vec<(String, i32)>,
}

/// Applies `config`, then samples status and processes every 50ms until the service converges on its
/// release (at most `timeout`). Checks on the way that `converged` is false until every replica is healthy on
/// the new release.
pub fn roll(fx: &Fixture, config: ServiceConfig, timeout: Duration) -> (Observed, ServiceStatus) {
    let (name, release, n_replicas) = (config.name.clone(), config.release.clone(), config.replicas as usize);
    observe(fx, &name, &release, n_replicas, timeout, || fx.apply(config))
}

/// Like [`roll`], for any `act` that starts a rolling replacement of `name`, which runs `n_replicas` of
/// `release` in the end.
pub fn observe(
    fx: &Fixture,
    name: &str,
    release: &str,
    n_replicas: usize,
    timeout: Duration,
    act: impl FnOnce(),
) -> (Observed, ServiceStatus) {
    let fewest_endpoints = fx.watch_in_rotation(name);
    let started = Instant::now();
    act();
    let first = fx.status(name);
    assert!(!first.converged, "converged right after a rolling replacement was asked for: {first:#?}");
    let mut observed = Observed {
        n_samples: 0,
        max_running: 0,
        min_in_rotation: usize::MAX,
        elapsed: Duration::ZERO,
        pids: Vec::new(),
    };
    let mut pids = BTreeSet::new();
    let last = wait_until(timeout, &format!("{name} to converge on {release}"), || {
        let status = fx.status(name);
        let n_processes = fx.n_processes();
        let with_pid = status.replicas.iter().filter(|r| r.pid.is_some()).count();
        observed.n_samples += 1;
        observed.max_running = observed.max_running.max(n_processes).max(with_pid);
        observed.min_in_rotation = observed.min_in_rotation.min(n_in_rotation(&status));
        for replica in &status.replicas {
            if let (Some(pid), Some(release)) = (replica.pid, &replica.release) {
                pids.insert((release.clone(), pid));
            }
        }
        if status.converged {
            assert_all_on(&status, release, n_replicas);
            assert_eq!(n_processes, n_replicas, "converged with other processes still running: {status:#?}");
        }
        status.converged.then_some(status)
    });
    observed.elapsed = started.elapsed();
    observed.min_in_rotation = observed.min_in_rotation.min(fewest_endpoints.load(Ordering::SeqCst));
    observed.pids = pids.into_iter().collect();
    (observed, last)
}

/// Exactly `n_replicas` rows, each healthy, in rotation and on `release`.
pub fn assert_all_on(status: &ServiceStatus, release: &str, n_replicas: usize) {
    assert_eq!(status.replicas.len(), n_replicas, "one row per replica: {status:#?}");
    for replica in &status.replicas {
        assert_eq!(replica.release.as_deref(), Some(release), "{status:#?}");
        assert!(replica.in_rotation && replica.state == ReplicaState::Healthy, "{status:#?}");
    }
    assert_eq!(status.updated_replicas as usize, n_replicas, "{status:#?}");
}

pub fn n_in_rotation(status: &ServiceStatus) -> usize {
    status.replicas.iter().filter(|r| r.in_rotation).count()
}

/// Pids of the rows matching `filter`.
pub fn pids(status: &ServiceStatus, filter: impl Fn(&ReplicaStatus) -> bool) -> BTreeSet<i32> {
    status.replicas.iter().filter(|r| filter(r)).filter_map(|r| r.pid).collect()
}

pub fn process_exists(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| !environ.is_empty())
}
