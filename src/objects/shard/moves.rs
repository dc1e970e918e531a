//! The shard's side of a move the edge starts (`routing::moves`): a draining shard tells the
//! home which identities it moved before it uncounts them, and sends the home what still
//! reaches it for them; the home's shard role hands what it held to each identity's new shard.

use worker::console_error;

use super::ConnectionManager;
use crate::object_api::{DeliverBatch, Hold};
use crate::protocol::Delivery;
use crate::routing::moves::{Identity, MOVE_WINDOW_MS};
use crate::runtime;

/// How long a hold or a handoff may take.
const MOVE_CALL_MS: u32 = 2_000;

impl ConnectionManager {
    /// Identities this shard just told to move: remembered here, held at the home.
    pub(super) async fn moving(&self, ids: Vec<Identity>) {
        if ids.is_empty() {
            return;
        }
        let until = runtime::now_ms() + MOVE_WINDOW_MS;
        {
            let mut moved = self.moved.borrow_mut();
            for id in &ids {
                moved.insert(id.clone(), until);
            }
        }
        let hold = Hold {
            identities: ids,
            deliveries: Vec::new(),
        };
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
                "could not hold {} moving identities at the home",
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
        let reaches = {
            let mut moved = self.moved.borrow_mut();
            if moved.is_empty() {
                return false;
            }
            let now = runtime::now_ms();
            moved.retain(|_, until| *until > now);
            moved.keys().any(|id| id.reached_by(&d.filter))
        };
        if !reaches {
            return false;
        }
        let (env, user) = (self.env.clone(), self.user());
        let hold = Hold {
            identities: Vec::new(),
            deliveries: vec![d.clone()],
        };
        runtime::object_wait_until(&self.state, async move {
            let r = runtime::timeout(MOVE_CALL_MS, runtime::ask_home(&env, &user, &hold)).await;
            if !matches!(r, Some(Ok(_))) {
                console_error!("a delivery for a moving identity did not reach the home");
            }
        });
        true
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
                    self.send_here(d);
                }
                return None;
            }
            Some(async move {
                let stub =
                    runtime::stub(&self.env, crate::object_api::SHARD_BINDING, &shard).ok()?;
                let msg = DeliverBatch(batch);
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
