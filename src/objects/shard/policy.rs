//! A run-time policy switch reaching a shard (`placement::switch`): a shard the new policy
//! no longer places sockets on drains them over the switch's window, with the same jittered
//! reconnect hints as a rotation (`drain`); one it places again (a switch back) stops
//! draining. Notices are ordered by version: only a newer one is applied.

use super::state::SwitchDrain;
use super::ConnectionManager;
use crate::object_api::{Applied, ApplyPolicy, PolicyNotice};
use crate::placement::switch;
use crate::runtime;

/// How long the home waits for each of its shards to take a notice.
const APPLY_TIMEOUT_MS: u32 = 5_000;

impl ConnectionManager {
    /// At the home: keeps a newer notice, applies it here and on every other shard of the
    /// user. Answers what it did, summed over the shards.
    pub(super) async fn policy_notice(&self, n: &PolicyNotice) -> worker::Result<Applied> {
        if !self.home.learn_policy(n).await? {
            return Ok(Applied::default());
        }
        let mut out = self.apply_policy(n).await?;
        let others = self.home.all_shards();
        let body = runtime::encode(&ApplyPolicy(n.clone()))?;
        let calls = others.iter().map(|name| {
            let body = &body;
            async move {
                let stub =
                    runtime::object(&self.env, crate::object_api::SHARD_BINDING, name).ok()?;
                runtime::timeout(
                    APPLY_TIMEOUT_MS,
                    runtime::ask_encoded(&stub, Some(name), body),
                )
                .await?
                .ok()
            }
        });
        for (name, r) in others.iter().zip(futures::future::join_all(calls).await) {
            match r {
                Some(a) => {
                    out.draining |= a.draining;
                    out.sockets += a.sockets;
                }
                None => worker::console_error!("policy notice to {name} failed"),
            }
        }
        Ok(out)
    }

    /// On this shard: drain if the policy no longer places sockets here, stop a switch's
    /// drain if it does again.
    pub(super) async fn apply_policy(&self, n: &PolicyNotice) -> worker::Result<Applied> {
        let Ok(policy) = n.policy.parse::<shard_policies::PolicyConfig>() else {
            return Ok(Applied::default());
        };
        let now = runtime::now_ms();
        let open = self.open_count();
        let applied = {
            let mut s = self.saved.borrow_mut();
            if n.version <= s.policy_version {
                return Ok(Applied::default());
            }
            s.policy_version = n.version;
            let placed = switch::places(&policy, &s.name);
            if !placed && !s.draining && open > 0 {
                s.draining = true;
                s.drain_sockets = open;
                s.switch_drain = Some(SwitchDrain {
                    start_ms: now,
                    window_ms: n.drain_ms,
                });
                s.drain_at = Some(now);
                Applied {
                    draining: true,
                    sockets: open,
                }
            } else {
                if placed && s.switch_drain.take().is_some() {
                    s.draining = false;
                    // A rotation shard still drains from its own epoch's end.
                    s.drain_at = crate::placement::rotation_of(&s.name)
                        .map(|(r, epoch)| r.epoch_end_ms(epoch));
                }
                Applied {
                    draining: s.draining,
                    sockets: 0,
                }
            }
        };
        self.save().await?;
        self.rearm().await?;
        // The user's stats show the shard draining (or not) again.
        self.report_soon(false);
        Ok(applied)
    }
}
