//! The service actor: owns one service's replica slots and decides when instances start, enter rotation,
//! get replaced and stop. It reacts to commands (scale, restart, stop...) and to instance events; it never
//! blocks and never touches a process itself.
//!
//! A new config rolls the service like a Kubernetes Deployment: slots whose instance runs another release
//! are marked stale, and each pass of [`ServiceActor::roll`] replaces as many of them as `max_surge` (a
//! successor started beside a serving instance, which leaves once the successor is healthy) and
//! `max_unavailable` (an instance stopped first, its successor started once it is gone) allow. Retiring
//! instances count as running, so at most `replicas + max_surge` processes exist because of a rollout.

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
    /// A replacement starting beside `current` during a rolling replacement; never in rotation: it takes
    /// `current`'s place once healthy. Always runs the config's release.
    successor: Option<InstanceHandle>,
    /// `current` is to be replaced by an instance of the config (another release, or a restart asked for).
    stale: bool,
    /// `current` was stopped by a rolling replacement; the new instance starts once there is room under
    /// `replicas + max_surge`.
    vacated: bool,
    tracker: RestartTracker,
    /// Failures of this slot's successors; kept apart from `tracker`, which a healthy `current` resets.
    successor_tracker: RestartTracker,
    /// No successor starts before this (backoff after a failed one).
    successor_at: Option<Instant>,
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
            stale: false,
            vacated: false,
            tracker: RestartTracker::default(),
            successor_tracker: RestartTracker::default(),
            successor_at: None,
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
            Command::Restart => self.mark_stale(|_| true),
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
        let release_changed = config.release != self.config.release;
        let runs_the_same = what_runs(&config) == what_runs(&self.config);
        self.config = config;
        self.scale(n_replicas);
        if runs_the_same {
            return;
        }
        info!(service = %self.config.name, release = %self.config.release, "new config: rolling replacement");
        if release_changed {
            // Instances already on the release stay (a rollback mid-rollout restarts nothing that runs it).
            let release = self.config.release.clone();
            self.mark_stale(|handle| handle.release != release);
        } else {
            // Same release, other settings: every instance runs an outdated config.
            self.mark_stale(|_| true);
        }
    }

    /// Marks for replacement every slot whose current instance is `outdated`, and unmarks the others.
    /// Successors of an outdated config are retired at once: they are not in rotation, and will never be.
    fn mark_stale(&mut self, outdated: impl Fn(&InstanceHandle) -> bool) {
        let mut retired = Vec::new();
        for slot in &mut self.slots {
            slot.stale = slot.current.as_ref().is_some_and(&outdated);
            slot.successor_tracker = RestartTracker::default();
            slot.successor_at = None;
            if let Some(successor) = slot.successor.take_if(|successor| outdated(successor)) {
                retired.push(successor);
            }
        }
        for handle in retired {
            self.record(handle.replica, &handle.id, "no longer wanted (the config changed); stopping it");
            self.retire(handle, UNHEALTHY_GRACE, ExitReason::Stopped);
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
    }

    fn stop_all(&mut self) {
        self.stopped = true;
        let grace = self.config.stop_timeout;
        let handles: Vec<InstanceHandle> = self
            .slots
            .iter_mut()
            .flat_map(|slot| {
                slot.restart_at = None;
                slot.healthy_since = None;
                slot.stale = false;
                slot.vacated = false;
                slot.successor_at = None;
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
                    // Rolling replacement: the successor is ready, the old instance drains out.
                    let old = slot.current.take();
                    slot.current = slot.successor.take();
                    slot.healthy_since = Some(now);
                    slot.stale = false;
                    slot.successor_tracker = RestartTracker::default();
                    slot.successor_at = None;
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
            let handle = slot.successor.take();
            if let Some(handle) = &handle {
                // The serving instance stays; the next successor waits out the backoff.
                let delay = slot.successor_tracker.on_exit(&backoff, handle.started.elapsed(), false);
                slot.successor_at = Some(Instant::now() + delay);
            }
            handle
        } else {
            let handle = slot.current.take();
            if let Some(handle) = &handle {
                let was_healthy = slot.healthy_since.is_some();
                let delay = slot.tracker.on_exit(&backoff, handle.started.elapsed(), was_healthy);
                slot.restart_at = Some(Instant::now() + delay);
                slot.restarts += 1;
                slot.healthy_since = None;
                promote_successor(slot);
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
            if let Some(handle) = slot.successor.take() {
                let delay = slot.successor_tracker.on_exit(&backoff, handle.started.elapsed(), false);
                slot.successor_at = Some(now + delay);
            }
        } else if let Some(handle) = slot.current.take() {
            let was_healthy = slot.healthy_since.take().is_some();
            let delay = slot.tracker.on_exit(&backoff, handle.started.elapsed(), was_healthy);
            slot.restart_at = Some(now + delay);
            slot.restarts += 1;
            promote_successor(slot);
            if slot.tracker.crash_loop(&backoff) {
                warn!(service = %self.config.name, replica = index, failures = slot.tracker.fast_failures(), delay_ms = delay.as_millis() as u64, "replica is crash-looping");
            }
        }
        slot.last_exit = Some((reason.clone(), SystemTime::now()));
        warn!(service = %self.config.name, replica = index, instance = %id, reason = %reason, "replica exited");
        self.record(index, id, &format!("{reason}"));
    }

    /// Starts what should run and is not running: empty slots whose backoff has passed, and the next steps
    /// of a rolling replacement.
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
            if slot.current.is_none() && !slot.vacated && slot.restart_at.is_none_or(|at| at <= now) {
                slot.restart_at = None;
                let started = self.start_instance(index as u32);
                let slot = &mut self.slots[index];
                slot.current = started;
                slot.stale = false;
            }
        }
        self.roll(now);
    }

    /// The rolling replacement's next steps, within its bounds: at most `replicas + max_surge` instances
    /// (retiring ones included) and at least `replicas - max_unavailable` in rotation.
    fn roll(&mut self, now: Instant) {
        let n_replicas = self.config.replicas;
        let max_surge = self.config.effective_max_surge();
        let max_live = n_replicas.saturating_add(max_surge);
        let min_in_rotation = n_replicas.saturating_sub(self.config.max_unavailable);
        let mut n_live = self.retiring.len() as u32;
        let mut n_successors = 0;
        let mut n_in_rotation = 0;
        for slot in &self.slots {
            n_live += u32::from(slot.current.is_some()) + u32::from(slot.successor.is_some());
            n_successors += u32::from(slot.successor.is_some());
            n_in_rotation += u32::from(slot.current.is_some() && slot.healthy_since.is_some());
        }
        // Vacated slots are out of rotation already: they get the room first.
        self.start_vacated(&mut n_live, max_live);
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if !slot.stale || slot.successor.is_some() || slot.current.is_none() {
                continue;
            }
            if slot.healthy_since.is_none() {
                // Not serving anyway: stop it and start its replacement once there is room.
                let Some(handle) = slot.current.take() else { continue };
                slot.stale = false;
                slot.vacated = true;
                self.retire(handle, UNHEALTHY_GRACE, ExitReason::Stopped);
                continue;
            }
            if let Some(at) = slot.successor_at {
                if at > now {
                    continue;
                }
                slot.successor_at = None;
            }
            if n_successors < max_surge && n_live < max_live {
                let started = self.start_instance(index as u32);
                if let Some(successor) = started {
                    self.record(
                        index as u32,
                        &successor.id,
                        "started as a successor; the current instance serves until it is healthy",
                    );
                    self.slots[index].successor = Some(successor);
                    n_live += 1;
                    n_successors += 1;
                }
                continue;
            }
            // A slot whose successors failed keeps its serving instance: taking it out first would only
            // swap a working replica for one that does not start.
            let successors_failed = slot.successor_tracker.fast_failures() > 0;
            if n_in_rotation > min_in_rotation && !successors_failed {
                let Some(handle) = slot.current.take() else { continue };
                slot.healthy_since = None;
                slot.stale = false;
                slot.vacated = true;
                n_in_rotation -= 1;
                self.record(index as u32, &handle.id, "stopping it to replace it (max_unavailable)");
                self.retire(handle, self.config.stop_timeout, ExitReason::Stopped);
            }
        }
        self.start_vacated(&mut n_live, max_live);
    }

    fn start_vacated(&mut self, n_live: &mut u32, max_live: u32) {
        for index in 0..self.slots.len() {
            if !self.slots[index].vacated || *n_live >= max_live {
                continue;
            }
            let started = self.start_instance(index as u32);
            let slot = &mut self.slots[index];
            slot.vacated = false;
            // A failed start leaves the slot to the ordinary restart backoff.
            *n_live += u32::from(started.is_some());
            slot.current = started;
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
        let restarts = self.slots.iter().filter(|slot| slot.current.is_none() && !slot.vacated);
        let successors = self.slots.iter().filter(|slot| slot.stale && slot.successor.is_none());
        let restart_at = restarts.filter_map(|slot| slot.restart_at);
        restart_at.chain(successors.filter_map(|slot| slot.successor_at)).min()
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
                // Waiting for its stopped predecessor to exit.
                (None, _) if slot.vacated => ReplicaState::Starting,
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
        let on_release = |slot: &&Slot| {
            slot.healthy_since.is_some() && slot.current.as_ref().is_some_and(|h| h.release == self.config.release)
        };
        let updated_replicas = self.slots.iter().filter(on_release).count() as u32;
        let converged = !self.stopped
            && self.retiring.is_empty()
            && self.slots.iter().all(|slot| !slot.stale && !slot.vacated && slot.successor.is_none())
            && updated_replicas as usize == self.slots.len();
        ServiceStatus {
            name: self.config.name.clone(),
            release: self.config.release.clone(),
            desired_replicas: self.config.replicas,
            state,
            replicas,
            converged,
            updated_replicas,
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
        release: handle.map(|h| h.release.clone()),
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

/// What the processes of `config` run, whatever the replica count and rollout bounds: two configs with the
/// same `what_runs` need no replacement.
fn what_runs(config: &ServiceConfig) -> ServiceConfig {
    ServiceConfig { replicas: 0, max_surge: 0, max_unavailable: 0, ..config.clone() }
}

/// The serving instance is gone: a successor starting beside it (on the config's release) takes its place,
/// rather than a third instance being started for the slot.
fn promote_successor(slot: &mut Slot) {
    if let Some(successor) = slot.successor.take() {
        slot.current = Some(successor);
        slot.restart_at = None;
        slot.stale = false;
        slot.successor_at = None;
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
