//! Per-key GCRA state with a hard memory bound: `KeyCells` maps a key's 64-bit keyed hash to its TAT in
//! sharded maps, forgets keys that are back at full burst, and decides for keys it has no room for with
//! one shared overflow cell.
//!
//! Memory: each shard holds at most `cap_per_shard` entries of 16 bytes (plus hashbrown's control byte
//! and load factor). The default cap, 7/8 of 2^16 per shard, is exactly what a table of 2^16 buckets holds
//! before it would grow, so 64 full shards take about 72 MiB and 3.67 million keys; nothing grows past that.
//!
//! Forgetting: a TAT at or before now decides like no entry (see `gcra`), so dropping it changes nothing.
//! Each shard sweeps such entries every `SWEEP_EVERY` (on the first request after that, under the shard's
//! lock: a few hundred microseconds for a full shard) and when a new key finds it full; a sweep that freed
//! less than 1/16 of the shard holds the next full-shard sweep off for `FULL_SWEEP_EVERY`, so the cost of
//! sweeping stays below 16 entries scanned per new key.
//!
//! Overflow: when a shard is full of keys that are all still ahead of their schedule (millions of distinct
//! keys within one refill window: someone cycling keys faster than any client would), a new key is not
//! stored; it is decided by one overflow cell shared by every such key, at the key's own quota. Tracked
//! keys keep their limits; the flood of new keys gets one key's worth of requests between them. A 64-bit
//! hash collision (about 4 × 10^-7 at the cap) makes two keys share one cell, which errs on the strict side.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::gcra::{Quota, Verdict};

pub(crate) const DEFAULT_SHARDS: usize = 64;
/// 7/8 of 2^16: the most a hashbrown table of 2^16 buckets holds without growing.
pub(crate) const DEFAULT_CAP_PER_SHARD: usize = 57_344;
const SWEEP_EVERY_NS: u64 = 5_000_000_000;
const FULL_SWEEP_EVERY_NS: u64 = 100_000_000;

pub(crate) struct KeyCells {
    shards: Box<[Mutex<Shard>]>,
    cap_per_shard: usize,
    /// The TAT of the overflow cell.
    overflow: AtomicU64,
}

/// Where a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cell {
    Key,
    Overflow,
}

struct Shard {
    tats: HashMap<u64, u64, Mixer>,
    next_sweep: u64,
    next_full_sweep: u64,
}

impl KeyCells {
    pub(crate) fn new() -> KeyCells {
        KeyCells::with_capacity(DEFAULT_SHARDS, DEFAULT_CAP_PER_SHARD)
    }

    /// `n_shards` (rounded up to a power of two) of at most `cap_per_shard` keys each.
    pub(crate) fn with_capacity(n_shards: usize, cap_per_shard: usize) -> KeyCells {
        let n_shards = n_shards.max(1).next_power_of_two();
        let shards = (0..n_shards)
            .map(|_| {
                Mutex::new(Shard { tats: HashMap::with_hasher(Mixer), next_sweep: SWEEP_EVERY_NS, next_full_sweep: 0 })
            })
            .collect();
        KeyCells { shards, cap_per_shard: cap_per_shard.max(1), overflow: AtomicU64::new(0) }
    }

    /// Decides a request of the key hashed to `hash` at `now` (ns since the limiter's epoch) under `quota`,
    /// and records it if admitted.
    pub(crate) fn check(&self, hash: u64, now: u64, quota: &Quota) -> (Verdict, Cell) {
        let mut shard = self.shard(hash);
        if now >= shard.next_sweep {
            shard.sweep(now);
            shard.next_sweep = now.saturating_add(SWEEP_EVERY_NS);
        }
        if let Some(tat) = shard.tats.get_mut(&hash) {
            let verdict = quota.check(*tat, now);
            if let Verdict::Admit { tat: next } = verdict {
                *tat = next;
            }
            return (verdict, Cell::Key);
        }
        if shard.tats.len() >= self.cap_per_shard && now >= shard.next_full_sweep {
            shard.sweep(now);
            // A sweep that freed little will free little again soon: wait before the next one, so that a
            // shard full of live keys does not scan itself on every new key.
            if shard.tats.len() + self.cap_per_shard / 16 >= self.cap_per_shard {
                shard.next_full_sweep = now.saturating_add(FULL_SWEEP_EVERY_NS);
            }
        }
        if shard.tats.len() >= self.cap_per_shard {
            drop(shard);
            return (check_atomic(&self.overflow, now, quota), Cell::Overflow);
        }
        let verdict = quota.check(0, now);
        if let Verdict::Admit { tat } = verdict {
            shard.tats.insert(hash, tat);
        }
        (verdict, Cell::Key)
    }

    /// Keys stored right now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(shard).tats.len()).sum()
    }

    /// Drops every key that is back at full burst at `now`.
    #[cfg(test)]
    pub(crate) fn sweep(&self, now: u64) {
        for shard in self.shards.iter() {
            lock(shard).sweep(now);
        }
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        // The top bits pick the shard; the map mixes all bits again (`Mixer`), so keys within one shard,
        // which share their top bits, still spread over the map's buckets.
        let idx = (hash >> 32) as usize & (self.shards.len() - 1);
        lock(&self.shards[idx])
    }
}

impl Shard {
    fn sweep(&mut self, now: u64) {
        self.tats.retain(|_, tat| *tat > now);
    }
}

/// GCRA on a shared atomic TAT (the overflow cell, and the cells of overrides).
pub(crate) fn check_atomic(cell: &AtomicU64, now: u64, quota: &Quota) -> Verdict {
    let mut tat = cell.load(Ordering::Relaxed);
    loop {
        let verdict = quota.check(tat, now);
        let Verdict::Admit { tat: next } = verdict else { return verdict };
        match cell.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return verdict,
            Err(current) => tat = current,
        }
    }
}

/// Hashes an already keyed 64-bit hash by one multiplication: the keys are SipHash outputs with a secret
/// key, so nobody can aim them at one bucket, and hashing them again would only cost time.
#[derive(Clone, Copy, Default)]
struct Mixer;

#[derive(Default)]
struct MixerState(u64);

impl BuildHasher for Mixer {
    type Hasher = MixerState;

    fn build_hasher(&self) -> MixerState {
        MixerState(0)
    }
}

impl Hasher for MixerState {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
