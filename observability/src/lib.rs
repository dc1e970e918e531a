//! # observability
//!
//! What the edge measures and how it reports it, pure (no `worker`, time as arguments), so it
//! is tested natively and the compiler keeps it free of the runtime:
//! - [`metrics`]: mergeable latency histograms, outcome counters, time-windowed rings, and the
//!   snapshots that carry them upward (shard -> user -> registry -> global).
//! - [`stats`]: a shard's stats, a user's aggregate, and the per-object load.
//! - [`tier`]: tiers, their objectives and their order.
//! - [`slo`]: the per-tier SLO report and the admin stats.
//! - [`exposition`]: the Prometheus text exposition of the global metrics.
//! - [`registry`]: what a registry object keeps per user, and the numbered pushes that feed it.

pub mod exposition;
pub mod metrics;
pub mod registry;
pub mod slo;
pub mod stats;
pub mod tier;
