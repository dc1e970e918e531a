//! Statistical guarantees of hashed placement, on fixed deterministic ids so they cannot
//! flake: uniformity (chi-square at p = 0.001 for every N in 2..=64) and bounded movement
//! when N grows to N+1.

// Test code: a panic is the failure report, so the workspace's panic-path lints do not apply.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use shard_policies::hash::{jump_consistent_hash, shard_index, xxh64};
use shard_policies::{
    ClientType, ConnectionRequest, HashPolicy, ShardCount, ShardKey, ShardPolicy,
};

const IDS: usize = 100_000;

/// Deterministic UUID-shaped connection ids from a splitmix64 stream.
fn uuid_ids(seed: u64, count: usize) -> Vec<String> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..count)
        .map(|_| {
            let (a, b) = (next(), next());
            format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xffff,
                b >> 48,
                b & 0xffff_ffff_ffff
            )
        })
        .collect()
}

/// Sequential ids, the adversarial case for a weak hash.
fn sequential_ids(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("conn-{i}")).collect()
}

fn hashes(ids: &[String]) -> Vec<u64> {
    ids.iter().map(|id| xxh64(id.as_bytes())).collect()
}

// ---- chi-square upper tail: Q(k/2, x/2), the regularized upper incomplete gamma ----

fn ln_gamma(x: f64) -> f64 {
    // Lanczos approximation (g = 7, n = 9), accurate to ~1e-15 for x > 0.
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let t = x + 7.5;
    let mut a = C[0];
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularized upper incomplete gamma Q(a, x) (Numerical Recipes: series / continued fraction).
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let prefix = (-x + a * x.ln() - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut sum, mut term, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        1.0 - sum * prefix
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        h * prefix
    }
}

/// P(X >= x) for X ~ chi-square with `df` degrees of freedom.
fn chi2_p_value(x: f64, df: u32) -> f64 {
    gamma_q(f64::from(df) / 2.0, x / 2.0)
}

#[test]
fn chi_square_helper_matches_published_critical_values() {
    // p = 0.001 critical values from standard chi-square tables.
    for (df, critical) in [
        (1, 10.828),
        (2, 13.816),
        (5, 20.515),
        (10, 29.588),
        (20, 45.315),
        (30, 59.703),
        (50, 86.661),
        (60, 99.607),
    ] {
        let p = chi2_p_value(critical, df);
        assert!((p - 0.001).abs() < 0.00002, "df {df}: p = {p}");
    }
    // And the bulk of the distribution: the median of chi-square(2) is 2 ln 2.
    assert!((chi2_p_value(2.0 * 2f64.ln(), 2) - 0.5).abs() < 1e-12);
}

fn chi_square(counts: &[u64], total: usize) -> f64 {
    let expected = total as f64 / counts.len() as f64;
    counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

fn assert_uniform(label: &str, hashes: &[u64]) {
    for n in 2..=64u32 {
        let mut counts = vec![0u64; n as usize];
        for &h in hashes {
            counts[jump_consistent_hash(h, n) as usize] += 1;
        }
        let stat = chi_square(&counts, hashes.len());
        let p = chi2_p_value(stat, n - 1);
        assert!(
            p > 0.001,
            "{label}: N = {n}: chi-square {stat:.1} with {} df, p = {p:.2e}",
            n - 1
        );
    }
}

fn biased_counts_fail(hashes: &[u64], n: u32) -> bool {
    let mut counts = vec![0u64; n as usize];
    for &h in hashes {
        // Only 16 distinct values folded onto n shards: shards 0..6 get double weight.
        counts[((h & 0xf) as u32 % n) as usize] += 1;
    }
    chi2_p_value(chi_square(&counts, hashes.len()), n - 1) <= 0.001
}

#[test]
fn the_uniformity_check_catches_a_biased_placement() {
    assert!(biased_counts_fail(&hashes(&uuid_ids(4, IDS)), 10));
}

#[test]
fn placement_is_uniform_for_every_n_from_2_to_64() {
    assert_uniform("uuid ids", &hashes(&uuid_ids(1, IDS)));
    assert_uniform("sequential ids", &hashes(&sequential_ids(IDS)));
}

#[test]
fn growing_n_moves_at_most_one_in_n_plus_one() {
    let hashes = hashes(&uuid_ids(2, IDS));
    let mut before: Vec<u32> = hashes.iter().map(|&h| jump_consistent_hash(h, 1)).collect();
    for n in 1..=64u32 {
        let mut moved = 0usize;
        for (h, shard) in hashes.iter().zip(before.iter_mut()) {
            let after = jump_consistent_hash(*h, n + 1);
            if after != *shard {
                // Only ever onto the new shard: old shards never trade connections.
                assert_eq!(after, n, "N {n} -> {}", n + 1);
                moved += 1;
                *shard = after;
            }
        }
        let fraction = moved as f64 / IDS as f64;
        let bound = 1.0 / f64::from(n + 1) + 0.01;
        assert!(
            fraction <= bound,
            "N {n} -> {}: moved {fraction:.4} > {bound:.4}",
            n + 1
        );
        // Sanity in the other direction: growth does move about 1/(N+1).
        assert!(
            fraction >= 1.0 / f64::from(n + 1) - 0.01,
            "N {n}: moved only {fraction:.4}"
        );
    }
}

#[test]
fn the_policy_places_exactly_where_the_pure_hash_says() {
    // The statistical tests above use the pure hash for speed; this ties it to the policy.
    let ids = uuid_ids(3, 2_000);
    for n in [1u32, 2, 3, 7, 16, 64, 1024] {
        let policy = HashPolicy {
            shards: ShardCount::fixed(n).unwrap(),
        };
        for id in &ids {
            let req = ConnectionRequest {
                user_id: "u",
                tier_limit: 100,
                shard_max_connections: 200,
                client_type: ClientType::UserScoped,
                session_id: None,
                machine_id: None,
                connection_id: id,
                now_ms: 0,
                spread: 0,
            };
            assert_eq!(
                policy.candidates(&req).preferred(),
                ShardKey::Hash {
                    k: shard_index(id, n)
                }
            );
        }
    }
}
