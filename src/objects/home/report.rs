//! The user's metrics on their way to the registry: the home's own observations, the other
//! shards' (riding their reports) and the gateway's, pushed to the user's registry object at
//! most every `METRICS_PUSH_MS` while there is something new. A push that got no answer is
//! resent as it was (same number) until one comes, so the registry never adds a delta twice.
//! Memory only: an object idle long enough to be evicted has pushed what it held (a pending
//! push keeps it from deleting its storage, and from idling, until it is sent).

use worker::console_error;

use super::pending::Pending;
use super::Home;
use crate::object_api::{Ingest, Observed, PolicyNotice};
use crate::placement;
use crate::runtime;
use observability::metrics::UserMetrics;

impl Home {
    /// Records what the gateway saw for the user.
    pub fn observe(&self, o: &Observed) {
        let now = runtime::now_ms();
        let unavailable = o
            .outcomes
            .iter()
            .filter(|x| **x == observability::metrics::Outcome::Unavailable)
            .count() as u64;
        self.saved.borrow_mut().rejected_unavailable += unavailable;
        let mut p = self.pending.borrow_mut();
        for x in &o.outcomes {
            p.observed.record_outcome(now, &o.tier, *x);
        }
        for (series, ms) in &o.latencies {
            p.observed.record_latency(now, &o.tier, *series, *ms);
        }
        p.dirty = true;
    }

    /// The home's own sockets observed something: its metrics are taken at the next push.
    pub fn metrics_changed(&self) {
        self.pending.borrow_mut().dirty = true;
    }

    /// Whether metrics wait to be pushed.
    pub fn has_pending_metrics(&self) -> bool {
        self.pending.borrow().dirty
    }

    /// Sends the user's gauges and the pending observations to its registry object; kept for
    /// the next push when that fails. Answers the global policy switch the registry holds
    /// for the user, if any (the caller applies it when it is newer).
    pub async fn push_to_registry(&self, tier: &str) -> Option<PolicyNotice> {
        let user = self.user();
        if user.is_empty() {
            return None;
        }
        let listed: Vec<String> = self.saved.borrow().ledger.shards.keys().cloned().collect();
        let me = self.name();
        let r = runtime::random16();
        let random = u64::from_le_bytes([r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]]);
        let push = {
            let mut p = self.pending.borrow_mut();
            let resend = p.outgoing.unacked.is_some();
            let Pending {
                gauges,
                observed,
                policy,
                dirty,
                outgoing,
            } = &mut *p;
            gauges.retain(|name, g| *name == me || listed.contains(name) || g.connections > 0);
            let push = outgoing.next(random, || {
                let mut u = UserMetrics::new(&user, tier, policy);
                for g in gauges.values() {
                    u.set_gauges(g.clone());
                }
                u.observed = std::mem::take(observed);
                u
            });
            // A resent push carries what it carried; what came since waits for the next.
            *dirty = resend;
            push
        };
        let n = runtime::config(&self.env)
            .map(|c| c.registry_shards)
            .unwrap_or(1);
        let sent = match runtime::object(
            &self.env,
            crate::object_api::REGISTRY_BINDING,
            &placement::registry_name(&user, n),
        ) {
            Ok(stub) => runtime::ask(&stub, None, &Ingest(push.clone())).await,
            Err(e) => Err(e),
        };
        let mut p = self.pending.borrow_mut();
        match sent {
            Ok(answer) => {
                p.outgoing.acked(push.push);
                answer.policy
            }
            Err(e) => {
                console_error!("registry push failed: {e}");
                p.dirty = true;
                None
            }
        }
    }
}
