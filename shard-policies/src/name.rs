//! Durable Object names of shards, and the parser back from a name.
//!
//! # Format
//!
//! | key | name |
//! |---|---|
//! | [`ShardKey::Base`] | `cm:{user}` |
//! | [`ShardKey::Hash`] | `cm:{user}:h{k}` |
//! | [`ShardKey::Session`] | `cm:{user}:s:{session}` |
//! | [`ShardKey::Epoch`] without hash | `cm:{user}:e{epoch}p{period_s}d{drain_s}` |
//! | [`ShardKey::Epoch`] with hash | `cm:{user}:e{epoch}p{period_s}d{drain_s}:h{k}` |
//!
//! Ids may contain `:`, so inside a name every id is escaped: `%` becomes `%25` and `:`
//! becomes `%3A`. An escaped id has no `:`, so `:` only separates fields and a name splits
//! unambiguously; the escape is reversible, so the encoding is injective (user `a` shard
//! `h1` is `cm:a:h1`, user `a:h1` is `cm:a%3Ah1`). `%` is not a valid id character, so
//! names of valid ids only ever contain `%3A`; `%25` exists so that even an id that skipped
//! validation cannot forge another id's name.
//!
//! Numbers are plain decimal without leading zeros, so every shard has exactly one name and
//! [`parse_object_name`] accepts only that name.
//!
//! The epoch segment carries the whole schedule (`period`, `drain`), not just the epoch
//! number: epoch numbers of different periods would otherwise collide, and it lets a shard
//! learn its full lifecycle (when to drain, when to close) from its own name, even after
//! the deployed policy changed.
//!
//! # Deliberate sharing
//!
//! * `single`'s shard and `session`'s base shard are the same object `cm:{user}`: same role
//!   (the user's one general shard), so switching between them moves nothing.
//! * Hash shard `k` is the same object for every shard count N (`cm:{user}:h{k}`), and
//!   `hash` and `session:others=hash` share them: that is what makes growing N to N+1 move
//!   only the connections jump hashing sends to the new shard.

use crate::id::validate_id;
use crate::rotation::Rotation;
use core::fmt;

/// Largest shard count a hashed set may have (fixed or `auto`): bounds the `k` of a name.
pub const MAX_SHARDS: u32 = 1024;

/// Prefix of every ConnectionManager shard name.
pub const SHARD_NAME_PREFIX: &str = "cm";

/// Which shard of a user, without the user: a small `Copy` value when `S = &str`.
///
/// Placement yields `ShardKey<&str>` (borrowing the session id from the request, no
/// allocation); [`parse_object_name`] returns `ShardKey<String>`. Render the Durable Object
/// name with [`ShardKey::object_name`] only when it is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ShardKey<S> {
    /// The user's one general shard: `cm:{user}`.
    Base,
    /// Hash shard `k` (in `0..N`): `cm:{user}:h{k}`.
    Hash {
        /// Shard index.
        k: u32,
    },
    /// The shard of one session: `cm:{user}:s:{session}`.
    Session(S),
    /// The shard of one rotation epoch, optionally one of N hash shards of that epoch:
    /// `cm:{user}:e{epoch}p{period_s}d{drain_s}[:h{k}]`.
    Epoch {
        /// The schedule the epoch belongs to.
        rotation: Rotation,
        /// `floor(now_ms / period_ms)` at placement time.
        epoch: u64,
        /// Hash shard index within the epoch, when rotation is composed with hashing.
        hash: Option<u32>,
    },
}

impl<S: AsRef<str>> ShardKey<S> {
    /// Writes the Durable Object name of this shard of `user` into `out`.
    pub fn write_object_name<W: fmt::Write>(&self, user: &str, out: &mut W) -> fmt::Result {
        out.write_str(SHARD_NAME_PREFIX)?;
        out.write_char(':')?;
        write_escaped(user, out)?;
        match self {
            ShardKey::Base => Ok(()),
            ShardKey::Hash { k } => write!(out, ":h{k}"),
            ShardKey::Session(session) => {
                out.write_str(":s:")?;
                write_escaped(session.as_ref(), out)
            }
            ShardKey::Epoch {
                rotation,
                epoch,
                hash,
            } => {
                write!(
                    out,
                    ":e{epoch}p{}d{}",
                    rotation.period_secs(),
                    rotation.drain_secs()
                )?;
                match hash {
                    Some(k) => write!(out, ":h{k}"),
                    None => Ok(()),
                }
            }
        }
    }

    /// The Durable Object name of this shard of `user` (allocates; call it only when the
    /// name is needed, e.g. for `idFromName`).
    pub fn object_name(&self, user: &str) -> String {
        let mut name = String::with_capacity(user.len() + 24);
        // Writing into a String cannot fail.
        let _ = self.write_object_name(user, &mut name);
        name
    }

    /// The same key borrowing its session id.
    pub fn as_ref_key(&self) -> ShardKey<&str> {
        match self {
            ShardKey::Base => ShardKey::Base,
            ShardKey::Hash { k } => ShardKey::Hash { k: *k },
            ShardKey::Session(s) => ShardKey::Session(s.as_ref()),
            ShardKey::Epoch {
                rotation,
                epoch,
                hash,
            } => ShardKey::Epoch {
                rotation: *rotation,
                epoch: *epoch,
                hash: *hash,
            },
        }
    }

    /// The same key owning its session id.
    pub fn to_owned_key(&self) -> ShardKey<String> {
        match self {
            ShardKey::Base => ShardKey::Base,
            ShardKey::Hash { k } => ShardKey::Hash { k: *k },
            ShardKey::Session(s) => ShardKey::Session(s.as_ref().to_owned()),
            ShardKey::Epoch {
                rotation,
                epoch,
                hash,
            } => ShardKey::Epoch {
                rotation: *rotation,
                epoch: *epoch,
                hash: *hash,
            },
        }
    }

    /// The rotation schedule and epoch of an epoch shard (what a shard needs to know when
    /// to drain), `None` for other shards.
    pub fn epoch(&self) -> Option<(Rotation, u64)> {
        match self {
            ShardKey::Epoch {
                rotation, epoch, ..
            } => Some((*rotation, *epoch)),
            _ => None,
        }
    }
}

/// A parsed shard name: whose shard, and which one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectName {
    /// The user id (valid per [`crate::validate_id`]).
    pub user: String,
    /// Which of the user's shards.
    pub key: ShardKey<String>,
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.key.write_object_name(&self.user, f)
    }
}

/// Parses a shard's Durable Object name back into its user and key, so a shard object can
/// learn who it serves (and its epoch schedule) from its own name.
///
/// Returns `None` for anything [`ShardKey::object_name`] would not produce for valid ids:
/// other prefixes, unknown fields, non-canonical numbers (`h01`), lowercase or unknown
/// escapes, invalid ids, hash indices `>= 1024`, invalid rotation schedules.
pub fn parse_object_name(name: &str) -> Option<ObjectName> {
    let rest = name.strip_prefix(SHARD_NAME_PREFIX)?.strip_prefix(':')?;
    let mut fields = rest.split(':');
    let user = unescape_id(fields.next()?)?;
    let key = match (fields.next(), fields.next(), fields.next()) {
        (None, _, _) => ShardKey::Base,
        (Some(h), None, _) if h.starts_with('h') => ShardKey::Hash { k: parse_hash(h)? },
        (Some("s"), Some(session), None) => ShardKey::Session(unescape_id(session)?),
        (Some(e), hash, None) if e.starts_with('e') => {
            let (rotation, epoch) = parse_epoch(e)?;
            let hash = match hash {
                Some(h) => Some(parse_hash(h)?),
                None => None,
            };
            ShardKey::Epoch {
                rotation,
                epoch,
                hash,
            }
        }
        _ => return None,
    };
    Some(ObjectName { user, key })
}

/// Writes `id` with `%` -> `%25` and `:` -> `%3A`.
fn write_escaped<W: fmt::Write>(id: &str, out: &mut W) -> fmt::Result {
    let mut last = 0;
    for (at, c) in id.match_indices([':', '%']) {
        out.write_str(id.get(last..at).unwrap_or_default())?;
        out.write_str(if c == ":" { "%3A" } else { "%25" })?;
        last = at + 1;
    }
    out.write_str(id.get(last..).unwrap_or_default())
}

/// Reverses [`write_escaped`], accepting only its exact output for a valid id.
fn unescape_id(field: &str) -> Option<String> {
    let mut id = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(at) = rest.find('%') {
        id.push_str(rest.get(..at)?);
        let escape = rest.get(at..at + 3)?;
        id.push(match escape {
            "%3A" => ':',
            "%25" => '%',
            _ => return None,
        });
        rest = rest.get(at + 3..)?;
    }
    id.push_str(rest);
    validate_id(&id).ok()?;
    Some(id)
}

/// Canonical decimal: digits only, no sign, no leading zero (except `0` itself).
fn parse_canonical(digits: &str) -> Option<u64> {
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if canonical {
        digits.parse().ok()
    } else {
        None
    }
}

fn parse_hash(field: &str) -> Option<u32> {
    let k = parse_canonical(field.strip_prefix('h')?)?;
    if k < u64::from(MAX_SHARDS) {
        u32::try_from(k).ok()
    } else {
        None
    }
}

/// `e{epoch}p{period}d{drain}`.
fn parse_epoch(field: &str) -> Option<(Rotation, u64)> {
    let field = field.strip_prefix('e')?;
    let (epoch, rest) = field.split_once('p')?;
    let (period, drain) = rest.split_once('d')?;
    let rotation = Rotation::try_new(parse_canonical(period)?, parse_canonical(drain)?).ok()?;
    Some((rotation, parse_canonical(epoch)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rot() -> Rotation {
        Rotation::try_new(600, 120).unwrap()
    }

    #[test]
    fn renders_every_kind() {
        assert_eq!(ShardKey::<&str>::Base.object_name("alice"), "cm:alice");
        assert_eq!(
            ShardKey::<&str>::Hash { k: 3 }.object_name("alice"),
            "cm:alice:h3"
        );
        assert_eq!(
            ShardKey::Session("tab-1").object_name("alice"),
            "cm:alice:s:tab-1"
        );
        let e = ShardKey::<&str>::Epoch {
            rotation: rot(),
            epoch: 2_933_333,
            hash: None,
        };
        assert_eq!(e.object_name("alice"), "cm:alice:e2933333p600d120");
        let eh = ShardKey::<&str>::Epoch {
            rotation: rot(),
            epoch: 7,
            hash: Some(2),
        };
        assert_eq!(eh.object_name("alice"), "cm:alice:e7p600d120:h2");
    }

    #[test]
    fn escapes_colons_in_every_id() {
        assert_eq!(ShardKey::<&str>::Base.object_name("a:h1"), "cm:a%3Ah1");
        assert_eq!(
            ShardKey::Session("x:y").object_name("u:"),
            "cm:u%3A:s:x%3Ay"
        );
        // Not valid ids, but still injective: `%` is escaped too.
        assert_eq!(ShardKey::<&str>::Base.object_name("a%3A"), "cm:a%253A");
        assert_ne!(
            ShardKey::<&str>::Base.object_name("a%3Ah1"),
            ShardKey::<&str>::Base.object_name("a:h1")
        );
    }

    #[test]
    fn naive_collisions_do_not_happen() {
        let pairs: [(&str, ShardKey<&str>); 8] = [
            ("a", ShardKey::Hash { k: 1 }),
            ("a:h1", ShardKey::Base),
            ("a", ShardKey::Session("b")),
            ("a:s:b", ShardKey::Base),
            ("a:s", ShardKey::Session("b")),
            ("a", ShardKey::Session("b:h1")),
            (
                "a",
                ShardKey::Epoch {
                    rotation: rot(),
                    epoch: 5,
                    hash: Some(1),
                },
            ),
            ("a:e5p600d120", ShardKey::Hash { k: 1 }),
        ];
        let names: std::collections::BTreeSet<String> =
            pairs.iter().map(|(u, k)| k.object_name(u)).collect();
        assert_eq!(names.len(), pairs.len(), "{names:?}");
    }

    #[test]
    fn parses_what_it_renders() {
        let keys: [ShardKey<&str>; 5] = [
            ShardKey::Base,
            ShardKey::Hash { k: 1023 },
            ShardKey::Session("s:1"),
            ShardKey::Epoch {
                rotation: rot(),
                epoch: u64::MAX,
                hash: None,
            },
            ShardKey::Epoch {
                rotation: rot(),
                epoch: 0,
                hash: Some(0),
            },
        ];
        for user in ["alice", "a:b", ":", "h1", "cm"] {
            for key in keys {
                let name = key.object_name(user);
                let parsed = parse_object_name(&name).unwrap();
                assert_eq!(parsed.user, user);
                assert_eq!(parsed.key.as_ref_key(), key);
                assert_eq!(parsed.to_string(), name);
            }
        }
    }

    #[test]
    fn rejects_non_canonical_or_foreign_names() {
        for bad in [
            "",
            "cm",
            "cm:",
            "dir:alice",
            "cmx:alice",
            "cm:alice:",
            "cm:alice:h",
            "cm:alice:h01",
            "cm:alice:h+1",
            "cm:alice:h1024",
            "cm:alice:h1:h2",
            "cm:alice:x1",
            "cm:alice:s",
            "cm:alice:s:",
            "cm:alice:s:a:b",
            "cm:alice:s:a%3a",
            "cm:a%3ab",
            "cm:a%2",
            "cm:a%",
            "cm:a%25",
            "cm:a b",
            "cm:alice:e1",
            "cm:alice:e1p600",
            "cm:alice:e01p600d120",
            "cm:alice:e1p0600d120",
            "cm:alice:e1p600d0120",
            "cm:alice:e1p600d0",
            "cm:alice:e1p600d601",
            "cm:alice:e1p5d1",
            "cm:alice:ep600d120",
            "cm:alice:e1p600d120:h",
            "cm:alice:e1p600d120:s:x",
            "cm:alice:e1p600d120:h1:h1",
            "cm:alice:e99999999999999999999p600d120",
        ] {
            assert_eq!(parse_object_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn epoch_accessor_reports_the_schedule() {
        let parsed = parse_object_name("cm:alice:e7p600d120:h2").unwrap();
        assert_eq!(parsed.key.epoch(), Some((rot(), 7)));
        assert_eq!(ShardKey::<&str>::Base.epoch(), None);
    }
}
