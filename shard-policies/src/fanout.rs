//! Which shards a broadcast or stats request must reach.
//!
//! The answer comes from what the user's directory knows, never from the current policy:
//! a redeploy with another `SHARD_POLICY` leaves the old policy's shards registered, and
//! they must keep receiving broadcasts and reporting stats until their last socket leaves.

use std::collections::BTreeSet;

/// One shard as the user's directory knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KnownShard {
    /// The shard's Durable Object name.
    pub name: String,
    /// Its last reported number of open sockets.
    pub connections: u32,
    /// Whether it is draining (rotation or policy switch): it still holds sockets that
    /// must be reached even if its reported count is stale.
    pub draining: bool,
}

/// The shards a fan-out must reach: every known shard that has connections or is
/// draining, whatever policy created it. Input order is kept; a name listed twice is
/// reached once.
pub fn fanout(known: &[KnownShard]) -> Vec<&KnownShard> {
    let mut seen = BTreeSet::new();
    known
        .iter()
        .filter(|s| s.connections > 0 || s.draining)
        .filter(|s| seen.insert(s.name.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(name: &str, connections: u32, draining: bool) -> KnownShard {
        KnownShard {
            name: name.to_owned(),
            connections,
            draining,
        }
    }

    #[test]
    fn keeps_busy_and_draining_shards_of_any_policy() {
        let known = [
            shard("cm:u", 3, false),           // old `single` shard
            shard("cm:u:h0", 0, false),        // empty: nothing to reach
            shard("cm:u:h1", 5, false),        // current `hash` shard
            shard("cm:u:e7p600d120", 0, true), // draining, count may be stale
            shard("cm:u:h1", 5, false),        // listed twice
        ];
        let names: Vec<&str> = fanout(&known).iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["cm:u", "cm:u:h1", "cm:u:e7p600d120"]);
    }

    #[test]
    fn nothing_known_means_nothing_to_reach() {
        assert!(fanout(&[]).is_empty());
        assert!(fanout(&[shard("cm:u", 0, false)]).is_empty());
    }
}
