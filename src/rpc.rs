//! Messages between the gateway, the shards and the directory (internal
//! HTTP with JSON bodies). Pure types, shared by every side.

use serde::{Deserialize, Serialize};

use crate::metrics::{Outcome, Series};
use crate::protocol::SocketMeta;

/// Gateway -> shard, with the upgrade request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connect {
    pub meta: SocketMeta,
    pub shard: String,
    /// The user's tier limit, from the token's tier and `TIERS`.
    pub limit: u32,
    /// First pass: a shard over its latency objective refuses (503) so the
    /// gateway can try a healthier candidate. The second pass admits anyway.
    #[serde(default = "yes")]
    pub strict: bool,
}

fn yes() -> bool {
    true
}

/// The shard set as the directory knows it, pushed to shards so client
/// broadcast frames reach every shard without asking the directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub version: u64,
    pub shards: Vec<String>,
}

/// Shard -> directory: lease more slots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Acquire {
    pub shard: String,
    pub want: u32,
    pub need: u32,
    pub open: u32,
    pub limit: u32,
    pub tier: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Granted {
    pub granted: u32,
    /// The grant's sequence number, echoed back in reclaim answers.
    pub seq: u64,
    /// Nothing now, but slots are on their way to another shard and will be
    /// reclaimable in a moment: ask again shortly instead of refusing.
    pub retry: bool,
    pub members: Members,
}

/// Shard -> directory: slots given back (already removed from the lease).
/// `reset` says the shard is empty with no lease: forget it entirely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    pub shard: String,
    pub n: u32,
    pub open: u32,
    pub draining: bool,
    pub reset: bool,
}

/// Shard -> directory: the answer to a reclaim.
pub use crate::lease::Returned as Reclaimed;

/// Directory -> gateway: what fan-outs and stats need.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryView {
    pub shards: Vec<ViewShard>,
    pub rejected_tier_limit: u64,
    pub rejected_unavailable: u64,
}

/// One shard of the user's set, as the directory knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewShard {
    pub name: String,
    /// Slots it holds: an upper bound on its sockets (its reported count
    /// lags: a new shard reports 0 before its first accept).
    pub granted: u32,
    pub draining: bool,
}

/// Gateway -> directory: what the gateway saw for a user (connect outcomes it
/// decided, broadcast fan-out and per-shard stats times), added to the user's
/// metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observed {
    pub tier: String,
    #[serde(default)]
    pub outcomes: Vec<Outcome>,
    #[serde(default)]
    pub latencies: Vec<(Series, f64)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub delivered: u64,
}

/// Test-only fault and latency injection for one shard (`TEST_KNOBS=on`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Knob {
    /// Added to the handling of connects, messages and deliveries.
    #[serde(default)]
    pub latency_ms: u32,
    #[serde(default)]
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Fan-out calls (deliver, stats) answer 500.
    Error,
    /// Fan-out calls answer only after the fan-out timeout.
    Hang,
}
