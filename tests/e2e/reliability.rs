//! Reliability and security on real workerd: bad input answered clearly, users isolated,
//! admin endpoints closed to user tokens, failing shards reported while the rest deliver,
//! hibernated shards waking with their attachments.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use edge_gateway::auth::{token, MintClaims, TokenKeys};
use serde_json::{json, Value};

use crate::support::{connect_many, now_s, user, Client, Gateway, ADMIN, SECRET};

const QUIET: Duration = Duration::from_millis(400);

fn hash_gw() -> &'static Gateway {
    Gateway::shared("hash", &[("SHARD_POLICY", "hash:shards=auto")])
}

fn knobs_gw() -> &'static Gateway {
    Gateway::shared(
        "knobs",
        &[
            ("SHARD_POLICY", "hash:shards=4"),
            ("TEST_KNOBS", "on"),
            ("FANOUT_TIMEOUT_MS", "1000"),
        ],
    )
}

fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn hostile_ids_are_refused_or_escaped() {
    let g = hash_gw();
    // A subject that is not a valid id never authenticates.
    for sub in ["../etc", "a/b", "ünï", &"x".repeat(10_000)] {
        let t = token::mint(
            &TokenKeys::derive(SECRET),
            &MintClaims::new(sub, now_s(), 60),
        );
        let (status, body) = g.try_connect(&t, "").await.err().unwrap();
        // 10,000 chars make the token longer than the 4096-byte cap: still a 401.
        assert_eq!(status, 401, "{sub:.20}: {body}");
        assert_eq!(code(&body), "invalid_token");
    }
    let t = g.token(&user("ids"), "pro").await;
    let long = "s".repeat(10_000);
    for id in [
        "..%2Fx",
        "a%2Fb",
        "%5Cwin",
        "%C3%BC",
        "a%00b",
        long.as_str(),
    ] {
        let q = format!("clientType=session-scoped&sessionId={id}");
        let (status, body) = g.try_connect(&t, &q).await.err().unwrap();
        assert_eq!(status, 400, "{id:.20}: {body}");
        assert_eq!(code(&body), "invalid_id");
    }
    // `:` is a valid id character; inside object names it is escaped, so it cannot
    // steer a socket onto another kind of shard.
    let s = Gateway::shared("session", &[("SHARD_POLICY", "session")]);
    let u = user("colon");
    let c = s
        .connect(
            &g.token(&u, "pro").await,
            "clientType=session-scoped&sessionId=x:h1",
        )
        .await;
    assert_eq!(c.connected["data"]["shard"], format!("cm:{u}:s:x%3Ah1"));
}

#[tokio::test]
async fn users_never_reach_each_other() {
    let g = hash_gw();
    let a = user("iso-a");
    // A user whose id looks like one of `a`'s shard suffixes.
    let b = format!("{a}:h1");
    let (ta, tb) = (g.token(&a, "pro").await, g.token(&b, "pro").await);
    let mut a_socks: Vec<Client> = connect_many(g, &ta, 6, 6, |i| {
        format!(
            "clientType=session-scoped&sessionId=shared{}&userId=intruder",
            i % 2
        )
    })
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    // The user id comes from the token, never from the query.
    assert!(a_socks
        .iter()
        .all(|c| c.connected["data"]["userId"] == a.as_str()));
    let mut b_sock = g
        .connect(&tb, "clientType=session-scoped&sessionId=shared0")
        .await;
    // B's home (B fits on one shard) is its own object, named apart from A's shards.
    assert_eq!(b_sock.connected["data"]["shard"], format!("cm:{a}%3Ah1"));

    // B's broadcasts, whatever the filter names, reach only B.
    for filter in [
        json!({"type": "all"}),
        json!({"type": "session", "sessionId": "shared0"}),
        json!({"type": "exclude", "connectionId": a_socks[0].id}),
    ] {
        let (status, r) = g
            .broadcast(&tb, &json!({"message": {"type": "x"}, "filter": filter}))
            .await;
        assert_eq!(status, 200);
        assert_eq!(r["delivered"], 1, "{filter}: {r}");
        b_sock.expect_event("x").await;
    }
    for c in a_socks.iter_mut() {
        c.expect_silence(QUIET).await;
    }
    // A's client frames reach A's other sockets only.
    a_socks[0]
        .send(r#"{"event":"broadcast","data":"private"}"#)
        .await;
    b_sock.expect_silence(QUIET).await;
    // Stats are per user: B sees one socket on its own shards.
    let st = g.stats(&tb).await;
    assert_eq!(st["totalConnections"], 1, "{st}");
    assert!(st["shards"].as_array().unwrap().iter().all(|r| r["name"]
        .as_str()
        .unwrap()
        .starts_with(&format!("cm:{a}%3Ah1"))));
    assert_eq!(g.stats(&ta).await["totalConnections"], 6);
}

#[tokio::test]
async fn binary_frames_are_read_as_text_and_the_socket_stays_open() {
    let g = hash_gw();
    let mut c = g.connect(&g.token(&user("bin"), "pro").await, "").await;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    // Not UTF-8 JSON: the platform's "Invalid JSON message" error.
    c.ws.send(Message::binary(vec![0xffu8, 2, 3]))
        .await
        .unwrap();
    let e = c.expect_event("error").await;
    assert_eq!(
        (e["data"]["code"].as_u64(), e["data"]["message"].as_str()),
        (Some(1002), Some("Invalid JSON message"))
    );
    // UTF-8 JSON in a binary frame is a frame like any other (platform-protocol.md §5.1).
    c.ws.send(Message::binary(br#"{"event":"ping","data":1}"#.to_vec()))
        .await
        .unwrap();
    c.expect_event("pong").await;
}

#[tokio::test]
async fn invalid_config_is_named_by_health_and_refuses_traffic() {
    let g = Gateway::start_unhealthy("bad-config", &[("SHARD_POLICY", "hash:shards=0")]);
    let (status, body) = crate::support::http_get_blocking(g.port, "/health").unwrap();
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "invalid_config");
    assert_eq!(v["var"], "SHARD_POLICY");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains("hash:shards=0") && msg.contains("1..=1024"),
        "{msg}"
    );
    let (status, body) = g
        .try_connect(&g.token(&user("cfg"), "pro").await, "")
        .await
        .err()
        .unwrap();
    assert_eq!((status, code(&body).as_str()), (503, "invalid_config"));
}

async fn admin_post(g: &Gateway, bearer: &str, body: &Value) -> (u16, Value) {
    g.post_json("/admin/test/shard", bearer, body).await
}

#[tokio::test]
async fn admin_endpoints_refuse_user_tokens_and_knobs_exist_only_when_enabled() {
    let g = knobs_gw();
    let body = json!({"shard": "cm:someone:h0", "latencyMs": 5});
    let user_token = g.token(&user("admin"), "enterprise").await;
    for bearer in [user_token.as_str(), "", "not-the-admin-token-0123456789"] {
        let (status, v) = admin_post(g, bearer, &body).await;
        assert_eq!(status, 401, "{v}");
    }
    let (status, v) = admin_post(g, ADMIN, &json!({"shard": "dir:x"})).await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_shard")));
    let (status, _) = admin_post(g, ADMIN, &body).await;
    assert_eq!(status, 200);
    // Without TEST_KNOBS the endpoint does not exist.
    let (status, _) = admin_post(hash_gw(), ADMIN, &body).await;
    assert_eq!(status, 404);
}

/// Sockets of one user on `hash:shards=4`, grouped by shard.
async fn spread(g: &Gateway, t: &str) -> (Vec<Client>, BTreeMap<String, usize>) {
    let clients: Vec<Client> = connect_many(g, t, 24, 8, |_| String::new())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let mut per: BTreeMap<String, usize> = BTreeMap::new();
    for c in &clients {
        *per.entry(c.connected["data"]["shard"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(per.len() >= 3, "{per:?}");
    (clients, per)
}

#[tokio::test]
async fn failing_and_hanging_shards_are_reported_while_the_rest_deliver() {
    let g = knobs_gw();
    let u = user("faults");
    let t = g.token(&u, "pro").await;
    let (_clients, per) = spread(g, &t).await;
    let mut names = per.keys();
    let (bad, slow) = (names.next().unwrap().clone(), names.next().unwrap().clone());
    let total: usize = per.values().sum();

    let (s, _) = admin_post(g, ADMIN, &json!({"shard": bad, "fault": "error"})).await;
    assert_eq!(s, 200);
    let (status, r) = g.broadcast(&t, &json!({"message": {"type": "t"}})).await;
    assert_eq!(status, 200, "a failing shard is not a failed call: {r}");
    assert_eq!(r["failedShards"], json!([bad]));
    assert_eq!(r["delivered"], total - per[&bad]);
    // Stats come from the shards' reports, which a shard failing deliveries still sends.
    let st = g.stats(&t).await;
    assert_eq!(st["failedShards"], json!([]));
    assert_eq!(st["totalConnections"], total);

    let (s, _) = admin_post(g, ADMIN, &json!({"shard": slow, "fault": "hang"})).await;
    assert_eq!(s, 200);
    let started = Instant::now();
    let (status, r) = g.broadcast(&t, &json!({"message": {"type": "t"}})).await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    let mut failed: Vec<String> = serde_json::from_value(r["failedShards"].clone()).unwrap();
    failed.sort();
    let mut expect = vec![bad.clone(), slow.clone()];
    expect.sort();
    assert_eq!(failed, expect);
    assert_eq!(r["delivered"], total - per[&bad] - per[&slow]);
    // FANOUT_TIMEOUT_MS=1000 bounds the call; the hang lasts 2 s.
    assert!(took < Duration::from_millis(1_900), "{took:?}");

    for shard in [&bad, &slow] {
        admin_post(g, ADMIN, &json!({"shard": shard})).await;
    }
    let (_, r) = g.broadcast(&t, &json!({"message": {"type": "t"}})).await;
    assert_eq!(
        (r["delivered"].as_u64(), r["failedShards"].clone()),
        (Some(total as u64), json!([]))
    );
}

#[tokio::test]
async fn a_hibernated_shard_answers_ping_and_wakes_with_its_attachments() {
    let g = Gateway::shared("single", &[("SHARD_POLICY", "single")]);
    let t = g.token(&user("sleepy"), "pro").await;
    let mut c = g
        .connect(&t, "clientType=session-scoped&sessionId=nap&machineId=m9")
        .await;
    let mut other = g.connect(&t, "").await;
    c.send(r#"{"event":"ping"}"#).await;
    let before = c.expect_event("pong").await["data"]["timestamp"]
        .as_u64()
        .unwrap();
    // Idle: local workerd evicts a hibernatable object after about 10 s.
    tokio::time::sleep(Duration::from_secs(15)).await;
    // The runtime answers the exact ping without waking the object: same start time.
    c.send(r#"{"event":"ping"}"#).await;
    let asleep = c.expect_event("pong").await["data"]["timestamp"]
        .as_u64()
        .unwrap();
    assert_eq!(asleep, before);
    // A frame the object must handle wakes it: a new instance starts...
    c.send(r#"{"event":"broadcast","data":"good morning"}"#)
        .await;
    let f = other.expect_event("broadcast").await;
    assert_eq!(f["from"], c.id.as_str(), "attachment intact: {f}");
    c.send(r#"{"event":"ping"}"#).await;
    let woke = c.expect_event("pong").await["data"]["timestamp"]
        .as_u64()
        .unwrap();
    assert!(
        woke >= before + 10_000,
        "evicted and restarted: {before} -> {woke}"
    );
    // ...and reads the socket's metadata back from its attachment.
    let st = g.stats(&t).await;
    assert_eq!(st["activeSessions"], 1, "{st}");
    assert_eq!(st["activeMachines"], 1, "{st}");
    assert_eq!(st["byType"]["session-scoped"], 1);
}
