//! Observability on real workerd: `/metrics` from real traffic (checked by `promtool check
//! metrics` where installed), `/admin/slo`, `/admin/stats`, the per-user series cap, and
//! SLO-aware admission driven by latency injected into chosen shards.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{connect_many, user, Client, Gateway, ADMIN};

fn obs_gw() -> &'static Gateway {
    Gateway::shared(
        "obs",
        &[
            ("SHARD_POLICY", "hash:shards=auto"),
            ("METRICS_MAX_USER_SERIES", "2"),
        ],
    )
}

async fn admin_get(g: &Gateway, path: &str, bearer: &str) -> (u16, String, String) {
    let r = reqwest::Client::new()
        .get(format!("{}{path}", g.http()))
        .bearer_auth(bearer)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (status, ctype, r.text().await.unwrap())
}

/// Sample lines `name{labels} value` of one family, with their labels.
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let mut map = BTreeMap::new();
            // Label values here never contain `",` so a plain split is enough.
            for kv in labels.split("\",").filter(|s| !s.is_empty()) {
                let (k, v) = kv.split_once("=\"")?;
                map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
            }
            Some((map, value.parse().ok()?))
        })
        .collect()
}

fn total(text: &str, name: &str, label: (&str, &str)) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(l, _)| l.get(label.0).map(String::as_str) == Some(label.1))
        .map(|(_, v)| v)
        .sum()
}

/// Polls `/metrics` until `ready` holds: reports travel shard -> directory -> registry
/// on a few seconds' debounce.
async fn metrics_when(g: &Gateway, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let (status, ctype, body) = admin_get(g, "/metrics", ADMIN).await;
        assert_eq!(status, 200, "{body}");
        assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
        if ready(&body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the traffic:\n{body}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test]
async fn metrics_slo_and_admin_stats_reflect_real_traffic() {
    let g = obs_gw();
    let u = user("obs");
    let t = g.token(&u, "tiny").await;
    let mut socks: Vec<Client> = connect_many(g, &t, 5, 5, |_| String::new())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // One refusal at the tier limit (5).
    assert_eq!(g.try_connect(&t, "").await.err().unwrap().0, 429);
    for c in socks.iter_mut() {
        for _ in 0..3 {
            c.send(r#"{"event":"ping","data":{}}"#).await;
            c.expect_event("pong").await;
        }
    }
    socks[0]
        .send(r#"{"event":"broadcast","data":"hello"}"#)
        .await;
    let (status, _) = g.broadcast(&t, &json!({"message": {"type": "m"}})).await;
    assert_eq!(status, 200);
    g.stats(&t).await;

    let me = ("user_id", u.as_str());
    let text = metrics_when(g, |m| {
        total(m, "do_connections_total", me) == 5.0
            && total(m, "ws_message_latency_count", me) >= 15.0
            && total(m, "do_response_time_count", me) >= 1.0
            && total(m, "ws_broadcast_delivery_time_count", me) >= 2.0
    })
    .await;
    assert!(total(&text, "ws_connection_success", me) >= 5.0);
    let errors = samples(&text, "ws_connection_errors");
    assert!(errors.iter().any(|(l, v)| l.get("user_id") == Some(&u)
        && l.get("reason").map(String::as_str) == Some("tier_limit")
        && *v >= 1.0));
    assert!(total(&text, "ws_connection_time_count", me) >= 5.0);
    assert!(total(&text, "do_memory_usage_bytes", me) > 0.0);
    for (labels, _) in samples(&text, "do_connections_total") {
        for k in ["user_id", "shard", "tier", "policy"] {
            assert!(labels.contains_key(k), "{labels:?}");
        }
    }
    promtool_check(&text);
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-logs/metrics.txt");
    std::fs::write(out, &text).unwrap();

    // The SLO report covers every configured tier, and sees this user's connects.
    let (status, _, body) = admin_get(g, "/admin/slo", ADMIN).await;
    assert_eq!(status, 200, "{body}");
    let slo: Value = serde_json::from_str(&body).unwrap();
    let tiers = slo["tiers"].as_array().unwrap();
    let names: Vec<&str> = tiers.iter().map(|t| t["tier"].as_str().unwrap()).collect();
    for n in ["free", "pro", "enterprise", "load", "tiny"] {
        assert!(names.contains(&n), "{names:?}");
    }
    let tiny = tiers.iter().find(|t| t["tier"] == "tiny").unwrap();
    assert!(
        tiny["availability"]["successes"].as_u64().unwrap() >= 5,
        "{tiny}"
    );
    assert!(
        tiny["availability"]["rejectedTierLimit"].as_u64().unwrap() >= 1,
        "{tiny}"
    );
    for k in [
        "status",
        "latency",
        "errorBudget",
        "burnRate",
        "rejectionRate",
    ] {
        assert!(tiny.get(k).is_some(), "{k}: {tiny}");
    }

    let (status, _, body) = admin_get(g, "/admin/stats", ADMIN).await;
    assert_eq!(status, 200);
    let st: Value = serde_json::from_str(&body).unwrap();
    assert!(st["totals"]["connections"].as_u64().unwrap() >= 5, "{st}");
    assert!(st["topUsers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["userId"] == u.as_str() && r["connections"] == 5));

    // User tokens never read admin data.
    for path in ["/metrics", "/admin/slo", "/admin/stats"] {
        let (status, _, _) = admin_get(g, path, &t).await;
        assert_eq!(status, 401, "{path}");
    }

    // Closes reach the gauges within a report or two, not at the next reconcile (60 s).
    for c in socks.drain(..3) {
        c.close().await;
    }
    metrics_when(g, |m| total(m, "do_connections_total", me) == 2.0).await;
    for c in socks.drain(..) {
        c.close().await;
    }
    metrics_when(g, |m| total(m, "do_connections_total", me) == 0.0).await;
}

#[tokio::test]
async fn per_user_series_are_capped() {
    let g = obs_gw();
    // METRICS_MAX_USER_SERIES=2: a third user with sockets is folded into `_other`.
    let mut keep = Vec::new();
    let mut ids = Vec::new();
    for n in 0..3 {
        let u = user(&format!("cap{n}"));
        let t = g.token(&u, "pro").await;
        keep.extend(connect_many(g, &t, 3 + n, 3, |_| String::new()).await);
        ids.push(u);
    }
    let text = metrics_when(g, |m| {
        samples(m, "ws_exposition_folded_users")
            .first()
            .is_some_and(|(_, v)| *v >= 1.0)
            && ids
                .iter()
                .filter(|u| total(m, "do_connections_total", ("user_id", u)) > 0.0)
                .count()
                >= 1
    })
    .await;
    let users: std::collections::BTreeSet<String> = samples(&text, "do_connections_total")
        .into_iter()
        .filter_map(|(l, _)| l.get("user_id").cloned())
        .collect();
    assert!(users.len() <= 3, "two users and `_other`: {users:?}");
    assert!(users.contains("_other"), "{users:?}");
}

/// Runs `promtool check metrics` when installed (make check-ops installs it): the only
/// findings allowed are the five the guide's metric names cause.
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIPPED promtool check metrics: promtool is not installed");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(matches!(out.status.code(), Some(0) | Some(3)), "{said}");
    for line in said.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            line.contains("_total\" suffix") || line.contains("abbreviated units"),
            "unexpected promtool finding: {line}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// SLO-aware admission

fn slo_gw() -> &'static Gateway {
    Gateway::shared(
        "slo",
        &[("SHARD_POLICY", "hash:shards=2"), ("TEST_KNOBS", "on")],
    )
}

async fn set_latency(g: &Gateway, shard: &str, ms: u32) {
    let r = reqwest::Client::new()
        .post(format!("{}/admin/test/shard", g.http()))
        .bearer_auth(ADMIN)
        .json(&json!({"shard": shard, "latencyMs": ms}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// Sockets of one user on both shards of `hash:shards=2`, by shard.
async fn on_both_shards(g: &Gateway, t: &str) -> BTreeMap<String, Client> {
    let mut by_shard = BTreeMap::new();
    for _ in 0..40 {
        let c = g.connect(t, "").await;
        let shard = c.connected["data"]["shard"].as_str().unwrap().to_owned();
        by_shard.entry(shard).or_insert(c);
        if by_shard.len() == 2 {
            return by_shard;
        }
    }
    panic!("hash:shards=2 never used both shards");
}

/// Makes a shard slow: every frame it handles takes `ms`, and 25 of them make its
/// recent p95 exactly that.
async fn slow_down(g: &Gateway, shard: &str, c: &mut Client, ms: u32) {
    set_latency(g, shard, ms).await;
    for _ in 0..25 {
        c.send(r#"{"event":"ping","data":{}}"#).await;
    }
    for _ in 0..25 {
        c.expect_event("pong").await;
    }
}

#[tokio::test]
async fn slow_shards_take_no_connects_while_another_is_healthy() {
    let g = slo_gw();
    let u = user("slo-spill");
    let t = g.token(&u, "free").await;
    let mut socks = on_both_shards(g, &t).await;
    let names: Vec<String> = socks.keys().cloned().collect();
    let (slow, healthy) = (names[0].clone(), names[1].clone());
    slow_down(g, &slow, socks.get_mut(&slow).unwrap(), 700).await;
    // Every new connect lands on the healthy shard, even those that prefer the slow one.
    // Each connect prefers the slow shard with probability 1/2: 8 connects all missing it
    // (1 in 256) made this test flaky, so connect on, up to 16 (the free tier allows 20
    // sockets), until the slow shard has refused one.
    let refused_by_slow = |st: &Value| -> u64 {
        st["shards"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["name"] == slow.as_str())
            .map(|r| r["rejected"].as_u64().unwrap())
            .sum()
    };
    let mut fresh = Vec::new();
    let mut st = Value::Null;
    for i in 0..16 {
        let c = g.connect(&t, "").await;
        assert_eq!(c.connected["data"]["shard"], healthy.as_str());
        fresh.push(c);
        if i >= 7 {
            st = g.stats(&t).await;
            if refused_by_slow(&st) >= 1 {
                break;
            }
        }
    }
    let refused = refused_by_slow(&st);
    assert!(
        refused >= 1,
        "the slow shard refused the connects that preferred it: {st}"
    );
    set_latency(g, &slow, 0).await;
}

#[tokio::test]
async fn when_every_shard_is_slow_lower_tiers_are_shed_first() {
    let g = slo_gw();
    // The test tiers by limit: tiny 5 < free 20 < pro 100 < enterprise 500 < load 1000,
    // shed past 1x, 2x, 4x, 8x over the objective, the top tier never. So at these delays
    // the two lowest tiers are shed while pro (3x) and enterprise (2.5x) are still admitted.
    for (tier, slow_ms, shed) in [
        ("tiny", 600, true),
        ("free", 1_100, true),
        ("pro", 600, false),
        ("enterprise", 250, false),
    ] {
        let u = user(&format!("slo-{tier}"));
        let t = g.token(&u, tier).await;
        let mut socks = on_both_shards(g, &t).await;
        for (shard, c) in socks.iter_mut() {
            slow_down(g, shard, c, slow_ms).await;
        }
        match g.try_connect(&t, "").await {
            Err((status, body)) => {
                assert!(shed, "{tier} was refused: {status} {body}");
                assert_eq!(status, 503, "{body}");
                let v: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"], "shed", "{v}");
            }
            Ok(c) => {
                assert!(!shed, "{tier} was admitted");
                assert!(socks.contains_key(c.connected["data"]["shard"].as_str().unwrap()));
            }
        }
        for shard in socks.keys() {
            set_latency(g, shard, 0).await;
        }
    }
}

/// One user's push as a directory sends it: a shard's gauges, three accepted connects and
/// an hour of latency samples in every series (about 4 KB), numbered `(sender, seq)`.
fn registry_push(user: &str, sender: u64, seq: u64, now_ms: u64) -> Value {
    use observability::metrics::{Outcome, Series, ShardGauges, UserMetrics};
    let mut u = UserMetrics::new(user, "pro", "single");
    u.set_gauges(ShardGauges {
        shard: format!("cm:{user}"),
        tier: "pro".into(),
        policy: "single".into(),
        connections: 1,
        ..ShardGauges::default()
    });
    for _ in 0..3 {
        u.observed.record_outcome(now_ms, "pro", Outcome::Success);
    }
    for m in 0..12u64 {
        for (i, s) in Series::ALL.into_iter().enumerate() {
            for k in 0..6u64 {
                let ms = (1 + k * 7 + i as u64 * 13 + m) as f64 * 1.9;
                u.observed
                    .record_latency(now_ms - m * 300_000, "pro", s, ms);
            }
        }
    }
    let mut v = serde_json::to_value(&u).unwrap();
    v["push"] = json!({"sender": sender, "seq": seq});
    v
}

/// `/admin/stats` totals.
async fn stats(g: &Gateway) -> Value {
    let (s, _, body) = admin_get(g, "/admin/stats", ADMIN).await;
    assert_eq!(s, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["totals"].clone()
}

async fn admin_post(g: &Gateway, path: &str, body: &Value) -> Value {
    let (s, v) = g.post_json(path, ADMIN, body).await;
    assert_eq!(s, 200, "{path}: {v}");
    v
}

#[tokio::test]
async fn the_registry_keeps_one_value_per_user_and_applies_a_retried_push_once() {
    let g = Gateway::start(
        "registry-bounds",
        &[("REGISTRY_SHARDS", "1"), ("TEST_KNOBS", "on")],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // 600 users on one registry object: their metrics are past 2 MB together, the value
    // limit of a SQLite-backed object.
    let n = 600u64;
    let pushes: Vec<Value> = (0..n)
        .map(|i| registry_push(&format!("reg-{i}"), 1_000 + i, 1, now))
        .collect();
    let bytes: usize = pushes.iter().map(|p| p.to_string().len()).sum();
    eprintln!("{n} users' pushes: {bytes} bytes");
    assert!(bytes > 2_000_000, "{bytes}");
    for chunk in pushes.chunks(100) {
        let r = admin_post(&g, "/admin/test/registry/ingest", &json!({"pushes": chunk})).await;
        assert_eq!(r["failed"], json!([]), "{r}");
        assert_eq!(r["ok"], chunk.len(), "{r}");
    }
    // One value per user, each far from the limit.
    let (s, _, shape) = admin_get(&g, "/admin/test/registry/storage", ADMIN).await;
    assert_eq!(s, 200, "{shape}");
    let shape: Value = serde_json::from_str(&shape).unwrap();
    let st = &shape["registries"][0]["storage"];
    eprintln!("registry storage: {st}");
    assert_eq!(st["userKeys"], n, "{st}");
    assert_eq!(st["legacy"], false, "{st}");
    assert!(
        st["largestValueBytes"].as_u64().unwrap() < 64 * 1024,
        "{st}"
    );
    let t = stats(&g).await;
    assert_eq!(
        (
            t["users"].as_u64(),
            t["connections"].as_u64(),
            t["successes"].as_u64()
        ),
        (Some(n), Some(n), Some(3 * n)),
        "{t}"
    );
    // The directory never heard the answer and sends the same push again: applied once.
    let again = admin_post(
        &g,
        "/admin/test/registry/ingest",
        &json!({"pushes": [pushes[0].clone()]}),
    )
    .await;
    assert_eq!(again["failed"], json!([]), "{again}");
    assert_eq!(stats(&g).await["successes"].as_u64(), Some(3 * n));
    // Its next push counts.
    let next = registry_push("reg-0", 1_000, 2, now);
    admin_post(
        &g,
        "/admin/test/registry/ingest",
        &json!({"pushes": [next]}),
    )
    .await;
    assert_eq!(stats(&g).await["successes"].as_u64(), Some(3 * n + 3));
}

/// A quiet user's home is not woken every metrics cycle: it pushes what its socket did,
/// looks once more at the next cycle (set ahead while sockets are open), finds nothing and
/// stops. Its event count (requests, socket messages, alarms) over six idle cycles
/// (`METRICS_PUSH_MS` 1 s here) shows it: a home woken every cycle counts one alarm each.
#[tokio::test]
async fn a_quiet_users_home_stops_waking_for_metrics() {
    let g = obs_gw();
    let u = user("quiet");
    let t = g.token(&u, "pro").await;
    let mut c = g.connect(&t, "").await;
    c.send(r#"{"event":"ping","data":{}}"#).await;
    c.expect_event("pong").await;
    let events = |st: &Value| -> u64 {
        st["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["events"].as_u64().unwrap())
            .sum()
    };
    // Let the connect's push and the cycle after it pass.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = events(&g.stats_now(&t).await);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let st = g.stats_now(&t).await;
    let woke = events(&st) - before;
    eprintln!(
        "events over six idle cycles: {woke} ({} then {})",
        before,
        events(&st)
    );
    // The stats call before, its push and the one look after it, the stats call now.
    assert!(
        woke <= 4,
        "the home woke {woke} times in six idle cycles: {st}"
    );
    assert_eq!(st["totalConnections"], 1, "{st}");
    c.close().await;
}
