//! One running instance of a replica: spawn or adopt the process, wait for it, probe it, stop it.
//!
//! The instance task owns the process. It reports to its service actor only through [`InstanceEvent`]s and
//! stops the process when told to; the actor never touches the process directly.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustix::process::{Pid, Signal};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::cgroup::{Cgroups, Enforcement, InstanceCgroup};
use crate::config::{HealthConfig, ServiceConfig};
use crate::health::{HealthTracker, Phase, Transition};
use crate::logs::{LogStore, Stream};
use crate::probe::{ProbeOutcome, probe};
use crate::procfs::{self, CpuSampler};
use crate::status::ExitReason;

/// Shared, daemon-wide context of every instance.
pub(crate) struct Ctx {
    pub(crate) state_dir: PathBuf,
    pub(crate) cgroups: Cgroups,
    pub(crate) logs: LogStore,
    pub(crate) drain: Option<crate::config::DrainHook>,
}

pub(crate) enum InstanceEvent {
    Healthy { id: String },
    Unhealthy { id: String, detail: String },
    NeverHealthy { id: String },
    Exited { id: String, reason: ExitReason },
}

/// Live readings of an instance, written by its task and read for status.
#[derive(Debug, Default, Clone)]
pub(crate) struct InstanceView {
    pub(crate) last_probe: Option<String>,
    pub(crate) consecutive_failures: u32,
    pub(crate) cpu_percent: Option<f64>,
    pub(crate) rss_bytes: Option<u64>,
}

/// The actor's handle on an instance task.
pub(crate) struct InstanceHandle {
    pub(crate) id: String,
    pub(crate) replica: u32,
    /// The release the process runs: its config's, or for an adopted one the release it was started with.
    pub(crate) release: String,
    pub(crate) pid: i32,
    pub(crate) addr: SocketAddr,
    pub(crate) started_at: SystemTime,
    pub(crate) started: Instant,
    pub(crate) adopted: bool,
    pub(crate) view: Arc<Mutex<InstanceView>>,
    stop_tx: Option<oneshot::Sender<Stop>>,
}

/// How to stop an instance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stop {
    /// SIGTERM grace before SIGKILL.
    pub(crate) grace: Duration,
    /// Wait (up to `grace`) for the gateway to drain it first; pointless for a hung or failing instance.
    pub(crate) drain: bool,
}

impl InstanceHandle {
    /// Asks the task to stop the process: drain (if asked), SIGTERM, grace, then SIGKILL. The task reports
    /// `Exited`.
    pub(crate) fn stop(&mut self, stop: Stop) {
        if let Some(stop_tx) = self.stop_tx.take() {
            let _ = stop_tx.send(stop);
        }
    }

    pub(crate) fn view(&self) -> InstanceView {
        self.view.lock().map(|view| view.clone()).unwrap_or_default()
    }
}

/// A replica process found running at startup, left behind by an earlier daemon.
#[derive(Debug, Clone)]
pub(crate) struct Adoptable {
    pub(crate) pid: i32,
    pub(crate) start_ticks: u64,
    pub(crate) service: String,
    pub(crate) replica: u32,
    pub(crate) release: String,
    pub(crate) instance: String,
    pub(crate) port: u16,
}

/// Finds replica processes of this state dir: process-group leaders carrying our marker variables.
/// Non-leaders (a replica's own children) are returned separately, to be killed if their leader is gone.
///
/// Only processes with `BERTH_INSTANCE` count: the state dir alone is also in the environment of anyone
/// who set `BERTH_STATE_DIR` to pick a state dir, this daemon and the shell that started it included.
pub(crate) fn scan_adoptable(state_dir: &Path) -> (Vec<Adoptable>, Vec<i32>) {
    let mut leaders = Vec::new();
    let mut others = Vec::new();
    let own_pid = std::process::id() as i32;
    for (pid, env) in procfs::find_by_env(ENV_STATE_DIR, &state_dir.to_string_lossy()) {
        let get = |key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        if pid == own_pid || get(ENV_INSTANCE).is_none() {
            continue;
        }
        let Some(stat) = procfs::stat(pid) else { continue };
        let found = (|| {
            Some(Adoptable {
                pid,
                start_ticks: stat.start_ticks,
                service: get("BERTH_SERVICE")?,
                replica: get("BERTH_REPLICA")?.parse().ok()?,
                release: get("BERTH_RELEASE")?,
                instance: get(ENV_INSTANCE)?,
                port: get("PORT")?.parse().ok()?,
            })
        })();
        match found {
            Some(adoptable) if stat.pgid == pid && stat.state != 'Z' => leaders.push(adoptable),
            _ => others.push(pid),
        }
    }
    (leaders, others)
}

pub(crate) const ENV_STATE_DIR: &str = "BERTH_STATE_DIR";
/// Set by the supervisor only: what marks a process as a replica (or a replica's child).
pub(crate) const ENV_INSTANCE: &str = "BERTH_INSTANCE";

/// Starts a new instance of `replica`.
pub(crate) fn spawn(
    ctx: &Arc<Ctx>,
    config: &ServiceConfig,
    replica: u32,
    events: mpsc::UnboundedSender<InstanceEvent>,
) -> Result<InstanceHandle, String> {
    let id = new_instance_id(&config.name, replica);
    let port = free_port().map_err(|error| format!("no free port: {error}"))?;
    let cgroup = ctx.cgroups.create(&id, &config.limits).map_err(|error| format!("cgroup for {id}: {error}"))?;
    let rlimit = match ctx.cgroups.enforcement() {
        Enforcement::Rlimit => config.limits.memory_bytes,
        _ => None,
    };

    let program = resolve_program(&config.command[0], &config.workdir);
    let mut command = tokio::process::Command::new(&program);
    command
        .args(&config.command[1..])
        .current_dir(&config.workdir)
        .env_clear()
        .envs(inherited_env())
        .envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("PORT", port.to_string())
        .env("BERTH_SERVICE", &config.name)
        .env("BERTH_REPLICA", replica.to_string())
        .env("BERTH_RELEASE", &config.release)
        .env(ENV_INSTANCE, &id)
        .env(ENV_STATE_DIR, &ctx.state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(ctx.logs.child_stdio(&id, Stream::Stdout).map_err(|error| format!("stdout pipe: {error}"))?)
        .stderr(ctx.logs.child_stdio(&id, Stream::Stderr).map_err(|error| format!("stderr pipe: {error}"))?)
        .process_group(0)
        .kill_on_drop(false);
    let join_fds: Vec<RawFd> = cgroup.as_ref().map(InstanceCgroup::join_fds).unwrap_or_default();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system calls
    // (write(2) to already-open fds, setrlimit(2)); it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            crate::cgroup::join_in_child(&join_fds)?;
            if let Some(bytes) = rlimit {
                crate::cgroup::apply_rlimit_in_child(bytes)?;
            }
            Ok(())
        });
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            if let Some(cgroup) = &cgroup {
                cgroup.remove();
            }
            ctx.logs.remove_fifos(&id);
            return Err(format!("{}: {error}", program.display()));
        }
    };
    let pid = child.id().map(|pid| pid as i32).ok_or("the child exited before it had a pid")?;
    for stream in [Stream::Stdout, Stream::Stderr] {
        if let Err(error) = ctx.logs.attach(&config.name, replica, &id, stream) {
            warn!(service = %config.name, replica, error = %error, "cannot capture replica output");
        }
    }
    info!(service = %config.name, replica, instance = %id, pid, port, "replica started");
    ctx.logs.record(&config.name, replica, &id, &format!("started pid {pid} on port {port}"));
    let release = config.release.clone();
    Ok(launch(ctx, config, replica, release, id, pid, port, Waiter::Child(child), cgroup, false, events))
}

/// Takes over a replica process left running by an earlier daemon.
pub(crate) fn adopt(
    ctx: &Arc<Ctx>,
    config: &ServiceConfig,
    found: Adoptable,
    events: mpsc::UnboundedSender<InstanceEvent>,
) -> Result<InstanceHandle, String> {
    let pidfd = Pid::from_raw(found.pid)
        .ok_or("pid 0")
        .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK).map_err(|_| "pidfd"))
        .map_err(|error| format!("cannot watch pid {}: {error}", found.pid))?;
    if !procfs::is_alive(found.pid, found.start_ticks) {
        return Err(format!("pid {} is gone", found.pid));
    }
    // SAFETY: `pidfd` is an open OwnedFd moved into the AsyncFd, which owns it until dropped.
    let pidfd =
        unsafe { AsyncFd::register(pidfd) }.map_err(|error| format!("cannot watch pid {}: {error}", found.pid))?;
    for stream in [Stream::Stdout, Stream::Stderr] {
        if let Err(error) = ctx.logs.attach(&config.name, found.replica, &found.instance, stream) {
            warn!(service = %config.name, replica = found.replica, error = %error, "cannot capture replica output");
        }
    }
    let cgroup = ctx.cgroups.open(&found.instance);
    info!(service = %config.name, replica = found.replica, instance = %found.instance, pid = found.pid, "replica adopted");
    ctx.logs.record(
        &config.name,
        found.replica,
        &found.instance,
        &format!("adopted pid {} after a daemon restart", found.pid),
    );
    let mut handle = launch(
        ctx,
        config,
        found.replica,
        found.release,
        found.instance,
        found.pid,
        found.port,
        Waiter::Pidfd(pidfd),
        cgroup,
        true,
        events,
    );
    if let Some(started_at) = procfs::stat(found.pid).and_then(|stat| procfs::started_at(&stat)) {
        handle.started_at = started_at;
        let age = SystemTime::now().duration_since(started_at).unwrap_or_default();
        handle.started = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
    }
    Ok(handle)
}

/// Kills a process group found at startup that nobody claimed.
pub(crate) fn kill_group(pgid: i32) {
    if let Some(pid) = Pid::from_raw(pgid) {
        let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        let _ = rustix::process::kill_process(pid, Signal::KILL);
    }
}

#[allow(clippy::too_many_arguments)]
fn launch(
    ctx: &Arc<Ctx>,
    config: &ServiceConfig,
    replica: u32,
    release: String,
    id: String,
    pid: i32,
    port: u16,
    waiter: Waiter,
    cgroup: Option<InstanceCgroup>,
    adopted: bool,
    events: mpsc::UnboundedSender<InstanceEvent>,
) -> InstanceHandle {
    let (stop_tx, stop_rx) = oneshot::channel();
    let view = Arc::new(Mutex::new(InstanceView::default()));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let task = InstanceTask {
        service: config.name.clone(),
        replica,
        id: id.clone(),
        pid,
        addr,
        health: config.health.clone(),
        memory_limit: config.limits.memory_bytes,
        drain: ctx.drain.clone(),
        cgroup: cgroup.map(Arc::new),
        view: view.clone(),
        events,
    };
    tokio::spawn(task.run(waiter, stop_rx));
    InstanceHandle {
        id,
        replica,
        release,
        pid,
        addr,
        started_at: SystemTime::now(),
        started: Instant::now(),
        adopted,
        view,
        stop_tx: Some(stop_tx),
    }
}

enum Waiter {
    Child(tokio::process::Child),
    Pidfd(AsyncFd<OwnedFd>),
}

/// How a process ended; both `None` when it was not our child.
#[derive(Debug, Clone, Copy)]
struct ExitStatus {
    code: Option<i32>,
    signal: Option<i32>,
}

impl Waiter {
    /// Waits for the process to exit. Cancel-safe.
    async fn wait(&mut self) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        match self {
            Waiter::Child(child) => match child.wait().await {
                Ok(status) => ExitStatus { code: status.code(), signal: status.signal() },
                Err(_) => ExitStatus { code: None, signal: None },
            },
            Waiter::Pidfd(fd) => {
                // A pidfd becomes readable when the process exits.
                let _ = fd.readable().await;
                ExitStatus { code: None, signal: None }
            }
        }
    }
}

struct InstanceTask {
    service: String,
    replica: u32,
    id: String,
    pid: i32,
    addr: SocketAddr,
    health: HealthConfig,
    memory_limit: Option<u64>,
    drain: Option<crate::config::DrainHook>,
    cgroup: Option<Arc<InstanceCgroup>>,
    view: Arc<Mutex<InstanceView>>,
    events: mpsc::UnboundedSender<InstanceEvent>,
}

impl InstanceTask {
    async fn run(self, mut waiter: Waiter, mut stop_rx: oneshot::Receiver<Stop>) {
        let mut tracker = HealthTracker::new(&self.health, Instant::now());
        let mut sampler = CpuSampler::new();
        let mut next_probe = tokio::time::Instant::now();
        let reason = loop {
            let probing = tracker.phase() != Phase::Failed;
            tokio::select! {
                status = waiter.wait() => break self.classify(status),
                stop = &mut stop_rx => {
                    let stop = stop.unwrap_or(Stop { grace: Duration::from_secs(1), drain: false });
                    if let (true, Some(drain)) = (stop.drain, &self.drain) {
                        // The process may exit while draining; that ends the wait too.
                        tokio::select! {
                            _ = drain(self.id.clone(), stop.grace) => {}
                            status = waiter.wait() => break self.classify(status),
                        }
                    }
                    self.terminate(&mut waiter, stop.grace).await;
                    break ExitReason::Stopped;
                }
                outcome = probe_at(next_probe, self.addr, &self.health), if probing => {
                    let now = Instant::now();
                    let transition = tracker.observe(outcome == ProbeOutcome::Healthy, now);
                    self.update_view(&outcome, &tracker, &mut sampler, now);
                    next_probe = tokio::time::Instant::now() + tracker.next_probe_in(&self.health);
                    let event = match transition {
                        Transition::None => None,
                        Transition::BecameHealthy => Some(InstanceEvent::Healthy { id: self.id.clone() }),
                        Transition::BecameUnhealthy => {
                            Some(InstanceEvent::Unhealthy { id: self.id.clone(), detail: outcome.describe() })
                        }
                        Transition::NeverHealthy => Some(InstanceEvent::NeverHealthy { id: self.id.clone() }),
                    };
                    if let Some(event) = event {
                        let _ = self.events.send(event);
                    }
                }
            }
        };
        // Whatever the replica left behind in its group or cgroup goes with it.
        kill_group(self.pid);
        if let Some(cgroup) = self.cgroup.clone() {
            // Emptying and removing a cgroup waits for the kernel; keep that off the async workers.
            let _ = tokio::task::spawn_blocking(move || {
                cgroup.kill_all();
                cgroup.remove();
            })
            .await;
        }
        debug!(service = %self.service, replica = self.replica, instance = %self.id, reason = %reason, "instance ended");
        let _ = self.events.send(InstanceEvent::Exited { id: self.id, reason });
    }

    fn classify(&self, status: ExitStatus) -> ExitReason {
        let oom = self.cgroup.as_ref().is_some_and(|cgroup| cgroup.oom_kills() > 0);
        match status {
            ExitStatus { signal: Some(libc::SIGKILL), .. } if oom => {
                ExitReason::OomKilled { limit_bytes: self.memory_limit }
            }
            ExitStatus { signal: Some(signal), .. } => ExitReason::Signaled { signal },
            ExitStatus { code: Some(code), .. } => ExitReason::Exited { code },
            _ if oom => ExitReason::OomKilled { limit_bytes: self.memory_limit },
            _ => ExitReason::Vanished,
        }
    }

    /// SIGTERM to the group (with SIGCONT, so a stopped process can act on it), `grace`, then SIGKILL.
    async fn terminate(&self, waiter: &mut Waiter, grace: Duration) {
        let Some(pgid) = Pid::from_raw(self.pid) else { return };
        let _ = rustix::process::kill_process_group(pgid, Signal::TERM);
        let _ = rustix::process::kill_process_group(pgid, Signal::CONT);
        if tokio::time::timeout(grace, waiter.wait()).await.is_ok() {
            return;
        }
        warn!(service = %self.service, replica = self.replica, pid = self.pid, grace_ms = grace.as_millis() as u64, "replica ignored SIGTERM, killing it");
        let _ = rustix::process::kill_process_group(pgid, Signal::KILL);
        if let Some(cgroup) = self.cgroup.clone() {
            let _ = tokio::task::spawn_blocking(move || cgroup.kill_all()).await;
        }
        // SIGKILL cannot be ignored; the bound only guards against a process stuck in the kernel.
        let _ = tokio::time::timeout(Duration::from_secs(10), waiter.wait()).await;
    }

    fn update_view(&self, outcome: &ProbeOutcome, tracker: &HealthTracker, sampler: &mut CpuSampler, now: Instant) {
        let stat = procfs::stat(self.pid);
        let cpu = sampler.sample(self.pid, now);
        if let Ok(mut view) = self.view.lock() {
            view.last_probe = Some(outcome.describe());
            view.consecutive_failures = tracker.consecutive_failures();
            if cpu.is_some() {
                view.cpu_percent = cpu;
            }
            // The process's own resident memory, as `ps` shows it. The cgroup's usage would also count
            // page cache, charged to whichever replica first touched a shared file.
            view.rss_bytes = stat.map(|stat| stat.rss_bytes);
        }
    }
}

async fn probe_at(at: tokio::time::Instant, addr: SocketAddr, health: &HealthConfig) -> ProbeOutcome {
    tokio::time::sleep_until(at).await;
    probe(addr, &health.path, health.timeout).await
}

/// A port the kernel just handed out; the replica binds it moments later.
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn resolve_program(program: &str, workdir: &Path) -> PathBuf {
    let path = Path::new(program);
    if path.is_relative() && program.contains('/') { workdir.join(path) } else { path.to_path_buf() }
}

/// The few variables of the daemon's environment a replica inherits; everything else is explicit.
fn inherited_env() -> impl Iterator<Item = (String, String)> {
    const KEEP: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR"];
    std::env::vars().filter(|(key, _)| KEEP.contains(&key.as_str()))
}

fn new_instance_id(service: &str, replica: u32) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let millis = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) & 0xfff;
    format!("{service}-{replica}-{:x}{seq:03x}", millis & 0x00ff_ffff_ffff)
}
