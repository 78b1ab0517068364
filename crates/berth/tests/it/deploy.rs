//! Releases and rollouts on the real binary (issue #5): rolling and blue-green deploys under load, canary
//! analysis that rolls a bad release back, instant rollback, failed deploys that leave the old release
//! serving, and a daemon killed mid-canary.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_test_support::load::{self, LoadConfig, RequestSpec};
use berth_test_support::{Daemon, http_request, wait_until};
use serde_json::Value;

use crate::support::*;

const RELEASE_OPTS: &str = "[deploy]\nhealth_deadline = \"15s\"\nwatch = \"1s\"\nkeep_old_for = \"1s\"\n";

/// Writes `name`'s app.toml with `extra` (top-level keys and tables) into `root/name`.
fn write_spec(root: &Path, name: &str, replicas: u32, extra: &str) -> std::path::PathBuf {
    service_dir(root, name, &hello_spec(name, replicas, extra))
}

/// Runs `berth deploy` (or another command) to its end; returns whether it succeeded and its stderr.
fn run(daemon: &Daemon, args: &[&str]) -> (bool, String) {
    let out = daemon.cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("$ berth {}\n{stderr}", args.join(" "));
    (out.status.success(), stderr)
}

/// Starts `berth ARGS` without waiting for it.
fn spawn(daemon: &Daemon, args: &[&str]) -> Child {
    Command::new(berth())
        .arg("--state-dir")
        .arg(daemon.state_dir())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth")
}

fn load_config(daemon: &Daemon, name: &str, duration: Duration) -> LoadConfig {
    LoadConfig {
        addr: daemon.gateway_addr(),
        rate_per_sec: 120.0,
        duration,
        requests: vec![RequestSpec {
            method: "GET".into(),
            path: "/".into(),
            host: format!("{name}.localhost"),
            headers: vec![],
            body: vec![],
        }],
        timeout: Duration::from_secs(10),
        max_in_flight: 256,
    }
}

fn releases(daemon: &Daemon, name: &str) -> Vec<Value> {
    daemon.cli_json(&["releases", name]).as_array().cloned().unwrap_or_default()
}

fn outcome(releases: &[Value], number: u64) -> String {
    let release = releases.iter().find(|r| r["number"] == number);
    release.map(|r| r["outcome"].as_str().unwrap_or("?").to_owned()).unwrap_or_else(|| "missing".to_owned())
}

/// The `release` a replica of `name` answers `/` with, through the gateway.
fn serving_release(daemon: &Daemon, name: &str) -> String {
    let host = format!("{name}.localhost");
    let (status, _, body) =
        http_request(daemon.gateway_addr(), "GET", "/", &[("Host", &host)], b"", Duration::from_secs(5))
            .expect("request through the gateway");
    assert_eq!(status, 200);
    let body: Value = serde_json::from_slice(&body).expect("JSON from hello");
    body["release"].as_str().unwrap_or_default().to_owned()
}

fn deploy_under_load(strategy: &str) {
    let name = format!("web-{strategy}");
    let root = berth_test_support::temp_dir();
    let dir = write_spec(root.path(), &name, 2, RELEASE_OPTS);
    let daemon = Daemon::start(berth(), &root.path().join("state"), &[&dir]);
    wait_healthy(&daemon, &name, 2);
    let before = serving_release(&daemon, &name);

    let run_load = load::start(load_config(&daemon, &name, Duration::from_secs(16)));
    std::thread::sleep(Duration::from_secs(2)); // let the load settle before the deploy starts
    let (ok, stderr) = run(&daemon, &["deploy", dir.to_str().expect("utf-8 path"), "--strategy", strategy, "--wait"]);
    let report = run_load.wait();
    println!("{strategy} deploy under 120 rps:\n{}", report.summary());
    assert!(ok, "the deploy went live:\n{stderr}");
    assert_eq!(report.failed("GET"), 0, "no request failed during the {strategy} deploy");
    let after = serving_release(&daemon, &name);
    assert!(after.ends_with("-r1") && after != before, "release 1 serves: {before} -> {after}");
    assert_eq!(outcome(&releases(&daemon, &name), 1), "live");
}

#[test]
fn a_rolling_deploy_under_load_fails_no_request() {
    deploy_under_load("rolling");
}

#[test]
fn a_blue_green_deploy_under_load_fails_no_request() {
    deploy_under_load("bluegreen");
}

const CANARY: &str = "[deploy]\nstrategy = \"canary\"\ncanary_steps = [10, 50, 100]\nstep_pause = \"3s\"\nwatch = \"1s\"\n\
                      health_deadline = \"15s\"\nanalysis = { error_rate = \"1%\", min_requests = 20 }\n";

#[test]
fn a_canary_that_fails_10_percent_is_rolled_back_at_its_first_step_and_a_good_one_is_promoted() {
    let root = berth_test_support::temp_dir();
    let dir = write_spec(root.path(), "shop", 2, CANARY);
    let daemon = Daemon::start(berth(), &root.path().join("state"), &[&dir]);
    wait_healthy(&daemon, "shop", 2);
    let stable = serving_release(&daemon, "shop");

    // Release 1 answers 10% of `/` with 500.
    write_spec(root.path(), "shop", 2, &format!("{CANARY}[env]\nHELLO_FLAKY_ERROR_RATE = \"0.1\"\n"));
    let run_load = load::start(load_config(&daemon, "shop", Duration::from_secs(14)));
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let (ok, stderr) = run(&daemon, &["deploy", dir.to_str().expect("utf-8 path"), "--wait"]);
    let episode = started.elapsed();
    let report = run_load.wait();
    println!("bad canary (episode {episode:?}):\n{}", report.summary());
    let share = report.failed("GET") as f64 / report.sent as f64;
    println!("failed share of all requests: {:.3}% ({} of {})", share * 100.0, report.failed("GET"), report.sent);
    assert!(!ok, "a bad canary does not go live:\n{stderr}");
    assert!(stderr.contains("rolled back at 10%"), "rolled back at the first step:\n{stderr}");
    assert!(stderr.contains("error rate"), "the reason gives the numbers:\n{stderr}");
    assert!(share < 0.005, "under 0.5% of requests failed, got {:.3}%", share * 100.0);
    assert_eq!(serving_release(&daemon, "shop"), stable, "the stable release serves again");
    assert!(outcome(&releases(&daemon, "shop"), 1).starts_with("rolled-back"));

    // Release 2 is good: every step passes and it is promoted.
    write_spec(root.path(), "shop", 2, CANARY);
    let run_load = load::start(load_config(&daemon, "shop", Duration::from_secs(20)));
    let (ok, stderr) = run(&daemon, &["deploy", dir.to_str().expect("utf-8 path"), "--wait"]);
    let report = run_load.wait();
    println!("good canary:\n{}", report.summary());
    assert!(ok, "a good canary is promoted:\n{stderr}");
    for step in ["10% step passed", "50% step passed"] {
        assert!(stderr.contains(step), "missing `{step}`:\n{stderr}");
    }
    assert_eq!(report.failed("GET"), 0);
    assert!(serving_release(&daemon, "shop").ends_with("-r2"));
    let feed = releases(&daemon, "shop");
    assert_eq!(outcome(&feed, 2), "live");
}

#[test]
fn rollback_after_a_blue_green_deploy_switches_back_within_a_second() {
    let root = berth_test_support::temp_dir();
    let opts = "[deploy]\nstrategy = \"bluegreen\"\nkeep_old_for = \"60s\"\nhealth_deadline = \"15s\"\n";
    let dir = write_spec(root.path(), "api", 2, opts);
    let daemon = Daemon::start(berth(), &root.path().join("state"), &[&dir]);
    wait_healthy(&daemon, "api", 2);
    let old = serving_release(&daemon, "api");

    // Without --wait, `berth deploy` returns once release 1 serves everything; the old set stays warm.
    let (ok, stderr) = run(&daemon, &["deploy", dir.to_str().expect("utf-8 path")]);
    assert!(ok && stderr.contains("stays warm"), "{stderr}");
    assert!(serving_release(&daemon, "api").ends_with("-r1"));

    // Every answer's release, as the load sees it, with its arrival time.
    let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let recorder = seen.clone();
    let on_response: load::OnResponse = Arc::new(move |response: &load::Received<'_>| {
        let body = serde_json::from_slice::<Value>(response.body).ok();
        if let Some(release) = body.and_then(|v| v["release"].as_str().map(str::to_owned)) {
            recorder.lock().expect("lock").push((response.at, release));
        }
    });
    let run_load = load::start_observed(load_config(&daemon, "api", Duration::from_secs(6)), on_response);
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    let mut rollback = spawn(&daemon, &["rollback", "api"]);
    let switched = wait_until(Duration::from_secs(5), "the old release to serve again", || {
        let seen = seen.lock().expect("lock");
        seen.iter().find(|(at, release)| *at > asked && *release == old).map(|(at, _)| *at - asked)
    });
    let report = run_load.wait();
    let status = rollback.wait().expect("rollback ends");
    println!("rollback switched back after {switched:?}\n{}", report.summary());
    assert!(status.success(), "berth rollback succeeded");
    assert!(switched < Duration::from_secs(1), "switched back within one second, took {switched:?}");
    assert_eq!(report.failed("GET"), 0, "no request failed");
    let late: Vec<_> = {
        let seen = seen.lock().expect("lock");
        seen.iter().filter(|(at, release)| *at > asked + Duration::from_secs(1) && *release != old).cloned().collect()
    };
    assert!(late.is_empty(), "only the old release answers after the switch: {late:?}");
    assert!(outcome(&releases(&daemon, "api"), 1).starts_with("rolled-back"));
}

/// A deploy that fails leaves the old release serving and says why.
fn failed_deploy_keeps_the_old_release(extra: &str, expected: &[&str]) {
    let root = berth_test_support::temp_dir();
    let dir = write_spec(root.path(), "svc", 1, RELEASE_OPTS);
    let daemon = Daemon::start(berth(), &root.path().join("state"), &[&dir]);
    wait_healthy(&daemon, "svc", 1);
    let before = serving_release(&daemon, "svc");
    write_spec(root.path(), "svc", 1, &format!("{RELEASE_OPTS}{extra}"));
    let (ok, stderr) = run(&daemon, &["deploy", dir.to_str().expect("utf-8 path"), "--wait"]);
    assert!(!ok, "the deploy fails");
    for piece in expected {
        assert!(stderr.contains(piece), "missing {piece:?} in:\n{stderr}");
    }
    assert_eq!(serving_release(&daemon, "svc"), before, "the old release still serves");
    let status = service(&daemon, "svc");
    assert_eq!(status["healthy_replicas"], 1);
}

#[test]
fn a_build_failure_keeps_the_old_release() {
    failed_deploy_keeps_the_old_release(
        "\n[build]\ncommand = [\"sh\", \"-c\", \"echo compiling; echo 'error: missing semicolon' >&2; exit 3\"]\n",
        &["error: missing semicolon", "the build step failed", "exit status: 3", "the live release still serves"],
    );
}

#[test]
fn a_test_failure_keeps_the_old_release() {
    failed_deploy_keeps_the_old_release(
        "\n[test]\ncommand = [\"sh\", \"-c\", \"echo 'test checkout ... FAILED'; exit 1\"]\n",
        &["test checkout ... FAILED", "the test step failed"],
    );
}

#[test]
fn a_release_that_never_gets_healthy_is_rolled_back_with_its_logs() {
    let extra = "[env]\nHELLO_FAIL_START = \"1\"\n";
    // The message quotes the failing replica itself (its exit, its own last words), not the old replicas
    // that share the unit's log during a rolling deploy.
    failed_deploy_keeps_the_old_release(
        extra,
        &[
            "was not deployed",
            "not healthy within 15s",
            "its last log lines",
            "[0] failing at start",
            "exited with code 1",
        ],
    );
}

#[test]
fn a_daemon_killed_mid_canary_comes_back_on_the_stable_release() {
    let root = berth_test_support::temp_dir();
    let slow_canary = "[deploy]\nstrategy = \"canary\"\ncanary_steps = [25, 100]\nstep_pause = \"60s\"\n\
                       health_deadline = \"15s\"\n";
    let dir = write_spec(root.path(), "pay", 2, slow_canary);
    let state = root.path().join("state");
    let mut daemon = Daemon::start(berth(), &state, &[&dir]);
    wait_healthy(&daemon, "pay", 2);
    let stable = serving_release(&daemon, "pay");

    let mut deploy = spawn(&daemon, &["deploy", dir.to_str().expect("utf-8 path"), "--wait"]);
    wait_until(Duration::from_secs(20), "the canary to take traffic", || {
        let releases: Vec<String> = (0..20).map(|_| serving_release(&daemon, "pay")).collect();
        releases.iter().any(|r| r.ends_with("-r1")).then_some(())
    });
    daemon.kill9();
    let _ = deploy.kill();
    let _ = deploy.wait();

    let daemon = Daemon::start(berth(), &state, &[]);
    wait_healthy(&daemon, "pay", 2);
    let answers: Vec<String> = (0..40).map(|_| serving_release(&daemon, "pay")).collect();
    assert!(answers.iter().all(|r| *r == stable), "only the stable release serves after the restart: {answers:?}");
    let units: Vec<String> = daemon
        .cli_json(&["ps"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(units, ["pay"], "no canary unit is left");
    let canary_left = wait_until(Duration::from_secs(10), "the canary's processes to be gone", || {
        let left = berth_test_support::processes_with_env("BERTH_SERVICE", "pay~next");
        left.is_empty().then_some(left.len())
    });
    assert_eq!(canary_left, 0);
    let feed = releases(&daemon, "pay");
    assert!(outcome(&feed, 1).starts_with("rolled-back"), "{feed:?}");
    let reason = feed.iter().find(|r| r["number"] == 1).and_then(|r| r["reason"].as_str()).unwrap_or_default();
    assert!(reason.contains("daemon stopped during the rollout"), "{reason}");
}

/// A webhook receiver on loopback: every POST body, as JSON, in arrival order.
fn webhook_receiver() -> (std::net::SocketAddr, std::sync::mpsc::Receiver<Value>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the webhook receiver");
    let addr = listener.local_addr().expect("its address");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if let Ok(event) = serde_json::from_slice(&body)
                && tx.send(event).is_err()
            {
                return;
            }
        }
    });
    (addr, rx)
}

#[test]
fn a_preview_deploy_runs_beside_the_service_and_the_webhook_hears_it() {
    let root = berth_test_support::temp_dir();
    let (hook, events) = webhook_receiver();
    std::fs::write(root.path().join("berth.toml"), format!("[deploy]\nwebhook = \"http://{hook}/berth\"\n"))
        .expect("write berth.toml");
    let dir = write_spec(root.path(), "web", 1, RELEASE_OPTS);
    let daemon = Daemon::start(berth(), &root.path().join("state"), &[root.path()]);
    wait_healthy(&daemon, "web", 1);

    let (ok, stderr) = run(&daemon, &["deploy", dir.to_str().expect("utf-8 path"), "--branch", "feature-x", "--wait"]);
    assert!(ok, "{stderr}");
    wait_healthy(&daemon, "web-feature-x", 1);
    let identity = |host: &str| {
        let (status, _, body) =
            http_request(daemon.gateway_addr(), "GET", "/", &[("Host", host)], b"", Duration::from_secs(5))
                .expect("request through the gateway");
        (status, serde_json::from_slice::<Value>(&body).map(|v| v["service"].clone()).unwrap_or(Value::Null))
    };
    assert_eq!(identity("web-feature-x.localhost"), (200, Value::from("web-feature-x")));
    assert_eq!(identity("web.localhost"), (200, Value::from("web")), "the service itself is untouched");

    // The webhook got the deploy's steps in order, ending with its outcome (and no build output lines).
    let mut seen = Vec::new();
    while let Ok(event) = events.recv_timeout(Duration::from_secs(10)) {
        let done = event["event"] == "done";
        seen.push(event);
        if done {
            break;
        }
    }
    let kinds: Vec<&str> = seen.iter().filter_map(|e| e["event"].as_str()).collect();
    println!("webhook events: {kinds:?}");
    assert_eq!(kinds.first(), Some(&"step"), "{seen:?}");
    assert!(!kinds.contains(&"output"));
    let done = seen.last().expect("some events");
    assert_eq!((done["event"].as_str(), done["ok"].as_bool()), (Some("done"), Some(true)), "{done}");
    assert_eq!(done["service"], "web-feature-x");

    let (ok, stderr) = run(&daemon, &["delete", "web", "--branch", "feature-x"]);
    assert!(ok, "{stderr}");
    assert_eq!(identity("web-feature-x.localhost").0, 404, "the preview is gone");
    assert_eq!(identity("web.localhost").0, 200);
}

#[test]
fn a_second_deploy_is_refused_while_a_canary_runs_and_promote_finishes_it() {
    let root = berth_test_support::temp_dir();
    let slow_canary = "[deploy]\nstrategy = \"canary\"\ncanary_steps = [25, 100]\nstep_pause = \"10m\"\nwatch = \"0s\"\n\
                       health_deadline = \"15s\"\n";
    let dir = write_spec(root.path(), "cart", 2, slow_canary);
    let daemon = Daemon::start(berth(), &root.path().join("state"), &[&dir]);
    wait_healthy(&daemon, "cart", 2);
    let path = dir.to_str().expect("utf-8 path");

    let first = spawn(&daemon, &["deploy", path, "--wait"]);
    wait_until(Duration::from_secs(20), "the canary to take traffic", || {
        (0..20).map(|_| serving_release(&daemon, "cart")).any(|r| r.ends_with("-r1")).then_some(())
    });
    let (ok, stderr) = run(&daemon, &["deploy", path]);
    assert!(!ok, "a second deploy is refused");
    assert!(stderr.contains("a rollout of `cart` is under way (release 1)"), "{stderr}");
    assert!(stderr.contains("berth promote cart"), "the refusal says what to do: {stderr}");

    let (ok, stderr) = run(&daemon, &["promote", "cart"]);
    assert!(ok, "{stderr}");
    let out = first.wait_with_output().expect("the first deploy ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stderr}");
    assert!(out.status.success(), "promoted: {stderr}");
    assert!((0..20).map(|_| serving_release(&daemon, "cart")).all(|r| r.ends_with("-r1")), "release 1 serves all");
    let (ok, stderr) = run(&daemon, &["promote", "cart"]);
    assert!(!ok && stderr.contains("no rollout of `cart` is under way"), "{stderr}");
}

#[test]
fn rollback_to_a_numbered_release_runs_its_artifact_again() {
    let root = berth_test_support::temp_dir();
    let dir = write_spec(root.path(), "notes", 1, RELEASE_OPTS);
    let daemon = Daemon::start(berth(), &root.path().join("state"), &[&dir]);
    wait_healthy(&daemon, "notes", 1);
    let path = dir.to_str().expect("utf-8 path");
    for _ in 0..2 {
        let (ok, stderr) = run(&daemon, &["deploy", path, "--wait"]);
        assert!(ok, "{stderr}");
    }
    assert!(serving_release(&daemon, "notes").ends_with("-r2"));
    // The directory changes after release 1 was made; rolling back runs release 1's own copy.
    std::fs::write(dir.join("app.toml"), "this is not TOML").expect("break the working copy");

    let (ok, stderr) = run(&daemon, &["rollback", "notes", "--to", "1"]);
    assert!(ok, "{stderr}");
    assert!(serving_release(&daemon, "notes").ends_with("-r1"), "release 1 serves again");
    let feed = releases(&daemon, "notes");
    assert_eq!(outcome(&feed, 1), "live");
    assert_eq!(outcome(&feed, 2), "superseded");
    let (ok, stderr) = run(&daemon, &["rollback", "notes", "--to", "9"]);
    assert!(!ok && stderr.contains("has no release 9"), "{stderr}");
}
