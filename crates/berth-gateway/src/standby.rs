//! Fewer serving workers while the machine's CPUs are saturated and the rest of the machine leaves the
//! gateway less than a CPU per worker.
//!
//! Berth's gateway shares its machine with the replicas it feeds. When every CPU is busy and the others'
//! work (replicas, clients, anything else) takes the CPUs the gateway's extra workers would need, those
//! workers do not add capacity: each empties its queue, sleeps, and is woken again a fraction of a
//! request later, and every such wake-up costs both sides CPU time. On the peer kit's 2-CPU VM at 64
//! connections the two workers slept and woke 0.17 times a request, one worker 0.004 times, and one worker
//! served about 5% more requests at 6% less CPU each (nginx with one worker process against its two:
//! the same; `docs/benchmarks.md`). So worker 0 looks, at its own load checks (`affinity.rs`), at how busy
//! the machine's CPUs were and how much of that was the gateway's own process, and sets how many workers
//! serve: workers past that number stand by, hand the plain HTTP/1.1 connections they hold to serving
//! workers between two requests and every connection they accept at once (`spread.rs`), and come back as
//! soon as the machine has room again or the serving workers are full while CPU is left. TLS, HTTP/2 and
//! upgraded connections stay where they are until they end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustix::thread::{CpuSet, sched_getaffinity};

/// How many workers serve, what it is rendered as, and how often it changed.
#[derive(Debug, Default)]
pub(crate) struct Serving {
    /// Workers `0..serving` take connections; at least one.
    count: AtomicUsize,
    /// Workers in all; zero until the gateway serves with a standby policy (then nothing is rendered).
    workers: AtomicUsize,
    stand_downs: AtomicU64,
}

impl Serving {
    /// `workers` workers, all serving.
    pub(crate) fn start(&self, workers: usize) {
        self.count.store(workers.max(1), Ordering::Relaxed);
    }

    /// How many workers serve (`0..count`); every worker before `start`.
    pub(crate) fn count(&self) -> usize {
        match self.count.load(Ordering::Relaxed) {
            0 => usize::MAX,
            n => n,
        }
    }

    fn enable(&self, workers: usize) {
        self.workers.store(workers, Ordering::Relaxed);
    }

    pub(crate) fn set(&self, serving: usize) {
        let before = self.count.swap(serving.max(1), Ordering::Relaxed);
        if serving < before {
            self.stand_downs.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn render(&self, out: &mut String) -> std::fmt::Result {
        let workers = self.workers.load(Ordering::Relaxed);
        if workers == 0 {
            return Ok(());
        }
        const SERVING: &str = "berth_gateway_workers_serving";
        crate::metrics::family(
            out,
            SERVING,
            "gauge",
            "Gateway workers taking connections; the others stand by while the machine is saturated.",
        )?;
        crate::metrics::sample(out, SERVING, "", &[], self.count.load(Ordering::Relaxed) as u64)?;
        const WORKERS: &str = "berth_gateway_workers";
        crate::metrics::family(out, WORKERS, "gauge", "Gateway worker threads.")?;
        crate::metrics::sample(out, WORKERS, "", &[], workers as u64)?;
        const DOWNS: &str = "berth_gateway_worker_stand_downs_total";
        crate::metrics::family(
            out,
            DOWNS,
            "counter",
            "Times fewer gateway workers were set to serve because the machine was saturated.",
        )?;
        crate::metrics::sample(out, DOWNS, "", &[], self.stand_downs.load(Ordering::Relaxed))
    }
}

/// Shortest interval the decision is made over (`/proc/stat` counts in 10 ms clock ticks).
const MIN_INTERVAL: Duration = Duration::from_millis(200);
/// Share of the CPUs busy from which the machine is saturated.
const SATURATED: f64 = 0.9;
/// Share of the CPUs busy below which the machine is quiet: every worker serves.
const QUIET: f64 = 0.6;
/// CPUs the rest of the machine may leave over what fewer workers could use, for them to stand down.
const ROOM_SLACK: f64 = 0.3;
/// Idle CPU, beyond what saturation leaves, from which full serving workers get one more.
const IDLE_FOR_MORE: f64 = 0.25;
/// Busy share of each serving worker's CPU from which the serving workers are full.
const FULL: f64 = 0.85;

/// Worker 0's view of the machine: the CPUs the gateway may run on, their busy time and the process's.
pub(crate) struct Standby {
    serving: Arc<Serving>,
    workers: usize,
    allowed: CpuSet,
    stat: std::fs::File,
    last: Sample,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    /// Busy and total clock ticks of the allowed CPUs.
    ticks: (u64, u64),
    /// The process's CPU time.
    process: Duration,
}

impl Standby {
    /// `None` when the machine's or the process's CPU time is out of reach (every worker then serves).
    pub(crate) fn open(serving: Arc<Serving>, workers: usize) -> Option<Standby> {
        let allowed = sched_getaffinity(None).ok()?;
        let stat = std::fs::File::open("/proc/stat").ok()?;
        let last = Sample { at: Instant::now(), ticks: cpu_ticks(&stat, &allowed)?, process: process_cpu_time()? };
        serving.enable(workers);
        Some(Standby { serving, workers, allowed, stat, last })
    }

    /// Sets how many workers serve from what the CPUs did since the last decision, at least
    /// `MIN_INTERVAL` ago; false when the counters can no longer be read (every worker serves again).
    pub(crate) fn check(&mut self, now: Instant) -> bool {
        let wall = now.saturating_duration_since(self.last.at);
        if wall < MIN_INTERVAL {
            return true;
        }
        let (Some(ticks), Some(process)) = (cpu_ticks(&self.stat, &self.allowed), process_cpu_time()) else {
            self.serving.set(self.workers);
            return false;
        };
        let (busy, total) = (ticks.0.saturating_sub(self.last.ticks.0), ticks.1.saturating_sub(self.last.ticks.1));
        let own = process.saturating_sub(self.last.process);
        self.last = Sample { at: now, ticks, process };
        if total == 0 {
            return true;
        }
        let cpus = self.allowed.count() as f64;
        let machine = busy as f64 / total as f64 * cpus;
        let gateway = own.as_secs_f64() / wall.as_secs_f64();
        let serving = self.serving.count().min(self.workers);
        let next = next_serving(serving, self.workers, Load { cpus, machine, gateway });
        if next != serving {
            self.serving.set(next);
        }
        true
    }
}

/// What the CPUs did over an interval, in CPUs' worth of time.
#[derive(Debug, Clone, Copy)]
struct Load {
    cpus: f64,
    /// Busy time of the CPUs the gateway may run on.
    machine: f64,
    /// The gateway process's own CPU time.
    gateway: f64,
}

/// How many of `workers` should serve, `serving` doing so over an interval with `load`.
fn next_serving(serving: usize, workers: usize, load: Load) -> usize {
    let Load { cpus, machine, gateway } = load;
    let others = (machine - gateway).max(0.0);
    let room = cpus - others;
    let idle = (cpus - machine).max(0.0);
    if machine < QUIET * cpus {
        return workers;
    }
    if machine >= SATURATED * cpus && serving > 1 && room <= (serving - 1) as f64 + ROOM_SLACK {
        return serving - 1;
    }
    let full = gateway >= FULL * serving as f64;
    if serving < workers && full && idle >= (1.0 - SATURATED) * cpus + IDLE_FOR_MORE {
        return serving + 1;
    }
    serving.min(workers)
}

/// Busy and total clock ticks of the CPUs in `allowed`, from the per-CPU lines of `/proc/stat`
/// (`cpuN user nice system idle iowait irq softirq steal ...`; idle and iowait are not busy).
fn cpu_ticks(stat: &std::fs::File, allowed: &CpuSet) -> Option<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096 + 160 * allowed.count() as usize];
    let len = stat.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(buf.get(..len)?).ok()?;
    let (mut busy, mut total, mut seen) = (0, 0, 0);
    for line in text.lines().skip(1) {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields.next().and_then(|name| name.strip_prefix("cpu")) else { break };
        let Ok(cpu) = cpu.parse::<usize>() else { break };
        if cpu >= CpuSet::MAX_CPU || !allowed.is_set(cpu) {
            continue;
        }
        let mut ticks = [0u64; 8];
        for tick in &mut ticks {
            *tick = fields.next()?.parse().ok()?;
        }
        let all: u64 = ticks.iter().sum();
        busy += all - ticks[3] - ticks[4];
        total += all;
        seen += 1;
    }
    (seen > 0).then_some((busy, total))
}

/// The process's CPU time, all threads: `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)` through libc (see
/// `affinity::ThreadClock` for why not rustix).
fn process_cpu_time() -> Option<Duration> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable `timespec` for the duration of the call.
    let failed = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) } != 0;
    let secs = u64::try_from(now.tv_sec).ok().filter(|_| !failed)?;
    Some(Duration::new(secs, u32::try_from(now.tv_nsec).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(machine: f64, gateway: f64) -> Load {
        Load { cpus: 2.0, machine, gateway }
    }

    #[test]
    fn the_peer_kits_saturation_stands_one_of_two_workers_down_and_keeps_it_down() {
        // Two workers at 64 connections: the machine all busy, half of it the gateway's.
        assert_eq!(next_serving(2, 2, load(1.98, 1.0)), 1);
        // One worker, nearly full, the client and the replica on the rest: it stays that way.
        assert_eq!(next_serving(1, 2, load(1.97, 0.96)), 1);
        assert_eq!(next_serving(1, 1, load(2.0, 1.0)), 1, "never below one");
    }

    #[test]
    fn a_gateway_that_is_most_of_the_load_keeps_its_workers() {
        assert_eq!(next_serving(2, 2, load(2.0, 1.6)), 2, "the rest leaves it more than a CPU");
        assert_eq!(next_serving(2, 2, load(1.7, 0.9)), 2, "not saturated");
    }

    #[test]
    fn workers_come_back_when_the_machine_is_quiet_or_the_serving_ones_are_full_with_cpu_left() {
        assert_eq!(next_serving(1, 4, load(0.5, 0.1)), 4, "quiet: every worker at once");
        assert_eq!(next_serving(1, 2, load(1.4, 0.95)), 2, "full, and 0.6 of a CPU idle");
        assert_eq!(next_serving(1, 2, load(1.4, 0.5)), 1, "CPU idle, but the one worker has room");
        assert_eq!(next_serving(1, 2, load(1.75, 0.95)), 1, "full, but too little idle to be worth a worker");
    }

    #[test]
    fn on_four_cpus_the_others_leave_three() {
        let four = |machine, gateway| Load { cpus: 4.0, machine, gateway };
        assert_eq!(next_serving(4, 4, four(3.95, 2.9)), 3);
        assert_eq!(next_serving(3, 4, four(3.95, 2.9)), 3, "room for three, not for two");
    }

    #[test]
    fn serving_counts_stand_downs_and_renders_once_enabled() {
        let serving = Serving::default();
        assert_eq!(serving.count(), usize::MAX, "every worker before start");
        serving.start(2);
        serving.set(1);
        serving.set(2);
        serving.set(0);
        assert_eq!(serving.count(), 1, "never below one");
        let mut out = String::new();
        serving.render(&mut out).expect("render");
        assert!(out.is_empty(), "nothing before a standby policy runs");
        serving.enable(2);
        serving.render(&mut out).expect("render");
        assert!(out.contains("berth_gateway_workers_serving 1\n"), "{out}");
        assert!(out.contains("berth_gateway_workers 2\n"), "{out}");
        assert!(out.contains("berth_gateway_worker_stand_downs_total 2\n"), "{out}");
    }

    #[test]
    fn the_allowed_cpus_ticks_and_the_process_clock_are_read() {
        let allowed = sched_getaffinity(None).expect("affinity");
        let stat = std::fs::File::open("/proc/stat").expect("/proc/stat");
        let (busy, total) = cpu_ticks(&stat, &allowed).expect("per-CPU lines");
        assert!(busy <= total && total > 0, "{busy} of {total}");
        let mut none = CpuSet::new();
        none.set(CpuSet::MAX_CPU - 1);
        assert_eq!(cpu_ticks(&stat, &none), None, "no line for a CPU that is not there");
        assert!(process_cpu_time().expect("process clock") > Duration::ZERO);
    }
}
