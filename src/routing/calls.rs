//! The calls each socket has in flight, at both ends: an RPC it sent with an `ackId` whose
//! answer has not come back, and one it was sent (a machine's or a session's `rpc-request`)
//! and has not answered. So a drain closes a socket between its calls, not during one: a
//! socket the edge moves loses no answer it waits for and drops none it owes
//! (docs/policies.md, "Moves that lose nothing"). Pure; each shard holds one.
//!
//! Bounded: `MAX_PER_SOCKET` calls per socket and `MAX_SOCKETS` sockets are remembered (what
//! does not fit is counted in `shed` and simply not waited for), and a call older than
//! `QUIET_WAIT_MS` no longer holds its socket open.

use std::collections::BTreeMap;

/// The longest a drain keeps a socket open for its calls' answers (an answer that takes
/// longer is lost to that socket, as before).
pub const QUIET_WAIT_MS: u64 = 10_000;
pub const MAX_PER_SOCKET: usize = 64;
pub const MAX_SOCKETS: usize = 4_096;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InFlight {
    /// connection id -> ack id -> when the call went out.
    calls: BTreeMap<String, BTreeMap<String, u64>>,
    /// Calls not remembered because a bound was reached.
    pub shed: u64,
}

impl InFlight {
    /// `connection` sent a call that will be answered under `ack_id`.
    pub fn sent(&mut self, connection: &str, ack_id: &str, now_ms: u64) {
        if !self.calls.contains_key(connection) && self.calls.len() >= MAX_SOCKETS {
            self.shed += 1;
            return;
        }
        let calls = self.calls.entry(connection.to_owned()).or_default();
        calls.retain(|_, at| now_ms.saturating_sub(*at) < QUIET_WAIT_MS);
        if calls.len() >= MAX_PER_SOCKET {
            self.shed += 1;
            return;
        }
        calls.insert(ack_id.to_owned(), now_ms);
    }

    /// The answer to `ack_id` reached `connection` (or the call was answered at once).
    pub fn answered(&mut self, connection: &str, ack_id: &str) {
        if let Some(calls) = self.calls.get_mut(connection) {
            calls.remove(ack_id);
            if calls.is_empty() {
                self.calls.remove(connection);
            }
        }
    }

    /// The socket is gone: nothing of it is waited for.
    pub fn closed(&mut self, connection: &str) {
        self.calls.remove(connection);
    }

    /// Whether `connection` waits for an answer younger than `QUIET_WAIT_MS`.
    pub fn busy(&self, connection: &str, now_ms: u64) -> bool {
        self.calls.get(connection).is_some_and(|calls| {
            calls
                .values()
                .any(|at| now_ms.saturating_sub(*at) < QUIET_WAIT_MS)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_busy_until_its_calls_are_answered() {
        let mut f = InFlight::default();
        assert!(!f.busy("c", 0));
        f.sent("c", "a1", 0);
        f.sent("c", "a2", 10);
        assert!(f.busy("c", 20));
        f.answered("c", "a1");
        assert!(f.busy("c", 20));
        f.answered("c", "a2");
        assert!(!f.busy("c", 20));
        // Another socket's answer does not free this one.
        f.sent("c", "a3", 30);
        f.answered("d", "a3");
        assert!(f.busy("c", 30));
        f.closed("c");
        assert!(!f.busy("c", 30));
    }

    #[test]
    fn an_unanswered_call_holds_its_socket_only_for_the_quiet_wait() {
        let mut f = InFlight::default();
        f.sent("c", "a", 1_000);
        assert!(f.busy("c", 1_000 + QUIET_WAIT_MS - 1));
        assert!(!f.busy("c", 1_000 + QUIET_WAIT_MS));
    }

    #[test]
    fn the_books_are_bounded_and_count_what_they_shed() {
        let mut f = InFlight::default();
        for i in 0..MAX_PER_SOCKET + 3 {
            f.sent("c", &format!("a{i}"), 0);
        }
        assert_eq!(f.shed, 3);
        // Old calls make room again.
        f.sent("c", "late", QUIET_WAIT_MS);
        assert_eq!(f.shed, 3);
        for i in 0..MAX_SOCKETS {
            f.sent(&format!("s{i}"), "a", 0);
        }
        assert_eq!(
            f.shed, 4,
            "past MAX_SOCKETS sockets, a new one is not remembered"
        );
    }
}
