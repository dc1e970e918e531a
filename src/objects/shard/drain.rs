//! Rotation drain: an old epoch's shard tells its sockets to reconnect, each
//! at its own moment of the drain window, driven by alarms.

use super::{attachment, close, ConnectionManager};
use crate::placement;
use crate::protocol;
use crate::runtime;

impl ConnectionManager {
    /// One step of a rotation drain, run by the alarm: tell each socket whose
    /// slot has come to reconnect, close it with 1012, and arm the next step.
    pub(super) async fn drain_step(&self) -> worker::Result<()> {
        let name = self.saved.borrow().name.clone();
        let Some((rotation, epoch)) = placement::rotation_of(&name) else {
            return Ok(());
        };
        let now = runtime::now_ms();
        let end = rotation.epoch_end_ms(epoch);
        if now < end {
            // Woken early (clock skew): come back at the epoch's end.
            self.saved.borrow_mut().drain_at = Some(end);
            return self.save().await;
        }
        let sockets = self.open_sockets();
        let (planned, started) = {
            let mut s = self.saved.borrow_mut();
            let started = !s.draining;
            if started {
                s.draining = true;
                s.drain_sockets = u32::try_from(sockets.len()).unwrap_or(u32::MAX).max(1);
            }
            (s.drain_sockets, started)
        };
        self.save().await?;
        if started {
            // The user's stats show the shard draining.
            self.report_soon(false);
        }
        let plan = rotation.drain_plan(epoch, planned);
        let mut next: Option<u64> = None;
        for ws in &sockets {
            let Some(m) = attachment(ws) else {
                close(ws, 1012, "rotation");
                continue;
            };
            // A per-socket hash keeps each socket's slot stable across steps.
            let h = placement::socket_hash(&m.connection_id);
            let slot = plan.slot((h % u64::from(planned)) as u32, h.rotate_left(17));
            if slot.notify_at_ms <= now || now >= plan.end_ms() {
                let _ =
                    ws.send_with_str(protocol::reconnect_frame("rotation", slot.retry_after_ms));
                self.end_socket(ws, &m, 1012, "rotation").await;
            } else {
                next = Some(next.map_or(slot.notify_at_ms, |n| n.min(slot.notify_at_ms)));
            }
        }
        // Closed by us, these sockets may never get a close handler: settle now.
        self.settle().await?;
        self.saved.borrow_mut().drain_at = next.map(|at| at.min(plan.end_ms()));
        self.save().await
    }
}
