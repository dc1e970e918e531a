//! The shard Durable Object: holds hibernating sockets of one user.
//!
//! Hibernation API only: sockets are accepted with tags (type, connection, session, machine)
//! so filtered deliveries are tag lookups; per-socket metadata lives in the attachment;
//! `{"event":"ping"}` is answered by auto-response without waking the object. Bookkeeping is
//! an in-memory index kept per connect and close (`routing::index`), rebuilt from the
//! attachments once after a wake. What must survive a restart (the lease, counters, drain
//! state) is in storage; the routing view is memory only and asked of the directory again
//! when it is missing.
//!
//! - `admit`: the per-shard cap, SLO check, leases, accept and give back.
//! - `route`: a frame's routing across the user's shards, RPCs and their answers.
//! - `presence`: the index and the presence reports to the directory.
//! - `upstream`: business events to the upstream, lifecycle hooks, usage limits.
//! - `drain`: rotation drains. `observe`: metrics reports. `state`: what is persisted.

mod admit;
mod drain;
mod end;
mod observe;
mod presence;
mod route;
mod state;
mod upstream;

pub use admit::HEALTH_HEADER;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use futures::lock::Mutex;
use worker::{
    console_error, durable_object, DurableObject, Env, Method, Request, Response, State, WebSocket,
    WebSocketIncomingMessage, WebSocketRequestResponsePair,
};

use crate::auth::cache::BoundedMap;
use crate::config::Config;
use crate::outbox::Outbox;
use crate::protocol::{self, conn_tag, machine_tag, session_tag, ApiError, ClientType, Delivery};
use crate::protocol::{Filter, SocketMeta};
use crate::routing::guard::{SocketGuard, Verdict};
use crate::routing::index::SocketIndex;
use crate::routing::view::RoutingView;
use crate::rpc::{AckRelay, Delivered, Disconnect, Fault, Knob};
use crate::runtime::{self, SHARD_HEADER};
use crate::stats::ShardStats;
use state::Persisted;

/// WebSocket ready state OPEN.
const OPEN: u16 = 1;
/// Admission rounds per connect (lease races, grants in transit).
const MAX_ADMIT_ROUNDS: u32 = 6;
/// First pause before asking again when slots are on their way to another shard.
const RETRY_PAUSE_MS: u32 = 10;
/// RPC answers remembered per shard, to refuse a second answer to one call.
const ANSWERED_CAPACITY: usize = 4096;
/// How long a change that does not guard the limit waits to be persisted, so a burst of
/// connects costs one write.
const SAVE_COALESCE_MS: u64 = 1_000;

#[durable_object]
pub struct ConnectionManager {
    state: State,
    env: Env,
    saved: Rc<RefCell<Persisted>>,
    /// Serializes this shard's own calls to the directory (see `lease`).
    directory_lock: Mutex<()>,
    /// What each open socket may still send (rate and invalid frames), by connection.
    guards: RefCell<HashMap<String, SocketGuard>>,
    /// Cross-shard deliveries in flight, reported as `messageQueueDepth`.
    relays_in_flight: Cell<u64>,
    observer: RefCell<observe::Observer>,
    /// The open sockets' bookkeeping; `None` until first needed after a wake.
    index: RefCell<Option<SocketIndex>>,
    /// The user's routing view, as last pushed or fetched; `None` after a wake.
    view: RefCell<Option<Rc<RoutingView>>>,
    /// One presence report in flight at a time, so reports arrive in order and coalesce.
    presence_lock: Mutex<()>,
    /// The index sequence number the directory last accepted.
    presence_published: Cell<Option<u64>>,
    /// Tells the directory this object restarted (its sequence numbers start again).
    incarnation: u64,
    /// Sealed call references already answered -> their expiry.
    answered: RefCell<BoundedMap<u64>>,
    /// Frames routed and the subrequests their routing cost, for stats.
    frames: Cell<u64>,
    frame_subrequests: Cell<u64>,
    /// Business events waiting per socket (a socket's entry exists while its queue drains).
    upstream_queues: RefCell<HashMap<String, VecDeque<upstream::Business>>>,
    /// Business events accepted and not yet answered on this shard.
    upstream_pending: Cell<u32>,
    /// Lifecycle hooks on their way to the upstream.
    outbox: Rc<Outbox>,
    /// A coalesced save is due then.
    save_at: Cell<Option<u64>>,
    /// The alarm time last set, so an unchanged alarm is not written again; shared with the
    /// outbox's background flush, which re-arms when it ends.
    armed_at: Rc<Cell<Option<u64>>>,
    /// When to check whether this shard, empty and holding no slots, can delete its storage.
    retire_at: Cell<Option<u64>>,
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
        // 53 bits: internal JSON is parsed by JavaScript, whose numbers are doubles.
        let r = runtime::random16();
        let incarnation =
            u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]) & ((1 << 53) - 1);
        Self {
            state,
            env,
            saved,
            directory_lock: Mutex::new(()),
            guards: RefCell::new(HashMap::new()),
            relays_in_flight: Cell::new(0),
            observer: RefCell::new(observe::Observer::default()),
            index: RefCell::new(None),
            view: RefCell::new(None),
            presence_lock: Mutex::new(()),
            presence_published: Cell::new(None),
            incarnation,
            answered: RefCell::new(BoundedMap::new(ANSWERED_CAPACITY)),
            frames: Cell::new(0),
            frame_subrequests: Cell::new(0),
            upstream_queues: RefCell::new(HashMap::new()),
            upstream_pending: Cell::new(0),
            outbox: Outbox::new(),
            save_at: Cell::new(None),
            armed_at: Rc::new(Cell::new(None)),
            retire_at: Cell::new(None),
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
            (Method::Post, "/deliver-batch") => {
                // Several deliveries in one call (the directory's presence notices).
                let batch: Vec<Delivery> = runtime::body_json(&mut req).await?;
                let total =
                    batch
                        .iter()
                        .map(|d| self.deliver(d))
                        .fold(Delivered::default(), |a, b| Delivered {
                            delivered: a.delivered + b.delivered,
                            primary: a.primary + b.primary,
                            view_version: b.view_version,
                        });
                runtime::json(200, &total)
            }
            (Method::Post, "/deliver") => {
                if let Some(r) = self.inject_fault(&knob, &cfg).await {
                    return r;
                }
                runtime::sleep(knob.latency_ms).await;
                let d: Delivery = runtime::body_json(&mut req).await?;
                runtime::json(200, &self.deliver(&d))
            }
            (Method::Post, "/ack") => {
                let a: AckRelay = runtime::body_json(&mut req).await?;
                let delivered = u64::from(self.answer(&cfg, &a.ack_id, &a.ack));
                runtime::json(
                    200,
                    &Delivered {
                        delivered,
                        primary: delivered,
                        view_version: self.view_version(),
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
                let k: Knob = runtime::body_json(&mut req).await?;
                self.saved.borrow_mut().knob = k.clone();
                self.save().await?;
                runtime::json(200, &k)
            }
            (Method::Post, "/reclaim") => runtime::json(200, &self.reclaim().await?),
            (Method::Post, "/disconnect") => {
                let d: Disconnect = runtime::body_json(&mut req).await?;
                runtime::json(200, &self.disconnect(&d).await?)
            }
            (Method::Post, "/view") => {
                let v: RoutingView = runtime::body_json(&mut req).await?;
                self.learn_view(v);
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
        self.on_frame(ws, message).await
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
        self.after_close(&ws, u16::try_from(code).unwrap_or(1005))
            .await
    }

    async fn websocket_error(&self, ws: WebSocket, error: worker::Error) -> worker::Result<()> {
        console_error!("socket error: {error}");
        close(&ws, 1011, "Internal error");
        self.after_close(&ws, 1011).await
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let now = runtime::now_ms();
        self.armed_at.set(None);
        self.record_hook_news().await;
        if self.save_at.get().is_some_and(|at| at <= now) {
            self.save().await?;
        }
        if self.saved.borrow().drain_at.is_some_and(|at| at <= now) {
            self.drain_step().await?;
        }
        self.expire_sockets(now).await?;
        if self.observer.borrow().report_at.is_some_and(|at| at <= now) {
            self.report().await;
        }
        if self
            .saved
            .borrow()
            .presence_retry_at
            .is_some_and(|at| at <= now)
        {
            self.saved.borrow_mut().presence_retry_at = None;
            self.publish_presence().await;
        }
        // Last, and in the background: a slow upstream delays none of the above. After a
        // wake the outbox is unknown, so the first alarm looks.
        if let Ok(cfg) = runtime::config(&self.env) {
            if cfg.upstream.posts_hooks() && self.outbox.should_flush(now) {
                self.flush_hooks(&cfg);
            }
        }
        if self.retire_at.get().is_some_and(|at| at <= now) {
            self.retire_at.set(None);
            if self.retire().await? {
                return Response::ok("");
            }
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

    fn name(&self) -> String {
        self.saved.borrow().name.clone()
    }

    async fn save(&self) -> worker::Result<()> {
        // This write carries whatever a pending coalesced one would have.
        self.save_at.set(None);
        let snapshot = self.saved.borrow().clone();
        self.state.storage().put(state::KEY, snapshot).await
    }

    /// Persists within [`SAVE_COALESCE_MS`]. Only for counters, which a crash may lose a
    /// second of; lease changes are saved at once (reductions before the directory hears of
    /// them, grants as they arrive, see `admit`).
    async fn save_soon(&self) {
        if self.save_at.get().is_none() {
            self.save_at.set(Some(runtime::now_ms() + SAVE_COALESCE_MS));
            if let Err(e) = self.rearm().await {
                console_error!("could not schedule a save: {e}");
            }
        }
    }

    /// Open sockets (a socket being closed may still show in `getWebSockets` while its close
    /// handler runs, so the state is checked).
    fn open_sockets(&self) -> Vec<WebSocket> {
        self.sockets_with(None)
            .into_iter()
            .filter(|w| w.as_ref().ready_state() == OPEN)
            .collect()
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

    /// Sends `d.frame` to the sockets its filter selects on this shard.
    fn deliver(&self, d: &Delivery) -> Delivered {
        let scoped = |tag: String, t: ClientType| -> Vec<WebSocket> {
            self.sockets_with(Some(&tag))
                .into_iter()
                .filter(|w| attachment(w).is_some_and(|m| m.client_type == t))
                .collect()
        };
        let user_scoped = || self.sockets_with(Some(&ClientType::UserScoped.tag()));
        let (primary, secondary) = match &d.filter {
            Filter::All => (self.sockets_with(None), Vec::new()),
            Filter::UserScopedOnly => (user_scoped(), Vec::new()),
            Filter::Session { session_id } => (
                self.sockets_with(Some(&session_tag(session_id))),
                Vec::new(),
            ),
            Filter::Machine { machine_id } => (
                self.sockets_with(Some(&machine_tag(machine_id))),
                Vec::new(),
            ),
            Filter::Exclude { connection_id } => {
                let excluded = self.sockets_with(Some(&conn_tag(connection_id)));
                let rest = self
                    .sockets_with(None)
                    .into_iter()
                    .filter(|w| !excluded.contains(w))
                    .collect();
                (rest, Vec::new())
            }
            Filter::MachineScopedOnly { machine_id } => (
                scoped(machine_tag(machine_id), ClientType::MachineScoped),
                user_scoped(),
            ),
            Filter::AllInterestedInSession { session_id } => (
                scoped(session_tag(session_id), ClientType::SessionScoped),
                user_scoped(),
            ),
        };
        let primary = runtime::send_all(&primary, &d.frame);
        // The scoped halves hold no user-scoped socket, so nothing is sent twice.
        let delivered = primary + runtime::send_all(&secondary, &d.frame);
        Delivered {
            delivered,
            primary,
            view_version: self.view_version(),
        }
    }

    /// Runs `f` on the socket's guard, creating it on the socket's first frame.
    fn guard<R>(&self, cfg: &Config, ws: &WebSocket, f: impl FnOnce(&mut SocketGuard) -> R) -> R {
        let key = attachment(ws).map(|m| m.connection_id).unwrap_or_default();
        let now = runtime::now_ms();
        let mut map = self.guards.borrow_mut();
        let g = map
            .entry(key)
            .or_insert_with(|| SocketGuard::new(&cfg.frame_limits, now));
        f(g)
    }

    /// Takes a token for a frame; `false` when the frame is to be dropped (the client was
    /// told, or the socket closed for flooding).
    fn admit_frame(&self, cfg: &Config, ws: &WebSocket) -> bool {
        let now = runtime::now_ms();
        match self.guard(cfg, ws, |g| g.frame(&cfg.frame_limits, now)) {
            Verdict::Pass => true,
            Verdict::Drop { notify } => {
                if notify {
                    let _ = ws.send_with_str(crate::routing::envelope::error_frame(
                        crate::routing::envelope::POLICY_VIOLATION,
                        &format!(
                            "more than {} frames a second (burst {}); frames are being dropped",
                            cfg.frame_limits.rate_per_s, cfg.frame_limits.burst
                        ),
                        now,
                    ));
                }
                false
            }
            Verdict::Close => {
                let _ = ws.send_with_str(crate::routing::envelope::error_frame(
                    crate::routing::envelope::POLICY_VIOLATION,
                    "kept sending over the frame rate limit; closing",
                    now,
                ));
                close(ws, 1008, "rate limit exceeded");
                false
            }
        }
    }

    fn bad_frame(
        &self,
        cfg: &Config,
        ws: &WebSocket,
        code: u16,
        message: &str,
    ) -> worker::Result<()> {
        let now = runtime::now_ms();
        let limit = cfg.frame_limits.bad_frames;
        if self.guard(cfg, ws, |g| g.bad_frame(&cfg.frame_limits, now)) {
            let _ = ws.send_with_str(crate::routing::envelope::error_frame(
                crate::routing::envelope::POLICY_VIOLATION,
                &format!("more than {limit} invalid frames in a minute; closing"),
                now,
            ));
            close(ws, 1008, "too many invalid frames");
            return Ok(());
        }
        ws.send_with_str(crate::routing::envelope::error_frame(code, message, now))
    }

    async fn after_close(&self, ws: &WebSocket, code: u16) -> worker::Result<()> {
        if let Some(m) = attachment(ws) {
            self.index_with_closing(&m);
            self.count_close(&m, code).await;
        }
        self.settle().await?;
        self.observe_gauges().await;
        Ok(())
    }

    fn stats(&self) -> ShardStats {
        let ix = self.index_snapshot();
        let s = self.saved.borrow();
        ShardStats {
            name: s.name.clone(),
            connections: u64::from(ix.connections),
            by_type: ix.by_type,
            sessions: ix.sessions,
            machines: ix.machines,
            oldest_connection: ix.oldest,
            memory_usage: ix.memory,
            message_queue_depth: self.relays_in_flight.get(),
            rejected: s.rejected,
            rejected_tier_limit: s.rejected_tier_limit,
            accepted: s.accepted,
            directory_round_trips: s.round_trips,
            epoch: crate::placement::rotation_of(&s.name).map(|(_, e)| e),
            draining: s.draining,
            frames: self.frames.get(),
            frame_subrequests: self.frame_subrequests.get(),
            view_version: self.view_version(),
        }
    }

    /// The version of the routing view this shard holds; 0 without one.
    fn view_version(&self) -> u64 {
        self.view.borrow().as_ref().map_or(0, |v| v.version)
    }

    /// Sets the one alarm to the earliest of the next drain step, the next metrics report,
    /// a presence report to retry, the hook outbox and a coalesced save.
    async fn rearm(&self) -> worker::Result<()> {
        let at = [
            self.saved.borrow().drain_at,
            self.observer.borrow().report_at,
            self.saved.borrow().presence_retry_at,
            self.outbox.due_at(),
            self.save_at.get(),
            self.with_index(|ix| ix.next_expiry()),
            self.retire_at.get(),
        ]
        .into_iter()
        .flatten()
        .min();
        // An alarm already set for no later than that fires in time; the handler re-arms.
        match at {
            Some(at) if self.armed_at.get().is_none_or(|armed| at < armed) => {
                self.armed_at.set(Some(at));
                self.state.storage().set_alarm(runtime::scheduled(at)).await
            }
            _ => Ok(()),
        }
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
