//! Repository automation: `cargo xtask ci` runs what CI runs, plus clippy; `cargo xtask dist` builds the
//! release binary with profile-guided optimization (`dist.rs`); `cargo xtask bench` measures that binary's
//! gateway against nginx, HAProxy and Caddy with the peer kit in `../shared/bench`; `cargo xtask
//! bench-https` measures its HTTPS listener against nginx and HAProxy with `bench/https/compare-https.sh`.
//!
//! The repository checks themselves (module docs, formatting) are ordinary tests in `tidy`, so that
//! `cargo test --workspace` is the whole gate.

mod dist;
#[cfg(test)]
mod tidy;
mod verdict;

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    if task == "bench" {
        return bench(std::env::args().skip(2).collect());
    }
    if task == "dist" {
        return match dist::build(&repo_root()) {
            Ok(berth) => {
                eprintln!("xtask: dist: {}", berth.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("xtask: dist: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if task == "bench-https" {
        return bench_https(std::env::args().skip(2).collect());
    }
    let steps: &[&[&str]] = match task.as_str() {
        "ci" => &[
            &["fmt", "--all", "--", "--check"],
            &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
            &["test", "--workspace"],
        ],
        _ => {
            eprintln!(
                "usage: cargo xtask ci | cargo xtask dist | cargo xtask bench [SECONDS CONNECTIONS] | cargo xtask \
                 bench-https [SECONDS]"
            );
            return ExitCode::from(2);
        }
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    for step in steps {
        eprintln!("xtask: cargo {}", step.join(" "));
        match Command::new(&cargo).args(*step).status() {
            Ok(status) if status.success() => {}
            _ => {
                eprintln!("xtask: `cargo {}` failed", step.join(" "));
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// The workspace's root directory.
fn repo_root() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    root.canonicalize().unwrap_or(root)
}

/// Builds the binary to measure (`measured_build`), then runs the peer kit twice in one go: throughput
/// at 64 keep-alive connections, and latency at a fixed 120 requests/s. The kit prints each table with
/// ratios to nginx; then berth against nginx on the gateway's goal (`verdict.rs`): the unrounded ratio of
/// the medians, and in how many rounds berth was ahead.
///
/// Ten interleaved rounds per target (the kit's most) unless `ROUNDS` says otherwise (the kit's default is
/// three): at 120 req/s one round's p99 moves by 10–20% on a shared machine, and with five rounds nginx
/// against a copy of itself came out anywhere from 0.91× to 1.08× (docs/benchmarks.md), more than berth
/// and nginx differ. A run takes about half an hour.
fn bench(args: Vec<String>) -> ExitCode {
    let root = repo_root();
    let kit = root.join("../shared/bench");
    if !kit.join("compare.sh").is_file() {
        eprintln!("xtask: the peer kit is missing at {} (it ships in shared/bench)", kit.display());
        return ExitCode::FAILURE;
    }
    let Some(berth) = measured_build(&root) else { return ExitCode::FAILURE };
    let gateway_cmd =
        format!("exec {} gateway --listen 127.0.0.1:$BERTH_GATEWAY_PORT --upstream $BENCH_UPSTREAM", berth.display());
    // The kit's own arguments (seconds, connections) change the throughput run; the label says so.
    let throughput_label = match args.as_slice() {
        [] => "throughput, 64 keep-alive connections".to_owned(),
        given => format!("throughput (compare.sh {})", given.join(" ")),
    };
    let measure = |what: &str, run_args: &[String]| {
        eprintln!("xtask: bench: {what}");
        run_kit(&kit, run_args, &gateway_cmd).map_err(|error| eprintln!("xtask: bench ({what}) failed: {error}"))
    };
    let Ok(rps_rounds) = measure(&throughput_label, &args) else { return ExitCode::FAILURE };
    let latency_label = "latency at a fixed 120 req/s";
    let Ok(p99_rounds) = measure(latency_label, &["--latency".to_owned()]) else { return ExitCode::FAILURE };
    eprintln!("xtask: bench: berth against nginx (the goal: throughput at least nginx's, p99 no worse)");
    eprintln!("  {throughput_label}: {}", verdict::describe(verdict::throughput(&rps_rounds).as_ref(), "ahead"));
    eprintln!("  {latency_label}, p99: {}", verdict::describe(verdict::latency(&p99_rounds).as_ref(), "lower"));
    ExitCode::SUCCESS
}

/// Runs the kit's `compare.sh` with `args`; its stderr passes through, and the round lines on it are kept
/// for the verdict.
fn run_kit(kit: &std::path::Path, args: &[String], gateway_cmd: &str) -> Result<Vec<verdict::Round>, String> {
    use std::io::BufRead;
    let mut child = Command::new("bash")
        .arg(kit.join("compare.sh"))
        .args(args)
        .env("BERTH_GATEWAY_CMD", gateway_cmd)
        .env("ROUNDS", std::env::var_os("ROUNDS").unwrap_or_else(|| "10".into()))
        .current_dir(kit)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("bash: {e}"))?;
    let mut rounds = Vec::new();
    if let Some(stderr) = child.stderr.take() {
        // Read to the end whatever the bytes are, so that the kit never blocks on a full pipe.
        let mut stderr = std::io::BufReader::new(stderr);
        let mut line = Vec::new();
        while stderr.read_until(b'\n', &mut line).is_ok_and(|read| read > 0) {
            let text = String::from_utf8_lossy(&line);
            eprint!("{text}");
            rounds.extend(verdict::parse_round(&text));
            line.clear();
        }
    }
    match child.wait() {
        Ok(status) if status.success() => Ok(rounds),
        Ok(status) => Err(format!("compare.sh exited with {status}")),
        Err(e) => Err(format!("compare.sh: {e}")),
    }
}

/// The binary the benches measure: `cargo xtask dist`'s (profile-guided, what a release ships), or with
/// `BERTH_BUILD=release` the plain `cargo build --release`.
fn measured_build(root: &std::path::Path) -> Option<std::path::PathBuf> {
    let built = match std::env::var("BERTH_BUILD").as_deref() {
        Err(_) | Ok("dist") => dist::build(root)
            .map_err(|error| format!("dist: {error} (BERTH_BUILD=release measures the plain release build)")),
        Ok("release") => dist::cargo_build(root, &root.join("target"), None),
        Ok(other) => Err(format!("BERTH_BUILD={other}: say `dist` (the default, profile-guided) or `release`")),
    };
    match built {
        Ok(berth) => {
            eprintln!("xtask: measuring {}", berth.display());
            Some(berth)
        }
        Err(error) => {
            eprintln!("xtask: {error}");
            None
        }
    }
}

/// Builds the binary to measure (`measured_build`), then runs `bench/https/compare-https.sh` with
/// that binary: HTTPS through the gateway, nginx and HAProxy with one shared certificate, with keep-alive
/// connections and with a TLS handshake per request. The script prints one table per mode with ratios to
/// nginx.
fn bench_https(args: Vec<String>) -> ExitCode {
    let root = repo_root();
    let script = root.join("bench/https/compare-https.sh");
    if !script.is_file() {
        eprintln!("xtask: {} is missing", script.display());
        return ExitCode::FAILURE;
    }
    let Some(berth) = measured_build(&root) else { return ExitCode::FAILURE };
    eprintln!("xtask: bench-https: {}", script.display());
    let status = Command::new("bash").arg(&script).args(&args).env("BERTH_BIN", &berth).current_dir(&root).status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("xtask: bench-https failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
