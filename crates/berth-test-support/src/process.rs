//! Finding and killing processes by an environment variable, so a test can clean up every
//! replica its daemon started, even after the daemon itself was killed.
//!
//! Linux-only: it reads `/proc/<pid>/environ`.

use std::fs;
use std::time::Duration;

use crate::wait::poll_until;

/// How long [`kill_processes_with_env`] waits for killed processes to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The pids of live processes whose initial environment contains `key=value`. Processes whose
/// environment cannot be read (other users', exiting ones) are skipped, and so is this process.
/// Zombies have an empty environment, so they never match.
pub fn processes_with_env(key: &str, value: &str) -> Vec<i32> {
    let needle = format!("{key}={value}").into_bytes();
    let own_pid = std::process::id() as i32;
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut res: Vec<i32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != own_pid)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|environ| environ.split(|byte| *byte == 0).any(|var| var == needle))
        })
        .collect();
    res.sort_unstable();
    res
}

/// Sends SIGCONT (so stopped processes die at once) and SIGKILL to every process with
/// `key=value` in its environment and to its process group, then waits up to 5s for them to be
/// gone. The caller's own process group is never signalled.
pub fn kill_processes_with_env(key: &str, value: &str) {
    // SAFETY: getpgrp has no preconditions and cannot fail.
    let own_group = unsafe { libc::getpgrp() };
    for pid in processes_with_env(key, value) {
        if pid <= 1 {
            continue;
        }
        // SAFETY: getpgid and kill take plain integers and report errors through their result;
        // a pid that has exited in the meantime only makes them fail with ESRCH.
        unsafe {
            let group = libc::getpgid(pid);
            if group > 1 && group != own_group {
                libc::kill(-group, libc::SIGCONT);
                libc::kill(-group, libc::SIGKILL);
            }
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGKILL);
        }
    }
    // Killed processes linger until the kernel has torn them down; waiting keeps a test's
    // cleanup from racing the next test's port or directory. Failing here would only mask the
    // test's own result, so a survivor is left alone.
    let _ = poll_until(KILL_WAIT, || processes_with_env(key, value).is_empty().then_some(()));
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader};
    use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
    use std::process::{Command, Stdio};
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::wait_until;

    const KEY: &str = "BERTH_TEST_SUPPORT_MARKER";

    fn unique_marker(test: &str) -> String {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        format!("{test}-{}-{nanos}", std::process::id())
    }

    /// True once `pid` is gone or a zombie (a zombie's parent may be a non-reaping init).
    fn is_dead(pid: i32) -> bool {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    #[test]
    fn finds_and_kills_a_marked_child() {
        let marker = unique_marker("child");
        let mut unmarked = Command::new("sleep").arg("30").spawn().unwrap();
        let mut child = Command::new("sleep").arg("30").env(KEY, &marker).spawn().unwrap();
        let pid = child.id() as i32;

        let found = wait_until(Duration::from_secs(5), "the marked sleep", || {
            let pids = processes_with_env(KEY, &marker);
            (!pids.is_empty()).then_some(pids)
        });
        assert_eq!(found, vec![pid]);
        assert!(processes_with_env(KEY, &format!("{marker}-other")).is_empty());

        kill_processes_with_env(KEY, &marker);
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(processes_with_env(KEY, &marker).is_empty());

        // The unmarked process, in this test's own process group, survived.
        assert_eq!(unmarked.try_wait().unwrap(), None);
        unmarked.kill().unwrap();
        unmarked.wait().unwrap();
    }

    #[test]
    fn kills_the_process_group_and_stopped_processes() {
        let marker = unique_marker("group");
        // The shell carries the marker; its background child drops it and is only reachable
        // through the process group. The shell stops itself, as the hang fault does.
        let mut shell = Command::new("sh")
            .args(["-c", &format!("env -u {KEY} sleep 30 & echo $!; kill -STOP $$; wait")])
            .env(KEY, &marker)
            .process_group(0)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(shell.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let grandchild: i32 = line.trim().parse().unwrap();
        assert!(!is_dead(grandchild));

        kill_processes_with_env(KEY, &marker);
        assert_eq!(shell.wait().unwrap().signal(), Some(libc::SIGKILL));
        wait_until(Duration::from_secs(5), "the grandchild to die", || is_dead(grandchild).then_some(()));
    }
}
