//! Control commands through the real CLI: scale, stop/start, restart, logs, authentication.

use std::time::Duration;

use berth_test_support::{Daemon, http_request, temp_dir, wait_until};

use crate::support::*;

#[test]
fn scale_stop_start_and_rolling_restart() {
    let (_root, daemon) = hello_daemon("web", 1, "");

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
    let (_root, daemon) = hello_daemon("web", 2, "");
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

#[test]
fn a_service_flooding_its_stdout_neither_fills_the_disk_nor_disturbs_others() {
    let root = temp_dir();
    let quiet = service_dir(root.path(), "quiet", &hello_spec("quiet", 1, ""));
    // `yes` writes to stdout as fast as the pipe takes it, beside a server that answers probes.
    let bin = berth_test_support::example_bin("hello");
    let chatty_spec = hello_spec("chatty", 1, "").replace(
        &format!("command = [\"{}\"]", bin.display()),
        &format!("command = [\"sh\", \"-c\", \"yes flooding-the-log-as-fast-as-it-can & exec {}\"]", bin.display()),
    );
    let chatty = service_dir(root.path(), "chatty", &chatty_spec);
    let state = root.path().join("state");
    let daemon = Daemon::start(berth(), &state, &[&quiet, &chatty]);
    wait_healthy(&daemon, "chatty", 1);
    wait_healthy(&daemon, "quiet", 1);

    // The rate limit kicks in and says so in the service's own log.
    wait_until(Duration::from_secs(30), "the log rate limit to report dropped lines", || {
        let out = daemon.cli(&["logs", "chatty", "--json", "--tail", "200"]);
        String::from_utf8_lossy(&out.stdout).contains("log rate limit").then_some(())
    });
    // Meanwhile the daemon still answers and the quiet service stays healthy.
    let quiet_status = wait_healthy(&daemon, "quiet", 1);
    assert_eq!(replica(&quiet_status, 0).expect("quiet replica")["restarts"], 0);
    // What is kept on disk is bounded by rotation (3 files of 8 MiB per service by default).
    let logs_bytes: u64 = std::fs::read_dir(state.join("logs"))
        .expect("logs dir")
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .map(|meta| meta.len())
        .sum();
    println!("log files hold {logs_bytes} bytes");
    assert!(logs_bytes <= 2 * 3 * 8 * 1024 * 1024 + 1024 * 1024, "{logs_bytes}");
}
