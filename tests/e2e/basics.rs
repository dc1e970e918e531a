//! Connect, ping, broadcast (HTTP with every filter, and client frames) and stats on the
//! default `single` policy.

use std::time::Duration;

use serde_json::json;

use crate::support::{user, Client, Gateway};

const QUIET: Duration = Duration::from_millis(400);

fn gw() -> &'static Gateway {
    Gateway::shared("single", &[("SHARD_POLICY", "single")])
}

#[tokio::test]
async fn connected_frame_carries_the_connection() {
    let g = gw();
    let u = user("conn");
    let t = g.token(&u, "pro").await;
    let c = g
        .connect(&t, "clientType=session-scoped&sessionId=sess-1")
        .await;
    let d = &c.connected["data"];
    assert_eq!(d["userId"], u.as_str());
    assert_eq!(d["clientType"], "session-scoped");
    assert_eq!(d["sessionId"], "sess-1");
    assert!(d.get("machineId").is_none());
    assert_eq!(d["shard"], format!("cm:{u}"));
    assert_eq!(d["policy"], "single");
    assert_eq!(d["connectionId"].as_str().unwrap().len(), 32);
    assert!(d["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    let m = g
        .connect(&t, "clientType=machine-scoped&machineId=mac-1")
        .await;
    assert_eq!(m.connected["data"]["machineId"], "mac-1");
    assert_ne!(m.id, c.id);
}

#[tokio::test]
async fn ping_is_answered_with_pong() {
    let g = gw();
    let t = g.token(&user("ping"), "free").await;
    let mut c = g.connect(&t, "").await;
    // The exact text is answered by the runtime's auto-response.
    c.send(r#"{"event":"ping"}"#).await;
    let p = c.expect_event("pong").await;
    assert!(p["data"]["timestamp"].as_u64().unwrap() > 1_700_000_000_000);
    // Any other ping form is answered by the object with the current time.
    let before = crate::support::now_s() * 1000;
    c.send(r#"{"event": "ping", "data": {"n": 1}}"#).await;
    let p = c.expect_event("pong").await;
    assert!(p["data"]["timestamp"].as_u64().unwrap() >= before);
}

/// Five sockets of one user: two user-scoped, two sessions, one machine. The first
/// user-scoped socket, already open when the machine connects, is told it came online.
async fn five(g: &Gateway, t: &str) -> [Client; 5] {
    let mut s = [
        g.connect(t, "").await,
        g.connect(t, "clientType=session-scoped&sessionId=s1").await,
        g.connect(t, "clientType=session-scoped&sessionId=s2").await,
        g.connect(t, "clientType=machine-scoped&machineId=m1").await,
        g.connect(t, "clientType=user-scoped").await,
    ];
    for kind in ["machine-status", "machine-activity"] {
        let e = s[0].expect_event("ephemeral").await;
        assert_eq!(
            (e["data"]["type"].as_str(), e["data"]["machineId"].as_str()),
            (Some(kind), Some("m1")),
            "{e}"
        );
    }
    s
}

#[tokio::test]
async fn http_broadcast_reaches_exactly_what_each_filter_selects() {
    let g = gw();
    let t = g.token(&user("bcast"), "pro").await;
    let mut s = five(g, &t).await;
    let a_id = s[0].id.clone();
    let cases: Vec<(serde_json::Value, Vec<usize>)> = vec![
        (json!(null), vec![0, 1, 2, 3, 4]),
        (json!({"type": "all"}), vec![0, 1, 2, 3, 4]),
        (json!({"type": "user-scoped-only"}), vec![0, 4]),
        (json!({"type": "session", "sessionId": "s1"}), vec![1]),
        (json!({"type": "machine", "machineId": "m1"}), vec![3]),
        (
            json!({"type": "exclude", "connectionId": a_id}),
            vec![1, 2, 3, 4],
        ),
        (
            json!({"type": "machine-scoped-only", "machineId": "m1"}),
            vec![0, 3, 4],
        ),
        (
            json!({"type": "machine-scoped-only", "machineId": "m9"}),
            vec![0, 4],
        ),
        (
            json!({"type": "all-interested-in-session", "sessionId": "s2"}),
            vec![0, 2, 4],
        ),
        (json!({"type": "session", "sessionId": "nobody"}), vec![]),
    ];
    for (i, (filter, expect)) in cases.into_iter().enumerate() {
        let mut body =
            json!({"message": {"type": "note", "payload": {"case": i}, "timestamp": 1234}});
        if !filter.is_null() {
            body["filter"] = filter.clone();
        }
        let (status, r) = g.broadcast(&t, &body).await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["success"], true);
        assert_eq!(r["delivered"], expect.len(), "filter {filter}: {r}");
        // A filter no socket can match visits no shard at all.
        assert_eq!(r["shards"], u64::from(!expect.is_empty()), "{filter}");
        assert_eq!(r["failedShards"], json!([]));
        for (k, c) in s.iter_mut().enumerate() {
            if expect.contains(&k) {
                let f = c.expect_event("note").await;
                assert_eq!(f["data"]["case"], i);
                assert_eq!(f["timestamp"], 1234);
            } else {
                c.expect_silence(QUIET).await;
            }
        }
    }
}

#[tokio::test]
async fn client_broadcast_reaches_the_others_and_not_the_sender() {
    let g = gw();
    let t = g.token(&user("frame"), "pro").await;
    let mut s = five(g, &t).await;
    let other_user = g.token(&user("frame-other"), "pro").await;
    let mut stranger = g.connect(&other_user, "").await;
    let sender = s[2].id.clone();
    s[2].send(r#"{"event":"broadcast","data":{"text":"hi","n":[1,2]}}"#)
        .await;
    for (k, c) in s.iter_mut().enumerate() {
        if k == 2 {
            c.expect_silence(QUIET).await;
        } else {
            let f = c.expect_event("broadcast").await;
            assert_eq!(f["data"], json!({"text": "hi", "n": [1, 2]}));
            assert_eq!(f["from"], sender.as_str());
        }
    }
    stranger.expect_silence(QUIET).await;
}

#[tokio::test]
async fn stats_count_by_type_session_and_machine() {
    let g = gw();
    let t = g.token(&user("stats"), "enterprise").await;
    let s = five(g, &t).await;
    let extra = g
        .connect(&t, "clientType=session-scoped&sessionId=s1")
        .await;
    let st = g.stats(&t).await;
    assert_eq!(st["totalConnections"], 6, "{st}");
    assert_eq!(st["byType"]["user-scoped"], 2);
    assert_eq!(st["byType"]["session-scoped"], 3);
    assert_eq!(st["byType"]["machine-scoped"], 1);
    assert_eq!(st["activeSessions"], 2);
    assert_eq!(st["activeMachines"], 1);
    assert_eq!(st["tier"], "enterprise");
    assert_eq!(st["limit"], 500);
    assert_eq!(st["policy"], "single");
    assert_eq!(st["imbalance"], 1.0);
    assert!(st["memoryUsage"].as_u64().unwrap() > 0);
    let oldest = st["oldestConnection"].as_u64().unwrap();
    assert!(oldest <= s[0].connected["data"]["timestamp"].as_u64().unwrap());
    assert_eq!(st["shards"].as_array().unwrap().len(), 1);
    assert_eq!(st["shards"][0]["connections"], 6);
    assert_eq!(st["shards"][0]["draining"], false);
    // Closing sockets is reflected.
    extra.close().await;
    let [a, ..] = s;
    a.close().await;
    let st = g.stats(&t).await;
    assert_eq!(st["totalConnections"], 4, "{st}");
    assert_eq!(st["byType"]["session-scoped"], 2);
}

#[tokio::test]
async fn stats_come_from_the_isolates_answer_for_at_most_stats_cache_ms_and_per_user() {
    // A long window, so the test sees it: the default is 100 ms.
    let g = Gateway::shared(
        "stats-cache",
        &[("SHARD_POLICY", "single"), ("STATS_CACHE_MS", "3000")],
    );
    let (ua, ub) = (user("cached-a"), user("cached-b"));
    let (ta, tb) = (
        crate::support::platform_token(&ua),
        crate::support::platform_token(&ub),
    );
    let _a1 = g.connect(&ta, "").await;
    let first = g.stats(&ta).await;
    assert_eq!(first["totalConnections"], 1, "{first}");
    let _a2 = g.connect(&ta, "").await;
    let _b = g.connect(&tb, "").await;
    // Within the window: the earlier answer, never another user's.
    let cached = g.stats_now(&ta).await;
    assert_eq!(cached["totalConnections"], 1, "{cached}");
    let other = g.stats_now(&tb).await;
    assert_eq!(other["totalConnections"], 1, "{other}");
    let shard = other["shards"][0]["name"].as_str().unwrap_or_default();
    assert!(shard.contains(&ub) && !shard.contains(&ua), "{other}");
    // Past it: asked again.
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let fresh = g.stats_now(&ta).await;
    assert_eq!(fresh["totalConnections"], 2, "{fresh}");
}
