use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::Duration;

use super::*;
use crate::table::Rate;

const MS: u64 = 1_000_000;

fn quota(requests: u32, per_ms: u64, burst: u32) -> Quota {
    Quota::new(Rate { requests, per: Duration::from_millis(per_ms) }, burst)
}

/// A fixed SipHash key, so a key hashes the same on every call.
fn hash(key: u64) -> u64 {
    std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(key)
}

/// The same algorithm with unbounded memory: what every decision must agree with.
#[derive(Default)]
struct Reference {
    tats: HashMap<u64, u64>,
}

impl Reference {
    fn check(&mut self, key: u64, now: u64, quota: &Quota) -> Verdict {
        let tat = self.tats.get(&key).copied().unwrap_or(0);
        let verdict = quota.check(tat, now);
        if let Verdict::Admit { tat } = verdict {
            self.tats.insert(key, tat);
        }
        verdict
    }
}

#[test]
fn far_more_keys_than_the_cap_keep_the_map_at_the_cap() {
    let cells = KeyCells::with_capacity(4, 100);
    let q = quota(1, 1_000, 1);
    let mut overflowed = 0;
    // A million distinct keys within one refill window: none can be forgotten.
    for key in 0..1_000_000u64 {
        let (_, cell) = cells.check(hash(key), 1_000 * MS + key, &q);
        overflowed += usize::from(cell == Cell::Overflow);
        assert!(cells.len() <= 400);
    }
    assert_eq!(cells.len(), 400);
    assert_eq!(overflowed, 1_000_000 - 400);
}

#[test]
fn overflowing_keys_share_one_key_worth_of_requests() {
    let cells = KeyCells::with_capacity(1, 10);
    let q = quota(10, 1_000, 10);
    let now = 5_000 * MS;
    for key in 0..10u64 {
        assert_eq!(cells.check(hash(key), now, &q).1, Cell::Key);
    }
    let admitted = (10..1_000u64)
        .map(|key| cells.check(hash(key), now, &q))
        .filter(|(verdict, cell)| *cell == Cell::Overflow && matches!(verdict, Verdict::Admit { .. }))
        .count();
    assert_eq!(admitted, 10, "the overflow cell admits one burst");
    // Tracked keys keep their own quota meanwhile.
    assert!(matches!(cells.check(hash(3), now, &q).0, Verdict::Admit { .. }));
}

#[test]
fn swept_keys_decide_the_same_as_kept_ones() {
    // 20 000 keys come and go, about 50 at a time ahead of schedule; the bounded store (128 keys in total,
    // so it forgets keys all the time) must decide every request exactly as the unbounded reference.
    let cells = KeyCells::with_capacity(4, 32);
    let mut reference = Reference::default();
    let q = quota(2, 100, 2);
    let mut now = 1_000 * MS;
    let mut n_admitted = 0;
    for step in 0..200_000u64 {
        now += MS / 4;
        // A sliding window of live keys, each hit several times in a row, plus an old key coming back.
        let key = if step % 7 == 0 { (step / 40).saturating_sub(500) } else { step / 10 };
        let (verdict, cell) = cells.check(hash(key), now, &q);
        assert_eq!(cell, Cell::Key, "step {step}: the store never needed the overflow cell");
        assert_eq!(verdict, reference.check(key, now, &q), "step {step}, key {key}");
        n_admitted += usize::from(matches!(verdict, Verdict::Admit { .. }));
        assert!(cells.len() <= 128);
    }
    assert!(n_admitted > 10_000 && n_admitted < 190_000, "both outcomes are exercised: {n_admitted}");
    cells.sweep(now + 1_000 * MS);
    assert_eq!(cells.len(), 0, "every key is idle a second later");
}

#[test]
fn atomic_cells_follow_the_same_algorithm() {
    let cell = AtomicU64::new(0);
    let mut reference = Reference::default();
    let q = quota(5, 1_000, 3);
    for i in 0..2_000u64 {
        let now = 1_000 * MS + i * 37 * MS;
        assert_eq!(check_atomic(&cell, now, &q), reference.check(0, now, &q));
    }
}

#[test]
fn a_full_default_shard_never_grows_its_table() {
    // The documented worst case (about 72 MiB for 64 shards) holds only if a full shard's table stays at
    // 2^16 buckets: 57,344 entries is exactly what such a table holds before it would double.
    let cells = KeyCells::with_capacity(1, DEFAULT_CAP_PER_SHARD);
    let q = quota(1, 60_000, 1);
    for key in 0..100_000u64 {
        cells.check(hash(key), 1_000 * MS, &q);
    }
    let shard = lock(&cells.shards[0]);
    assert_eq!(shard.tats.len(), DEFAULT_CAP_PER_SHARD);
    assert_eq!(shard.tats.capacity(), DEFAULT_CAP_PER_SHARD, "the table did not grow past 2^16 buckets");
}
