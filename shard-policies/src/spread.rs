//! Filling before spreading: how many hash shards a user's new connections use.
//!
//! A user who fits on one shard costs what one object costs only if its sockets stay on one
//! object. So `shards=auto` fills first: while the user holds fewer than `fill` sockets, new
//! ones go to its home shard (`cm:{user}`); past that, to hash shards `0..L` where
//! `L = ceil((total + 1) / fill)`, at most the tier's `max`. The level grows as soon as the
//! next socket would overfill, and shrinks only once the user is half a fill below the
//! boundary, so a user near it does not flip back and forth. Existing sockets never move:
//! a new level only steers new connections, and jump hashing moves only the connections that
//! now prefer the new shard (see [`crate::hash`]).

/// How a user's sockets spread: at most `max` hash shards, `fill` sockets per shard before
/// the next one is used, and whether the home shard holds sockets while the user is small.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpreadPlan {
    pub max: u32,
    pub fill: u32,
    pub home_holds: bool,
}

/// The default fill: three quarters of the per-shard cap (at least 1), so spread shards run
/// with headroom under the cap and a hash imbalance rarely spills.
#[inline]
pub fn default_fill(shard_max_connections: u32) -> u32 {
    (shard_max_connections.saturating_mul(3)).div_ceil(4).max(1)
}

impl SpreadPlan {
    /// The level a user needs to place one more socket when it holds `total`.
    fn needed(&self, total: u32) -> u32 {
        let fill = self.fill.max(1);
        let next = total.saturating_add(1);
        if self.home_holds && next <= fill {
            0
        } else {
            next.div_ceil(fill).clamp(1, self.max.max(1))
        }
    }

    /// The level for a user holding `total` sockets whose level is `current`.
    pub fn level(&self, total: u32, current: u32) -> u32 {
        let up = self.needed(total);
        if up >= current {
            return up;
        }
        let down = self.needed(total.saturating_add(self.fill / 2));
        down.min(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: SpreadPlan = SpreadPlan {
        max: 5,
        fill: 150,
        home_holds: true,
    };

    #[test]
    fn a_small_user_stays_home_and_a_big_one_spreads_up_to_max() {
        assert_eq!(PLAN.level(0, 0), 0);
        assert_eq!(PLAN.level(149, 0), 0);
        assert_eq!(PLAN.level(150, 0), 2);
        assert_eq!(PLAN.level(299, 2), 2);
        assert_eq!(PLAN.level(300, 2), 3);
        assert_eq!(PLAN.level(10_000, 3), 5);
        let away = SpreadPlan {
            home_holds: false,
            ..PLAN
        };
        assert_eq!(away.level(0, 0), 1);
    }

    #[test]
    fn shrinking_waits_for_half_a_fill_of_headroom() {
        // At level 3 (up to 450), the user shrinks to 2 only below 300 - 75.
        assert_eq!(PLAN.level(280, 3), 3);
        assert_eq!(PLAN.level(224, 3), 2);
        assert_eq!(PLAN.level(75, 1), 1);
        assert_eq!(PLAN.level(74, 1), 0);
        // Never below what the next socket needs.
        for total in 0..1000 {
            for current in 0..=5 {
                let l = PLAN.level(total, current);
                assert!(l >= PLAN.needed(total), "{total} {current} -> {l}");
                assert!(l <= 5);
            }
        }
    }

    #[test]
    fn default_fill_keeps_headroom_under_the_cap() {
        assert_eq!(default_fill(200), 150);
        assert_eq!(default_fill(5), 4);
        assert_eq!(default_fill(1), 1);
        assert_eq!(default_fill(0), 1);
    }
}
