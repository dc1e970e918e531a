//! The shard's side of a move the edge starts (`routing::moves`): a draining shard tells the
//! home which identities it moved before it uncounts them, and sends the home what still
//! reaches it for them; the home's shard role hands what it held to each identity's new shard.

use worker::console_error;

use super::ConnectionManager;
use crate::object_api::{Handoff, Hold};
use crate::protocol::{Delivery, SocketMeta};
use crate::routing::moves::Identity;
use crate::runtime;

/// How long a hold or a handoff may take.
const MOVE_CALL_MS: u32 = 2_000;

impl ConnectionManager {
    /// Sockets this shard just told to move: their identities remembered here (with the
    /// sockets, for answers that come back after them), and held at the home.
    pub(super) async fn moving(&self, told: &[SocketMeta]) {
        let now = runtime::now_ms();
        let mut ids: Vec<(Identity, Vec<u64>)> = Vec::new();
        {
            let mut moved = self.moved.borrow_mut();
            let recent = self.recent.borrow();
            for m in told {
                if let Some(id) = Identity::of(m) {
                    moved.told(&m.connection_id, id.clone(), now);
                    ids.push((id, recent.got_lately(m, now)));
                }
            }
        }
        if ids.is_empty() {
            return;
        }
        ids.sort();
        ids.dedup_by(|a, b| a.0 == b.0);
        let (identities, got) = ids.into_iter().unzip();
        let hold = Hold {
            identities,
            got,
            from: self.name(),
            ..Hold::default()
        };
        self.tell_home(hold).await;
    }

    /// An identity this shard told to move is back here: the home hands it what it held
    /// (this shard's reports cannot say so, one taken before the move lists it too).
    pub(super) fn came_back(&self, id: Identity) {
        let hold = Hold {
            from: self.name(),
            back: vec![id],
            ..Hold::default()
        };
        if self.is_home() {
            self.fresh_own_base();
            let t = self.home.hold(&hold);
            self.home.emit(t);
            return;
        }
        // In the background: the connect does not wait for the home.
        let (env, user) = (self.env.clone(), self.user());
        runtime::object_wait_until(&self.state, async move {
            let r = runtime::timeout(MOVE_CALL_MS, runtime::ask_home(&env, &user, &hold)).await;
            if !matches!(r, Some(Ok(_))) {
                console_error!("the home did not hear that a moved identity is back");
            }
        });
    }

    async fn tell_home(&self, hold: Hold) {
        if self.is_home() {
            self.fresh_own_base();
            let t = self.home.hold(&hold);
            self.home.emit(t);
            return;
        }
        let user = self.user();
        let r = runtime::timeout(MOVE_CALL_MS, runtime::ask_home(&self.env, &user, &hold)).await;
        if !matches!(r, Some(Ok(_))) {
            console_error!(
                "the home did not take a move ({} identities)",
                hold.identities.len()
            );
        }
    }

    /// The home's own presence as its index has it now, under the moving identities it
    /// lists beside them (the home keeps no copy across a wake).
    pub(super) fn fresh_own_base(&self) {
        if self.is_home() {
            *self.home.own_base.borrow_mut() = self.with_index(|ix| ix.presence());
        }
    }

    /// After a delivery here: at the home, held for the moving identities it reaches; on a
    /// shard that moved some, sent to the home for them (in the background). Answers whether
    /// it was kept for one: the delivery is then as good as delivered (an RPC waits for its
    /// target's new socket instead of failing).
    pub(super) fn keep_for_moves(&self, d: &Delivery) -> bool {
        if self.is_home() {
            return self.home.holds_moves() && self.home.offer(d);
        }
        let reached: Vec<Identity> = {
            let mut moved = self.moved.borrow_mut();
            if moved.is_empty() {
                return false;
            }
            let now = runtime::now_ms();
            moved
                .moving(now)
                .filter(|id| id.reached_by(&d.filter))
                .cloned()
                .collect()
        };
        if reached.is_empty() {
            return false;
        }
        let (env, user) = (self.env.clone(), self.user());
        let hold = Hold {
            deliveries: vec![d.clone()],
            from: self.name(),
            reached,
            ..Hold::default()
        };
        runtime::object_wait_until(&self.state, async move {
            let r = runtime::timeout(MOVE_CALL_MS, runtime::ask_home(&env, &user, &hold)).await;
            if !matches!(r, Some(Ok(_))) {
                console_error!("a delivery for a moving identity did not reach the home");
            }
        });
        true
    }

    /// A call's answer whose caller's socket is gone: when this shard told that socket to
    /// move, the answer follows its identity to its next socket (held at the home like any
    /// delivery for it). Answers whether it was kept.
    pub(super) fn answer_moved(&self, connection: &str, frame: String) -> bool {
        let id = self
            .moved
            .borrow()
            .socket(connection, runtime::now_ms())
            .cloned();
        id.is_some_and(|id| {
            self.keep_for_moves(&Delivery {
                frame,
                filter: id.filter(),
            })
        })
    }

    /// At the home: sends what it held for identities that are back to their shards (on
    /// this one, straight to the sockets).
    pub(super) async fn hand_off(&self) {
        if !self.is_home() {
            return;
        }
        let handoffs = self.home.take_handoffs();
        if handoffs.is_empty() {
            return;
        }
        let me = self.name();
        let calls = handoffs.into_iter().filter_map(|(shard, id, frames)| {
            let batch: Vec<Delivery> = frames
                .into_iter()
                .map(|frame| Delivery {
                    frame,
                    filter: id.filter(),
                })
                .collect();
            if shard == me {
                for d in &batch {
                    self.hand_here(d);
                }
                return None;
            }
            Some(async move {
                let stub =
                    runtime::object(&self.env, crate::object_api::SHARD_BINDING, &shard).ok()?;
                let msg = Handoff(batch);
                runtime::timeout(MOVE_CALL_MS, runtime::ask(&stub, Some(&shard), &msg))
                    .await?
                    .ok()
            })
        });
        let calls: Vec<_> = calls.collect();
        for r in futures::future::join_all(calls).await {
            if r.is_none() {
                console_error!("a handoff to a moved identity's shard failed");
            }
        }
    }
}
