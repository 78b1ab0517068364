//! The `[build]` and `[test]` steps: run the spec's command in the service directory, stream its output
//! line by line, keep a bounded tail for the error, and kill its whole process group on timeout.
//!
//! Blocking: call it from a thread (or `tokio::task::spawn_blocking`). Two threads read stdout and stderr
//! and a third waits for the process, all feeding one channel, so the caller sees each line as it comes
//! and the time limit holds even when the step prints nothing.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::load::LoadedService;

/// How long a step may run unless `StepOptions` says otherwise.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Lines of output a failed step's error carries.
pub const TAIL_LINES: usize = 200;

/// A longer line is cut into pieces of this many bytes, so a step that never prints a newline cannot make
/// the daemon buffer without bound.
const MAX_LINE_BYTES: usize = 8 * 1024;

/// After the step's process exits, how long its output may keep coming (from processes it left behind)
/// before those are killed.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// After SIGKILL on timeout, how long to wait for the process to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Build,
    Test,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOptions {
    /// The step's process group is killed when it runs longer.
    pub timeout: Duration,
}

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStream {
    Stdout,
    Stderr,
}

/// One line of a step's output, without its line ending (invalid UTF-8 replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepLine {
    pub stream: StepStream,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// The spec has no such step.
    Skipped,
    /// The command exited with status 0.
    Passed { duration: Duration },
}

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("the {step} step of `{service}` has an empty command")]
    EmptyCommand { step: StepKind, service: String },
    #[error("cannot run the {step} step of `{service}`, `{command}` in {workdir}: {source}")]
    Spawn { step: StepKind, service: String, command: String, workdir: String, source: std::io::Error },
    #[error("the {step} step of `{service}` failed: `{command}` ended with {status}{}", render_tail(tail))]
    Failed { step: StepKind, service: String, command: String, status: String, tail: Vec<StepLine> },
    #[error(
        "the {step} step of `{service}` timed out: `{command}` ran longer than {} and was killed{}",
        humantime_secs(*timeout),
        render_tail(tail)
    )]
    TimedOut { step: StepKind, service: String, command: String, timeout: Duration, tail: Vec<StepLine> },
}

/// Runs the service's `[build]` or `[test]` step with the default time limit; see [`run_step_with`].
pub fn run_step(
    step: StepKind,
    service: &LoadedService,
    on_line: &mut dyn FnMut(StepLine),
) -> Result<StepOutcome, StepError> {
    run_step_with(step, service, &StepOptions::default(), on_line)
}

/// Runs the service's `[build]` or `[test]` step: its command in `<service dir>/<workdir>`, with the
/// spec's top-level `env` and then the step's own, stdin closed, in a process group of its own. Every
/// output line goes to `on_line` as it comes. Processes the step leaves behind are killed with the group
/// once its output goes quiet after it exits.
pub fn run_step_with(
    step: StepKind,
    service: &LoadedService,
    options: &StepOptions,
    on_line: &mut dyn FnMut(StepLine),
) -> Result<StepOutcome, StepError> {
    let declared = match step {
        StepKind::Build => &service.spec.build,
        StepKind::Test => &service.spec.test,
    };
    let Some(declared) = declared else { return Ok(StepOutcome::Skipped) };
    let name = service.spec.name.get_ref().clone();
    let command_line = declared.command.join(" ");
    let Some((program, args)) = declared.command.split_first() else {
        return Err(StepError::EmptyCommand { step, service: name });
    };
    let workdir = service.dir.join(&declared.workdir);
    // A program written as a path is relative to the step's workdir, as `run.command` is.
    let program = if program.contains('/') { workdir.join(program) } else { PathBuf::from(program) };

    let started = Instant::now();
    let mut child = Command::new(&program)
        .args(args)
        .current_dir(&workdir)
        .envs(&service.spec.env)
        .envs(&declared.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| StepError::Spawn {
            step,
            service: name.clone(),
            command: command_line.clone(),
            workdir: workdir.display().to_string(),
            source,
        })?;
    let group = i32::try_from(child.id()).ok().and_then(rustix::process::Pid::from_raw);

    let (tx, rx) = mpsc::channel();
    let pipes: [(StepStream, Option<Box<dyn Read + Send>>); 2] = [
        (StepStream::Stdout, child.stdout.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>)),
        (StepStream::Stderr, child.stderr.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>)),
    ];
    let mut n_open = 0;
    for (stream, pipe) in pipes {
        let Some(pipe) = pipe else { continue };
        n_open += 1;
        let tx = tx.clone();
        std::thread::spawn(move || {
            read_lines(pipe, |text| {
                let _ = tx.send(Event::Line(StepLine { stream, text }));
            });
            let _ = tx.send(Event::Closed);
        });
    }
    std::thread::spawn(move || {
        let _ = tx.send(Event::Exited(child.wait()));
    });

    let mut tail: VecDeque<StepLine> = VecDeque::with_capacity(TAIL_LINES);
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let mut timed_out = false;
    let mut wait_until = started + options.timeout;
    while status.is_none() || n_open > 0 {
        match rx.recv_timeout(wait_until.saturating_duration_since(Instant::now())) {
            Ok(Event::Line(line)) => {
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.clone());
                on_line(line);
            }
            Ok(Event::Closed) => n_open -= 1,
            Ok(Event::Exited(exit)) => {
                status = Some(exit);
                wait_until = Instant::now() + DRAIN_GRACE;
            }
            Err(mpsc::RecvTimeoutError::Timeout) if status.is_none() && !timed_out => {
                kill_group(group);
                timed_out = true;
                wait_until = Instant::now() + KILL_GRACE;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The step exited but something it started still holds its output open. The group
                // still exists (that process is in it), so its id cannot have been reused.
                if status.is_some() {
                    kill_group(group);
                }
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }

    let tail: Vec<StepLine> = tail.into();
    if timed_out {
        return Err(StepError::TimedOut { step, service: name, command: command_line, timeout: options.timeout, tail });
    }
    let status = match status {
        Some(Ok(status)) if status.success() => return Ok(StepOutcome::Passed { duration: started.elapsed() }),
        Some(Ok(status)) => status.to_string(),
        Some(Err(error)) => format!("an unknown status (waiting for it failed: {error})"),
        None => "an unknown status (it could not be waited for)".to_owned(),
    };
    Err(StepError::Failed { step, service: name, command: command_line, status, tail })
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions { timeout: DEFAULT_STEP_TIMEOUT }
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepKind::Build => "build",
            StepKind::Test => "test",
        })
    }
}

impl StepError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            StepError::EmptyCommand { .. } => Some("give the step a `command` in app.toml, or remove the step"),
            StepError::Spawn { .. } => Some("check that the step's program exists and that `workdir` is right"),
            StepError::Failed { step: StepKind::Build, .. } => Some("fix the build; the output above shows why"),
            StepError::Failed { step: StepKind::Test, .. } => {
                Some("fix the failing tests; nothing was released and the running release keeps serving")
            }
            StepError::TimedOut { .. } => {
                Some("find what hangs (a step runs with stdin closed, so it cannot wait for input), or raise the limit")
            }
        }
    }

    /// The last lines of output, when the step ran.
    pub fn tail(&self) -> &[StepLine] {
        match self {
            StepError::Failed { tail, .. } | StepError::TimedOut { tail, .. } => tail,
            StepError::EmptyCommand { .. } | StepError::Spawn { .. } => &[],
        }
    }
}

enum Event {
    Line(StepLine),
    /// One of the pipes reached its end.
    Closed,
    Exited(std::io::Result<ExitStatus>),
}

fn kill_group(group: Option<rustix::process::Pid>) {
    if let Some(group) = group {
        // ESRCH means the group is already gone, which is what we want.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
}

/// Calls `emit` for every line of `reader` until its end (or a read error), cutting lines longer than
/// `MAX_LINE_BYTES`.
fn read_lines(reader: impl Read, mut emit: impl FnMut(String)) {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut line: Vec<u8> = Vec::new();
    let mut finish = |line: &mut Vec<u8>| {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        emit(String::from_utf8_lossy(line).into_owned());
        line.clear();
    };
    loop {
        let buf = match reader.fill_buf() {
            Ok([]) => break,
            Ok(buf) => buf,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let (chunk, has_newline) = match buf.iter().position(|byte| *byte == b'\n') {
            Some(end) => (&buf[..end], true),
            None => (buf, false),
        };
        let n_taken = chunk.len().min(MAX_LINE_BYTES - line.len());
        line.extend_from_slice(&chunk[..n_taken]);
        let line_ended = has_newline && n_taken == chunk.len();
        reader.consume(if line_ended { n_taken + 1 } else { n_taken });
        if line_ended || line.len() == MAX_LINE_BYTES {
            finish(&mut line);
        }
    }
    if !line.is_empty() {
        finish(&mut line);
    }
}

fn render_tail(tail: &[StepLine]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    let mut res = format!("; its last {} line(s) of output:", tail.len());
    for line in tail {
        res.push_str("\n    ");
        res.push_str(&line.text);
    }
    res
}

fn humantime_secs(duration: Duration) -> String {
    match duration.as_secs() {
        secs if secs >= 60 && secs % 60 == 0 => format!("{}m", secs / 60),
        secs if secs > 0 => format!("{secs}s"),
        _ => format!("{}ms", duration.as_millis()),
    }
}

#[cfg(test)]
mod tests;
