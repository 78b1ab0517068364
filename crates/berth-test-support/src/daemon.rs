//! `Daemon`: a `berth up` process in a temporary state directory, for integration tests.
//!
//! The daemon writes `<state_dir>/daemon.json` (`{"api": "127.0.0.1:PORT", "pid": N}`) once its
//! control API listens, and gives every replica `BERTH_STATE_DIR=<canonical state dir>`. Drop
//! relies on the latter to kill replicas even when the daemon itself is already gone.

use std::fs::{self, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use crate::http::http_get;
use crate::process::kill_processes_with_env;
use crate::wait::poll_until;

/// How long [`Daemon::start`] waits for the control API.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `berth` daemon. Dropping it SIGKILLs the daemon and every process it started.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    /// Canonical, as the daemon puts it into replicas' `BERTH_STATE_DIR`.
    state_dir: PathBuf,
    bin: PathBuf,
    api_addr: SocketAddr,
    /// True once the child has been waited for, so Drop does not signal a reused pid.
    reaped: bool,
}

impl Daemon {
    /// Spawns `<bin> --state-dir <state_dir> up --api 127.0.0.1:0 --gateway 127.0.0.1:0 --https 127.0.0.1:0
    /// <service_dirs...>` with
    /// `RUST_LOG=debug` and its output appended to `<state_dir>/daemon.out`, then waits (30s)
    /// until `daemon.json` names this process and `GET /healthz` on its API answers 200.
    ///
    /// # Panics
    ///
    /// Panics with the tail of `daemon.out` if the daemon exits or is not ready in time.
    pub fn start(bin: &Path, state_dir: &Path, service_dirs: &[&Path]) -> Daemon {
        Daemon::start_with(bin, state_dir, service_dirs, &[])
    }

    /// Like [`Daemon::start`], with extra arguments for `berth up` (e.g. `--access-log`).
    pub fn start_with(bin: &Path, state_dir: &Path, service_dirs: &[&Path], up_args: &[&str]) -> Daemon {
        fs::create_dir_all(state_dir)
            .unwrap_or_else(|error| panic!("failed to create {}: {error}", state_dir.display()));
        let state_dir = state_dir
            .canonicalize()
            .unwrap_or_else(|error| panic!("failed to canonicalize {}: {error}", state_dir.display()));
        let out_path = state_dir.join("daemon.out");
        let stdout = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&out_path)
            .unwrap_or_else(|error| panic!("failed to open {}: {error}", out_path.display()));
        let stderr =
            stdout.try_clone().unwrap_or_else(|error| panic!("failed to clone {}: {error}", out_path.display()));
        let child = Command::new(bin)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["up", "--api", "127.0.0.1:0", "--gateway", "127.0.0.1:0", "--https", "127.0.0.1:0"])
            .args(up_args)
            .args(service_dirs)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("failed to spawn {}: {error}", bin.display()));

        // From here on, a panic drops `daemon`, which kills it and its replicas.
        let mut daemon = Daemon {
            child,
            state_dir,
            bin: bin.to_path_buf(),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            reaped: false,
        };
        let ready = poll_until(START_TIMEOUT, || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                daemon.reaped = true;
                panic!("berth daemon exited early ({status}); last lines of daemon.out:\n{}", daemon.output_tail(40));
            }
            daemon.ready_api_addr()
        });
        match ready {
            Some(api_addr) => daemon.api_addr = api_addr,
            None => panic!(
                "timed out after {START_TIMEOUT:?} waiting for the berth daemon's API; \
                 last lines of daemon.out:\n{}",
                daemon.output_tail(40)
            ),
        }
        daemon
    }

    /// The control API's address, as written to `daemon.json`.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The gateway's address, as written to `daemon.json`.
    pub fn gateway_addr(&self) -> SocketAddr {
        self.info_addr("gateway")
    }

    /// The gateway's HTTPS address (HTTP/3 on the same port over UDP), as written to `daemon.json`.
    pub fn https_addr(&self) -> SocketAddr {
        self.info_addr("https")
    }

    fn info_addr(&self, key: &str) -> SocketAddr {
        let text = fs::read_to_string(self.state_dir.join("daemon.json"))
            .unwrap_or_else(|error| panic!("daemon.json is unreadable: {error}"));
        let info: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|error| panic!("daemon.json is not JSON: {error}"));
        info[key]
            .as_str()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("daemon.json names no {key} address: {text}"))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The canonical state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Runs `<bin> --state-dir <state_dir> <args...>` to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("failed to run {} {args:?}: {error}", self.bin.display()))
    }

    /// Runs the CLI with `--json` appended, asserts it succeeded and parses its stdout.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        let output = self.cli(&args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "berth {args:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|error| panic!("berth {args:?} printed invalid JSON ({error}):\n{stdout}"))
    }

    /// SIGKILLs the daemon alone and reaps it; its replicas keep running.
    pub fn kill9(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }

    /// The last `n` lines the daemon wrote to stdout and stderr.
    pub fn output_tail(&self, n: usize) -> String {
        let out = fs::read(self.state_dir.join("daemon.out")).unwrap_or_default();
        let text = String::from_utf8_lossy(&out);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The API address once `daemon.json` names this process and `/healthz` answers 200. The
    /// pid check skips a stale file left by an earlier daemon on the same state directory.
    fn ready_api_addr(&self) -> Option<SocketAddr> {
        let text = fs::read_to_string(self.state_dir.join("daemon.json")).ok()?;
        let info: serde_json::Value = serde_json::from_str(&text).ok()?;
        if info["pid"].as_i64()? != i64::from(self.pid()) {
            return None;
        }
        let api_addr: SocketAddr = info["api"].as_str()?.parse().ok()?;
        let (status, _) = http_get(api_addr, "/healthz", Duration::from_secs(2)).ok()?;
        (status == 200).then_some(api_addr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        kill_processes_with_env("BERTH_STATE_DIR", &self.state_dir.to_string_lossy());
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::files::temp_dir;

    /// A stand-in `berth` that fails at once, to check that `start` reports the output.
    fn failing_bin(dir: &Path) -> PathBuf {
        let bin = dir.join("fake-berth");
        fs::write(&bin, "#!/bin/sh\necho \"fake berth got: $*\"\necho 'no such service' >&2\nexit 3\n").unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        bin
    }

    #[test]
    fn start_panics_with_the_output_of_an_early_exit() {
        let tmp = temp_dir();
        let bin = failing_bin(tmp.path());
        let state_dir = tmp.path().join("state");
        let service = tmp.path().join("svc");
        let result = std::panic::catch_unwind(|| Daemon::start(&bin, &state_dir, &[service.as_path()]));
        let payload = result.expect_err("a daemon that exits cannot start");
        let message = payload.downcast_ref::<String>().expect("the panic message is formatted, so it is a String");
        let canonical = state_dir.canonicalize().unwrap();
        assert!(message.starts_with("berth daemon exited early"), "{message}");
        assert!(
            message.contains(&format!(
                "fake berth got: --state-dir {} up --api 127.0.0.1:0 --gateway 127.0.0.1:0 --https 127.0.0.1:0 {}",
                canonical.display(),
                service.display()
            )),
            "{message}"
        );
        assert!(message.contains("no such service"), "{message}");
    }
}
