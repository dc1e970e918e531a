//! The cost of a platform credential at the gateway: a token verified cold (Ed25519 signature
//! and claims, what a cache miss pays before the revocation query), a cached hit, the key
//! derivation (once per isolate), and a ticket verification.
//!
//! `cargo bench --bench auth`; results in docs/results/auth-*.md.

#![allow(clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use edge_gateway::auth::cache::Lookup;
use edge_gateway::auth::{ticket, token, MintClaims, TokenCache, TokenKeys, TokenRef};
use std::hint::black_box;
use std::time::Duration;

const SECRET: &str = "bench-master-secret-0123456789abcdef";
const NOW_S: u64 = 1_800_000_000;

fn bench(c: &mut Criterion) {
    let keys = TokenKeys::derive(SECRET);
    let t = token::mint(
        &keys,
        &MintClaims::new("user_abc123", NOW_S - 10, 2_592_000),
    );
    let mut g = c.benchmark_group("token");
    g.bench_function("verify cold (signature + claims)", |b| {
        b.iter(|| token::verify(black_box(&t), &keys, NOW_S).expect("valid"))
    });
    let mut cache = TokenCache::default();
    cache.insert(
        &t,
        "user_abc123",
        TokenRef::of(&t, Some(NOW_S + 100)),
        NOW_S * 1000,
    );
    // Fill the cache to its bound so the hit is measured against a full map.
    for i in 0..4095 {
        let other = format!("{t}{i}");
        cache.insert(
            &other,
            "u",
            TokenRef::of(&other, Some(NOW_S + 100)),
            NOW_S * 1000,
        );
    }
    assert!(matches!(cache.get(&t, NOW_S * 1000 + 1), Lookup::Hit(..)));
    g.bench_function("verify cached (hit in a full cache)", |b| {
        b.iter(|| match cache.get(black_box(&t), NOW_S * 1000 + 1) {
            Lookup::Hit(u, _) => Some(u),
            _ => None,
        })
    });
    g.bench_function("revocation hash (sha-256 hex)", |b| {
        b.iter(|| token::revocation_hash(black_box(&t)))
    });
    g.bench_function("derive keys (hkdf + ed25519 public key)", |b| {
        b.iter(|| TokenKeys::derive(black_box(SECRET)))
    });
    g.finish();
    let tk = ticket::mint(
        SECRET.as_bytes(),
        "user_abc123",
        NOW_S * 1000,
        "00000000-0000-4000-8000-000000000000",
    );
    c.bench_function("ticket/verify (hmac-sha256)", |b| {
        b.iter(|| ticket::verify(black_box(&tk), SECRET.as_bytes(), NOW_S * 1000).expect("valid"))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
