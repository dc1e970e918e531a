//! Sharding benchmark against real workerd (`make bench-sharding`), not a timed test.
//!
//! 1. Fan-out: broadcast delivery to 600 sockets of one user held by 1, 4 and 16 hash
//!    shards (the shard cap raised so one shard can hold all 600), in one run.
//! 2. Per policy (default cap 200): connect p95, broadcast-to-all p95, stats p95 and
//!    directory round trips per connect while the user churns at a steady count.
//!
//! Delivery time is measured at each receiving socket from the moment the broadcast was
//! sent. Results go to stdout and `docs/results/sharding-<date>.md`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[allow(dead_code)]
#[path = "../tests/e2e/support.rs"]
mod support;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{sessions, user, user_scoped, Client, Gateway};

const SOCKETS: usize = 600;
const BROADCASTS: usize = 20;
const STATS_CALLS: usize = 20;
const CHURN: usize = 300;
/// Set BENCH_ONLY=fanout to run only the fan-out part.
fn only_fanout() -> bool {
    std::env::var("BENCH_ONLY").is_ok_and(|v| v == "fanout")
}

#[derive(Default)]
struct Measured {
    held: usize,
    refused: usize,
    shards: u64,
    connect_ms: Vec<f64>,
    deliver_ms: Vec<f64>,
    /// How long the broadcast HTTP call took to answer.
    call_ms: Vec<f64>,
    stats_ms: Vec<f64>,
    churn_round_trips_per_connect: Option<f64>,
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn open(g: &Gateway, t: &str, query: &str, m: &mut Measured) -> Option<Client> {
    let start = Instant::now();
    match g.try_connect(t, query).await {
        Ok(c) => {
            m.connect_ms.push(ms(start.elapsed()));
            Some(c)
        }
        Err(_) => {
            m.refused += 1;
            None
        }
    }
}

async fn measure(g: &Gateway, query: Query, churn: bool) -> Measured {
    let mut m = Measured::default();
    let u = user("bench");
    let t = g.token(&u, "load").await;
    let mut clients: Vec<Client> = Vec::with_capacity(SOCKETS);
    // 20 connects in flight at a time, each timed on its own.
    for chunk in (0..SOCKETS).collect::<Vec<_>>().chunks(20) {
        let mut local: Vec<Measured> = chunk.iter().map(|_| Measured::default()).collect();
        let opened =
            futures_util::future::join_all(chunk.iter().zip(local.iter_mut()).map(|(&i, lm)| {
                let q = query(i);
                let t = t.clone();
                async move { open(g, &t, &q, lm).await }
            }))
            .await;
        for lm in local {
            m.connect_ms.extend(lm.connect_ms);
            m.refused += lm.refused;
        }
        clients.extend(opened.into_iter().flatten());
    }
    m.held = clients.len();

    for k in 0..BROADCASTS + 3 {
        let body = json!({"message": {"type": "bench", "payload": {"k": k}}});
        let sent = Instant::now();
        let post = async {
            let r = g.broadcast(&t, &body).await;
            (r, sent.elapsed())
        };
        let readers = futures_util::future::join_all(clients.iter_mut().map(|c| async move {
            let f = c.expect_event("bench").await;
            assert_eq!(f["data"]["k"], k);
            sent.elapsed()
        }));
        let (((status, r), call), took) = tokio::join!(post, readers);
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["delivered"], clients.len(), "{r}");
        m.shards = r["shards"].as_u64().unwrap_or(0);
        // The first three warm the shards up.
        if k >= 3 {
            m.deliver_ms.extend(took.into_iter().map(ms));
            m.call_ms.push(ms(call));
        }
    }

    for _ in 0..STATS_CALLS {
        let start = Instant::now();
        let st = g.stats(&t).await;
        m.stats_ms.push(ms(start.elapsed()));
        assert_eq!(st["totalConnections"], clients.len(), "{st}");
    }

    if churn {
        let before = g.stats(&t).await;
        let mut replaced = 0usize;
        for i in 0..CHURN {
            // Close one, open one: the count stays steady (and under the cap).
            let k = (i * 7919) % clients.len();
            clients.swap_remove(k).close().await;
            if let Some(c) = open(g, &t, &query(k), &mut Measured::default()).await {
                clients.push(c);
                replaced += 1;
            }
        }
        let after = g.stats(&t).await;
        let d = |k: &str| after[k].as_u64().unwrap() - before[k].as_u64().unwrap();
        let connects = d("connectsAccepted");
        if connects > 0 && replaced > 0 {
            m.churn_round_trips_per_connect =
                Some(d("directoryRoundTrips") as f64 / connects as f64);
        }
    }
    for c in clients {
        drop(c);
    }
    m
}

/// The connect query of socket `i`.
type Query = fn(usize) -> String;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut out = String::new();
    writeln!(out, "# Sharding benchmark, {date}\n").unwrap();
    writeln!(
        out,
        "Produced by `make bench-sharding` (`cargo bench --bench sharding`) against local workerd \
         (`wrangler dev`) on this machine: {} cores, one process for the clients and one for \
         workerd, all on 127.0.0.1. Delivery is measured at each receiving socket from the \
         moment the HTTP broadcast was sent; {BROADCASTS} broadcasts after 3 warm-up ones.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
    .unwrap();

    writeln!(
        out,
        "## Fan-out to {SOCKETS} sockets over 1, 4 and 16 shards\n"
    )
    .unwrap();
    writeln!(
        out,
        "`hash:shards=N`, `SHARD_MAX_CONNECTIONS=1000` so one shard can hold all {SOCKETS}.\n"
    )
    .unwrap();
    writeln!(
        out,
        "| shards | delivery p50 (ms) | delivery p95 (ms) | delivery p99 (ms) | vs 1 shard (p95) | broadcast call p95 (ms) |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|").unwrap();
    let mut base = None;
    for n in [1u32, 4, 16] {
        eprintln!("fan-out: {n} shard(s)...");
        let policy = format!("hash:shards={n}");
        let g = Gateway::start(
            &format!("bench-fanout-{n}"),
            &[
                ("SHARD_POLICY", policy.as_str()),
                ("SHARD_MAX_CONNECTIONS", "1000"),
            ],
        );
        let m = measure(&g, user_scoped, false).await;
        let p95 = pct(&m.deliver_ms, 95.0);
        let b = *base.get_or_insert(p95);
        writeln!(
            out,
            "| {} | {:.1} | {:.1} | {:.1} | {:.2}x | {:.1} |",
            m.shards,
            pct(&m.deliver_ms, 50.0),
            p95,
            pct(&m.deliver_ms, 99.0),
            p95 / b,
            pct(&m.call_ms, 95.0)
        )
        .unwrap();
    }

    if only_fanout() {
        println!("{out}");
        return;
    }
    writeln!(out, "\n## Per policy, {SOCKETS} sockets of one `load`-tier user (limit 1000), cap 200 per shard\n").unwrap();
    writeln!(
        out,
        "| policy | held / refused | shards | connect p95 (ms) | broadcast-to-all p95 (ms) | stats p95 (ms) | directory round trips per connect ({CHURN} churn cycles) |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|").unwrap();
    let policies: [(&str, Query); 4] = [
        ("single", user_scoped),
        ("hash:shards=auto", user_scoped),
        ("session", sessions),
        ("rotate:period=1d,drain=1m,shards=auto", user_scoped),
    ];
    for (spec, query) in policies {
        eprintln!("policy {spec}...");
        let g = Gateway::start("bench-policy", &[("SHARD_POLICY", spec)]);
        let m = measure(&g, query, true).await;
        writeln!(
            out,
            "| `{spec}` | {} / {} | {} | {:.1} | {:.1} | {:.1} | {} |",
            m.held,
            m.refused,
            m.shards,
            pct(&m.connect_ms, 95.0),
            pct(&m.deliver_ms, 95.0),
            pct(&m.stats_ms, 95.0),
            m.churn_round_trips_per_connect
                .map_or("n/a".into(), |r| format!("{r:.3}"))
        )
        .unwrap();
    }
    writeln!(
        out,
        "\n`session` places 60 user-scoped sockets on the base shard and 540 session-scoped ones \
         over six session shards. `single` holds at most 200 (the cap), the seed's failure."
    )
    .unwrap();
    println!("{out}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/results");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("sharding-{date}.md"));
    std::fs::write(&path, out).unwrap();
    eprintln!("wrote {}", path.display());
}
