//! Sharded routing on real workerd, for every policy: 600 sockets of one user spread as the
//! policy says, broadcasts reach each socket exactly once across shards, stats sum exactly,
//! the tier limit holds exactly under racing connects, spill past full shards.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{json, Value};
use shard_policies::{ClientType, ConnectionRequest, PolicyConfig, ShardPolicy};

use crate::support::{connect_many, sessions, user, user_scoped, Client, Gateway};

const QUIET: Duration = Duration::from_millis(300);
/// The `load` tier of the test tiers allows 1000 sockets; the shard cap stays 200.
const LOAD_LIMIT: u32 = 1000;

struct Policy {
    name: &'static str,
    spec: &'static str,
    /// The connect query of socket `i`.
    query: fn(usize) -> String,
}

const HASH: Policy = Policy {
    name: "hash",
    spec: "hash:shards=auto",
    query: user_scoped,
};
const SESSION: Policy = Policy {
    name: "session",
    spec: "session",
    query: sessions,
};
const ROTATE: Policy = Policy {
    name: "rotate",
    spec: "rotate:period=1d,drain=1m,shards=auto",
    query: user_scoped,
};

fn gateway(p: &Policy) -> &'static Gateway {
    Gateway::shared(p.name, &[("SHARD_POLICY", p.spec)])
}

/// The shard the policy prefers for this socket, computed with the crate itself.
fn preferred(p: &Policy, user: &str, c: &Client, limit: u32) -> String {
    let policy = PolicyConfig::from_str(p.spec).unwrap();
    let d = &c.connected["data"];
    let client_type = ClientType::from_wire(d["clientType"].as_str().unwrap()).unwrap();
    let req = ConnectionRequest {
        user_id: user,
        tier_limit: limit,
        shard_max_connections: 200,
        client_type,
        session_id: d["sessionId"].as_str(),
        machine_id: d["machineId"].as_str(),
        connection_id: &c.id,
        now_ms: d["timestamp"].as_u64().unwrap(),
        spread: u32::try_from(d["spread"].as_u64().unwrap_or(0)).unwrap(),
    };
    policy.candidates(&req).preferred().object_name(user)
}

/// POSTs one broadcast and checks every client gets it exactly once.
async fn broadcast_reaches_each_once(g: &Gateway, t: &str, clients: &mut [Client]) -> Value {
    let mark = format!("m{}", crate::support::now_s());
    let (status, r) = g
        .broadcast(
            t,
            &json!({"message": {"type": "mark", "payload": {"m": mark}}}),
        )
        .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["delivered"], clients.len(), "{r}");
    assert_eq!(r["failedShards"], json!([]), "{r}");
    futures_util::future::join_all(clients.iter_mut().map(|c| {
        let mark = mark.clone();
        async move {
            let f = c.expect_event("mark").await;
            assert_eq!(f["data"]["m"], mark.as_str());
            c.expect_silence(QUIET).await;
        }
    }))
    .await;
    r
}

async fn six_hundred_spread_as_the_policy_says(p: Policy) {
    let g = gateway(&p);
    let u = user(&format!("spread-{}", p.name));
    let t = g.token(&u, "load").await;
    let mut clients: Vec<Client> = connect_many(g, &t, 600, 25, p.query)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("connect refused: {e:?}")))
        .collect();
    let mut per_shard: BTreeMap<String, u64> = BTreeMap::new();
    for c in &clients {
        let shard = c.connected["data"]["shard"].as_str().unwrap().to_owned();
        *per_shard.entry(shard).or_default() += 1;
    }
    // Every socket is on the shard the policy prefers for it, unless that shard filled up
    // to its cap and it spilled (a filling placement fills its first shards first).
    for c in &clients {
        let shard = c.connected["data"]["shard"].as_str().unwrap();
        let want = preferred(&p, &u, c, LOAD_LIMIT);
        assert!(
            shard == want || per_shard.get(&want) == Some(&200),
            "policy {}: {} (preferred {want} holds {:?})",
            p.name,
            c.connected,
            per_shard.get(&want)
        );
    }
    assert!(per_shard.values().all(|&n| n <= 200), "{per_shard:?}");
    assert!(per_shard.len() > 1, "{per_shard:?}");

    // Stats sum exactly, per shard and in total, once every shard has reported.
    let st = g.stats_when(&t, |s| s["totalConnections"] == 600).await;
    assert_eq!(st["totalConnections"], 600, "{st}");
    assert_eq!(st["failedShards"], json!([]));
    let rows: BTreeMap<String, u64> = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, per_shard, "stats rows vs connected frames");
    assert!(st["imbalance"].as_f64().unwrap() >= 1.0);

    // An HTTP broadcast reaches all 600 exactly once.
    let r = broadcast_reaches_each_once(g, &t, &mut clients).await;
    assert_eq!(r["shards"], per_shard.len());

    // A client broadcast frame crosses shards: everyone else gets it once.
    let sender = clients[0].id.clone();
    clients[0]
        .send(r#"{"event":"broadcast","data":"across"}"#)
        .await;
    let (first, rest) = clients.split_at_mut(1);
    first[0].expect_silence(QUIET).await;
    futures_util::future::join_all(rest.iter_mut().map(|c| {
        let sender = sender.clone();
        async move {
            let f = c.expect_event("broadcast").await;
            assert_eq!(f["data"], "across");
            assert_eq!(f["from"], sender.as_str());
            c.expect_silence(QUIET).await;
        }
    }))
    .await;
}

#[tokio::test]
async fn hash_spreads_600_sockets() {
    six_hundred_spread_as_the_policy_says(HASH).await;
}

#[tokio::test]
async fn session_spreads_600_sockets() {
    six_hundred_spread_as_the_policy_says(SESSION).await;
}

#[tokio::test]
async fn rotate_spreads_600_sockets() {
    six_hundred_spread_as_the_policy_says(ROTATE).await;
}

/// The seed's failure: one object per user caps out at SHARD_MAX_CONNECTIONS.
#[tokio::test]
async fn single_caps_out_at_one_object() {
    let g = Gateway::shared("single", &[("SHARD_POLICY", "single")]);
    let u = user("single-cap");
    let t = g.token(&u, "load").await;
    let results = connect_many(g, &t, 260, 25, user_scoped).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let full: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(ok, 200);
    assert_eq!(full.len(), 60);
    for (status, body) in full {
        assert_eq!(*status, 503, "{body}");
        assert!(body.contains("shard_full"), "{body}");
    }
    let st = g.stats(&t).await;
    assert_eq!(st["totalConnections"], 200);
    assert_eq!(st["shards"][0]["rejected"], 60, "{st}");
}

/// 90 sockets open, then 50 connects race for the last 10 slots of a `pro` user (100).
async fn tier_limit_is_exact_under_a_race(p: Policy) {
    let g = gateway(&p);
    let u = user(&format!("race-{}", p.name));
    let t = g.token(&u, "pro").await;
    let spread = |i: usize| -> String {
        if p.name == "session" {
            format!("clientType=session-scoped&sessionId=r{}", i % 5)
        } else {
            String::new()
        }
    };
    let first = connect_many(g, &t, 90, 10, spread).await;
    assert!(first.iter().all(Result::is_ok), "the first 90 fit");
    let race = connect_many(g, &t, 50, 50, |i| spread(i + 90)).await;
    let admitted = race.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<_> = race.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(admitted, 10, "policy {}: {refused:?}", p.name);
    for (status, body) in &refused {
        assert_eq!(*status, 429, "{body}");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "tier_limit");
        assert!(v["message"].as_str().unwrap().contains("pro"), "{v}");
        assert!(v["message"].as_str().unwrap().contains("100"), "{v}");
    }
    let st = g.stats(&t).await;
    assert_eq!(st["totalConnections"], 100, "{st}");
    assert_eq!(st["rejectedTierLimit"], 40, "{st}");
    // Closing frees slots: one close, one more admitted, then full again.
    let mut first = first;
    let closing = first.remove(0).unwrap();
    closing.close().await;
    let again = g.try_connect(&t, &spread(0)).await;
    assert!(again.is_ok(), "{:?}", again.err());
    let (status, _) = g.try_connect(&t, &spread(1)).await.err().unwrap();
    assert_eq!(status, 429);
}

#[tokio::test]
async fn tier_limit_is_exact_single() {
    tier_limit_is_exact_under_a_race(Policy {
        name: "single",
        spec: "single",
        query: user_scoped,
    })
    .await;
}

#[tokio::test]
async fn tier_limit_is_exact_hash() {
    tier_limit_is_exact_under_a_race(HASH).await;
}

#[tokio::test]
async fn tier_limit_is_exact_session() {
    tier_limit_is_exact_under_a_race(SESSION).await;
}

#[tokio::test]
async fn tier_limit_is_exact_rotate() {
    tier_limit_is_exact_under_a_race(ROTATE).await;
}

/// Three shards capped at 10: 30 sockets fill them exactly, the 31st is refused.
#[tokio::test]
async fn full_shards_spill_then_refuse() {
    let g = Gateway::shared(
        "spill",
        &[
            ("SHARD_POLICY", "hash:shards=3"),
            ("SHARD_MAX_CONNECTIONS", "10"),
        ],
    );
    let u = user("spill");
    let t = g.token(&u, "pro").await;
    let clients: Vec<Client> = connect_many(g, &t, 30, 5, user_scoped)
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e:?}")))
        .collect();
    let st = g.stats(&t).await;
    let rows = st["shards"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{st}");
    assert!(rows.iter().all(|r| r["connections"] == 10), "{st}");
    // Some sockets did not get their preferred shard: they spilled.
    let spilled = clients
        .iter()
        .filter(|c| c.connected["data"]["shard"].as_str().unwrap() != preferred(&SPILL, &u, c, 100))
        .count();
    assert!(spilled > 0);
    let (status, body) = g.try_connect(&t, "").await.err().unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no_shard_available"), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = g.stats(&t).await;
    assert_eq!(st["rejectedUnavailable"], 1, "{st}");
}

const SPILL: Policy = Policy {
    name: "spill",
    spec: "hash:shards=3",
    query: user_scoped,
};

/// The gateway caches a user's directory view for 500 ms and shares one stats fan-out between
/// concurrent calls (docs/architecture.md): neither may hide a shard that appeared since. Under
/// `session` every new session is a new shard: right after its socket opens, within the cache
/// window, a broadcast reaches it and stats count it, also when many stats calls race.
#[tokio::test]
async fn a_cached_view_never_hides_a_new_shard() {
    let g = gateway(&SESSION);
    let u = user("fresh-view");
    let t = g.token(&u, "load").await;
    let mut clients = vec![g.connect(&t, "clientType=session-scoped&sessionId=a").await];
    // Fill the cache with a view of one shard.
    assert_eq!(g.stats(&t).await["totalConnections"], 1);
    for (i, s) in ["b", "c", "d"].iter().enumerate() {
        clients.push(
            g.connect(&t, &format!("clientType=session-scoped&sessionId={s}"))
                .await,
        );
        let r = broadcast_reaches_each_once(g, &t, &mut clients).await;
        assert_eq!(r["shards"], i + 2, "every session shard reached: {r}");
        let all = futures_util::future::join_all((0..12).map(|_| g.stats(&t))).await;
        for st in all {
            assert_eq!(st["totalConnections"], clients.len(), "{st}");
            assert_eq!(st["shards"].as_array().unwrap().len(), i + 2, "{st}");
        }
    }
}

/// The home counts its own sockets against the limit and leases the rest to the shards the
/// user spreads to: the limit stays exact while a user grows from one shard to several,
/// under racing connects. Cap 8 (fill 6), tier `free` (20): 4 on the home, then 30 at once.
#[tokio::test]
async fn tier_limit_is_exact_while_a_user_spreads() {
    let g = Gateway::shared(
        "fill-race",
        &[
            ("SHARD_POLICY", "hash:shards=auto"),
            ("SHARD_MAX_CONNECTIONS", "8"),
        ],
    );
    let u = user("fill-race");
    let t = g.token(&u, "free").await;
    let first = connect_many(g, &t, 4, 4, user_scoped).await;
    assert!(first.iter().all(Result::is_ok));
    assert!(first
        .iter()
        .all(|c| c.as_ref().unwrap().connected["data"]["shard"] == format!("cm:{u}")));
    let race = connect_many(g, &t, 30, 30, user_scoped).await;
    let admitted: Vec<&Client> = race.iter().filter_map(|r| r.as_ref().ok()).collect();
    let refused: Vec<_> = race.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(admitted.len(), 16, "{refused:?}");
    let shards: std::collections::BTreeSet<&str> = admitted
        .iter()
        .map(|c| c.connected["data"]["shard"].as_str().unwrap())
        .collect();
    assert!(shards.len() >= 2, "spread beyond the home: {shards:?}");
    for (status, body) in &refused {
        assert_eq!(*status, 429, "{body}");
    }
    let st = g.stats(&t).await;
    assert_eq!(st["totalConnections"], 20, "{st}");
    assert_eq!(g.try_connect(&t, "").await.err().unwrap().0, 429);
}
