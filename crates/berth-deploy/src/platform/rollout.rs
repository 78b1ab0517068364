//! Deploys and rollouts: `[build]`, `[test]`, an immutable release, then the strategy that puts it in front
//! of users — rolling, blue-green or canary — with automatic rollback on bad numbers.
//!
//! A release rolling out beside the live one (blue-green's new set, a canary) runs as the supervisor unit
//! `<service>~next` and is the gateway group `next`; its traffic share is `Routing::next_weights`. At the
//! end, the service's own unit is moved to the release (it takes no traffic meanwhile), the `next` group
//! leaves the table and its unit is removed: the live release always ends on the service's own unit.
//!
//! The store's `DesiredService` changes only once a rollout has finished. A daemon that dies mid-rollout
//! comes back to the stored release, its `next` replicas are reaped, and the interrupted release is marked
//! rolled back (`Platform::settle_interrupted_rollout`): finished or rolled back, never half-routed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_gateway::GroupStats;
use berth_spec::{Spec, Strategy};
use berth_supervisor::logs::LogQuery;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{Platform, PlatformError, lock};
use crate::analysis::{self, Verdict};
use crate::load::LoadedService;
use crate::release::{self, Release, ReleaseOutcome, StepKind, StepOutcome};
use crate::store::DesiredService;
use crate::translate::{NEXT_GROUP, STABLE_GROUP, next_unit, release_identity, set_program, to_service_config};

/// How often a rollout looks at replicas and numbers.
const TICK: Duration = Duration::from_millis(200);
/// A canary step that cannot be judged for lack of traffic waits at most this long, then rolls back.
const MAX_JUDGE_WAIT: Duration = Duration::from_secs(30 * 60);
/// Bound on moving back to the old release after a failed rollout.
const RESTORE_DEADLINE: Duration = Duration::from_secs(120);
/// How many of the failing release's log lines a "not healthy" message quotes.
const LOG_TAIL: usize = 8;

/// `berth deploy`.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The service directory.
    pub dir: PathBuf,
    /// Overrides `[deploy] strategy`.
    pub strategy: Option<Strategy>,
    /// Deploy a separate preview copy named `<service>-<branch>`.
    pub branch: Option<String>,
}

/// `berth rollback`.
#[derive(Debug, Clone)]
pub struct RollbackRequest {
    pub service: String,
    /// The release to return to; default: the one before the live one.
    pub to: Option<u32>,
}

/// What a deploy reports as it goes; `berth deploy` prints these.
#[derive(Debug, Clone, PartialEq)]
pub enum DeployEvent {
    /// A step started (`build`, `test`, `snapshot`, `rollout`...).
    Step {
        step: String,
        detail: String,
    },
    /// A line of output of `[build]` or `[test]`.
    Output {
        step: String,
        line: String,
    },
    Progress {
        message: String,
    },
    /// The release serves all the traffic. The rollout may go on (a warm old set, a watch window) and still
    /// roll back; `Done` says how it ended.
    Live {
        message: String,
    },
    /// The last event: where the deploy ended.
    Done {
        service: String,
        release: Option<u32>,
        ok: bool,
        message: String,
    },
}

/// Steering a rollout under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Skip the remaining steps and waiting windows: make the release live now.
    Promote,
    /// Roll back now.
    Abort,
}

/// A rollout under way, as the platform tracks it.
pub(super) struct Running {
    release: Option<u32>,
    control: mpsc::UnboundedSender<Control>,
}

/// Sends events to the client if it is still listening; a deploy goes on without it.
#[derive(Clone)]
struct Events(mpsc::UnboundedSender<DeployEvent>);

impl Events {
    fn step(&self, step: &str, detail: impl Into<String>) {
        let _ = self.0.send(DeployEvent::Step { step: step.to_owned(), detail: detail.into() });
    }

    fn live(&self, message: impl Into<String>) {
        let _ = self.0.send(DeployEvent::Live { message: message.into() });
    }

    fn progress(&self, message: impl Into<String>) {
        let message = message.into();
        info!(target: "berth::deploy", "{message}");
        let _ = self.0.send(DeployEvent::Progress { message });
    }
}

/// How a rollout ended, for the release record and the last event.
enum Ended {
    Live(String),
    /// The release never served (it failed its deadline, its build...): the old one still runs.
    Failed(String),
    /// The release served, then was taken back (analysis, abort, watch window).
    RolledBack(String),
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A preview copy's name and host names: `<service>-<branch>`, reachable at `<service>-<branch>.localhost`
/// and, for each declared domain, at `<service>-<branch>.<domain without its first label>`.
pub(super) fn rename_for_preview(spec: &mut Spec, name: &str) {
    let domains = spec
        .domains
        .iter()
        .filter_map(|domain| domain.get_ref().split_once('.').map(|(_, parent)| format!("{name}.{parent}")))
        .map(|domain| toml::Spanned::new(0..0, domain))
        .collect();
    spec.domains = domains;
    spec.name = toml::Spanned::new(0..0, name.to_owned());
    // A preview has no dedicated pools: they exist for partners of the live service.
    spec.pools.clear();
}

impl Platform {
    /// Builds, tests and snapshots `request.dir` into a new release and rolls it out. Events go to `events`
    /// as the deploy goes; the deploy goes on if nobody listens. Returns once it has ended.
    pub async fn deploy(self: &Arc<Self>, request: DeployRequest, events: mpsc::UnboundedSender<DeployEvent>) {
        let events = Events(events);
        let (service, release, outcome) = match self.deploy_inner(&request, &events).await {
            Ok((service, release, outcome)) => (service, Some(release), outcome),
            Err((service, error)) => (service, None, Ended::Failed(error)),
        };
        self.finish(&service, release, outcome, &events);
    }

    /// Rolls back: at once to the old release if one is still warm or a rollout is under way; otherwise by
    /// deploying an earlier release again (no rebuild) with the service's strategy.
    pub async fn rollback(self: &Arc<Self>, request: RollbackRequest, events: mpsc::UnboundedSender<DeployEvent>) {
        let events = Events(events);
        let name = request.service.clone();
        if request.to.is_none() && self.control(&name, Control::Abort).is_ok() {
            events.progress(format!("rolling back the rollout of `{name}` under way"));
            // The rollout itself reports its end; wait for it to leave.
            while lock(&self.rollouts).contains_key(&name) {
                tokio::time::sleep(TICK).await;
            }
            let _ = events.0.send(DeployEvent::Done {
                service: name.clone(),
                release: self.store.get(&name).ok().flatten().and_then(|d| d.release),
                ok: true,
                message: format!("`{name}` is back on its previous release"),
            });
            return;
        }
        let result = self.rollback_to(&request, &events).await;
        let (release, outcome) = match result {
            Ok((release, outcome)) => (Some(release), outcome),
            Err(error) => (None, Ended::Failed(error)),
        };
        self.finish(&name, release, outcome, &events);
    }

    /// Sends `control` to the rollout of `service` under way.
    pub fn control(&self, service: &str, control: Control) -> Result<(), PlatformError> {
        let rollouts = lock(&self.rollouts);
        let running = rollouts.get(service).ok_or_else(|| PlatformError::NoRollout(service.to_owned()))?;
        running.control.send(control).map_err(|_| PlatformError::NoRollout(service.to_owned()))
    }

    /// Stops a service (a preview copy, say) and forgets it; its releases stay listed.
    pub async fn delete(&self, name: &str) -> Result<(), PlatformError> {
        self.desired(name)?;
        if let Some(running) = lock(&self.rollouts).get(name) {
            let what = running.release.map_or("a deploy".to_owned(), |n| format!("release {n}"));
            return Err(PlatformError::RolloutInProgress { service: name.to_owned(), what });
        }
        self.store.remove(name)?;
        {
            let mut routing = lock(&self.routing);
            routing.specs.remove(name);
            routing.next_weights.remove(name);
        }
        self.routing_changed.notify_one();
        for unit in self.units(name).into_iter().chain([next_unit(name)]) {
            let _ = self.supervisor.remove(&unit).await;
        }
        info!(service = %name, "deleted");
        Ok(())
    }

    async fn deploy_inner(
        self: &Arc<Self>,
        request: &DeployRequest,
        events: &Events,
    ) -> Result<(String, u32, Ended), (String, String)> {
        let fail = |name: &str, error: String| (name.to_owned(), error);
        let mut service = crate::load::load_dir(&request.dir).map_err(|e| fail("?", e.to_string()))?;
        let base = service.spec.name.get_ref().clone();
        let name = match &request.branch {
            Some(branch) => {
                let name = format!("{base}-{branch}");
                if !berth_spec::is_dns_label(&name) {
                    return Err(fail(
                        &base,
                        format!(
                            "`{name}` cannot be a service name: a branch must make a DNS label with the service's name \
                             (lowercase letters, digits and `-`, at most 63 in all)"
                        ),
                    ));
                }
                rename_for_preview(&mut service.spec, &name);
                name
            }
            None => base,
        };
        let control = self.begin(&name).map_err(|e| fail(&name, with_hint(&e)))?;
        let result = self.build_and_roll_out(&name, service, request.strategy, events, control).await;
        lock(&self.rollouts).remove(&name);
        result.map(|(release, ended)| (name.clone(), release, ended)).map_err(|e| (name, e))
    }

    /// Registers the one rollout of `name`; refuses a second.
    fn begin(&self, name: &str) -> Result<mpsc::UnboundedReceiver<Control>, PlatformError> {
        let mut rollouts = lock(&self.rollouts);
        if let Some(running) = rollouts.get(name) {
            let what = running.release.map_or("building".to_owned(), |n| format!("release {n}"));
            return Err(PlatformError::RolloutInProgress { service: name.to_owned(), what });
        }
        let (control, rx) = mpsc::unbounded_channel();
        rollouts.insert(name.to_owned(), Running { release: None, control });
        Ok(rx)
    }

    async fn build_and_roll_out(
        self: &Arc<Self>,
        name: &str,
        service: LoadedService,
        strategy: Option<Strategy>,
        events: &Events,
        control: mpsc::UnboundedReceiver<Control>,
    ) -> Result<(u32, Ended), String> {
        let service = Arc::new(service);
        for kind in [StepKind::Build, StepKind::Test] {
            let step = match kind {
                StepKind::Build => "build",
                StepKind::Test => "test",
            };
            let command = match kind {
                StepKind::Build => service.spec.build.as_ref(),
                StepKind::Test => service.spec.test.as_ref(),
            };
            let Some(command) = command else { continue };
            events.step(step, command.command.join(" "));
            let (service, lines) = (service.clone(), events.clone());
            let outcome = tokio::task::spawn_blocking(move || {
                release::run_step(kind, &service, &mut |line| {
                    let _ = lines.0.send(DeployEvent::Output { step: step.to_owned(), line: line.text.clone() });
                })
            })
            .await
            .map_err(|error| format!("the {step} step panicked: {error}"))?;
            match outcome {
                Ok(StepOutcome::Passed { duration }) => {
                    events.progress(format!("{step} passed in {:.1}s", duration.as_secs_f64()))
                }
                Ok(StepOutcome::Skipped) => {}
                Err(error) => {
                    return Err(format!(
                        "the {step} step failed, nothing was deployed and the live release still serves: {error}"
                    ));
                }
            }
        }
        events.step("snapshot", service.dir.display().to_string());
        let number = self.store.next_release_number(name).map_err(|e| e.to_string())?;
        if let Some(running) = lock(&self.rollouts).get_mut(name) {
            running.release = Some(number);
        }
        let (state_dir, snap_service) = (self.state_dir.clone(), service.clone());
        let mut release = tokio::task::spawn_blocking(move || release::snapshot(&state_dir, &snap_service, number))
            .await
            .map_err(|error| format!("the snapshot panicked: {error}"))?
            .map_err(|error| format!("cannot make release {number}: {error}"))?;
        // A preview's release carries its own name: it runs as its own service.
        release.service = name.to_owned();
        self.store.put_release(&release).map_err(|e| e.to_string())?;
        let commit = release.commit.as_ref().map_or(String::new(), |c| {
            format!(", commit {}{}", &c.sha[..c.sha.len().min(8)], if c.dirty { "+dirty" } else { "" })
        });
        events.progress(format!("release {number} of `{name}` made ({}{commit})", &release.artifact_hash[..12]));
        let strategy = strategy.unwrap_or(service.spec.deploy.strategy);
        let ended = self.roll_out(name, &release, strategy, events, control).await;
        Ok((number, ended))
    }

    async fn rollback_to(self: &Arc<Self>, request: &RollbackRequest, events: &Events) -> Result<(u32, Ended), String> {
        let name = &request.service;
        let desired = self.desired(name).map_err(|e| e.to_string())?;
        let releases = self.store.releases(name).map_err(|e| e.to_string())?;
        let target = match request.to {
            Some(n) => releases
                .iter()
                .find(|r| r.number == n)
                .ok_or_else(|| format!("`{name}` has no release {n}; `berth releases {name}` lists them"))?,
            None => {
                let live = desired.release.ok_or_else(|| {
                    format!("`{name}` runs from its directory, not from a release: there is nothing to roll back to")
                })?;
                releases
                    .iter()
                    .filter(|r| r.number < live)
                    .find(|r| matches!(r.outcome, ReleaseOutcome::Superseded | ReleaseOutcome::Live))
                    .ok_or_else(|| format!("`{name}` has no release before {live} that ever went live"))?
            }
        };
        if desired.release == Some(target.number) {
            return Err(format!("release {} of `{name}` is already live", target.number));
        }
        let control = self.begin(name).map_err(|e| with_hint(&e))?;
        if let Some(running) = lock(&self.rollouts).get_mut(name) {
            running.release = Some(target.number);
        }
        let spec = target.load().map_err(|e| e.to_string())?.spec;
        events.progress(format!("rolling `{name}` back to release {}", target.number));
        let ended = self.roll_out(name, target, spec.deploy.strategy, events, control).await;
        lock(&self.rollouts).remove(name);
        Ok((target.number, ended))
    }

    /// Records how the deploy ended and sends the last event.
    fn finish(&self, name: &str, release: Option<u32>, ended: Ended, events: &Events) {
        let (ok, message, outcome) = match ended {
            Ended::Live(message) => (true, message, ReleaseOutcome::Live),
            Ended::Failed(reason) => (false, reason.clone(), ReleaseOutcome::Failed { reason }),
            Ended::RolledBack(reason) => (false, reason.clone(), ReleaseOutcome::RolledBack { reason }),
        };
        if let Some(number) = release {
            let live = outcome == ReleaseOutcome::Live;
            if let Err(error) = self.store.update_release(name, number, |r| {
                r.outcome = outcome;
                r.deploy_finished_ms = Some(now_ms());
            }) {
                warn!(service = %name, error = %error, "cannot record the outcome of release {number}");
            }
            if live {
                self.supersede_others(name, number);
            }
        }
        if ok {
            info!(service = %name, release = ?release, "{message}");
        } else {
            warn!(service = %name, release = ?release, "{message}");
        }
        let _ = events.0.send(DeployEvent::Done { service: name.to_owned(), release, ok, message });
    }

    fn supersede_others(&self, name: &str, live: u32) {
        let Ok(releases) = self.store.releases(name) else { return };
        for other in releases.iter().filter(|r| r.number != live && r.outcome == ReleaseOutcome::Live) {
            let _ = self.store.update_release(name, other.number, |r| r.outcome = ReleaseOutcome::Superseded);
        }
        // Keep the newest releases and whatever could be rolled back to.
        let _ = self.store.prune_releases(name, 10, &[live]);
    }

    /// Puts `release` in front of users with `strategy`.
    async fn roll_out(
        self: &Arc<Self>,
        name: &str,
        release: &Release,
        strategy: Strategy,
        events: &Events,
        mut control: mpsc::UnboundedReceiver<Control>,
    ) -> Ended {
        let number = release.number;
        let _ = self.store.update_release(name, number, |r| {
            r.outcome = ReleaseOutcome::Deploying;
            r.strategy = Some(strategy);
            r.deploy_started_ms = Some(now_ms());
        });
        let loaded = match release.load() {
            Ok(loaded) => loaded,
            Err(error) => return Ended::Failed(format!("cannot load release {number}: {error}")),
        };
        let previous = self.store.get(name).ok().flatten();
        let desired = DesiredService {
            dir: loaded.dir.clone(),
            source: loaded.source.clone(),
            replicas: previous.as_ref().and_then(|p| p.replicas),
            stopped: false,
            program: loaded.program.clone(),
            release: Some(number),
        };
        let mut spec = loaded.spec.clone();
        if spec.name.get_ref() != name {
            rename_for_preview(&mut spec, name);
        }
        let deadline = spec.deploy.health_deadline;
        let Some(previous) = previous.filter(|p| !p.stopped) else {
            events.step("rollout", format!("first release of `{name}`: starting it"));
            return self.first_release(name, &desired, deadline, events).await;
        };
        let baseline = self.stats(name, STABLE_GROUP);
        events.step("rollout", format!("{} to release {number}", strategy_name(strategy)));
        let ended = match strategy {
            Strategy::Rolling => self.rolling(name, &previous, &desired, deadline, events, &mut control).await,
            Strategy::Bluegreen | Strategy::Canary => {
                self.beside(name, &spec, &previous, &desired, strategy, events, &mut control).await
            }
        };
        let Ended::Live(message) = ended else { return ended };
        // The release is live on the service's own unit: watch it against the old release's numbers.
        match self.watch(name, &spec, baseline, events, &mut control).await {
            Ok(()) => Ended::Live(message),
            Err(reason) => {
                events.progress(format!("watch window: {reason}; rolling back"));
                let _ = self.apply(name, &previous);
                self.store_desired(name, &previous);
                let identity = self.identity(name, &previous);
                if let Err(error) = self.converged(name, &identity, RESTORE_DEADLINE, events, None).await {
                    warn!(service = %name, error = %error, "the previous release is not healthy again yet");
                }
                Ended::RolledBack(format!("release {number} was live, then {reason}; the previous release is back"))
            }
        }
    }

    async fn first_release(&self, name: &str, desired: &DesiredService, deadline: Duration, events: &Events) -> Ended {
        let number = desired.release.unwrap_or_default();
        if let Err(error) = self.apply(name, desired) {
            return Ended::Failed(error.to_string());
        }
        let identity = self.identity(name, desired);
        match self.converged(name, &identity, deadline, events, None).await {
            Ok(()) => {
                self.store_desired(name, desired);
                events.live(format!("release {number} of `{name}` is live"));
                Ended::Live(format!("release {number} of `{name}` is live"))
            }
            Err(reason) => {
                // Nothing else ran: stop it, and leave no half-started service behind.
                let _ = self.supervisor.remove(name).await;
                lock(&self.routing).specs.remove(name);
                self.routing_changed.notify_one();
                Ended::Failed(format!("release {number} of `{name}` did not start: {reason}"))
            }
        }
    }

    /// Rolling: the supervisor replaces replicas `max_surge`/`max_unavailable` at a time, each new one
    /// healthy before an old one leaves. Past the deadline, the old release is applied back.
    async fn rolling(
        &self,
        name: &str,
        previous: &DesiredService,
        desired: &DesiredService,
        deadline: Duration,
        events: &Events,
        control: &mut mpsc::UnboundedReceiver<Control>,
    ) -> Ended {
        let number = desired.release.unwrap_or_default();
        if let Err(error) = self.apply(name, desired) {
            return Ended::Failed(error.to_string());
        }
        let identity = self.identity(name, desired);
        match self.converged(name, &identity, deadline, events, Some(control)).await {
            Ok(()) => {
                self.store_desired(name, desired);
                events.live(format!("release {number} of `{name}` serves all traffic (rolling)"));
                Ended::Live(format!("release {number} of `{name}` is live (rolling)"))
            }
            Err(reason) => {
                events.progress(format!("{reason}; moving back to the previous release"));
                let _ = self.apply(name, previous);
                let old = self.identity(name, previous);
                if let Err(error) = self.converged(name, &old, RESTORE_DEADLINE, events, None).await {
                    warn!(service = %name, error = %error, "the previous release is not fully back yet");
                }
                Ended::Failed(format!("release {number} of `{name}` was not deployed: {reason}"))
            }
        }
    }

    /// Blue-green and canary: the release runs beside the live one as `<service>~next` and takes a share of
    /// the traffic (all at once for blue-green; step by step, judged, for a canary). Then the service's own
    /// unit moves to it and `next` goes away.
    #[allow(clippy::too_many_arguments)]
    async fn beside(
        &self,
        name: &str,
        spec: &Spec,
        previous: &DesiredService,
        desired: &DesiredService,
        strategy: Strategy,
        events: &Events,
        control: &mut mpsc::UnboundedReceiver<Control>,
    ) -> Ended {
        let number = desired.release.unwrap_or_default();
        let n_replicas = desired.replicas.unwrap_or(*spec.replicas.get_ref()).max(1);
        let deadline = spec.deploy.health_deadline;
        let steps: Vec<u32> = match strategy {
            Strategy::Canary => spec.deploy.canary_steps.get_ref().clone(),
            _ => vec![100],
        };
        let thresholds = analysis::thresholds(spec);
        let mut promoted = false;
        for (i, &weight) in steps.iter().enumerate() {
            let last = i + 1 == steps.len() || promoted;
            let weight = if last { 100 } else { weight.min(100) };
            let replicas =
                if weight == 100 { n_replicas } else { n_replicas.saturating_mul(weight).div_ceil(100).max(1) };
            let config = self.next_config(name, desired, replicas);
            let identity = config.release.clone();
            self.supervisor.apply(config);
            if let Err(reason) =
                self.converged(&next_unit(name), &identity, deadline, events, Some(&mut *control)).await
            {
                self.drop_next(name).await;
                return Ended::Failed(format!("release {number} of `{name}` was not deployed: {reason}"));
            }
            self.set_next_weight(name, Some(weight));
            events.progress(format!("release {number} takes {weight}% of the traffic ({replicas} replica(s))"));
            if weight == 100 {
                let warm = match strategy {
                    Strategy::Bluegreen => format!(
                        "; the previous release stays warm for {} (`berth rollback {name}` switches back at once)",
                        berth_spec::format_duration(spec.deploy.keep_old_for)
                    ),
                    _ => String::new(),
                };
                events.live(format!("release {number} of `{name}` serves all traffic{warm}"));
            }
            if last && strategy == Strategy::Canary {
                break;
            }
            let window = match strategy {
                Strategy::Canary => spec.deploy.step_pause,
                _ => spec.deploy.keep_old_for,
            };
            match self.judge_step(name, weight, window, &thresholds, strategy, events, control).await {
                StepVerdict::Pass => {}
                StepVerdict::Promote => promoted = true,
                StepVerdict::Back(reason) => {
                    self.set_next_weight(name, Some(0));
                    self.drop_next(name).await;
                    return Ended::RolledBack(format!(
                        "release {number} of `{name}` rolled back at {weight}%: {reason}; the previous release serves"
                    ));
                }
            }
            if last {
                break;
            }
        }
        // Move the service's own unit to the release while `next` serves everything, then drop `next`.
        events.progress(format!("moving the live replicas of `{name}` to release {number}"));
        if let Err(error) = self.apply(name, desired) {
            return Ended::Failed(error.to_string());
        }
        let identity = self.identity(name, desired);
        if let Err(reason) = self.converged(name, &identity, deadline, events, None).await {
            // `next` still serves the release; put the old one back in front and give up.
            let _ = self.apply(name, previous);
            let old = self.identity(name, previous);
            let _ = self.converged(name, &old, RESTORE_DEADLINE, events, None).await;
            self.set_next_weight(name, Some(0));
            self.drop_next(name).await;
            return Ended::Failed(format!(
                "release {number} of `{name}` could not replace the live replicas: {reason}"
            ));
        }
        self.store_desired(name, desired);
        self.set_next_weight(name, None);
        self.drop_next(name).await;
        Ended::Live(format!("release {number} of `{name}` is live ({})", strategy_name(strategy)))
    }

    /// Waits out a step's window while judging the `next` group against `stable`. A canary step passes once
    /// its pause is over and its numbers pass; a blue-green window (the old set kept warm) passes when it
    /// ends without bad numbers. Bad numbers or `berth abort` end it at once.
    #[allow(clippy::too_many_arguments)]
    async fn judge_step(
        &self,
        name: &str,
        weight: u32,
        window: Duration,
        thresholds: &analysis::Thresholds,
        strategy: Strategy,
        events: &Events,
        control: &mut mpsc::UnboundedReceiver<Control>,
    ) -> StepVerdict {
        let start = Instant::now();
        let (next0, stable0) = (self.stats(name, NEXT_GROUP), self.stats(name, STABLE_GROUP));
        let mut last_note = Instant::now();
        loop {
            tokio::select! {
                control = control.recv() => match control {
                    Some(Control::Promote) => return StepVerdict::Promote,
                    Some(Control::Abort) => return StepVerdict::Back("aborted by `berth abort`".to_owned()),
                    None => {}
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let next = self.stats(name, NEXT_GROUP).since(&next0);
            let stable = self.stats(name, STABLE_GROUP).since(&stable0);
            let stable = (stable.requests > 0).then_some(&stable);
            let elapsed = start.elapsed();
            match analysis::judge(&next, stable, thresholds) {
                Verdict::Fail(reason) => return StepVerdict::Back(reason),
                Verdict::Pass if elapsed >= window => {
                    events.progress(format!(
                        "{weight}% step passed: {} requests, {} failed",
                        next.requests, next.failures
                    ));
                    return StepVerdict::Pass;
                }
                // A blue-green window that saw too little traffic to judge is no reason to roll back.
                Verdict::Wait(_) if elapsed >= window && strategy == Strategy::Bluegreen => return StepVerdict::Pass,
                Verdict::Wait(reason) if elapsed >= window => {
                    if elapsed >= window + MAX_JUDGE_WAIT {
                        return StepVerdict::Back(format!("still cannot judge after {MAX_JUDGE_WAIT:?}: {reason}"));
                    }
                    if last_note.elapsed() >= Duration::from_secs(10) {
                        events.progress(format!("{weight}% step: waiting for traffic to judge: {reason}"));
                        last_note = Instant::now();
                    }
                }
                _ => {}
            }
        }
    }

    /// After a release is live on the service's own unit: its numbers against the previous release's, for
    /// `[deploy] watch`. `Err` says why it must go.
    async fn watch(
        &self,
        name: &str,
        spec: &Spec,
        baseline: GroupStats,
        events: &Events,
        control: &mut mpsc::UnboundedReceiver<Control>,
    ) -> Result<(), String> {
        let window = spec.deploy.watch;
        if window.is_zero() {
            return Ok(());
        }
        events.progress(format!("watching `{name}` for {}", berth_spec::format_duration(window)));
        let thresholds = analysis::thresholds(spec);
        let start = Instant::now();
        let since = self.stats(name, STABLE_GROUP);
        let baseline = (baseline.requests > 0).then_some(baseline);
        while start.elapsed() < window {
            tokio::select! {
                control = control.recv() => match control {
                    Some(Control::Promote) => return Ok(()),
                    Some(Control::Abort) => return Err("aborted by `berth abort`".to_owned()),
                    None => {}
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let now = self.stats(name, STABLE_GROUP).since(&since);
            if let Verdict::Fail(reason) = analysis::judge(&now, baseline.as_ref(), &thresholds) {
                return Err(reason);
            }
        }
        Ok(())
    }

    /// Waits until `unit` runs `identity` on all its replicas, healthy. Reports progress; `Err` with the
    /// reason (and the failing replica's last words) past `deadline` or on `berth abort`.
    async fn converged(
        &self,
        unit: &str,
        identity: &str,
        deadline: Duration,
        events: &Events,
        mut control: Option<&mut mpsc::UnboundedReceiver<Control>>,
    ) -> Result<(), String> {
        let until = Instant::now() + deadline;
        let mut reported = None;
        loop {
            if let Some(control) = control.as_deref_mut()
                && let Ok(Control::Abort) = control.try_recv()
            {
                return Err("aborted by `berth abort`".to_owned());
            }
            let status = self.supervisor.service_status(unit).await.map_err(|e| e.to_string())?;
            if status.release == identity && status.converged {
                return Ok(());
            }
            let progress = (status.updated_replicas, status.desired_replicas);
            if reported != Some(progress) {
                events.progress(format!("{unit}: {}/{} replicas on the new release, healthy", progress.0, progress.1));
                reported = Some(progress);
            }
            if Instant::now() >= until {
                return Err(self.why_not_healthy(unit, identity, &status, deadline));
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// Why `unit` did not get healthy on `identity`: the failing instance of the new release, and the last
    /// lines logged since the rollout began by instances that do not run an older release (the old replicas
    /// of a rolling deploy share the unit's log and would otherwise drown the failing one's last words).
    fn why_not_healthy(
        &self,
        unit: &str,
        identity: &str,
        status: &berth_supervisor::ServiceStatus,
        deadline: Duration,
    ) -> String {
        use berth_supervisor::ReplicaState;
        let mut reason = format!("not healthy within {} (health_deadline)", berth_spec::format_duration(deadline));
        let failing =
            status.replicas.iter().find(|r| r.release.as_deref() == Some(identity) && r.state != ReplicaState::Healthy);
        if let Some(replica) = failing {
            reason.push_str(&format!("; replica {} is {}", replica.index, replica.state.as_str()));
            if let Some((exit, _)) = &replica.last_exit {
                reason.push_str(&format!(", last exit: {exit}"));
            }
            if let Some(probe) = &replica.last_probe {
                reason.push_str(&format!(", last probe: {probe}"));
            }
        }
        let old: Vec<&str> = status
            .replicas
            .iter()
            .filter(|r| r.release.as_deref().is_some_and(|release| release != identity))
            .filter_map(|r| r.instance.as_deref())
            .collect();
        let began = SystemTime::now().checked_sub(deadline).unwrap_or(UNIX_EPOCH);
        let since_ms = began.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let query = LogQuery { replica: None, since_ms: Some(since_ms), tail: None };
        if let Ok(lines) = self.supervisor.logs().query(unit, &query) {
            let lines: Vec<_> = lines.into_iter().filter(|line| !old.contains(&line.instance.as_str())).collect();
            if !lines.is_empty() {
                reason.push_str("; its last log lines:");
                for line in &lines[lines.len().saturating_sub(LOG_TAIL)..] {
                    reason.push_str(&format!("\n  [{}] {}", line.replica, line.line));
                }
            }
        }
        reason
    }

    /// The supervisor config of the `next` unit running `desired` with `replicas` replicas.
    fn next_config(&self, name: &str, desired: &DesiredService, replicas: u32) -> berth_supervisor::ServiceConfig {
        let mut config = match self.configs(name, desired) {
            Ok((_, mut configs)) if !configs.is_empty() => configs.swap_remove(0),
            _ => {
                // `roll_out` loaded this release already; keep a usable config if the source cannot parse now.
                let spec = crate::load::parse(&desired.dir.join("app.toml"), &desired.source);
                let mut config = spec.map_or_else(
                    |_| berth_supervisor::ServiceConfig::new(name, "", Vec::new(), desired.dir.clone()),
                    |spec| to_service_config(&spec, &desired.dir, None),
                );
                if let Some(program) = &desired.program {
                    set_program(&mut config, program);
                }
                config
            }
        };
        config.name = next_unit(name);
        config.replicas = replicas;
        config
    }

    fn identity(&self, name: &str, desired: &DesiredService) -> String {
        match self.configs(name, desired) {
            Ok((_, configs)) => configs.first().map(|c| c.release.clone()).unwrap_or_default(),
            Err(_) => crate::load::parse(&desired.dir.join("app.toml"), &desired.source)
                .map(|spec| release_identity(&spec))
                .unwrap_or_default(),
        }
    }

    fn stats(&self, name: &str, group: &str) -> GroupStats {
        self.gateway.group_stats(name).into_iter().find(|g| g.group == group).unwrap_or_else(|| GroupStats {
            group: group.to_owned(),
            requests: 0,
            failures: 0,
            latency: Default::default(),
        })
    }

    /// Sets the traffic share of the release beside the live one (`None`: no `next` group) and installs the
    /// table at once, so the next request already sees it.
    fn set_next_weight(&self, name: &str, weight: Option<u32>) {
        {
            let mut routing = lock(&self.routing);
            match weight {
                Some(weight) => routing.next_weights.insert(name.to_owned(), weight),
                None => routing.next_weights.remove(name),
            };
        }
        let endpoints = self.supervisor.endpoints().borrow().clone();
        super::publish(&self.routing, &endpoints, &self.gateway);
    }

    /// Stops the `next` unit (its replicas drain first) and forgets its weight.
    async fn drop_next(&self, name: &str) {
        let _ = self.supervisor.remove(&next_unit(name)).await;
        self.set_next_weight(name, None);
    }

    fn store_desired(&self, name: &str, desired: &DesiredService) {
        if let Err(error) = self.store.put(name, desired) {
            warn!(service = %name, error = %error, "cannot store the live release");
        }
    }
}

enum StepVerdict {
    Pass,
    Promote,
    Back(String),
}

/// The error and what to do about it, in one message (for the deploy's event stream).
fn with_hint(error: &PlatformError) -> String {
    match error.hint() {
        Some(hint) => format!("{error}: {hint}"),
        None => error.to_string(),
    }
}

fn strategy_name(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Rolling => "rolling",
        Strategy::Bluegreen => "blue-green",
        Strategy::Canary => "canary",
    }
}
