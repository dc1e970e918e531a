//! Moves the edge starts (a rotation drain, a policy switch's drain): what is addressed to a
//! socket the edge told to reconnect is held by the user's home until a socket of the same
//! identity is back, then handed to it (docs/policies.md, "Moves that lose nothing").
//!
//! Identities that can be matched: a machine-scoped socket's machine id, a session-scoped
//! socket's session id (the platform's CLI and daemon send the same ones on every connect),
//! and an app's `correlationId` (the mobile and React apps send the same one on every
//! connect). An app socket without one (the Vue web app) cannot be matched: what is sent to
//! it while it moves is not held.
//!
//! While an identity moves, the home lists it as present on itself, so deliveries for it
//! reach the home and presence announces no offline/online flicker for a move the edge made.
//! A moving app is listed in the home's `apps`; the shard it comes back to finds it there
//! (in its routing view) and reports it in its own `apps`, which is how the home learns it
//! is back (an app's connect is otherwise no presence change).
//! Bounded: `MAX_MOVES` identities per user, `MAX_HELD` frames and `MAX_HELD_BYTES` per
//! identity, `MOVE_WINDOW_MS` to come back; what does not fit or expires is counted.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

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
    /// An app's `correlationId`.
    App(String),
}

impl Identity {
    /// The identity of a socket, if it has one that survives a reconnect.
    pub fn of(m: &SocketMeta) -> Option<Self> {
        match m.client_type {
            ClientType::MachineScoped => m.machine_id.clone().map(Identity::Machine),
            ClientType::SessionScoped => m.session_id.clone().map(Identity::Session),
            ClientType::UserScoped => m.correlation_id.clone().map(Identity::App),
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
            (
                Identity::App(_),
                Filter::UserScopedOnly
                | Filter::MachineScopedOnly { .. }
                | Filter::AllInterestedInSession { .. },
            ) => true,
            (Identity::App(a), Filter::App { correlation_id }) => a == correlation_id,
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
            Identity::App(a) => Filter::App {
                correlation_id: a.clone(),
            },
        }
    }

    fn present_in(&self, p: &ShardPresence) -> bool {
        match self {
            Identity::Machine(m) => p.machines.contains(m),
            Identity::Session(s) => p.sessions.contains(s),
            Identity::App(a) => p.apps.contains(a),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Held {
    /// The shard it moved from: its reports list it there until they catch up with the
    /// move, so only an explicit return (`returned`) counts from there.
    from: String,
    /// Hashes of frames its old socket got just before it was told (a copy that reaches the
    /// home after the move began is not held for it again).
    got: Vec<u64>,
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
    /// `id` was told to move off `from`: hold what is addressed to it for `MOVE_WINDOW_MS`.
    /// `got`: hashes of what its old socket got last ([`Recent::got_lately`]).
    pub fn hold(&mut self, id: Identity, from: &str, got: Vec<u64>, now_ms: u64) {
        self.forwards.remove(&id);
        self.counters.moves += 1;
        if let Some(h) = self.moves.get_mut(&id) {
            h.until_ms = now_ms + MOVE_WINDOW_MS;
            from.clone_into(&mut h.from);
            h.got = got;
            return;
        }
        if self.moves.len() >= MAX_MOVES {
            return;
        }
        self.moves.insert(
            id,
            Held {
                from: from.to_owned(),
                got,
                until_ms: now_ms + MOVE_WINDOW_MS,
                ..Held::default()
            },
        );
    }

    /// A delivery for `id` that its old shard sent on may come before that shard's hold
    /// (two calls): the move starts here then, unless `id` is moving or already back.
    pub fn hold_unless_known(&mut self, id: &Identity, from: &str, now_ms: u64) {
        if !self.moves.contains_key(id) && !self.forwards.contains_key(id) {
            self.hold(id.clone(), from, Vec::new(), now_ms);
        }
    }

    /// A delivery that reached the home (or was forwarded to it by the identity's old
    /// shard): held for every moving identity it reaches, once (a copy that arrives by both
    /// ways is the same frame), and answered as frames for identities already back.
    pub fn offer(&mut self, d: &Delivery, now_ms: u64) -> Vec<Handoff> {
        let mut out = Vec::new();
        let mut hash = None;
        for (id, h) in self.moves.iter_mut() {
            if !id.reached_by(&d.filter) || h.frames.contains(&d.frame) {
                continue;
            }
            if !h.got.is_empty()
                && h.got
                    .contains(hash.get_or_insert_with(|| frame_hash(&d.frame)))
            {
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

    /// A shard's presence now: each moving identity present there is back (unless that is
    /// the shard it moved from); what was held for it goes to that shard, and later
    /// stragglers follow for `FORWARD_MS`.
    pub fn arrived(&mut self, shard: &str, p: &ShardPresence, now_ms: u64) -> Vec<Handoff> {
        let back: Vec<Identity> = self
            .moves
            .iter()
            .filter(|(id, h)| h.from != shard && id.present_in(p))
            .map(|(id, _)| id.clone())
            .collect();
        self.hand(shard, back, now_ms)
    }

    /// Identities back on the shard they moved from, as that shard says.
    pub fn returned(&mut self, shard: &str, ids: &[Identity], now_ms: u64) -> Vec<Handoff> {
        let back: Vec<Identity> = ids
            .iter()
            .filter(|id| self.moves.get(*id).is_some_and(|h| h.from == shard))
            .cloned()
            .collect();
        self.hand(shard, back, now_ms)
    }

    fn hand(&mut self, shard: &str, back: Vec<Identity>, now_ms: u64) -> Vec<Handoff> {
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
                // Listed as a user-scoped socket here, so what apps are sent reaches the home.
                Identity::App(a) => {
                    p.user_scoped = true;
                    p.apps.insert(a.clone())
                }
            };
        }
        p
    }

    /// The `correlationId`s of the apps moving.
    pub fn apps(&self) -> BTreeSet<String> {
        self.moves
            .keys()
            .filter_map(|id| match id {
                Identity::App(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether the app with this `correlationId` is moving.
    pub fn app_moving(&self, correlation_id: &str) -> bool {
        self.moves
            .contains_key(&Identity::App(correlation_id.to_owned()))
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

/// What a draining shard told to move: each identity until its move window ends (what still
/// reaches the shard for it goes to the home), and each told socket's identity, so a call's
/// answer that comes back after its caller's socket closed follows the caller instead.
/// Bounded at `MAX_SOCKETS` sockets; what does not fit is counted.
#[derive(Debug, Default)]
pub struct Moved {
    ids: BTreeMap<Identity, u64>,
    sockets: BTreeMap<String, (Identity, u64)>,
    pub shed: u64,
}

impl Moved {
    /// `connection`, of identity `id`, was told to move at `now_ms`.
    pub fn told(&mut self, connection: &str, id: Identity, now_ms: u64) {
        let until = now_ms + MOVE_WINDOW_MS;
        self.expire(now_ms);
        if self.sockets.len() >= MAX_SOCKETS {
            self.shed += 1;
        } else {
            self.sockets
                .insert(connection.to_owned(), (id.clone(), until));
        }
        self.ids.insert(id, until);
    }

    /// A socket of `id` was accepted here: it is back, nothing of it is sent on. Answers
    /// whether it was moving (the home must hear that it is back here).
    pub fn back(&mut self, id: &Identity) -> bool {
        self.ids.remove(id).is_some()
    }

    /// The identities still moving, as of `now_ms`.
    pub fn moving(&mut self, now_ms: u64) -> impl Iterator<Item = &Identity> {
        self.expire(now_ms);
        self.ids.keys()
    }

    /// The identity of a socket told to move, while its window lasts.
    pub fn socket(&self, connection: &str, now_ms: u64) -> Option<&Identity> {
        self.sockets
            .get(connection)
            .filter(|(_, until)| *until > now_ms)
            .map(|(id, _)| id)
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn expire(&mut self, now_ms: u64) {
        self.ids.retain(|_, until| *until > now_ms);
        self.sockets.retain(|_, (_, until)| *until > now_ms);
    }
}

/// How long a shard remembers what it delivered, to send a handoff nothing its sockets got
/// directly (a move's handoff follows the return within a report or two).
pub const RECENT_MS: u64 = 10_000;
/// At most this many deliveries (and handed frames) remembered; older ones are forgotten
/// first (counted). A busy shard delivers ~100 frames a second: 4,096 keep the whole window.
pub const MAX_RECENT: usize = 4_096;
/// What a told socket got lately, sent with its hold: how far back, and at most how many.
pub const GOT_LATELY_MS: u64 = 2_000;
pub const MAX_GOT: usize = 64;
/// At most this many sockets numbered per shard (a shard's cap is far below).
pub const MAX_SOCKETS: usize = 4_096;

/// What a shard delivered lately, so that a frame a moved identity gets both directly and in
/// its handoff reaches it once: a delivery sent while the identity was back here but still
/// listed at the home comes by both ways, in either order. Deliveries are numbered; a socket
/// got one directly when it was accepted before its number and the filter selects it. What
/// was handed is remembered per socket, so a direct delivery that comes after skips it.
#[derive(Debug, Default)]
pub struct Recent {
    /// (frame hash, when, number, filter) of each delivery that reached a socket here.
    sent: VecDeque<(u64, u64, u64, Filter)>,
    /// (frame hash, when, connection) of each frame handed to a socket here.
    handed: VecDeque<(u64, u64, String)>,
    /// The number of the last delivery.
    seq: u64,
    /// Connection -> the number of the last delivery before it was accepted.
    since: HashMap<String, u64>,
    /// Entries forgotten before `RECENT_MS` (or sockets not numbered) because of a bound.
    pub shed: u64,
}

impl Recent {
    /// A socket was accepted here: what is delivered from now on reaches it.
    pub fn accepted(&mut self, connection: &str) {
        if self.since.len() >= MAX_SOCKETS {
            // Not numbered: a handoff then sends it everything (a repeat, never a loss).
            self.shed += 1;
            return;
        }
        self.since.insert(connection.to_owned(), self.seq);
    }

    pub fn closed(&mut self, connection: &str) {
        self.since.remove(connection);
    }

    /// `frame` was sent here at `now_ms` to the sockets `filter` selects.
    pub fn sent(&mut self, frame: &str, filter: &Filter, now_ms: u64) {
        self.forget(now_ms);
        self.seq += 1;
        if self.sent.len() >= MAX_RECENT {
            self.sent.pop_front();
            self.shed += 1;
        }
        self.sent
            .push_back((frame_hash(frame), now_ms, self.seq, filter.clone()));
    }

    /// Whether the socket `m` got `frame` directly: delivered here after it was accepted, by
    /// a filter that selects it.
    pub fn got(&self, frame: &str, m: &SocketMeta) -> bool {
        let Some(since) = self.since.get(&m.connection_id) else {
            return false;
        };
        let h = frame_hash(frame);
        self.sent
            .iter()
            .any(|(fh, _, n, f)| *fh == h && n > since && f.selects(m))
    }

    /// Whether the socket `m` has `frame` already: got directly since it was accepted, or
    /// handed (a frame that reached the home by two ways after the return is forwarded twice).
    pub fn reached(&self, frame: &str, m: &SocketMeta) -> bool {
        self.got(frame, m) || {
            let h = frame_hash(frame);
            self.handed
                .iter()
                .any(|(fh, _, c)| *fh == h && *c == m.connection_id)
        }
    }

    /// Hashes of the frames the socket `m` got here in the last `GOT_LATELY_MS` (at most
    /// `MAX_GOT`): sent when it is told to move, so a copy that reaches the home after the
    /// move began is not held for it again.
    pub fn got_lately(&self, m: &SocketMeta, now_ms: u64) -> Vec<u64> {
        let Some(since) = self.since.get(&m.connection_id) else {
            return Vec::new();
        };
        let mut out: Vec<u64> = self
            .sent
            .iter()
            .rev()
            .take_while(|(_, at, _, _)| at + GOT_LATELY_MS > now_ms)
            .filter(|(_, _, n, f)| n > since && f.selects(m))
            .map(|(h, _, _, _)| *h)
            .take(MAX_GOT)
            .collect();
        out.reverse();
        out
    }

    /// `frame` was handed to the socket `connection`.
    pub fn handed(&mut self, frame: &str, connection: &str, now_ms: u64) {
        self.forget(now_ms);
        if self.handed.len() >= MAX_RECENT {
            self.handed.pop_front();
            self.shed += 1;
        }
        self.handed
            .push_back((frame_hash(frame), now_ms, connection.to_owned()));
    }

    /// The frame's handed copies (per connection), when any are remembered: a direct
    /// delivery skips those sockets. `None` (the common case) costs nothing more.
    pub fn handed_to(&self, frame: &str) -> Option<Vec<&str>> {
        if self.handed.is_empty() {
            return None;
        }
        let h = frame_hash(frame);
        let to: Vec<&str> = self
            .handed
            .iter()
            .filter(|(fh, _, _)| *fh == h)
            .map(|(_, _, c)| c.as_str())
            .collect();
        (!to.is_empty()).then_some(to)
    }

    fn forget(&mut self, now_ms: u64) {
        let old = |at: u64| at + RECENT_MS <= now_ms;
        while self.sent.front().is_some_and(|e| old(e.1)) {
            self.sent.pop_front();
        }
        while self.handed.front().is_some_and(|e| old(e.1)) {
            self.handed.pop_front();
        }
    }
}

fn frame_hash(frame: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    frame.hash(&mut h);
    h.finish()
}

/// `a` with `b`'s recipients added.
pub fn union(mut a: ShardPresence, b: &ShardPresence) -> ShardPresence {
    a.user_scoped |= b.user_scoped;
    a.tagged |= b.tagged;
    a.machines.extend(b.machines.iter().cloned());
    a.sessions.extend(b.sessions.iter().cloned());
    a.apps.extend(b.apps.iter().cloned());
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
        b.hold(machine("m1"), "cm:u:h0", Vec::new(), 0);
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

    fn app_socket(c: &str, connected_at: u64) -> SocketMeta {
        SocketMeta {
            connection_id: format!("conn-{c}"),
            user_id: "u".into(),
            client_type: ClientType::UserScoped,
            session_id: None,
            machine_id: None,
            correlation_id: Some(c.into()),
            tier: "free".into(),
            connected_at,
            token_hash: None,
            expires_at: None,
            shard: String::new(),
        }
    }

    #[test]
    fn a_moving_app_is_listed_as_user_scoped_at_the_home_and_back_where_its_shard_says() {
        let mut b = MoveBook::default();
        let app = Identity::App("a1".into());
        assert_eq!(Identity::of(&app_socket("a1", 0)), Some(app.clone()));
        b.hold(app.clone(), "cm:u:h0", Vec::new(), 0);
        let p = b.presence();
        assert!(p.user_scoped && p.apps.contains("a1"), "{p:?}");
        assert!(b.app_moving("a1") && !b.app_moving("a2"));
        // What apps are sent is held; what only machines or sessions get is not.
        b.offer(&d("status", Filter::UserScopedOnly), 1);
        b.offer(
            &d(
                "for-session",
                Filter::Session {
                    session_id: "s".into(),
                },
            ),
            1,
        );
        b.offer(
            &d(
                "interested",
                Filter::AllInterestedInSession {
                    session_id: "s".into(),
                },
            ),
            1,
        );
        // Back where a shard reports it among its apps: handed there, by its own filter.
        let mut there = ShardPresence::default();
        assert!(b.arrived("cm:u:h2", &there, 2).is_empty());
        there.apps.insert("a1".into());
        let out = b.arrived("cm:u:h2", &there, 2);
        assert_eq!(
            out,
            vec![(
                "cm:u:h2".to_owned(),
                app.clone(),
                vec!["status".to_owned(), "interested".to_owned()]
            )]
        );
        assert_eq!(
            app.filter(),
            Filter::App {
                correlation_id: "a1".into()
            }
        );
        assert!(b.presence().apps.is_empty());
    }

    #[test]
    fn a_handoff_skips_what_a_socket_got_directly_since_it_was_accepted() {
        let mut r = Recent::default();
        let apps = Filter::UserScopedOnly;
        let app = app_socket("a1", 0);
        // Delivered before the app's new socket was accepted: not got.
        r.sent("early", &apps, 100);
        r.accepted(&app.connection_id);
        // After, to it: got; to a machine only: not got.
        r.sent("both-ways", &apps, 100);
        r.sent(
            "machine-only",
            &Filter::Machine {
                machine_id: "m".into(),
            },
            100,
        );
        assert!(!r.got("early", &app));
        assert!(r.got("both-ways", &app));
        assert!(!r.got("machine-only", &app));
        assert!(!r.got("never-sent", &app));
        // A socket not numbered (closed, or past the bound) is sent everything.
        r.closed(&app.connection_id);
        assert!(!r.got("both-ways", &app));
        r.accepted(&app.connection_id);
        // Remembered for RECENT_MS only, and at most MAX_RECENT (counted).
        r.sent("later", &apps, 100 + RECENT_MS);
        assert!(r.got("later", &app) && !r.got("both-ways", &app));
        for i in 0..MAX_RECENT + 2 {
            r.sent(&format!("f{i}"), &apps, 200 + RECENT_MS);
        }
        assert_eq!(r.shed, 3);
        assert!(!r.got("f0", &app) && r.got(&format!("f{}", MAX_RECENT + 1), &app));
    }

    #[test]
    fn a_frame_handed_first_is_skipped_by_the_direct_delivery_after_it() {
        let mut r = Recent::default();
        assert_eq!(r.handed_to("f"), None);
        r.handed("f", "c1", 0);
        r.handed("f", "c2", 0);
        r.handed("g", "c1", 0);
        assert_eq!(r.handed_to("f"), Some(vec!["c1", "c2"]));
        assert_eq!(r.handed_to("h"), None);
        let c1 = SocketMeta {
            connection_id: "c1".into(),
            ..app_socket("a1", 0)
        };
        assert!(r.reached("f", &c1) && r.reached("g", &c1) && !r.reached("h", &c1));
        r.sent("x", &Filter::All, RECENT_MS);
        assert_eq!(r.handed_to("f"), None);
    }

    #[test]
    fn a_shard_remembers_what_it_told_to_move_for_the_window_and_forgets_what_comes_back() {
        let mut m = Moved::default();
        m.told("c1", machine("m1"), 0);
        m.told("c2", Identity::App("a1".into()), 0);
        assert_eq!(m.socket("c2", 1), Some(&Identity::App("a1".into())));
        assert_eq!(m.socket("c3", 1), None);
        m.back(&machine("m1"));
        assert_eq!(m.moving(1).count(), 1);
        // The window ends for both maps.
        assert_eq!(m.socket("c2", MOVE_WINDOW_MS), None);
        assert_eq!(m.moving(MOVE_WINDOW_MS).count(), 0);
        assert!(m.is_empty());
        for i in 0..MAX_SOCKETS + 2 {
            m.told(&format!("c{i}"), machine("m"), 0);
        }
        assert_eq!(m.shed, 2);
    }

    #[test]
    fn the_shard_it_moved_from_counts_only_when_it_says_the_identity_came_back() {
        let mut b = MoveBook::default();
        b.hold(machine("m1"), "cm:u:h1", Vec::new(), 0);
        b.offer(&d("f", Filter::All), 1);
        // A report the old shard took before the move still lists it: not back.
        assert!(b.arrived("cm:u:h1", &at(&["m1"]), 2).is_empty());
        assert!(b.is_moving());
        // Said explicitly by another shard: ignored; by the old one: back there.
        assert!(b.returned("cm:u:h2", &[machine("m1")], 3).is_empty());
        let out = b.returned("cm:u:h1", &[machine("m1")], 3);
        assert_eq!(
            out,
            vec![("cm:u:h1".into(), machine("m1"), vec!["f".into()])]
        );
        assert!(!b.is_moving());
    }

    #[test]
    fn what_the_old_socket_got_last_is_not_held_again_and_a_forward_may_start_the_move() {
        let mut r = Recent::default();
        let app = app_socket("a1", 0);
        r.accepted(&app.connection_id);
        r.sent("old", &Filter::UserScopedOnly, 0);
        r.sent("last", &Filter::UserScopedOnly, 5_000);
        let got = r.got_lately(&app, 5_500);
        assert_eq!(got, vec![frame_hash("last")]);
        let mut b = MoveBook::default();
        let id = Identity::App("a1".into());
        b.hold(id.clone(), "cm:u:h1", got, 5_500);
        // The copy of "last" that reaches the home after the move began is not held.
        b.offer(&d("last", Filter::UserScopedOnly), 5_600);
        b.offer(&d("next", Filter::UserScopedOnly), 5_600);
        let mut back = ShardPresence::default();
        back.apps.insert("a1".into());
        let out = b.arrived("cm:u:h2", &back, 6_000);
        assert_eq!(
            out,
            vec![("cm:u:h2".into(), id.clone(), vec!["next".into()])]
        );
        // Back already: a late forward does not start the move again.
        b.hold_unless_known(&id, "cm:u:h1", 6_100);
        assert!(!b.is_moving());
        // Not known: it does.
        let m = machine("m9");
        b.hold_unless_known(&m, "cm:u:h1", 6_100);
        assert!(b.presence().machines.contains("m9"));
    }

    #[test]
    fn moves_are_bounded_and_expire() {
        let mut b = MoveBook::default();
        b.hold(Identity::Session("s".into()), "cm:u:h0", Vec::new(), 0);
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
            b.hold(machine(&format!("m{i}")), "cm:u:h0", Vec::new(), 0);
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
            correlation_id: None,
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
        // An app without a `correlationId` cannot be matched.
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
