//! What a shard keeps in storage, loaded before any event after a wake.

use serde::{Deserialize, Serialize};

use crate::lease::Lease;
use crate::rpc::{Knob, Members};

pub const KEY: &str = "shard";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Persisted {
    /// This object's name, learned from the first caller (objects are not told).
    pub name: String,
    pub user: String,
    pub lease: Lease,
    pub accepted: u64,
    pub rejected: u64,
    pub round_trips: u64,
    pub members: Members,
    pub draining: bool,
    /// Sockets held when the drain began: the drain plan's size.
    pub drain_sockets: u32,
    pub alarm_armed: bool,
    /// Test-only injection, honoured only while `TEST_KNOBS=on`.
    pub knob: Knob,
}
