//! A shard's observations, recorded twice: the full ones (its own recent latency, which
//! admission reads) and the pending delta that goes to the home every few seconds.

use observability::metrics::Observations;

/// How long a shard batches observations before reporting them.
pub const REPORT_EVERY_MS: u64 = 5_000;

#[derive(Default)]
pub struct Observer {
    pub full: Observations,
    pub pending: Observations,
    /// When the pending delta is due upward; `None` while there is none.
    pub report_at: Option<u64>,
    /// Open sockets in the last report the home took: a close is news
    /// even when nothing else was recorded, or `/metrics` would show sockets
    /// that are gone until the next reconcile.
    pub reported_connections: Option<u64>,
    /// The recent message p95 and its sample count, with when they were computed: merging
    /// the ring's windows on every connect is what a burst of connects would pay for.
    recent: Option<(u64, Option<f64>, u64)>,
}

/// How long the recent p95 that admission reads is reused.
const RECENT_FOR_MS: u64 = 500;

impl Observer {
    /// The shard's recent message latency (p95, samples), recomputed at most every
    /// [`RECENT_FOR_MS`].
    pub fn recent_p95(&mut self, now_ms: u64) -> (Option<f64>, u64) {
        if let Some((at, p95, n)) = self.recent {
            if now_ms.saturating_sub(at) < RECENT_FOR_MS {
                return (p95, n);
            }
        }
        let load =
            crate::placement::admission::ShardLoad::from_observations(&self.full, now_ms, 0, 0);
        self.recent = Some((now_ms, load.p95_ms, load.samples));
        (load.p95_ms, load.samples)
    }
}
