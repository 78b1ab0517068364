//! The service actor: owns one service's replica slots and decides when instances start, enter rotation,
//! get replaced and stop. It reacts to commands (scale, restart, stop...) and to instance events; it never
//! blocks and never touches a process itself.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::backoff::{RestartBackoff, RestartTracker};
use crate::config::ServiceConfig;
use crate::instance::{self, Adoptable, Ctx, InstanceEvent, InstanceHandle, Stop};
use crate::status::{Endpoint, Endpoints, ExitReason, ReplicaState, ReplicaStatus, ServiceState, ServiceStatus};

pub(crate) enum Command {
    Update(Box<ServiceConfig>),
    Scale(u32),
    Restart,
    Stop,
    Start,
    Status(oneshot::Sender<ServiceStatus>),
    Shutdown(oneshot::Sender<()>),
}

/// A hung process cannot drain; an unhealthy instance gets only this much time after SIGTERM.
const UNHEALTHY_GRACE: Duration = Duration::from_secs(2);

pub(crate) fn spawn_actor(
    ctx: Arc<Ctx>,
    config: ServiceConfig,
    backoff: RestartBackoff,
    adoptable: Vec<Adoptable>,
    endpoints: watch::Sender<Endpoints>,
    running: bool,
) -> mpsc::UnboundedSender<Command> {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut actor = ServiceActor {
        ctx,
        slots: (0..config.replicas).map(Slot::new).collect(),
        config,
        backoff,
        stopped: !running,
        retiring: Vec::new(),
        rolling: VecDeque::new(),
        events_tx,
        endpoints,
        published: None,
        shutdown_waiters: Vec::new(),
    };
    actor.adopt(adoptable);
    if !running {
        actor.stop_all();
    }
    tokio::spawn(actor.run(cmd_rx, events_rx));
    cmd_tx
}

struct Slot {
    index: u32,
    /// The instance serving this slot, or starting to.
    current: Option<InstanceHandle>,
    healthy_since: Option<Instant>,
    /// A replacement starting beside `current` during a rolling restart.
    successor: Option<InstanceHandle>,
    tracker: RestartTracker,
    restarts: u32,
    last_exit: Option<(ExitReason, SystemTime)>,
    restart_at: Option<Instant>,
}

impl Slot {
    fn new(index: u32) -> Slot {
        Slot {
            index,
            current: None,
            healthy_since: None,
            successor: None,
            tracker: RestartTracker::default(),
            restarts: 0,
            last_exit: None,
            restart_at: None,
        }
    }
}

struct Retiring {
    handle: InstanceHandle,
    /// What to remember as the slot's last exit once the process is gone.
    reason: ExitReason,
}

struct ServiceActor {
    ctx: Arc<Ctx>,
    config: ServiceConfig,
    backoff: RestartBackoff,
    stopped: bool,
    slots: Vec<Slot>,
    retiring: Vec<Retiring>,
    rolling: VecDeque<u32>,
    events_tx: mpsc::UnboundedSender<InstanceEvent>,
    endpoints: watch::Sender<Endpoints>,
    published: Option<Vec<Endpoint>>,
    shutdown_waiters: Vec<oneshot::Sender<()>>,
}

impl ServiceActor {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::UnboundedReceiver<Command>,
        mut events_rx: mpsc::UnboundedReceiver<InstanceEvent>,
    ) {
        loop {
            self.reconcile();
            self.publish_endpoints();
            if !self.shutdown_waiters.is_empty() && self.is_idle() {
                break;
            }
            let timer = self.next_timer();
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    // Every handle is gone: the supervisor itself was dropped; stop everything.
                    None => self.on_command(Command::Shutdown(oneshot::channel().0)),
                },
                Some(event) = events_rx.recv() => self.on_event(event),
                _ = sleep_until(timer) => {}
            }
        }
        self.withdraw_endpoints();
        for waiter in self.shutdown_waiters.drain(..) {
            let _ = waiter.send(());
        }
        info!(service = %self.config.name, "service stopped");
    }

    fn adopt(&mut self, adoptable: Vec<Adoptable>) {
        for found in adoptable {
            let index = found.replica;
            let pid = found.pid;
            let adopted = instance::adopt(&self.ctx, &self.config, found, self.events_tx.clone());
            match (adopted, self.slots.get_mut(index as usize)) {
                (Ok(handle), Some(slot)) if slot.current.is_none() => slot.current = Some(handle),
                (Ok(handle), _) => self.retire(handle, UNHEALTHY_GRACE, ExitReason::Stopped),
                (Err(error), _) => warn!(service = %self.config.name, pid, error = %error, "cannot adopt replica"),
            }
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Update(config) => self.update(*config),
            Command::Scale(n_replicas) => self.scale(n_replicas),
            Command::Restart => self.rolling = (0..self.slots.len() as u32).collect(),
            Command::Stop => self.stop_all(),
            Command::Start => {
                self.stopped = false;
                for slot in &mut self.slots {
                    slot.tracker = RestartTracker::default();
                    slot.restart_at = None;
                }
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown(reply) => {
                self.stop_all();
                self.shutdown_waiters.push(reply);
            }
        }
    }

    fn update(&mut self, config: ServiceConfig) {
        if config == self.config {
            return;
        }
        let n_replicas = config.replicas;
        let release_changed = ServiceConfig { replicas: self.config.replicas, ..config.clone() } != self.config;
        self.config = config;
        self.scale(n_replicas);
        if release_changed {
            info!(service = %self.config.name, release = %self.config.release, "new config: rolling restart");
            self.rolling = (0..self.slots.len() as u32).collect();
        }
    }

    fn scale(&mut self, n_replicas: u32) {
        self.config.replicas = n_replicas;
        let n_slots = self.slots.len() as u32;
        if n_replicas > n_slots {
            self.slots.extend((n_slots..n_replicas).map(Slot::new));
        }
        while self.slots.len() as u32 > n_replicas {
            let Some(mut slot) = self.slots.pop() else { break };
            for handle in [slot.current.take(), slot.successor.take()].into_iter().flatten() {
                self.retire(handle, self.config.stop_timeout, ExitReason::Stopped);
            }
        }
        self.rolling.retain(|&index| index < n_replicas);
    }

    fn stop_all(&mut self) {
        self.stopped = true;
        self.rolling.clear();
        let grace = self.config.stop_timeout;
        let handles: Vec<InstanceHandle> = self
            .slots
            .iter_mut()
            .flat_map(|slot| {
                slot.restart_at = None;
                slot.healthy_since = None;
                [slot.current.take(), slot.successor.take()]
            })
            .flatten()
            .collect();
        for handle in handles {
            self.retire(handle, grace, ExitReason::Stopped);
        }
    }

    fn on_event(&mut self, event: InstanceEvent) {
        let now = Instant::now();
        match event {
            InstanceEvent::Healthy { id } => {
                let Some(slot) = self.slots.iter_mut().find(|slot| slot_has(slot, &id)) else { return };
                if slot.successor.as_ref().is_some_and(|s| s.id == id) {
                    // Rolling restart: the replacement is ready, the old instance drains out.
                    let old = slot.current.take();
                    slot.current = slot.successor.take();
                    slot.healthy_since = Some(now);
                    let index = slot.index;
                    if let Some(old) = old {
                        self.retire(old, self.config.stop_timeout, ExitReason::Stopped);
                    }
                    self.record(index, &id, "healthy, in rotation (replaced the previous instance)");
                } else {
                    slot.healthy_since = Some(now);
                    let index = slot.index;
                    self.record(index, &id, "healthy, in rotation");
                }
            }
            InstanceEvent::Unhealthy { id, detail } => {
                self.replace(&id, ExitReason::Unhealthy { detail });
            }
            InstanceEvent::NeverHealthy { id } => self.replace(&id, ExitReason::NeverHealthy),
            InstanceEvent::Exited { id, reason } => self.on_exit(&id, reason, now),
        }
    }

    /// Surge-first replacement of a failing instance: it leaves rotation now and is stopped with a short
    /// grace, while a new instance starts at once beside it (unless the slot is failing fast: then backoff).
    fn replace(&mut self, id: &str, reason: ExitReason) {
        let backoff = self.backoff;
        let Some(slot) = self.slots.iter_mut().find(|slot| slot_has(slot, id)) else { return };
        let index = slot.index;
        let handle = if slot.successor.as_ref().is_some_and(|s| s.id == id) {
            slot.successor.take()
        } else {
            let handle = slot.current.take();
            if let Some(handle) = &handle {
                let was_healthy = slot.healthy_since.is_some();
                let delay = slot.tracker.on_exit(&backoff, handle.started.elapsed(), was_healthy);
                slot.restart_at = Some(Instant::now() + delay);
                slot.restarts += 1;
                slot.healthy_since = None;
            }
            handle
        };
        let Some(handle) = handle else { return };
        warn!(service = %self.config.name, replica = index, instance = %id, reason = %reason, "replacing replica");
        self.record(index, id, &format!("{reason}; replacing it"));
        self.retire(handle, UNHEALTHY_GRACE, reason);
    }

    fn on_exit(&mut self, id: &str, reason: ExitReason, now: Instant) {
        if let Some(pos) = self.retiring.iter().position(|r| r.handle.id == id) {
            let retired = self.retiring.swap_remove(pos);
            let remembered = match (&retired.reason, &reason) {
                // The process died of something worse than our SIGTERM: remember that.
                (ExitReason::Stopped, ExitReason::OomKilled { .. }) => reason,
                _ => retired.reason,
            };
            if let Some(slot) = self.slots.get_mut(retired.handle.replica as usize)
                && (remembered != ExitReason::Stopped || slot.last_exit.is_none())
            {
                slot.last_exit = Some((remembered, SystemTime::now()));
            }
            return;
        }
        let backoff = self.backoff;
        let Some(slot) = self.slots.iter_mut().find(|slot| slot_has(slot, id)) else { return };
        let index = slot.index;
        if slot.successor.as_ref().is_some_and(|s| s.id == id) {
            slot.successor = None;
        } else if let Some(handle) = slot.current.take() {
            let was_healthy = slot.healthy_since.take().is_some();
            let delay = slot.tracker.on_exit(&backoff, handle.started.elapsed(), was_healthy);
            slot.restart_at = Some(now + delay);
            slot.restarts += 1;
            if slot.tracker.crash_loop(&backoff) {
                warn!(service = %self.config.name, replica = index, failures = slot.tracker.fast_failures(), delay_ms = delay.as_millis() as u64, "replica is crash-looping");
            }
        }
        slot.last_exit = Some((reason.clone(), SystemTime::now()));
        warn!(service = %self.config.name, replica = index, instance = %id, reason = %reason, "replica exited");
        self.record(index, id, &format!("{reason}"));
    }

    /// Starts what should run and is not running: empty slots whose backoff has passed, and the next step
    /// of a rolling restart.
    fn reconcile(&mut self) {
        if self.stopped {
            return;
        }
        let now = Instant::now();
        let backoff = self.backoff;
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if let Some(since) = slot.healthy_since {
                slot.tracker.on_healthy_for(&backoff, since.elapsed());
            }
            if slot.current.is_none() && slot.restart_at.is_none_or(|at| at <= now) {
                slot.restart_at = None;
                let started = self.start_instance(index as u32);
                self.slots[index].current = started;
            }
        }
        let rolling_in_progress = self.slots.iter().any(|slot| slot.successor.is_some());
        if rolling_in_progress {
            return;
        }
        while let Some(index) = self.rolling.pop_front() {
            let Some(slot) = self.slots.get(index as usize) else { continue };
            if slot.healthy_since.is_some() {
                let successor = self.start_instance(index);
                self.slots[index as usize].successor = successor;
                return;
            }
            // Not serving anyway: replace it directly.
            if let Some(handle) = self.slots[index as usize].current.take() {
                self.retire(handle, UNHEALTHY_GRACE, ExitReason::Stopped);
                let started = self.start_instance(index);
                self.slots[index as usize].current = started;
            }
        }
    }

    fn start_instance(&mut self, index: u32) -> Option<InstanceHandle> {
        match instance::spawn(&self.ctx, &self.config, index, self.events_tx.clone()) {
            Ok(handle) => Some(handle),
            Err(error) => {
                warn!(service = %self.config.name, replica = index, error = %error, "cannot start replica");
                let backoff = self.backoff;
                let slot = &mut self.slots[index as usize];
                let delay = slot.tracker.on_exit(&backoff, Duration::ZERO, false);
                slot.restart_at = Some(Instant::now() + delay);
                slot.last_exit = Some((ExitReason::SpawnFailed { error: error.clone() }, SystemTime::now()));
                self.ctx.logs.record(&self.config.name, index, "-", &format!("failed to start: {error}"));
                None
            }
        }
    }

    fn retire(&mut self, mut handle: InstanceHandle, grace: Duration, reason: ExitReason) {
        // An orderly stop drains first; a failing instance is not worth waiting for.
        handle.stop(Stop { grace, drain: reason == ExitReason::Stopped });
        self.retiring.push(Retiring { handle, reason });
    }

    fn record(&self, replica: u32, instance: &str, line: &str) {
        self.ctx.logs.record(&self.config.name, replica, instance, line);
    }

    fn is_idle(&self) -> bool {
        self.retiring.is_empty() && self.slots.iter().all(|slot| slot.current.is_none() && slot.successor.is_none())
    }

    fn next_timer(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        self.slots.iter().filter(|slot| slot.current.is_none()).filter_map(|slot| slot.restart_at).min()
    }

    fn in_rotation(&self) -> Vec<Endpoint> {
        self.slots
            .iter()
            .filter(|slot| slot.healthy_since.is_some())
            .filter_map(|slot| slot.current.as_ref())
            .map(|handle| Endpoint { replica: handle.replica, instance: handle.id.clone(), addr: handle.addr })
            .collect()
    }

    fn publish_endpoints(&mut self) {
        let now = self.in_rotation();
        if self.published.as_ref() == Some(&now) {
            return;
        }
        let name = self.config.name.clone();
        self.endpoints.send_modify(|all| {
            Arc::make_mut(all).insert(name, now.clone());
        });
        self.published = Some(now);
    }

    fn withdraw_endpoints(&mut self) {
        let name = &self.config.name;
        self.endpoints.send_modify(|all| {
            Arc::make_mut(all).remove(name);
        });
    }

    fn status(&self) -> ServiceStatus {
        let mut replicas = Vec::new();
        let mut n_healthy = 0;
        let mut crash_loop = false;
        for slot in &self.slots {
            let looping = slot.tracker.crash_loop(&self.backoff);
            crash_loop |= looping && slot.healthy_since.is_none();
            let state = match (&slot.current, slot.healthy_since) {
                (Some(handle), Some(_)) if handle.view().consecutive_failures > 0 => ReplicaState::Degraded,
                (Some(_), Some(_)) => ReplicaState::Healthy,
                (Some(_), None) => ReplicaState::Starting,
                (None, _) if self.stopped => ReplicaState::Stopped,
                (None, _) if looping => ReplicaState::CrashLoop,
                (None, _) => ReplicaState::Backoff,
            };
            if state == ReplicaState::Healthy || state == ReplicaState::Degraded {
                n_healthy += 1;
            }
            replicas.push(replica_row(slot, slot.current.as_ref(), state, false));
            if let Some(successor) = &slot.successor {
                replicas.push(replica_row(slot, Some(successor), ReplicaState::Starting, false));
            }
        }
        for retiring in &self.retiring {
            let Some(slot) = self.slots.get(retiring.handle.replica as usize) else {
                replicas.push(replica_row(
                    &Slot::new(retiring.handle.replica),
                    Some(&retiring.handle),
                    ReplicaState::Stopping,
                    true,
                ));
                continue;
            };
            replicas.push(replica_row(slot, Some(&retiring.handle), ReplicaState::Stopping, true));
        }
        let state = if self.stopped {
            ServiceState::Stopped
        } else if crash_loop {
            ServiceState::CrashLoop
        } else if n_healthy >= self.slots.len() {
            ServiceState::Running
        } else {
            ServiceState::Degraded
        };
        ServiceStatus {
            name: self.config.name.clone(),
            release: self.config.release.clone(),
            desired_replicas: self.config.replicas,
            state,
            replicas,
            memory_limit_bytes: self.config.limits.memory_bytes,
            memory_enforcement: self.ctx.cgroups.enforcement(),
        }
    }
}

fn replica_row(slot: &Slot, handle: Option<&InstanceHandle>, state: ReplicaState, retiring: bool) -> ReplicaStatus {
    let view = handle.map(InstanceHandle::view).unwrap_or_default();
    ReplicaStatus {
        index: slot.index,
        instance: handle.map(|h| h.id.clone()),
        state,
        pid: handle.map(|h| h.pid),
        port: handle.map(|h| h.addr.port()),
        started_at: handle.map(|h| h.started_at),
        restarts: slot.restarts,
        last_exit: slot.last_exit.clone(),
        last_probe: view.last_probe,
        in_rotation: !retiring && state != ReplicaState::Starting && handle.is_some() && slot.healthy_since.is_some(),
        adopted: handle.is_some_and(|h| h.adopted),
        cpu_percent: view.cpu_percent,
        rss_bytes: view.rss_bytes,
        retiring,
    }
}

fn slot_has(slot: &Slot, id: &str) -> bool {
    slot.current.as_ref().is_some_and(|h| h.id == id) || slot.successor.as_ref().is_some_and(|h| h.id == id)
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
