//! The shard Durable Object: holds hibernating sockets of one user; the user's home shard
//! `cm:{user}` is also the user's authority (`home`).
//!
//! Hibernation API only: sockets are accepted with tags (type, connection, session, machine,
//! token) so filtered deliveries are tag lookups; per-socket metadata lives in the attachment;
//! `{"event":"ping"}` is answered by auto-response without waking the object. Bookkeeping is
//! an in-memory index kept per connect and close (`routing::index`), rebuilt from the
//! attachments once after a wake. What must survive a restart (a lease, refusal counters,
//! drain state; at the home, the user's state) is in storage; the routing view is memory
//! only and asked of the home again when it is missing.
//!
//! - `admit`: the per-shard cap, SLO check, admission (the home's own, or a lease from the
//!   home), accept and give back.
//! - `route`: a frame's routing across the user's shards, RPCs and their answers.
//! - `presence`: the index, and what a shard tells its home (reports, after the fact).
//! - `end`: sockets the shard ends (expired or revoked credentials, disconnects), and the
//!   shard's own end (its storage, once empty). `drain`: rotation drains.
//! - `upstream`: business events to the upstream, lifecycle hooks, usage limits.
//! - `observe`: metrics. `state`: what is persisted. `home`: the home role.

mod admit;
mod business;
mod drain;
mod end;
mod moves;
mod observe;
mod observer;
mod policy;
mod presence;
mod reporter;
mod route;
pub(crate) mod state;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use futures::lock::Mutex;
use worker::{
    console_error, durable_object, DurableObject, Env, Request, Response, State, WebSocket,
    WebSocketIncomingMessage, WebSocketRequestResponsePair,
};

use crate::auth::cache::BoundedMap;
use crate::config::Config;
use crate::object_api::SHARD_HEADER;
use crate::object_api::{
    AckRelay, Acquire, ApplyPolicy, BroadcastRequest, Deliver, DeliverBatch, Delivered, Disconnect,
    DisconnectUser, Done, Fault, Handoff, Hold, IssueTicket, Knob, Message, Observed, Placement,
    PolicyNotice, PushView, Reclaim, Redeem, Release, RouteLookup, SetTier, ShardReport,
    StatsRequest, TierGet, UsageGet, UsageSet, CONNECT_PATH,
};
use crate::objects::home::Home;
use crate::objects::outbox::Outbox;
use crate::protocol::{self, conn_tag, machine_tag, session_tag, ApiError, ClientType, Delivery};
use crate::protocol::{Filter, SocketMeta};
use crate::routing::guard::{SocketGuard, Verdict};
use crate::routing::index::SocketIndex;
use crate::routing::view::RoutingView;
use crate::runtime::{self, answer, AlarmClock, Call, Reply};
use observability::metrics::Series;
use observability::stats::{ObjectLoad, ShardStats};
use state::Persisted;

/// WebSocket ready state OPEN.
const OPEN: u16 = 1;
/// Admission rounds per connect (lease races, grants in transit).
const MAX_ADMIT_ROUNDS: u32 = 6;
/// First pause before asking again when slots are on their way to another shard.
const RETRY_PAUSE_MS: u32 = 10;
/// RPC answers remembered per shard, to refuse a second answer to one call.
const ANSWERED_CAPACITY: usize = 4096;

#[durable_object]
pub struct ConnectionManager {
    state: Rc<State>,
    env: Env,
    saved: Rc<RefCell<Persisted>>,
    /// The home role (used when this shard is `cm:{user}`).
    home: Home,
    /// Serializes this shard's own calls to its home for leases (see `lease`).
    lease_lock: Mutex<()>,
    /// What each open socket may still send (rate and invalid frames), by connection.
    guards: RefCell<HashMap<String, SocketGuard>>,
    /// Cross-shard deliveries in flight, reported as `messageQueueDepth`.
    relays_in_flight: Cell<u64>,
    observer: RefCell<observer::Observer>,
    /// The open sockets' bookkeeping; `None` until first needed after a wake.
    index: RefCell<Option<SocketIndex>>,
    /// The user's routing view, as last pushed or fetched; `None` after a wake.
    view: RefCell<Option<Rc<RoutingView>>>,
    /// The view version the home last announced (newer than ours: fetch before routing).
    announced_version: Rc<Cell<u64>>,
    /// What this shard tells its home, after the fact (`presence`).
    reporter: Rc<RefCell<reporter::Reporter>>,
    /// Tells the home this object restarted (its sequence numbers start again).
    incarnation: u64,
    /// Sealed call references already answered -> their expiry.
    answered: RefCell<BoundedMap<u64>>,
    /// Calls each socket waits an answer for: a drain closes a socket between its calls.
    calls: RefCell<crate::routing::calls::InFlight>,
    /// Frames routed and the subrequests their routing cost, for stats.
    frames: Cell<u64>,
    frame_subrequests: Cell<u64>,
    /// What this object handled, for the per-object load.
    load: RefCell<ObjectLoad>,
    /// The user's placement as this shard last learned it (answered to the gateway).
    placement: Rc<RefCell<Placement>>,
    /// Business events waiting per socket (a socket's entry exists while its queue drains).
    upstream_queues: RefCell<HashMap<String, VecDeque<crate::upstream::QueuedEvent>>>,
    /// Identities this shard told to move, until when: what still reaches it for them goes
    /// to the home (`moves`).
    moved: RefCell<crate::routing::moves::Moved>,
    /// What this shard delivered lately, so a handoff skips what a socket got directly.
    recent: RefCell<crate::routing::moves::Recent>,
    handoff_skipped: Cell<u64>,
    /// The name `is_home` last parsed, and its answer.
    home_memo: RefCell<(String, bool)>,
    /// Business events accepted and not yet answered on this shard.
    upstream_pending: Cell<u32>,
    /// Lifecycle hooks on their way to the upstream (the home's machine hooks too).
    outbox: Rc<Outbox>,
    /// The object's one alarm, shared with the home role and the outbox's flush.
    clock: Rc<AlarmClock>,
    /// When to check whether this shard, empty and holding no slots, can delete its storage.
    retire_at: Cell<Option<u64>>,
}

impl DurableObject for ConnectionManager {
    fn new(state: State, env: Env) -> Self {
        // The exact ping text is answered by the runtime, so an idle shard stays hibernated.
        // The pong carries the time this object woke.
        if let Ok(pair) = WebSocketRequestResponsePair::new(
            protocol::PING_FRAME,
            &protocol::pong_frame(runtime::now_ms()),
        ) {
            if let Err(e) = state.as_raw().set_websocket_auto_response(&pair) {
                console_error!("auto-response not set: {e:?}");
            }
        }
        let state = Rc::new(state);
        let saved = Rc::new(RefCell::new(Persisted::default()));
        let outbox = Outbox::new();
        let clock = Rc::new(AlarmClock::default());
        let home = Home::new(
            state.clone(),
            env.clone(),
            saved.clone(),
            outbox.clone(),
            clock.clone(),
        );
        // Load before any event is delivered, so no handler sees defaults.
        let slot = saved.clone();
        let storage = state.storage();
        let loaded = home.loaded_slot();
        let _load = state.block_concurrency_while(async move {
            if let Ok(Some(p)) = storage.get::<Persisted>(state::KEY).await {
                *slot.borrow_mut() = p;
            }
            *loaded.borrow_mut() = Some(crate::objects::home::Loaded::read(&storage).await?);
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
            home,
            lease_lock: Mutex::new(()),
            guards: RefCell::new(HashMap::new()),
            relays_in_flight: Cell::new(0),
            observer: RefCell::new(observer::Observer::default()),
            index: RefCell::new(None),
            view: RefCell::new(None),
            announced_version: Rc::new(Cell::new(0)),
            reporter: Rc::new(RefCell::new(reporter::Reporter::default())),
            incarnation,
            answered: RefCell::new(BoundedMap::new(ANSWERED_CAPACITY)),
            calls: RefCell::new(crate::routing::calls::InFlight::default()),
            frames: Cell::new(0),
            frame_subrequests: Cell::new(0),
            load: RefCell::new(ObjectLoad::default()),
            placement: Rc::new(RefCell::new(Placement::default())),
            upstream_queues: RefCell::new(HashMap::new()),
            upstream_pending: Cell::new(0),
            outbox,
            clock,
            retire_at: Cell::new(None),
            moved: RefCell::new(crate::routing::moves::Moved::default()),
            recent: RefCell::new(crate::routing::moves::Recent::default()),
            handoff_skipped: Cell::new(0),
            home_memo: RefCell::new((String::new(), false)),
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        if req.path() != CONNECT_PATH {
            // A message by fetch: what an older caller sends mid-deploy (now RPC, `handle`).
            return self.on_call(Call::read(req).await?).await?.into_response();
        }
        let shard = req.headers().get(SHARD_HEADER)?.unwrap_or_default();
        if !shard.is_empty() {
            self.learn_name(&shard);
        }
        let started = self.event(|| None);
        let cfg = match runtime::config(&self.env) {
            Ok(c) => c,
            Err(e) => return runtime::error(&ApiError::new(503, "invalid_config", e.to_string())),
        };
        self.after_wake().await?;
        runtime::sleep(self.knob(&cfg).latency_ms).await;
        let resp = self.open_socket(&req, &cfg, started).await;
        // A moved identity back on the home gets what was held for it after `connected`.
        self.hand_off().await;
        resp
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> worker::Result<()> {
        self.event(|| attachment(&ws));
        self.after_wake().await?;
        let r = self.on_frame(ws, message).await;
        self.hand_off().await;
        r
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        reason: String,
        _was_clean: bool,
    ) -> worker::Result<()> {
        let meta = self.closing(&ws);
        self.after_wake().await?;
        // Reciprocate so the client's close handshake completes. 1005 (no code), 1006
        // (abnormal) and 1015 (TLS) are never sent on the wire.
        match code {
            1006 | 1015 => {}
            1005 => close(&ws, 1000, ""),
            c => close(&ws, u16::try_from(c).unwrap_or(1000), &reason),
        }
        self.after_close(meta, u16::try_from(code).unwrap_or(1005))
            .await
    }

    async fn websocket_error(&self, ws: WebSocket, error: worker::Error) -> worker::Result<()> {
        let meta = self.closing(&ws);
        console_error!("socket error: {error}");
        close(&ws, 1011, "Internal error");
        self.after_close(meta, 1011).await
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let now = self.event(|| None);
        self.clock.fired();
        self.record_hook_news().await;
        if self.saved.borrow().drain_at.is_some_and(|at| at <= now) {
            self.drain_step().await?;
        }
        self.expire_sockets(now).await?;
        if self.observer.borrow().report_at.is_some_and(|at| at <= now) {
            self.metrics_due().await;
        }
        if self.reporter.borrow().retry_at.is_some_and(|at| at <= now) {
            self.reporter.borrow_mut().retry_at = None;
            self.report_soon(false);
        }
        if self.is_home() {
            self.fresh_own_base();
            let own = self.presence_now();
            self.home.alarm(now, own).await?;
            if self.home.take_push(now) {
                self.push_metrics().await;
            }
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
        self.hand_off().await;
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

runtime::rpc_object!(ConnectionManager);

impl ConnectionManager {
    /// Arms the alarm for the home's first look after a wake, once.
    async fn after_wake(&self) -> worker::Result<()> {
        if self.is_home() && self.home.take_wake_check() {
            self.rearm().await?;
        }
        Ok(())
    }

    /// Counts an event for the per-object load (and, on the first after a wake, puts back
    /// what the home role stored); answers the time.
    fn event(&self, socket: impl FnOnce() -> Option<SocketMeta>) -> u64 {
        let now = runtime::now_ms();
        self.load.borrow_mut().event(now);
        // An object is not told its name: after a wake with nothing stored, a socket's
        // attachment says which shard accepted it (read only then).
        if self.saved.borrow().name.is_empty() {
            let from = socket().or_else(|| self.open_sockets().first().and_then(attachment));
            if let Some(m) = from.filter(|m| !m.shard.is_empty()) {
                self.learn_name(&m.shard);
            }
        }
        self.home.settle_load();
        now
    }

    /// A message to this object, by RPC (`runtime::rpc_object!`) or by fetch.
    async fn on_call(&self, call: Call) -> worker::Result<Reply> {
        if !call.shard.is_empty() {
            self.learn_name(&call.shard);
        }
        self.event(|| None);
        let cfg = match runtime::config(&self.env) {
            Ok(c) => c,
            Err(e) => {
                return Ok(Reply::error(&ApiError::new(
                    503,
                    "invalid_config",
                    e.to_string(),
                )))
            }
        };
        self.after_wake().await?;
        let reply = self.route_message(&call, &cfg).await;
        self.hand_off().await;
        reply
    }

    /// One message to this object, by its type (`object_api`).
    async fn route_message(&self, call: &Call, cfg: &Config) -> worker::Result<Reply> {
        let path = call.path.as_str();
        match path {
            // Any shard.
            <Deliver as Message>::PATH
            | <DeliverBatch as Message>::PATH
            | <Handoff as Message>::PATH
            | <AckRelay as Message>::PATH => self.route_delivery(call, cfg).await,
            <Reclaim as Message>::PATH => answer(call, |_: Reclaim| self.reclaim()).await,
            <PushView as Message>::PATH => {
                answer(call, |PushView(v)| async move {
                    self.learn_view(v);
                    Ok(Done {})
                })
                .await
            }
            <Disconnect as Message>::PATH => {
                answer(
                    call,
                    |d: Disconnect| async move { self.disconnect(&d).await },
                )
                .await
            }
            <ApplyPolicy as Message>::PATH => {
                answer(
                    call,
                    |ApplyPolicy(n)| async move { self.apply_policy(&n).await },
                )
                .await
            }
            <Knob as Message>::PATH if cfg.test_knobs => {
                answer(call, |k: Knob| async move {
                    self.saved.borrow_mut().knob = k.clone();
                    self.save().await?;
                    Ok(k)
                })
                .await
            }
            // The user's home.
            p if p.starts_with("/home/") && self.is_home() => self.route_home(call, cfg).await,
            _ => Ok(Reply::no_route(format!("{path} on {}", self.name()))),
        }
    }

    /// A delivery to this shard's sockets: one frame, a batch, a moved identity's handoff,
    /// or a call's answer.
    async fn route_delivery(&self, call: &Call, cfg: &Config) -> worker::Result<Reply> {
        let each = |batch: &[Delivery], f: &dyn Fn(&Delivery) -> Delivered| {
            batch
                .iter()
                .map(f)
                .fold(Delivered::default(), Delivered::sum)
        };
        match call.path.as_str() {
            <Deliver as Message>::PATH => {
                let knob = self.knob(cfg);
                if let Some(r) = self.inject_fault(&knob, cfg).await {
                    return Ok(r);
                }
                runtime::sleep(knob.latency_ms).await;
                answer(call, |Deliver(d)| async move { Ok(self.deliver(&d)) }).await
            }
            <DeliverBatch as Message>::PATH => {
                answer(call, |DeliverBatch(b)| async move {
                    Ok(each(&b, &|d| self.deliver(d)))
                })
                .await
            }
            <Handoff as Message>::PATH => {
                answer(call, |Handoff(b)| async move {
                    Ok(each(&b, &|d| self.hand_here(d)))
                })
                .await
            }
            // `AckRelay`, the only other path routed here.
            _ => {
                answer(call, |a: AckRelay| async move {
                    let delivered = u64::from(self.answer(cfg, &a.ack_id, &a.ack));
                    Ok(Delivered {
                        delivered,
                        primary: delivered,
                        view_version: self.view_version(),
                    })
                })
                .await
            }
        }
    }

    /// A message to the home role.
    async fn route_home(&self, call: &Call, cfg: &Config) -> worker::Result<Reply> {
        let h = &self.home;
        match call.path.as_str() {
            <Acquire as Message>::PATH => {
                answer(call, |a: Acquire| h.acquire(cfg, a, self.open_count())).await
            }
            <Release as Message>::PATH => {
                answer(call, |r: Release| async move {
                    h.release(r).await?;
                    Ok(Done {})
                })
                .await
            }
            <ShardReport as Message>::PATH => {
                answer(call, |r: ShardReport| async move {
                    self.fresh_own_base();
                    let t = h.take_report(r, false).await;
                    h.emit(t);
                    h.update_spread(cfg, &h.tier_info(cfg), self.open_count());
                    h.schedule_push(cfg).await;
                    Ok(h.report_ack(cfg))
                })
                .await
            }
            <RouteLookup as Message>::PATH => {
                answer(call, |l: RouteLookup| async move { Ok(h.route(&l).await) }).await
            }
            <TierGet as Message>::PATH => {
                answer(call, |_: TierGet| async move { Ok(h.tier_info(cfg)) }).await
            }
            <SetTier as Message>::PATH => answer(call, |t: SetTier| h.set_tier(cfg, t.tier)).await,
            <IssueTicket as Message>::PATH => {
                answer(call, |i: IssueTicket| h.issue_ticket(i)).await
            }
            <Redeem as Message>::PATH => answer(call, |r: Redeem| h.redeem_ticket(cfg, r)).await,
            <UsageGet as Message>::PATH => {
                answer(
                    call,
                    |_: UsageGet| async move { Ok(h.usage_limits().await) },
                )
                .await
            }
            <UsageSet as Message>::PATH => {
                answer(call, |UsageSet(v)| async move {
                    h.set_usage_limits(v).await?;
                    Ok(Done {})
                })
                .await
            }
            <Observed as Message>::PATH => {
                answer(call, |o: Observed| async move {
                    h.observe(&o);
                    if o.outcomes
                        .contains(&observability::metrics::Outcome::Unavailable)
                    {
                        h.save().await?;
                    }
                    h.schedule_push(cfg).await;
                    Ok(Done {})
                })
                .await
            }
            _ => self.route_user_api(call, cfg).await,
        }
    }

    /// What the gateway and the edge's own objects ask of the user as a whole, at its home:
    /// stats, broadcasts, disconnects, moves and policy notices.
    async fn route_user_api(&self, call: &Call, cfg: &Config) -> worker::Result<Reply> {
        let h = &self.home;
        match call.path.as_str() {
            <StatsRequest as Message>::PATH => {
                let started = runtime::now_ms();
                let resp = answer(call, |_: StatsRequest| async move {
                    h.confirm().await?;
                    Ok(h.user_stats(cfg, self.stats()))
                })
                .await;
                // The home answers stats itself: its handling time is the DO response time.
                self.observe_latency(Series::DoResponse, started).await;
                resp
            }
            <BroadcastRequest as Message>::PATH => {
                let started = runtime::now_ms();
                let resp = answer(call, |BroadcastRequest(d)| async move {
                    Ok(self.broadcast(&d).await)
                })
                .await;
                self.observe_latency(Series::BroadcastDelivery, started)
                    .await;
                resp
            }
            <DisconnectUser as Message>::PATH => {
                answer(call, |DisconnectUser(d)| async move {
                    self.disconnect_user(&d).await
                })
                .await
            }
            <Hold as Message>::PATH => {
                answer(call, |hold: Hold| async move {
                    self.fresh_own_base();
                    let t = h.hold(&hold);
                    h.emit(t);
                    self.rearm().await?;
                    Ok(Done {})
                })
                .await
            }
            <PolicyNotice as Message>::PATH => {
                answer(call, |n: PolicyNotice| async move {
                    self.policy_notice(&n).await
                })
                .await
            }
            p => Ok(Reply::no_route(p.to_owned())),
        }
    }

    /// The injection in force: none unless the config enables test knobs.
    fn knob(&self, cfg: &Config) -> Knob {
        if cfg.test_knobs {
            self.saved.borrow().knob.clone()
        } else {
            Knob::default()
        }
    }

    async fn inject_fault(&self, knob: &Knob, cfg: &Config) -> Option<Reply> {
        match knob.fault? {
            Fault::Error => Some(Reply::error(&ApiError::new(
                500,
                "injected_fault",
                "this shard fails on purpose (TEST_KNOBS)",
            ))),
            Fault::Hang => {
                runtime::sleep(cfg.fanout_timeout_ms + 1_000).await;
                Some(Reply::error(&ApiError::new(
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
            if s.user.is_empty() {
                if let Some(n) = shard_policies::parse_object_name(shard) {
                    s.user = n.user;
                }
            }
        }
    }

    fn name(&self) -> String {
        self.saved.borrow().name.clone()
    }

    fn user(&self) -> String {
        self.saved.borrow().user.clone()
    }

    /// Whether this shard is its user's home (`cm:{user}`), from its name (parsed once per
    /// name: the question is asked several times per event).
    fn is_home(&self) -> bool {
        let s = self.saved.borrow();
        let mut memo = self.home_memo.borrow_mut();
        if memo.0 != s.name {
            *memo = (s.name.clone(), crate::placement::is_home(&s.name));
        }
        memo.1
    }

    async fn save(&self) -> worker::Result<()> {
        let snapshot = self.saved.borrow().clone();
        self.state.storage().put(state::KEY, snapshot).await
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

    /// Sends `d.frame` to the sockets its filter selects on this shard, and keeps it for the
    /// identities the edge is moving that it reaches (`moves`).
    fn deliver(&self, d: &Delivery) -> Delivered {
        let mut r = self.send_here(d);
        if self.keep_for_moves(d) {
            r.primary += 1;
        }
        r
    }

    /// Sends `d.frame` to the sockets its filter selects on this shard.
    fn send_here(&self, d: &Delivery) -> Delivered {
        let (mut primary, mut secondary) = self.selected(&d.filter);
        // Handed to a returned socket already (its handoff came first): not again.
        if let Some(to) = self.recent.borrow().handed_to(&d.frame) {
            let fresh = |w: &WebSocket| {
                attachment(w).is_none_or(|m| !to.contains(&m.connection_id.as_str()))
            };
            primary.retain(fresh);
            secondary.retain(fresh);
        }
        self.owe_answers(d, &primary);
        let primary = runtime::send_all(&primary, &d.frame);
        // The scoped halves hold no user-scoped socket, so nothing is sent twice.
        let delivered = primary + runtime::send_all(&secondary, &d.frame);
        self.load.borrow_mut().sent(delivered);
        if delivered > 0 {
            self.recent
                .borrow_mut()
                .sent(&d.frame, &d.filter, runtime::now_ms());
        }
        Delivered {
            delivered,
            primary,
            view_version: self.view_version(),
        }
    }

    /// A call to a machine or a session: each socket it reaches owes an answer, and a drain
    /// closes it only after it has given one (`routing::calls`), or the answer would be lost.
    fn owe_answers(&self, d: &Delivery, to: &[WebSocket]) {
        if !matches!(
            d.filter,
            Filter::Machine { .. } | Filter::AllInterestedInSession { .. }
        ) {
            return;
        }
        let Some(call) = crate::routing::ack_id::sealed_in(&d.frame) else {
            return;
        };
        let now = runtime::now_ms();
        let mut calls = self.calls.borrow_mut();
        for m in to.iter().filter_map(attachment) {
            calls.sent(&m.connection_id, call, now);
        }
    }

    /// Hands a moved identity what was held for it: to each of its sockets here, every
    /// frame it has not got directly since it connected.
    fn hand_here(&self, d: &Delivery) -> Delivered {
        let mut delivered = 0;
        for ws in self.selected(&d.filter).0 {
            let Some(m) = attachment(&ws) else { continue };
            if self.recent.borrow().reached(&d.frame, &m) {
                self.handoff_skipped.set(self.handoff_skipped.get() + 1);
            } else if ws.send_with_str(&d.frame).is_ok() {
                delivered += 1;
                self.recent
                    .borrow_mut()
                    .handed(&d.frame, &m.connection_id, runtime::now_ms());
            }
        }
        self.load.borrow_mut().sent(delivered);
        Delivered {
            delivered,
            primary: delivered,
            view_version: self.view_version(),
        }
    }

    /// The sockets `f` selects here: those it is about, and the user-scoped half of the
    /// scoped filters.
    fn selected(&self, f: &Filter) -> (Vec<WebSocket>, Vec<WebSocket>) {
        let scoped = |tag: String, t: ClientType| -> Vec<WebSocket> {
            self.sockets_with(Some(&tag))
                .into_iter()
                .filter(|w| attachment(w).is_some_and(|m| m.client_type == t))
                .collect()
        };
        let user_scoped = || self.sockets_with(Some(&ClientType::UserScoped.tag()));
        match f {
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
            Filter::App { correlation_id } => (
                user_scoped()
                    .into_iter()
                    .filter(|w| {
                        attachment(w)
                            .is_some_and(|m| m.correlation_id.as_ref() == Some(correlation_id))
                    })
                    .collect(),
                Vec::new(),
            ),
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

    /// The first step of a close or an error: the socket's attachment, read once (each read
    /// is a structured clone out of the runtime), the event counted, and the socket in the
    /// index before anything builds it after a wake (or the close would find it uncounted).
    fn closing(&self, ws: &WebSocket) -> Option<SocketMeta> {
        let meta = attachment(ws);
        self.event(|| meta.clone());
        if let Some(m) = &meta {
            self.index_with_closing(m);
        }
        meta
    }

    /// After `closing`: uncounts the socket, settles the lease and the gauges.
    async fn after_close(&self, meta: Option<SocketMeta>, code: u16) -> worker::Result<()> {
        if let Some(m) = meta {
            self.count_close(&m, code).await;
        }
        self.settle().await?;
        self.observe_gauges().await;
        Ok(())
    }

    fn stats(&self) -> ShardStats {
        let ix = self.index_snapshot();
        let s = self.saved.borrow();
        let load = *self.load.borrow();
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
            events: load.events(),
            frames_sent: load.frames_sent(),
            peak_events_per_second: load.peak_per_second(),
            handoff_skipped: self.handoff_skipped.get(),
            recent_shed: self.recent.borrow().shed,
            moved_shed: self.moved.borrow().shed,
        }
    }

    /// The version of the routing view this shard holds; 0 without one.
    fn view_version(&self) -> u64 {
        self.view.borrow().as_ref().map_or(0, |v| v.version)
    }

    /// Sets the one alarm to the earliest of everything this object has scheduled.
    async fn rearm(&self) -> worker::Result<()> {
        let at = [
            self.saved.borrow().drain_at,
            self.observer.borrow().report_at,
            self.reporter.borrow().retry_at,
            self.outbox.due_at(),
            self.with_index(|ix| ix.next_expiry()),
            self.retire_at.get(),
            self.is_home().then(|| self.home.next_due()).flatten(),
        ]
        .into_iter()
        .flatten()
        .min();
        match at {
            Some(at) => self.clock.arm(&self.state, at).await,
            None => Ok(()),
        }
    }
}

fn attachment(ws: &WebSocket) -> Option<SocketMeta> {
    runtime::attached(ws)
}

fn close(ws: &WebSocket, code: u16, reason: &str) {
    if ws.close(Some(code), Some(reason)).is_err() {
        // Codes the runtime will not send (e.g. reserved ones) become 1000.
        let _ = ws.close(Some(1000), Some(reason));
    }
}
