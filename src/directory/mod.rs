//! The per-user directory Durable Object: the user's shard set and the
//! authority for the user's tier limit (see `lease` for the protocol).
//!
//! Touched when a shard needs more slots or gives some back, and once per
//! HTTP broadcast or stats call for the shard list; never per socket message.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use futures::lock::Mutex;
use serde::{Deserialize, Serialize};
use worker::{console_error, durable_object, DurableObject, Env, Method, Request, Response, State};

use crate::auth::ticket_book::{Issue, TicketBook};
use crate::lease::Ledger;
use crate::metrics::{Observations, Outcome, ShardGauges, ShardMetrics, UserMetrics};
use crate::outbox::Outbox;
use crate::placement;
use crate::protocol::ApiError;
use crate::registry::book::Outgoing;
use crate::routing::view::{PresenceBook, PresenceReport};
use crate::rpc::{
    Acquire, DirectoryView, Granted, IssueTicket, Observed, Reclaimed, Redeem, Redeemed, Release,
    SetTier, TierInfo, ViewShard,
};
use crate::runtime;

const KEY: &str = "directory";
/// Metrics live under their own key: a change of their shape costs metrics,
/// never the ledger.
const METRICS_KEY: &str = "metrics";
/// The ticket rate limit and redeemed nonces: written per ticket, so kept apart from the
/// ledger to keep those writes small.
const TICKETS_KEY: &str = "tickets";
/// How long the directory batches its shards' reports before the registry.
const PUSH_EVERY_MS: u64 = 5_000;
/// A reclaim pass waits at most this long for one shard.
const RECLAIM_TIMEOUT_MS: u32 = 2_000;
/// While a user has shards, their counts are reconciled this often, so a
/// shard that lost its sockets (a restart, a crash) leaves the set even if
/// the user never runs short of slots.
const RECONCILE_EVERY_MS: u64 = 60_000;

/// The user's routing view (shards and presence) lives under its own key: it changes with
/// every presence report.
const PRESENCE_KEY: &str = "presence";
/// After this object starts with machines it believes online, a reconcile pass follows this
/// soon: a workerd restart closes every socket without a close event, and without the pass
/// those machines would stay online until the next periodic one.
const START_RECONCILE_MS: u64 = 2_000;

mod presence;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Saved {
    ledger: Ledger,
    /// The user this directory serves, learned from its shards' names.
    user: String,
    /// The tier resolved at the last grant, for the metrics pushed to the registry.
    tier: String,
    /// The operator's per-user tier (`PUT /admin/users/{id}/tier`); `None`: `DEFAULT_TIER`.
    tier_override: Option<String>,
    rejected_tier_limit: u64,
    rejected_unavailable: u64,
    reconcile_at: Option<u64>,
}

/// The user's metrics on their way to the registry: each shard's latest
/// gauges and the observations not yet pushed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Pending {
    gauges: BTreeMap<String, ShardGauges>,
    observed: Observations,
    policy: String,
    /// The registry push in flight, kept until acknowledged (see `registry::book`).
    outgoing: Outgoing,
}

#[durable_object]
pub struct Directory {
    state: State,
    env: Env,
    saved: Rc<RefCell<Saved>>,
    pending: Rc<RefCell<Pending>>,
    tickets: Rc<RefCell<TicketBook>>,
    /// Where the user's recipients are: the view every shard routes by.
    book: Rc<RefCell<PresenceBook>>,
    /// Presence notices waiting for the next batch, and whether a batch is on its way.
    notices: Rc<RefCell<Vec<crate::protocol::Delivery>>>,
    notifying: Rc<Cell<bool>>,
    push_at: Cell<Option<u64>>,
    /// Machine hooks on their way to the upstream.
    outbox: Rc<Outbox>,
    /// A coalesced shard-set push is scheduled.
    push_pending: Rc<Cell<bool>>,
    /// An addition's prompt push is running; another addition meanwhile asks for one more.
    urgent_running: Rc<Cell<bool>>,
    urgent_again: Rc<Cell<bool>>,
    /// The view version the shards were last sent, so a push never repeats one.
    pushed_version: Rc<Cell<u64>>,
    /// One ledger operation at a time, including its reclaim pass.
    lock: Mutex<()>,
}

impl DurableObject for Directory {
    fn new(state: State, env: Env) -> Self {
        let saved = Rc::new(RefCell::new(Saved::default()));
        let pending = Rc::new(RefCell::new(Pending::default()));
        let tickets = Rc::new(RefCell::new(TicketBook::default()));
        let presence = Rc::new(RefCell::new(PresenceBook::default()));
        let (slot, metrics, book, known) = (
            saved.clone(),
            pending.clone(),
            tickets.clone(),
            presence.clone(),
        );
        let storage = state.storage();
        let _load = state.block_concurrency_while(async move {
            if let Ok(Some(s)) = storage.get::<Saved>(KEY).await {
                *slot.borrow_mut() = s;
            }
            if let Ok(Some(t)) = storage.get::<TicketBook>(TICKETS_KEY).await {
                *book.borrow_mut() = t;
            }
            if let Ok(Some(b)) = storage.get::<PresenceBook>(PRESENCE_KEY).await {
                *known.borrow_mut() = b;
            }
            let soon = runtime::now_ms() + START_RECONCILE_MS;
            let online = !known.borrow().view.machines_online().is_empty();
            let due = slot.borrow().reconcile_at.is_some_and(|at| at <= soon);
            if online && !due {
                slot.borrow_mut().reconcile_at = Some(soon);
                storage.set_alarm(runtime::scheduled(soon)).await?;
            }
            // Unreadable metrics (an older shape) are dropped, not fatal.
            if let Ok(Some(p)) = storage.get::<Pending>(METRICS_KEY).await {
                *metrics.borrow_mut() = p;
            }
            Ok(())
        });
        Self {
            state,
            env,
            saved,
            pending,
            tickets,
            book: presence,
            notices: Rc::new(RefCell::new(Vec::new())),
            notifying: Rc::new(Cell::new(false)),
            push_at: Cell::new(None),
            outbox: Outbox::new(),
            push_pending: Rc::new(Cell::new(false)),
            urgent_running: Rc::new(Cell::new(false)),
            urgent_again: Rc::new(Cell::new(false)),
            pushed_version: Rc::new(Cell::new(0)),
            lock: Mutex::new(()),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let path = req.path();
        match (req.method(), path.as_str()) {
            (Method::Post, "/acquire") => {
                let a: Acquire = runtime::body_json(&mut req).await?;
                runtime::json(200, &self.acquire(a).await?)
            }
            (Method::Post, "/release") => {
                let r: Release = runtime::body_json(&mut req).await?;
                self.release(r).await?;
                runtime::json(200, &serde_json::json!({"ok": true}))
            }
            (Method::Post, "/view") => runtime::json(200, &self.view()),
            (Method::Post, "/route") => runtime::json(200, &self.book.borrow().view),
            (Method::Post, "/usage") => runtime::json(200, &self.usage_limits().await),
            (Method::Post, "/usage/set") => {
                let v: serde_json::Value = runtime::body_json(&mut req).await?;
                self.set_usage_limits(v).await?;
                runtime::json(200, &serde_json::json!({"ok": true}))
            }
            (Method::Post, "/presence") => {
                let r: PresenceReport = runtime::body_json(&mut req).await?;
                runtime::json(200, &self.presence(r).await?)
            }
            (Method::Post, "/tier") => runtime::json(200, &self.tier_info()),
            (Method::Post, "/tier/set") => {
                let t: SetTier = runtime::body_json(&mut req).await?;
                runtime::json(200, &self.set_tier(t).await?)
            }
            (Method::Post, "/ticket/issue") => {
                let i: IssueTicket = runtime::body_json(&mut req).await?;
                runtime::json(200, &self.issue_ticket(i).await?)
            }
            (Method::Post, "/ticket/redeem") => {
                let r: Redeem = runtime::body_json(&mut req).await?;
                runtime::json(200, &self.redeem_ticket(r).await?)
            }
            (Method::Post, "/report") => {
                let m: ShardMetrics = runtime::body_json(&mut req).await?;
                self.report(m).await?;
                runtime::json(200, &serde_json::json!({"ok": true}))
            }
            (Method::Post, "/observe") => {
                let o: Observed = runtime::body_json(&mut req).await?;
                self.observe(o).await?;
                runtime::json(200, &serde_json::json!({"ok": true}))
            }
            _ => runtime::error(&ApiError::new(404, "not_found", format!("no route {path}"))),
        }
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let now = runtime::now_ms();
        self.record_hook_news().await?;
        if self.saved.borrow().reconcile_at.is_some_and(|at| at <= now) {
            self.reconcile(now).await?;
        }
        if self.push_at.get().is_some_and(|at| at <= now) {
            self.push_to_registry(now).await?;
        }
        // Last, and in the background: a slow upstream delays neither of the above.
        self.flush_hooks(now);
        self.rearm().await?;
        Response::ok("")
    }

    runtime::socketless_handlers!();
}

impl Directory {
    async fn save(&self) -> worker::Result<()> {
        let snapshot = self.saved.borrow().clone();
        self.state.storage().put(KEY, snapshot).await
    }

    /// The user's tier: the override while it names a configured tier, else the default.
    fn tier_info(&self) -> TierInfo {
        let overridden = self.saved.borrow().tier_override.clone();
        match runtime::config(&self.env) {
            Ok(cfg) => {
                let (tier, t) = cfg.resolve_tier(overridden.as_deref());
                TierInfo {
                    tier: tier.to_owned(),
                    limit: t.limit,
                    overridden,
                }
            }
            // Unreachable in practice: the gateway refuses traffic while the config is
            // invalid. A zero limit grants nothing, which is the safe side.
            Err(_) => TierInfo {
                tier: String::new(),
                limit: 0,
                overridden,
            },
        }
    }

    /// Sets or clears the override. A lower limit applies to the next connect at once:
    /// every shard's spare leased slots are reclaimed, so none admits past the new limit.
    async fn set_tier(&self, t: SetTier) -> worker::Result<TierInfo> {
        let _guard = self.lock.lock().await;
        self.saved.borrow_mut().tier_override = t.tier;
        let info = self.tier_info();
        {
            let mut s = self.saved.borrow_mut();
            s.ledger.limit = info.limit;
            s.tier.clone_from(&info.tier);
        }
        self.save().await?;
        self.reclaim_from_others("").await;
        self.save().await?;
        self.ledger_changed().await?;
        Ok(info)
    }

    /// Counts a ticket against the user's per-minute limit, exactly: this object handles one
    /// request at a time and the count changes before any await.
    async fn issue_ticket(&self, i: IssueTicket) -> worker::Result<Issue> {
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
    async fn redeem_ticket(&self, r: Redeem) -> worker::Result<Redeemed> {
        let (result, token) = {
            let mut book = self.tickets.borrow_mut();
            let result = book.redeem(&r.nonce, r.exp_ms, runtime::now_ms());
            (result, book.take_bound(&r.nonce))
        };
        self.save_tickets().await?;
        Ok(Redeemed {
            result,
            tier: self.tier_info(),
            token,
        })
    }

    async fn save_tickets(&self) -> worker::Result<()> {
        let snapshot = self.tickets.borrow().clone();
        self.state.storage().put(TICKETS_KEY, snapshot).await
    }

    fn view(&self) -> DirectoryView {
        let tier = self.tier_info();
        let routing = self.book.borrow().view.clone();
        let s = self.saved.borrow();
        DirectoryView {
            tier,
            routing,
            shards: s
                .ledger
                .shards
                .iter()
                .map(|(name, e)| ViewShard {
                    name: name.clone(),
                    granted: e.granted.max(e.open),
                    draining: e.draining,
                })
                .collect(),
            rejected_tier_limit: s.rejected_tier_limit,
            rejected_unavailable: s.rejected_unavailable,
        }
    }

    async fn acquire(&self, a: Acquire) -> worker::Result<Granted> {
        let _guard = self.lock.lock().await;
        let tier = self.tier_info();
        {
            let mut s = self.saved.borrow_mut();
            // The directory resolves the tier itself (the operator's override, else the
            // default), so the limit is exact whatever a gateway has cached. Lowering it
            // stops new grants and lets existing sockets finish.
            s.ledger.limit = tier.limit;
            s.tier.clone_from(&tier.tier);
            if s.user.is_empty() {
                if let Some(n) = shard_policies::parse_object_name(&a.shard) {
                    s.user = n.user;
                }
            }
        }
        let short = self.saved.borrow().ledger.free() < a.need;
        let in_transit = short && self.reclaim_from_others(&a.shard).await;
        let grant = {
            let mut s = self.saved.borrow_mut();
            let g = s.ledger.grant(&a.shard, a.want, a.need, a.open);
            // A refusal counts only when it is final, not when the asker retries.
            if g.granted == 0 && !in_transit {
                s.rejected_tier_limit += 1;
            }
            g
        };
        // Persist the grant before the shard can use it (the ordering rule).
        self.save().await?;
        if grant.joined {
            self.ensure_reconcile().await?;
        }
        self.ledger_changed().await?;
        Ok(Granted {
            granted: grant.granted,
            seq: grant.seq,
            retry: grant.granted == 0 && in_transit,
            view: self.book.borrow().view.clone(),
            tier,
        })
    }

    async fn ensure_reconcile(&self) -> worker::Result<()> {
        if self.saved.borrow().reconcile_at.is_none() {
            self.saved.borrow_mut().reconcile_at = Some(runtime::now_ms() + RECONCILE_EVERY_MS);
            self.save().await?;
            self.rearm().await?;
        }
        Ok(())
    }

    /// Reclaims from every shard so counts match reality; runs while the
    /// user has shards.
    async fn reconcile(&self, now: u64) -> worker::Result<()> {
        let _guard = self.lock.lock().await;
        self.reclaim_from_others("").await;
        let any = !self.saved.borrow().ledger.shards.is_empty()
            || !self.book.borrow().view.shards.is_empty();
        self.saved.borrow_mut().reconcile_at = any.then_some(now + RECONCILE_EVERY_MS);
        self.save().await?;
        self.ledger_changed().await?;
        Ok(())
    }

    /// The one alarm, at the earliest of the reconcile pass and the push.
    async fn rearm(&self) -> worker::Result<()> {
        let at = [
            self.saved.borrow().reconcile_at,
            self.push_at.get(),
            self.outbox.due_at(),
        ]
        .into_iter()
        .flatten()
        .min();
        match at {
            Some(at) => self.state.storage().set_alarm(runtime::scheduled(at)).await,
            None => Ok(()),
        }
    }

    async fn save_pending(&self) -> worker::Result<()> {
        let snapshot = self.pending.borrow().clone();
        self.state.storage().put(METRICS_KEY, snapshot).await
    }

    async fn schedule_push(&self) -> worker::Result<()> {
        if self.push_at.get().is_none() {
            self.push_at.set(Some(runtime::now_ms() + PUSH_EVERY_MS));
            self.rearm().await?;
        }
        Ok(())
    }

    /// A shard's report: its latest gauges (while it is in the set) and the
    /// observations since its last report.
    async fn report(&self, m: ShardMetrics) -> worker::Result<()> {
        let listed = self
            .saved
            .borrow()
            .ledger
            .shards
            .contains_key(&m.gauges.shard);
        {
            let mut p = self.pending.borrow_mut();
            if listed {
                p.policy.clone_from(&m.gauges.policy);
                p.gauges.insert(m.gauges.shard.clone(), m.gauges);
            } else {
                p.gauges.remove(&m.gauges.shard);
            }
            p.observed.merge(&m.observed);
        }
        {
            let mut s = self.saved.borrow_mut();
            if s.user.is_empty() {
                s.user = m.user_id;
            }
        }
        self.save_pending().await?;
        self.schedule_push().await
    }

    /// What the gateway decided or measured for this user.
    async fn observe(&self, o: Observed) -> worker::Result<()> {
        let now = runtime::now_ms();
        let unavailable = o
            .outcomes
            .iter()
            .filter(|x| **x == Outcome::Unavailable)
            .count() as u64;
        {
            let mut p = self.pending.borrow_mut();
            for x in &o.outcomes {
                p.observed.record_outcome(now, &o.tier, *x);
            }
            for (series, ms) in &o.latencies {
                p.observed.record_latency(now, &o.tier, *series, *ms);
            }
        }
        if unavailable > 0 {
            self.saved.borrow_mut().rejected_unavailable += unavailable;
            self.save().await?;
        }
        self.save_pending().await?;
        self.schedule_push().await
    }

    /// Sends the user's gauges and the pending observations to its registry
    /// shard. Shards that left the set are dropped first. A push that got no answer is
    /// sent again as it was (same number, same delta) until one comes, so the registry
    /// never adds a delta twice; what was observed meanwhile waits for the next push.
    async fn push_to_registry(&self, now: u64) -> worker::Result<()> {
        self.push_at.set(None);
        let (user, tier) = {
            let s = self.saved.borrow();
            (s.user.clone(), s.tier.clone())
        };
        if user.is_empty() {
            return Ok(());
        }
        let r = runtime::random16();
        let random = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
        let (push, resend) = {
            let mut p = self.pending.borrow_mut();
            let listed = self.saved.borrow();
            let resend = p.outgoing.unacked.is_some();
            let Pending {
                gauges,
                observed,
                policy,
                outgoing,
            } = &mut *p;
            gauges.retain(|name, _| listed.ledger.shards.contains_key(name));
            let push = outgoing.next(random, || {
                let mut u = UserMetrics::new(&user, &tier, policy);
                for g in gauges.values() {
                    u.set_gauges(g.clone());
                }
                u.observed = std::mem::take(observed);
                u
            });
            (push, resend)
        };
        // Persisted before it leaves: after a crash the same push is resent, never rebuilt.
        if !resend {
            self.save_pending().await?;
        }
        let n = runtime::config(&self.env)
            .map(|c| c.registry_shards)
            .unwrap_or(1);
        let sent = match runtime::stub(
            &self.env,
            placement::REGISTRY_BINDING,
            &placement::registry_name(&user, n),
        ) {
            Ok(stub) => runtime::call::<_, serde_json::Value>(&stub, "/ingest", None, &push)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                self.pending.borrow_mut().outgoing.acked(push.push);
                self.save_pending().await?;
                // A resent push carried old gauges: the current ones follow.
                if resend {
                    self.schedule_push().await?;
                }
            }
            Err(e) => {
                console_error!("registry push failed: {e}");
                self.push_at.set(Some(now + PUSH_EVERY_MS));
            }
        }
        Ok(())
    }

    async fn release(&self, r: Release) -> worker::Result<()> {
        let _guard = self.lock.lock().await;
        {
            let mut s = self.saved.borrow_mut();
            if r.reset {
                s.ledger.reset(&r.shard);
            } else {
                s.ledger.release(&r.shard, r.n, r.open, r.draining);
            }
        }
        self.save().await?;
        self.ledger_changed().await
    }

    /// Asks every other shard holding grants for its spare slots, at once.
    /// A shard that restarted without its sockets gives back all it held.
    /// Returns whether a grant was still on its way to one of them.
    async fn reclaim_from_others(&self, except: &str) -> bool {
        let mut targets = self.saved.borrow().ledger.reclaim_targets(except);
        if except.is_empty() {
            // A full pass also asks every shard the view says holds sockets, so presence
            // left behind by a shard that lost its sockets (a restart) is corrected.
            for (name, p) in &self.book.borrow().view.shards {
                if !p.is_empty() && !targets.contains(name) {
                    targets.push(name.clone());
                }
            }
        }
        let env = &self.env;
        let calls = targets.iter().map(|name| async move {
            let stub = runtime::stub(env, placement::SHARD_BINDING, name).ok()?;
            let r = runtime::timeout(
                RECLAIM_TIMEOUT_MS,
                runtime::call::<_, Reclaimed>(
                    &stub,
                    "/reclaim",
                    Some(name),
                    &serde_json::json!({}),
                ),
            )
            .await;
            match r {
                Some(Ok(rec)) => Some((name.clone(), rec)),
                _ => {
                    // Its slots stay counted: safe, retried on the next shortage.
                    console_error!("reclaim from {name} failed");
                    None
                }
            }
        });
        let answers = futures::future::join_all(calls).await;
        let mut in_transit = false;
        let mut transitions = Vec::new();
        for (name, rec) in answers.into_iter().flatten() {
            let settled = self.saved.borrow_mut().ledger.settle(&name, rec.lease);
            in_transit |= settled.in_transit;
            if let Some(report) = rec.presence {
                transitions.extend(self.book.borrow_mut().apply(report).unwrap_or_default());
            }
        }
        self.emit(transitions).await;
        in_transit
    }
}
