//! Property tests: determinism, spill permutations, rotation boundaries, names (round trip,
//! canonical form, no collisions under adversarial ids) and the grammar round trip.

// Test code: a panic is the failure report, so the workspace's panic-path lints do not apply.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use shard_policies::rotation::{MAX_PERIOD_SECS, MAX_RETRY_AFTER_MS, MIN_PERIOD_SECS};
use shard_policies::{
    parse_object_name, validate_id, ClientType, ConnectionRequest, EpochPhase, HashPolicy,
    ObjectName, Others, PolicyConfig, RotatePolicy, Rotation, SessionPolicy, ShardCount, ShardKey,
    ShardPolicy, SinglePolicy, MAX_SHARDS,
};
use std::collections::{BTreeSet, HashMap};

// ---------- strategies ----------

/// Valid ids, biased towards the fragments that break naive name schemes.
fn id() -> impl Strategy<Value = String> {
    let fragments = prop::sample::select(vec![
        ":",
        "::",
        "h1",
        "h",
        "s",
        "s:",
        "e5",
        "e5p600d120",
        "p600",
        "d120",
        "cm",
        "cm:",
        "a",
        "0",
        "-",
        ".",
        "_",
    ]);
    prop_oneof![
        "[A-Za-z0-9_.:-]{1,128}",
        "[:hse0-9]{1,12}",
        prop::collection::vec(fragments, 1..10).prop_map(|v| v.concat()),
    ]
    .prop_filter("valid id", |s| validate_id(s).is_ok())
}

fn rotation() -> impl Strategy<Value = Rotation> {
    (MIN_PERIOD_SECS..=MAX_PERIOD_SECS)
        .prop_flat_map(|p| (Just(p), 1..=p))
        .prop_map(|(p, d)| Rotation::try_new(p, d).unwrap())
}

fn shard_count() -> impl Strategy<Value = ShardCount> {
    prop_oneof![
        Just(ShardCount::AUTO),
        (1..=MAX_SHARDS).prop_map(|n| ShardCount::fixed(n).unwrap())
    ]
}

fn config() -> impl Strategy<Value = PolicyConfig> {
    prop_oneof![
        Just(PolicyConfig::Single(SinglePolicy)),
        shard_count().prop_map(|shards| PolicyConfig::Hash(HashPolicy { shards })),
        Just(PolicyConfig::Session(SessionPolicy {
            others: Others::Base
        })),
        shard_count().prop_map(|c| PolicyConfig::Session(SessionPolicy {
            others: Others::Hash(c)
        })),
        (rotation(), prop::option::of(shard_count()))
            .prop_map(|(rotation, shards)| PolicyConfig::Rotate(RotatePolicy { rotation, shards })),
    ]
}

fn key() -> impl Strategy<Value = ShardKey<String>> {
    prop_oneof![
        Just(ShardKey::Base),
        (0..MAX_SHARDS).prop_map(|k| ShardKey::Hash { k }),
        id().prop_map(ShardKey::Session),
        (rotation(), any::<u64>(), prop::option::of(0..MAX_SHARDS)).prop_map(
            |(rotation, epoch, hash)| ShardKey::Epoch {
                rotation,
                epoch,
                hash
            }
        ),
    ]
}

/// A user and key assembled from the pieces a naive `cm:{user}:{shard}` scheme confuses.
fn collision_prone_pair() -> impl Strategy<Value = (String, ShardKey<String>)> {
    let rotation = Rotation::try_new(600, 120).unwrap();
    let user = prop::collection::vec(
        prop::sample::select(vec![
            "a",
            ":h1",
            ":s",
            ":b",
            ":s:b",
            ":e5p600d120",
            ":h1:h1",
        ]),
        1..4,
    )
    .prop_map(|v| v.concat())
    .prop_filter("valid id", |s| validate_id(s).is_ok());
    let key = prop::sample::select(vec![
        ShardKey::Base,
        ShardKey::Hash { k: 1 },
        ShardKey::Session("b".to_owned()),
        ShardKey::Session("b:h1".to_owned()),
        ShardKey::Epoch {
            rotation,
            epoch: 5,
            hash: None,
        },
        ShardKey::Epoch {
            rotation,
            epoch: 5,
            hash: Some(1),
        },
    ]);
    (user, key)
}

fn client_type() -> impl Strategy<Value = ClientType> {
    prop::sample::select(vec![
        ClientType::UserScoped,
        ClientType::SessionScoped,
        ClientType::MachineScoped,
    ])
}

#[derive(Debug, Clone)]
struct Req {
    user: String,
    tier_limit: u32,
    shard_max: u32,
    client_type: ClientType,
    session: Option<String>,
    connection: String,
    now_ms: u64,
    spread: u32,
}

impl Req {
    fn get(&self) -> ConnectionRequest<'_> {
        ConnectionRequest {
            user_id: &self.user,
            tier_limit: self.tier_limit,
            shard_max_connections: self.shard_max,
            client_type: self.client_type,
            session_id: self.session.as_deref(),
            machine_id: None,
            connection_id: &self.connection,
            now_ms: self.now_ms,
            spread: self.spread,
        }
    }
}

fn request() -> impl Strategy<Value = Req> {
    (
        id(),
        0..5_000u32,
        0..500u32,
        client_type(),
        prop::option::of(id()),
        id(),
        any::<u64>(),
        0..8u32,
    )
        .prop_map(
            |(user, tier_limit, shard_max, client_type, session, connection, now_ms, spread)| Req {
                user,
                tier_limit,
                shard_max,
                client_type,
                session,
                connection,
                now_ms,
                spread,
            },
        )
}

fn hash_index(key: &ShardKey<&str>) -> Option<u32> {
    match key {
        ShardKey::Hash { k } => Some(*k),
        ShardKey::Epoch { hash, .. } => *hash,
        _ => None,
    }
}

// ---------- placement ----------

proptest! {
    #[test]
    fn placement_is_deterministic(cfg in config(), req in request()) {
        let a: Vec<_> = cfg.candidates(&req.get()).collect();
        // Same request again, and the same policy re-parsed from its own string.
        let again = req.clone();
        let b: Vec<_> = cfg.candidates(&again.get()).collect();
        let reparsed: PolicyConfig = cfg.to_string().parse().unwrap();
        let c: Vec<_> = reparsed.candidates(&req.get()).collect();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(&a, &c);
        prop_assert_eq!(a[0], cfg.candidates(&req.get()).preferred());
    }

    #[test]
    fn spill_order_is_a_permutation_of_the_shard_set(cfg in config(), req in request()) {
        let r = req.get();
        let candidates = cfg.candidates(&r);
        let len = candidates.len();
        let set_len = candidates.shard_set_len() as usize;
        let keys: Vec<_> = candidates.collect();
        prop_assert_eq!(keys.len(), len);
        // Never a repeated shard.
        let distinct: BTreeSet<_> = keys.iter().collect();
        prop_assert_eq!(distinct.len(), keys.len());
        let lead = matches!(keys[0], ShardKey::Session(_));
        let rest = if lead { &keys[1..] } else { &keys[..] };
        let indices: Vec<u32> = rest.iter().filter_map(hash_index).collect();
        // A filling placement (`auto`) also offers the home shard, first or last.
        let home = usize::from(!indices.is_empty() && rest.contains(&ShardKey::Base));
        if home == 1 {
            prop_assert!(rest[0] == ShardKey::Base || rest[rest.len() - 1] == ShardKey::Base);
            prop_assert_eq!(rest[0] == ShardKey::Base, r.spread == 0);
        }
        prop_assert_eq!(keys.len(), set_len + usize::from(lead) + home);
        if indices.is_empty() {
            prop_assert_eq!(set_len, 1);
        } else {
            // The hashed part is exactly 0..N, once each.
            let mut sorted = indices.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (0..set_len as u32).collect::<Vec<_>>());
            let n = match cfg {
                PolicyConfig::Hash(p) => p.shards.resolve(r.tier_limit, r.shard_max_connections),
                PolicyConfig::Session(SessionPolicy { others: Others::Hash(c) }) => c.resolve(r.tier_limit, r.shard_max_connections),
                PolicyConfig::Rotate(RotatePolicy { shards: Some(c), .. }) => c.resolve(r.tier_limit, r.shard_max_connections),
                _ => 1,
            };
            prop_assert_eq!(set_len as u32, n);
        }
    }

    #[test]
    fn spreading_one_level_further_moves_a_connection_only_to_the_new_shard(req in request(), level in 1..40u32) {
        // `hash:shards=auto` at spread L prefers one of hash shards 0..L; at L+1 a connection
        // either keeps its shard or moves to shard L: growing moves about 1/(L+1) of new
        // placements and never shuffles the others.
        let policy = HashPolicy { shards: ShardCount::AUTO };
        let mut r = req.clone();
        r.tier_limit = 100_000;
        r.shard_max = 100;
        r.spread = level;
        let before = policy.candidates(&r.get()).preferred().to_owned_key();
        r.spread = level + 1;
        let after = policy.candidates(&r.get()).preferred().to_owned_key();
        prop_assert!(after == before || after == ShardKey::Hash { k: level }, "{:?} -> {:?}", before, after);
    }

    #[test]
    fn session_sockets_lead_with_their_session_shard(others in prop_oneof![Just(Others::Base), shard_count().prop_map(Others::Hash)], req in request()) {
        let policy = SessionPolicy { others };
        let r = req.get();
        let first = policy.candidates(&r).preferred();
        match (r.client_type, r.session_id) {
            (ClientType::SessionScoped, Some(s)) => prop_assert_eq!(first, ShardKey::Session(s)),
            _ => prop_assert!(!matches!(first, ShardKey::Session(_))),
        }
    }
}

// ---------- rotation ----------

proptest! {
    #[test]
    fn epochs_change_exactly_at_period_boundaries(rotation in rotation(), epoch in 1..50_000_000u64, req in request()) {
        let start = rotation.epoch_start_ms(epoch);
        prop_assert_eq!(start, epoch * rotation.period_ms());
        prop_assert_eq!(rotation.epoch_at(start - 1), epoch - 1);
        prop_assert_eq!(rotation.epoch_at(start), epoch);
        prop_assert_eq!(rotation.epoch_at(rotation.epoch_end_ms(epoch) - 1), epoch);
        prop_assert_eq!(rotation.epoch_at(rotation.epoch_end_ms(epoch)), epoch + 1);

        // The policy switches shard at the same instant.
        let policy = RotatePolicy { rotation, shards: None };
        let before = ConnectionRequest { now_ms: start - 1, ..req.get() };
        let at = ConnectionRequest { now_ms: start, ..req.get() };
        prop_assert_eq!(policy.candidates(&before).preferred().epoch(), Some((rotation, epoch - 1)));
        prop_assert_eq!(policy.candidates(&at).preferred().epoch(), Some((rotation, epoch)));

        // And the previous epoch starts draining exactly then, for exactly `drain`.
        prop_assert_eq!(rotation.phase(epoch - 1, start - 1), EpochPhase::Current);
        prop_assert_eq!(rotation.phase(epoch - 1, start), EpochPhase::Draining);
        let drain_end = start + rotation.drain_ms();
        prop_assert!(rotation.is_draining(epoch - 1, drain_end - 1));
        prop_assert_eq!(rotation.phase(epoch - 1, drain_end), EpochPhase::Expired);
        prop_assert_eq!(rotation.phase(epoch, start - 1), EpochPhase::Future);
    }

    #[test]
    fn drain_slots_stay_in_their_stratum(rotation in rotation(), epoch in 0..50_000_000u64, sockets in 1..5_000u32, index in 0..5_000u32, random in any::<u64>()) {
        let plan = rotation.drain_plan(epoch, sockets);
        prop_assert_eq!(plan.start_ms(), rotation.epoch_end_ms(epoch));
        prop_assert_eq!(plan.end_ms(), rotation.drain_end_ms(epoch));
        let slot = plan.slot(index, random);
        let i = u128::from(index.min(sockets - 1));
        let (window, n) = (u128::from(rotation.drain_ms()), u128::from(sockets));
        let offset = u128::from(slot.notify_at_ms - plan.start_ms());
        // floor(window * i / n) <= offset < window * (i + 1) / n: offsets are whole
        // milliseconds, so when a stratum is narrower than 1 ms (more sockets than ms in
        // the window) the slot is the floor of its exact place, never below that floor.
        prop_assert!(offset >= window * i / n);
        prop_assert!(offset * n < window * (i + 1));
        prop_assert!(slot.notify_at_ms < plan.end_ms());
        prop_assert!(slot.retry_after_ms <= MAX_RETRY_AFTER_MS);
        prop_assert!(u128::from(slot.retry_after_ms) <= window / n);
    }
}

#[test]
fn drain_spreads_reconnects_evenly_over_the_window() {
    // 2 minutes, 1000 sockets, arbitrary per-socket randomness: every 12 s tenth of the
    // window gets exactly 100 reconnect notifications, whatever the random bits.
    let rotation = Rotation::try_new(600, 120).unwrap();
    let plan = rotation.drain_plan(42, 1000);
    let mut buckets = [0u32; 10];
    let mut state = 7u64;
    for i in 0..1000 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let slot = plan.slot(i, state);
        buckets[((slot.notify_at_ms - plan.start_ms()) / 12_000) as usize] += 1;
    }
    assert_eq!(buckets, [100; 10]);
}

// ---------- names ----------

proptest! {
    #[test]
    fn names_round_trip(user in id(), key in key()) {
        let name = key.object_name(&user);
        let parsed = parse_object_name(&name);
        prop_assert_eq!(parsed.clone(), Some(ObjectName { user: user.clone(), key: key.clone() }));
        prop_assert_eq!(parsed.map(|p| p.to_string()), Some(name.clone()));
        // The borrowed form renders the same name.
        prop_assert_eq!(key.as_ref_key().object_name(&user), name);
    }

    #[test]
    fn names_never_collide_under_adversarial_ids(
        pairs in prop::collection::vec(prop_oneof![(id(), key()), collision_prone_pair()], 2..64)
    ) {
        // Most pairs are built from `a`, `:h1`, `:s:b`, `:e5p600d120`... so that a scheme that
        // did not escape `:` (e.g. user `a:h1` vs user `a` shard h1) collides within a case.
        let mut seen: HashMap<String, (String, ShardKey<String>)> = HashMap::new();
        for (user, key) in pairs {
            let name = key.object_name(&user);
            if let Some(previous) = seen.insert(name.clone(), (user.clone(), key.clone())) {
                prop_assert_eq!(previous, (user, key), "two shards share the name {}", name);
            }
        }
    }

    #[test]
    fn only_canonical_names_parse(
        parts in prop::collection::vec(prop::sample::select(vec![
            "cm", ":", "a", "h", "1", "0", "01", "s", "e", "p", "d", "600", "120", "%3A", "%25", "%3a", "%", "-",
        ]), 0..16)
    ) {
        let candidate = parts.concat();
        if let Some(parsed) = parse_object_name(&candidate) {
            prop_assert_eq!(parsed.to_string(), candidate);
            prop_assert!(validate_id(&parsed.user).is_ok());
        }
    }

    #[test]
    fn arbitrary_strings_never_break_the_name_parser(s in ".{0,64}") {
        if let Some(parsed) = parse_object_name(&s) {
            prop_assert_eq!(parsed.to_string(), s);
        }
    }
}

// ---------- grammar ----------

proptest! {
    #[test]
    fn grammar_round_trips(cfg in config()) {
        let text = cfg.to_string();
        let back: PolicyConfig = text.parse().unwrap();
        prop_assert_eq!(back, cfg);
        prop_assert_eq!(back.to_string(), text);
    }

    #[test]
    fn grammar_never_panics_and_round_trips_what_it_accepts(
        s in prop_oneof![
            ".{0,40}",
            prop::collection::vec(prop::sample::select(vec![
                "single", "hash", "session", "rotate", ":", ",", "=", "shards", "others", "period", "drain",
                "auto", "base", "0", "4", "1024", "10m", "2m", "1h", "30s", "7d", "8d", " ",
            ]), 0..12).prop_map(|v| v.concat()),
        ]
    ) {
        if let Ok(cfg) = s.parse::<PolicyConfig>() {
            let text = cfg.to_string();
            prop_assert_eq!(text.parse::<PolicyConfig>(), Ok(cfg));
        }
    }
}
