use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::*;
use crate::{http_get, http_request, wait_until};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A running `hello`, killed on drop.
struct Hello {
    child: Child,
    addr: SocketAddr,
    /// Stdout lines after "listening on".
    lines: mpsc::Receiver<String>,
}

impl Hello {
    fn start(env: &[(&str, &str)]) -> Hello {
        let mut child = Command::new(example_bin("hello"))
            .env("PORT", "0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (sender, lines) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let line = lines.recv_timeout(TIMEOUT).expect("hello prints its address first");
        let addr = line
            .rsplit_once("listening on ")
            .and_then(|(_, rest)| rest.split(['"', ' ']).next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Hello { child, addr, lines }
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path, TIMEOUT).unwrap()
    }
}

impl Drop for Hello {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn workspace_root_holds_the_workspace_manifest() {
    let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
    assert!(manifest.contains("[workspace]"));
}

#[test]
fn hello_serves_health_metrics_and_identity() {
    let hello = Hello::start(&[("BERTH_SERVICE", "hello"), ("BERTH_REPLICA", "3"), ("HELLO_LOG", "json")]);
    assert_eq!(hello.get("/healthz"), (200, "ok".to_string()));
    assert_eq!(hello.get("/ping"), (200, "ok".to_string()));

    let (status, body) = hello.get("/");
    assert_eq!(status, 200);
    let identity: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(identity["service"], "hello");
    assert_eq!(identity["replica"], "3");
    assert_eq!(identity["pid"], hello.child.id());

    let (status, _, body) = http_request(hello.addr, "POST", "/echo", &[], b"echo me", TIMEOUT).unwrap();
    assert_eq!((status, body.as_slice()), (200, b"echo me".as_slice()));
    let (status, body) = hello.get("/slow?ms=10");
    assert_eq!(status, 200);
    assert!(body.contains("generated_at_ms"), "{body}");

    assert_eq!(hello.get("/fault/unhealthy").0, 200);
    assert_eq!(hello.get("/healthz"), (500, "unhealthy".to_string()));
    assert_eq!(hello.get("/fault/healthy").0, 200);
    assert_eq!(hello.get("/healthz").0, 200);

    let (_, leak) = hello.get("/fault/leak?mb=2");
    assert!(leak.contains("\"total_leaked_bytes\":2097152"), "{leak}");

    let (status, metrics) = hello.get("/metrics");
    assert_eq!(status, 200);
    for expected in [
        "hello_requests_total{path=\"/healthz\",status=\"200\"} 2",
        "hello_requests_total{path=\"/healthz\",status=\"500\"} 1",
        "# TYPE hello_request_duration_seconds histogram",
        "hello_leaked_bytes 2097152",
        "hello_uptime_seconds ",
    ] {
        assert!(metrics.contains(expected), "missing {expected:?} in:\n{metrics}");
    }

    // One JSON access-log line per request.
    let access_line = wait_until(TIMEOUT, "the access log of /healthz", || {
        let line = hello.lines.try_recv().ok()?;
        line.contains("\"path\":\"/healthz\"").then_some(line)
    });
    let access: serde_json::Value = serde_json::from_str(&access_line).unwrap();
    assert_eq!(access["status"], 200);
}

#[test]
fn hello_crash_fault_exits_with_the_code() {
    let mut hello = Hello::start(&[]);
    assert_eq!(hello.get("/fault/crash?code=7"), (200, "exiting with code 7".to_string()));
    let status = wait_until(TIMEOUT, "hello to exit", || hello.child.try_wait().unwrap());
    assert_eq!(status.code(), Some(7));
}

#[test]
fn hello_finishes_in_flight_requests_on_sigterm() {
    let mut hello = Hello::start(&[]);
    let addr = hello.addr;
    let slow = thread::spawn(move || http_get(addr, "/slow?ms=1000", TIMEOUT));
    // In flight: the slow request and the scrape itself.
    wait_until(TIMEOUT, "the slow request to be in flight", || {
        let (_, metrics) = http_get(addr, "/metrics", TIMEOUT).ok()?;
        metrics.contains("hello_requests_in_flight 2\n").then_some(())
    });
    // SAFETY: kill takes plain integers; the child is ours and not yet reaped.
    unsafe {
        libc::kill(hello.child.id() as i32, libc::SIGTERM);
    }
    let (status, body) = slow.join().unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    let exit = wait_until(TIMEOUT, "hello to exit", || hello.child.try_wait().unwrap());
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn hello_rejects_a_missing_port_and_can_fail_at_start() {
    let bin = example_bin("hello");
    let output = Command::new(&bin).env_remove("PORT").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("PORT is not set"), "{output:?}");

    let output = Command::new(&bin).env("HELLO_FAIL_START", "3").output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&output.stderr), "failing at start\n");
    assert_eq!(output.status.signal(), None);
}
