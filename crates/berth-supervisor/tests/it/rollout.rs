//! Rolling replacement of a service by a new release (issue #5): the `max_surge` / `max_unavailable` bounds,
//! rollback mid-rollout, `converged`, and a release that never becomes healthy.

use std::time::Duration;

use berth_supervisor::{ReplicaState, ServiceConfig};
use berth_test_support::wait_until;

use crate::support::*;

const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(60);

/// Release `release` of `name`, whose replicas take `start_delay` before they listen (so that a rollout
/// lasts long enough to be watched).
fn release(fx: &Fixture, name: &str, release: &str, start_delay: &str) -> ServiceConfig {
    let mut config = fx.config(name, release, 4);
    config.env.push(("HELLO_START_DELAY".to_owned(), start_delay.to_owned()));
    config
}

#[test]
fn max_surge_2_runs_at_most_6_and_keeps_4_in_rotation() {
    let fx = Fixture::start();
    fx.apply(release(&fx, "web", "a", "0ms"));
    let before = fx.wait_converged("web", "a", ROLLOUT_TIMEOUT);
    let old_pids = pids(&before, |_| true);

    let config = ServiceConfig { max_surge: 2, max_unavailable: 0, ..release(&fx, "web", "b", "500ms") };
    let (observed, after) = roll(&fx, config, ROLLOUT_TIMEOUT);
    eprintln!("max_surge 2, 4 replicas: {observed:?}");
    assert!(observed.max_running <= 6, "more than replicas + max_surge running: {observed:?}");
    assert_eq!(observed.max_running, 6, "two successors at a time: {observed:?}");
    assert_eq!(observed.min_in_rotation, 4, "a replica left rotation: {observed:?}");
    assert!(pids(&after, |_| true).is_disjoint(&old_pids), "every replica was replaced: {after:#?}");
    wait_until(Duration::from_secs(10), "the old replicas to exit", || {
        old_pids.iter().all(|&pid| !process_exists(pid)).then_some(())
    });
}

#[test]
fn max_unavailable_1_without_surge_runs_at_most_4() {
    let fx = Fixture::start();
    fx.apply(release(&fx, "web", "a", "0ms"));
    fx.wait_converged("web", "a", ROLLOUT_TIMEOUT);

    let config = ServiceConfig { max_surge: 0, max_unavailable: 1, ..release(&fx, "web", "b", "300ms") };
    let (observed, _) = roll(&fx, config, ROLLOUT_TIMEOUT);
    eprintln!("max_unavailable 1, max_surge 0, 4 replicas: {observed:?}");
    assert!(observed.max_running <= 4, "more than replicas running: {observed:?}");
    assert_eq!(observed.min_in_rotation, 3, "one replica at a time out of rotation: {observed:?}");
}

#[test]
fn a_restart_replaces_every_instance_of_the_same_release() {
    let fx = Fixture::start();
    fx.apply(release(&fx, "web", "a", "0ms"));
    let before = fx.wait_converged("web", "a", ROLLOUT_TIMEOUT);
    let old_pids = pids(&before, |_| true);

    let (observed, after) = observe(&fx, "web", "a", 4, ROLLOUT_TIMEOUT, || {
        fx.supervisor.restart("web").expect("web is known");
    });
    eprintln!("restart, max_surge 1, 4 replicas: {observed:?}");
    assert!(observed.max_running <= 5, "{observed:?}");
    assert_eq!(observed.min_in_rotation, 4, "{observed:?}");
    assert!(pids(&after, |_| true).is_disjoint(&old_pids), "every replica was replaced: {after:#?}");
}

#[test]
fn a_rollback_mid_rollout_keeps_the_old_instances_and_stops_the_successors() {
    let fx = Fixture::start();
    let old = release(&fx, "web", "a", "0ms");
    fx.apply(old.clone());
    fx.wait_converged("web", "a", ROLLOUT_TIMEOUT);

    // Slow successors: the rollout is caught with one slot on b and the next successor starting.
    fx.apply(release(&fx, "web", "b", "1s"));
    let midway = wait_until(ROLLOUT_TIMEOUT, "one replica on b and a successor starting", || {
        let status = fx.status("web");
        let starting_b = status
            .replicas
            .iter()
            .any(|r| r.state == ReplicaState::Starting && r.release.as_deref() == Some("b") && r.pid.is_some());
        (status.updated_replicas == 1 && starting_b).then_some(status)
    });
    assert!(!midway.converged);
    let on_a = pids(&midway, |r| r.release.as_deref() == Some("a") && r.in_rotation && !r.retiring);
    let on_b = pids(&midway, |r| r.release.as_deref() == Some("b"));
    assert_eq!(on_a.len(), 3, "{midway:#?}");
    assert_eq!(on_b.len(), 2, "one in rotation, one successor: {midway:#?}");

    let (observed, after) = roll(&fx, old, ROLLOUT_TIMEOUT);
    eprintln!("rollback to a from midway: {observed:?}");
    let final_pids = pids(&after, |_| true);
    assert!(on_a.is_subset(&final_pids), "instances on a were restarted: before {on_a:?}, after {after:#?}");
    assert!(final_pids.is_disjoint(&on_b), "{after:#?}");
    assert!(observed.max_running <= 5, "{observed:?}");
    assert_eq!(observed.min_in_rotation, 4, "{observed:?}");
    wait_until(Duration::from_secs(10), "the instances of b to exit", || {
        on_b.iter().all(|&pid| !process_exists(pid)).then_some(())
    });
}

#[test]
fn a_release_that_never_becomes_healthy_leaves_the_old_instances_serving() {
    let max_running = check_failing_release(("HELLO_START_DELAY", "60m"));
    assert_eq!(max_running, 5, "one successor at a time beside the 4 serving");
}

#[test]
fn a_release_that_exits_at_start_leaves_the_old_instances_serving() {
    check_failing_release(("HELLO_FAIL_START", "3"));
}

/// Rolls 4 replicas to a release whose replicas run with `env` and never become healthy, watches three of
/// its successors fail, and returns the most processes seen at once. The old instances must stay in
/// rotation throughout, and a move back to the old release must restart none of them.
fn check_failing_release(env: (&str, &str)) -> usize {
    let fx = Fixture::start();
    let old = release(&fx, "web", "a", "0ms");
    fx.apply(old.clone());
    let before = fx.wait_converged("web", "a", ROLLOUT_TIMEOUT);
    let old_pids = pids(&before, |_| true);

    let fewest_in_rotation = fx.watch_in_rotation("web");
    let mut failing = fx.config("web", "b", 4);
    failing.env.push((env.0.to_owned(), env.1.to_owned()));
    failing.health.start_period = Duration::from_millis(600);
    fx.apply(failing);
    // Bounded by the number of failed successors it waits for.
    let mut successors = std::collections::BTreeSet::new();
    let mut max_running = 0;
    wait_until(Duration::from_secs(30), "three failed successors of b", || {
        let status = fx.status("web");
        assert!(!status.converged && status.updated_replicas == 0, "{status:#?}");
        assert_eq!(pids(&status, |r| r.in_rotation), old_pids, "the old instances stay in rotation: {status:#?}");
        max_running = max_running.max(fx.n_processes());
        successors.extend(pids(&status, |r| r.release.as_deref() == Some("b")));
        (successors.len() >= 3).then_some(())
    });
    let fewest = fewest_in_rotation.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("{env:?}: successors {successors:?}, at most {max_running} processes, fewest in rotation {fewest}");
    assert_eq!(fewest, 4);
    assert!(max_running <= 5);

    // Moving back to a restarts nothing. It may be converged at once (when no successor of b is running
    // just then), so this is not a `roll`, which expects a replacement to start.
    fx.apply(old);
    let after = fx.wait_converged("web", "a", ROLLOUT_TIMEOUT);
    assert_eq!(pids(&after, |_| true), old_pids);
    max_running
}
