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

use crate::lease::Ledger;
use crate::metrics::{Observations, Outcome, ShardGauges, ShardMetrics, UserMetrics};
use crate::placement;
use crate::protocol::ApiError;
use crate::rpc::{
    Acquire, DirectoryView, Granted, Members, Observed, Reclaimed, Release, ViewShard,
};
use crate::runtime;

const KEY: &str = "directory";
/// Metrics live under their own key: a change of their shape costs metrics,
/// never the ledger.
const METRICS_KEY: &str = "metrics";
/// How long the directory batches its shards' reports before the registry.
const PUSH_EVERY_MS: u64 = 5_000;
/// A reclaim pass waits at most this long for one shard.
const RECLAIM_TIMEOUT_MS: u32 = 2_000;
/// While a user has shards, their counts are reconciled this often, so a
/// shard that lost its sockets (a restart, a crash) leaves the set even if
/// the user never runs short of slots.
const RECONCILE_EVERY_MS: u64 = 60_000;

/// How long shard-set changes are gathered before one push: 200 ms, plus
/// 8 ms per shard in the set, at most 2 s.
fn members_window_ms(shards: u32) -> u32 {
    200u32.saturating_add(shards.saturating_mul(8)).min(2_000)
}

/// The shard set as the shards learn it.
fn members_of(s: &Saved) -> Members {
    Members {
        version: s.ledger.version,
        shards: s.ledger.names(),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
struct Saved {
    ledger: Ledger,
    /// The user this directory serves, learned from its shards' names.
    user: String,
    tier: String,
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
}

#[durable_object]
pub struct Directory {
    state: State,
    env: Env,
    saved: Rc<RefCell<Saved>>,
    pending: Rc<RefCell<Pending>>,
    push_at: Cell<Option<u64>>,
    /// A coalesced shard-set push is scheduled.
    push_pending: Rc<Cell<bool>>,
    /// One ledger operation at a time, including its reclaim pass.
    lock: Mutex<()>,
}

impl DurableObject for Directory {
    fn new(state: State, env: Env) -> Self {
        let saved = Rc::new(RefCell::new(Saved::default()));
        let pending = Rc::new(RefCell::new(Pending::default()));
        let (slot, metrics) = (saved.clone(), pending.clone());
        let storage = state.storage();
        let _load = state.block_concurrency_while(async move {
            if let Ok(Some(s)) = storage.get::<Saved>(KEY).await {
                *slot.borrow_mut() = s;
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
            push_at: Cell::new(None),
            push_pending: Rc::new(Cell::new(false)),
            lock: Mutex::new(()),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let path = req.path();
        match (req.method(), path.as_str()) {
            (Method::Post, "/acquire") => {
                let a: Acquire = req.json().await?;
                runtime::json(200, &self.acquire(a).await?)
            }
            (Method::Post, "/release") => {
                let r: Release = req.json().await?;
                self.release(r).await?;
                runtime::json(200, &serde_json::json!({"ok": true}))
            }
            (Method::Post, "/view") => runtime::json(200, &self.view()),
            (Method::Post, "/report") => {
                let m: ShardMetrics = req.json().await?;
                self.report(m).await?;
                runtime::json(200, &serde_json::json!({"ok": true}))
            }
            (Method::Post, "/observe") => {
                let o: Observed = req.json().await?;
                self.observe(o).await?;
                runtime::json(200, &serde_json::json!({"ok": true}))
            }
            _ => runtime::error(&ApiError::new(404, "not_found", format!("no route {path}"))),
        }
    }

    async fn alarm(&self) -> worker::Result<Response> {
        let now = runtime::now_ms();
        if self.saved.borrow().reconcile_at.is_some_and(|at| at <= now) {
            self.reconcile(now).await?;
        }
        if self.push_at.get().is_some_and(|at| at <= now) {
            self.push_to_registry(now).await?;
        }
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

    fn members(&self) -> Members {
        members_of(&self.saved.borrow())
    }

    fn view(&self) -> DirectoryView {
        let s = self.saved.borrow();
        DirectoryView {
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
        let version_before = self.saved.borrow().ledger.version;
        {
            let mut s = self.saved.borrow_mut();
            // The limit follows the tier of the latest connect; lowering it
            // stops new grants and lets existing sockets finish.
            s.ledger.limit = a.limit;
            s.tier = a.tier.clone();
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
        let members = self.members();
        if members.version != version_before {
            self.push_members();
        }
        Ok(Granted {
            granted: grant.granted,
            seq: grant.seq,
            retry: grant.granted == 0 && in_transit,
            members,
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
        let version_before = self.saved.borrow().ledger.version;
        self.reclaim_from_others("").await;
        let members = self.members();
        self.saved.borrow_mut().reconcile_at =
            (!members.shards.is_empty()).then_some(now + RECONCILE_EVERY_MS);
        self.save().await?;
        if members.version != version_before {
            self.push_members();
        }
        Ok(())
    }

    /// The one alarm, at the earliest of the reconcile pass and the push.
    async fn rearm(&self) -> worker::Result<()> {
        let at = match (self.saved.borrow().reconcile_at, self.push_at.get()) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => match a.or(b) {
                Some(at) => at,
                None => return Ok(()),
            },
        };
        self.state.storage().set_alarm(runtime::scheduled(at)).await
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
    /// shard. Shards that left the set are dropped first.
    async fn push_to_registry(&self, now: u64) -> worker::Result<()> {
        self.push_at.set(None);
        let (user, tier) = {
            let s = self.saved.borrow();
            (s.user.clone(), s.tier.clone())
        };
        if user.is_empty() {
            return Ok(());
        }
        let report = {
            let mut p = self.pending.borrow_mut();
            let listed = self.saved.borrow();
            p.gauges
                .retain(|name, _| listed.ledger.shards.contains_key(name));
            let mut u = UserMetrics::new(&user, &tier, &p.policy);
            for g in p.gauges.values() {
                u.set_gauges(g.clone());
            }
            u.observed = std::mem::take(&mut p.observed);
            u
        };
        let n = runtime::config(&self.env)
            .map(|c| c.registry_shards)
            .unwrap_or(1);
        let sent = match runtime::stub(
            &self.env,
            placement::REGISTRY_BINDING,
            &placement::registry_name(&user, n),
        ) {
            Ok(stub) => runtime::call::<_, serde_json::Value>(&stub, "/ingest", None, &report)
                .await
                .map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = sent {
            console_error!("registry push failed: {e}");
            self.pending.borrow_mut().observed.merge(&report.observed);
            self.push_at.set(Some(now + PUSH_EVERY_MS));
        }
        self.save_pending().await
    }

    async fn release(&self, r: Release) -> worker::Result<()> {
        let _guard = self.lock.lock().await;
        let changed = {
            let mut s = self.saved.borrow_mut();
            if r.reset {
                s.ledger.reset(&r.shard)
            } else {
                s.ledger.release(&r.shard, r.n, r.open, r.draining)
            }
        };
        self.save().await?;
        if changed {
            self.push_members();
        }
        Ok(())
    }

    /// Asks every other shard holding grants for its spare slots, at once.
    /// A shard that restarted without its sockets gives back all it held.
    /// Returns whether a grant was still on its way to one of them.
    async fn reclaim_from_others(&self, except: &str) -> bool {
        let targets = self.saved.borrow().ledger.reclaim_targets(except);
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
        let mut s = self.saved.borrow_mut();
        let mut in_transit = false;
        for (name, rec) in answers.into_iter().flatten() {
            let settled = s.ledger.settle(&name, rec);
            in_transit |= settled.in_transit;
        }
        in_transit
    }

    /// Tells the shards the new shard set, coalescing changes: one push per
    /// window carries the latest set, however many shards joined or left in
    /// it. Pushing on every change costs N calls per change (N^2 over a burst
    /// of new session shards) and saturated a spike. The window grows with
    /// the set, so pushes stay near a few hundred calls per second; until it
    /// ends, a client frame relayed from an older shard misses the newest.
    fn push_members(&self) {
        if self.push_pending.replace(true) {
            return;
        }
        let env = self.env.clone();
        let saved = self.saved.clone();
        let pending = self.push_pending.clone();
        runtime::object_wait_until(&self.state, async move {
            let n = saved.borrow().ledger.shards.len() as u32;
            runtime::sleep(members_window_ms(n)).await;
            pending.set(false);
            let members = members_of(&saved.borrow());
            let calls = members.shards.iter().map(|name| {
                let env = &env;
                let members = &members;
                async move {
                    let Ok(stub) = runtime::stub(env, placement::SHARD_BINDING, name) else {
                        return;
                    };
                    let r = runtime::timeout(
                        RECLAIM_TIMEOUT_MS,
                        runtime::call::<_, serde_json::Value>(
                            &stub,
                            "/members",
                            Some(name),
                            members,
                        ),
                    )
                    .await;
                    if !matches!(r, Some(Ok(_))) {
                        console_error!("members push to {name} failed");
                    }
                }
            });
            futures::future::join_all(calls).await;
        });
    }
}
