//! Stats: what one shard reports and how the gateway aggregates a user's shards.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

/// Sockets per client type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByType {
    #[serde(rename = "user-scoped")]
    pub user_scoped: u64,
    #[serde(rename = "session-scoped")]
    pub session_scoped: u64,
    #[serde(rename = "machine-scoped")]
    pub machine_scoped: u64,
}

impl ByType {
    fn add(&mut self, o: &ByType) {
        self.user_scoped += o.user_scoped;
        self.session_scoped += o.session_scoped;
        self.machine_scoped += o.machine_scoped;
    }
}

/// One shard's report (`GET /stats` on a ConnectionManager).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardStats {
    pub name: String,
    pub connections: u64,
    pub by_type: ByType,
    /// Distinct session ids on this shard (a session may span shards).
    /// [`id_hash`]es of the distinct session (machine) ids of its sockets: the union over
    /// shards is all the aggregate needs, and hashes keep the answer a fraction of the ids'
    /// size (a session may span shards, so counts alone would over-count).
    pub sessions: Vec<u64>,
    pub machines: Vec<u64>,
    /// Epoch ms of the oldest open socket.
    pub oldest_connection: Option<u64>,
    /// Estimate: a fixed per-socket cost plus attachment sizes (see docs).
    pub memory_usage: u64,
    /// Cross-shard relays this shard has in flight.
    pub message_queue_depth: u64,
    /// Connects this shard refused for capacity (full, draining, over its
    /// objective, no directory); persisted.
    pub rejected: u64,
    /// Connects this shard refused because the user was at the tier limit; persisted.
    #[serde(default)]
    pub rejected_tier_limit: u64,
    /// Connects this shard accepted; persisted.
    pub accepted: u64,
    /// Calls this shard made to the directory for leases; persisted.
    pub directory_round_trips: u64,
    pub epoch: Option<u64>,
    pub draining: bool,
    /// Client frames this shard routed since it started, and the subrequests (deliveries to
    /// other shards, directory lookups, relayed answers) that routing cost.
    #[serde(default)]
    pub frames: u64,
    #[serde(default)]
    pub frame_subrequests: u64,
    /// The version of the routing view this shard holds (see `rpc::Delivered`).
    #[serde(default)]
    pub view_version: u64,
}

/// 53 bits of the id's xxh64: exact in the JavaScript numbers internal JSON passes through,
/// and a collision among a user's ids is about one in 10^10 for a thousand of them.
pub fn id_hash(id: &str) -> u64 {
    shard_policies::hash::xxh64(id.as_bytes()) & ((1 << 53) - 1)
}

/// A per-shard row in the user's stats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShardRow {
    pub name: String,
    pub connections: u64,
    pub oldest_connection: Option<u64>,
    /// Connects this shard refused for capacity (spills included).
    pub rejected: u64,
    /// Connects this shard refused at the tier limit.
    pub rejected_tier_limit: u64,
    pub epoch: Option<u64>,
    pub draining: bool,
}

/// `GET /v1/websocket/stats`: the caller's stats over all its shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserStats {
    pub total_connections: u64,
    pub by_type: ByType,
    pub active_sessions: u64,
    pub active_machines: u64,
    pub oldest_connection: Option<u64>,
    pub memory_usage: u64,
    pub message_queue_depth: u64,
    /// Connects refused for this user: tier limit (429) and no shard (503).
    pub rejected: u64,
    pub rejected_tier_limit: u64,
    pub rejected_unavailable: u64,
    pub tier: String,
    pub limit: u32,
    pub policy: String,
    /// max/mean connections over the shards holding sockets (1.0 = even).
    pub imbalance: f64,
    /// Directory round trips per accepted connect, over the shards' lifetime.
    pub directory_round_trips_per_connect: f64,
    /// The two counts behind that ratio, for measuring a window (differences).
    pub connects_accepted: u64,
    pub directory_round_trips: u64,
    /// Client frames routed by the user's shards (since each started) and the subrequests
    /// their routing cost; `subrequestsPerFrame` is the ratio.
    pub frames: u64,
    pub frame_subrequests: u64,
    pub subrequests_per_frame: f64,
    pub shards: Vec<ShardRow>,
    pub failed_shards: Vec<String>,
}

/// The user-level facts that do not come from shards.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserContext {
    pub tier: String,
    pub limit: u32,
    pub policy: String,
    pub rejected_tier_limit: u64,
    pub rejected_unavailable: u64,
}

pub fn aggregate(ctx: UserContext, shards: &[ShardStats], failed: Vec<String>) -> UserStats {
    let mut by_type = ByType::default();
    let mut sessions = BTreeSet::new();
    let mut machines = BTreeSet::new();
    let mut total = 0u64;
    let mut memory = 0u64;
    let mut queue = 0u64;
    let mut accepted = 0u64;
    let mut round_trips = 0u64;
    let mut frames = 0u64;
    let mut frame_subrequests = 0u64;
    let mut oldest: Option<u64> = None;
    let mut max = 0u64;
    let mut rows = Vec::with_capacity(shards.len());
    for s in shards {
        total += s.connections;
        by_type.add(&s.by_type);
        sessions.extend(s.sessions.iter().copied());
        machines.extend(s.machines.iter().copied());
        memory += s.memory_usage;
        queue += s.message_queue_depth;
        accepted += s.accepted;
        round_trips += s.directory_round_trips;
        frames += s.frames;
        frame_subrequests += s.frame_subrequests;
        oldest = match (oldest, s.oldest_connection) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        max = max.max(s.connections);
        rows.push(ShardRow {
            name: s.name.clone(),
            connections: s.connections,
            oldest_connection: s.oldest_connection,
            rejected: s.rejected,
            rejected_tier_limit: s.rejected_tier_limit,
            epoch: s.epoch,
            draining: s.draining,
        });
    }
    // Over shards holding sockets: an emptied shard still listed (a drained
    // epoch, an old policy's shard) says nothing about balance.
    let active = shards.iter().filter(|s| s.connections > 0).count();
    let imbalance = if total == 0 {
        0.0
    } else {
        max as f64 / (total as f64 / active as f64)
    };
    UserStats {
        total_connections: total,
        by_type,
        active_sessions: sessions.len() as u64,
        active_machines: machines.len() as u64,
        oldest_connection: oldest,
        memory_usage: memory,
        message_queue_depth: queue,
        rejected: ctx.rejected_tier_limit + ctx.rejected_unavailable,
        rejected_tier_limit: ctx.rejected_tier_limit,
        rejected_unavailable: ctx.rejected_unavailable,
        tier: ctx.tier,
        limit: ctx.limit,
        policy: ctx.policy,
        imbalance,
        directory_round_trips_per_connect: if accepted == 0 {
            0.0
        } else {
            round_trips as f64 / accepted as f64
        },
        connects_accepted: accepted,
        directory_round_trips: round_trips,
        frames,
        frame_subrequests,
        subrequests_per_frame: if frames == 0 {
            0.0
        } else {
            frame_subrequests as f64 / frames as f64
        },
        shards: rows,
        failed_shards: failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(name: &str, n: u64, sessions: &[&str], oldest: Option<u64>) -> ShardStats {
        ShardStats {
            name: name.into(),
            connections: n,
            by_type: ByType {
                user_scoped: n,
                ..Default::default()
            },
            sessions: sessions.iter().map(|s| id_hash(s)).collect(),
            oldest_connection: oldest,
            memory_usage: n * 10,
            accepted: n,
            directory_round_trips: 1,
            ..Default::default()
        }
    }

    #[test]
    fn sums_and_unions() {
        let ctx = UserContext {
            tier: "pro".into(),
            limit: 100,
            policy: "hash:shards=2".into(),
            rejected_tier_limit: 2,
            rejected_unavailable: 1,
        };
        let s = aggregate(
            ctx,
            &[
                shard("a", 3, &["s1", "s2"], Some(50)),
                shard("b", 1, &["s2"], Some(40)),
                shard("empty", 0, &[], None),
            ],
            vec!["c".into()],
        );
        assert_eq!(s.total_connections, 4);
        assert_eq!(s.by_type.user_scoped, 4);
        assert_eq!(s.active_sessions, 2);
        assert_eq!(s.oldest_connection, Some(40));
        assert_eq!(s.memory_usage, 40);
        assert_eq!(s.rejected, 3);
        assert_eq!(s.imbalance, 1.5);
        assert_eq!(s.directory_round_trips_per_connect, 0.75);
        assert_eq!(s.shards.len(), 3);
        assert_eq!(s.failed_shards, vec!["c".to_string()]);
    }

    #[test]
    fn empty_is_zero() {
        let s = aggregate(UserContext::default(), &[], vec![]);
        assert_eq!(s.total_connections, 0);
        assert_eq!(s.imbalance, 0.0);
        assert_eq!(s.oldest_connection, None);
    }

    #[test]
    fn field_names_match_the_protocol() {
        let s = aggregate(UserContext::default(), &[shard("a", 1, &[], None)], vec![]);
        let v = serde_json::to_value(&s).unwrap();
        for k in [
            "totalConnections",
            "byType",
            "activeSessions",
            "activeMachines",
            "oldestConnection",
            "memoryUsage",
            "messageQueueDepth",
            "rejected",
            "tier",
            "limit",
            "policy",
            "imbalance",
            "shards",
            "failedShards",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(v["byType"].get("session-scoped").is_some());
        let row = &v["shards"][0];
        for k in [
            "name",
            "connections",
            "oldestConnection",
            "rejected",
            "epoch",
            "draining",
        ] {
            assert!(row.get(k).is_some(), "{k}");
        }
    }
}
