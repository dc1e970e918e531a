//! Client-to-client routing across shards (issue 12): the platform's RPCs with their acks,
//! forwarding both ways, every filter, machine presence, isolation between users, and a
//! workerd restart mid-conversation. One user's sockets sit on several shards in every test:
//! `hash:shards=8` with a cap of 4 sockets per shard, and `session` (each CLI session on its
//! own shard, apps and daemons on the base shard).

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::support::{platform_token, user, Client, Gateway};

const QUIET: Duration = Duration::from_millis(500);

fn hash8() -> &'static Gateway {
    Gateway::shared(
        "route-hash8",
        &[
            ("SHARD_POLICY", "hash:shards=8"),
            ("SHARD_MAX_CONNECTIONS", "4"),
        ],
    )
}

fn session() -> &'static Gateway {
    Gateway::shared("session", &[("SHARD_POLICY", "session")])
}

fn shard(c: &Client) -> String {
    c.connected["data"]["shard"].as_str().unwrap().to_owned()
}

const APP: &str = "";
fn machine(id: &str) -> String {
    format!("clientType=machine-scoped&machineId={id}")
}
fn cli_session(id: &str) -> String {
    format!("clientType=session-scoped&sessionId={id}")
}

/// Connects with `query` until the socket lands on a shard none of `avoid` is on.
async fn elsewhere(g: &Gateway, t: &str, query: &str, avoid: &[&Client]) -> Client {
    let taken: BTreeSet<String> = avoid.iter().map(|c| shard(c)).collect();
    let mut extra = Vec::new();
    for _ in 0..20 {
        let c = g.connect(t, query).await;
        if !taken.contains(&shard(&c)) {
            return c;
        }
        extra.push(c);
    }
    panic!("no other shard in 20 connects ({taken:?})");
}

/// The next frame with `event`, skipping presence ephemerals (which depend on timing).
async fn next(c: &mut Client, event: &str) -> Value {
    loop {
        let v = c
            .next_json(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no `{event}` frame"));
        if v["event"] == "ephemeral" && event != "ephemeral" {
            continue;
        }
        assert_eq!(v["event"], event, "{v}");
        return v;
    }
}

/// Asserts nothing but presence ephemerals arrive within `wait`.
async fn silent(c: &mut Client, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Some(v) = c
        .next_json(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        assert_eq!(v["event"], "ephemeral", "unexpected frame {v}");
    }
}

/// The machine takes a call: answers `rpc-request` with `rpc-response {ackId, ack}`.
async fn answer(m: &mut Client, reply: impl Fn(&Value) -> Value) -> Value {
    let req = next(m, "rpc-request").await;
    let ack_id = req["ackId"]
        .as_str()
        .expect("the request carries an ackId")
        .to_owned();
    m.send(&json!({"event": "rpc-response", "ackId": ack_id, "ack": reply(&req)}).to_string())
        .await;
    req
}

/// `apart`: the app is put on another shard than the machine (under `session` apps and
/// daemons share the user's base shard, so there the cross-shard case is the session RPC).
async fn rpc_app_to_machine(g: &Gateway, apart: bool) {
    let u = user("rpc");
    let t = platform_token(&u);
    let mut m = g.connect(&t, &machine("mach-1")).await;
    let mut app = if apart {
        elsewhere(g, &t, APP, &[&m]).await
    } else {
        g.connect(&t, APP).await
    };
    let mut other_app = g.connect(&t, APP).await;
    assert_eq!(shard(&app) != shard(&m), apart);
    app.send(r#"{"event":"rpc-call","data":{"method":"mach-1:bash","params":"cGFyYW1z"},"ackId":"call-1"}"#)
        .await;
    let req = answer(&mut m, |_| json!("cmVzdWx0")).await;
    assert_eq!(
        req["data"],
        json!({"method": "mach-1:bash", "params": "cGFyYW1z"})
    );
    // The machine sees an edge reference, not the app's ackId.
    assert_ne!(req["ackId"], "call-1");
    let ack = next(&mut app, "ack").await;
    assert_eq!(
        ack,
        json!({"event": "ack", "ackId": "call-1", "ack": {"ok": true, "result": "cmVzdWx0"}})
    );
    // Exactly one ack, and only to the caller (the platform sends it to everyone).
    silent(&mut app, QUIET).await;
    silent(&mut other_app, QUIET).await;
    silent(&mut m, QUIET).await;
}

#[tokio::test]
async fn an_app_calls_its_machine_on_another_shard_and_gets_exactly_one_ack_hash() {
    rpc_app_to_machine(hash8(), true).await;
}

#[tokio::test]
async fn an_app_calls_its_machine_and_gets_exactly_one_ack_session() {
    rpc_app_to_machine(session(), false).await;
}

#[tokio::test]
async fn concurrent_rpcs_from_several_apps_each_get_their_own_answer() {
    let g = hash8();
    let u = user("rpc-many");
    let t = platform_token(&u);
    let mut m = g.connect(&t, &machine("mach-c")).await;
    let mut apps = Vec::new();
    for _ in 0..6 {
        apps.push(g.connect(&t, APP).await);
    }
    let shards: BTreeSet<String> = apps.iter().map(shard).collect();
    assert!(shards.len() > 1, "apps on one shard only: {shards:?}");
    let mut all: Vec<&Client> = apps.iter().collect();
    all.push(&m);
    g.seen(&t, &all).await;
    for (i, a) in apps.iter_mut().enumerate() {
        for k in 0..3 {
            a.send(&json!({"event": "rpc-call", "data": {"method": "mach-c:echo", "params": format!("{i}-{k}")}, "ackId": format!("a{i}-{k}")}).to_string())
                .await;
        }
    }
    // The machine echoes each call's params as its result.
    for _ in 0..18 {
        answer(&mut m, |req| req["data"]["params"].clone()).await;
    }
    let results = join_all(apps.iter_mut().enumerate().map(|(i, a)| async move {
        let mut got = BTreeSet::new();
        for _ in 0..3 {
            let ack = next(a, "ack").await;
            let id = ack["ackId"].as_str().unwrap().to_owned();
            let k = id.rsplit('-').next().unwrap().to_owned();
            assert_eq!(id, format!("a{i}-{k}"), "another app's answer: {ack}");
            assert_eq!(ack["ack"]["result"], format!("{i}-{k}"));
            got.insert(id);
        }
        silent(a, QUIET).await;
        got.len()
    }))
    .await;
    assert_eq!(results, vec![3; 6]);
}

async fn session_rpc(g: &Gateway) {
    let u = user("srpc");
    let t = platform_token(&u);
    let mut s1 = g.connect(&t, &cli_session("sess-1")).await;
    let mut s2 = g.connect(&t, &cli_session("sess-2")).await;
    let mut app = elsewhere(g, &t, APP, &[&s1]).await;
    let mut other_app = g.connect(&t, APP).await;
    // Each socket must be in the view the caller's shard routes by.
    g.seen(&t, &[&s1, &s2, &app, &other_app]).await;
    app.send(r#"{"event":"rpc-request","data":{"method":"sess-1:permission","params":"x"},"ackId":"q1"}"#)
        .await;
    answer(&mut s1, |_| json!({"ok": true, "result": "granted"})).await;
    // The platform's rule for a session target: the session plus every user-scoped socket.
    next(&mut other_app, "rpc-request").await;
    next(&mut app, "rpc-request").await;
    // An answer that carries `ok` passes through unchanged.
    let ack = next(&mut app, "ack").await;
    assert_eq!(ack["ack"], json!({"ok": true, "result": "granted"}));
    assert_eq!(ack["ackId"], "q1");
    silent(&mut s2, QUIET).await;
    silent(&mut other_app, QUIET).await;
}

#[tokio::test]
async fn a_session_rpc_reaches_that_session_and_the_apps_hash() {
    session_rpc(hash8()).await;
}

#[tokio::test]
async fn a_session_rpc_reaches_that_session_and_the_apps_session() {
    session_rpc(session()).await;
}

#[tokio::test]
async fn an_rpc_nobody_can_take_is_answered_at_once() {
    let g = hash8();
    let t = platform_token(&user("rpc-none"));
    let mut app = g.connect(&t, APP).await;
    // A machine of the same id for someone else changes nothing (see the isolation test).
    let started = std::time::Instant::now();
    app.send(r#"{"event":"rpc-call","data":{"method":"ghost:bash"},"ackId":"lost"}"#)
        .await;
    let ack = next(&mut app, "ack").await;
    assert_eq!(
        ack,
        json!({"event":"ack","ackId":"lost","ack":{"ok":false,"error":"RPC method not available"}})
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Without an ackId there is nothing to answer, and nothing is sent.
    app.send(r#"{"event":"rpc-call","data":{"method":"ghost:bash"}}"#)
        .await;
    silent(&mut app, QUIET).await;
}

#[tokio::test]
async fn the_clis_rpc_reaches_the_apps_and_their_answer_returns_to_it() {
    let g = hash8();
    let t = platform_token(&user("cli-rpc"));
    let mut m = g.connect(&t, &machine("mach-r")).await;
    let mut app = elsewhere(g, &t, APP, &[&m]).await;
    m.send(r#"{"event":"rpc-call","data":{"method":"app:confirm"},"ackId":"from-cli"}"#)
        .await;
    let req = next(&mut app, "rpc-call").await;
    let sealed = req["ackId"].as_str().unwrap().to_owned();
    app.send(&json!({"event":"rpc-response","ackId":sealed,"ack":"yes"}).to_string())
        .await;
    let ack = next(&mut m, "ack").await;
    assert_eq!(
        ack,
        json!({"event":"ack","ackId":"from-cli","ack":{"ok":true,"result":"yes"}})
    );
    // With no app anywhere, the CLI is answered at once.
    let lone = platform_token(&user("cli-alone"));
    let mut d = g.connect(&lone, &machine("solo")).await;
    d.send(r#"{"event":"rpc-call","data":{"method":"x"},"ackId":"k"}"#)
        .await;
    assert_eq!(
        next(&mut d, "ack").await["ack"]["error"],
        "RPC method not available"
    );
}

#[tokio::test]
async fn forged_and_replayed_ack_ids_reach_no_one() {
    let g = hash8();
    let u = user("forge");
    let t = platform_token(&u);
    let mut m = g.connect(&t, &machine("mach-f")).await;
    let mut app = elsewhere(g, &t, APP, &[&m]).await;
    // The caller's own ackId, or anything else the edge did not seal: dropped.
    for forged in ["call-9", "e1.eyJ1IjoieCJ9.AAAA", ""] {
        m.send(&json!({"event":"rpc-response","ackId":forged,"ack":"evil"}).to_string())
            .await;
    }
    app.send(r#"{"event":"rpc-call","data":{"method":"mach-f:x"},"ackId":"call-9"}"#)
        .await;
    let req = next(&mut m, "rpc-request").await;
    let sealed = req["ackId"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        m.send(&json!({"event":"rpc-response","ackId":sealed,"ack":"real"}).to_string())
            .await;
    }
    // One answer, the real one, once.
    assert_eq!(next(&mut app, "ack").await["ack"]["result"], "real");
    silent(&mut app, QUIET).await;
    // Another user echoing this user's reference reaches nobody either.
    let mallory = platform_token(&user("mallory"));
    let mut e = g.connect(&mallory, &machine("mach-f")).await;
    e.send(&json!({"event":"rpc-response","ackId":sealed,"ack":"injected"}).to_string())
        .await;
    silent(&mut app, QUIET).await;
}

/// Spellings of a sealed reference a lenient base64url decoder reads as the same bytes:
/// padding on either segment, the standard alphabet, a non-zero trailing bit in the MAC's
/// last character (22 characters carry 132 bits for a 128-bit MAC).
fn respelled(sealed: &str) -> Vec<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (body, mac) = sealed.strip_prefix("e1.").unwrap().split_once('.').unwrap();
    let mut out = vec![
        format!("{sealed}="),
        format!("{sealed}=="),
        format!("e1.{body}=.{mac}"),
        format!(
            "e1.{}.{}",
            body.replace('-', "+").replace('_', "/"),
            mac.replace('-', "+").replace('_', "/")
        ),
    ];
    let last = mac.as_bytes()[mac.len() - 1];
    let v = ALPHABET.iter().position(|&c| c == last).unwrap();
    let mut m = mac[..mac.len() - 1].to_owned();
    m.push(ALPHABET[v | 1] as char);
    out.push(format!("e1.{body}.{m}"));
    out.retain(|s| s != sealed);
    out
}

#[tokio::test]
async fn a_respelled_sealed_reference_delivers_no_second_answer() {
    let g = hash8();
    let u = user("respell");
    let t = platform_token(&u);
    let mut m = g.connect(&t, &machine("mach-r")).await;
    let mut app = elsewhere(g, &t, APP, &[&m]).await;
    app.send(r#"{"event":"rpc-call","data":{"method":"mach-r:x"},"ackId":"call-r"}"#)
        .await;
    let req = next(&mut m, "rpc-request").await;
    let sealed = req["ackId"].as_str().unwrap().to_owned();
    m.send(&json!({"event":"rpc-response","ackId":sealed,"ack":"real"}).to_string())
        .await;
    assert_eq!(next(&mut app, "ack").await["ack"]["result"], "real");
    // The same reference in every other spelling: the call was answered, so nothing more.
    for other in respelled(&sealed) {
        m.send(&json!({"event":"rpc-response","ackId":other,"ack":"again"}).to_string())
            .await;
    }
    silent(&mut app, QUIET).await;
}

#[tokio::test]
async fn events_are_forwarded_both_ways_across_shards() {
    let g = hash8();
    let t = platform_token(&user("fwd"));
    let mut s1 = g.connect(&t, &cli_session("s1")).await;
    let mut s2 = elsewhere(g, &t, &cli_session("s2"), &[&s1]).await;
    let mut m = g.connect(&t, &machine("m1")).await;
    let mut apps = [
        elsewhere(g, &t, APP, &[&s1]).await,
        elsewhere(g, &t, APP, &[&s2]).await,
    ];
    g.seen(&t, &[&s1, &s2, &m, &apps[0], &apps[1]]).await;
    // CLI -> every app, under the event's own name, with its ackId; other CLIs do not get it.
    s1.send(r#"{"event":"session-revival-paused","data":{"sid":"s1","n":1},"ackId":"k1"}"#)
        .await;
    for a in apps.iter_mut() {
        assert_eq!(
            next(a, "session-revival-paused").await,
            json!({"event":"session-revival-paused","data":{"sid":"s1","n":1},"ackId":"k1"})
        );
    }
    silent(&mut s2, QUIET).await;
    silent(&mut m, QUIET).await;
    // The server envelope is accepted inbound too.
    m.send(r#"{"type":"acp-session-command-response","payload":{"r":2},"timestamp":1}"#)
        .await;
    for a in apps.iter_mut() {
        assert_eq!(
            next(a, "acp-session-command-response").await["data"]["r"],
            2
        );
    }
    // App -> the session named in the payload; app -> the machine named in the payload.
    apps[0]
        .send(r#"{"event":"acp-permission-response","data":{"sessionId":"s2","ok":true}}"#)
        .await;
    assert_eq!(
        next(&mut s2, "acp-permission-response").await["data"]["ok"],
        true
    );
    silent(&mut s1, QUIET).await;
    apps[1]
        .send(r#"{"event":"machine-hint","data":{"machineId":"m1"}}"#)
        .await;
    next(&mut m, "machine-hint").await;
    // The client `broadcast` event: everyone of the user but the sender, on every shard.
    s2.send(r#"{"event":"broadcast","data":"hi"}"#).await;
    let [a0, a1] = &mut apps;
    for c in [&mut s1, &mut m, a0, a1] {
        assert_eq!(next(c, "broadcast").await["data"], "hi");
    }
    silent(&mut s2, QUIET).await;
    // A frame from an app that names neither is dropped, as on the platform.
    apps[0]
        .send(r#"{"event":"rpc-cancel","data":{"requestId":"r"}}"#)
        .await;
    for c in [&mut s1, &mut s2, &mut m, &mut apps[1]] {
        silent(c, Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn every_filter_reaches_exactly_its_sockets_on_every_shard() {
    let g = hash8();
    let t = platform_token(&user("filters"));
    // 0, 1: apps; 2, 3: session s1; 4: session s2; 5, 6: machine m1; 7: machine m2.
    let queries = [
        APP,
        APP,
        &cli_session("s1"),
        &cli_session("s1"),
        &cli_session("s2"),
        &machine("m1"),
        &machine("m1"),
        &machine("m2"),
    ];
    let mut cs = Vec::new();
    for q in queries {
        cs.push(g.connect(&t, q).await);
    }
    let shards: BTreeSet<String> = cs.iter().map(shard).collect();
    assert!(shards.len() >= 3, "{shards:?}");
    let excluded = cs[3].id.clone();
    let cases: Vec<(Value, Vec<usize>)> = vec![
        (json!({"type": "all"}), (0..8).collect()),
        (json!({"type": "user-scoped-only"}), vec![0, 1]),
        (json!({"type": "session", "sessionId": "s1"}), vec![2, 3]),
        (json!({"type": "machine", "machineId": "m1"}), vec![5, 6]),
        (
            json!({"type": "exclude", "connectionId": excluded}),
            vec![0, 1, 2, 4, 5, 6, 7],
        ),
        (
            json!({"type": "machine-scoped-only", "machineId": "m2"}),
            vec![0, 1, 7],
        ),
        (
            json!({"type": "all-interested-in-session", "sessionId": "s2"}),
            vec![0, 1, 4],
        ),
    ];
    for (i, (filter, expect)) in cases.into_iter().enumerate() {
        let (status, r) = g
            .broadcast(
                &t,
                &json!({"message": {"type": "note", "payload": i}, "filter": filter}),
            )
            .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["delivered"], expect.len(), "{filter}: {r}");
        for (k, c) in cs.iter_mut().enumerate() {
            if expect.contains(&k) {
                assert_eq!(next(c, "note").await["data"], i, "{filter} socket {k}");
            } else {
                silent(c, Duration::from_millis(150)).await;
            }
        }
    }
}

/// The next presence notice of `kind` for `machine`.
async fn presence(c: &mut Client, machine: &str) -> (bool, bool) {
    let s = c.expect_event("ephemeral").await;
    assert_eq!(
        (s["data"]["type"].as_str(), s["data"]["machineId"].as_str()),
        (Some("machine-status"), Some(machine)),
        "{s}"
    );
    let a = c.expect_event("ephemeral").await;
    assert_eq!(a["data"]["type"], "machine-activity", "{a}");
    (
        s["data"]["online"].as_bool().unwrap(),
        a["data"]["active"].as_bool().unwrap(),
    )
}

#[tokio::test]
async fn presence_is_counted_across_shards_and_overlapping_reconnects_do_not_flap() {
    let g = hash8();
    let t = platform_token(&user("presence"));
    let mut app = g.connect(&t, APP).await;
    let mut far_app = elsewhere(g, &t, APP, &[&app]).await;
    // Both apps in the home's book before the machine's notice is sent.
    g.seen(&t, &[&app, &far_app]).await;
    let old = g.connect(&t, &machine("mach-p")).await;
    for a in [&mut app, &mut far_app] {
        assert_eq!(presence(a, "mach-p").await, (true, true));
    }
    // The daemon reconnects: the new socket opens (on another shard) before the old closes.
    let new = elsewhere(g, &t, &machine("mach-p"), &[&old]).await;
    old.close().await;
    for a in [&mut app, &mut far_app] {
        a.expect_silence(Duration::from_secs(1)).await;
    }
    // The machine's last socket closes: offline, once, everywhere.
    new.close().await;
    for a in [&mut app, &mut far_app] {
        assert_eq!(presence(a, "mach-p").await, (false, false));
        a.expect_silence(QUIET).await;
    }
    assert_eq!(g.stats(&t).await["activeMachines"], 0);
}

#[tokio::test]
async fn two_users_with_the_same_session_and_machine_ids_never_reach_each_other() {
    let g = hash8();
    let (ta, tb) = (
        platform_token(&user("iso-a")),
        platform_token(&user("iso-b")),
    );
    let mut am = g.connect(&ta, &machine("shared-m")).await;
    let mut asess = g.connect(&ta, &cli_session("shared-s")).await;
    let mut bm = g.connect(&tb, &machine("shared-m")).await;
    let mut bs = g.connect(&tb, &cli_session("shared-s")).await;
    let mut aapp = g.connect(&ta, APP).await;
    let mut bapp = g.connect(&tb, APP).await;
    g.seen(&ta, &[&am, &asess, &aapp]).await;
    g.seen(&tb, &[&bm, &bs, &bapp]).await;
    aapp.send(r#"{"event":"rpc-call","data":{"method":"shared-m:x"},"ackId":"a"}"#)
        .await;
    answer(&mut am, |_| json!("for-a")).await;
    assert_eq!(next(&mut aapp, "ack").await["ack"]["result"], "for-a");
    aapp.send(r#"{"event":"note","data":{"sessionId":"shared-s"}}"#)
        .await;
    next(&mut asess, "note").await;
    asess
        .send(r#"{"event":"session-alive","data":{"sid":"shared-s"}}"#)
        .await;
    next(&mut aapp, "session-alive").await;
    let (_, r) = g
        .broadcast(
            &ta,
            &json!({"message":{"type":"b"},"filter":{"type":"machine","machineId":"shared-m"}}),
        )
        .await;
    assert_eq!(r["delivered"], 1);
    next(&mut am, "b").await;
    for c in [&mut bm, &mut bs, &mut bapp] {
        silent(c, QUIET).await;
    }
}

#[tokio::test]
async fn a_workerd_restart_mid_conversation_leaves_no_phantom_and_misses_no_offline() {
    let mut g = Gateway::start(
        "route-restart",
        &[
            ("SHARD_POLICY", "hash:shards=8"),
            ("SHARD_MAX_CONNECTIONS", "4"),
        ],
    );
    let t = platform_token(&user("restart"));
    let mut app = g.connect(&t, APP).await;
    g.seen(&t, &[&app]).await;
    let mut m = elsewhere(&g, &t, &machine("mach-x"), &[&app]).await;
    assert!(presence(&mut app, "mach-x").await.0);
    app.send(r#"{"event":"rpc-call","data":{"method":"mach-x:a"},"ackId":"before"}"#)
        .await;
    answer(&mut m, |_| json!("1")).await;
    assert_eq!(next(&mut app, "ack").await["ackId"], "before");
    g.restart(&[]);
    // Every socket died with the runtime; the app comes back first.
    assert_eq!(app.next_json(Duration::from_secs(5)).await, None);
    let mut app = g.connect(&t, APP).await;
    // The machine is gone, and the app is told so (no phantom online machine): by the
    // directory's reconcile pass about 2 s after it starts, later on a loaded machine.
    let notice = app
        .next_json(Duration::from_secs(30))
        .await
        .expect("an offline notice after the restart");
    assert_eq!(
        (
            notice["data"]["type"].as_str(),
            notice["data"]["machineId"].as_str(),
            notice["data"]["online"].as_bool()
        ),
        (Some("machine-status"), Some("mach-x"), Some(false)),
        "{notice}"
    );
    assert_eq!(
        app.expect_event("ephemeral").await["data"]["type"],
        "machine-activity"
    );
    let st = g.stats(&t).await;
    assert_eq!(
        (
            st["totalConnections"].as_u64(),
            st["activeMachines"].as_u64()
        ),
        (Some(1), Some(0)),
        "{st}"
    );
    // The daemon reconnects; calls work again.
    let mut m = g.connect(&t, &machine("mach-x")).await;
    assert!(presence(&mut app, "mach-x").await.0);
    app.send(r#"{"event":"rpc-call","data":{"method":"mach-x:a"},"ackId":"after"}"#)
        .await;
    answer(&mut m, |_| json!("2")).await;
    assert_eq!(next(&mut app, "ack").await["ack"]["result"], "2");
}

/// A machine's socket has just opened on another shard; its shard tells the user's home
/// after the fact, so the app's shard may not know it yet. An RPC sent the moment the
/// machine is connected still reaches it: the app's shard asks the home, which waits for the
/// machine's report (docs/architecture.md). Several rounds, so most land on other shards.
#[tokio::test]
async fn an_rpc_racing_its_targets_connect_still_arrives() {
    let g = hash8();
    let u = user("race-rpc");
    let t = platform_token(&u);
    let mut app = g.connect(&t, APP).await;
    let mut apart = 0;
    for i in 0..6 {
        let id = format!("racer-{i}");
        let mut m = g.connect(&t, &machine(&id)).await;
        // At once: no settle, no wait for the presence notice.
        app.send(
            &json!({"event": "rpc-call", "data": {"method": format!("{id}:ping"), "params": "x"}, "ackId": format!("c{i}")})
                .to_string(),
        )
        .await;
        apart += usize::from(shard(&m) != shard(&app));
        answer(&mut m, |_| json!("pong")).await;
        let ack = next(&mut app, "ack").await;
        assert_eq!(
            ack,
            json!({"event": "ack", "ackId": format!("c{i}"), "ack": {"ok": true, "result": "pong"}}),
            "round {i}"
        );
    }
    assert!(apart >= 1, "some machine landed on another shard");
}
