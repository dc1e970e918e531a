//! What a shard keeps in storage, loaded before any event after a wake.

use serde::{Deserialize, Serialize};

use crate::object_api::Knob;
use crate::placement::lease::Lease;

pub const KEY: &str = "shard";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    /// This object's name, learned from the first caller (objects are not told).
    pub name: String,
    pub user: String,
    /// The tier of the latest connect (a shard holds one user's sockets).
    pub tier: String,
    pub lease: Lease,
    pub accepted: u64,
    /// Connects refused for capacity: full, draining, over its objective.
    pub rejected: u64,
    /// Connects refused because the user was at the tier limit (429).
    pub rejected_tier_limit: u64,
    pub round_trips: u64,
    pub draining: bool,
    /// Sockets held when the drain began: the drain plan's size.
    pub drain_sockets: u32,
    /// The next drain step (epoch end, then each socket's moment).
    pub drain_at: Option<u64>,
    /// Test-only injection, honoured only while `TEST_KNOBS=on`.
    pub knob: Knob,
    /// The last run-time policy notice applied (`placement::switch`).
    pub policy_version: u64,
    /// A drain because the policy no longer places sockets here: its window (the drain
    /// plan's), which a switch back cancels. `None`: a rotation drain, or none.
    pub switch_drain: Option<SwitchDrain>,
}

/// The window of a drain a policy switch started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SwitchDrain {
    pub start_ms: u64,
    pub window_ms: u64,
}
