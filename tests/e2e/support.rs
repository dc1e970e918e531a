//! The harness: real `wrangler dev` (workerd) instances on free loopback ports, started once
//! per configuration per test run, and real WebSocket and HTTP clients.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_gateway::auth::{token, MintClaims, TokenKeys};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream as TokioTcp;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The platform's master secret for the test gateways (tokens and tickets derive from it).
pub const SECRET: &str = "e2e-master-secret-0123456789abcdef";
/// The tier of users without an override on the test gateways.
pub const DEFAULT_TIER: &str = "pro";
pub const ADMIN: &str = "e2e-admin-token-0123456789abcdef";
/// How long stats may lag a change on a shard other than the user's home: the report gap
/// for counts (250 ms) plus the report's own trip, generous for a loaded CI machine.
pub const STATS_SETTLE: Duration = Duration::from_millis(500);

/// Tiers for tests: the seed's, plus `load` big enough for 600 sockets and `tiny` for limits.
pub const TEST_TIERS: &str = r#"{"free":{"limit":20,"latencyP95Ms":500,"availability":99.5},"pro":{"limit":100,"latencyP95Ms":200,"availability":99.9},"enterprise":{"limit":500,"latencyP95Ms":100,"availability":99.95},"load":{"limit":1000,"latencyP95Ms":500,"availability":99.5},"tiny":{"limit":5,"latencyP95Ms":500,"availability":99.5}}"#;

pub struct Gateway {
    pub name: String,
    pub port: u16,
    vars: Vec<(String, String)>,
    state_dir: PathBuf,
    child: Mutex<Option<Child>>,
    /// Wait for `/health` to say 200 (or, for a broken config, for any answer).
    healthy: bool,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Gateway {
    /// The gateway for `name`, started on first use with `vars` (plus test secrets and
    /// tiers) and shared by every test of this run that asks for the same name.
    pub fn shared(name: &str, vars: &[(&str, &str)]) -> &'static Gateway {
        static ALL: OnceLock<Mutex<HashMap<String, &'static Gateway>>> = OnceLock::new();
        let all = ALL.get_or_init(|| Mutex::new(HashMap::new()));
        let mut map = all.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = map.get(name) {
            return g;
        }
        let g: &'static Gateway = Box::leak(Box::new(Gateway::start(name, vars)));
        map.insert(name.to_owned(), g);
        g
    }

    /// A gateway of this test's own, stopped when dropped.
    pub fn start(name: &str, vars: &[(&str, &str)]) -> Gateway {
        Self::build(name, vars, true)
    }

    /// A gateway with a configuration expected to be invalid: up once `/health` answers.
    pub fn start_unhealthy(name: &str, vars: &[(&str, &str)]) -> Gateway {
        Self::build(name, vars, false)
    }

    fn build(name: &str, vars: &[(&str, &str)], healthy: bool) -> Gateway {
        let mut all: Vec<(String, String)> = vec![
            ("HAPPY_MASTER_SECRET".into(), SECRET.into()),
            ("ADMIN_TOKEN".into(), ADMIN.into()),
            ("TIERS".into(), TEST_TIERS.into()),
            // Homes push their users' metrics to the registry every second, not every 10 s.
            ("METRICS_PUSH_MS".into(), "1000".into()),
        ];
        for (k, v) in vars {
            all.retain(|(ek, _)| ek != k);
            all.push(((*k).into(), (*v).into()));
        }
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let state_dir = root()
            .join("target/e2e-state")
            .join(format!("{name}-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&state_dir).unwrap();
        let g = Gateway {
            name: name.to_owned(),
            port: 0,
            vars: all,
            state_dir,
            child: Mutex::new(None),
            healthy,
        };
        g.launch()
    }

    fn launch(mut self) -> Gateway {
        self.port = free_port();
        self.prepare_app();
        self.spawn();
        self
    }

    /// A private copy of the built Worker with `wrangler.toml` minus its `[build]` table:
    /// `wrangler dev` on the repository config watches `src/` and reloads (dropping every
    /// socket) on each edit, and would pick up a rebuild in the middle of a run.
    fn prepare_app(&self) {
        let app = self.state_dir.join("app");
        let build = app.join("build");
        std::fs::create_dir_all(build.join("worker")).unwrap();
        for f in [
            "index.js",
            "index_bg.wasm",
            "package.json",
            "worker/shim.mjs",
        ] {
            let from = root().join("build").join(f);
            if from.exists() {
                std::fs::copy(&from, build.join(f)).unwrap();
            }
        }
        // The local D1 database's migrations (the RevokedToken table) sit beside the config.
        let migrations = app.join("migrations");
        std::fs::create_dir_all(&migrations).unwrap();
        for e in std::fs::read_dir(root().join("migrations")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), migrations.join(e.file_name())).unwrap();
        }
        let config = std::fs::read_to_string(root().join("wrangler.toml")).unwrap();
        let mut skip = false;
        let kept: Vec<&str> = config
            .lines()
            .filter(|l| {
                if l.starts_with('[') {
                    skip = l.trim() == "[build]";
                }
                !skip
            })
            .collect();
        std::fs::write(app.join("wrangler.toml"), kept.join("\n")).unwrap();
        if self.with_upstream() {
            // The reference upstream beside the gateway, its test controls on.
            let up = self.state_dir.join("upstream");
            std::fs::create_dir_all(up.join("src")).unwrap();
            let from = root().join("examples/upstream");
            std::fs::copy(from.join("src/index.js"), up.join("src/index.js")).unwrap();
            let toml = std::fs::read_to_string(from.join("wrangler.toml")).unwrap();
            std::fs::write(
                up.join("wrangler.toml"),
                toml.replace(r#"TEST_CONTROL = "off""#, r#"TEST_CONTROL = "on""#),
            )
            .unwrap();
        }
    }

    /// A gateway configured with `UPSTREAM=service` runs the reference upstream beside it.
    fn with_upstream(&self) -> bool {
        self.vars
            .iter()
            .any(|(k, v)| k == "UPSTREAM" && v == "service")
    }

    /// `wrangler d1 <args> DB --local` against this gateway's local database. The running
    /// gateway reads the same SQLite file (the revocation feed polls it), so a write can meet
    /// `SQLITE_BUSY`: retried a few times, as a client of a shared database would.
    fn wrangler_d1(&self, args: &[&str]) {
        let mut last = String::new();
        for attempt in 0..5u64 {
            let out = Command::new(root().join("node_modules/.bin/wrangler"))
                .arg("d1")
                .args(args)
                .args(["DB", "--local", "--config"])
                .arg(self.state_dir.join("app/wrangler.toml"))
                .arg("--persist-to")
                .arg(&self.state_dir)
                .current_dir(self.state_dir.join("app"))
                .env("WRANGLER_SEND_METRICS", "false")
                .env("CI", "1")
                .output()
                .expect("run wrangler d1");
            if out.status.success() {
                return;
            }
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !last.contains("SQLITE_BUSY") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200 * (attempt + 1)));
        }
        panic!("wrangler d1 {args:?} failed: {last}");
    }

    /// Applies the D1 migrations to this gateway's local database (idempotent).
    fn migrate(&self) {
        self.wrangler_d1(&["migrations", "apply"]);
    }

    /// Runs SQL against this gateway's local D1 database (e.g. to revoke a token).
    pub fn d1(&self, sql: &str) {
        self.wrangler_d1(&["execute", "--command", sql]);
    }

    /// Starts wrangler dev. Two gateways starting at once can pick the same free port (it is
    /// free until bound): one whose workerd cannot bind is started again on new ports.
    fn spawn(&mut self) {
        self.migrate();
        for attempt in 1..=3 {
            let log = self.start_wrangler();
            if self.wait_healthy(Duration::from_secs(90), &log) {
                return;
            }
            assert!(attempt < 3, "gateway {} could not bind 3 times", self.name);
            self.stop();
            self.port = free_port();
        }
    }

    /// Starts wrangler dev on `self.port`; answers its log's path.
    fn start_wrangler(&self) -> PathBuf {
        let logs = root().join("target/e2e-logs");
        std::fs::create_dir_all(&logs).unwrap();
        let log_path = logs.join(format!("{}-{}.log", self.name, self.port));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(root().join("tests/support/watchdog.sh"));
        cmd.arg(std::process::id().to_string())
            .arg(root().join("node_modules/.bin/wrangler"))
            .arg("dev")
            .arg("--config")
            .arg(self.state_dir.join("app/wrangler.toml"));
        if self.with_upstream() {
            cmd.arg("--config")
                .arg(self.state_dir.join("upstream/wrangler.toml"));
        }
        cmd.args(["--ip", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--inspector-port")
            .arg(free_port().to_string())
            .arg("--persist-to")
            .arg(&self.state_dir)
            .arg("--show-interactive-dev-session=false")
            .arg("--log-level=warn");
        for (k, v) in &self.vars {
            cmd.arg("--var").arg(format!("{k}:{v}"));
        }
        cmd.current_dir(self.state_dir.join("app"))
            .env("WRANGLER_SEND_METRICS", "false")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("spawn wrangler dev");
        *self.child.lock().unwrap() = Some(child);
        log_path
    }

    /// Waits until the gateway answers `/health`; `false` when its workerd could not bind
    /// a port (see `spawn`).
    fn wait_healthy(&self, limit: Duration, log: &Path) -> bool {
        let start = Instant::now();
        loop {
            match http_get_blocking(self.port, "/health") {
                Some((200, _)) => return true,
                Some(_) if !self.healthy => return true,
                _ => {}
            }
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains("Address already in use") {
                return false;
            }
            assert!(
                start.elapsed() < limit,
                "gateway {} did not become healthy on port {} within {limit:?}; see target/e2e-logs",
                self.name,
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills workerd and starts it again on the same port and state directory,
    /// optionally with changed vars (a redeploy with another config).
    pub fn restart(&mut self, vars: &[(&str, &str)]) {
        self.stop();
        for (k, v) in vars {
            self.vars.retain(|(ek, _)| ek != k);
            self.vars.push(((*k).into(), (*v).into()));
        }
        // The old workerd may hold the port a moment longer; take a new one if so.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpListener::bind(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                self.port = free_port();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spawn();
    }

    fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            // The watchdog kills wrangler's whole process group on TERM.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }

    /// The Durable Objects of `class` in this gateway's local state: each object's name and
    /// how many storage entries it holds (workerd keeps one SQLite file per object, with the
    /// key-value storage in `_cf_KV`; an object whose storage was deleted has none).
    pub fn objects(&self, class: &str) -> Vec<(String, u64)> {
        let dir = self
            .state_dir
            .join("v3/do")
            .join(format!("edge-gateway-{class}"));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().and_then(|x| x.to_str()) != Some("sqlite") {
                continue;
            }
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
            let Ok(db) = rusqlite::Connection::open_with_flags(&path, flags) else {
                continue;
            };
            let name: String = db
                .query_row("SELECT name FROM __miniflare_do_name", [], |r| r.get(0))
                .unwrap_or_default();
            let rows: i64 = db
                .query_row("SELECT count(*) FROM _cf_KV", [], |r| r.get(0))
                .unwrap_or(0);
            out.push((name, rows.unsigned_abs()));
        }
        out
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn connect(&self, token: &str, query: &str) -> Client {
        self.try_connect(token, query)
            .await
            .unwrap_or_else(|e| panic!("connect failed: {e:?}"))
    }

    /// Connects and reads the `connected` frame; an HTTP refusal comes back as
    /// `Err((status, body))`. The handshake is done by hand so a refusal's JSON body is
    /// read exactly once (a second attempt could be admitted).
    pub async fn try_connect(&self, token: &str, query: &str) -> Result<Client, (u16, String)> {
        let sep = if query.is_empty() { "" } else { "&" };
        self.try_upgrade(&format!("/v1/updates?token={token}{sep}{query}"), &[])
            .await
    }

    /// An upgrade of `path` (with its query) sending `headers`, as the CLI does (headers
    /// only) or the web app (a ticket in the query).
    pub async fn try_upgrade(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, (u16, String)> {
        let io = |e: std::io::Error| (0u16, e.to_string());
        let mut s = TokioTcp::connect(("127.0.0.1", self.port))
            .await
            .map_err(io)?;
        let key = tungstenite::handshake::client::generate_key();
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{extra}\r\n",
            self.port
        );
        s.write_all(req.as_bytes()).await.map_err(io)?;
        // Byte by byte up to the blank line, so no WebSocket frame is read as header.
        let mut head = Vec::with_capacity(512);
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if s.read(&mut b).await.map_err(io)? == 0 {
                return Err((0, "connection closed during handshake".into()));
            }
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status != 101 {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            s.read_exact(&mut body).await.map_err(io)?;
            return Err((status, String::from_utf8_lossy(&body).into_owned()));
        }
        let ws = WebSocketStream::from_raw_socket(
            MaybeTlsStream::Plain(s),
            tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        let mut c = Client {
            ws,
            connected: Value::Null,
            id: String::new(),
        };
        let first = c
            .next_json(Duration::from_secs(10))
            .await
            .ok_or((101, "no connected frame".to_string()))?;
        assert_eq!(first["event"], "connected", "{first}");
        c.id = first["data"]["connectionId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        c.connected = first;
        Ok(c)
    }

    /// POSTs JSON with a bearer token; returns the status and the JSON answer.
    /// An admin call: `method path` with the admin token and an optional JSON body.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = reqwest::Client::new()
            .request(method, format!("{}{path}", self.http()))
            .bearer_auth(ADMIN);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, bearer: &str, body: &Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.http()))
            .bearer_auth(bearer)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A platform token for `user`, whose tier the operator sets to `tier` on this gateway
    /// first (the platform's tokens carry no tier).
    pub async fn token(&self, user: &str, tier: &str) -> String {
        if tier != DEFAULT_TIER {
            self.set_tier(user, Some(tier)).await;
        }
        platform_token(user)
    }

    /// `PUT` (or with `None`, `DELETE`) `/admin/users/{user}/tier`; returns the answer.
    pub async fn set_tier(&self, user: &str, tier: Option<&str>) -> Value {
        let url = format!("{}/admin/users/{user}/tier", self.http());
        let c = reqwest::Client::new();
        let r = match tier {
            Some(t) => c.put(url).json(&serde_json::json!({ "tier": t })),
            None => c.delete(url),
        }
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
        assert_eq!(r.status().as_u16(), 200, "set tier {tier:?} for {user}");
        r.json().await.unwrap()
    }

    pub async fn broadcast(&self, token: &str, body: &Value) -> (u16, Value) {
        self.post_json("/v1/websocket/broadcast", token, body).await
    }

    /// The user's stats. Other shards report to the user's home within 250 ms of a change
    /// (docs/architecture.md), so this waits that long plus a margin first.
    pub async fn stats(&self, token: &str) -> Value {
        tokio::time::sleep(STATS_SETTLE).await;
        self.stats_now(token).await
    }

    /// The user's stats once `settled` holds of them (the other shards' reports have come),
    /// polling for up to 10 s; the last answer either way, for the caller's assertions.
    pub async fn stats_when(&self, token: &str, settled: impl Fn(&Value) -> bool) -> Value {
        tokio::time::sleep(STATS_SETTLE).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = self.stats_now(token).await;
            if settled(&st) || Instant::now() > deadline {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the user's home lists every client's shard with at least the sockets
    /// `clients` put there (reports reach it within 250 ms, later on a loaded machine), then
    /// for the prompt push to the other shards that follows an addition
    /// (docs/architecture.md): until then a frame or a presence notice from another shard
    /// can miss a socket that just connected.
    pub async fn seen(&self, token: &str, clients: &[&Client]) {
        let mut want: HashMap<String, u64> = HashMap::new();
        for c in clients {
            let shard = c.connected["data"]["shard"].as_str().unwrap_or_default();
            *want.entry(shard.to_owned()).or_default() += 1;
        }
        self.stats_when(token, |st| {
            let rows = st["shards"].as_array().cloned().unwrap_or_default();
            want.iter().all(|(name, n)| {
                rows.iter()
                    .any(|r| r["name"] == name.as_str() && r["connections"].as_u64() >= Some(*n))
            })
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// The user's stats at once (the home's own sockets are live, the others' as last reported).
    pub async fn stats_now(&self, token: &str) -> Value {
        let r = reqwest::Client::new()
            .get(format!("{}/v1/websocket/stats", self.http()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A blocking GET for health checks, without an async runtime.
pub fn http_get_blocking(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A platform token for `user`, as the platform mints it (30 days).
pub fn platform_token(user: &str) -> String {
    token::mint(
        &TokenKeys::derive(SECRET),
        &MintClaims::new(user, now_s(), 30 * 24 * 3600),
    )
}

/// A user id unique to this test run, so tests can share a gateway.
pub fn user(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Connect query: a user-scoped socket.
pub fn user_scoped(_: usize) -> String {
    String::new()
}

/// Connect query: 60 user-scoped sockets, the rest over six sessions.
pub fn sessions(i: usize) -> String {
    if i < 60 {
        String::new()
    } else {
        format!("clientType=session-scoped&sessionId=s{}", i % 6)
    }
}

/// Opens `n` sockets, `parallel` at a time; `query(i)` gives socket i's query.
pub async fn connect_many(
    g: &Gateway,
    token: &str,
    n: usize,
    parallel: usize,
    query: impl Fn(usize) -> String,
) -> Vec<Result<Client, (u16, String)>> {
    let attempts = (0..n).map(|i| {
        let q = query(i);
        async move { g.try_connect(token, &q).await }
    });
    futures_util::stream::iter(attempts)
        .buffered(parallel)
        .collect()
        .await
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TokioTcp>>,
    pub connected: Value,
    pub id: String,
}

impl Client {
    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next text frame as JSON, or `None` if none arrives in `wait`.
    pub async fn next_json(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg {
                Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    pub async fn expect_event(&mut self, event: &str) -> Value {
        let v = self
            .next_json(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no `{event}` frame"));
        assert_eq!(v["event"], event, "{v}");
        v
    }

    /// Asserts no text frame arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(v) = self.next_json(wait).await {
            panic!("unexpected frame {v}");
        }
    }

    /// Waits for the close frame; returns its code.
    pub async fn expect_close(&mut self, wait: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(f)))) => return f.map(|f| u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server's close arrives so the slot is released server-side.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}
