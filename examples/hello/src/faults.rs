//! Fault injection: deliberate memory leaks, hangs, crashes and random errors, so the platform's
//! health checks, healing and alerts have something real to react to.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// A xorshift64* generator, seeded from the pid and the clock. Good enough to decide which
/// answers fail; not for anything that needs real randomness.
#[derive(Debug)]
pub struct Rng {
    state: AtomicU64,
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

impl Rng {
    pub fn from_entropy() -> Rng {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|elapsed| elapsed.as_nanos() as u64).unwrap_or(0);
        Rng::with_seed(nanos ^ (u64::from(std::process::id()) << 32))
    }

    pub fn with_seed(seed: u64) -> Rng {
        // xorshift has a fixed point at zero.
        let seed = if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed };
        Rng { state: AtomicU64::new(seed) }
    }

    /// A uniform value in `[0, 1)`.
    pub fn next_f64(&self) -> f64 {
        let previous =
            self.state.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(xorshift(x))).unwrap_or_else(|x| x);
        let value = xorshift(previous).wrapping_mul(0x2545_f491_4f6c_dd1d);
        (value >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `rate`.
    pub fn chance(&self, rate: f64) -> bool {
        rate > 0.0 && self.next_f64() < rate
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

fn xorshift(mut x: u64) -> u64 {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x
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
    fn chance_follows_the_rate() {
        let rng = Rng::with_seed(42);
        let n_hits = (0..100_000).filter(|_| rng.chance(0.05)).count();
        assert!((4_000..6_000).contains(&n_hits), "n_hits = {n_hits}");
        assert!(!(0..1000).any(|_| rng.chance(0.0)));
        assert!((0..1000).all(|_| rng.chance(1.0)));
    }
}
