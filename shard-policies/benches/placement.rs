//! ns per placement for each policy beside a bare xxh64 of the same connection id.
//!
//! Every benchmark walks the same 1024 UUID-shaped ids, so the bare-hash row is the exact
//! hashing work a hashed placement cannot avoid. Goal: each policy within 3x of it.

// Benchmark setup: a panic here only aborts the benchmark run.
#![allow(clippy::expect_used, clippy::indexing_slicing)]

use criterion::{criterion_group, criterion_main, Criterion};
use shard_policies::hash::xxh64;
use shard_policies::{ClientType, ConnectionRequest, PolicyConfig, ShardPolicy};
use std::hint::black_box;
use std::time::Duration;

/// Deterministic UUID-shaped connection ids (splitmix64 stream).
fn ids() -> Vec<String> {
    let mut state = 0x5eed_u64;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..1024)
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

fn request<'a>(id: &'a str, client_type: ClientType) -> ConnectionRequest<'a> {
    ConnectionRequest {
        user_id: "user-1234",
        tier_limit: 500,
        shard_max_connections: 200,
        client_type,
        session_id: Some("session-5678"),
        machine_id: None,
        connection_id: id,
        now_ms: 1_760_000_123_456,
        spread: 0,
    }
}

fn placement(c: &mut Criterion) {
    let ids = ids();
    let mut group = c.benchmark_group("placement");

    let mut i = 0usize;
    group.bench_function("bare xxh64", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            xxh64(black_box(ids[i].as_bytes()))
        })
    });

    let policies: [(&str, &str, ClientType); 6] = [
        ("single", "single", ClientType::UserScoped),
        ("hash N=16", "hash:shards=16", ClientType::UserScoped),
        (
            "hash auto (500/200 -> 3)",
            "hash:shards=auto",
            ClientType::UserScoped,
        ),
        (
            "session (session-scoped)",
            "session",
            ClientType::SessionScoped,
        ),
        (
            "session others=hash,4 (user-scoped)",
            "session:others=hash,shards=4",
            ClientType::UserScoped,
        ),
        (
            "rotate 10m/2m + hash auto",
            "rotate:period=10m,drain=2m,shards=auto",
            ClientType::UserScoped,
        ),
    ];
    for (label, spec, client_type) in policies {
        let policy: PolicyConfig = spec.parse().expect("benchmark policy parses");
        let mut i = 0usize;
        group.bench_function(label, |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                let req = request(&ids[i], client_type);
                black_box(&policy).candidates(black_box(&req)).next()
            })
        });
    }

    // Not part of the 3x goal: the cost of a full spill walk and of rendering a name.
    let hash16: PolicyConfig = "hash:shards=16".parse().expect("parses");
    let mut i = 0usize;
    group.bench_function("hash N=16, full spill order (16 keys)", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            let req = request(&ids[i], ClientType::UserScoped);
            black_box(&hash16)
                .candidates(black_box(&req))
                .fold(0u32, |acc, k| match k {
                    shard_policies::ShardKey::Hash { k } => acc ^ k,
                    _ => acc,
                })
        })
    });
    let mut i = 0usize;
    group.bench_function("hash N=16, placement + object_name", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            let req = request(&ids[i], ClientType::UserScoped);
            black_box(&hash16)
                .candidates(black_box(&req))
                .preferred()
                .object_name(req.user_id)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50);
    targets = placement
}
criterion_main!(benches);
