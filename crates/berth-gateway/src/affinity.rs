//! Worker threads kept on a CPU of their own while they are busy, when there are exactly as many workers as
//! CPUs this process may run on; and, while the machine is quiet, not preempting the task that woke them
//! (`QuietMachine`, below).
//!
//! Under load the scheduler otherwise moves the workers between CPUs a few hundred times a second (cold
//! caches each time, `perf stat` in `docs/benchmarks.md`), and the peer kit's throughput at 64 connections
//! was about 10% lower. At a low rate the opposite holds: a pinned worker must be woken on its own CPU even
//! when the other one is where the packet arrived, and the p99 at 120 req/s was worse in every round. So each
//! worker looks at its own CPU time once a check is due and it has started a request since, when it next
//! parks with nothing to do and no answer already there (not on the request's way to the replica, nor on
//! the answer's; at a low rate mostly the park after the answer is written, as the replica woken by the
//! send usually answers before the worker parks): every 50 ms while free (load that arrives is pinned within
//! one check, so few of its requests see the unpinned worker; checking every 500 ms, the first half second
//! of a saturating run raised its p99 by half), every 500 ms while pinned. On the request path, not on a
//! timer: an idle worker is never woken for it, and at 120 req/s the check costs no wake-up of its own.
//! Above `PIN_ABOVE` busy it stays on its CPU; below `FREE_BELOW`, it may run anywhere again. With any other
//! worker count (a configured `workers`, a CPU quota below the CPU mask) the scheduler places them as it
//! sees fit.

use std::cell::Cell;
use std::time::{Duration, Instant};

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// How often a free worker looks at how busy it was.
const CHECK_FREE: Duration = Duration::from_millis(50);
/// How often a pinned worker does (it is freed only after this long of little work).
const CHECK_PINNED: Duration = Duration::from_millis(500);
/// Busy share of one CPU from which a worker stays on its own (a worker at saturation of the peer kit's
/// 64 connections on 2 CPUs: about 45%).
const PIN_ABOVE: f64 = 0.25;
/// Busy share below which a pinned worker may move again (120 req/s: well under 1%).
const FREE_BELOW: f64 = 0.10;

/// Which CPU each worker may keep, and the CPUs they may all use otherwise.
pub(crate) struct Plan {
    cpus: Vec<usize>,
    allowed: CpuSet,
}

impl Plan {
    /// `None` unless there is one CPU per worker (and more than one worker).
    pub(crate) fn new(workers: usize, enabled: bool) -> Option<Plan> {
        if !enabled || workers < 2 {
            return None;
        }
        let allowed = sched_getaffinity(None).ok()?;
        let cpus: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|&cpu| allowed.is_set(cpu)).collect();
        (cpus.len() == workers).then_some(Plan { cpus, allowed })
    }

    /// What worker `index` runs on its own thread (`follow_load`).
    pub(crate) fn for_worker(&self, index: usize) -> Option<WorkerCpu> {
        let cpu = *self.cpus.get(index)?;
        let mut own = CpuSet::new();
        own.set(cpu);
        Some(WorkerCpu { own, allowed: self.allowed })
    }
}

/// One worker's CPU and the CPUs it may use when free.
pub(crate) struct WorkerCpu {
    own: CpuSet,
    allowed: CpuSet,
}

impl WorkerCpu {
    /// Makes this thread follow its load from now on: it looks at how busy it was whenever a check is due
    /// (`on_request`, `before_park`). Call it on the worker's own thread, whose runtime calls `before_park`
    /// when it parks.
    pub(crate) fn follow_load_on_this_thread(self) {
        // Without the thread's CPU time (a seccomp filter), the scheduler keeps placing the worker.
        let Some(clock) = ThreadClock::open() else { return };
        let Some(cpu_time) = clock.read() else { return };
        let now = Instant::now();
        let quiet = QuietMachine::open();
        FOLLOWER.set(Some(Follower { cpu: self, clock, pinned: false, last: (now, cpu_time), quiet }));
        NEXT_CHECK.set(Some(now + CHECK_FREE));
    }
}

thread_local! {
    /// A worker thread's CPU placement, when it follows its load.
    static FOLLOWER: Cell<Option<Follower>> = const { Cell::new(None) };
    /// When that worker next looks at how busy it was (`None`: it does not): apart from `FOLLOWER` so that
    /// a request that finds no check due reads one `Cell`.
    static NEXT_CHECK: Cell<Option<Instant>> = const { Cell::new(None) };
    /// A check has fallen due and runs when the worker next parks.
    static CHECK_AT_PARK: Cell<bool> = const { Cell::new(false) };
}

/// Called for each request a worker starts, with the time it started: a check falls due on the request
/// path, so a worker that serves nothing is never woken for it (an idle worker keeps whatever placement it
/// had; its next request finds out it has been idle). The check itself, a read of the thread's CPU time,
/// waits for `before_park` (a park at which the busy poll found no answer), rather than standing between
/// the request's arrival and its forwarding. A worker so busy that it has not parked since a request found
/// the check due checks on the request path, once `CHECK_FREE` is past.
pub(crate) fn on_request(now: Instant) {
    match NEXT_CHECK.get() {
        Some(due) if now >= due + CHECK_FREE && CHECK_AT_PARK.get() => check_now(now),
        Some(due) if now >= due => CHECK_AT_PARK.set(true),
        _ => {}
    }
}

/// Runs the check `on_request` found due, if there is one: call it when the worker's runtime parks.
pub(crate) fn before_park() {
    if CHECK_AT_PARK.get() {
        check_now(Instant::now());
    }
}

fn check_now(now: Instant) {
    CHECK_AT_PARK.set(false);
    let Some(mut follower) = FOLLOWER.take() else { return };
    let next = follower.check(now);
    NEXT_CHECK.set(next);
    if next.is_some() {
        FOLLOWER.set(Some(follower));
    }
}

/// One worker's placement and what it was at the last check.
struct Follower {
    cpu: WorkerCpu,
    clock: ThreadClock,
    pinned: bool,
    /// The time and the thread's CPU time at the last check.
    last: (Instant, Duration),
    /// Whether the worker waits for its waker (`None`: the machine's CPU counters or the scheduling policy
    /// are out of reach).
    quiet: Option<QuietMachine>,
}

impl Follower {
    /// Pins or frees the thread for how busy it was since the last check; returns when to check next
    /// (`None`: the thread's CPU time or its placement cannot be changed, stop following).
    fn check(&mut self, now: Instant) -> Option<Instant> {
        let cpu_time = self.clock.read()?;
        let wall = now.saturating_duration_since(self.last.0).as_secs_f64();
        let busy = if wall > 0.0 { cpu_time.saturating_sub(self.last.1).as_secs_f64() / wall } else { 0.0 };
        self.last = (now, cpu_time);
        if let Some(pin) = next_state(self.pinned, busy) {
            let set = if pin { &self.cpu.own } else { &self.cpu.allowed };
            match sched_setaffinity(None, set) {
                Ok(()) => self.pinned = pin,
                // A seccomp filter, a CPU gone offline: the scheduler keeps placing the worker.
                Err(error) if pin => {
                    tracing::debug!(error = %error, "gateway worker not pinned");
                    return None;
                }
                // Still pinned: freeing it is tried again at the next check.
                Err(error) => tracing::debug!(error = %error, "gateway worker not freed yet"),
            }
        }
        if let Some(quiet) = &mut self.quiet
            && !quiet.check()
        {
            self.quiet = None;
        }
        Some(now + if self.pinned { CHECK_PINNED } else { CHECK_FREE })
    }
}

/// Share of the machine's CPU time busy below which a worker waits for its waker, and above which it
/// preempts it again.
const QUIET_BELOW: f64 = 0.35;
const BUSY_ABOVE: f64 = 0.5;

/// A worker that, while the machine is quiet, runs as `SCHED_BATCH`: woken by a client's request or a
/// replica's answer, it does not preempt the task that woke it, which finishes its turn and sleeps first;
/// the chain then stays on one CPU (a woken replica goes to the waker's CPU only when nothing else is
/// runnable there) and there are fewer context switches. On the peer kit's VM at 120 req/s: p99 0.96×
/// nginx's instead of 1.12×, a quarter less CPU per request (`docs/benchmarks.md`). Beside a CPU-bound
/// process it would wait out that process's whole slice (p90 4 ms against 0.4), so as soon as the machine's
/// CPUs are busy the worker preempts again, as every other task does.
struct QuietMachine {
    uptime: std::fs::File,
    /// CPUs online when the worker started; `/proc/uptime`'s idle time is theirs together.
    cpus: u64,
    /// Busy and total CPU time of the machine (hundredths of a second) at the last check.
    last: (u64, u64),
    batch: bool,
}

impl QuietMachine {
    fn open() -> Option<QuietMachine> {
        let cpus = count_cpus(&std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?)?;
        let uptime = std::fs::File::open("/proc/uptime").ok()?;
        let last = read_cpu_times(&uptime, cpus)?;
        Some(QuietMachine { uptime, cpus, last, batch: false })
    }

    /// Looks at how busy the machine was since the last check and sets this thread's policy to match;
    /// false when it cannot (dropped then, the worker goes back to `SCHED_OTHER`).
    fn check(&mut self) -> bool {
        let Some(now) = read_cpu_times(&self.uptime, self.cpus) else { return false };
        let (busy, total) = (now.0.saturating_sub(self.last.0), now.1.saturating_sub(self.last.1));
        if total == 0 {
            return true; // less than a hundredth of a second since the last check
        }
        self.last = now;
        match next_policy(self.batch, busy as f64 / total as f64) {
            Some(batch) => self.set(batch),
            None => true,
        }
    }

    fn set(&mut self, batch: bool) -> bool {
        let policy = if batch { libc::SCHED_BATCH } else { libc::SCHED_OTHER };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid `sched_param` for the duration of the call; pid 0 is this thread.
        let ok = unsafe { libc::sched_setscheduler(0, policy, &param) } == 0;
        if ok {
            self.batch = batch;
        }
        ok
    }
}

/// A worker that stops following the machine (a check failed, its placement could not be changed) is
/// never left as batch. Dropped on the worker's own thread (a thread-local), so it is that thread's policy.
impl Drop for QuietMachine {
    fn drop(&mut self) {
        if self.batch {
            self.set(false);
        }
    }
}

/// Whether a worker that runs as batch (`batch`) should change, the machine having been `busy` (share of
/// all its CPUs): `Some(batch)`.
fn next_policy(batch: bool, busy: f64) -> Option<bool> {
    match batch {
        false if busy < QUIET_BELOW => Some(true),
        true if busy > BUSY_ABOVE => Some(false),
        _ => None,
    }
}

/// The machine's busy and total CPU time in hundredths of a second, from `/proc/uptime` (`<uptime>
/// <idle>`, the idle time of all CPUs together): total is the uptime times `cpus`, busy what of it was not
/// idle (waiting for I/O counts as busy here). It was the first line of `/proc/stat`, whose text the kernel
/// formats whole on every read, an interrupt count per vector included: 7.6 µs a read against 1.2 warm on
/// the peer kit's VM, and at 120 req/s 28 µs against 10 (traced) after one request in four, often with the
/// client just woken on this CPU and waiting behind it (`docs/benchmarks.md`).
fn read_cpu_times(uptime: &std::fs::File, cpus: u64) -> Option<(u64, u64)> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 64];
    let len = uptime.read_at(&mut buf, 0).ok()?;
    let text = std::str::from_utf8(buf.get(..len)?).ok()?;
    let mut fields = text.split_whitespace().map(hundredths);
    let (up, idle) = (fields.next()??, fields.next()??);
    let total = up.checked_mul(cpus)?;
    Some((total.saturating_sub(idle), total))
}

/// `12345.67` in hundredths.
fn hundredths(text: &str) -> Option<u64> {
    let (whole, part) = text.split_once('.')?;
    let part: u64 = match part.len() {
        2 => part.parse().ok()?,
        _ => return None,
    };
    whole.parse::<u64>().ok()?.checked_mul(100)?.checked_add(part)
}

/// How many CPUs a kernel CPU list names (`0-3,6`, as in `/sys/devices/system/cpu/online`).
fn count_cpus(list: &str) -> Option<u64> {
    let mut count = 0;
    for range in list.trim().split(',') {
        let (first, last) = range.split_once('-').unwrap_or((range, range));
        let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
        count += last.checked_sub(first)? + 1;
    }
    (count > 0).then_some(count)
}

/// Whether a worker that is `pinned` and was `busy` (share of one CPU) should change: `Some(pin)`.
fn next_state(pinned: bool, busy: f64) -> Option<bool> {
    match pinned {
        false if busy >= PIN_ABOVE => Some(true),
        true if busy < FREE_BELOW => Some(false),
        _ => None,
    }
}

/// The CPU time of the calling thread: `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, one system call that
/// reads the scheduler's count. It was a read of `/proc/thread-self/schedstat`, whose text the kernel
/// formats on every read: traced on the peer kit's VM, 8 µs against 3, at a moment when a replica's answer
/// may be waiting behind it. Through libc, not rustix: rustix reaches this clock through its own vDSO
/// lookup, which valgrind cannot run (`bench/instructions.sh`).
struct ThreadClock;

impl ThreadClock {
    fn open() -> Option<ThreadClock> {
        ThreadClock.read().map(|_| ThreadClock)
    }

    fn read(&self) -> Option<Duration> {
        let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `now` is a valid, writable `timespec` for the duration of the call.
        let failed = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0;
        let secs = u64::try_from(now.tv_sec).ok().filter(|_| !failed)?;
        Some(Duration::new(secs, u32::try_from(now.tv_nsec).ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_pinned_when_busy_and_freed_when_idle_with_a_gap_between() {
        assert_eq!(next_state(false, 0.45), Some(true));
        assert_eq!(next_state(false, 0.15), None, "not busy enough to pin");
        assert_eq!(next_state(true, 0.15), None, "not idle enough to free");
        assert_eq!(next_state(true, 0.01), Some(false));
    }

    #[test]
    fn a_worker_waits_for_its_waker_only_on_a_quiet_machine_with_a_gap_between() {
        assert_eq!(next_policy(false, 0.05), Some(true));
        assert_eq!(next_policy(false, 0.4), None, "not quiet enough to wait");
        assert_eq!(next_policy(true, 0.4), None, "not busy enough to preempt again");
        assert_eq!(next_policy(true, 1.0), Some(false));
    }

    #[test]
    fn the_policy_is_this_threads_and_follows_the_decision() {
        std::thread::spawn(|| {
            let mut quiet = QuietMachine::open().expect("/proc/uptime");
            let (busy, total) = quiet.last;
            assert!(total > 0 && busy <= total, "{busy} of {total}");
            assert!(quiet.set(true));
            // SAFETY: no arguments but this thread's id (0).
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_BATCH);
            assert!(quiet.set(false));
            // SAFETY: as above.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
            assert!(quiet.check(), "a check reads the counters again");
            assert!(quiet.set(true));
            drop(quiet);
            // SAFETY: as above.
            assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER, "not left as batch");
        })
        .join()
        .expect("policy thread");
    }

    #[test]
    fn the_machines_cpu_time_is_read_from_uptime_and_the_online_cpus() {
        assert_eq!(count_cpus("0-1\n"), Some(2));
        assert_eq!(count_cpus("0,2-5,7"), Some(6));
        assert_eq!(count_cpus(""), None);
        assert_eq!(count_cpus("3-1"), None);
        assert_eq!(hundredths("58058.78"), Some(5_805_878));
        assert_eq!(hundredths("12.5"), None, "always two digits");
        assert_eq!(hundredths("12"), None);
    }

    #[test]
    fn the_machine_looks_busy_while_a_cpu_spins() {
        let quiet = QuietMachine::open().expect("/proc/uptime and the online CPUs");
        let (before, cpus) = (quiet.last, quiet.cpus);
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
        }
        let after = read_cpu_times(&quiet.uptime, cpus).expect("uptime and idle");
        let (busy, total) = (after.0.saturating_sub(before.0), after.1.saturating_sub(before.1));
        assert!(busy <= total, "{busy} of {total}");
        // One CPU of `cpus` spun the whole time; the slack covers the counters' hundredths.
        assert!(busy as f64 >= total as f64 / cpus as f64 * 0.7, "{busy} of {total} busy on {cpus} CPUs ({x})");
    }

    #[test]
    fn there_is_a_plan_only_with_one_allowed_cpu_per_worker() {
        let allowed = sched_getaffinity(None).expect("affinity").count() as usize;
        assert!(Plan::new(allowed, false).is_none(), "off when disabled");
        assert!(Plan::new(allowed + 1, true).is_none(), "more workers than CPUs share them");
        match Plan::new(allowed, true) {
            Some(plan) => assert!(plan.for_worker(allowed - 1).is_some() && plan.for_worker(allowed).is_none()),
            None => assert_eq!(allowed, 1, "a single CPU needs no plan"),
        }
    }

    #[test]
    fn a_following_thread_checks_when_it_parks_once_a_check_is_due() {
        let allowed = sched_getaffinity(None).expect("affinity").count() as usize;
        let Some(cpu) = Plan::new(allowed, true).and_then(|plan| plan.for_worker(0)) else {
            return; // one CPU: nothing to follow
        };
        std::thread::spawn(move || {
            on_request(Instant::now());
            before_park();
            assert_eq!(NEXT_CHECK.get(), None, "a thread that does not follow never checks");
            cpu.follow_load_on_this_thread();
            let due = NEXT_CHECK.get().expect("following");
            on_request(due - Duration::from_millis(1));
            before_park();
            assert_eq!(NEXT_CHECK.get(), Some(due), "not due yet");
            // Due: the request goes on at once, the check waits until the worker parks.
            on_request(due);
            assert_eq!(NEXT_CHECK.get(), Some(due), "not on the request's way");
            before_park();
            let next = NEXT_CHECK.get().expect("still following");
            assert!(next > due, "checked at the park, the next check set from then");
            before_park();
            assert_eq!(NEXT_CHECK.get(), Some(next), "one check per due one");
            // The first request after a long pause finds the check due: still at the park.
            let late = next + Duration::from_secs(1);
            on_request(late);
            assert_eq!(NEXT_CHECK.get(), Some(next), "not on the request's way after a pause");
            // A worker that has not parked since, a whole interval past due, checks at once. It was idle,
            // so it stays free and checks again soon.
            on_request(late);
            assert_eq!(NEXT_CHECK.get(), Some(late + CHECK_FREE));
        })
        .join()
        .expect("follower thread");
    }

    #[test]
    fn the_thread_clock_moves_with_work() {
        let clock = ThreadClock::open().expect("thread CPU clock");
        let before = clock.read().expect("first read");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(clock.read().expect("second read") > before, "the clock moves: {x}");
    }
}
