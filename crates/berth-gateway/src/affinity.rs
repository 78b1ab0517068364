//! One CPU per worker thread, when there are exactly as many workers as CPUs this process may run on.
//!
//! Under load the scheduler otherwise moves the workers between CPUs a few hundred times a second (cold
//! caches each time, `perf stat` in `docs/benchmarks.md`), and the peer kit's throughput at 64 connections
//! was about 10% lower. With any other count (a configured `workers`, a CPU quota below the CPU mask) the
//! scheduler places them as it sees fit.

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// The CPU each of `workers` threads stays on, or `None` when they are not pinned.
pub(crate) fn plan(workers: usize, enabled: bool) -> Option<Vec<usize>> {
    if !enabled {
        return None;
    }
    let allowed = sched_getaffinity(None).ok()?;
    let cpus: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|&cpu| allowed.is_set(cpu)).collect();
    (cpus.len() == workers && workers > 1).then_some(cpus)
}

/// Keeps the calling thread on `cpu`; on failure (a seccomp filter, a CPU gone offline) it stays where it
/// may run now.
pub(crate) fn pin_current_thread(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu);
    if let Err(error) = sched_setaffinity(None, &set) {
        tracing::debug!(cpu, error = %error, "gateway worker not pinned");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_are_pinned_only_one_per_allowed_cpu() {
        let allowed = sched_getaffinity(None).expect("affinity").count() as usize;
        assert_eq!(plan(allowed, false), None, "off when disabled");
        assert_eq!(plan(allowed + 1, true), None, "more workers than CPUs share them");
        match plan(allowed, true) {
            Some(cpus) => assert_eq!(cpus.len(), allowed),
            None => assert_eq!(allowed, 1, "a single CPU needs no pinning"),
        }
    }
}
