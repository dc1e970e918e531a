//! Moves that lose nothing (issue 21): the shard policy switched at run time, for one user
//! (a canary) and for everyone, a switch back in the middle of its drain, and business events
//! that nothing here answers acked at once.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{connect_many, user, Client, Gateway};

/// `hash:shards=4` with 3 sockets per shard: six sockets of a user sit on several shards,
/// none on the home (a fixed N never places there), so `single` moves every one of them.
fn gw() -> &'static Gateway {
    Gateway::shared(
        "switch",
        &[
            ("SHARD_POLICY", "hash:shards=4"),
            ("SHARD_MAX_CONNECTIONS", "3"),
            ("METRICS_PUSH_MS", "500"),
        ],
    )
}

/// The same, alone: its test switches everyone's policy, which the other tests must not see.
fn gw_global() -> &'static Gateway {
    Gateway::shared(
        "switch-global",
        &[
            ("SHARD_POLICY", "hash:shards=4"),
            ("SHARD_MAX_CONNECTIONS", "3"),
            ("METRICS_PUSH_MS", "500"),
        ],
    )
}

fn shard(c: &Client) -> String {
    c.connected["data"]["shard"].as_str().unwrap().to_owned()
}

/// Waits up to `wait` for a socket's `reconnect` frame and its close; `None` if it stays.
async fn told(c: &mut Client, wait: Duration) -> Option<(Value, Option<u16>)> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = c.next_json(left).await?;
        if ev["event"] == "reconnect" {
            let code = c.expect_close(Duration::from_secs(3)).await;
            return Some((ev, code));
        }
    }
}

#[tokio::test]
async fn a_canary_switch_moves_its_user_only_and_a_global_switch_back_mid_drain_stops_it() {
    let g = gw_global();
    let (canary, other) = (user("canary"), user("bystander"));
    let (tc, to) = (g.token(&canary, "pro").await, g.token(&other, "pro").await);
    let mut cs: Vec<Client> = connect_many(g, &tc, 6, 6, |_| String::new())
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let mut os: Vec<Client> = connect_many(g, &to, 6, 6, |_| String::new())
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert!(
        cs.iter().all(|c| shard(c).contains(":h")),
        "hash shards only"
    );

    // A bad policy or window is refused with the grammar's own words.
    let (s, v) = g
        .admin(
            Method::PUT,
            &format!("/admin/users/{canary}/policy"),
            Some(json!({"policy": "hash:shards=0"})),
        )
        .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_policy")),
        "{v}"
    );
    let (s, v) = g
        .admin(
            Method::PUT,
            "/admin/policy",
            Some(json!({"policy": "single", "drainMs": 5})),
        )
        .await;
    assert_eq!(s, 400, "{v}");

    // The canary: its user's sockets move to `single` over 2 s; the other user's stay.
    let (s, v) = g
        .admin(
            Method::PUT,
            &format!("/admin/users/{canary}/policy"),
            Some(json!({"policy": "single", "drainMs": 2000})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["active"].as_str(), v["source"].as_str()),
        (Some("single"), Some("user"))
    );
    for c in &mut cs {
        let (ev, code) = told(c, Duration::from_secs(8)).await.expect("told to move");
        assert_eq!(ev["data"]["reason"], "policy", "{ev}");
        assert_eq!(code, Some(1012));
    }
    for c in &mut os {
        c.expect_silence(Duration::from_millis(200)).await;
    }
    let moved = g.connect(&tc, "").await;
    assert_eq!(shard(&moved), format!("cm:{canary}"));
    assert_eq!(moved.connected["data"]["policy"], "single");
    let stayed = g.connect(&to, "").await;
    assert!(shard(&stayed).contains(":h"), "{}", shard(&stayed));

    let health = crate::support::http_get_blocking(g.port, "/health")
        .unwrap()
        .1;
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["policySource"], "config", "{health}");
    assert!(health["userPolicies"].as_u64().unwrap() >= 1, "{health}");

    // Everyone to `single` over 8 s; back to the config after about 2 s: the sockets not
    // told yet stay where they are, the canary (a policy of its own) is not touched.
    tokio::time::sleep(Duration::from_millis(1_200)).await; // the registry knows the user
    let (s, v) = g
        .admin(
            Method::PUT,
            "/admin/policy",
            Some(json!({"policy": "single", "drainMs": 8000})),
        )
        .await;
    assert_eq!((s, v["source"].as_str()), (200, Some("runtime")), "{v}");
    let started = Instant::now();
    let mut first_told = 0;
    for c in &mut os {
        // Collect what arrives in the first ~2 s only.
        let left = Duration::from_millis(2_000).saturating_sub(started.elapsed());
        if told(c, left).await.is_some() {
            first_told += 1;
        }
    }
    let (s, v) = g
        .admin(Method::DELETE, "/admin/policy?drainMs=1000", None)
        .await;
    assert_eq!((s, v["source"].as_str()), (200, Some("config")), "{v}");
    assert!(
        first_told < 6,
        "the whole window passed before the switch back"
    );
    let mut later = 0;
    for c in &mut os {
        if told(c, Duration::from_millis(1_500)).await.is_some() {
            later += 1;
        }
    }
    // A notice on its way when the switch back landed may still tell one or two.
    assert!(
        first_told + later < 6,
        "the drain went on after the switch back: {first_told} + {later} of 6 told"
    );
    let st = g.stats(&to).await;
    assert!(
        st["shards"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["draining"] == false),
        "{st}"
    );
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", g.http()))
        .bearer_auth(crate::support::ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("edge_policy_info{policy=\"hash:shards=4\",source=\"config\""),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("edge_policy_user_overrides ") && !l.ends_with(" 0")),
        "{metrics}"
    );
    // The canary kept its own policy through both global changes.
    let canary_again = g.connect(&tc, "").await;
    assert_eq!(shard(&canary_again), format!("cm:{canary}"));
    drop(moved);
}

#[tokio::test]
async fn a_business_event_nothing_answers_is_acked_at_once_in_its_own_shape() {
    let g = gw();
    let t = g.token(&user("noupstream"), "pro").await;
    let mut cli = g
        .connect(&t, "clientType=session-scoped&sessionId=s-ack")
        .await;
    let mut app = g.connect(&t, "").await;
    let asked = Instant::now();
    app.send(r#"{"event":"request-updates-since","data":{"sessions":{},"machines":{},"artifacts":{}},"ackId":"sync-1"}"#)
        .await;
    let ack = app.expect_event("ack").await;
    assert!(asked.elapsed() < Duration::from_secs(2), "answered late");
    assert_eq!(ack["ackId"], "sync-1", "{ack}");
    assert_eq!(ack["ack"]["success"], false, "{ack}");
    cli.send(r#"{"event":"update-metadata","data":{"sid":"s-ack","metadata":"x","expectedVersion":0},"ackId":"m-1"}"#)
        .await;
    let ack = cli.expect_event("ack").await;
    assert_eq!(ack["ack"]["result"], "error", "{ack}");
    // Routing events are not answered for the other clients.
    app.send(r#"{"event":"rpc-call","data":{"method":"nobody:x","params":"p"},"ackId":"r-1"}"#)
        .await;
    cli.send(r#"{"event":"custom","data":{},"ackId":"c-1"}"#)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(v) = cli.next_json(Duration::from_millis(100)).await {
        assert_ne!(v["event"], "ack", "{v}");
    }
}

/// The platform's CLI daemon (machine-scoped) and an app of one user on `hash:shards=4`;
/// the user is switched to `single`, so both are told to move. An RPC the app sends to the
/// machine while the machine is between its sockets waits for the new socket and is answered;
/// the machine gets it once.
#[tokio::test]
async fn an_rpc_to_a_machine_between_its_sockets_waits_for_the_new_one() {
    let g = gw();
    let machine_q = "clientType=machine-scoped&machineId=m-move";
    // The daemon is told; it stays away for a while, as a client with a backoff would.
    let (u, t, ev) = moved_to_single(g, "moving-rpc", machine_q).await;
    assert_eq!(ev["data"]["reason"], "policy");
    // The app is on the new policy's shard already (an app carries no id a move could
    // match, docs/policies.md).
    let mut app = g.connect(&t, "").await;
    assert_eq!(shard(&app), format!("cm:{u}"));
    call(&mut app, "m-move:ping", "call-1").await;
    // No "not available" while the machine moves.
    if let Some(v) = app.next_json(Duration::from_millis(800)).await {
        assert_ne!(
            v["event"], "ack",
            "answered before the machine was back: {v}"
        );
    }
    let mut daemon = g.connect(&t, machine_q).await;
    assert_eq!(shard(&daemon), format!("cm:{u}"));
    let req = next_event(&mut daemon, "rpc-request", Duration::from_secs(5))
        .await
        .expect("the held rpc-request");
    assert_eq!(req["data"]["method"], "m-move:ping", "{req}");
    respond(&mut daemon, &req, "pong").await;
    let ack = next_event(&mut app, "ack", Duration::from_secs(5))
        .await
        .expect("the rpc's answer");
    assert_eq!(ack["ackId"], "call-1", "{ack}");
    assert_eq!(ack["ack"]["result"], "pong", "{ack}");
    // Once: nothing held is handed twice.
    let deadline = Instant::now() + Duration::from_millis(700);
    while let Some(v) = daemon
        .next_json(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        assert_ne!(v["event"], "rpc-request", "a duplicate: {v}");
    }
    let st = g.stats(&t).await;
    assert!(st["moves"]["moves"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["moves"]["handed"].as_u64().unwrap() >= 1, "{st}");
}

/// `PRESENCE_GRACE_MS`: a machine that drops and comes back within the window is announced
/// neither offline nor online again; one that stays away is announced offline once the window
/// has passed.
#[tokio::test]
async fn a_machine_back_within_the_grace_window_does_not_flicker() {
    let g = Gateway::shared(
        "grace",
        &[
            ("SHARD_POLICY", "hash:shards=4"),
            ("SHARD_MAX_CONNECTIONS", "3"),
            ("PRESENCE_GRACE_MS", "1500"),
        ],
    );
    let t = g.token(&user("grace"), "pro").await;
    let mut app = g.connect(&t, "").await;
    g.seen(&t, &[&app]).await;
    let q = "clientType=machine-scoped&machineId=m-grace";
    let daemon = g.connect(&t, q).await;
    let on = next_status(&mut app, Duration::from_secs(3))
        .await
        .expect("online");
    assert_eq!(on["data"]["online"], true, "{on}");
    // Drop and back within the window: nothing announced.
    daemon.close().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let daemon = g.connect(&t, q).await;
    assert!(
        next_status(&mut app, Duration::from_millis(2_500))
            .await
            .is_none(),
        "a drop within the window was announced"
    );
    // Away for good: offline once the window has passed.
    daemon.close().await;
    let gone = Instant::now();
    let off = next_status(&mut app, Duration::from_secs(6))
        .await
        .expect("offline after the window");
    assert_eq!(off["data"]["online"], false, "{off}");
    assert!(
        gone.elapsed() >= Duration::from_millis(1_200),
        "announced before the window passed"
    );
    let st = g.stats(&t).await;
    assert_eq!(st["moves"]["graceHidden"], 1, "{st}");
}

/// The next `machine-status` notice within `wait`.
async fn next_status(app: &mut Client, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    while let Some(v) = app
        .next_json(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        if v["event"] == "ephemeral" && v["data"]["type"] == "machine-status" {
            return Some(v);
        }
    }
    None
}

/// The next frame of `event` within `wait`, skipping others.
async fn next_event(c: &mut Client, event: &str, wait: Duration) -> Option<Value> {
    let deadline = Instant::now() + wait;
    while let Some(v) = c
        .next_json(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        if v["event"] == event {
            return Some(v);
        }
    }
    None
}

/// Sets `u`'s own policy at run time, draining over `drain_ms`.
async fn switch_user(g: &Gateway, u: &str, policy: &str, drain_ms: u64) {
    set_policy(g, &format!("/admin/users/{u}/policy"), policy, drain_ms).await;
}

async fn switch_everyone(g: &Gateway, policy: &str, drain_ms: u64) {
    set_policy(g, "/admin/policy", policy, drain_ms).await;
}

async fn set_policy(g: &Gateway, path: &str, policy: &str, drain_ms: u64) {
    let body = json!({"policy": policy, "drainMs": drain_ms});
    let (s, v) = g.admin(Method::PUT, path, Some(body)).await;
    assert_eq!(s, 200, "{v}");
}

/// The same for a CLI session (session-scoped): the app calling it sits on the home, where
/// the moving session is listed without a socket; the call waits for the session's new
/// socket instead of "RPC method not available".
#[tokio::test]
async fn an_rpc_to_a_session_between_its_sockets_waits_for_the_new_one() {
    let g = gw();
    let session_q = "clientType=session-scoped&sessionId=s-move";
    let (u, t, _) = moved_to_single(g, "moving-session", session_q).await;
    let mut app = g.connect(&t, "").await;
    assert_eq!(shard(&app), format!("cm:{u}"));
    call(&mut app, "s-move:permission", "call-s").await;
    if let Some(v) = next_event(&mut app, "ack", Duration::from_millis(800)).await {
        panic!("answered before the session was back: {v}");
    }
    let mut cli = g.connect(&t, session_q).await;
    let req = next_event(&mut cli, "rpc-request", Duration::from_secs(5))
        .await
        .expect("the held rpc-request");
    respond(&mut cli, &req, "ok").await;
    let ack = next_event(&mut app, "ack", Duration::from_secs(5))
        .await
        .expect("the rpc's answer");
    assert_eq!(ack["ackId"], "call-s", "{ack}");
    assert_eq!(ack["ack"]["result"], "ok", "{ack}");
}

/// The app calls `method` (`<id>:<name>`) under `ack_id`.
async fn call(app: &mut Client, method: &str, ack_id: &str) {
    let frame =
        json!({"event": "rpc-call", "data": {"method": method, "params": "p"}, "ackId": ack_id});
    app.send(&frame.to_string()).await;
}

/// Answers an `rpc-request` that reached `c` with `result`.
async fn respond(c: &mut Client, req: &Value, result: &str) {
    let frame = json!({"event": "rpc-response", "ackId": req["ackId"], "ack": result});
    c.send(&frame.to_string()).await;
}

/// A new user's socket (`query`) on a hash shard, then the user switched to `single` over
/// 3 s: answers the user, its token and the socket's `reconnect` frame (the socket is gone).
async fn moved_to_single(g: &Gateway, name: &str, query: &str) -> (String, String, Value) {
    let u = user(name);
    let t = g.token(&u, "pro").await;
    let mut c = g.connect(&t, query).await;
    assert!(shard(&c).contains(":h"));
    switch_user(g, &u, "single", 3000).await;
    let (ev, _) = told(&mut c, Duration::from_secs(8))
        .await
        .expect("the socket is told to move");
    (u, t, ev)
}

/// An app that sends a `correlationId` (the mobile and React apps send the same one on
/// every connect) gets, once, what was sent to apps while the edge moved it: here the
/// `machine-status` of a machine that came online between its two sockets. An app without
/// one cannot be matched and gets nothing of it.
#[tokio::test]
async fn an_app_with_a_correlation_id_gets_once_what_it_missed_while_it_moved() {
    let g = gw();
    let app_q = "correlationId=phone-1";
    let (u, t, ev) = moved_to_single(g, "moving-app", app_q).await;
    assert_eq!(ev["data"]["reason"], "policy");
    // Between the app's sockets: a machine comes online.
    let daemon = g
        .connect(&t, "clientType=machine-scoped&machineId=m-seen")
        .await;
    assert_eq!(shard(&daemon), format!("cm:{u}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut web = g.connect(&t, "").await;
    let mut app = g.connect(&t, app_q).await;
    let Some(on) = next_status(&mut app, Duration::from_secs(5)).await else {
        panic!("the notice sent while it moved: {}", g.stats(&t).await);
    };
    assert_eq!(on["data"]["machineId"], "m-seen", "{on}");
    assert_eq!(on["data"]["online"], true, "{on}");
    assert!(
        next_status(&mut app, Duration::from_millis(700))
            .await
            .is_none(),
        "handed twice"
    );
    assert!(
        next_status(&mut web, Duration::from_millis(100))
            .await
            .is_none(),
        "an app without an id got what was held"
    );
    let st = g.stats(&t).await;
    assert!(st["moves"]["handed"].as_u64().unwrap() >= 2, "{st}");
}

/// A drain closes a socket between its calls, not during one, at both ends: an app that
/// waits for an answer, and a machine that owes one, are kept open until the answer has
/// reached the app (else the app waits out its timeout), then told. The call goes out before
/// the switch, so neither slot can come first.
#[tokio::test]
async fn a_drain_closes_neither_end_of_a_call_before_its_answer() {
    let g = gw();
    let u = user("quiet-close");
    let t = g.token(&u, "pro").await;
    let mut daemon = g
        .connect(&t, "clientType=machine-scoped&machineId=m-quiet")
        .await;
    let mut app = g.connect(&t, "").await;
    assert!(shard(&daemon).contains(":h") && shard(&app).contains(":h"));
    call(&mut app, "m-quiet:ping", "call-q").await;
    let req = next_event(&mut daemon, "rpc-request", Duration::from_secs(5))
        .await
        .expect("the rpc-request");
    // Both sockets' shards drain over 1 s; the machine answers after 2 s.
    switch_user(g, &u, "single", 1000).await;
    if let Some(v) = next_event(&mut daemon, "reconnect", Duration::from_millis(2_000)).await {
        panic!("the machine was told to move before it answered: {v}");
    }
    respond(&mut daemon, &req, "late").await;
    let mut got_ack = false;
    let (ev, code) = loop {
        let v = app
            .next_json(Duration::from_secs(5))
            .await
            .expect("the answer, then the reconnect");
        if v["event"] == "ack" {
            assert_eq!(v["ackId"], "call-q", "{v}");
            assert_eq!(v["ack"]["result"], "late", "{v}");
            got_ack = true;
        } else if v["event"] == "reconnect" {
            break (v, app.expect_close(Duration::from_secs(3)).await);
        }
    };
    assert!(got_ack, "the app was told to move before its answer came");
    assert_eq!(ev["data"]["reason"], "policy", "{ev}");
    assert_eq!(code, Some(1012));
    let (ev, code) = told(&mut daemon, Duration::from_secs(3))
        .await
        .expect("the machine is told once it answered");
    assert_eq!(ev["data"]["reason"], "policy", "{ev}");
    assert_eq!(code, Some(1012));
}

/// A machine moved onto the home (a switch to `single`) is announced neither offline nor
/// online again: the home lists it while it moves, and still when its socket is back there.
#[tokio::test]
async fn a_machine_moved_onto_the_home_is_never_announced_offline() {
    let g = gw();
    let u = user("onto-home");
    let t = g.token(&u, "pro").await;
    let q = "clientType=machine-scoped&machineId=m-home";
    let mut app = g.connect(&t, "").await;
    g.seen(&t, &[&app]).await;
    let mut daemon = g.connect(&t, q).await;
    assert!(shard(&daemon).contains(":h") && shard(&app).contains(":h"));
    let on = next_status(&mut app, Duration::from_secs(3))
        .await
        .expect("online");
    assert_eq!(on["data"]["online"], true, "{on}");
    switch_user(g, &u, "single", 1000).await;
    told(&mut daemon, Duration::from_secs(5))
        .await
        .expect("the machine is told to move");
    told(&mut app, Duration::from_secs(5))
        .await
        .expect("the app is told to move");
    let mut app = g.connect(&t, "").await;
    assert_eq!(shard(&app), format!("cm:{u}"));
    let daemon = g.connect(&t, q).await;
    assert_eq!(shard(&daemon), format!("cm:{u}"));
    if let Some(v) = next_status(&mut app, Duration::from_millis(1_500)).await {
        panic!("a move onto the home was announced: {v}");
    }
}

/// A global switch reaches a user whose home had not pushed to its registry yet (it connected
/// within `METRICS_PUSH_MS` before the switch, so no registry could tell it): its home learns
/// the switch from its first push's answer, and its sockets drain, instead of keeping the old
/// policy until the user's next connect.
#[tokio::test]
async fn a_global_switch_reaches_a_user_no_registry_knew_yet() {
    let g = Gateway::shared(
        "switch-unlisted",
        &[("SHARD_POLICY", "single"), ("METRICS_PUSH_MS", "2000")],
    );
    let u = user("unlisted");
    let t = g.token(&u, "pro").await;
    let mut a = g.connect(&t, "").await;
    let mut b = g.connect(&t, "").await;
    assert_eq!(shard(&a), format!("cm:{u}"));
    // At once: the home's first push is still about 2 s away.
    switch_everyone(g, "hash:shards=4", 1000).await;
    for c in [&mut a, &mut b] {
        let (ev, code) = told(c, Duration::from_secs(8))
            .await
            .expect("told to move once the home's first push brings the switch");
        assert_eq!(ev["data"]["reason"], "policy", "{ev}");
        assert_eq!(code, Some(1012));
    }
    let moved = g.connect(&t, "").await;
    assert!(shard(&moved).contains(":h"), "{}", shard(&moved));
}
