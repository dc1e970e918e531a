//! A shard's bookkeeping of its open sockets, kept incrementally: counts by client type,
//! reference counts of session and machine ids, the oldest connection, a memory estimate, and
//! the presence that routing needs. Every connect and close is O(log n); nothing walks the
//! socket list except [`SocketIndex::rebuild`], once after the object wakes.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::protocol::{ClientType, SocketMeta};
use crate::routing::view::ShardPresence;
use observability::stats::ByType;

/// The fixed per-socket cost in the memory estimate (runtime socket state), on top of the
/// socket's attachment.
pub const SOCKET_OVERHEAD_BYTES: u64 = 4096;

#[derive(Debug, Clone)]
struct Entry {
    client_type: ClientType,
    session_id: Option<String>,
    machine_id: Option<String>,
    correlation_id: Option<String>,
    connected_at: u64,
    expires_at: Option<u64>,
    bytes: u64,
}

/// What changed for routing when a socket came or went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Counts moved; routing's view of this shard did not.
    Counts,
    /// A session or machine appeared or left, or the shard gained or lost its first
    /// user-scoped (or tagged) socket: the home must hear of it.
    Presence,
    /// The socket was already counted (or was never counted): nothing changed.
    None,
}

#[derive(Debug, Default)]
pub struct SocketIndex {
    sockets: HashMap<String, Entry>,
    by_type: ByType,
    /// Ids of session-scoped (machine-scoped) sockets -> how many.
    scoped_sessions: HashMap<String, u32>,
    scoped_machines: HashMap<String, u32>,
    /// Ids on any socket -> how many (the platform's `activeSessions` counts every socket).
    any_sessions: HashMap<String, u32>,
    any_machines: HashMap<String, u32>,
    /// Apps' `correlationId`s -> how many sockets (not presence: only a move asks for them).
    apps: HashMap<String, u32>,
    /// Sockets carrying an id their type does not imply.
    tagged: u32,
    /// connected_at -> sockets connected at that ms.
    oldest: BTreeMap<u64, u32>,
    /// (credential expiry, connection) of every socket whose credential expires.
    expiries: BTreeSet<(u64, String)>,
    bytes: u64,
    /// Bumped on every presence change, so reports can be ordered.
    seq: u64,
}

fn bump(m: &mut HashMap<String, u32>, k: &str) -> bool {
    let n = m.entry(k.to_owned()).or_insert(0);
    *n += 1;
    *n == 1
}

fn drop_one(m: &mut HashMap<String, u32>, k: &str) -> bool {
    match m.get_mut(k) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            m.remove(k);
            true
        }
        None => false,
    }
}

fn is_tagged(e: &Entry) -> bool {
    match e.client_type {
        ClientType::UserScoped => e.session_id.is_some() || e.machine_id.is_some(),
        ClientType::SessionScoped => e.machine_id.is_some(),
        ClientType::MachineScoped => e.session_id.is_some(),
    }
}

impl SocketIndex {
    /// The index of these sockets (after a wake from hibernation or a restart).
    pub fn rebuild<'a>(metas: impl IntoIterator<Item = (&'a SocketMeta, u64)>) -> Self {
        let mut ix = SocketIndex::default();
        for (m, bytes) in metas {
            ix.add(m, bytes);
        }
        ix
    }

    /// Counts a socket; `attachment_bytes` is its serialized attachment's size.
    pub fn add(&mut self, m: &SocketMeta, attachment_bytes: u64) -> Change {
        if self.sockets.contains_key(&m.connection_id) {
            return Change::None;
        }
        let e = Entry {
            client_type: m.client_type,
            session_id: m.session_id.clone(),
            machine_id: m.machine_id.clone(),
            correlation_id: m.correlation_id.clone(),
            connected_at: m.connected_at,
            expires_at: m.expires_at,
            bytes: SOCKET_OVERHEAD_BYTES + attachment_bytes,
        };
        if let Some(at) = e.expires_at {
            self.expiries.insert((at, m.connection_id.clone()));
        }
        let mut presence = false;
        match e.client_type {
            ClientType::UserScoped => {
                presence |= self.by_type.user_scoped == 0;
                self.by_type.user_scoped += 1;
            }
            ClientType::SessionScoped => {
                self.by_type.session_scoped += 1;
                if let Some(s) = &e.session_id {
                    presence |= bump(&mut self.scoped_sessions, s);
                }
            }
            ClientType::MachineScoped => {
                self.by_type.machine_scoped += 1;
                if let Some(mid) = &e.machine_id {
                    presence |= bump(&mut self.scoped_machines, mid);
                }
            }
        }
        if let Some(s) = &e.session_id {
            bump(&mut self.any_sessions, s);
        }
        if let Some(mid) = &e.machine_id {
            bump(&mut self.any_machines, mid);
        }
        if let Some(c) = &e.correlation_id {
            bump(&mut self.apps, c);
        }
        if is_tagged(&e) {
            presence |= self.tagged == 0;
            self.tagged += 1;
        }
        *self.oldest.entry(e.connected_at).or_insert(0) += 1;
        self.bytes += e.bytes;
        self.sockets.insert(m.connection_id.clone(), e);
        self.changed(presence)
    }

    /// Uncounts a socket; a second call for the same connection changes nothing.
    pub fn remove(&mut self, connection_id: &str) -> Change {
        let Some(e) = self.sockets.remove(connection_id) else {
            return Change::None;
        };
        if let Some(at) = e.expires_at {
            self.expiries.remove(&(at, connection_id.to_owned()));
        }
        let mut presence = false;
        match e.client_type {
            ClientType::UserScoped => {
                self.by_type.user_scoped = self.by_type.user_scoped.saturating_sub(1);
                presence |= self.by_type.user_scoped == 0;
            }
            ClientType::SessionScoped => {
                self.by_type.session_scoped = self.by_type.session_scoped.saturating_sub(1);
                if let Some(s) = &e.session_id {
                    presence |= drop_one(&mut self.scoped_sessions, s);
                }
            }
            ClientType::MachineScoped => {
                self.by_type.machine_scoped = self.by_type.machine_scoped.saturating_sub(1);
                if let Some(mid) = &e.machine_id {
                    presence |= drop_one(&mut self.scoped_machines, mid);
                }
            }
        }
        if let Some(s) = &e.session_id {
            drop_one(&mut self.any_sessions, s);
        }
        if let Some(mid) = &e.machine_id {
            drop_one(&mut self.any_machines, mid);
        }
        if let Some(c) = &e.correlation_id {
            drop_one(&mut self.apps, c);
        }
        if is_tagged(&e) {
            self.tagged = self.tagged.saturating_sub(1);
            presence |= self.tagged == 0;
        }
        if let Some(n) = self.oldest.get_mut(&e.connected_at) {
            *n -= 1;
            if *n == 0 {
                self.oldest.remove(&e.connected_at);
            }
        }
        self.bytes = self.bytes.saturating_sub(e.bytes);
        self.changed(presence)
    }

    fn changed(&mut self, presence: bool) -> Change {
        if presence {
            self.seq += 1;
            Change::Presence
        } else {
            Change::Counts
        }
    }

    /// When the first socket's credential expires.
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// The sockets whose credential has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> Vec<String> {
        self.expiries
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .map(|(_, id)| id.clone())
            .collect()
    }

    pub fn contains(&self, connection_id: &str) -> bool {
        self.sockets.contains_key(connection_id)
    }

    pub fn len(&self) -> u32 {
        u32::try_from(self.sockets.len()).unwrap_or(u32::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub fn by_type(&self) -> ByType {
        self.by_type
    }

    /// Distinct session (machine) ids over every socket.
    pub fn active_sessions(&self) -> u64 {
        self.any_sessions.len() as u64
    }

    pub fn active_machines(&self) -> u64 {
        self.any_machines.len() as u64
    }

    pub fn session_ids(&self) -> impl Iterator<Item = &str> {
        self.any_sessions.keys().map(String::as_str)
    }

    pub fn machine_ids(&self) -> impl Iterator<Item = &str> {
        self.any_machines.keys().map(String::as_str)
    }

    pub fn oldest_connection(&self) -> Option<u64> {
        self.oldest.keys().next().copied()
    }

    pub fn memory_bytes(&self) -> u64 {
        self.bytes
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether a session-scoped (machine-scoped) socket of this id is here.
    pub fn has_scoped_session(&self, id: &str) -> bool {
        self.scoped_sessions.contains_key(id)
    }

    /// The `correlationId`s of the apps with a socket here.
    pub fn app_ids(&self) -> impl Iterator<Item = &str> {
        self.apps.keys().map(String::as_str)
    }

    /// Whether an app with this `correlationId` has a socket here.
    pub fn has_app(&self, correlation_id: &str) -> bool {
        self.apps.contains_key(correlation_id)
    }

    pub fn has_scoped_machine(&self, id: &str) -> bool {
        self.scoped_machines.contains_key(id)
    }

    pub fn presence(&self) -> ShardPresence {
        ShardPresence {
            user_scoped: self.by_type.user_scoped > 0,
            sessions: self.scoped_sessions.keys().cloned().collect(),
            machines: self.scoped_machines.keys().cloned().collect(),
            tagged: self.tagged > 0,
            apps: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: &str, t: ClientType, s: Option<&str>, m: Option<&str>, at: u64) -> SocketMeta {
        SocketMeta {
            connection_id: id.into(),
            user_id: "u".into(),
            client_type: t,
            session_id: s.map(Into::into),
            machine_id: m.map(Into::into),
            correlation_id: None,
            tier: "pro".into(),
            connected_at: at,
            token_hash: None,
            expires_at: None,
            shard: String::new(),
        }
    }

    #[test]
    fn apps_are_counted_by_correlation_id_and_are_no_presence_change() {
        let mut ix = SocketIndex::default();
        let app = |id: &str, c: &str| SocketMeta {
            correlation_id: Some(c.into()),
            ..meta(id, ClientType::UserScoped, None, None, 1)
        };
        assert_eq!(ix.add(&app("c1", "a1"), 10), Change::Presence);
        assert_eq!(ix.add(&app("c2", "a1"), 10), Change::Counts);
        assert!(ix.has_app("a1") && ix.app_ids().eq(["a1"]));
        assert!(ix.presence().apps.is_empty());
        ix.remove("c1");
        assert!(ix.has_app("a1"));
        ix.remove("c2");
        assert!(!ix.has_app("a1"));
    }

    #[test]
    fn counts_and_presence_move_incrementally() {
        let mut ix = SocketIndex::default();
        assert_eq!(
            ix.add(&meta("a", ClientType::UserScoped, None, None, 5), 100),
            Change::Presence
        );
        assert_eq!(
            ix.add(&meta("b", ClientType::UserScoped, None, None, 3), 100),
            Change::Counts
        );
        assert_eq!(
            ix.add(
                &meta("c", ClientType::MachineScoped, None, Some("m1"), 9),
                50
            ),
            Change::Presence
        );
        // A second socket of the same machine (an overlapping reconnect): counts only.
        assert_eq!(
            ix.add(
                &meta("d", ClientType::MachineScoped, None, Some("m1"), 10),
                50
            ),
            Change::Counts
        );
        assert_eq!(
            ix.add(
                &meta("e", ClientType::SessionScoped, Some("s1"), None, 11),
                50
            ),
            Change::Presence
        );
        assert_eq!(
            ix.add(
                &meta("e", ClientType::SessionScoped, Some("s1"), None, 11),
                50
            ),
            Change::None
        );
        assert_eq!(ix.len(), 5);
        assert_eq!(
            ix.by_type(),
            ByType {
                user_scoped: 2,
                session_scoped: 1,
                machine_scoped: 2
            }
        );
        assert_eq!((ix.active_sessions(), ix.active_machines()), (1, 1));
        assert_eq!(ix.oldest_connection(), Some(3));
        assert_eq!(ix.memory_bytes(), 5 * SOCKET_OVERHEAD_BYTES + 350);
        let p = ix.presence();
        assert!(p.user_scoped && !p.tagged);
        assert_eq!(p.machines.iter().collect::<Vec<_>>(), ["m1"]);
        let seq = ix.seq();
        assert_eq!(ix.remove("c"), Change::Counts);
        assert_eq!(ix.remove("d"), Change::Presence);
        assert_eq!(ix.remove("d"), Change::None);
        assert_eq!(ix.seq(), seq + 1);
        assert_eq!(ix.remove("b"), Change::Counts);
        assert_eq!(ix.oldest_connection(), Some(5));
        assert_eq!(ix.remove("a"), Change::Presence);
        assert!(!ix.presence().user_scoped);
        assert!(ix.presence().machines.is_empty());
        assert_eq!(ix.memory_bytes(), SOCKET_OVERHEAD_BYTES + 50);
    }

    #[test]
    fn ids_a_type_does_not_imply_mark_the_shard_tagged() {
        let mut ix = SocketIndex::default();
        ix.add(&meta("a", ClientType::UserScoped, Some("s1"), None, 1), 0);
        let p = ix.presence();
        assert!(p.tagged && p.sessions.is_empty());
        assert_eq!(ix.active_sessions(), 1);
        assert!(!ix.has_scoped_session("s1"));
        assert_eq!(ix.remove("a"), Change::Presence);
        assert!(!ix.presence().tagged);
    }

    #[test]
    fn rebuilding_gives_the_same_index() {
        let metas = [
            meta("a", ClientType::UserScoped, None, None, 5),
            meta("b", ClientType::SessionScoped, Some("s"), None, 6),
            meta("c", ClientType::MachineScoped, None, Some("m"), 7),
        ];
        let mut inc = SocketIndex::default();
        for m in &metas {
            inc.add(m, 10);
        }
        let re = SocketIndex::rebuild(metas.iter().map(|m| (m, 10)));
        assert_eq!(re.presence(), inc.presence());
        assert_eq!(re.by_type(), inc.by_type());
        assert_eq!(re.memory_bytes(), inc.memory_bytes());
        assert_eq!(re.oldest_connection(), inc.oldest_connection());
    }

    #[test]
    fn credential_expiries_are_kept_in_order() {
        let mut ix = SocketIndex::default();
        let mut a = meta("a", ClientType::UserScoped, None, None, 1);
        a.expires_at = Some(500);
        let mut b = meta("b", ClientType::UserScoped, None, None, 2);
        b.expires_at = Some(300);
        ix.add(&a, 0);
        ix.add(&b, 0);
        ix.add(&meta("c", ClientType::UserScoped, None, None, 3), 0);
        assert_eq!(ix.next_expiry(), Some(300));
        assert_eq!(ix.expired(299), Vec::<String>::new());
        assert_eq!(ix.expired(500), vec!["b".to_owned(), "a".to_owned()]);
        ix.remove("b");
        assert_eq!(ix.next_expiry(), Some(500));
        ix.remove("a");
        assert_eq!(ix.next_expiry(), None);
    }
}
