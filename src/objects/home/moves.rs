//! The home's side of a move the edge starts (`routing::moves`): it holds what is addressed
//! to its user's moving identities, lists them as present on itself meanwhile (so deliveries
//! come here and presence does not flicker), and hands what it held to the shard where each
//! identity is back. The sending is the shard role's (`shard::moves`): the home leaves the
//! handoffs in `handoffs`.

use crate::object_api::Hold;
use crate::routing::moves::{self, Handoff};
use crate::routing::view::{ShardPresence, Transition};
use crate::runtime;

use super::Home;

impl Home {
    /// Identities told to move, and deliveries their old shard got for them after.
    pub fn hold(&self, h: &Hold) -> Vec<Transition> {
        let now = runtime::now_ms();
        let added = {
            let mut m = self.moves.borrow_mut();
            let before = m.presence();
            for (k, id) in h.identities.iter().enumerate() {
                let got = h.got.get(k).cloned().unwrap_or_default();
                m.hold(id.clone(), &h.from, got, now);
            }
            for id in &h.reached {
                m.hold_unless_known(id, &h.from, now);
            }
            let mut out = m.returned(&h.from, &h.back, now);
            for d in &h.deliveries {
                out.extend(m.offer(d, now));
            }
            self.handoffs.borrow_mut().extend(out);
            m.presence() != before
        };
        if added {
            self.refresh_own()
        } else {
            Vec::new()
        }
    }

    /// A delivery that reached the home: held for the moving identities it reaches.
    /// Answers whether it reached one (held or forwarded: it will be delivered).
    pub fn offer(&self, d: &crate::protocol::Delivery) -> bool {
        let mut m = self.moves.borrow_mut();
        let reaches = m.reaches(&d.filter);
        let out = m.offer(d, runtime::now_ms());
        self.handoffs.borrow_mut().extend(out);
        reaches
    }

    /// Whether deliveries here must be offered to the move book.
    pub fn holds_moves(&self) -> bool {
        let m = self.moves.borrow();
        m.is_moving() || m.next_due().is_some()
    }

    /// A shard's presence arrived (`shard` may be the home): identities back there get
    /// what was held for them.
    pub fn arrived(&self, shard: &str, p: &ShardPresence) -> Vec<Transition> {
        let out = self.moves.borrow_mut().arrived(shard, p, runtime::now_ms());
        if out.is_empty() {
            return Vec::new();
        }
        self.handoffs.borrow_mut().extend(out);
        self.refresh_own()
    }

    /// Drops moves whose window ended (their identity is then offline).
    pub fn expire_moves(&self, now: u64) -> Vec<Transition> {
        if self.moves.borrow_mut().expire(now) {
            self.refresh_own()
        } else {
            Vec::new()
        }
    }

    /// The `correlationId`s of the apps moving.
    pub fn moving_apps(&self) -> std::collections::BTreeSet<String> {
        self.moves.borrow().apps()
    }

    pub fn take_handoffs(&self) -> Vec<Handoff> {
        std::mem::take(&mut *self.handoffs.borrow_mut())
    }

    pub fn moves_due(&self) -> Option<u64> {
        self.moves.borrow().next_due()
    }

    pub fn move_counters(&self) -> moves::MoveCounters {
        self.moves.borrow().counters
    }

    /// The home's own entry: its sockets' presence and the identities moving.
    pub fn refresh_own(&self) -> Vec<Transition> {
        let me = self.name();
        let p = moves::union(
            self.own_base.borrow().clone(),
            &self.moves.borrow().presence(),
        );
        let t = self.book.borrow_mut().set(&me, p);
        self.push_view_now();
        t
    }
}
