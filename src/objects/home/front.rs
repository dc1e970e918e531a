//! What the gateway asks of a user, answered by its home in one hop: the user's stats from
//! the shards' reports (no fan-out), and the shards a broadcast or a disconnect must reach.
//!
//! Staleness: another shard's stats are as of its last report, which follows a change within
//! the report gap (`shard::reporter`: 25 ms after a presence change, 250 ms after a count
//! change); the home's own are live.

use super::Home;
use crate::config::Config;
use crate::protocol::Filter;
use observability::stats::{self, ShardStats, UserContext, UserStats};

impl Home {
    /// The user's stats: this shard's live stats and the others' last reports.
    pub fn user_stats(&self, cfg: &Config, own: ShardStats) -> UserStats {
        let tier = self.tier_info(cfg);
        let (ctx, listed) = {
            let s = self.saved.borrow();
            let ctx = UserContext {
                tier: tier.tier,
                limit: tier.limit,
                policy: self.policy_name(cfg),
                rejected_tier_limit: s.rejected_tier_limit,
                rejected_unavailable: s.rejected_unavailable,
            };
            (ctx, s.ledger.shards.keys().cloned().collect::<Vec<_>>())
        };
        let mut rows: Vec<ShardStats> = Vec::new();
        // The home is a row while it holds or has refused sockets, or is the only shard.
        let others = self.others.borrow();
        if own.connections > 0
            || own.rejected > 0
            || own.rejected_tier_limit > 0
            || others.is_empty()
        {
            rows.push(own);
        }
        for (name, st) in others.iter() {
            if listed.contains(name) || st.connections > 0 || st.draining {
                rows.push(st.clone());
            }
        }
        let mut st = stats::aggregate(ctx, &rows, Vec::new());
        st.add_retired(&self.saved.borrow().retired);
        st.moves = self.move_counters();
        let grace = self.grace.borrow();
        st.moves.grace_hidden = grace.hidden;
        st.moves.grace_overflowed = grace.overflowed;
        st
    }

    /// The other shards a delivery must reach: unfiltered, every shard holding slots or
    /// sockets; filtered, those whose presence may hold a recipient, plus any shard holding
    /// slots the book has no report of yet.
    pub fn targets(&self, filter: &Filter) -> Vec<String> {
        let me = self.name();
        let book = self.book.borrow();
        let mut t: Vec<String> = if matches!(filter, Filter::All | Filter::Exclude { .. }) {
            book.view.occupied()
        } else {
            book.view.targets(filter)
        };
        for (name, e) in &self.saved.borrow().ledger.shards {
            let unreported = !self.others.borrow().contains_key(name);
            let unfiltered = matches!(filter, Filter::All | Filter::Exclude { .. });
            if (e.granted > 0 || e.open > 0) && (unfiltered || unreported) && !t.contains(name) {
                t.push(name.clone());
            }
        }
        t.retain(|n| *n != me);
        t
    }

    /// Every other shard the user has: the ledger's and the book's.
    pub fn all_shards(&self) -> Vec<String> {
        let me = self.name();
        let mut t: Vec<String> = self.saved.borrow().ledger.shards.keys().cloned().collect();
        for name in self.book.borrow().view.shards.keys() {
            if !t.contains(name) {
                t.push(name.clone());
            }
        }
        t.retain(|n| *n != me);
        t
    }
}
