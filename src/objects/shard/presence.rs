//! The shard's socket index, and what the shard tells its home about it.
//!
//! A connect or a close is answered without waiting for the home. A change marks the shard's
//! report dirty; one report is in flight at a time, sent at once when none is, then again
//! `PRESENCE_GAP_MS` after the last when presence changed (a session or machine came or
//! went, the first or last user-scoped socket) or `COUNTS_GAP_MS` when only counts did, so
//! a burst of changes costs a few reports, each carrying the shard's whole entry (presence
//! and stats: absolute, so a repeated one is harmless). Every few seconds a report also
//! carries the metrics observed since the last one. A failed report is retried by the alarm;
//! the home's reconcile pass corrects whatever is still wrong.
//!
//! The home itself reports nothing: its own changes reach its book directly.

use std::collections::BTreeSet;
use std::rc::Rc;

use worker::console_error;

use super::reporter::{Sender, REPORT_TIMEOUT_MS};
use super::{attachment, ConnectionManager};
use crate::object_api::{RouteLookup, ShardReport};
use crate::placement;
use crate::protocol::SocketMeta;
use crate::routing::index::{Change, SocketIndex};
use crate::routing::moves::Identity;
use crate::routing::view::{RoutingView, ShardPresence};
use crate::runtime;
use observability::stats::ByType;

/// How long a shard whose view lacks an RPC's target lets the home wait for it.
pub const ROUTE_WAIT_MS: u32 = 1_000;

/// How fresh a routing view must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want<'a> {
    /// Ours, unless we have none or the home announced a newer one.
    Cached,
    /// The home's: ours proved stale.
    Fresh,
    /// The home's, once it knows this machine or session (or after a bounded wait).
    Target(&'a str),
}

/// What stats need from the index.
pub(super) struct IndexSnapshot {
    pub connections: u32,
    pub by_type: ByType,
    pub sessions: Vec<u64>,
    pub machines: Vec<u64>,
    pub oldest: Option<u64>,
    pub memory: u64,
}

impl ConnectionManager {
    /// Runs `f` on the index, building it from the open sockets' attachments first if this
    /// object has just woken (the one walk of the socket list).
    pub(super) fn with_index<R>(&self, f: impl FnOnce(&mut SocketIndex) -> R) -> R {
        let mut slot = self.index.borrow_mut();
        let ix = slot.get_or_insert_with(|| self.build_index(None));
        f(ix)
    }

    /// Builds the index now if this object has just woken, counting `closing` as open: a
    /// close that is the first event after a wake must still find its socket counted, or it
    /// would change no count, store no hook and report no presence until a reconcile.
    pub(super) fn index_with_closing(&self, closing: &SocketMeta) {
        let mut slot = self.index.borrow_mut();
        if slot.is_none() {
            *slot = Some(self.build_index(Some(closing)));
        }
    }

    fn build_index(&self, closing: Option<&SocketMeta>) -> SocketIndex {
        let mut metas: Vec<SocketMeta> =
            self.open_sockets().iter().filter_map(attachment).collect();
        if let Some(c) = closing {
            if !metas.iter().any(|m| m.connection_id == c.connection_id) {
                metas.push(c.clone());
            }
        }
        let sized: Vec<(SocketMeta, u64)> = metas
            .into_iter()
            .map(|m| {
                let bytes = serde_json::to_string(&m).map_or(0, |s| s.len() as u64);
                (m, bytes)
            })
            .collect();
        SocketIndex::rebuild(sized.iter().map(|(m, b)| (m, *b)))
    }

    pub(super) fn open_count(&self) -> u32 {
        self.with_index(|ix| ix.len())
    }

    pub(super) fn index_snapshot(&self) -> IndexSnapshot {
        self.with_index(|ix| IndexSnapshot {
            connections: ix.len(),
            by_type: ix.by_type(),
            sessions: ix
                .session_ids()
                .map(observability::stats::id_hash)
                .collect(),
            machines: ix
                .machine_ids()
                .map(observability::stats::id_hash)
                .collect(),
            oldest: ix.oldest_connection(),
            memory: ix.memory_bytes(),
        })
    }

    /// Counts an accepted socket.
    pub(super) async fn count_socket(&self, meta: &SocketMeta, attachment_bytes: u64) {
        // Moved away from here and back: here again, and the home must hear it.
        if let Some(id) = Identity::of(meta) {
            if self.moved.borrow_mut().back(&id) {
                self.came_back(id);
            }
        }
        self.recent.borrow_mut().accepted(&meta.connection_id);
        let change = self.with_index(|ix| ix.add(meta, attachment_bytes));
        self.changed(self.with_app(change, meta)).await;
    }

    /// Uncounts a socket that closed or was closed; a second call is a no-op.
    pub(super) async fn forget_socket(&self, connection_id: &str) {
        self.recent.borrow_mut().closed(connection_id);
        let change = self.with_index(|ix| ix.remove(connection_id));
        self.changed(change).await;
    }

    /// An app's new socket is a presence change while the app is moving: the home learns it
    /// is back from this shard's `apps`.
    fn with_app(&self, change: Change, m: &SocketMeta) -> Change {
        let moving = m
            .correlation_id
            .as_deref()
            .is_some_and(|c| self.moving_apps().contains(c));
        if change == Change::Counts && moving {
            Change::Presence
        } else {
            change
        }
    }

    /// The apps the home lists as moving (at the home, its own move book).
    fn moving_apps(&self) -> BTreeSet<String> {
        if self.is_home() {
            return self.home.moving_apps();
        }
        let home = placement::home_name(&self.user());
        self.view
            .borrow()
            .as_ref()
            .and_then(|v| v.shards.get(&home).map(|p| p.apps.clone()))
            .unwrap_or_default()
    }

    /// This shard's presence for routing: its index's, and the moving apps it holds a
    /// socket of. The identities it told to move stay listed until their sockets are
    /// uncounted, after the home holds them (so they never look offline); the home counts
    /// them back here only when this shard says so (`came_back`).
    pub(super) fn presence_now(&self) -> ShardPresence {
        let moving = self.moving_apps();
        self.with_index(|ix| {
            let mut p = ix.presence();
            if !moving.is_empty() {
                p.apps = ix
                    .app_ids()
                    .filter(|c| moving.contains(*c))
                    .map(str::to_owned)
                    .collect();
            }
            p
        })
    }

    /// Something about this shard's sockets changed: the home hears of it, directly when
    /// this is the home, else through a report after the fact.
    async fn changed(&self, change: Change) {
        if change == Change::None {
            return;
        }
        if self.is_home() {
            if change == Change::Presence {
                let presence = self.presence_now();
                let t = self.home.own_presence(presence).await;
                self.home.emit(t);
            }
            return;
        }
        self.report_soon(change == Change::Presence);
    }

    /// This shard's entry for its home's book, as it is now.
    pub(super) fn report(&self) -> Option<ShardReport> {
        let shard = self.name();
        if shard.is_empty() {
            return None;
        }
        let presence = self.presence_now();
        // Every snapshot gets a new number: the home keeps the newest of each incarnation.
        let seq = {
            let mut r = self.reporter.borrow_mut();
            r.seq += 1;
            r.seq
        };
        Some(ShardReport {
            shard,
            incarnation: self.incarnation,
            seq,
            presence,
            stats: self.stats(),
            metrics: None,
        })
    }

    /// Metrics are due upward: the home takes its own at once; another shard's ride its next
    /// report.
    pub(super) async fn metrics_due(&self) {
        let Some(m) = self.take_metrics() else {
            return;
        };
        if self.is_home() {
            let me = self.name();
            self.home.pending.borrow_mut().take(&me, m);
            return;
        }
        self.reporter.borrow_mut().add_metrics(m);
        self.report_soon(false);
    }

    /// At the home: adds its own metrics to the user's and pushes them to the registry; a
    /// global switch the answer brings is applied if the home had not heard of it (it
    /// connected after the registries told the homes they list).
    ///
    /// While the user has sockets here, the next cycle's push is set before this one is
    /// sent and armed by the alarm's own rearm: one `setAlarm` a cycle instead of two (the
    /// rearm after the alarm fired, then the next observation's). A cycle that finds
    /// nothing to send ends it, so a quiet user's home is not woken every cycle.
    pub(super) async fn push_metrics(&self) {
        self.metrics_due().await;
        let Ok(cfg) = runtime::config(&self.env) else {
            return;
        };
        if !self.home.has_pending_metrics() {
            return;
        }
        if self.open_count() > 0 {
            self.home.keep_cycle(&cfg);
        }
        let tier = self.home.tier_info(&cfg).tier;
        if let Some(n) = self.home.push_to_registry(&tier).await {
            if let Err(e) = self.policy_notice(&n).await {
                worker::console_error!("policy from the registry not applied: {e}");
            }
        }
        // Observations recorded meanwhile (or a failed push) go with the next one.
        self.home.schedule_push(&cfg).await;
    }

    /// Takes a fresh snapshot of this shard's entry for the next report, and starts the
    /// sender unless it runs.
    pub(super) fn report_soon(&self, presence: bool) {
        let user = self.user();
        let Some(report) = self.report() else {
            return;
        };
        if user.is_empty() || self.is_home() {
            return;
        }
        if !self.reporter.borrow_mut().offer(report, presence) {
            return;
        }
        let sender = Sender {
            env: self.env.clone(),
            state: self.state.clone(),
            clock: self.clock.clone(),
            home: placement::home_name(&user),
            reporter: self.reporter.clone(),
            announced: self.announced_version.clone(),
            placement: self.placement.clone(),
        };
        runtime::object_wait_until(&self.state, sender.run());
    }

    /// Keeps a pushed or fetched view if it is newer than ours.
    pub(super) fn learn_view(&self, v: RoutingView) {
        let before = self.moving_apps();
        {
            let mut slot = self.view.borrow_mut();
            if slot.as_ref().is_some_and(|cur| v.version <= cur.version) {
                return;
            }
            self.announced_version
                .set(self.announced_version.get().max(v.version));
            *slot = Some(Rc::new(v));
        }
        // An app that moved here before the home listed it as moving: report it now.
        let after = self.moving_apps();
        if before != after
            && self.with_index(|ix| after.iter().chain(&before).any(|c| ix.has_app(c)))
        {
            self.report_soon(true);
        }
    }

    /// The routing view: the home's own book at the home; elsewhere ours, unless `want`
    /// asks for the home's: when we have none (after a wake), the home announced a newer one,
    /// `Fresh` (ours proved stale), or `Target` names a target ours lacks (the home waits up
    /// to [`ROUTE_WAIT_MS`] for that target to be reported). Without an answer, ours.
    pub(super) async fn current_view(&self, want: Want<'_>) -> Rc<RoutingView> {
        let wait_for = match want {
            Want::Target(t) => Some(t),
            _ => None,
        };
        if self.is_home() {
            if let Some(target) = wait_for {
                self.home
                    .route(&RouteLookup {
                        wait_for: Some(target.to_owned()),
                        wait_ms: ROUTE_WAIT_MS,
                    })
                    .await;
            }
            return self.home.view();
        }
        let current = self
            .view
            .borrow()
            .as_ref()
            .is_some_and(|v| v.version >= self.announced_version.get());
        if current && matches!(want, Want::Cached) {
            if let Some(v) = self.view.borrow().clone() {
                return v;
            }
        }
        self.frame_subrequests.set(self.frame_subrequests.get() + 1);
        let lookup = RouteLookup {
            wait_for: wait_for.map(str::to_owned),
            wait_ms: ROUTE_WAIT_MS,
        };
        let fetched = match runtime::object(
            &self.env,
            crate::object_api::SHARD_BINDING,
            &placement::home_name(&self.user()),
        ) {
            Ok(home) => {
                runtime::timeout(
                    REPORT_TIMEOUT_MS + ROUTE_WAIT_MS,
                    runtime::ask(&home, Some(&placement::home_name(&self.user())), &lookup),
                )
                .await
            }
            Err(e) => Some(Err(e)),
        };
        match fetched {
            Some(Ok(v)) => {
                // Asked for because ours was stale or lacked a target: take it even at an
                // equal version, but never over a newer push that landed meanwhile.
                let mut slot = self.view.borrow_mut();
                if slot.as_ref().is_none_or(|cur| v.version >= cur.version) {
                    *slot = Some(Rc::new(v));
                }
            }
            _ => console_error!("routing view unavailable; using the last one"),
        }
        self.view.borrow().clone().unwrap_or_default()
    }
}
