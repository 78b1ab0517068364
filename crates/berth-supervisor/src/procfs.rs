//! Small readings from `/proc`, parsed by hand: process identity (pid plus start time, safe against pid
//! reuse), environment, CPU and memory use.
//!
//! Every reading is best effort: a process may exit between two reads, so functions return `None` (or skip
//! the process) instead of failing.

use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant, SystemTime};

/// One reading of `/proc/<pid>/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub state: char,
    /// Start time in clock ticks since boot; with `pid` it identifies a process across pid reuse.
    pub start_ticks: u64,
    /// User plus system time, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
}

/// Reads `/proc/<pid>/stat`; `None` when the process does not exist or the file is malformed.
pub fn stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text, page_size())
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of [`ProcStat::start_ticks`] and `cpu_ticks`.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&ticks| ticks > 0).unwrap_or(100)
}

/// The time the machine booted (`btime` in `/proc/stat`).
pub fn boot_time() -> Option<SystemTime> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    parse_btime(&text)
}

/// The wall-clock time a process started.
pub fn started_at(stat: &ProcStat) -> Option<SystemTime> {
    let ticks = clock_ticks();
    let since_boot = Duration::from_secs(stat.start_ticks / ticks)
        + Duration::from_nanos((stat.start_ticks % ticks) * 1_000_000_000 / ticks);
    boot_time()?.checked_add(since_boot)
}

/// The environment a process was started with (`/proc/<pid>/environ`), decoded lossily as UTF-8.
pub fn environ(pid: i32) -> Option<Vec<(String, String)>> {
    let bytes = fs::read(format!("/proc/{pid}/environ")).ok()?;
    Some(parse_environ(&bytes))
}

/// Every process whose environment has `key=value`, with its whole environment. Processes that vanish or
/// cannot be read are skipped.
pub fn find_by_env(key: &str, value: &str) -> Vec<(i32, Vec<(String, String)>)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut res = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<i32>().ok()) else {
            continue;
        };
        let Some(env) = environ(pid) else { continue };
        if env.iter().any(|(k, v)| k == key && v == value) {
            res.push((pid, env));
        }
    }
    res
}

/// Whether `pid` is still the process that started at `start_ticks` and has not exited (zombies count as
/// exited).
pub fn is_alive(pid: i32, start_ticks: u64) -> bool {
    stat(pid).is_some_and(|stat| stat.start_ticks == start_ticks && !matches!(stat.state, 'Z' | 'X' | 'x'))
}

/// Turns successive readings of CPU time into a percentage of one core.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: HashMap<i32, CpuReading>,
}

impl CpuSampler {
    pub fn new() -> Self {
        CpuSampler::default()
    }

    /// CPU use of `pid` since the previous sample of the same process, in percent of one core (a process
    /// busy on two cores reads 200). `None` on the first sample, when the process is gone, or when its pid
    /// now belongs to another process (which then starts a new series).
    pub fn sample(&mut self, pid: i32, now: Instant) -> Option<f64> {
        let Some(stat) = stat(pid) else {
            self.last.remove(&pid);
            return None;
        };
        let reading = CpuReading { start_ticks: stat.start_ticks, cpu_ticks: stat.cpu_ticks, at: now };
        let previous = self.last.insert(pid, reading)?;
        cpu_percent(&previous, &reading, clock_ticks())
    }

    /// Drops the history of a process that is no longer sampled.
    pub fn forget(&mut self, pid: i32) {
        self.last.remove(&pid);
    }
}

#[derive(Debug, Clone, Copy)]
struct CpuReading {
    start_ticks: u64,
    cpu_ticks: u64,
    at: Instant,
}

fn cpu_percent(previous: &CpuReading, current: &CpuReading, clock_ticks: u64) -> Option<f64> {
    if previous.start_ticks != current.start_ticks {
        return None;
    }
    let elapsed = current.at.checked_duration_since(previous.at)?.as_secs_f64();
    if elapsed <= 0.0 {
        return None;
    }
    let cpu_secs = current.cpu_ticks.saturating_sub(previous.cpu_ticks) as f64 / clock_ticks as f64;
    Some(cpu_secs / elapsed * 100.0)
}

/// Parses one `/proc/<pid>/stat` line. The command name sits in parentheses and may itself contain spaces
/// and `)`, so the fields after it start at the last `)`.
fn parse_stat(text: &str, page_size: u64) -> Option<ProcStat> {
    let (head, tail) = text.rsplit_once(')')?;
    let (pid, _comm) = head.split_once(" (")?;
    let pid = pid.trim().parse().ok()?;
    // `fields[0]` is field 3 of proc(5), `state`.
    let fields: Vec<&str> = tail.split_ascii_whitespace().collect();
    let field = |n: usize| -> Option<&str> { fields.get(n - 3).copied() };
    let number = |n: usize| -> Option<u64> { field(n)?.parse().ok() };
    let mut state_chars = field(3)?.chars();
    let state = state_chars.next()?;
    if state_chars.next().is_some() {
        return None;
    }
    Some(ProcStat {
        pid,
        ppid: field(4)?.parse().ok()?,
        pgid: field(5)?.parse().ok()?,
        state,
        start_ticks: number(22)?,
        cpu_ticks: number(14)?.saturating_add(number(15)?),
        rss_bytes: field(24)?.parse::<i64>().ok()?.max(0).unsigned_abs().saturating_mul(page_size),
    })
}

fn parse_btime(text: &str) -> Option<SystemTime> {
    let secs = text.lines().find_map(|line| line.strip_prefix("btime "))?.trim().parse().ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

fn parse_environ(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|&byte| byte == 0)
        .filter_map(|entry| {
            let eq = entry.iter().position(|&byte| byte == b'=')?;
            let (key, value) = (&entry[..eq], &entry[eq + 1..]);
            Some((String::from_utf8_lossy(key).into_owned(), String::from_utf8_lossy(value).into_owned()))
        })
        .collect()
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&size| size > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    const WEIRD: &str = "4242 (a) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 123456 1000000 \
                         25 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn parses_a_comm_with_spaces_and_parens() {
        let stat = parse_stat(WEIRD, 4096).expect("the line is well formed");
        assert_eq!(
            stat,
            ProcStat {
                pid: 4242,
                ppid: 1,
                pgid: 4242,
                state: 'S',
                start_ticks: 123456,
                cpu_ticks: 12,
                rss_bytes: 25 * 4096
            }
        );
    }

    #[test]
    fn rejects_truncated_lines() {
        assert_eq!(parse_stat("4242 (a) b) S 1 4242", 4096), None);
        assert_eq!(parse_stat("", 4096), None);
        assert_eq!(parse_stat("x (sh) S 1 2 3", 4096), None);
    }

    #[test]
    fn own_stat_is_sane() {
        let pid = std::process::id() as i32;
        let stat = stat(pid).expect("our own process exists");
        assert_eq!(stat.pid, pid);
        assert_eq!(stat.ppid, std::os::unix::process::parent_id() as i32);
        assert!(stat.rss_bytes > 0);
        assert!(stat.start_ticks > 0);
        assert!(is_alive(pid, stat.start_ticks));
        assert!(!is_alive(pid, stat.start_ticks + 1));
        let started = started_at(&stat).expect("boot time is readable");
        let age = SystemTime::now().duration_since(started).expect("we started in the past");
        assert!(age < Duration::from_secs(3600), "test process claims to be {age:?} old");
    }

    #[test]
    fn parses_btime_and_environ() {
        assert_eq!(
            parse_btime("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            parse_environ(b"A=1\0B=x=y\0NOEQ\0C=\xff\0"),
            vec![
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "x=y".to_owned()),
                ("C".to_owned(), "\u{fffd}".to_owned())
            ]
        );
    }

    #[test]
    fn cpu_percent_is_relative_to_one_core() {
        let at = Instant::now();
        let previous = CpuReading { start_ticks: 7, cpu_ticks: 100, at };
        let current = CpuReading { start_ticks: 7, cpu_ticks: 150, at: at + Duration::from_secs(1) };
        assert_eq!(cpu_percent(&previous, &current, 100), Some(50.0));
        let reused = CpuReading { start_ticks: 8, ..current };
        assert_eq!(cpu_percent(&previous, &reused, 100), None);
    }

    #[test]
    fn finds_a_child_by_its_environment() {
        let marker = format!("procfs-test-{}", std::process::id());
        let mut child = Command::new("sleep")
            .arg("30")
            .env("BERTH_PROCFS_TEST", &marker)
            .stdin(Stdio::null())
            .spawn()
            .expect("sleep is installed");
        let pid = child.id() as i32;

        // Until the child has exec'd, its environ is still a copy of ours.
        let expected = ("BERTH_PROCFS_TEST".to_owned(), marker.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !environ(pid).expect("our child's environ is readable").contains(&expected) {
            assert!(Instant::now() < deadline, "child environ never showed {expected:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        let found = find_by_env("BERTH_PROCFS_TEST", &marker);
        assert_eq!(found.iter().map(|(pid, _)| *pid).collect::<Vec<_>>(), vec![pid]);

        let stat = stat(pid).expect("child is running");
        assert_eq!(stat.ppid, std::process::id() as i32);
        assert!(is_alive(pid, stat.start_ticks));
        let mut sampler = CpuSampler::new();
        let first = Instant::now();
        assert_eq!(sampler.sample(pid, first), None);
        let percent = sampler.sample(pid, first + Duration::from_secs(1)).expect("second sample has a base");
        assert!((0.0..=100.0).contains(&percent), "sleep used {percent}% cpu");

        child.kill().expect("child is ours to kill");
        child.wait().expect("child can be reaped");
        assert!(!is_alive(pid, stat.start_ticks));
        assert_eq!(sampler.sample(pid, first + Duration::from_secs(2)), None);
    }
}
