//! Replicas heal themselves: crash, hang, crash loop, out of memory (issue #2, acceptance 2).

use std::time::{Duration, Instant};

use berth_test_support::{Daemon, http_get, temp_dir, wait_until};

use crate::support::*;

#[test]
fn sigkill_of_a_replica_is_replaced() {
    let (_root, daemon) = hello_daemon("web", 2, "");
    let before = service(&daemon, "web");
    let victim = pid_of(&before, 0);
    let other = pid_of(&before, 1);

    signal(victim, libc::SIGKILL);
    let killed_at = Instant::now();
    let after = wait_until(Duration::from_secs(20), "replica 0 replaced and healthy", || {
        let status = service(&daemon, "web");
        let row = replica(&status, 0)?;
        (row["pid"] != victim && row["state"] == "healthy").then_some(status)
    });
    println!("replica back in {:?}", killed_at.elapsed());
    let row = replica(&after, 0).expect("replica 0");
    assert_eq!(row["last_exit"]["kind"], "signaled", "{row}");
    assert!(row["restarts"].as_u64() >= Some(1), "{row}");
    assert_eq!(pid_of(&after, 1), other, "the other replica was not touched");
    assert!(!process_exists(victim));
}

#[test]
fn a_hung_replica_is_detected_and_replaced() {
    let (_root, daemon) = hello_daemon("web", 2, "");
    let before = service(&daemon, "web");
    let victim = pid_of(&before, 1);

    signal(victim, libc::SIGSTOP);
    let hung_at = Instant::now();
    let after = wait_until(Duration::from_secs(20), "hung replica replaced", || {
        let status = service(&daemon, "web");
        let row = replica(&status, 1)?;
        (row["pid"] != victim && row["state"] == "healthy").then_some(status)
    });
    println!("hung replica replaced in {:?}", hung_at.elapsed());
    let row = replica(&after, 1).expect("replica 1");
    assert_eq!(row["last_exit"]["kind"], "unhealthy", "{row}");
    wait_until(Duration::from_secs(10), "the hung process to be killed", || (!process_exists(victim)).then_some(()));
    // The replacement answers.
    let port = row["port"].as_u64().expect("port") as u16;
    let (status, _) =
        http_get(([127, 0, 0, 1], port).into(), "/", Duration::from_secs(2)).expect("replacement answers");
    assert_eq!(status, 200);
}

#[test]
fn a_service_that_always_exits_backs_off_into_a_crash_loop() {
    let root = temp_dir();
    let spec = hello_spec("boom", 1, "").replace("[run]", "[env]\nHELLO_FAIL_START = \"3\"\n\n[run]");
    let dir = service_dir(root.path(), "boom", &spec);
    let daemon = Daemon::start(berth(), &root.path().join("state"), &[&dir]);

    let status = wait_until(Duration::from_secs(30), "crash loop reported", || {
        let status = service(&daemon, "boom");
        (status["state"] == "crash-loop").then_some(status)
    });
    let row = &replicas(&status)[0];
    assert_eq!(row["last_exit"]["kind"], "exited", "{row}");
    assert!(row["last_exit"]["message"].as_str().unwrap_or("").contains("code 3"), "{row}");

    // The gaps between exits grow: read the exit events from the service's log.
    let exits = wait_until(Duration::from_secs(30), "five exits", || {
        let lines = daemon.cli(&["logs", "boom", "--json"]);
        let exits: Vec<u64> = String::from_utf8_lossy(&lines.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| {
                line["stream"] == "berth" && line["line"].as_str().unwrap_or("").contains("exited with code 3")
            })
            .filter_map(|line| line["ts_ms"].as_u64())
            .collect();
        (exits.len() >= 5).then_some(exits)
    });
    let gaps: Vec<u64> = exits.windows(2).map(|w| w[1] - w[0]).collect();
    println!("gaps between exits (ms): {gaps:?}");
    assert!(gaps[3] > gaps[0] * 2, "backoff grows: {gaps:?}");
    let ps = daemon.cli(&["ps"]);
    assert!(String::from_utf8_lossy(&ps.stdout).contains("crash-loop"), "berth ps says crash loop");
    // The failing start is in the logs too.
    let logs = daemon.cli(&["logs", "boom"]);
    assert!(String::from_utf8_lossy(&logs.stdout).contains("failing at start"));
}

#[test]
fn a_memory_leak_past_the_limit_is_reported_as_oom() {
    let (_root, daemon) = hello_daemon("leaky", 1, "size = { cpu = \"500m\", memory = \"64MiB\" }");
    let status = service(&daemon, "leaky");
    let enforcement = status["memory_enforcement"].as_str().unwrap_or("").to_owned();
    println!("memory enforcement: {enforcement}");
    let port = replica(&status, 0).and_then(|r| r["port"].as_u64()).expect("port") as u16;
    let victim = pid_of(&status, 0);

    // Ask for more than the limit, 16 MiB at a time; the process dies somewhere along the way.
    for _ in 0..8 {
        if http_get(([127, 0, 0, 1], port).into(), "/fault/leak?mb=16", Duration::from_secs(5)).is_err() {
            break;
        }
    }
    let row = wait_until(Duration::from_secs(20), "the leaking replica to be replaced", || {
        let status = service(&daemon, "leaky");
        let row = replica(&status, 0)?;
        (row["pid"] != victim && !row["last_exit"].is_null()).then_some(row)
    });
    let kind = row["last_exit"]["kind"].as_str().unwrap_or("").to_owned();
    println!("last exit: {}", row["last_exit"]);
    if enforcement.starts_with("cgroup") {
        assert_eq!(kind, "oom-killed", "{row}");
        assert!(row["last_exit"]["message"].as_str().unwrap_or("").contains("64 MiB"), "{row}");
    } else {
        println!("cgroups not writable here: the rlimit path was taken ({enforcement})");
        assert!(kind == "signaled" || kind == "exited", "{row}");
    }
}
