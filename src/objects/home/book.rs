//! The home's side of routing: the other shards' reports (each replaces that shard's entry,
//! stored under its own key), the home's own presence (from its own socket index, no call),
//! the machine transitions they cause (notices to the user's apps, hooks to the upstream),
//! and the view pushed to the shards that route frames.
//!
//! Staleness: a shard reports after the fact, one report in flight, within milliseconds of a
//! change (additions at once, removals batched, see `shard::report`). A report that *adds* a
//! place where a recipient is goes to the other occupied shards at once (one push in
//! flight, at most one per [`URGENT_GAP_MS`]); a removal waits for the coalesced push window
//! (200 ms + 8 ms per shard, at most 2 s), since a stale removal only costs a call to a shard
//! that delivers to nobody. An RPC whose target a shard's view lacks asks the home, which
//! waits for the target's report up to a bound (`route`), so an RPC racing its target's
//! connect still arrives.

use worker::console_error;

use super::Home;
use crate::object_api::{DeliverBatch, PushView, RouteLookup, ShardReport};
use crate::protocol::{ClientType, Delivery, Filter};
use crate::routing::envelope;
use crate::routing::view::{PresenceReport, RoutingView, ShardPresence, Transition};
use crate::runtime;
use crate::upstream::hooks;

use super::ledger::RECLAIM_TIMEOUT_MS;
use super::stored::{BookEntry, BOOK_PREFIX};

/// The least time between two prompt pushes: under connection churn many additions share
/// one push instead of each costing a call per shard.
pub const URGENT_GAP_MS: u32 = 25;
/// The longest a route lookup waits for its target to be reported.
pub const ROUTE_WAIT_MAX_MS: u32 = 2_000;

/// How long view changes are gathered before one push: 200 ms, plus 8 ms per shard in the
/// set, at most 2 s. Pushing on every change costs N calls per change.
fn push_window_ms(shards: u32) -> u32 {
    200u32.saturating_add(shards.saturating_mul(8)).min(2_000)
}

/// Whether `new` adds a place where a recipient is compared with `old`.
fn adds(old: Option<&ShardPresence>, new: &ShardPresence) -> bool {
    !new.is_empty()
        && old.is_none_or(|o| {
            (new.user_scoped && !o.user_scoped)
                || (new.tagged && !o.tagged)
                || !new.sessions.is_subset(&o.sessions)
                || !new.machines.is_subset(&o.machines)
        })
}

impl Home {
    /// Applies another shard's report (unless older than what the book has): its presence,
    /// its stats and its metrics; stores its entry; pushes the view when it changed. Answers
    /// the machine transitions it caused, for [`Home::emit`].
    pub async fn take_report(&self, r: ShardReport, _reclaimed: bool) -> Vec<Transition> {
        // An empty shard the ledger let go (its last slot came back): it leaves the book now,
        // with this report's counts, instead of staying listed until the next ledger change
        // (a report that crossed its release).
        let released = !self.saved.borrow().ledger.shards.contains_key(&r.shard);
        if released && r.presence.is_empty() && r.stats.connections == 0 {
            let listed = self.book.borrow().view.shards.contains_key(&r.shard);
            if !listed {
                return Vec::new();
            }
            self.others
                .borrow_mut()
                .insert(r.shard.clone(), r.stats.clone());
            let t = self.book.borrow_mut().leave(&r.shard);
            self.forget_entry(&r.shard).await;
            self.push_view();
            return t;
        }
        let (before_version, adds) = {
            let b = self.book.borrow();
            (
                b.view.version,
                adds(b.view.shards.get(&r.shard), &r.presence),
            )
        };
        let applied = self.book.borrow_mut().apply(PresenceReport {
            shard: r.shard.clone(),
            incarnation: r.incarnation,
            seq: r.seq,
            presence: r.presence.clone(),
        });
        let Some(mut transitions) = applied else {
            return Vec::new();
        };
        transitions.extend(self.arrived(&r.shard, &r.presence));
        if let Some(m) = r.metrics {
            self.pending.borrow_mut().take(&r.shard, m);
        }
        self.others
            .borrow_mut()
            .insert(r.shard.clone(), r.stats.clone());
        let entry = BookEntry {
            incarnation: r.incarnation,
            seq: r.seq,
            presence: r.presence,
            stats: Some(r.stats),
        };
        let text = serde_json::to_string(&entry).unwrap_or_default();
        if let Err(e) = self
            .state
            .storage()
            .put(&format!("{BOOK_PREFIX}{}", r.shard), text)
            .await
        {
            console_error!("book entry for {} not stored: {e}", r.shard);
        }
        if self.book.borrow().view.version != before_version {
            if adds {
                self.push_view_now();
            } else {
                self.push_view();
            }
        }
        transitions
    }

    /// Forgets a shard that left the set.
    pub async fn forget_entry(&self, shard: &str) {
        if let Some(st) = self.others.borrow_mut().remove(shard) {
            self.saved.borrow_mut().retired.add(&st);
        }
        self.pending.borrow_mut().forget(shard);
        if let Err(e) = self
            .state
            .storage()
            .delete(&format!("{BOOK_PREFIX}{shard}"))
            .await
        {
            console_error!("book entry for {shard} not deleted: {e}");
        }
    }

    /// The home's own presence changed (its own sockets): applied directly, no call.
    pub async fn own_presence(&self, presence: ShardPresence) -> Vec<Transition> {
        let me = self.name();
        // The base first: an arrival re-lists the home's own entry from it. Back, an app is
        // no longer listed (only moving ones are).
        let arrived = presence.clone();
        let mut presence = presence;
        presence.apps.clear();
        *self.own_base.borrow_mut() = presence.clone();
        // Identities back on the home itself get what was held for them.
        let mut t = self.arrived(&me, &arrived);
        let listed =
            crate::routing::moves::union(presence.clone(), &self.moves.borrow().presence());
        let adds = {
            let mut b = self.book.borrow_mut();
            let adds = adds(b.view.shards.get(&me), &listed);
            let before = b.view.version;
            t.extend(b.set(&me, listed));
            adds && b.view.version != before
        };
        self.remember_own_machines(&presence).await;
        if adds {
            self.push_view_now();
        } else {
            self.push_view();
        }
        t
    }

    /// The current view for a shard that routes a frame. With a target, waits (polling its
    /// own timer, never woken by another request) until a shard holding that machine or
    /// session is known, or the wait ends.
    pub async fn route(&self, l: &RouteLookup) -> RoutingView {
        let Some(target) = l.wait_for.as_deref() else {
            return self.book.borrow().view.clone();
        };
        let known = |v: &RoutingView| {
            !v.machine_shards(target).is_empty() || !v.session_shards(target).is_empty()
        };
        let budget = l.wait_ms.min(ROUTE_WAIT_MAX_MS);
        let mut waited = 0u32;
        let mut step = 5u32;
        while !known(&self.book.borrow().view) && waited < budget {
            let pause = step.min(budget - waited);
            runtime::sleep(pause).await;
            waited += pause;
            step = (step * 2).min(100);
        }
        self.book.borrow().view.clone()
    }

    /// Tells the user's user-scoped sockets that machines came online or went offline:
    /// `machine-status` and `machine-activity` ephemerals, as the platform sends them. Those
    /// on this shard at once; the other shards' in order, after the answer: notices queue
    /// while a batch is on its way, and the next batch carries them all, one call per shard.
    /// The upstream hears of it too (`machine-online` / `machine-offline` hooks).
    pub fn emit(&self, transitions: Vec<Transition>) {
        if transitions.is_empty() {
            return;
        }
        let grace_ms = runtime::config(&self.env).map_or(0, |c| c.presence_grace_ms);
        let transitions = self.within_grace(transitions, grace_ms);
        self.announce(transitions);
    }

    /// Offline transitions wait out the grace window (`routing::grace`); the alarm announces
    /// them when it has passed.
    fn within_grace(&self, transitions: Vec<Transition>, grace_ms: u64) -> Vec<Transition> {
        if grace_ms == 0 {
            return transitions;
        }
        let now = runtime::now_ms();
        let out = self.grace.borrow_mut().filter(transitions, now, grace_ms);
        if let Some(at) = self.grace.borrow().next_due() {
            let (state, clock) = (self.state.clone(), self.clock.clone());
            runtime::object_wait_until(&self.state, async move {
                if let Err(e) = clock.arm(&state, at).await {
                    console_error!("could not schedule a grace window's end: {e}");
                }
            });
        }
        out
    }

    /// Announces the offline transitions whose grace window has passed (the machine did not
    /// come back).
    pub fn grace_due(&self, now: u64) {
        let due = self.grace.borrow_mut().due(now);
        self.announce(due);
    }

    fn announce(&self, transitions: Vec<Transition>) {
        if transitions.is_empty() {
            return;
        }
        self.machine_hooks(&transitions);
        let now = runtime::now_ms();
        let notices: Vec<Delivery> = transitions
            .iter()
            .flat_map(|t| {
                [
                    serde_json::json!({"type": "machine-status", "machineId": t.machine_id, "online": t.online, "timestamp": now}),
                    serde_json::json!({"type": "machine-activity", "machineId": t.machine_id, "active": t.online, "activeAt": now}),
                ]
            })
            .map(|data| Delivery {
                frame: envelope::ephemeral_frame(&data),
                filter: Filter::UserScopedOnly,
            })
            .collect();
        // This shard's own apps, now, and the moving ones when they are back.
        let here = self.local_user_scoped();
        let holds = self.holds_moves();
        for n in &notices {
            runtime::send_all(&here, &n.frame);
            if holds {
                self.offer(n);
            }
        }
        let me = self.name();
        if !self
            .book
            .borrow()
            .view
            .user_scoped_shards()
            .iter()
            .any(|s| *s != me)
        {
            return;
        }
        self.notices.borrow_mut().extend(notices);
        if self.notifying.replace(true) {
            return;
        }
        let (env, book) = (self.env.clone(), self.book.clone());
        let (queue, notifying) = (self.notices.clone(), self.notifying.clone());
        runtime::object_wait_until(&self.state, async move {
            loop {
                let batch = std::mem::take(&mut *queue.borrow_mut());
                if batch.is_empty() {
                    break;
                }
                let targets: Vec<String> = book
                    .borrow()
                    .view
                    .user_scoped_shards()
                    .into_iter()
                    .filter(|s| *s != me)
                    .collect();
                let batch = DeliverBatch(batch);
                let calls = targets.iter().map(|name| {
                    let (env, batch) = (&env, &batch);
                    async move {
                        let stub =
                            runtime::object(env, crate::object_api::SHARD_BINDING, name).ok()?;
                        runtime::timeout(RECLAIM_TIMEOUT_MS, runtime::ask(&stub, Some(name), batch))
                            .await?
                            .ok()
                    }
                });
                futures::future::join_all(calls).await;
            }
            notifying.set(false);
        });
    }

    fn local_user_scoped(&self) -> Vec<worker::WebSocket> {
        match self
            .state
            .as_raw()
            .get_websockets_with_tag(&ClientType::UserScoped.tag())
        {
            Ok(v) => v.into_iter().map(worker::WebSocket::from).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Stores a hook per transition; the object's alarm sends them.
    fn machine_hooks(&self, transitions: &[Transition]) {
        let Ok(cfg) = runtime::config(&self.env) else {
            return;
        };
        let user = self.user();
        if !cfg.upstream.posts_hooks() || user.is_empty() {
            return;
        }
        let (seq, now) = (self.book.borrow().view.version, runtime::now_ms());
        let hooks: Vec<_> = transitions
            .iter()
            .map(|t| hooks::machine(&user, &t.machine_id, t.online, seq, now))
            .collect();
        let (state, outbox, clock) = (self.state.clone(), self.outbox.clone(), self.clock.clone());
        let bounds = cfg.upstream.hook_bounds;
        runtime::object_wait_until(&self.state, async move {
            outbox.enqueue(&state.storage(), bounds, &hooks).await;
            if let Err(e) = clock.arm(&state, now).await {
                console_error!("could not schedule the hooks: {e}");
            }
        });
    }

    /// Pushes the view to the other shards that hold sockets (they route frames; a shard
    /// without sockets learns the view with its first grant), one push per window.
    pub fn push_view(&self) {
        if !self.has_other_occupied() || self.push_pending.replace(true) {
            return;
        }
        let (env, book, pushed, me) = (
            self.env.clone(),
            self.book.clone(),
            self.pushed_version.clone(),
            self.name(),
        );
        let pending = self.push_pending.clone();
        runtime::object_wait_until(&self.state, async move {
            let n = book.borrow().view.shards.len() as u32;
            runtime::sleep(push_window_ms(n)).await;
            pending.set(false);
            send_view(&env, &book, &pushed, &me).await;
        });
    }

    /// Pushes an addition at once: one push in flight; additions meanwhile ride the next,
    /// which starts [`URGENT_GAP_MS`] after the last.
    pub fn push_view_now(&self) {
        if !self.has_other_occupied() {
            return;
        }
        if self.urgent_running.replace(true) {
            self.urgent_again.set(true);
            return;
        }
        let (env, book, pushed, me) = (
            self.env.clone(),
            self.book.clone(),
            self.pushed_version.clone(),
            self.name(),
        );
        let (running, again) = (self.urgent_running.clone(), self.urgent_again.clone());
        runtime::object_wait_until(&self.state, async move {
            loop {
                send_view(&env, &book, &pushed, &me).await;
                if !again.replace(false) {
                    break;
                }
                runtime::sleep(URGENT_GAP_MS).await;
            }
            running.set(false);
        });
    }

    fn has_other_occupied(&self) -> bool {
        let me = self.name();
        self.book
            .borrow()
            .view
            .shards
            .iter()
            .any(|(n, p)| *n != me && !p.is_empty())
    }
}

/// Sends the current view to every other shard holding sockets, unless they already have it.
async fn send_view(
    env: &worker::Env,
    book: &std::rc::Rc<std::cell::RefCell<crate::routing::view::PresenceBook>>,
    pushed: &std::cell::Cell<u64>,
    me: &str,
) {
    let view = book.borrow().view.clone();
    if view.version <= pushed.get() {
        return;
    }
    pushed.set(view.version);
    let targets: Vec<String> = view.occupied().into_iter().filter(|n| n != me).collect();
    // One body for every target: serialised once.
    let push = PushView(view);
    let calls = targets.iter().map(|name| {
        let push = &push;
        async move {
            let Ok(stub) = runtime::object(env, crate::object_api::SHARD_BINDING, name) else {
                return;
            };
            let r =
                runtime::timeout(RECLAIM_TIMEOUT_MS, runtime::ask(&stub, Some(name), push)).await;
            if !matches!(r, Some(Ok(_))) {
                console_error!("view push to {name} failed");
            }
        }
    });
    futures::future::join_all(calls).await;
}
