//! The directory's side of routing: it applies the shards' presence reports to the user's
//! [`PresenceBook`], pushes the resulting view to the shards (coalesced), and tells the
//! user's apps when a machine comes online or goes offline, counted across every shard.
//!
//! Staleness: a report is applied before the reporting connect's 101, and its answer carries
//! the current view to the reporting shard at once. A report that *adds* a place where a
//! recipient is (a shard's first user-scoped socket, a session or machine appearing on a
//! shard) is pushed to the other shards at once, one push in flight and at most one per
//! [`URGENT_GAP_MS`]; a removal waits for the coalesced push window (200 ms + 8 ms per
//! shard, at most 2 s), since a stale removal only costs a call to a shard that delivers to
//! nobody. Until a push lands a shard routes by its older view: an RPC recovers by asking for
//! the current view when its target is missing or not where the view said; any other frame
//! sent within that moment misses a recipient that has just appeared elsewhere.

use std::collections::BTreeSet;

use worker::console_error;

use super::Directory;
use crate::placement;
use crate::protocol::{Delivery, Filter};
use crate::routing::envelope;
use crate::routing::view::{PresenceReport, Transition};
use crate::rpc::{Delivered, Presented};
use crate::runtime;

use super::{PRESENCE_KEY, RECLAIM_TIMEOUT_MS};
use crate::upstream::hooks;

/// The platform's storage key for the usage limits.
const USAGE_KEY: &str = "usage:limits";

/// The least time between two prompt pushes: under connection churn many additions share
/// one push instead of each costing a call per shard.
pub const URGENT_GAP_MS: u32 = 25;

/// How long view changes are gathered before one push: 200 ms, plus 8 ms per shard in the
/// set, at most 2 s. Pushing on every change costs N calls per change (N^2 over a burst of
/// new session shards) and saturated a spike; the window keeps pushes near a few hundred
/// calls per second.
fn push_window_ms(shards: u32) -> u32 {
    200u32.saturating_add(shards.saturating_mul(8)).min(2_000)
}

impl Directory {
    /// A shard's presence report: applied (unless older than what we have), persisted,
    /// pushed and announced; the answer is the current view.
    pub(super) async fn presence(&self, r: PresenceReport) -> worker::Result<Presented> {
        let adds = {
            let b = self.book.borrow();
            let before = b.view.shards.get(&r.shard);
            let p = &r.presence;
            before.is_none_or(|o| {
                (p.user_scoped && !o.user_scoped)
                    || (p.tagged && !o.tagged)
                    || !p.sessions.is_subset(&o.sessions)
                    || !p.machines.is_subset(&o.machines)
            }) && !p.is_empty()
        };
        let transitions = self.book.borrow_mut().apply(r);
        if let Some(t) = transitions {
            self.save_book().await?;
            if adds {
                self.push_view_now();
            } else {
                self.push_view();
            }
            self.emit(t).await;
        }
        Ok(Presented {
            view: self.book.borrow().view.clone(),
        })
    }

    /// After a ledger operation: every shard holding slots is in the view, and a shard that
    /// left the ledger with no sockets leaves it.
    pub(super) async fn ledger_changed(&self) -> worker::Result<()> {
        let names: BTreeSet<String> = self.saved.borrow().ledger.shards.keys().cloned().collect();
        let changed = {
            let mut b = self.book.borrow_mut();
            let before = b.view.version;
            for n in &names {
                b.join(n);
            }
            let gone: Vec<String> = b
                .view
                .shards
                .iter()
                .filter(|(n, p)| !names.contains(*n) && p.is_empty())
                .map(|(n, _)| n.clone())
                .collect();
            for n in gone {
                b.leave(&n);
            }
            b.view.version != before
        };
        if changed {
            self.save_book().await?;
            self.push_view();
        }
        Ok(())
    }

    async fn save_book(&self) -> worker::Result<()> {
        let snapshot = self.book.borrow().clone();
        self.state.storage().put(PRESENCE_KEY, snapshot).await
    }

    /// Pushes the view to the shards that hold sockets (they route frames; a shard without
    /// sockets learns the view with its first grant or report), one push per window.
    pub(super) fn push_view(&self) {
        if self.push_pending.replace(true) {
            return;
        }
        let (env, book, pushed) = (
            self.env.clone(),
            self.book.clone(),
            self.pushed_version.clone(),
        );
        let pending = self.push_pending.clone();
        runtime::object_wait_until(&self.state, async move {
            let n = book.borrow().view.shards.len() as u32;
            runtime::sleep(push_window_ms(n)).await;
            pending.set(false);
            send_view(&env, &book, &pushed).await;
        });
    }

    /// Pushes an addition at once: one push in flight; additions meanwhile ride the next,
    /// which starts [`URGENT_GAP_MS`] after the last.
    pub(super) fn push_view_now(&self) {
        if self.urgent_running.replace(true) {
            self.urgent_again.set(true);
            return;
        }
        let (env, book, pushed) = (
            self.env.clone(),
            self.book.clone(),
            self.pushed_version.clone(),
        );
        let (running, again) = (self.urgent_running.clone(), self.urgent_again.clone());
        runtime::object_wait_until(&self.state, async move {
            loop {
                send_view(&env, &book, &pushed).await;
                if !again.replace(false) {
                    break;
                }
                runtime::sleep(URGENT_GAP_MS).await;
            }
            running.set(false);
        });
    }

    /// Tells the user's user-scoped sockets, on every shard holding one, that machines came
    /// online or went offline: `machine-status` and `machine-activity` ephemerals, as the
    /// platform sends them. In order, after the answer: notices queue while a batch is on its
    /// way, and the next batch carries them all, one call per shard (under connection churn
    /// that is a call per shard per batch, not per notice). The upstream hears of it too
    /// (`machine-online` / `machine-offline` hooks).
    pub(super) async fn emit(&self, transitions: Vec<Transition>) {
        if transitions.is_empty() {
            return;
        }
        self.machine_hooks(&transitions).await;
        let now = runtime::now_ms();
        {
            let mut q = self.notices.borrow_mut();
            for t in &transitions {
                for data in [
                    serde_json::json!({"type": "machine-status", "machineId": t.machine_id, "online": t.online, "timestamp": now}),
                    serde_json::json!({"type": "machine-activity", "machineId": t.machine_id, "active": t.online, "activeAt": now}),
                ] {
                    q.push(Delivery {
                        frame: envelope::ephemeral_frame(&data),
                        filter: Filter::UserScopedOnly,
                    });
                }
            }
        }
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
                let targets = book.borrow().view.user_scoped_shards();
                let calls = targets.iter().map(|name| {
                    let (env, batch) = (&env, &batch);
                    async move {
                        let stub = runtime::stub(env, placement::SHARD_BINDING, name).ok()?;
                        runtime::timeout(
                            RECLAIM_TIMEOUT_MS,
                            runtime::call::<_, Delivered>(
                                &stub,
                                "/deliver-batch",
                                Some(name),
                                batch,
                            ),
                        )
                        .await?
                        .ok()
                    }
                });
                futures::future::join_all(calls).await;
            }
            notifying.set(false);
        });
    }
}

/// Sends the current view to every shard holding sockets, unless they already have it.
async fn send_view(
    env: &worker::Env,
    book: &std::rc::Rc<std::cell::RefCell<crate::routing::view::PresenceBook>>,
    pushed: &std::cell::Cell<u64>,
) {
    let view = book.borrow().view.clone();
    if view.version <= pushed.get() {
        return;
    }
    pushed.set(view.version);
    let targets = view.occupied();
    let calls = targets.iter().map(|name| {
        let view = &view;
        async move {
            let Ok(stub) = runtime::stub(env, placement::SHARD_BINDING, name) else {
                return;
            };
            let r = runtime::timeout(
                RECLAIM_TIMEOUT_MS,
                runtime::call::<_, serde_json::Value>(&stub, "/view", Some(name), view),
            )
            .await;
            if !matches!(r, Some(Ok(_))) {
                console_error!("view push to {name} failed");
            }
        }
    });
    futures::future::join_all(calls).await;
}

impl Directory {
    /// Stores a hook per transition and arms the alarm to send them at once.
    async fn machine_hooks(&self, transitions: &[Transition]) {
        let Ok(cfg) = runtime::config(&self.env) else {
            return;
        };
        let user = self.saved.borrow().user.clone();
        if !cfg.upstream.posts_hooks() || user.is_empty() {
            return;
        }
        let (seq, now) = (self.book.borrow().view.version, runtime::now_ms());
        let hooks: Vec<_> = transitions
            .iter()
            .map(|t| hooks::machine(&user, &t.machine_id, t.online, seq, now))
            .collect();
        self.outbox
            .enqueue(&self.state.storage(), cfg.upstream.hook_bounds, &hooks)
            .await;
        if let Err(e) = self.record_hook_news().await {
            console_error!("hook outcomes not recorded: {e}");
        }
        if let Err(e) = self.rearm().await {
            console_error!("could not schedule the hooks: {e}");
        }
    }

    /// The alarm's part: sends the due hooks in the background; when that ends it re-arms
    /// the alarm (unless an earlier one is set), which records how it went.
    pub(super) fn flush_hooks(&self, now: u64) {
        let Ok(cfg) = runtime::config(&self.env) else {
            return;
        };
        if !cfg.upstream.posts_hooks() || !self.outbox.should_flush(now) {
            return;
        }
        let storage = self.state.storage();
        self.outbox.start_flush(
            &self.state,
            &self.env,
            &cfg.upstream,
            move |at| async move {
                let set = storage.get_alarm().await.ok().flatten();
                if set.is_none_or(|t| at < u64::try_from(t).unwrap_or(0)) {
                    if let Err(e) = storage.set_alarm(runtime::scheduled(at)).await {
                        console_error!("could not schedule the hooks: {e}");
                    }
                }
            },
        );
    }

    /// Counts the outbox's attempts and lost hooks under their kind, for the registry.
    pub(super) async fn record_hook_news(&self) -> worker::Result<()> {
        let news = self.outbox.take_news();
        if news.is_empty() {
            return Ok(());
        }
        let (now, tier) = (runtime::now_ms(), self.saved.borrow().tier.clone());
        {
            let mut p = self.pending.borrow_mut();
            for a in &news.attempts {
                let kind = format!("hook:{}", a.kind);
                p.observed
                    .record_upstream(now, &tier, &kind, a.result, Some(a.ms));
            }
            for l in &news.lost {
                let kind = format!("hook:{}", l.kind);
                p.observed.record_hook_loss(now, &tier, &kind, l.why);
            }
        }
        self.save_pending().await?;
        self.schedule_push().await
    }

    /// The user's usage limits (`update-usage-limits`), as stored; the platform's default
    /// when none are, or when they cannot be read.
    pub(super) async fn usage_limits(&self) -> serde_json::Value {
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
    pub(super) async fn set_usage_limits(&self, mut v: serde_json::Value) -> worker::Result<()> {
        if let Some(o) = v.as_object_mut() {
            o.insert("lastUpdatedAt".into(), runtime::now_ms().into());
        }
        self.state.storage().put(USAGE_KEY, v).await
    }
}
