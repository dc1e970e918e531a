//! Moves the edge starts (a rotation drain, a policy switch's drain): what is addressed to a
//! socket the edge told to reconnect is held by the user's home until a socket of the same
//! identity is back, then handed to it (docs/policies.md, "Moves that lose nothing").
//!
//! Identities that can be matched: a machine-scoped socket's machine id and a
//! session-scoped socket's session id (the platform's CLI and daemon send the same ones on
//! every connect). A user-scoped app socket carries no stable id the edge can match, so what
//! is sent to apps while one moves is not held for it.
//!
//! While an identity moves, the home lists it as present on itself, so deliveries for it
//! reach the home and presence announces no offline/online flicker for a move the edge made.
//! Bounded: `MAX_MOVES` identities per user, `MAX_HELD` frames and `MAX_HELD_BYTES` per
//! identity, `MOVE_WINDOW_MS` to come back; what does not fit or expires is counted.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::protocol::{ClientType, Delivery, Filter, SocketMeta};
use crate::routing::view::ShardPresence;

/// How long a moved identity has to come back before what is held for it is dropped.
pub const MOVE_WINDOW_MS: u64 = 30_000;
/// After it is back, deliveries that still reach the home for it (a sender's view older
/// than the return) are forwarded to its new shard for this long.
pub const FORWARD_MS: u64 = 5_000;
pub const MAX_MOVES: usize = 1_024;
pub const MAX_HELD: usize = 256;
pub const MAX_HELD_BYTES: usize = 256 * 1024;

/// A socket identity the edge can recognise on the socket's next connect.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Identity {
    Machine(String),
    Session(String),
}

impl Identity {
    /// The identity of a socket, if it has one that survives a reconnect.
    pub fn of(m: &SocketMeta) -> Option<Self> {
        match m.client_type {
            ClientType::MachineScoped => m.machine_id.clone().map(Identity::Machine),
            ClientType::SessionScoped => m.session_id.clone().map(Identity::Session),
            ClientType::UserScoped => None,
        }
    }

    /// Whether a delivery with filter `f` reaches a socket of this identity (as
    /// `ConnectionManager::deliver` selects them).
    pub fn reached_by(&self, f: &Filter) -> bool {
        match (self, f) {
            (_, Filter::All | Filter::Exclude { .. }) => true,
            (
                Identity::Machine(m),
                Filter::Machine { machine_id } | Filter::MachineScopedOnly { machine_id },
            ) => m == machine_id,
            (
                Identity::Session(s),
                Filter::Session { session_id } | Filter::AllInterestedInSession { session_id },
            ) => s == session_id,
            _ => false,
        }
    }

    /// The filter that reaches exactly this identity's sockets on its new shard.
    pub fn filter(&self) -> Filter {
        match self {
            Identity::Machine(m) => Filter::Machine {
                machine_id: m.clone(),
            },
            Identity::Session(s) => Filter::Session {
                session_id: s.clone(),
            },
        }
    }

    fn present_in(&self, p: &ShardPresence) -> bool {
        match self {
            Identity::Machine(m) => p.machines.contains(m),
            Identity::Session(s) => p.sessions.contains(s),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Held {
    until_ms: u64,
    frames: VecDeque<String>,
    bytes: usize,
}

/// What a home holds for its user's moving identities, and where returned ones went.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MoveBook {
    moves: BTreeMap<Identity, Held>,
    forwards: BTreeMap<Identity, (String, u64)>,
    pub counters: MoveCounters,
}

/// What the move book did, for the user's stats.
pub use observability::stats::MoveStats as MoveCounters;

/// What to send where after an event of the book: frames for an identity on a shard.
pub type Handoff = (String, Identity, Vec<String>);

impl MoveBook {
    /// `id` was told to move: hold what is addressed to it for `MOVE_WINDOW_MS`.
    pub fn hold(&mut self, id: Identity, now_ms: u64) {
        self.forwards.remove(&id);
        self.counters.moves += 1;
        if let Some(h) = self.moves.get_mut(&id) {
            h.until_ms = now_ms + MOVE_WINDOW_MS;
            return;
        }
        if self.moves.len() >= MAX_MOVES {
            return;
        }
        self.moves.insert(
            id,
            Held {
                until_ms: now_ms + MOVE_WINDOW_MS,
                ..Held::default()
            },
        );
    }

    /// A delivery that reached the home (or was forwarded to it by the identity's old
    /// shard): held for every moving identity it reaches, once (a copy that arrives by both
    /// ways is the same frame), and answered as frames for identities already back.
    pub fn offer(&mut self, d: &Delivery, now_ms: u64) -> Vec<Handoff> {
        let mut out = Vec::new();
        for (id, h) in self.moves.iter_mut() {
            if !id.reached_by(&d.filter) || h.frames.contains(&d.frame) {
                continue;
            }
            if h.frames.len() >= MAX_HELD || h.bytes + d.frame.len() > MAX_HELD_BYTES {
                self.counters.shed += 1;
                continue;
            }
            h.bytes += d.frame.len();
            h.frames.push_back(d.frame.clone());
        }
        self.forwards.retain(|_, (_, until)| *until > now_ms);
        for (id, (shard, _)) in &self.forwards {
            if id.reached_by(&d.filter) {
                out.push((shard.clone(), id.clone(), vec![d.frame.clone()]));
            }
        }
        out
    }

    /// A shard's presence now: each moving identity present there is back; what was held
    /// for it goes to that shard, and later stragglers follow for `FORWARD_MS`.
    pub fn arrived(&mut self, shard: &str, p: &ShardPresence, now_ms: u64) -> Vec<Handoff> {
        let back: Vec<Identity> = self
            .moves
            .keys()
            .filter(|id| id.present_in(p))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for id in back {
            if let Some(h) = self.moves.remove(&id) {
                self.counters.handed += h.frames.len() as u64;
                self.forwards
                    .insert(id.clone(), (shard.to_owned(), now_ms + FORWARD_MS));
                out.push((shard.to_owned(), id, h.frames.into()));
            }
        }
        out
    }

    /// Drops the moves whose window ended; answers whether any did.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let before = self.moves.len();
        let mut expired = 0;
        self.moves.retain(|_, h| {
            let keep = h.until_ms > now_ms;
            if !keep {
                expired += h.frames.len() as u64;
            }
            keep
        });
        self.counters.expired += expired;
        self.forwards.retain(|_, (_, until)| *until > now_ms);
        self.moves.len() != before
    }

    /// The moving identities as presence: listed on the home while they move.
    pub fn presence(&self) -> ShardPresence {
        let mut p = ShardPresence::default();
        for id in self.moves.keys() {
            match id {
                Identity::Machine(m) => p.machines.insert(m.clone()),
                Identity::Session(s) => p.sessions.insert(s.clone()),
            };
        }
        p
    }

    /// Whether a delivery with `f` is for a moving (or just returned) identity.
    pub fn reaches(&self, f: &Filter) -> bool {
        self.moves
            .keys()
            .chain(self.forwards.keys())
            .any(|id| id.reached_by(f))
    }

    /// When the next move's window ends.
    pub fn next_due(&self) -> Option<u64> {
        self.moves.values().map(|h| h.until_ms).min()
    }

    pub fn is_moving(&self) -> bool {
        !self.moves.is_empty()
    }
}

/// `a` with `b`'s recipients added.
pub fn union(mut a: ShardPresence, b: &ShardPresence) -> ShardPresence {
    a.user_scoped |= b.user_scoped;
    a.tagged |= b.tagged;
    a.machines.extend(b.machines.iter().cloned());
    a.sessions.extend(b.sessions.iter().cloned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(frame: &str, filter: Filter) -> Delivery {
        Delivery {
            frame: frame.into(),
            filter,
        }
    }

    fn machine(m: &str) -> Identity {
        Identity::Machine(m.into())
    }

    fn at(machines: &[&str]) -> ShardPresence {
        ShardPresence {
            machines: machines.iter().map(|m| m.to_string()).collect(),
            ..ShardPresence::default()
        }
    }

    #[test]
    fn what_reaches_a_moving_identity_is_held_once_and_handed_to_its_new_shard() {
        let mut b = MoveBook::default();
        b.hold(machine("m1"), 0);
        assert!(b.presence().machines.contains("m1"));
        let rpc = d(
            "rpc",
            Filter::Machine {
                machine_id: "m1".into(),
            },
        );
        assert!(b.offer(&rpc, 1).is_empty());
        // The same frame by a second way (the old shard's forward) is not held twice.
        b.offer(&rpc, 2);
        // Not for it: another machine, the apps only.
        b.offer(
            &d(
                "other",
                Filter::Machine {
                    machine_id: "m2".into(),
                },
            ),
            3,
        );
        b.offer(&d("apps", Filter::UserScopedOnly), 3);
        b.offer(&d("all", Filter::All), 4);
        assert!(b.arrived("cm:u:h1", &at(&["m9"]), 5).is_empty());
        let out = b.arrived("cm:u:h1", &at(&["m1"]), 5);
        assert_eq!(
            out,
            vec![(
                "cm:u:h1".to_owned(),
                machine("m1"),
                vec!["rpc".to_owned(), "all".to_owned()]
            )]
        );
        assert!(!b.is_moving());
        assert_eq!(b.counters.handed, 2);
        // A straggler (a view older than the return) is forwarded, for a while.
        let late = b.offer(&rpc, 6);
        assert_eq!(
            late,
            vec![("cm:u:h1".into(), machine("m1"), vec!["rpc".into()])]
        );
        assert!(b.offer(&rpc, 6 + FORWARD_MS).is_empty());
    }

    #[test]
    fn moves_are_bounded_and_expire() {
        let mut b = MoveBook::default();
        b.hold(Identity::Session("s".into()), 0);
        for i in 0..MAX_HELD + 5 {
            b.offer(
                &d(
                    &format!("f{i}"),
                    Filter::Session {
                        session_id: "s".into(),
                    },
                ),
                1,
            );
        }
        assert_eq!(b.counters.shed, 5);
        assert_eq!(b.next_due(), Some(MOVE_WINDOW_MS));
        assert!(!b.expire(MOVE_WINDOW_MS - 1));
        assert!(b.expire(MOVE_WINDOW_MS));
        assert_eq!(b.counters.expired, MAX_HELD as u64);
        for i in 0..MAX_MOVES + 3 {
            b.hold(machine(&format!("m{i}")), 0);
        }
        assert_eq!(b.presence().machines.len(), MAX_MOVES);
    }

    #[test]
    fn identities_are_what_a_reconnect_repeats() {
        let meta = |t: ClientType, s: Option<&str>, m: Option<&str>| SocketMeta {
            connection_id: "c".into(),
            user_id: "u".into(),
            client_type: t,
            session_id: s.map(Into::into),
            machine_id: m.map(Into::into),
            tier: "free".into(),
            connected_at: 0,
            token_hash: None,
            expires_at: None,
            shard: String::new(),
        };
        assert_eq!(
            Identity::of(&meta(ClientType::MachineScoped, None, Some("m"))),
            Some(machine("m"))
        );
        assert_eq!(
            Identity::of(&meta(ClientType::SessionScoped, Some("s"), None)),
            Some(Identity::Session("s".into()))
        );
        assert_eq!(
            Identity::of(&meta(ClientType::UserScoped, Some("s"), None)),
            None
        );
        assert!(machine("m").reached_by(&Filter::MachineScopedOnly {
            machine_id: "m".into()
        }));
        assert!(!machine("m").reached_by(&Filter::UserScopedOnly));
    }
}
