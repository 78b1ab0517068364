//! Fault injection: deliberate memory leaks, hangs, crashes and random errors, so the platform's
//! health checks, healing and alerts have something real to react to.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a crash or hang waits, so the answer announcing it is flushed first.
pub const ACT_AFTER: Duration = Duration::from_millis(50);

pub const MIB: u64 = 1024 * 1024;

/// Memory leaked on purpose. Blocks are kept until the process exits.
#[derive(Debug, Default)]
pub struct Leak {
    blocks: Mutex<Vec<Vec<u8>>>,
    total_bytes: AtomicU64,
}

/// The allocator refused a leak of `bytes` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeakRefused {
    pub bytes: u64,
}

/// Which answers fail, for a failure share `rate`: evenly spread, so that any window of `n` answers holds
/// `n * rate` failures give or take one (a canary analysis or an alert sees the share it was told, not a
/// lucky run of successes).
#[derive(Debug)]
pub struct Flaky {
    rate: f64,
    answered: AtomicU64,
}

impl Leak {
    /// Allocates `bytes` bytes, writes to every page so they are resident, keeps them forever and
    /// returns the total leaked so far. This blocks for as long as the writes take.
    pub fn leak(&self, bytes: u64) -> Result<u64, LeakRefused> {
        let len = usize::try_from(bytes).map_err(|_| LeakRefused { bytes })?;
        let mut block: Vec<u8> = Vec::new();
        block.try_reserve_exact(len).map_err(|_| LeakRefused { bytes })?;
        // A non-zero fill, so neither the allocator nor the kernel can hand out shared zero pages.
        block.resize(len, 0xa5);
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner).push(block);
        Ok(self.total_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes)
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::Relaxed)
    }
}

impl Flaky {
    pub fn new(rate: f64) -> Flaky {
        Flaky { rate: rate.clamp(0.0, 1.0), answered: AtomicU64::new(0) }
    }

    /// Whether the next answer fails: when the running count of failures owed (`answers * rate`) passes
    /// another whole number.
    pub fn fails_next(&self) -> bool {
        if self.rate <= 0.0 {
            return false;
        }
        let n = self.answered.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.rate).floor() > (n * self.rate).floor()
    }
}

/// Exits the process with `code` after [`ACT_AFTER`], leaving time to flush the answer.
pub fn exit_soon(code: i32) {
    tokio::spawn(async move {
        tokio::time::sleep(ACT_AFTER).await;
        std::process::exit(code);
    });
}

/// Stops the whole process with SIGSTOP after [`ACT_AFTER`]: the port stays open but nothing
/// answers until someone sends SIGCONT.
pub fn hang_soon() {
    tokio::spawn(async {
        tokio::time::sleep(ACT_AFTER).await;
        // SAFETY: raise has no memory-safety preconditions.
        unsafe {
            libc::raise(libc::SIGSTOP);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaks_add_up() {
        let leak = Leak::default();
        assert_eq!(leak.leak(MIB), Ok(MIB));
        assert_eq!(leak.leak(2 * MIB), Ok(3 * MIB));
        assert_eq!(leak.total_bytes(), 3 * MIB);
    }

    #[test]
    fn impossible_leak_is_refused() {
        let leak = Leak::default();
        assert_eq!(leak.leak(u64::MAX), Err(LeakRefused { bytes: u64::MAX }));
        assert_eq!(leak.total_bytes(), 0);
    }

    #[test]
    fn failures_are_the_given_share_of_every_window() {
        let flaky = Flaky::new(0.1);
        let fails: Vec<bool> = (0..1000).map(|_| flaky.fails_next()).collect();
        assert_eq!(fails.iter().filter(|&&f| f).count(), 100);
        for window in fails.windows(41) {
            let n = window.iter().filter(|&&f| f).count();
            assert!((4..=5).contains(&n), "{n} failures in 41 answers");
        }
        assert!(!(0..1000).any(|_| Flaky::new(0.0).fails_next()));
        let always = Flaky::new(1.0);
        assert!((0..1000).all(|_| always.fails_next()));
    }
}
