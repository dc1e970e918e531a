//! Business events through the upstream (issue 14): the reference upstream in
//! examples/upstream/ runs beside the gateway (`UPSTREAM=service`) and answers the platform's
//! events; the gateway acks the sender and delivers across the user's shards. Also a slow, a
//! failing and a saturated upstream, lifecycle hooks, the backend publish API and the
//! built-in usage limits.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{now_s, platform_token, user, Client, Gateway, ADMIN};

const QUIET: Duration = Duration::from_millis(500);

fn gw() -> &'static Gateway {
    Gateway::shared(
        "upstream",
        &[
            ("SHARD_POLICY", "hash:shards=4"),
            ("SHARD_MAX_CONNECTIONS", "3"),
            ("UPSTREAM", "service"),
            ("TEST_KNOBS", "on"),
        ],
    )
}

fn now_ms() -> u64 {
    now_s() * 1000
}

fn presence(v: &Value) -> bool {
    v["event"] == "ephemeral"
        && matches!(
            v["data"]["type"].as_str(),
            Some("machine-status" | "machine-activity")
        )
}

/// The next frame with `event`, skipping machine presence notices (their timing depends on
/// the test's own connects); asking for an `ephemeral` skips only `machine-status`.
async fn next(c: &mut Client, event: &str) -> Value {
    loop {
        let v = c
            .next_json(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no `{event}` frame"));
        let skip = if event == "ephemeral" {
            v["data"]["type"] == "machine-status"
        } else {
            presence(&v)
        };
        if skip {
            continue;
        }
        assert_eq!(v["event"], event, "{v}");
        return v;
    }
}

/// Nothing but presence notices arrive within `wait`.
async fn silent(c: &mut Client, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    while let Some(v) = c
        .next_json(deadline.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        assert!(presence(&v), "unexpected frame {v}");
    }
}

/// Apps on at least two shards, plus the CLI socket of `session`.
async fn cli_and_apps(g: &Gateway, t: &str, session: &str) -> (Client, Vec<Client>) {
    let cli = g
        .connect(t, &format!("clientType=session-scoped&sessionId={session}"))
        .await;
    let mut apps = Vec::new();
    for _ in 0..4 {
        apps.push(g.connect(t, "").await);
    }
    let shards: std::collections::BTreeSet<_> = apps
        .iter()
        .map(|a| a.connected["data"]["shard"].to_string())
        .collect();
    assert!(shards.len() > 1, "apps on one shard: {shards:?}");
    // Additions reach every shard's view within one prompt push.
    tokio::time::sleep(Duration::from_millis(300)).await;
    (cli, apps)
}

async fn admin(
    g: &Gateway,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    g.admin(method, path, body).await
}

async fn control(g: &Gateway, delay_ms: u64, fail: bool) {
    let (s, v) = admin(
        g,
        reqwest::Method::POST,
        "/admin/test/upstream/control",
        Some(json!({"delayMs": delay_ms, "fail": fail})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn session_alive_becomes_activity_for_every_app_on_every_shard() {
    let g = gw();
    let t = platform_token(&user("alive"));
    let (mut cli, mut apps) = cli_and_apps(g, &t, "s-alive").await;
    let sent = now_ms();
    cli.send(&json!({"event":"session-alive","data":{"sid":"s-alive","time":sent,"thinking":true,"mode":"remote"}}).to_string())
        .await;
    for a in apps.iter_mut() {
        let e = next(a, "ephemeral").await;
        assert_eq!(e["data"]["type"], "activity", "{e}");
        assert_eq!(
            (e["data"]["sid"].as_str(), e["data"]["active"].as_bool()),
            (Some("s-alive"), Some(true))
        );
        assert_eq!(e["data"]["thinking"], true);
        assert!(e["data"]["activeAt"].as_u64().unwrap() >= sent);
    }
    // Not to the CLI (user-scoped-only), and no ack: the platform's session-alive has none.
    silent(&mut cli, QUIET).await;
    // A machine's alive becomes machine-activity. (A past time, within ten minutes, tells it
    // from the presence notice's activeAt.)
    let mut m = g
        .connect(&t, "clientType=machine-scoped&machineId=m-alive")
        .await;
    let at = now_ms() - 60_000;
    m.send(&json!({"event":"machine-alive","data":{"machineId":"m-alive","time":at}}).to_string())
        .await;
    for a in apps.iter_mut() {
        loop {
            let e = next(a, "ephemeral").await;
            if e["data"]["activeAt"] == at {
                assert_eq!(
                    (e["data"]["type"].as_str(), e["data"]["machineId"].as_str()),
                    (Some("machine-activity"), Some("m-alive"))
                );
                break;
            }
        }
    }
}

#[tokio::test]
async fn messages_get_per_user_sequence_numbers_in_order_and_reach_the_interested() {
    let g = gw();
    let t = platform_token(&user("msg"));
    let (mut cli, mut apps) = cli_and_apps(g, &t, "s1").await;
    let mut other_session = g
        .connect(&t, "clientType=session-scoped&sessionId=s2")
        .await;
    for i in 0..5 {
        cli.send(&json!({"event":"message","data":{"sid":"s1","message":format!("c{i}"),"localId":format!("l{i}")}}).to_string())
            .await;
    }
    // A duplicate localId is a no-op.
    cli.send(r#"{"event":"message","data":{"sid":"s1","message":"again","localId":"l0"}}"#)
        .await;
    // all-interested-in-session: the session's socket and every app, in the order sent.
    for c in apps.iter_mut().chain(std::iter::once(&mut cli)) {
        let mut seqs = Vec::new();
        for i in 0..5 {
            let u = next(c, "update").await;
            let b = &u["data"]["body"];
            assert_eq!(
                (b["t"].as_str(), b["sid"].as_str()),
                (Some("new-message"), Some("s1")),
                "{u}"
            );
            assert_eq!(b["message"]["localId"], format!("l{i}"), "order: {u}");
            assert_eq!(
                b["message"]["content"],
                json!({"t":"encrypted","c":format!("c{i}")})
            );
            assert_eq!(u["data"]["id"].as_str().unwrap().len(), 32);
            seqs.push(u["data"]["seq"].as_u64().unwrap());
        }
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        silent(c, Duration::from_millis(300)).await;
    }
    silent(&mut other_session, QUIET).await;
    // Another user's sequence is its own.
    let t2 = platform_token(&user("msg-other"));
    let mut s = g
        .connect(&t2, "clientType=session-scoped&sessionId=s1")
        .await;
    s.send(r#"{"event":"message","data":{"sid":"s1","message":"x","localId":"l0"}}"#)
        .await;
    assert_eq!(next(&mut s, "update").await["data"]["seq"], 1);
}

#[tokio::test]
async fn versioned_updates_ack_the_sender_only_and_deliver_the_update() {
    let g = gw();
    let t = platform_token(&user("ver"));
    let (mut cli, mut apps) = cli_and_apps(g, &t, "s-v").await;
    cli.send(r#"{"event":"update-metadata","data":{"sid":"s-v","metadata":"m1","expectedVersion":0},"ackId":"u1"}"#).await;
    let ack = next(&mut cli, "ack").await;
    assert_eq!(
        ack,
        json!({"event":"ack","ackId":"u1","ack":{"result":"success","version":1,"metadata":"m1"}})
    );
    let u = next(&mut cli, "update").await;
    assert_eq!(
        u["data"]["body"],
        json!({"t":"update-session","id":"s-v","metadata":{"value":"m1","version":1}})
    );
    for a in apps.iter_mut() {
        assert_eq!(
            next(a, "update").await["data"]["body"]["metadata"]["version"],
            1
        );
    }
    // The same expected version again: a mismatch naming the current one, nothing delivered.
    cli.send(r#"{"event":"update-metadata","data":{"sid":"s-v","metadata":"m2","expectedVersion":0},"ackId":"u2"}"#).await;
    assert_eq!(
        next(&mut cli, "ack").await["ack"],
        json!({"result":"version-mismatch","version":1,"metadata":"m1"})
    );
    for a in apps.iter_mut() {
        silent(a, Duration::from_millis(300)).await;
    }
    // The daemon's state: machine-scoped-only (the apps and this machine).
    let mut m = g
        .connect(&t, "clientType=machine-scoped&machineId=m-v")
        .await;
    m.send(r#"{"event":"machine-update-state","data":{"machineId":"m-v","daemonState":"running","expectedVersion":0},"ackId":"d1"}"#).await;
    assert_eq!(
        next(&mut m, "ack").await["ack"],
        json!({"result":"success","version":1,"daemonState":"running"})
    );
    let u = next(&mut apps[0], "update").await;
    assert_eq!(u["data"]["body"]["t"], "update-machine");
    assert_eq!(
        u["data"]["body"]["daemonState"],
        json!({"value":"running","version":1})
    );
    next(&mut m, "update").await;
    silent(&mut cli, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn the_backend_publishes_to_one_users_sockets_without_their_token() {
    let g = gw();
    let (u, v) = (user("pub"), user("pub-other"));
    let t = platform_token(&u);
    let (mut cli, mut apps) = cli_and_apps(g, &t, "s-p").await;
    let mut stranger = g.connect(&platform_token(&v), "").await;
    let body = json!({"userId": u, "message": {"type": "update", "payload": {"t": "delete-session", "sid": "s-p"}, "timestamp": 5}, "filter": {"type": "user-scoped-only"}});
    let (s, r) = admin(
        g,
        reqwest::Method::POST,
        "/v1/backend/publish",
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["success"].as_bool(), r["delivered"].as_u64()),
        (Some(true), Some(4)),
        "{r}"
    );
    for a in apps.iter_mut() {
        let f = next(a, "update").await;
        assert_eq!(
            f,
            json!({"event":"update","data":{"t":"delete-session","sid":"s-p"},"timestamp":5})
        );
    }
    silent(&mut cli, QUIET).await;
    silent(&mut stranger, QUIET).await;
    // A user's token is not enough, and the body must name the user.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/backend/publish", g.http()))
        .bearer_auth(&t)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (s, r) = admin(
        g,
        reqwest::Method::POST,
        "/v1/backend/publish",
        Some(json!({"message": {"type": "x"}})),
    )
    .await;
    assert_eq!((s, r["error"].as_str()), (400, Some("invalid_body")));
}

#[tokio::test]
async fn usage_limits_are_stored_once_per_user_and_read_back() {
    let g = gw();
    let u = user("usage");
    let t = platform_token(&u);
    let get = || async {
        let r = reqwest::Client::new()
            .get(format!("{}/v1/usage/limits", g.http()))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json::<Value>().await.unwrap()
    };
    let before = get().await;
    assert_eq!(
        (
            before["limitsAvailable"].as_bool(),
            before["weeklyLimits"].clone()
        ),
        (Some(false), json!([]))
    );
    assert!(before["lastUpdatedAt"].is_u64());
    // Two CLI sockets (on whichever shards) write the same per-user object.
    let mut a = g
        .connect(&t, "clientType=session-scoped&sessionId=sa")
        .await;
    let mut b = g
        .connect(&t, "clientType=session-scoped&sessionId=sb")
        .await;
    a.send(r#"{"event":"update-usage-limits","data":{"limitsAvailable":true,"weeklyLimits":[{"pct":10}],"provider":"x"},"ackId":"k1"}"#).await;
    assert_eq!(next(&mut a, "ack").await["ack"], json!({"success": true}));
    let stored = get().await;
    assert_eq!(
        (
            stored["limitsAvailable"].as_bool(),
            stored["provider"].as_str()
        ),
        (Some(true), Some("x"))
    );
    assert_eq!(stored["weeklyLimits"], json!([{"pct": 10}]));
    assert!(
        stored["lastUpdatedAt"].as_u64().unwrap()
            >= before["lastUpdatedAt"].as_u64().unwrap() - 1000
    );
    b.send(r#"{"event":"update-usage-limits","data":{"limitsAvailable":false,"weeklyLimits":[]},"ackId":"k2"}"#).await;
    assert_eq!(next(&mut b, "ack").await["ack"], json!({"success": true}));
    assert_eq!(get().await["limitsAvailable"], false);
    for (data, error) in [
        (
            json!({"weeklyLimits": []}),
            "Invalid payload: limitsAvailable must be boolean",
        ),
        (
            json!({"limitsAvailable": true, "weeklyLimits": 3}),
            "Invalid payload: weeklyLimits must be array",
        ),
    ] {
        a.send(&json!({"event":"update-usage-limits","data":data,"ackId":"bad"}).to_string())
            .await;
        assert_eq!(
            next(&mut a, "ack").await["ack"],
            json!({"success": false, "error": error})
        );
    }
}

async fn hooks_of(g: &Gateway, u: &str) -> Vec<Value> {
    let (s, v) = admin(
        g,
        reqwest::Method::GET,
        &format!("/admin/test/upstream/hooks?userId={u}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["hooks"].as_array().cloned().unwrap_or_default()
}

/// Waits until the upstream recorded hooks whose ids start with each of `prefixes`.
async fn wait_hooks(g: &Gateway, u: &str, prefixes: &[&str]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let hooks = hooks_of(g, u).await;
        let ids: Vec<String> = hooks
            .iter()
            .map(|h| h["id"].as_str().unwrap_or("").to_owned())
            .collect();
        if prefixes
            .iter()
            .all(|p| ids.iter().any(|i| i.starts_with(p)))
        {
            return hooks;
        }
        assert!(
            Instant::now() < deadline,
            "hooks {ids:?} lack one of {prefixes:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn lifecycle_hooks_reach_the_upstream_once_per_socket_and_machine_transition() {
    let g = gw();
    let u = user("hooks");
    let t = platform_token(&u);
    let old = g
        .connect(&t, "clientType=machine-scoped&machineId=m-h")
        .await;
    let id = old.id.clone();
    // An overlapping reconnect, then the last socket closes.
    let new = g
        .connect(&t, "clientType=machine-scoped&machineId=m-h")
        .await;
    let new_id = new.id.clone();
    old.close().await;
    new.close().await;
    let hooks = wait_hooks(
        g,
        &u,
        &[
            &format!("connected:{id}"),
            &format!("disconnected:{id}"),
            &format!("disconnected:{new_id}"),
            "machine-online:",
            "machine-offline:",
        ],
    )
    .await;
    let count = |p: &str| {
        hooks
            .iter()
            .filter(|h| h["id"].as_str().unwrap().starts_with(p))
            .count()
    };
    assert_eq!(
        (count("connected:"), count("disconnected:")),
        (2, 2),
        "{hooks:?}"
    );
    // No flap: one online, one offline, across both sockets.
    assert_eq!(
        (count("machine-online:"), count("machine-offline:")),
        (1, 1),
        "{hooks:?}"
    );
    let c = hooks.iter().find(|h| h["kind"] == "connected").unwrap();
    assert_eq!(
        (
            c["sender"]["clientType"].as_str(),
            c["sender"]["machineId"].as_str()
        ),
        (Some("machine-scoped"), Some("m-h"))
    );
    // The test client closes without a code: 1005, as the runtime reports it.
    let d = hooks.iter().find(|h| h["kind"] == "disconnected").unwrap();
    assert_eq!(d["code"], 1005);
}

#[tokio::test]
async fn a_slow_failing_or_saturated_upstream_answers_the_sender_and_closes_nothing() {
    let g = Gateway::start(
        "upstream-faults",
        &[
            ("SHARD_POLICY", "hash:shards=2"),
            ("UPSTREAM", "service"),
            ("UPSTREAM_TIMEOUT_MS", "800"),
            ("UPSTREAM_MAX_IN_FLIGHT", "3"),
            ("TEST_KNOBS", "on"),
        ],
    );
    let u = user("faults");
    let t = platform_token(&u);
    let mut cli = g
        .connect(&t, "clientType=session-scoped&sessionId=s-f")
        .await;
    let ask = |n: u32| {
        json!({"event":"update-metadata","data":{"sid":"s-f","metadata":"m","expectedVersion":n},"ackId":format!("q{n}")}).to_string()
    };

    // Slow: the sender hears of the timeout, the socket stays open.
    control(&g, 2_000, false).await;
    let started = Instant::now();
    cli.send(&ask(0)).await;
    let ack = next(&mut cli, "ack").await;
    assert_eq!(
        ack["ack"],
        json!({"ok": false, "error": "upstream timeout after 800 ms"})
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    cli.send(r#"{"event":"ping","data":1}"#).await;
    next(&mut cli, "pong").await;

    // Saturated: past UPSTREAM_MAX_IN_FLIGHT unanswered events, refused at once.
    for n in 1..=5 {
        cli.send(&ask(n)).await;
    }
    let mut errors = Vec::new();
    for _ in 0..5 {
        errors.push(
            next(&mut cli, "ack").await["ack"]["error"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        errors
            .iter()
            .filter(|e| e.starts_with("upstream busy: 3 calls in flight"))
            .count(),
        2,
        "{errors:?}"
    );
    assert_eq!(
        errors
            .iter()
            .filter(|e| e.starts_with("upstream timeout"))
            .count(),
        3,
        "{errors:?}"
    );

    // Failing: error acks; events without an ack are counted, not answered.
    control(&g, 0, true).await;
    cli.send(&ask(9)).await;
    assert!(next(&mut cli, "ack").await["ack"]["error"]
        .as_str()
        .unwrap()
        .starts_with("upstream error: status 500"));
    cli.send(r#"{"event":"session-alive","data":{"sid":"s-f","time":1}}"#)
        .await;
    silent(&mut cli, QUIET).await;
    // A hook that failed meanwhile (this connect's) is retried once the upstream recovers.
    let late = g.connect(&t, "").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    control(&g, 0, false).await;
    wait_hooks(&g, &u, &[&format!("connected:{}", late.id)]).await;
    // A timeout does not undo the calls: the slow upstream applied them after all.
    cli.send(&ask(0)).await;
    let ack = next(&mut cli, "ack").await;
    assert_eq!(ack["ack"]["result"], "version-mismatch", "{ack}");
    assert!(ack["ack"]["version"].as_u64().unwrap() >= 1, "{ack}");

    // The outcomes per event are in /metrics and the SLO report.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let r = reqwest::Client::new()
            .get(format!("{}/metrics", g.http()))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let has = |result: &str| {
            r.lines().any(|l| {
                l.starts_with("edge_upstream_requests_total{")
                    && l.contains(r#"event="update-metadata""#)
                    && l.contains(&format!(r#"result="{result}""#))
                    && !l.ends_with(" 0")
            })
        };
        if has("timeout") && has("busy") && has("error") && has("ok") {
            assert!(
                r.contains("edge_upstream_latency_ms_bucket{"),
                "latency histogram"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "upstream counters not in /metrics yet:\n{}",
            r.lines()
                .filter(|l| l.starts_with("edge_upstream"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (_, slo) = admin(&g, reqwest::Method::GET, "/admin/slo", None).await;
    let pro = slo["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "pro")
        .unwrap();
    let ev = pro["upstream"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "update-metadata")
        .unwrap();
    assert!(ev["failures"].as_u64().unwrap() >= 6, "{ev}");
}

/// The sum of `family` samples whose labels include every `(k, v)` of `labels`.
fn metric_sum(text: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let rows: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!(r#"{k}="{v}""#)))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect();
    (!rows.is_empty()).then(|| rows.iter().sum())
}

/// Polls `/metrics` until `ready` holds (60 s at most).
async fn metrics_until(g: &Gateway, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", g.http()))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if ready(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not in /metrics:\n{}",
            text.lines()
                .filter(|l| l.starts_with("edge_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn a_failing_upstream_leaves_a_bounded_outbox_that_counts_what_it_drops() {
    let g = Gateway::start(
        "upstream-outbox",
        &[
            ("SHARD_POLICY", "single"),
            ("UPSTREAM", "service"),
            ("UPSTREAM_TIMEOUT_MS", "3000"),
            ("UPSTREAM_HOOKS_MAX", "16"),
            ("TEST_KNOBS", "on"),
        ],
    );
    let u = user("outbox");
    let t = platform_token(&u);
    // The upstream answers after 30 s: every hook sent meanwhile times out (after 3 s).
    control(&g, 30_000, false).await;
    let first = g.connect(&t, "").await;
    // Its `connected` is on its way now, for 3 s: a socket that comes and goes meanwhile
    // has hooks that never left, and both are coalesced away.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let brief = g.connect(&t, "").await;
    let brief_id = brief.id.clone();
    brief.close().await;
    // 20 more sockets: 21 `connected` hooks for an outbox of 16.
    let mut open = vec![first];
    for _ in 0..20 {
        open.push(g.connect(&t, "").await);
    }
    let hook = |kind: &str| format!("hook:{kind}");
    let connected = hook("connected");
    let disconnected = hook("disconnected");
    let text = metrics_until(&g, "the outbox's losses", |m| {
        metric_sum(
            m,
            "edge_hooks_dropped_total",
            &[("event", &connected), ("reason", "full")],
        ) == Some(5.0)
            && metric_sum(m, "edge_hooks_coalesced_total", &[("event", &disconnected)]) == Some(1.0)
    })
    .await;
    assert_eq!(
        metric_sum(
            &text,
            "edge_hooks_coalesced_total",
            &[("event", &connected)]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_sum(&text, "edge_hooks_dropped_total", &[("reason", "expired")]),
        Some(0.0)
    );
    // The upstream is back: each of the 16 hooks kept is delivered (at least once, and
    // deleted after its 2xx), none of those dropped.
    control(&g, 0, false).await;
    metrics_until(&g, "16 delivered connected hooks", |m| {
        metric_sum(
            m,
            "edge_upstream_requests_total",
            &[("event", &connected), ("result", "ok")],
        ) == Some(16.0)
    })
    .await;
    let ids: Vec<String> = hooks_of(&g, &u)
        .await
        .iter()
        .map(|h| h["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        !ids.iter().any(|i| i.ends_with(&brief_id)),
        "the brief socket's hooks reached the upstream: {ids:?}"
    );
    drop(open);
}
