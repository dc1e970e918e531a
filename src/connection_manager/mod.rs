//! The shard Durable Object: holds hibernating sockets of one user.
//!
//! Hibernation API only: sockets are accepted with tags (type, connection,
//! session, machine) so filtered broadcasts are tag lookups; per-socket
//! metadata lives in the attachment; `{"event":"ping"}` is answered by
//! auto-response without waking the object. What must survive a restart
//! (the lease, counters, the shard set, drain state) is in storage.

mod admit;
mod drain;
mod observe;
mod state;

pub use admit::HEALTH_HEADER;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use futures::lock::Mutex;
use worker::{
    console_error, durable_object, DurableObject, Env, Method, Request, Response, State, WebSocket,
    WebSocketIncomingMessage, WebSocketRequestResponsePair,
};

use crate::config::Config;
use crate::metrics::Series;
use crate::placement;
use crate::protocol::{
    self, conn_tag, machine_tag, session_tag, ApiError, ClientFrame, ClientType, Delivery, Filter,
    FrameError, SocketMeta,
};
use crate::rpc::{Delivered, Fault, Knob, Members};
use crate::runtime::{self, SHARD_HEADER};
use crate::stats::{ByType, ShardStats, SOCKET_OVERHEAD_BYTES};
use state::Persisted;

/// WebSocket ready state OPEN.
const OPEN: u16 = 1;
/// Admission rounds per connect (lease races, grants in transit).
const MAX_ADMIT_ROUNDS: u32 = 6;
/// First pause before asking again when slots are on their way to another shard.
const RETRY_PAUSE_MS: u32 = 10;

#[durable_object]
pub struct ConnectionManager {
    state: State,
    env: Env,
    saved: Rc<RefCell<Persisted>>,
    /// Serializes this shard's own calls to the directory (see `lease`).
    directory_lock: Mutex<()>,
    /// Bad frames per connection in the current window: (count, window start).
    bad_frames: RefCell<HashMap<String, (u32, u64)>>,
    /// Cross-shard relays in flight, reported as `messageQueueDepth`.
    relays_in_flight: Cell<u64>,
    observer: RefCell<observe::Observer>,
}

impl DurableObject for ConnectionManager {
    fn new(state: State, env: Env) -> Self {
        // The exact ping text is answered by the runtime, so an idle shard
        // stays hibernated. The pong carries the time this object woke.
        if let Ok(pair) = WebSocketRequestResponsePair::new(
            protocol::PING_FRAME,
            &protocol::pong_frame(runtime::now_ms()),
        ) {
            if let Err(e) = state.as_raw().set_websocket_auto_response(&pair) {
                console_error!("auto-response not set: {e:?}");
            }
        }
        let saved = Rc::new(RefCell::new(Persisted::default()));
        // Load before any event is delivered, so no handler sees defaults.
        let slot = saved.clone();
        let storage = state.storage();
        let _load = state.block_concurrency_while(async move {
            if let Ok(Some(p)) = storage.get::<Persisted>(state::KEY).await {
                *slot.borrow_mut() = p;
            }
            Ok(())
        });
        Self {
            state,
            env,
            saved,
            directory_lock: Mutex::new(()),
            bad_frames: RefCell::new(HashMap::new()),
            relays_in_flight: Cell::new(0),
            observer: RefCell::new(observe::Observer::default()),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let started = runtime::now_ms();
        let cfg = match runtime::config(&self.env) {
            Ok(c) => c,
            Err(e) => return runtime::error(&ApiError::new(503, "invalid_config", e.to_string())),
        };
        let path = req.path();
        let shard = req.headers().get(SHARD_HEADER)?.unwrap_or_default();
        if !shard.is_empty() {
            self.learn_name(&shard);
        }
        let knob = self.knob(&cfg);
        match (req.method(), path.as_str()) {
            (Method::Get, "/connect") => {
                runtime::sleep(knob.latency_ms).await;
                self.open_socket(&req, &cfg, started).await
            }
            (Method::Post, "/deliver") => {
                if let Some(r) = self.inject_fault(&knob, &cfg).await {
                    return r;
                }
                runtime::sleep(knob.latency_ms).await;
                let d: Delivery = req.json().await?;
                runtime::json(
                    200,
                    &Delivered {
                        delivered: self.deliver(&d),
                    },
                )
            }
            (Method::Post, "/stats") => {
                if let Some(r) = self.inject_fault(&knob, &cfg).await {
                    return r;
                }
                runtime::json(200, &self.stats())
            }
            (Method::Post, "/knob") if cfg.test_knobs => {
                let k: Knob = req.json().await?;
                self.saved.borrow_mut().knob = k.clone();
                self.save().await?;
                runtime::json(200, &k)
            }
            (Method::Post, "/reclaim") => runtime::json(200, &self.reclaim().await?),
            (Method::Post, "/members") => {
                let m: Members = req.json().await?;
                self.set_members(m).await?;
                runtime::json(200, &serde_json::json!({"ok": true}))
            }
            _ => runtime::error(&ApiError::new(404, "not_found", format!("no route {path}"))),
        }
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> worker::Result<()> {
        let started = runtime::now_ms();
        let (max, limit) = match runtime::config(&self.env) {
            Ok(c) => {
                runtime::sleep(self.knob(&c).latency_ms).await;
                (c.max_message_bytes, c.bad_frame_limit)
            }
            Err(_) => (crate::config::DEFAULT_MAX_MESSAGE_BYTES, 10),
        };
        let text = match message {
            WebSocketIncomingMessage::String(t) => t,
            WebSocketIncomingMessage::Binary(b) if b.len() > max => {
                return close_too_big(&ws, b.len(), max);
            }
            WebSocketIncomingMessage::Binary(_) => {
                return self.bad_frame(&ws, &FrameError::Binary, limit);
            }
        };
        match protocol::parse_client_frame(&text, max) {
            Ok(ClientFrame::Ping) => {
                ws.send_with_str(protocol::pong_frame(runtime::now_ms()))?;
                self.observe_latency(Series::MessageLatency, started).await;
                Ok(())
            }
            Ok(ClientFrame::Broadcast(data)) => {
                let Some(meta) = attachment(&ws) else {
                    return Ok(());
                };
                let delivery = Delivery {
                    frame: protocol::relay_frame(data, &meta.connection_id),
                    filter: Filter::Exclude {
                        connection_id: meta.connection_id.clone(),
                    },
                };
                let relay_started = runtime::now_ms();
                self.deliver(&delivery);
                self.relay(&delivery).await;
                self.observe_latency(Series::BroadcastDelivery, relay_started)
                    .await;
                self.observe_latency(Series::MessageLatency, started).await;
                Ok(())
            }
            Err(FrameError::TooLarge { size, limit }) => close_too_big(&ws, size, limit),
            Err(e) => self.bad_frame(&ws, &e, limit),
        }
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        reason: String,
        _was_clean: bool,
    ) -> worker::Result<()> {
        // Reciprocate so the client's close handshake completes. 1005 (no
        // code), 1006 (abnormal) and 1015 (TLS) are never sent on the wire.
        match code {
            1006 | 1015 => {}
            1005 => close(&ws, 1000, ""),
            c => close(&ws, u16::try_from(c).unwrap_or(1000), &reason),
        }
        self.after_close(&ws).await
    }

    async fn websocket_error(&self, ws: WebSocket, error: worker::Error) -> worker::Result<()> {
        console_error!("socket error: {error}");
        close(&ws, 1011, "socket error");
        self.after_close(&ws).await
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let now = runtime::now_ms();
        if self.saved.borrow().drain_at.is_some_and(|at| at <= now) {
            self.drain_step().await?;
        }
        if self.observer.borrow().report_at.is_some_and(|at| at <= now) {
            self.report().await;
        }
        self.rearm().await?;
        Response::ok("")
    }

    async fn connect(&self, _socket: worker::Socket) -> worker::Result<()> {
        // The default handler panics; shards speak only HTTP and WebSocket.
        Err(worker::Error::RustError(
            "TCP connect is not supported".into(),
        ))
    }
}

impl ConnectionManager {
    /// The injection in force: none unless the config enables test knobs.
    fn knob(&self, cfg: &Config) -> Knob {
        if cfg.test_knobs {
            self.saved.borrow().knob.clone()
        } else {
            Knob::default()
        }
    }

    async fn inject_fault(&self, knob: &Knob, cfg: &Config) -> Option<worker::Result<Response>> {
        match knob.fault? {
            Fault::Error => Some(runtime::error(&ApiError::new(
                500,
                "injected_fault",
                "this shard fails on purpose (TEST_KNOBS)",
            ))),
            Fault::Hang => {
                runtime::sleep(cfg.fanout_timeout_ms + 1_000).await;
                Some(runtime::error(&ApiError::new(
                    504,
                    "injected_hang",
                    "this shard answered late on purpose (TEST_KNOBS)",
                )))
            }
        }
    }

    fn learn_name(&self, shard: &str) {
        let mut s = self.saved.borrow_mut();
        if s.name.is_empty() {
            s.name = shard.to_owned();
        }
    }

    async fn save(&self) -> worker::Result<()> {
        let snapshot = self.saved.borrow().clone();
        self.state.storage().put(state::KEY, snapshot).await
    }

    /// Open sockets, leaving out `except` (a socket being closed still shows
    /// in `getWebSockets` while its close handler runs).
    fn open_sockets(&self, except: Option<&WebSocket>) -> Vec<WebSocket> {
        self.sockets_with(None)
            .into_iter()
            .filter(|w| Some(w) != except && w.as_ref().ready_state() == OPEN)
            .collect()
    }

    fn open_count(&self, except: Option<&WebSocket>) -> u32 {
        u32::try_from(self.open_sockets(except).len()).unwrap_or(u32::MAX)
    }

    fn sockets_with(&self, tag: Option<&str>) -> Vec<WebSocket> {
        let raw = self.state.as_raw();
        let list = match tag {
            Some(t) => raw.get_websockets_with_tag(t),
            None => raw.get_websockets(),
        };
        match list {
            Ok(v) => v.into_iter().map(WebSocket::from).collect(),
            Err(e) => {
                console_error!("getWebSockets failed: {e:?}");
                Vec::new()
            }
        }
    }

    /// Sends `d.frame` to the sockets its filter selects; returns how many got it.
    fn deliver(&self, d: &Delivery) -> u64 {
        let targets = match &d.filter {
            Filter::All => self.sockets_with(None),
            Filter::UserScopedOnly => self.sockets_with(Some(&ClientType::UserScoped.tag())),
            Filter::Session { session_id } => self.sockets_with(Some(&session_tag(session_id))),
            Filter::Machine { machine_id } => self.sockets_with(Some(&machine_tag(machine_id))),
            Filter::Exclude { connection_id } => {
                let excluded = self.sockets_with(Some(&conn_tag(connection_id)));
                self.sockets_with(None)
                    .into_iter()
                    .filter(|w| !excluded.contains(w))
                    .collect()
            }
        };
        targets
            .iter()
            .filter(|w| w.as_ref().ready_state() == OPEN && w.send_with_str(&d.frame).is_ok())
            .count() as u64
    }

    /// Sends a client broadcast to the user's other shards, concurrently.
    async fn relay(&self, d: &Delivery) {
        let (me, others, timeout_ms) = {
            let s = self.saved.borrow();
            let timeout = runtime::config(&self.env)
                .map(|c| c.fanout_timeout_ms)
                .unwrap_or(5000);
            (s.name.clone(), s.members.shards.clone(), timeout)
        };
        let targets: Vec<String> = others.into_iter().filter(|n| *n != me).collect();
        if targets.is_empty() {
            return;
        }
        self.relays_in_flight
            .set(self.relays_in_flight.get() + targets.len() as u64);
        let calls = targets.iter().map(|name| async move {
            let Ok(stub) = runtime::stub(&self.env, placement::SHARD_BINDING, name) else {
                return;
            };
            let r = runtime::timeout(
                timeout_ms,
                runtime::call::<_, Delivered>(&stub, "/deliver", Some(name), d),
            )
            .await;
            if !matches!(r, Some(Ok(_))) {
                console_error!("relay to {name} failed");
            }
            self.relays_in_flight
                .set(self.relays_in_flight.get().saturating_sub(1));
        });
        futures::future::join_all(calls).await;
    }

    fn bad_frame(&self, ws: &WebSocket, e: &FrameError, limit: u32) -> worker::Result<()> {
        let key = attachment(ws).map(|m| m.connection_id).unwrap_or_default();
        let now = runtime::now_ms();
        let count = {
            let mut map = self.bad_frames.borrow_mut();
            let entry = map.entry(key).or_insert((0, now));
            // A fresh window each minute: occasional mistakes never add up.
            if now.saturating_sub(entry.1) > 60_000 {
                *entry = (0, now);
            }
            entry.0 += 1;
            entry.0
        };
        if count > limit {
            let _ = ws.send_with_str(protocol::error_frame(
                "too_many_bad_frames",
                &format!("more than {limit} invalid frames in a minute; closing"),
            ));
            close(ws, 1008, "too many invalid frames");
            return Ok(());
        }
        ws.send_with_str(protocol::error_frame(e.code(), &e.to_string()))
    }

    async fn after_close(&self, ws: &WebSocket) -> worker::Result<()> {
        if let Some(m) = attachment(ws) {
            self.bad_frames.borrow_mut().remove(&m.connection_id);
        }
        self.settle(Some(ws)).await?;
        self.observe_gauges().await;
        Ok(())
    }

    async fn set_members(&self, m: Members) -> worker::Result<()> {
        let newer = {
            let mut s = self.saved.borrow_mut();
            let newer = m.version > s.members.version;
            if newer {
                s.members = m;
            }
            newer
        };
        if newer {
            self.save().await?;
        }
        Ok(())
    }

    fn stats(&self) -> ShardStats {
        let sockets = self.open_sockets(None);
        let mut by_type = ByType::default();
        let mut sessions = std::collections::BTreeSet::new();
        let mut machines = std::collections::BTreeSet::new();
        let mut oldest: Option<u64> = None;
        let mut memory = 0u64;
        for ws in &sockets {
            let Some(m) = attachment(ws) else { continue };
            match m.client_type {
                ClientType::UserScoped => by_type.user_scoped += 1,
                ClientType::SessionScoped => by_type.session_scoped += 1,
                ClientType::MachineScoped => by_type.machine_scoped += 1,
            }
            oldest = Some(oldest.map_or(m.connected_at, |o| o.min(m.connected_at)));
            memory +=
                SOCKET_OVERHEAD_BYTES + serde_json::to_string(&m).map_or(0, |s| s.len() as u64);
            if let Some(s) = m.session_id {
                sessions.insert(s);
            }
            if let Some(mid) = m.machine_id {
                machines.insert(mid);
            }
        }
        let s = self.saved.borrow();
        ShardStats {
            name: s.name.clone(),
            connections: sockets.len() as u64,
            by_type,
            sessions: sessions.into_iter().collect(),
            machines: machines.into_iter().collect(),
            oldest_connection: oldest,
            memory_usage: memory,
            message_queue_depth: self.relays_in_flight.get(),
            rejected: s.rejected,
            rejected_tier_limit: s.rejected_tier_limit,
            accepted: s.accepted,
            directory_round_trips: s.round_trips,
            epoch: placement::rotation_of(&s.name).map(|(_, e)| e),
            draining: s.draining,
        }
    }

    /// Sets the one alarm to the earliest of the next drain step and the
    /// next metrics report.
    async fn rearm(&self) -> worker::Result<()> {
        let drain = self.saved.borrow().drain_at;
        let report = self.observer.borrow().report_at;
        let at = match (drain, report) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(at) => at,
                None => return Ok(()),
            },
        };
        self.state.storage().set_alarm(runtime::scheduled(at)).await
    }
}

fn attachment(ws: &WebSocket) -> Option<SocketMeta> {
    ws.deserialize_attachment::<SocketMeta>().ok().flatten()
}

fn close(ws: &WebSocket, code: u16, reason: &str) {
    if ws.close(Some(code), Some(reason)).is_err() {
        // Codes the runtime will not send (e.g. reserved ones) become 1000.
        let _ = ws.close(Some(1000), Some(reason));
    }
}

fn close_too_big(ws: &WebSocket, size: usize, limit: usize) -> worker::Result<()> {
    let _ = ws.send_with_str(protocol::error_frame(
        "frame_too_large",
        &format!("frame is {size} bytes; MAX_MESSAGE_BYTES is {limit}"),
    ));
    close(ws, 1009, "message too big");
    Ok(())
}
