//! Hashing: xxh64 of connection ids, jump consistent hashing onto N shards, and the spill
//! order (a permutation of the N shards that starts at the preferred one).
//!
//! Jump consistent hashing (Lamping & Veach, 2014) is used because growing N to N+1 moves
//! only the keys that now land on the new shard N, an expected 1/(N+1) of them, and never
//! moves a key between two old shards. It needs no table and O(ln N) steps.

use twox_hash::XxHash64;

/// Seed of every xxh64 in this crate. Changing it reshuffles every placement in production.
pub const HASH_SEED: u64 = 0;

/// xxh64 (seed [`HASH_SEED`]) of `bytes`: the hash every hashed placement starts from.
#[inline]
pub fn xxh64(bytes: &[u8]) -> u64 {
    XxHash64::oneshot(HASH_SEED, bytes)
}

/// Jump consistent hash of `key` onto `0..buckets`; `0` when `buckets` is 0 or 1.
///
/// Same algorithm and constants as the paper, so results are stable across platforms
/// (the float division is exact IEEE arithmetic on every target, wasm32 included).
#[inline]
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    // b is in -1..buckets; -1 only when buckets == 0.
    u32::try_from(b).unwrap_or(0)
}

/// Shard index in `0..n` for a connection id: `jump_consistent_hash(xxh64(id), n)`.
#[inline]
pub fn shard_index(connection_id: &str, n: u32) -> u32 {
    jump_consistent_hash(xxh64(connection_id.as_bytes()), n)
}

/// The order in which a connection tries the `n` shards of a hashed set: the preferred
/// shard first, then every other shard exactly once.
///
/// The walk is `first + i * step (mod n)` with a per-connection `step` coprime to `n`, so
/// it is a permutation, and connections whose preferred shard is full spread over
/// different shards instead of all piling onto the next one (as linear probing would).
/// `step` is only computed when a second candidate is actually requested.
#[derive(Debug, Clone)]
pub struct SpillOrder {
    hash: u64,
    n: u32,
    first: u32,
    /// 0 until the second element is requested (0 is never a valid step).
    step: u32,
    /// Number of elements already yielded.
    yielded: u32,
}

impl SpillOrder {
    /// The spill order over `n` shards (at least 1) for a connection with this `hash`.
    #[inline]
    pub fn new(hash: u64, n: u32) -> Self {
        let n = n.max(1);
        Self {
            hash,
            n,
            first: jump_consistent_hash(hash, n),
            step: 0,
            yielded: 0,
        }
    }

    /// The spill order over `n` shards (at least 1) that starts at the connection's shard
    /// among the first `active` of them (`1..=n`): a user spread over `active` shards of at
    /// most `n` prefers one of those, and spills over all `n`.
    #[inline]
    pub fn within(hash: u64, active: u32, n: u32) -> Self {
        let n = n.max(1);
        Self {
            first: jump_consistent_hash(hash, active.clamp(1, n)),
            ..Self::new(hash, n)
        }
    }

    /// A one-element order over a set of a single shard; no hashing needed.
    #[inline]
    pub fn single() -> Self {
        Self {
            hash: 0,
            n: 1,
            first: 0,
            step: 1,
            yielded: 0,
        }
    }

    /// The preferred shard (the first element), whatever has been consumed.
    #[inline]
    pub fn first(&self) -> u32 {
        self.first
    }

    /// Number of shards in the set.
    #[inline]
    pub fn shards(&self) -> u32 {
        self.n
    }
}

impl Iterator for SpillOrder {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        if self.yielded >= self.n {
            return None;
        }
        let i = self.yielded;
        self.yielded += 1;
        if i == 0 {
            return Some(self.first);
        }
        if self.step == 0 {
            self.step = coprime_step(mix(self.hash), self.n);
        }
        let idx = (u64::from(self.first) + u64::from(i) * u64::from(self.step)) % u64::from(self.n);
        // idx < n <= u32::MAX, so the conversion cannot fail.
        Some(u32::try_from(idx).unwrap_or(self.first))
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.n - self.yielded) as usize;
        (left, Some(left))
    }
}

impl ExactSizeIterator for SpillOrder {}
impl core::iter::FusedIterator for SpillOrder {}

/// splitmix64 finalizer: decorrelates the step from the bits jump hashing consumed.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A step in `1..n` coprime to `n` chosen by `seed` (1 when `n <= 2`).
fn coprime_step(seed: u64, n: u32) -> u32 {
    if n <= 2 {
        return 1;
    }
    let span = u64::from(n - 1);
    // seed % span < n - 1, so this is in 1..n.
    let mut step = 1 + u32::try_from(seed % span).unwrap_or(0);
    // Terminates: 1 is coprime to everything and is reached after at most n - 2 steps.
    while gcd(step, n) != 1 {
        step = if step + 1 >= n { 1 } else { step + 1 };
    }
    step
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh64_matches_the_reference_vectors() {
        // Reference values of XXH64 with seed 0 (from the xxHash test suite).
        assert_eq!(xxh64(b""), 0xef46_db37_51d8_e999);
        assert_eq!(xxh64(b"a"), 0xd24e_c4f1_a98c_6e5b);
        assert_eq!(xxh64(b"abc"), 0x44bc_2cf5_ad77_0999);
    }

    #[test]
    fn jump_stays_in_range_and_handles_tiny_sets() {
        for key in [0u64, 1, 42, u64::MAX, 0xdead_beef] {
            assert_eq!(jump_consistent_hash(key, 0), 0);
            assert_eq!(jump_consistent_hash(key, 1), 0);
            for n in 2..100 {
                assert!(jump_consistent_hash(key, n) < n);
            }
        }
    }

    #[test]
    fn jump_only_moves_keys_to_the_new_bucket() {
        for key in (0..2000u64).map(|i| xxh64(&i.to_le_bytes())) {
            for n in 1..80 {
                let before = jump_consistent_hash(key, n);
                let after = jump_consistent_hash(key, n + 1);
                assert!(
                    after == before || after == n,
                    "key {key} n {n}: {before} -> {after}"
                );
            }
        }
    }

    #[test]
    fn placements_are_pinned() {
        // Changing any of these reshuffles live users between shards: do it on purpose only.
        let got: Vec<u32> = ["c-0", "c-1", "c-2", "conn-42", "9f1c2d3e"]
            .iter()
            .map(|id| shard_index(id, 16))
            .collect();
        assert_eq!(got, PINNED_16);
    }
    const PINNED_16: [u32; 5] = [14, 2, 9, 13, 14];

    #[test]
    fn coprime_step_is_coprime_and_in_range() {
        for n in 1..200u32 {
            for seed in [0u64, 1, 7, 1 << 40, u64::MAX] {
                let s = coprime_step(seed, n);
                assert!(s >= 1 && (n <= 2 || s < n), "n {n} step {s}");
                assert_eq!(gcd(s, n.max(1)), 1, "n {n} step {s}");
            }
        }
    }

    #[test]
    fn spill_order_is_a_permutation_starting_at_the_preferred_shard() {
        for n in 1..70u32 {
            for i in 0..50u64 {
                let h = xxh64(&i.to_le_bytes());
                let order = SpillOrder::new(h, n);
                assert_eq!(order.len(), n as usize);
                let v: Vec<u32> = order.collect();
                assert_eq!(v[0], jump_consistent_hash(h, n));
                let mut sorted = v.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn spill_from_one_full_shard_spreads_over_the_others() {
        // Connections preferring shard 0 of 8 should not all spill to the same next shard.
        let mut second = std::collections::BTreeSet::new();
        for i in 0..5000u64 {
            let mut order = SpillOrder::new(xxh64(&i.to_le_bytes()), 8);
            if order.next() == Some(0) {
                second.insert(order.next().unwrap());
            }
        }
        assert!(second.len() >= 4, "spill targets {second:?}");
    }

    #[test]
    fn an_order_within_the_active_shards_prefers_them_and_covers_all() {
        for i in 0..200u64 {
            let h = xxh64(&i.to_le_bytes());
            for n in 1..20u32 {
                for active in 0..=n + 1 {
                    let v: Vec<u32> = SpillOrder::within(h, active, n).collect();
                    assert_eq!(v[0], jump_consistent_hash(h, active.clamp(1, n)));
                    let mut sorted = v.clone();
                    sorted.sort_unstable();
                    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
                }
            }
        }
    }

    #[test]
    fn single_order_has_one_element() {
        assert_eq!(SpillOrder::single().collect::<Vec<_>>(), vec![0]);
        assert_eq!(SpillOrder::new(123, 0).collect::<Vec<_>>(), vec![0]);
    }
}
