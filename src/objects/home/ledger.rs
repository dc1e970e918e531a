//! The home's ledger: exact tier limits across the user's shards (`lease`), with the home's
//! own sockets counted directly. The home admits its own sockets against
//! `limit - granted to others` with no await between the check and the accept, and grants
//! the other shards slots in batches; when either falls short it first reclaims the other
//! shards' spare slots. While no other shard exists there is nothing to lease and nothing to
//! call: a user on one shard costs no round trip.
//!
//! The spread level (`shard_policies::spread`) follows the user's size here too: the home
//! knows the user's total (its own sockets plus the slots the others hold).

use std::collections::BTreeSet;

use worker::console_error;

use super::Home;
use crate::config::Config;
use crate::object_api::{Acquire, Granted, Placement, Reclaim, Reclaimed, Release, TierInfo};
use crate::placement::lease::Grant;
use crate::placement::lease::OwnAdmit;
use crate::runtime;

/// A reclaim pass waits at most this long for one shard.
pub(crate) const RECLAIM_TIMEOUT_MS: u32 = 2_000;
/// While other shards hold slots, their counts are reconciled this often, so a shard that
/// lost its sockets (a restart, a crash) leaves the set even if the user never runs short.
const RECONCILE_EVERY_MS: u64 = 60_000;

impl Home {
    /// The user's total: the home's own sockets plus what every other shard may hold.
    fn total(&self, own_open: u32) -> u32 {
        let s = self.saved.borrow();
        let others = s
            .ledger
            .shards
            .values()
            .fold(0u32, |a, e| a.saturating_add(e.granted.max(e.open)));
        others.saturating_add(own_open)
    }

    /// Recomputes the spread level from the user's total (hysteresis in the plan).
    pub fn update_spread(&self, cfg: &Config, tier: &TierInfo, own_open: u32) -> u32 {
        let level = match self
            .policy(cfg)
            .spread_plan(tier.limit, cfg.shard_max_connections)
        {
            Some(plan) => plan.level(self.total(own_open), self.spread.get()),
            None => 0,
        };
        self.spread.set(level);
        level
    }

    /// The user's placement as the gateway should cache it.
    pub fn placement(&self, cfg: &Config) -> Placement {
        let tier = self.tier_info(cfg);
        Placement {
            tier: tier.tier,
            limit: tier.limit,
            spread: self.spread.get(),
        }
    }

    /// Whether the home may take one more socket of its own now (`own_open` open): under the
    /// limit counting every other shard's slots, and (unless `last_resort`) while the user
    /// has not spread. Reclaims the others' spare slots when short.
    pub async fn admit_own(&self, cfg: &Config, own_open: u32, last_resort: bool) -> OwnAdmit {
        let tier = self.tier_info(cfg);
        self.saved.borrow_mut().ledger.limit = tier.limit;
        let level = self.update_spread(cfg, &tier, own_open);
        let home_holds = self
            .policy(cfg)
            .spread_plan(tier.limit, cfg.shard_max_connections)
            .is_none_or(|p| p.home_holds);
        if (level > 0 || !home_holds) && !last_resort {
            return OwnAdmit::Spread(level.max(1));
        }
        if self.has_room(own_open) {
            return OwnAdmit::Accept;
        }
        let _guard = self.lock.lock().await;
        self.reclaim_from_others("").await;
        OwnAdmit::TierLimit
    }

    /// Room for one more socket beside what the other shards hold. Checked again by the
    /// caller right before the accept, with no await between.
    pub fn has_room(&self, own_open: u32) -> bool {
        let s = self.saved.borrow();
        s.ledger.free_beside(own_open) > 0
    }

    /// Counts a refusal at the limit (only a final one, not one the asker retries).
    pub async fn count_tier_refusal(&self) {
        self.saved.borrow_mut().rejected_tier_limit += 1;
        if let Err(e) = self.save().await {
            console_error!("refusal not counted: {e}");
        }
    }

    /// Another shard asks for slots.
    pub async fn acquire(
        &self,
        cfg: &Config,
        a: Acquire,
        own_open: u32,
    ) -> worker::Result<Granted> {
        let _guard = self.lock.lock().await;
        let tier = self.tier_info(cfg);
        // The home resolves the tier itself (the operator's override, else the default), so
        // the limit is exact whatever a gateway has cached. Lowering it stops new grants and
        // lets existing sockets finish.
        self.saved.borrow_mut().ledger.limit = tier.limit;
        let short = self.saved.borrow().ledger.free_beside(own_open) < a.need;
        let in_transit = short && self.reclaim_from_others(&a.shard).await;
        let grant: Grant = {
            let mut s = self.saved.borrow_mut();
            let g = s
                .ledger
                .grant_beside(&a.shard, a.want, a.need, a.open, own_open);
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
        self.update_spread(cfg, &tier, own_open);
        Ok(Granted {
            granted: grant.granted,
            seq: grant.seq,
            retry: grant.granted == 0 && in_transit,
            placement: self.placement(cfg),
            view_version: self.book.borrow().view.version,
        })
    }

    pub async fn release(&self, r: Release) -> worker::Result<()> {
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

    /// Sets or clears the override. A lower limit applies to the next connect at once: every
    /// shard's spare leased slots are reclaimed, so none admits past the new limit.
    pub async fn set_tier(&self, cfg: &Config, tier: Option<String>) -> worker::Result<TierInfo> {
        let _guard = self.lock.lock().await;
        self.saved.borrow_mut().tier_override = tier;
        let info = self.tier_info(cfg);
        self.saved.borrow_mut().ledger.limit = info.limit;
        self.save().await?;
        self.reclaim_from_others("").await;
        self.save().await?;
        self.ledger_changed().await?;
        Ok(info)
    }

    async fn ensure_reconcile(&self) -> worker::Result<()> {
        if self.saved.borrow().reconcile_at.is_none() {
            self.saved.borrow_mut().reconcile_at = Some(runtime::now_ms() + RECONCILE_EVERY_MS);
            self.save().await?;
        }
        Ok(())
    }

    /// Reclaims from every other shard so counts match reality; runs while others exist.
    pub async fn reconcile(&self, now: u64) -> worker::Result<()> {
        let _guard = self.lock.lock().await;
        self.reclaim_from_others("").await;
        let any = !self.saved.borrow().ledger.shards.is_empty() || !self.others.borrow().is_empty();
        self.saved.borrow_mut().reconcile_at = any.then_some(now + RECONCILE_EVERY_MS);
        self.save().await?;
        self.ledger_changed().await
    }

    /// Asks every other shard holding grants for its spare slots, at once. A shard that
    /// restarted without its sockets gives back all it held. Returns whether a grant was
    /// still on its way to one of them.
    pub async fn reclaim_from_others(&self, except: &str) -> bool {
        let mut targets = self.saved.borrow().ledger.reclaim_targets(except);
        if except.is_empty() {
            // A full pass also asks every shard the book says holds sockets, so presence left
            // behind by a shard that lost its sockets (a restart) is corrected.
            for name in self.others.borrow().keys() {
                if !targets.contains(name) {
                    targets.push(name.clone());
                }
            }
        }
        let env = &self.env;
        let calls = targets.iter().map(|name| async move {
            let stub = runtime::object(env, crate::object_api::SHARD_BINDING, name).ok()?;
            let r = runtime::timeout(
                RECLAIM_TIMEOUT_MS,
                runtime::ask(&stub, Some(name), &Reclaim {}),
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
        let answers: Vec<Option<(String, Reclaimed)>> = futures::future::join_all(calls).await;
        let mut in_transit = false;
        let mut transitions = Vec::new();
        for (name, rec) in answers.into_iter().flatten() {
            let settled = self.saved.borrow_mut().ledger.settle(&name, rec.lease);
            in_transit |= settled.in_transit;
            if let Some(report) = rec.report {
                transitions.extend(self.take_report(report, false).await);
            }
        }
        self.emit(transitions);
        in_transit
    }

    /// After a ledger operation: every shard holding slots is in the view, and a shard that
    /// left the ledger with no sockets leaves it (and the book).
    pub async fn ledger_changed(&self) -> worker::Result<()> {
        let names: BTreeSet<String> = self.saved.borrow().ledger.shards.keys().cloned().collect();
        let me = self.name();
        let (changed, gone) = {
            let mut b = self.book.borrow_mut();
            let before = b.view.version;
            for n in &names {
                b.join(n);
            }
            let gone: Vec<String> = b
                .view
                .shards
                .iter()
                .filter(|(n, p)| !names.contains(*n) && **n != me && p.is_empty())
                .map(|(n, _)| n.clone())
                .collect();
            for n in &gone {
                b.leave(n);
            }
            (b.view.version != before, gone)
        };
        for n in &gone {
            self.forget_entry(n).await;
        }
        if changed {
            self.push_view();
        }
        Ok(())
    }
}
