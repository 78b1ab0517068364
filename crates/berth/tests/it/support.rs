//! Shared pieces of the integration tests: a hello service spec and status helpers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_test_support::{Daemon, example_bin, wait_until, write_service};
use serde_json::Value;

pub fn berth() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_berth"))
}

/// A hello service with quick probes, so tests see healing within seconds.
pub fn hello_spec(name: &str, replicas: u32, extra: &str) -> String {
    format!(
        r#"name = "{name}"
replicas = {replicas}
{extra}

[run]
command = ["{bin}"]
stop_timeout = "2s"

[health]
path = "/healthz"
interval = "300ms"
timeout = "200ms"
unhealthy_threshold = 2
start_period = "10s"
"#,
        bin = example_bin("hello").display()
    )
}

/// A daemon running one hello service `name` with `replicas` replicas, started and healthy. Keep the temp
/// dir alive as long as the daemon.
pub fn hello_daemon(name: &str, replicas: u32, extra: &str) -> (tempfile::TempDir, Daemon) {
    let root = berth_test_support::temp_dir();
    let dir = service_dir(root.path(), name, &hello_spec(name, replicas, extra));
    let daemon = Daemon::start(berth(), &root.path().join("state"), &[&dir]);
    wait_healthy(&daemon, name, u64::from(replicas));
    (root, daemon)
}

pub fn service_dir(root: &Path, name: &str, spec: &str) -> PathBuf {
    write_service(&root.join(name), spec)
}

pub fn service(daemon: &Daemon, name: &str) -> Value {
    daemon.cli_json(&["ps", name])[0].clone()
}

pub fn replicas(service: &Value) -> Vec<Value> {
    service["replicas"].as_array().cloned().unwrap_or_default()
}

/// The serving (not retiring) row of replica `index`.
pub fn replica(service: &Value, index: u64) -> Option<Value> {
    replicas(service).into_iter().find(|r| r["index"] == index && r["retiring"] == false && r["state"] != "starting")
}

/// Waits until `n` replicas are healthy and in rotation, nothing starting or stopping; returns the status.
pub fn wait_healthy(daemon: &Daemon, name: &str, n: u64) -> Value {
    wait_until(Duration::from_secs(30), &format!("{n} healthy replicas of {name}"), || {
        let status = service(daemon, name);
        let rows = replicas(&status);
        let settled = rows.iter().all(|r| r["retiring"] == false && r["state"] == "healthy");
        (status["healthy_replicas"] == n && rows.len() as u64 == n && settled).then_some(status)
    })
}

pub fn pid_of(service: &Value, index: u64) -> i32 {
    replica(service, index).and_then(|r| r["pid"].as_i64()).expect("replica has a pid") as i32
}

pub fn process_exists(pid: i32) -> bool {
    // A zombie still has a /proc entry; it counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) with a pid we read from berth's status; no memory is involved.
    unsafe {
        libc::kill(pid, sig);
    }
}
