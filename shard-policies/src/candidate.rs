//! The ordered candidate shards of one placement, as a small allocation-free iterator.

use crate::hash::SpillOrder;
use crate::name::ShardKey;
use crate::rotation::Rotation;

/// What the slots of the hashed (or single) part of a candidate list are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slots {
    /// One slot: the user's base shard.
    Base,
    /// N slots: hash shards `h0..h{N-1}`.
    Hash,
    /// One slot (unhashed) or N slots (hashed) of the current epoch.
    Epoch {
        rotation: Rotation,
        epoch: u64,
        hashed: bool,
    },
}

impl Slots {
    #[inline]
    fn key<'a>(self, slot: u32) -> ShardKey<&'a str> {
        match self {
            Slots::Base => ShardKey::Base,
            Slots::Hash => ShardKey::Hash { k: slot },
            Slots::Epoch {
                rotation,
                epoch,
                hashed,
            } => ShardKey::Epoch {
                rotation,
                epoch,
                hash: hashed.then_some(slot),
            },
        }
    }
}

/// Where the user's home shard (`cm:{user}`) stands in a filling placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Home {
    /// Not a candidate (or the slots themselves are the base shard).
    Absent,
    /// Tried first: the user still fits on it.
    First,
    /// Tried last: the user has spread; the home takes a socket only when the others are full.
    Last,
}

/// The shards a new connection may go to, best first: the first is the preferred shard,
/// the rest is the spill order to try when a shard is full or unhealthy. Never empty and
/// never repeats a shard.
///
/// Built without allocating: it borrows the session id from the request and computes each
/// spill step on demand. [`Candidates::preferred`] peeks at the first without consuming.
/// The constructors are public so that a new [`crate::ShardPolicy`] can reuse these shapes.
#[derive(Debug, Clone)]
pub struct Candidates<'a> {
    /// A dedicated shard tried before the spill set (the session shard of `session`).
    lead: Option<&'a str>,
    home: Home,
    slots: Slots,
    order: SpillOrder,
}

impl<'a> Candidates<'a> {
    /// The user's base shard, after `lead` if given (`single`, `session:others=base`).
    pub fn base(lead: Option<&'a str>) -> Self {
        Self {
            lead,
            home: Home::Absent,
            slots: Slots::Base,
            order: SpillOrder::single(),
        }
    }

    /// Hash shards `0..n` (n clamped to at least 1) in the spill order of a connection whose
    /// id hashes to `hash`, after `lead` if given.
    pub fn hashed(lead: Option<&'a str>, hash: u64, n: u32) -> Self {
        Self {
            lead,
            home: Home::Absent,
            slots: Slots::Hash,
            order: SpillOrder::new(hash, n),
        }
    }

    /// A filling placement over the home shard and hash shards `0..max`, after `lead` if
    /// given. At spread `level` 0 the user fits on its home shard, which comes first, then
    /// the hash shards in spill order; at level L >= 1 the connection prefers its shard among
    /// hash shards `0..L`, spills over all `max`, and the home comes last.
    pub fn fill(lead: Option<&'a str>, hash: u64, level: u32, max: u32) -> Self {
        Self {
            lead,
            home: if level == 0 { Home::First } else { Home::Last },
            slots: Slots::Hash,
            order: SpillOrder::within(hash, level, max),
        }
    }

    /// The epoch's single shard, or its hash shards `0..n` in spill order when
    /// `hash = Some((connection_hash, n))`.
    pub fn epoch(rotation: Rotation, epoch: u64, hash: Option<(u64, u32)>) -> Self {
        let (hashed, order) = match hash {
            Some((h, n)) => (true, SpillOrder::new(h, n)),
            None => (false, SpillOrder::single()),
        };
        Self {
            lead: None,
            home: Home::Absent,
            slots: Slots::Epoch {
                rotation,
                epoch,
                hashed,
            },
            order,
        }
    }

    /// The epoch's hash shards `0..max`, preferring the connection's among the first
    /// `level` (at least one): a rotation that spreads only as the user grows.
    pub fn epoch_spread(rotation: Rotation, epoch: u64, hash: u64, level: u32, max: u32) -> Self {
        Self {
            lead: None,
            home: Home::Absent,
            slots: Slots::Epoch {
                rotation,
                epoch,
                hashed: true,
            },
            order: SpillOrder::within(hash, level.max(1), max),
        }
    }

    /// The preferred shard (what `next()` returns first), without consuming anything.
    #[inline]
    pub fn preferred(&self) -> ShardKey<&'a str> {
        match (self.lead, self.home) {
            (Some(session), _) => ShardKey::Session(session),
            (None, Home::First) => ShardKey::Base,
            (None, _) => self.slots.key(self.order.first()),
        }
    }

    /// Size of the hashed (or single) shard set behind the lead shard: N for hashed
    /// placements, 1 otherwise.
    pub fn shard_set_len(&self) -> u32 {
        self.order.shards()
    }
}

impl<'a> Iterator for Candidates<'a> {
    type Item = ShardKey<&'a str>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(session) = self.lead.take() {
            return Some(ShardKey::Session(session));
        }
        if self.home == Home::First {
            self.home = Home::Absent;
            return Some(ShardKey::Base);
        }
        let slots = self.slots;
        match self.order.next() {
            Some(slot) => Some(slots.key(slot)),
            None if self.home == Home::Last => {
                self.home = Home::Absent;
                Some(ShardKey::Base)
            }
            None => None,
        }
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.order.len()
            + usize::from(self.lead.is_some())
            + usize::from(self.home != Home::Absent);
        (n, Some(n))
    }
}

impl ExactSizeIterator for Candidates<'_> {}
impl core::iter::FusedIterator for Candidates<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_comes_first_then_the_spill_set() {
        let c = Candidates::hashed(Some("s1"), 42, 3);
        assert_eq!(c.len(), 4);
        assert_eq!(c.preferred(), ShardKey::Session("s1"));
        let v: Vec<_> = c.collect();
        assert_eq!(v[0], ShardKey::Session("s1"));
        let mut ks: Vec<u32> = v[1..]
            .iter()
            .map(|k| match k {
                ShardKey::Hash { k } => *k,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        ks.sort_unstable();
        assert_eq!(ks, vec![0, 1, 2]);
    }

    #[test]
    fn a_filling_placement_puts_the_home_first_until_the_user_spreads() {
        let solo: Vec<_> = Candidates::fill(None, 42, 0, 3).collect();
        assert_eq!(solo.len(), 4);
        assert_eq!(solo[0], ShardKey::Base);
        assert!(solo[1..].iter().all(|k| matches!(k, ShardKey::Hash { .. })));
        let spread = Candidates::fill(Some("s"), 42, 2, 3);
        assert_eq!(spread.preferred(), ShardKey::Session("s"));
        let v: Vec<_> = spread.collect();
        assert_eq!(v.len(), 5);
        assert_eq!(v[0], ShardKey::Session("s"));
        assert!(matches!(v[1], ShardKey::Hash { k } if k < 2), "{v:?}");
        assert_eq!(v[4], ShardKey::Base);
        let c = Candidates::fill(None, 42, 1, 3);
        assert_eq!(c.preferred(), ShardKey::Hash { k: 0 });
        let r = Rotation::try_new(600, 60).unwrap();
        let e = Candidates::epoch_spread(r, 9, 42, 0, 4);
        assert_eq!(
            e.preferred(),
            ShardKey::Epoch {
                rotation: r,
                epoch: 9,
                hash: Some(0)
            }
        );
        assert_eq!(e.count(), 4);
    }

    #[test]
    fn preferred_matches_the_first_item_and_survives_consumption() {
        let mut c = Candidates::hashed(None, 0xfeed, 16);
        let p = c.preferred();
        assert_eq!(c.next(), Some(p));
        assert_eq!(c.len(), 15);
        let r = Rotation::try_new(600, 60).unwrap();
        let e = Candidates::epoch(r, 9, None);
        assert_eq!(
            e.preferred(),
            ShardKey::Epoch {
                rotation: r,
                epoch: 9,
                hash: None
            }
        );
        assert_eq!(e.count(), 1);
    }
}
