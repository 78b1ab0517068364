//! Tests of the build and test steps: real `sh` processes in temp directories.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_test_support::wait_until;

use super::*;
use crate::load::load_dir;

/// A service in `dir` whose `[build]` and `[test]` steps run `sh -c SCRIPT`.
fn service(dir: &Path, build: Option<&str>, test: Option<&str>) -> LoadedService {
    let step = |name: &str, script: Option<&str>| match script {
        Some(script) => format!("[{name}]\ncommand = [\"sh\", \"-c\", {script:?}]\nenv = {{ B = \"b\" }}\n"),
        None => String::new(),
    };
    let toml = format!(
        "name = \"svc\"\nenv = {{ A = \"a\" }}\n[run]\ncommand = \"./svc\"\n{}{}",
        step("build", build),
        step("test", test)
    );
    std::fs::write(dir.join("app.toml"), toml).expect("write app.toml");
    load_dir(dir).expect("the test spec is valid")
}

fn texts(lines: &[StepLine]) -> Vec<&str> {
    lines.iter().map(|line| line.text.as_str()).collect()
}

/// Whether `pid` is a live process (a zombie counts as gone: it has been killed, only not yet reaped).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

#[test]
fn lines_stream_as_they_come_in_order_with_env_and_workdir() {
    let dir = tempfile::tempdir().expect("temp dir");
    // The step waits for a file that only the line callback creates: if lines were delivered after the
    // process exits instead of as they come, the step would hang until its time limit.
    let script = "echo $A$B; pwd; while [ ! -e go ]; do sleep 0.02; done; seq 1 500; echo to-stderr >&2";
    let service = service(dir.path(), Some(script), None);
    let mut lines = Vec::new();
    let go = dir.path().join("go");
    let options = StepOptions { timeout: Duration::from_secs(20) };
    let outcome = run_step_with(StepKind::Build, &service, &options, &mut |line| {
        if lines.len() == 1 {
            std::fs::write(&go, "").expect("create go");
        }
        lines.push(line);
    })
    .expect("the step passes");
    assert!(matches!(outcome, StepOutcome::Passed { .. }), "{outcome:?}");

    let stdout: Vec<&str> =
        lines.iter().filter(|line| line.stream == StepStream::Stdout).map(|line| line.text.as_str()).collect();
    let expected_numbers: Vec<String> = (1..=500).map(|n| n.to_string()).collect();
    assert_eq!(stdout[0], "ab", "top-level env, then the step's own");
    let canonical_dir = std::fs::canonicalize(dir.path()).expect("canonical temp dir");
    assert_eq!(Path::new(stdout[1]), canonical_dir, "runs in the service directory");
    assert_eq!(stdout[2..], expected_numbers, "every stdout line, in order");
    let stderr: Vec<&StepLine> = lines.iter().filter(|line| line.stream == StepStream::Stderr).collect();
    assert_eq!(texts(&stderr.into_iter().cloned().collect::<Vec<_>>()), ["to-stderr"]);
}

#[test]
fn a_failing_step_says_which_command_its_status_and_the_tail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let script = "seq 1 300; exit 3";
    let service = service(dir.path(), None, Some(script));
    let mut n_lines = 0;
    let error = run_step(StepKind::Test, &service, &mut |_| n_lines += 1).expect_err("the step fails");
    assert_eq!(n_lines, 300, "every line is streamed, not only the tail");
    let StepError::Failed { step, status, tail, .. } = &error else { panic!("expected Failed, got {error:?}") };
    assert_eq!(*step, StepKind::Test);
    assert_eq!(status, "exit status: 3");
    let expected_tail: Vec<String> = (101..=300).map(|n| n.to_string()).collect();
    assert_eq!(texts(tail), expected_tail, "the last {TAIL_LINES} lines");
    let message = error.to_string();
    assert!(
        message.starts_with(
            "the test step of `svc` failed: `sh -c seq 1 300; exit 3` ended with exit status: 3; \
             its last 200 line(s) of output:\n    101\n    102\n"
        ),
        "{message}"
    );
    assert!(message.ends_with("\n    300"), "{message}");
    assert!(error.hint().is_some());
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A background child in the same group, which must die with the step.
    let script = "sleep 60 & echo $!; echo $$; sleep 60";
    let service = service(dir.path(), Some(script), None);
    let mut lines = Vec::new();
    let started = Instant::now();
    let options = StepOptions { timeout: Duration::from_secs(1) };
    let error =
        run_step_with(StepKind::Build, &service, &options, &mut |line| lines.push(line)).expect_err("times out");
    let elapsed = started.elapsed();
    let StepError::TimedOut { timeout, tail, .. } = &error else { panic!("expected TimedOut, got {error:?}") };
    assert_eq!(*timeout, Duration::from_secs(1));
    assert_eq!(texts(tail), texts(&lines));
    assert!(elapsed < Duration::from_secs(30), "returned after {elapsed:?}, not after the step's sleeps");
    assert!(error.to_string().contains("ran longer than 1s and was killed"), "{error}");
    let [background, shell] = [&lines[0].text, &lines[1].text];
    wait_until(Duration::from_secs(10), "the step's processes to die", || {
        (!alive(background) && !alive(shell)).then_some(())
    });
}

#[test]
fn processes_left_behind_are_killed_once_output_goes_quiet() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Exits at once but leaves a process holding stdout open.
    let script = "sleep 60 & echo $!";
    let service = service(dir.path(), Some(script), None);
    let mut lines = Vec::new();
    let outcome = run_step(StepKind::Build, &service, &mut |line| lines.push(line)).expect("the step passes");
    assert!(matches!(outcome, StepOutcome::Passed { .. }));
    let background = lines[0].text.clone();
    wait_until(Duration::from_secs(10), "the left-behind process to die", || (!alive(&background)).then_some(()));
}

#[test]
fn missing_steps_are_skipped_and_missing_programs_say_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let service = service(dir.path(), None, None);
    assert_eq!(run_step(StepKind::Build, &service, &mut |_| {}).expect("skipped"), StepOutcome::Skipped);
    assert_eq!(run_step(StepKind::Test, &service, &mut |_| {}).expect("skipped"), StepOutcome::Skipped);

    std::fs::write(
        dir.path().join("app.toml"),
        "name = \"svc\"\n[run]\ncommand = \"./svc\"\n[build]\ncommand = \"./no-such-build-script\"\n",
    )
    .expect("write app.toml");
    let service = load_dir(dir.path()).expect("valid spec");
    let error = run_step(StepKind::Build, &service, &mut |_| {}).expect_err("cannot spawn");
    assert!(matches!(error, StepError::Spawn { .. }), "{error:?}");
    assert!(error.to_string().contains("`./no-such-build-script`"), "{error}");
}

#[test]
fn long_lines_are_cut_and_line_endings_dropped() {
    let mut input = "short\r\n".to_owned();
    input += &"x".repeat(MAX_LINE_BYTES + 10);
    input += "\nlast without newline";
    let mut lines = Vec::new();
    read_lines(input.as_bytes(), |line| lines.push(line));
    let lens: Vec<usize> = lines.iter().map(String::len).collect();
    assert_eq!(lines[0], "short");
    assert_eq!(lens[1..3], [MAX_LINE_BYTES, 10]);
    assert_eq!(lines[3], "last without newline");
    assert_eq!(lines.len(), 4);
}
