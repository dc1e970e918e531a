//! Drains: an old rotation epoch's shard, or a shard a run-time policy switch no longer
//! places sockets on (`policy`), tells its sockets to reconnect, each at its own moment of
//! the drain window, driven by alarms.

use shard_policies::DrainPlan;

use super::{attachment, close, ConnectionManager};
use crate::placement;
use crate::protocol;
use crate::routing::calls;
use crate::runtime;

/// Why a shard drains, as the `reconnect` frame and the close reason say it.
const ROTATION: &str = "rotation";
const POLICY: &str = "policy";
/// How soon a drain looks again at a socket it kept open for its calls' answers.
const QUIET_RECHECK_MS: u64 = 100;

impl ConnectionManager {
    /// One step of a drain, run by the alarm: tell each socket whose slot has come to
    /// reconnect, close it with 1012, and arm the next step.
    pub(super) async fn drain_step(&self) -> worker::Result<()> {
        let now = runtime::now_ms();
        let Some((plan, reason)) = self.drain_plan(now).await? else {
            return Ok(());
        };
        let sockets = self.open_sockets();
        let planned = self.saved.borrow().drain_sockets.max(1);
        let mut next: Option<u64> = None;
        let mut told = Vec::new();
        for ws in &sockets {
            let Some(m) = attachment(ws) else {
                close(ws, 1012, reason);
                continue;
            };
            // A per-socket hash keeps each socket's slot stable across steps.
            let h = placement::socket_hash(&m.connection_id);
            let slot = plan.slot((h % u64::from(planned)) as u32, h.rotate_left(17));
            let due = slot.notify_at_ms <= now || now >= plan.end_ms();
            // Between its calls, not during one: the answers it waits for reach it first
            // (bounded by `calls::QUIET_WAIT_MS` past the window).
            let waits = || {
                now < plan.end_ms() + calls::QUIET_WAIT_MS
                    && self.calls.borrow().busy(&m.connection_id, now)
            };
            let look_again = if !due {
                slot.notify_at_ms.min(plan.end_ms())
            } else if waits() {
                now + QUIET_RECHECK_MS
            } else {
                let _ = ws.send_with_str(protocol::reconnect_frame(reason, slot.retry_after_ms));
                // Closed at once: nothing more reaches this socket, so nothing is sent twice.
                close(ws, 1012, reason);
                told.push(m);
                continue;
            };
            next = Some(next.map_or(look_again, |n| n.min(look_again)));
        }
        // Held at the home before they are uncounted here: no moment where a delivery for
        // them finds neither.
        self.moving(&told).await;
        for m in &told {
            self.count_close(m, 1012).await;
        }
        // Closed by us, these sockets may never get a close handler: settle now.
        self.settle().await?;
        self.saved.borrow_mut().drain_at = next;
        self.save().await
    }

    /// The drain in force and its reason: a switch's window, or the rotation epoch's once it
    /// has ended (woken early, the step comes back at the epoch's end). Starts the drain's
    /// bookkeeping on its first step.
    async fn drain_plan(&self, now: u64) -> worker::Result<Option<(DrainPlan, &'static str)>> {
        let (name, switch) = {
            let s = self.saved.borrow();
            (s.name.clone(), s.switch_drain)
        };
        if let Some(sw) = switch {
            let planned = self.saved.borrow().drain_sockets;
            return Ok(Some((
                DrainPlan::new(sw.start_ms, sw.window_ms, planned),
                POLICY,
            )));
        }
        let Some((rotation, epoch)) = placement::rotation_of(&name) else {
            return Ok(None);
        };
        let end = rotation.epoch_end_ms(epoch);
        if now < end {
            self.saved.borrow_mut().drain_at = Some(end);
            self.save().await?;
            return Ok(None);
        }
        let started = {
            let mut s = self.saved.borrow_mut();
            let started = !s.draining;
            if started {
                s.draining = true;
                s.drain_sockets = self.open_count().max(1);
            }
            started
        };
        self.save().await?;
        if started {
            // The user's stats show the shard draining.
            self.report_soon(false);
        }
        let planned = self.saved.borrow().drain_sockets;
        Ok(Some((rotation.drain_plan(epoch, planned), ROTATION)))
    }
}
