//! Control commands through the real CLI: scale, stop/start, restart, logs, authentication.

use std::time::Duration;

use berth_test_support::{Daemon, http_request, temp_dir, wait_until};

use crate::support::*;

#[test]
fn scale_stop_start_and_rolling_restart() {
    let root = temp_dir();
    let dir = service_dir(root.path(), "web", &hello_spec("web", 1, ""));
    let daemon = Daemon::start(berth(), &root.path().join("state"), &[&dir]);
    wait_healthy(&daemon, "web", 1);

    assert!(daemon.cli(&["scale", "web", "3", "--wait"]).status.success());
    let three = wait_healthy(&daemon, "web", 3);
    assert_eq!(three["desired_replicas"], 3);

    assert!(daemon.cli(&["scale", "web", "2"]).status.success());
    let two = wait_healthy(&daemon, "web", 2);
    let before = [pid_of(&two, 0), pid_of(&two, 1)];

    let out = daemon.cli(&["restart", "web", "--wait"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = wait_healthy(&daemon, "web", 2);
    let after = [pid_of(&after, 0), pid_of(&after, 1)];
    assert!(before.iter().all(|pid| !after.contains(pid)), "every replica replaced: {before:?} -> {after:?}");

    assert!(daemon.cli(&["stop", "web"]).status.success());
    wait_until(Duration::from_secs(15), "web stopped", || {
        let status = service(&daemon, "web");
        (status["state"] == "stopped" && replicas(&status).iter().all(|r| r["pid"].is_null())).then_some(())
    });
    assert!(after.iter().all(|&pid| !process_exists(pid)));
    assert!(daemon.cli(&["start", "web"]).status.success());
    wait_healthy(&daemon, "web", 2);
}

#[test]
fn logs_are_captured_per_replica_and_followable() {
    let root = temp_dir();
    let dir = service_dir(root.path(), "web", &hello_spec("web", 2, ""));
    let daemon = Daemon::start(berth(), &root.path().join("state"), &[&dir]);
    wait_healthy(&daemon, "web", 2);
    let out = daemon.cli(&["logs", "web", "--replica", "1", "--json"]);
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(lines.iter().all(|l| l["replica"] == 1 && l["service"] == "web"));
    assert!(
        lines.iter().any(|l| l["stream"] == "stdout" && l["line"].as_str().unwrap_or("").contains("listening")),
        "{lines:?}"
    );
    let human = daemon.cli(&["logs", "web", "--since", "10m", "--tail", "5"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.lines().count() <= 5 && text.contains("web["), "{text}");
    let unknown = daemon.cli(&["logs", "nope"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no service named `nope`"));
}

#[test]
fn mutating_calls_need_the_token() {
    let root = temp_dir();
    let dir = service_dir(root.path(), "web", &hello_spec("web", 1, ""));
    let daemon = Daemon::start(berth(), &root.path().join("state"), &[&dir]);
    let (status, _, _) =
        http_request(daemon.api_addr(), "POST", "/v1/services/web/stop", &[], b"", Duration::from_secs(5))
            .expect("api answers");
    assert_eq!(status, 401);
    let (status, _, _) = http_request(
        daemon.api_addr(),
        "POST",
        "/v1/services/web/stop",
        &[("Authorization", "Bearer wrong")],
        b"",
        Duration::from_secs(5),
    )
    .expect("api answers");
    assert_eq!(status, 401);
    let token_mode = std::fs::metadata(root.path().join("state/token")).map(|m| {
        use std::os::unix::fs::PermissionsExt;
        m.permissions().mode() & 0o777
    });
    assert_eq!(token_mode.ok(), Some(0o600));
    let second = std::process::Command::new(berth())
        .args(["--state-dir"])
        .arg(root.path().join("state"))
        .args(["up", "--api", "127.0.0.1:0"])
        .output()
        .expect("run berth");
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));
}
