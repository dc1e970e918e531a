//! Trust (issue 18): a close is a close whether the shard was awake or hibernated, sockets
//! end with their credentials, frames per socket are bounded, and nothing is left behind.

use std::time::{Duration, Instant};

use edge_gateway::auth::{token, MintClaims, TokenKeys};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{now_s, platform_token, user, Client, Gateway, ADMIN, SECRET};

/// Local workerd evicts an idle hibernatable object after about 10 s.
const PAST_HIBERNATION: Duration = Duration::from_secs(15);
/// The bound this edge promises for a close's effects (docs/reliability.md), whether the
/// shard was awake or hibernated; generous for a loaded CI machine.
const CLOSE_BOUND: Duration = Duration::from_secs(2);

fn machine(id: &str) -> String {
    format!("clientType=machine-scoped&machineId={id}")
}

fn shard(c: &Client) -> String {
    c.connected["data"]["shard"].as_str().unwrap().to_owned()
}

/// The next `machine-status` notice for `machine`: whether it says online.
async fn machine_status(c: &mut Client, machine: &str, wait: Duration) -> Option<bool> {
    let deadline = Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let f = c.next_json(left).await?;
        if f["event"] == "ephemeral"
            && f["data"]["type"] == "machine-status"
            && f["data"]["machineId"] == machine
        {
            return f["data"]["online"].as_bool();
        }
    }
    None
}

/// Polls stats until `ok` holds or `wait` passes; answers the last stats.
async fn stats_until(g: &Gateway, t: &str, wait: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let st = g.stats(t).await;
        if ok(&st) || Instant::now() > deadline {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A machine socket closes after its shard has hibernated: its app hears `online:false`
/// and stats drop it within the same bound as an awake close. With `apart`, the machine
/// sits on another shard than the app.
async fn close_after_hibernation(g: &Gateway, apart: bool) {
    let t = platform_token(&user("nap-close"));
    let mut app = g.connect(&t, "").await;
    let mut m = g.connect(&t, &machine("m-nap")).await;
    for _ in 0..30 {
        if !apart || shard(&m) != shard(&app) {
            break;
        }
        m.close().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = g.connect(&t, &machine("m-nap")).await;
    }
    assert!(!apart || shard(&m) != shard(&app));
    // The placement attempts' notices (online, offline, online...) end with online.
    let mut last = None;
    while let Some(s) = machine_status(&mut app, "m-nap", Duration::from_millis(800)).await {
        last = Some(s);
    }
    assert_eq!(last, Some(true));
    tokio::time::sleep(PAST_HIBERNATION).await;
    let closed_at = Instant::now();
    m.close().await;
    let status = machine_status(&mut app, "m-nap", CLOSE_BOUND).await;
    assert_eq!(
        status,
        Some(false),
        "offline within {CLOSE_BOUND:?}: {:?}",
        closed_at.elapsed()
    );
    let st = stats_until(g, &t, CLOSE_BOUND, |st| st["totalConnections"] == 1).await;
    assert_eq!(st["totalConnections"], 1, "{st}");
    assert_eq!(st["activeMachines"], 0, "{st}");
}

#[tokio::test]
async fn a_close_after_hibernation_counts_at_once_single() {
    close_after_hibernation(
        Gateway::shared("single", &[("SHARD_POLICY", "single")]),
        false,
    )
    .await;
}

#[tokio::test]
async fn a_close_after_hibernation_counts_at_once_hash() {
    let g = Gateway::shared(
        "route-hash8",
        &[
            ("SHARD_POLICY", "hash:shards=8"),
            ("SHARD_MAX_CONNECTIONS", "4"),
        ],
    );
    close_after_hibernation(g, true).await;
}

fn keys() -> TokenKeys {
    TokenKeys::derive(SECRET)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The socket's end: the platform's `auth-error` frame, then close 4001.
async fn expect_auth_end(c: &mut Client, wait: Duration) -> Value {
    let deadline = Instant::now() + wait;
    let f = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = c.next_json(left).await.expect("an auth-error frame");
        // Presence notices may come first.
        if f["event"] != "ephemeral" {
            break f;
        }
    };
    assert_eq!(f["event"], "auth-error", "{f}");
    assert_eq!(f["data"]["code"], 4001, "{f}");
    assert_eq!(c.expect_close(Duration::from_secs(2)).await, Some(4001));
    f
}

fn hash8() -> &'static Gateway {
    Gateway::shared(
        "route-hash8",
        &[
            ("SHARD_POLICY", "hash:shards=8"),
            ("SHARD_MAX_CONNECTIONS", "4"),
        ],
    )
}

#[tokio::test]
async fn a_socket_ends_when_its_token_expires() {
    let g = hash8();
    let u = user("expiring");
    // Expires 3 s from now (exp is in whole seconds).
    let exp = now_s() + 3;
    let t = token::mint(&keys(), &MintClaims::new(&u, exp - 3, 3));
    let mut socks = Vec::new();
    for _ in 0..6 {
        socks.push(g.connect(&t, "").await);
    }
    let long = g.connect(&platform_token(&u), "").await;
    for c in &mut socks {
        let f = expect_auth_end(c, Duration::from_secs(6)).await;
        let late = now_ms().saturating_sub(exp * 1000);
        assert!(late < 2_000, "closed {late} ms after exp: {f}");
        assert!(
            f["data"]["message"].as_str().unwrap().contains("expired"),
            "{f}"
        );
    }
    // The user's other token is untouched, and the expired one cannot reconnect.
    let st = stats_until(g, &platform_token(&u), CLOSE_BOUND, |s| {
        s["totalConnections"] == 1
    })
    .await;
    assert_eq!(st["totalConnections"], 1, "{st}");
    assert_eq!(g.try_connect(&t, "").await.err().unwrap().0, 401);
    drop(long);
}

/// A RevokedToken row for `t`, as the platform's backend writes it.
fn revoke(g: &Gateway, u: &str, t: &str) {
    let hash = token::revocation_hash(t);
    g.d1(&format!(
        "INSERT INTO RevokedToken (id, tokenHash, userId, reason, revokedAt, expiresAt) VALUES ('r-{hash}', '{hash}', '{u}', 'test', {}, 99999999999999)",
        now_ms()
    ));
}

#[tokio::test]
async fn a_revoked_tokens_sockets_end_on_every_shard_within_the_poll() {
    let g = hash8();
    let u = user("revoked");
    let t = token::mint(&keys(), &MintClaims::new(&u, now_s(), 3600));
    let other = platform_token(&u);
    // Several shards: eight sockets with the doomed token, one with another token.
    let mut doomed = Vec::new();
    for i in 0..8 {
        let q = if i % 2 == 0 {
            String::new()
        } else {
            machine(&format!("rm{i}"))
        };
        doomed.push(g.connect(&t, &q).await);
    }
    let shards: std::collections::BTreeSet<String> = doomed.iter().map(shard).collect();
    assert!(shards.len() >= 2, "{shards:?}");
    // A ticket issued for the token ends with it too.
    let (status, tk) = g
        .post_json("/v1/websocket/ticket", &t, &serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{tk}");
    let ticketed = g
        .try_upgrade(
            &format!("/v1/updates?ticket={}", tk["ticket"].as_str().unwrap()),
            &[],
        )
        .await
        .unwrap();
    doomed.push(ticketed);
    let mut kept = g.connect(&other, "").await;
    revoke(g, &u, &t);
    let revoked_at = Instant::now();
    let mut slowest = Duration::ZERO;
    for c in &mut doomed {
        let f = expect_auth_end(c, Duration::from_secs(12)).await;
        assert!(
            f["data"]["message"].as_str().unwrap().contains("revoked"),
            "{f}"
        );
        slowest = slowest.max(revoked_at.elapsed());
    }
    // The default poll is 5 s; the D1 write itself takes a moment locally.
    assert!(slowest < Duration::from_secs(10), "{slowest:?}");
    eprintln!("revocation: every socket ended {slowest:?} after the row was written");
    // The other token's socket only hears its machines go offline.
    while let Some(f) = kept.next_json(Duration::from_millis(300)).await {
        assert_eq!(f["event"], "ephemeral", "{f}");
    }
    let st = stats_until(g, &other, CLOSE_BOUND, |s| s["totalConnections"] == 1).await;
    assert_eq!(st["totalConnections"], 1, "{st}");
}

async fn disconnect(g: &Gateway, u: &str, body: &Value) -> (u16, Value) {
    g.post_json(&format!("/admin/users/{u}/disconnect"), ADMIN, body)
        .await
}

#[tokio::test]
async fn an_operator_ends_a_machine_a_session_or_a_user_across_shards() {
    let g = hash8();
    let u = user("ended");
    let t = platform_token(&u);
    let mut m: Vec<Client> = Vec::new();
    for _ in 0..4 {
        m.push(g.connect(&t, &machine("m-end")).await);
    }
    let mut s = g
        .connect(&t, "clientType=session-scoped&sessionId=s-end")
        .await;
    let mut apps = Vec::new();
    for _ in 0..4 {
        apps.push(g.connect(&t, "").await);
    }
    // A user token never passes; a bad selector is refused.
    let path = format!("/admin/users/{u}/disconnect");
    assert_eq!(g.post_json(&path, &t, &serde_json::json!({})).await.0, 401);
    let (status, _) = disconnect(
        g,
        &u,
        &serde_json::json!({"machineId": "m-end", "sessionId": "s-end"}),
    )
    .await;
    assert_eq!(status, 400);

    let (status, r) = disconnect(g, &u, &serde_json::json!({"machineId": "m-end"})).await;
    assert_eq!((status, r["closed"].as_u64()), (200, Some(4)), "{r}");
    for c in &mut m {
        expect_auth_end(c, Duration::from_secs(2)).await;
    }
    let (_, r) = disconnect(g, &u, &serde_json::json!({"sessionId": "s-end"})).await;
    assert_eq!(r["closed"], 1, "{r}");
    expect_auth_end(&mut s, Duration::from_secs(2)).await;
    // Everything else of the user, and a reconnect with a valid token works again.
    let (_, r) = disconnect(g, &u, &serde_json::json!({})).await;
    assert_eq!(r["closed"], 4, "{r}");
    for c in &mut apps {
        expect_auth_end(c, Duration::from_secs(2)).await;
    }
    let st = stats_until(g, &t, CLOSE_BOUND, |s| s["totalConnections"] == 0).await;
    assert_eq!(st["totalConnections"], 0, "{st}");
    g.connect(&t, "").await;
}

#[tokio::test]
async fn a_flood_of_valid_frames_is_dropped_then_closed() {
    let g = Gateway::shared(
        "frame-rate",
        &[
            ("SHARD_POLICY", "single"),
            ("FRAME_RATE", "20"),
            ("FRAME_BURST", "40"),
        ],
    );
    let t = platform_token(&user("flood"));
    let mut calm = g.connect(&t, "").await;
    let mut c = g.connect(&t, "").await;
    // Valid frames the shard must handle: a broadcast to the other socket.
    for i in 0..400 {
        c.send(&format!(r#"{{"event":"broadcast","data":{i}}}"#))
            .await;
    }
    // Error frames ("slow down", at most one a second), then the close.
    let (mut errors, mut closed) = (0, None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(deadline, c.ws.next()).await {
        match msg {
            Message::Text(t) => {
                let f: Value = serde_json::from_str(t.as_str()).unwrap();
                if f["event"] == "error" {
                    assert_eq!(f["data"]["code"], 1008, "{f}");
                    errors += 1;
                }
            }
            Message::Close(f) => {
                closed = f.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    assert!(errors >= 1, "told to slow down");
    assert_eq!(closed, Some(1008));
    // The other socket got at most the bucket's worth plus what refilled meanwhile.
    let mut got = 0;
    while calm.next_json(Duration::from_millis(500)).await.is_some() {
        got += 1;
    }
    assert!((40..200).contains(&got), "{got}");
    // The platform's cadence is far below the limit: a calm socket keeps working.
    for i in 0..5 {
        calm.send(&format!(
            r#"{{"event":"session-alive","data":{{"sid":"x","time":{i}}}}}"#
        ))
        .await;
    }
    calm.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn ended_sessions_leave_no_storage_behind() {
    let g = Gateway::shared("session", &[("SHARD_POLICY", "session")]);
    let u = user("churned");
    let t = platform_token(&u);
    let app = g.connect(&t, "").await;
    // 200 CLI sessions, each on its own shard, connecting and ending, 10 at a time.
    for batch in 0..20 {
        let socks = futures_util::future::join_all((0..10).map(|i| {
            let q = format!(
                "clientType=session-scoped&sessionId=churn-{}",
                batch * 10 + i
            );
            let t = t.clone();
            async move { g.connect(&t, &q).await }
        }))
        .await;
        futures_util::future::join_all(socks.into_iter().map(Client::close)).await;
    }
    let prefix = format!("cm:{u}:s:");
    let session_objects = |g: &Gateway| -> Vec<(String, u64)> {
        g.objects("ConnectionManager")
            .into_iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .collect()
    };
    // Each ended session's shard waits for its last metrics report (5 s) before it goes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left = session_objects(g);
    while left.iter().any(|(_, rows)| *rows > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        left = session_objects(g);
    }
    let kept: Vec<&(String, u64)> = left.iter().filter(|(_, rows)| *rows > 0).collect();
    assert!(
        kept.is_empty(),
        "{} of {} session shards kept storage: {:?}",
        kept.len(),
        left.len(),
        kept.iter().take(3).collect::<Vec<_>>()
    );
    // The base shard, still holding the app, keeps its storage.
    let base = format!("cm:{u}");
    assert!(
        g.objects("ConnectionManager")
            .iter()
            .any(|(n, rows)| *n == base && *rows > 0),
        "the live shard keeps its state"
    );
    drop(app);
}
