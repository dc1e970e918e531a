//! Tiers: what a user's tier allows (its connection limit) and promises (its latency and
//! availability objectives), the seed's defaults, and the order tiers rank in (lowest first,
//! shed first).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One tier's limits and objectives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tier {
    /// Most sockets a user of this tier may hold open at once.
    pub limit: u32,
    /// Latency objective: p95 below this many milliseconds.
    pub latency_p95_ms: u32,
    /// Availability objective in percent, e.g. 99.9.
    pub availability: f64,
}

/// The seed's tiers (capacity guide, "SLO Recommendations").
pub const DEFAULT_TIERS: &str = r#"{"free":{"limit":20,"latencyP95Ms":500,"availability":99.5},"pro":{"limit":100,"latencyP95Ms":200,"availability":99.9},"enterprise":{"limit":500,"latencyP95Ms":100,"availability":99.95}}"#;

/// Tiers from lowest to highest: by connection limit, then by availability objective, then
/// by name (so equal tiers still have a fixed order).
pub fn tier_order(tiers: &BTreeMap<String, Tier>) -> Vec<(&str, &Tier)> {
    let mut v: Vec<(&str, &Tier)> = tiers.iter().map(|(n, t)| (n.as_str(), t)).collect();
    v.sort_by(|a, b| {
        a.1.limit
            .cmp(&b.1.limit)
            .then_with(|| a.1.availability.total_cmp(&b.1.availability))
            .then_with(|| a.0.cmp(b.0))
    });
    v
}
