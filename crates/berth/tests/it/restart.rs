//! The daemon survives being killed: services come back, replicas are re-adopted, nothing is left behind
//! (issue #2, acceptance 3).

use std::time::Duration;

use berth_test_support::{Daemon, processes_with_env, temp_dir, wait_until};

use crate::support::*;

#[test]
fn sigkill_of_the_daemon_then_restart_adopts_the_replicas() {
    let root = temp_dir();
    let state = root.path().join("state");
    let web = service_dir(root.path(), "web", &hello_spec("web", 2, ""));
    let api = service_dir(root.path(), "api", &hello_spec("api", 1, ""));
    let mut daemon = Daemon::start(berth(), &state, &[&web, &api]);
    let web_before = wait_healthy(&daemon, "web", 2);
    wait_healthy(&daemon, "api", 1);
    daemon.cli(&["scale", "api", "2"]);
    wait_healthy(&daemon, "api", 2);
    let pids = [pid_of(&web_before, 0), pid_of(&web_before, 1)];

    daemon.kill9();
    // Replicas keep serving while the daemon is away.
    for pid in pids {
        assert!(process_exists(pid), "replica {pid} survived the daemon");
    }

    // Started again with no service dirs: everything comes from the store.
    let daemon = Daemon::start(berth(), &state, &[]);
    let web_after = wait_healthy(&daemon, "web", 2);
    assert_eq!([pid_of(&web_after, 0), pid_of(&web_after, 1)], pids, "same processes, adopted");
    assert!(replicas(&web_after).iter().all(|r| r["adopted"] == true), "{web_after}");
    // The scale override was persisted too.
    wait_healthy(&daemon, "api", 2);

    let canonical = state.canonicalize().expect("state dir exists");
    let out = daemon.cli(&["down"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(15), "no replica left", || {
        processes_with_env("BERTH_STATE_DIR", &canonical.to_string_lossy()).is_empty().then_some(())
    });
}

#[test]
fn a_replica_that_died_while_the_daemon_was_away_is_replaced() {
    let root = temp_dir();
    let state = root.path().join("state");
    let web = service_dir(root.path(), "web", &hello_spec("web", 2, ""));
    let mut daemon = Daemon::start(berth(), &state, &[&web]);
    let before = wait_healthy(&daemon, "web", 2);
    let (kept, killed) = (pid_of(&before, 0), pid_of(&before, 1));
    daemon.kill9();
    signal(killed, libc::SIGKILL);

    let daemon = Daemon::start(berth(), &state, &[]);
    let after = wait_healthy(&daemon, "web", 2);
    assert_eq!(pid_of(&after, 0), kept);
    assert_ne!(pid_of(&after, 1), killed);
}

#[test]
fn replicas_of_a_changed_spec_are_not_adopted_and_no_stray_is_left() {
    let root = temp_dir();
    let state = root.path().join("state");
    let web = service_dir(root.path(), "web", &hello_spec("web", 1, ""));
    let mut daemon = Daemon::start(berth(), &state, &[&web]);
    let old = pid_of(&wait_healthy(&daemon, "web", 1), 0);
    daemon.kill9();

    // A new release of the spec: the old replica must not be adopted, and must not be left running.
    let web = service_dir(
        root.path(),
        "web",
        &hello_spec("web", 1, "").replace("stop_timeout = \"2s\"", "stop_timeout = \"3s\""),
    );
    let daemon = Daemon::start(berth(), &state, &[&web]);
    let new = pid_of(&wait_healthy(&daemon, "web", 1), 0);
    assert_ne!(new, old);
    wait_until(Duration::from_secs(10), "the old replica to be gone", || (!process_exists(old)).then_some(()));
}

/// Regression: the state dir given through `BERTH_STATE_DIR` (rather than `--state-dir`) put the marker
/// of replica processes into the daemon's own environment; the startup scan took the daemon for a stray
/// of an earlier one and killed it.
#[test]
fn a_daemon_whose_state_dir_comes_from_the_environment_survives_its_own_startup() {
    let root = temp_dir();
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).expect("create the state dir");
    let state = state.canonicalize().expect("state dir exists");
    let web = service_dir(root.path(), "web", &hello_spec("web", 1, ""));
    use std::os::unix::process::CommandExt;
    // Its own process group, as when started from a shell (`setsid`, a terminal, a service manager).
    let mut child = std::process::Command::new(berth())
        .process_group(0)
        .args(["up", "--api", "127.0.0.1:0", "--gateway", "127.0.0.1:0"])
        .arg(&web)
        .env("BERTH_STATE_DIR", &state)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start berth");
    let ps =
        || std::process::Command::new(berth()).args(["ps", "web", "--json"]).env("BERTH_STATE_DIR", &state).output();
    let healthy = wait_until(Duration::from_secs(30), "web healthy, or the daemon gone", || {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(false);
        }
        let out = ps().ok()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (status[0]["healthy_replicas"] == 1).then_some(true)
    });
    let still_running = child.try_wait().map(|exited| exited.is_none()).unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    berth_test_support::kill_processes_with_env("BERTH_STATE_DIR", &state.to_string_lossy());
    assert!(healthy && still_running, "the daemon killed itself at startup");
}
