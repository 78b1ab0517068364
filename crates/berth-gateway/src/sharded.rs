//! Counters kept per thread: each thread adds to its own copy, on cache lines of its own, and a reader sums
//! the copies.
//!
//! The gateway's workers all count the same routes and groups. With one shared set of atomics, every add
//! takes the cache line from the other core first, and on two busy cores those transfers cost more than
//! the rest of the bookkeeping; with a copy per thread an add stays in the core's own cache. Reads (a
//! metrics scrape, a rollout's window) are rare and add the copies up.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Copies per counter set. Threads beyond this share copies (still correct, only slower).
const SHARDS: usize = 8;

/// One copy of `T` per thread shard.
pub(crate) struct Sharded<T> {
    shards: [Padded<T>; SHARDS],
}

/// Keeps neighbouring copies off each other's cache lines (128 bytes: adjacent-line prefetch pairs lines).
#[repr(align(128))]
#[derive(Default)]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Sharded { shards: std::array::from_fn(|_| Padded::default()) }
    }
}

impl<T> Sharded<T> {
    /// This thread's copy.
    pub(crate) fn local(&self) -> &T {
        &self.shards[shard()].0
    }

    /// Every copy, to be added up.
    pub(crate) fn all(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|shard| &shard.0)
    }

    /// One counter of `T`, added up over the copies.
    pub(crate) fn sum(&self, counter: impl Fn(&T) -> &AtomicU64) -> u64 {
        self.all().map(|copy| counter(copy).load(Ordering::Relaxed)).sum()
    }
}

/// This thread's shard: threads take them in turn as they first count something.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|shard| *shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_from_many_threads_sum_up() {
        let counter: Sharded<AtomicU64> = Sharded::default();
        std::thread::scope(|scope| {
            for _ in 0..(SHARDS + 3) {
                scope.spawn(|| {
                    for _ in 0..1000 {
                        counter.local().fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let total = counter.sum(|copy| copy);
        assert_eq!(total, (SHARDS as u64 + 3) * 1000);
        let used = counter.all().filter(|copy| copy.load(Ordering::Relaxed) > 0).count();
        assert!(used > 1, "every thread counted into one copy");
    }
}
