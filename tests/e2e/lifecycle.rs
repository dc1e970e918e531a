//! Shards over time: a rotation drain moves clients to the next epoch, a restarted workerd
//! keeps counters and leaks no slots, a policy switch keeps the old shards reachable.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{connect_many, user, Client, Gateway};

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn shard_of(c: &Client) -> String {
    c.connected["data"]["shard"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn rotation_drains_the_old_epoch_into_the_next() {
    const PERIOD: u64 = 10_000;
    const DRAIN: u64 = 4_000;
    let g = Gateway::shared(
        "rotate-fast",
        &[("SHARD_POLICY", "rotate:period=10s,drain=4s,shards=2")],
    );
    let u = user("rotate");
    let t = g.token(&u, "pro").await;
    // Start early in an epoch so every socket lands in the same one.
    let into = now_ms() % PERIOD;
    if !(200..4_000).contains(&into) {
        tokio::time::sleep(Duration::from_millis(PERIOD - into + 200)).await;
    }
    let epoch = now_ms() / PERIOD;
    let mut clients: Vec<Client> = connect_many(g, &t, 10, 10, |_| String::new())
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let old_tag = format!(":e{epoch}p10d4:");
    assert!(clients.iter().all(|c| shard_of(c).contains(&old_tag)));

    // Shortly after the epoch ends the old shards are draining, and still reachable.
    let end = (epoch + 1) * PERIOD;
    tokio::time::sleep(Duration::from_millis(end + 300 - now_ms())).await;
    let st = g.stats(&t).await;
    let draining: Vec<&Value> = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["draining"] == true)
        .collect();
    assert!(!draining.is_empty(), "{st}");
    assert!(draining.iter().all(|r| r["epoch"] == epoch), "{st}");

    // Every socket is told to reconnect, then closed with 1012, spread over the window.
    let deadline = Duration::from_millis(DRAIN + 3_000);
    let told_at: Vec<Instant> =
        futures_util::future::join_all(clients.iter_mut().map(|c| async move {
            let ev = c.next_json(deadline).await.expect("reconnect event");
            let at = Instant::now();
            assert_eq!(ev["event"], "reconnect", "{ev}");
            assert_eq!(ev["data"]["reason"], "rotation");
            let hint = ev["data"]["retryAfterMs"].as_u64().unwrap();
            assert!(hint <= 1_000, "{ev}");
            assert_eq!(c.expect_close(deadline).await, Some(1012));
            at
        }))
        .await;
    let mut fresh = Vec::new();
    // Reconnecting lands on the new epoch.
    for _ in 0..clients.len() {
        let c = g.connect(&t, "").await;
        assert!(
            shard_of(&c).contains(&format!(":e{}p10d4:", epoch + 1)),
            "{}",
            shard_of(&c)
        );
        fresh.push(c);
    }
    let first = told_at.iter().min().unwrap();
    let last = told_at.iter().max().unwrap();
    assert!(
        last.duration_since(*first) >= Duration::from_millis(1_000),
        "reconnects were not spread over the drain window"
    );
    // Drained shards leave the set (each gives its slots back after its last close, then
    // reports; within a few seconds); the new epoch holds everyone.
    let only_new = |st: &Value| {
        st["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["epoch"] == epoch + 1)
    };
    let left_by = Instant::now() + Duration::from_secs(5);
    let mut st = g.stats(&t).await;
    while !only_new(&st) && Instant::now() < left_by {
        tokio::time::sleep(Duration::from_millis(250)).await;
        st = g.stats_now(&t).await;
    }
    assert_eq!(st["totalConnections"], 10, "{st}");
    assert!(only_new(&st), "{st}");
}

/// Opens exactly `limit` sockets, all admitted, and checks the next one gets 429.
async fn fill_to_the_limit(g: &Gateway, t: &str, limit: usize) -> Vec<Client> {
    let opened = connect_many(g, t, limit, limit, |_| String::new()).await;
    let refused: Vec<_> = opened.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(g.try_connect(t, "").await.err().unwrap().0, 429);
    opened.into_iter().map(Result::unwrap).collect()
}

/// Capacity refusals counted by the user's shards, those that left the set included.
fn shard_rejections(st: &Value) -> u64 {
    st["shardRefusals"].as_u64().unwrap()
}

#[tokio::test]
async fn a_restarted_workerd_keeps_counters_and_leaks_no_slots() {
    // Four shards of two sockets each: 8 slots per user, the `tiny` tier allows 5.
    let mut g = Gateway::start(
        "restart",
        &[
            ("SHARD_POLICY", "hash:shards=4"),
            ("SHARD_MAX_CONNECTIONS", "2"),
        ],
    );
    let u = user("restart");
    let t = g.token(&u, "tiny").await;
    let before = fill_to_the_limit(&g, &t, 5).await;
    // A second user fills all four shards, so the ninth connect is refused for capacity.
    let v = user("restart-full");
    let tv = g.token(&v, "load").await;
    let full = connect_many(&g, &tv, 8, 4, |_| String::new()).await;
    assert!(full.iter().all(Result::is_ok));
    assert_eq!(g.try_connect(&tv, "").await.err().unwrap().0, 503);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = g.stats(&t).await;
    assert_eq!(
        (
            st["totalConnections"].as_u64(),
            st["rejectedTierLimit"].as_u64()
        ),
        (Some(5), Some(1))
    );
    let sv = g.stats(&tv).await;
    assert_eq!(sv["rejectedUnavailable"], 1, "{sv}");
    let shard_refusals = shard_rejections(&sv);
    assert!(shard_refusals >= 4, "every full shard refused once: {sv}");

    g.restart(&[]);
    drop((before, full));

    let st = g.stats(&t).await;
    assert_eq!(
        st["totalConnections"], 0,
        "sockets do not survive a restart: {st}"
    );
    assert_eq!(st["rejectedTierLimit"], 1, "counters survive: {st}");
    let sv = g.stats(&tv).await;
    assert_eq!(sv["rejectedUnavailable"], 1, "{sv}");
    assert_eq!(shard_rejections(&sv), shard_refusals, "{sv}");
    // Every slot the dead sockets held comes back: exactly the limit is admitted again.
    let _after = fill_to_the_limit(&g, &t, 5).await;
    let st = g.stats(&t).await;
    assert_eq!(st["totalConnections"], 5);
    assert_eq!(st["rejectedTierLimit"], 2);
}

#[tokio::test]
async fn switching_policy_keeps_old_shards_reachable() {
    let mut g = Gateway::start("switch", &[("SHARD_POLICY", "single")]);
    let u = user("switch");
    let t = g.token(&u, "tiny").await;
    let old: Vec<Client> = connect_many(&g, &t, 3, 3, |_| String::new())
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let old_shard = shard_of(&old[0]);
    assert_eq!(old_shard, format!("cm:{u}"));

    g.restart(&[("SHARD_POLICY", "hash:shards=4")]);
    drop(old);
    let health: Value = reqwest::get(format!("{}/health", g.http()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["policy"], "hash:shards=4");

    // The directory still knows the old policy's shard: fan-outs reach it.
    let st = g.stats(&t).await;
    let names: Vec<&str> = st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec![old_shard.as_str()], "{st}");
    assert_eq!(st["failedShards"], json!([]));
    // The old shard is the user's home, which answers every broadcast; its sockets died
    // with the restart, so nothing is delivered and no shard fails.
    let (status, r) = g.broadcast(&t, &json!({"message": {"type": "t"}})).await;
    assert_eq!(
        (status, r["delivered"].as_u64(), r["failedShards"].clone()),
        (200, Some(0), json!([])),
        "{r}"
    );

    // New sockets go to the new policy's shards and the old shard's slots are reclaimed.
    let new: Vec<Client> = connect_many(&g, &t, 5, 5, |_| String::new())
        .await
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e:?}")))
        .collect();
    assert!(new
        .iter()
        .all(|c| shard_of(c).starts_with(&format!("cm:{u}:h"))));
    assert_eq!(g.try_connect(&t, "").await.err().unwrap().0, 429);
    // Every socket moved to new shards: the old one cannot tell the gateway's cached view
    // about them, so it is used for its 500 ms (docs/architecture.md).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let st = g.stats(&t).await;
    assert_eq!(st["totalConnections"], 5, "{st}");
    assert!(
        st["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["name"] != old_shard.as_str()),
        "the emptied old shard left the set: {st}"
    );
}
