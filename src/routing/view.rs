//! Where a user's recipients are: which shards hold user-scoped sockets, which sessions and
//! machines. The home keeps the authoritative [`RoutingView`] from the shards' presence
//! reports and pushes it, versioned, to the shards; a shard plans every delivery from its copy,
//! so a frame costs no round trip to the home, and reaches only the shards that may hold a
//! recipient.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::protocol::Filter;

/// What routing needs to know of one shard's sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ShardPresence {
    /// The shard holds at least one user-scoped socket.
    pub user_scoped: bool,
    /// Session ids of its session-scoped sockets.
    pub sessions: BTreeSet<String>,
    /// Machine ids of its machine-scoped sockets.
    pub machines: BTreeSet<String>,
    /// Some socket carries an id its type does not imply (a user-scoped socket given a
    /// `sessionId`, say): `session` and `machine` filters must visit this shard too.
    pub tagged: bool,
    /// Apps (`correlationId`) moving (listed by the home) or back from a move (reported by
    /// the shard they came back to); empty otherwise, so an app's connect changes no presence.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub apps: BTreeSet<String>,
}

impl ShardPresence {
    pub fn is_empty(&self) -> bool {
        !self.user_scoped
            && !self.tagged
            && self.sessions.is_empty()
            && self.machines.is_empty()
            && self.apps.is_empty()
    }
}

/// The user's shards and their presence, as of `version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutingView {
    pub version: u64,
    pub shards: BTreeMap<String, ShardPresence>,
}

impl RoutingView {
    /// Shards holding any socket (a shard's presence is empty exactly when it holds none:
    /// every session- or machine-scoped socket carries its id).
    pub fn occupied(&self) -> Vec<String> {
        self.select(|p| !p.is_empty())
    }

    fn select(&self, f: impl Fn(&ShardPresence) -> bool) -> Vec<String> {
        self.shards
            .iter()
            .filter(|(_, p)| f(p))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Shards holding a machine-scoped socket of `machine`.
    pub fn machine_shards(&self, machine: &str) -> Vec<String> {
        self.select(|p| p.machines.contains(machine))
    }

    /// Shards holding a session-scoped socket of `session`.
    pub fn session_shards(&self, session: &str) -> Vec<String> {
        self.select(|p| p.sessions.contains(session))
    }

    pub fn user_scoped_shards(&self) -> Vec<String> {
        self.select(|p| p.user_scoped)
    }

    /// Every shard that may hold a socket `filter` selects; the shard itself applies the
    /// filter exactly, so visiting one too many costs a call, never a misdelivery.
    pub fn targets(&self, filter: &Filter) -> Vec<String> {
        match filter {
            Filter::All | Filter::Exclude { .. } => self.occupied(),
            Filter::UserScopedOnly => self.user_scoped_shards(),
            Filter::Session { session_id } => {
                self.select(|p| p.tagged || p.sessions.contains(session_id))
            }
            Filter::Machine { machine_id } => {
                self.select(|p| p.tagged || p.machines.contains(machine_id))
            }
            Filter::MachineScopedOnly { machine_id } => {
                self.select(|p| p.user_scoped || p.machines.contains(machine_id))
            }
            Filter::AllInterestedInSession { session_id } => {
                self.select(|p| p.user_scoped || p.sessions.contains(session_id))
            }
            Filter::App { .. } => self.user_scoped_shards(),
        }
    }

    /// Machines with a socket on some shard.
    pub fn machines_online(&self) -> BTreeSet<&str> {
        self.shards
            .values()
            .flat_map(|p| p.machines.iter().map(String::as_str))
            .collect()
    }
}

/// A machine came online (its first socket on any shard) or went offline (its last).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub machine_id: String,
    pub online: bool,
}

/// A shard's presence report: absolute, so a repeated or reordered one is harmless when
/// its sequence number is old. `incarnation` changes when the shard object restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceReport {
    pub shard: String,
    pub incarnation: u64,
    pub seq: u64,
    pub presence: ShardPresence,
}

/// The home's book: the view plus the last report applied per shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceBook {
    pub view: RoutingView,
    /// shard -> (incarnation, seq) of the last report applied.
    applied: BTreeMap<String, (u64, u64)>,
}

/// A view version never below `floor`: the home starts its versions at its wake time
/// (`now_ms << 10`), so a view it pushes after a restart is newer than any it pushed before
/// (at fewer than 1,024 changes a millisecond), with no version stored.
pub fn version_floor(now_ms: u64) -> u64 {
    now_ms.saturating_mul(1024)
}

impl PresenceBook {
    /// Applies a report; returns the machine transitions it causes, or `None` if it was
    /// older than one already applied (nothing changed).
    pub fn apply(&mut self, r: PresenceReport) -> Option<Vec<Transition>> {
        if let Some(&(inc, seq)) = self.applied.get(&r.shard) {
            if inc == r.incarnation && seq >= r.seq {
                return None;
            }
        }
        self.applied.insert(r.shard.clone(), (r.incarnation, r.seq));
        Some(self.set(&r.shard, r.presence))
    }

    /// Starts an empty book whose versions are at least `floor` (see [`version_floor`]).
    pub fn starting_at(floor: u64) -> Self {
        let mut b = Self::default();
        b.view.version = floor;
        b
    }

    /// Puts back a shard's entry as stored (after a wake), without counting a change.
    pub fn restore(&mut self, shard: &str, incarnation: u64, seq: u64, presence: ShardPresence) {
        self.applied.insert(shard.to_owned(), (incarnation, seq));
        self.view.shards.insert(shard.to_owned(), presence);
    }

    /// The (incarnation, seq) of the last report applied for `shard`.
    pub fn applied(&self, shard: &str) -> Option<(u64, u64)> {
        self.applied.get(shard).copied()
    }

    /// Sets a shard's presence outright (a reconcile pass reads it from the shard itself).
    pub fn set(&mut self, shard: &str, presence: ShardPresence) -> Vec<Transition> {
        let before = self.view.shards.get(shard).cloned().unwrap_or_default();
        if before == presence && self.view.shards.contains_key(shard) {
            return Vec::new();
        }
        let online_before = self.online();
        self.view.shards.insert(shard.to_owned(), presence);
        self.view.version += 1;
        self.transitions(&online_before)
    }

    /// Adds a shard with no sockets yet (it joined the lease set), if it is not known.
    pub fn join(&mut self, shard: &str) {
        if !self.view.shards.contains_key(shard) {
            self.view
                .shards
                .insert(shard.to_owned(), ShardPresence::default());
            self.view.version += 1;
        }
    }

    /// Forgets a shard (it left the set); its machines may go offline.
    pub fn leave(&mut self, shard: &str) -> Vec<Transition> {
        let online_before = self.online();
        self.applied.remove(shard);
        if self.view.shards.remove(shard).is_none() {
            return Vec::new();
        }
        self.view.version += 1;
        self.transitions(&online_before)
    }

    fn online(&self) -> BTreeSet<String> {
        self.view
            .machines_online()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    fn transitions(&self, online_before: &BTreeSet<String>) -> Vec<Transition> {
        let now = self.view.machines_online();
        let mut t: Vec<Transition> = now
            .iter()
            .filter(|m| !online_before.contains(**m))
            .map(|m| Transition {
                machine_id: (*m).to_owned(),
                online: true,
            })
            .collect();
        t.extend(
            online_before
                .iter()
                .filter(|m| !now.contains(m.as_str()))
                .map(|m| Transition {
                    machine_id: m.clone(),
                    online: false,
                }),
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(user: bool, sessions: &[&str], machines: &[&str]) -> ShardPresence {
        ShardPresence {
            user_scoped: user,
            sessions: sessions.iter().map(|s| s.to_string()).collect(),
            machines: machines.iter().map(|s| s.to_string()).collect(),
            tagged: false,
            apps: BTreeSet::new(),
        }
    }

    fn report(shard: &str, seq: u64, presence: ShardPresence) -> PresenceReport {
        PresenceReport {
            shard: shard.into(),
            incarnation: 1,
            seq,
            presence,
        }
    }

    fn view() -> RoutingView {
        let mut v = RoutingView::default();
        v.shards.insert("a".into(), p(true, &["s1"], &[]));
        v.shards.insert("b".into(), p(false, &["s2"], &["m1"]));
        v.shards.insert("c".into(), p(true, &[], &["m2"]));
        v.shards.insert("d".into(), p(false, &[], &[]));
        v
    }

    #[test]
    fn targets_are_the_shards_that_may_hold_a_recipient() {
        let v = view();
        let t = |f: Filter| v.targets(&f);
        // `d` holds no socket.
        assert_eq!(t(Filter::All), ["a", "b", "c"]);
        assert_eq!(
            t(Filter::Exclude {
                connection_id: "x".into()
            }),
            ["a", "b", "c"]
        );
        assert_eq!(t(Filter::UserScopedOnly), ["a", "c"]);
        assert_eq!(
            t(Filter::Session {
                session_id: "s2".into()
            }),
            ["b"]
        );
        assert_eq!(
            t(Filter::Machine {
                machine_id: "m2".into()
            }),
            ["c"]
        );
        assert_eq!(
            t(Filter::Machine {
                machine_id: "zz".into()
            }),
            Vec::<String>::new()
        );
        assert_eq!(
            t(Filter::MachineScopedOnly {
                machine_id: "m1".into()
            }),
            ["a", "b", "c"]
        );
        assert_eq!(
            t(Filter::AllInterestedInSession {
                session_id: "s2".into()
            }),
            ["a", "b", "c"]
        );
        assert_eq!(v.machine_shards("m1"), ["b"]);
        assert_eq!(v.session_shards("s1"), ["a"]);
    }

    #[test]
    fn tagged_shards_are_visited_by_id_filters() {
        let mut v = view();
        v.shards.get_mut("d").unwrap().tagged = true;
        assert_eq!(
            v.targets(&Filter::Session {
                session_id: "s2".into()
            }),
            ["b", "d"]
        );
        assert_eq!(
            v.targets(&Filter::Machine {
                machine_id: "q".into()
            }),
            ["d"]
        );
    }

    #[test]
    fn machines_go_online_once_and_offline_with_their_last_shard() {
        let mut b = PresenceBook::default();
        let on = |m: &str| Transition {
            machine_id: m.into(),
            online: true,
        };
        let off = |m: &str| Transition {
            machine_id: m.into(),
            online: false,
        };
        assert_eq!(
            b.apply(report("a", 1, p(false, &[], &["m1"]))),
            Some(vec![on("m1")])
        );
        // A reconnect that overlaps the old socket, on another shard: no flap.
        assert_eq!(
            b.apply(report("b", 1, p(false, &[], &["m1"]))),
            Some(vec![])
        );
        assert_eq!(b.apply(report("a", 2, p(false, &[], &[]))), Some(vec![]));
        assert_eq!(
            b.apply(report("b", 2, p(true, &[], &[]))),
            Some(vec![off("m1")])
        );
        let v = b.view.version;
        // An old or repeated report changes nothing.
        assert_eq!(b.apply(report("b", 1, p(false, &[], &["m1"]))), None);
        assert_eq!(b.view.version, v);
        // A restarted shard (new incarnation) starts its sequence again.
        let mut r = report("b", 1, p(false, &[], &["m9"]));
        r.incarnation = 2;
        assert_eq!(b.apply(r), Some(vec![on("m9")]));
        assert_eq!(b.leave("b"), vec![off("m9")]);
        assert!(!b.view.shards.contains_key("b"));
    }

    #[test]
    fn versions_move_only_on_change() {
        let mut b = PresenceBook::default();
        b.join("a");
        let v = b.view.version;
        b.join("a");
        assert_eq!(b.view.version, v);
        assert!(b.set("a", ShardPresence::default()).is_empty());
        assert_eq!(b.view.version, v);
        b.set("a", p(true, &[], &[]));
        assert_eq!(b.view.version, v + 1);
        assert!(b.view.shards["a"].user_scoped && !b.view.shards["a"].is_empty());
    }
}
