//! The home role. A user's home shard, `cm:{user}` (the shard `single` uses), is the user's
//! authority: its tier (the operator's override), its tier limit across shards (the lease
//! ledger), its tickets and usage limits, where its recipients are (the presence book and
//! the routing view), its stats and its metrics on their way to the registry. Every other
//! shard of the user leases slots from it and reports to it after the fact.
//!
//! While the policy keeps a user on one shard, that shard is the home: it admits against the
//! limit itself, routes everything locally and computes machine presence from its own
//! sockets, so the user costs one object and no internal calls. The ledger, the book and the
//! fan-outs start to matter only when a second shard appears.
//!
//! - `ledger`: slots for the other shards, the home's own admission, reconcile, the spread.
//! - `book`: the other shards' reports, presence transitions and notices, the view pushes.
//! - `front`: what the gateway asks of the user: stats, broadcast and disconnect targets.
//! - `report`: metrics on their way to the registry.
//!
//! What must survive a restart is in storage, each part under its own key so a change
//! writes only that part: `home` (ledger, override, refusal counters), `tickets`,
//! `usage:limits`, and `book:{shard}` per other shard (its presence and stats).

mod book;
mod front;
mod ledger;
mod moves;
mod pending;
mod policy;
mod report;
mod stored;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use futures::lock::Mutex;
use serde::{Deserialize, Serialize};
use worker::{Env, ListOptions, State};

use crate::auth::ticket_book::{Issue, TicketBook};
use crate::config::Config;
use crate::object_api::{IssueTicket, Redeem, Redeemed, ReportAck, TierInfo};
use crate::placement::lease::Ledger;
use crate::protocol::Delivery;
use crate::routing::view::{version_floor, PresenceBook, RoutingView, ShardPresence};
use crate::runtime::{self, AlarmClock};
use observability::stats::ShardStats;

use crate::objects::shard::state::Persisted;
use stored::{BookEntry, BOOK_PREFIX};

use pending::Pending;

const KEY: &str = "home";
const TICKETS_KEY: &str = "tickets";
/// The platform's storage key for the usage limits.
const USAGE_KEY: &str = "usage:limits";
/// Each other shard's entry: `book:{shard}`.
/// The machines the home's own sockets hold, stored only when that set changes: what lets a
/// home that restarted announce them offline.
const OWN_MACHINES_KEY: &str = "own:machines";

/// What the home keeps under [`KEY`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Saved {
    pub ledger: Ledger,
    /// The operator's per-user tier (`PUT /admin/users/{id}/tier`); `None`: `DEFAULT_TIER`.
    pub tier_override: Option<String>,
    pub rejected_tier_limit: u64,
    pub rejected_unavailable: u64,
    /// The next reconcile pass, while other shards hold slots.
    pub reconcile_at: Option<u64>,
    /// What shards that left the user's set had counted, so the user's totals outlive them.
    pub retired: observability::stats::Retired,
    /// The latest run-time policy notice (`policy`); `None`: the config's policy.
    pub policy: Option<crate::object_api::PolicyNotice>,
}

pub(crate) struct Home {
    pub state: Rc<State>,
    pub env: Env,
    /// The shard's own record (its name and user).
    shard: Rc<RefCell<Persisted>>,
    /// The object's hook outbox and alarm, shared with the shard role.
    outbox: Rc<crate::objects::outbox::Outbox>,
    clock: Rc<AlarmClock>,
    /// What storage held when the object woke, put back on its first event.
    loaded: Rc<RefCell<Option<Loaded>>>,
    pub saved: RefCell<Saved>,
    tickets: RefCell<TicketBook>,
    /// Where the user's recipients are, per shard (this one's own entry included).
    pub book: Rc<RefCell<PresenceBook>>,
    /// The other shards' last reported stats.
    pub others: RefCell<BTreeMap<String, ShardStats>>,
    /// Machines on this shard's own sockets as last stored.
    own_machines: RefCell<Vec<String>>,
    /// Metrics on their way to the registry.
    pub pending: RefCell<Pending>,
    /// The spread level new connects should use (`shard_policies::spread`).
    pub spread: Cell<u32>,
    /// One ledger operation at a time, including its reclaim pass.
    pub lock: Mutex<()>,
    /// Presence notices waiting for the next batch, and whether a batch is on its way.
    notices: Rc<RefCell<Vec<Delivery>>>,
    notifying: Rc<Cell<bool>>,
    /// A coalesced view push is scheduled; an addition's prompt push is running (and another
    /// addition meanwhile asks for one more); the version the shards were last sent.
    push_pending: Rc<Cell<bool>>,
    urgent_running: Rc<Cell<bool>>,
    urgent_again: Rc<Cell<bool>>,
    pushed_version: Rc<Cell<u64>>,
    /// The view as an `Rc` for this shard's own routing, rebuilt when its version moves.
    view_cache: RefCell<Option<Rc<RoutingView>>>,
    /// The next registry push, and the first look after a wake (machines the home's own
    /// sockets held before a restart are announced offline then).
    push_at: Cell<Option<u64>>,
    check_at: Cell<Option<u64>>,
    check_armed: Cell<bool>,
    /// The other shards' entries were read back from storage after a wake and not yet
    /// confirmed by the shards themselves (a workerd restart leaves them stale).
    unconfirmed: Cell<bool>,
    /// What is held for identities the edge moves (`routing::moves`), memory only: a move
    /// lasts seconds, and a restart drops every socket anyway.
    pub moves: RefCell<crate::routing::moves::MoveBook>,
    /// Frames for identities that are back, for the shard role to send.
    pub handoffs: RefCell<Vec<crate::routing::moves::Handoff>>,
    /// The home's own sockets' presence, before the moving identities are added.
    pub own_base: RefCell<ShardPresence>,
    /// Offline notices waiting out `PRESENCE_GRACE_MS`.
    pub grace: RefCell<crate::routing::grace::Grace>,
}

/// After a wake with machines known online, the first look at them follows this soon: a
/// workerd restart closes every socket without a close event.
const START_CHECK_MS: u64 = 2_000;

/// Everything the home keeps in storage, read at once when the object wakes.
#[derive(Default)]
pub(crate) struct Loaded {
    saved: Option<Saved>,
    tickets: Option<TicketBook>,
    entries: Vec<(String, BookEntry)>,
    own_machines: Vec<String>,
}

impl Loaded {
    /// Reads the home's keys (absent on a shard that is no user's home: a few empty reads).
    pub async fn read(storage: &worker::Storage) -> worker::Result<Loaded> {
        let saved = storage.get::<Saved>(KEY).await.ok().flatten();
        let tickets = storage.get::<TicketBook>(TICKETS_KEY).await.ok().flatten();
        let own_machines = storage
            .get::<Vec<String>>(OWN_MACHINES_KEY)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let mut entries = Vec::new();
        let map = storage
            .list_with_options(ListOptions::new().prefix(BOOK_PREFIX))
            .await?;
        // Entries are stored as JSON text (like the hook outbox), read back with serde_json.
        map.for_each(&mut |value, key| {
            let entry = value
                .as_string()
                .and_then(|t| serde_json::from_str::<BookEntry>(&t).ok());
            if let (Some(key), Some(entry)) = (key.as_string(), entry) {
                if let Some(shard) = key.strip_prefix(BOOK_PREFIX) {
                    entries.push((shard.to_owned(), entry));
                }
            }
        });
        Ok(Loaded {
            saved,
            tickets,
            entries,
            own_machines,
        })
    }
}

impl Home {
    pub fn new(
        state: Rc<State>,
        env: Env,
        shard: Rc<RefCell<Persisted>>,
        outbox: Rc<crate::objects::outbox::Outbox>,
        clock: Rc<AlarmClock>,
    ) -> Self {
        Self {
            state,
            env,
            shard,
            outbox,
            clock,
            loaded: Rc::new(RefCell::new(None)),
            saved: RefCell::new(Saved::default()),
            tickets: RefCell::new(TicketBook::default()),
            book: Rc::new(RefCell::new(PresenceBook::starting_at(version_floor(
                runtime::now_ms(),
            )))),
            others: RefCell::new(BTreeMap::new()),
            own_machines: RefCell::new(Vec::new()),
            pending: RefCell::new(Pending::default()),
            spread: Cell::new(0),
            lock: Mutex::new(()),
            notices: Rc::new(RefCell::new(Vec::new())),
            notifying: Rc::new(Cell::new(false)),
            push_pending: Rc::new(Cell::new(false)),
            urgent_running: Rc::new(Cell::new(false)),
            urgent_again: Rc::new(Cell::new(false)),
            pushed_version: Rc::new(Cell::new(0)),
            view_cache: RefCell::new(None),
            push_at: Cell::new(None),
            check_at: Cell::new(None),
            check_armed: Cell::new(false),
            unconfirmed: Cell::new(false),
            moves: RefCell::new(crate::routing::moves::MoveBook::default()),
            handoffs: RefCell::new(Vec::new()),
            own_base: RefCell::new(ShardPresence::default()),
            grace: RefCell::new(crate::routing::grace::Grace::default()),
        }
    }

    /// Where the constructor leaves what storage held.
    pub fn loaded_slot(&self) -> Rc<RefCell<Option<Loaded>>> {
        self.loaded.clone()
    }

    /// Puts back what storage held, once, on the object's first event. A home that knows of
    /// machines online (its own sockets' before a restart, or other shards') looks again soon.
    pub fn settle_load(&self) {
        let Some(l) = self.loaded.borrow_mut().take() else {
            return;
        };
        let online = !l.own_machines.is_empty()
            || l.entries
                .iter()
                .any(|(_, e)| !e.presence.machines.is_empty());
        self.unconfirmed.set(!l.entries.is_empty());
        self.restore(l);
        let me = self.name();
        if !me.is_empty() {
            let own = self.stored_own_presence();
            if !own.is_empty() {
                self.book.borrow_mut().restore(&me, 0, 0, own);
            }
        }
        if online {
            self.check_at.set(Some(runtime::now_ms() + START_CHECK_MS));
        }
    }

    pub fn name(&self) -> String {
        self.shard.borrow().name.clone()
    }

    pub fn user(&self) -> String {
        self.shard.borrow().user.clone()
    }

    /// The view for this shard's own routing.
    pub fn view(&self) -> Rc<RoutingView> {
        let version = self.book.borrow().view.version;
        let mut cache = self.view_cache.borrow_mut();
        match cache.as_ref() {
            Some(v) if v.version == version => v.clone(),
            _ => {
                let v = Rc::new(self.book.borrow().view.clone());
                *cache = Some(v.clone());
                v
            }
        }
    }

    /// The answer to a shard's report.
    pub fn report_ack(&self, cfg: &Config) -> ReportAck {
        ReportAck {
            view_version: self.book.borrow().view.version,
            placement: self.placement(cfg),
        }
    }

    /// When the home's own timers are due next.
    pub fn next_due(&self) -> Option<u64> {
        [
            self.saved.borrow().reconcile_at,
            self.push_at.get(),
            self.check_at.get(),
            self.moves_due(),
            self.grace.borrow().next_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Schedules a registry push within `METRICS_PUSH_MS`, at the user's phase of the cycle
    /// (spread over homes), unless one is.
    pub async fn schedule_push(&self, cfg: &Config) {
        if self.push_at.get().is_some() || !self.has_pending_metrics() {
            return;
        }
        let at = self.set_push(cfg);
        if let Err(e) = self.clock.arm(&self.state, at).await {
            worker::console_error!("could not schedule the registry push: {e}");
        }
    }

    /// Sets the next cycle's push now (armed by the caller's rearm) unless one is set: the
    /// user's sockets are likely to have news by then.
    pub fn keep_cycle(&self, cfg: &Config) {
        if self.push_at.get().is_none() {
            self.set_push(cfg);
        }
    }

    /// Sets the push at the user's next phase of the cycle; answers when that is.
    fn set_push(&self, cfg: &Config) -> u64 {
        let at = observability::registry::next_push_at(
            runtime::now_ms(),
            cfg.metrics_push_ms,
            &self.user(),
        );
        self.push_at.set(Some(at));
        at
    }

    /// The home's part of the alarm: the first look after a wake (the caller gives its own
    /// presence) and reconcile.
    pub async fn alarm(&self, now: u64, own: ShardPresence) -> worker::Result<()> {
        if self.check_at.get().is_some_and(|at| at <= now) {
            self.check_at.set(None);
            let t = self.own_presence(own).await;
            self.emit(t);
            self.confirm().await?;
        }
        if self.saved.borrow().reconcile_at.is_some_and(|at| at <= now) {
            self.reconcile(now).await?;
        }
        let t = self.expire_moves(now);
        self.emit(t);
        self.grace_due(now);
        Ok(())
    }

    /// Whether a registry push is scheduled or metrics wait for one.
    pub fn push_pending(&self) -> bool {
        self.push_at.get().is_some() || self.has_pending_metrics()
    }

    /// Whether the registry push is due; taken (the caller adds the home's own metrics and
    /// pushes).
    pub fn take_push(&self, now: u64) -> bool {
        let due = self.push_at.get().is_some_and(|at| at <= now);
        if due {
            self.push_at.set(None);
        }
        due
    }

    /// Takes what [`Loaded::read`] found. Machines this home's own sockets held before a
    /// restart are put back as its own entry: the first look at its (empty) sockets then
    /// announces them offline.
    pub fn restore(&self, l: Loaded) {
        if let Some(s) = l.saved {
            *self.saved.borrow_mut() = s;
        }
        if let Some(t) = l.tickets {
            *self.tickets.borrow_mut() = t;
        }
        let mut book = self.book.borrow_mut();
        let mut others = self.others.borrow_mut();
        for (shard, e) in l.entries {
            book.restore(&shard, e.incarnation, e.seq, e.presence);
            if let Some(st) = e.stats {
                others.insert(shard, st);
            }
        }
        *self.own_machines.borrow_mut() = l.own_machines;
    }

    pub async fn save(&self) -> worker::Result<()> {
        let snapshot = self.saved.borrow().clone();
        self.state.storage().put(KEY, snapshot).await
    }

    /// The user's tier: the override while it names a configured tier, else the default.
    pub fn tier_info(&self, cfg: &Config) -> TierInfo {
        let overridden = self.saved.borrow().tier_override.clone();
        let (tier, t) = cfg.resolve_tier(overridden.as_deref());
        TierInfo {
            tier: tier.to_owned(),
            limit: t.limit,
            overridden,
        }
    }

    /// Counts a ticket against the user's per-minute limit, exactly: this object handles one
    /// request at a time and the count changes before any await.
    pub async fn issue_ticket(&self, i: IssueTicket) -> worker::Result<Issue> {
        let issue = self
            .tickets
            .borrow_mut()
            .issue_bound(runtime::now_ms(), &i.nonce, i.token);
        if matches!(issue, Issue::Allowed { .. }) {
            self.save_tickets().await?;
        }
        Ok(issue)
    }

    /// Marks a ticket's nonce used, so a replay within its window is refused, and hands over
    /// the token it was issued for.
    pub async fn redeem_ticket(&self, cfg: &Config, r: Redeem) -> worker::Result<Redeemed> {
        let (result, token) = {
            let mut book = self.tickets.borrow_mut();
            let result = book.redeem(&r.nonce, r.exp_ms, runtime::now_ms());
            (result, book.take_bound(&r.nonce))
        };
        self.save_tickets().await?;
        Ok(Redeemed {
            result,
            tier: self.tier_info(cfg),
            token,
        })
    }

    async fn save_tickets(&self) -> worker::Result<()> {
        let snapshot = self.tickets.borrow().clone();
        self.state.storage().put(TICKETS_KEY, snapshot).await
    }

    /// The user's usage limits (`update-usage-limits`), as stored; the platform's default
    /// when none are, or when they cannot be read.
    pub async fn usage_limits(&self) -> serde_json::Value {
        match self
            .state
            .storage()
            .get::<serde_json::Value>(USAGE_KEY)
            .await
        {
            Ok(Some(v)) => v,
            _ => {
                serde_json::json!({"limitsAvailable": false, "weeklyLimits": [], "lastUpdatedAt": runtime::now_ms()})
            }
        }
    }

    /// Stores the whole payload plus `lastUpdatedAt`, as the platform's object does.
    pub async fn set_usage_limits(&self, mut v: serde_json::Value) -> worker::Result<()> {
        if let Some(o) = v.as_object_mut() {
            o.insert("lastUpdatedAt".into(), runtime::now_ms().into());
        }
        self.state.storage().put(USAGE_KEY, v).await
    }

    /// Asks every other shard for its current state once after a wake, before an answer
    /// depends on it (stats): entries read back from storage are stale after a restart.
    pub async fn confirm(&self) -> worker::Result<()> {
        if self.unconfirmed.replace(false) {
            self.reconcile(runtime::now_ms()).await?;
        }
        Ok(())
    }

    /// Whether the first look after a wake is scheduled but the alarm not yet armed for it.
    pub fn take_wake_check(&self) -> bool {
        self.check_at.get().is_some() && !self.check_armed.replace(true)
    }

    /// Whether the home holds user state that must outlive its sockets (so it never
    /// deletes its storage): an override, tickets, usage limits, other shards.
    pub async fn holds_state(&self) -> bool {
        let s = self.saved.borrow().clone();
        s.tier_override.is_some()
            || !s.ledger.shards.is_empty()
            || s.rejected_tier_limit > 0
            || s.rejected_unavailable > 0
            || self.tickets.borrow().remembered() > 0
            || !self.others.borrow().is_empty()
            || !self.own_machines.borrow().is_empty()
            || matches!(
                self.state
                    .storage()
                    .get::<serde_json::Value>(USAGE_KEY)
                    .await,
                Ok(Some(_))
            )
    }

    /// Stores the home's own machines when that set changed.
    pub async fn remember_own_machines(&self, own: &ShardPresence) {
        let now: Vec<String> = own.machines.iter().cloned().collect();
        if *self.own_machines.borrow() == now {
            return;
        }
        *self.own_machines.borrow_mut() = now.clone();
        let storage = self.state.storage();
        let r = if now.is_empty() {
            storage.delete(OWN_MACHINES_KEY).await.map(|_| ())
        } else {
            storage.put(OWN_MACHINES_KEY, now).await
        };
        if let Err(e) = r {
            worker::console_error!("own machines not stored: {e}");
        }
    }

    /// The presence the home's own sockets had when it last stored it (after a restart).
    pub fn stored_own_presence(&self) -> ShardPresence {
        ShardPresence {
            machines: self.own_machines.borrow().iter().cloned().collect(),
            ..ShardPresence::default()
        }
    }
}
