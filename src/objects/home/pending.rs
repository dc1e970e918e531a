//! The user's metrics not yet pushed to its registry object.

use std::collections::BTreeMap;

use crate::object_api::ReportedMetrics;
use observability::metrics::{Observations, ShardGauges};
use observability::registry::Outgoing;

/// The user's metrics not yet pushed: each shard's latest gauges, the observations since
/// the last push, and the push's sequence number (the registry ignores a repeated one).
#[derive(Debug, Clone, Default)]
pub struct Pending {
    pub gauges: BTreeMap<String, ShardGauges>,
    pub observed: Observations,
    pub policy: String,
    pub dirty: bool,
    /// The registry push in flight, resent as it is until acknowledged (`registry::book`).
    pub outgoing: Outgoing,
}

impl Pending {
    /// A shard's metrics: its gauges replace the older ones, its observations add.
    pub fn take(&mut self, shard: &str, m: ReportedMetrics) {
        if !m.gauges.policy.is_empty() {
            self.policy.clone_from(&m.gauges.policy);
        }
        self.gauges.insert(shard.to_owned(), m.gauges);
        self.observed.merge(&m.observed);
        self.dirty = true;
    }

    pub fn forget(&mut self, shard: &str) {
        if self.gauges.remove(shard).is_some() {
            self.dirty = true;
        }
    }
}
