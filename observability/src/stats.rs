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
    /// The version of the routing view this shard holds (see `object_api::Delivered`).
    #[serde(default)]
    pub view_version: u64,
    /// What this object handled since it started ([`ObjectLoad`]).
    #[serde(default)]
    pub events: u64,
    #[serde(default)]
    pub frames_sent: u64,
    #[serde(default)]
    pub peak_events_per_second: u64,
    /// Frames of a move's handoff not sent because the returned socket had got them
    /// directly, and deliveries forgotten early by the bound on what it remembers.
    #[serde(default)]
    pub handoff_skipped: u64,
    #[serde(default)]
    pub recent_shed: u64,
    /// Sockets told to move whose identity was not remembered (a bound).
    #[serde(default)]
    pub moved_shed: u64,
}

/// What one Durable Object has handled since it started: its events (requests, socket
/// messages, closes and errors, alarms), the frames it sent, and its busiest second. Memory
/// only, like the object: an evicted object starts again from zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectLoad {
    events: u64,
    frames_sent: u64,
    second: u64,
    in_second: u64,
    peak: u64,
}

impl ObjectLoad {
    /// One event at `now_ms`.
    pub fn event(&mut self, now_ms: u64) {
        self.events += 1;
        let second = now_ms / 1000;
        if second != self.second {
            self.second = second;
            self.in_second = 0;
        }
        self.in_second += 1;
        self.peak = self.peak.max(self.in_second);
    }

    /// `n` frames sent to sockets.
    pub fn sent(&mut self, n: u64) {
        self.frames_sent += n;
    }

    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn frames_sent(&self) -> u64 {
        self.frames_sent
    }

    pub fn peak_per_second(&self) -> u64 {
        self.peak
    }
}

/// How a user's work spreads over its objects: what sharding is for is that no object
/// carries more than its share.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Load {
    /// The user's objects that handled events (its home included).
    pub objects: u64,
    pub events: u64,
    pub busiest_object: String,
    /// The busiest object's events / all the user's objects' events (0 with none).
    pub busiest_share: f64,
    /// The highest one-second event count of any of the user's objects.
    pub peak_events_per_second: u64,
}

impl Load {
    /// Over every object of the user (each object's stats once).
    pub fn over(objects: &[&ShardStats]) -> Load {
        let used: Vec<&&ShardStats> = objects.iter().filter(|s| s.events > 0).collect();
        let events: u64 = used.iter().map(|s| s.events).sum();
        let busiest = used.iter().max_by_key(|s| s.events);
        Load {
            objects: used.len() as u64,
            events,
            busiest_object: busiest.map(|s| s.name.clone()).unwrap_or_default(),
            busiest_share: match busiest {
                Some(b) if events > 0 => b.events as f64 / events as f64,
                _ => 0.0,
            },
            peak_events_per_second: used
                .iter()
                .map(|s| s.peak_events_per_second)
                .max()
                .unwrap_or(0),
        }
    }
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
    pub events: u64,
    pub frames_sent: u64,
    pub peak_events_per_second: u64,
    /// Moves (docs/policies.md): handed frames it skipped as already got, and what its
    /// bounds shed; shown only when not zero.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub handoff_skipped: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub recent_shed: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub moved_shed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// Connects the user's shards refused for capacity (full, draining, over their objective,
    /// spread), over every shard the user has had.
    pub shard_refusals: u64,
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
    /// How the user's work spreads over its objects.
    pub load: Load,
    /// What the home held for sockets the edge moved (rotation, a policy switch's drain).
    #[serde(default)]
    pub moves: MoveStats,
}

/// Moves the edge started for a user, and what was held for the moved sockets' identities
/// (`routing::moves` in the gateway). `shed` and `expired` count frames lost to a bound or
/// to an identity that did not come back in time. `graceHidden` counts machine drops the
/// presence grace window hid (back in time); `graceOverflowed` offline notices announced at
/// once because the window's book was full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MoveStats {
    pub moves: u64,
    pub handed: u64,
    pub shed: u64,
    pub expired: u64,
    pub grace_hidden: u64,
    pub grace_overflowed: u64,
}

/// What shards that left a user's set had counted: the user's totals keep it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Retired {
    pub accepted: u64,
    pub rejected: u64,
    pub directory_round_trips: u64,
    pub frames: u64,
    pub frame_subrequests: u64,
}

impl Retired {
    pub fn add(&mut self, s: &ShardStats) {
        self.accepted += s.accepted;
        self.rejected += s.rejected;
        self.directory_round_trips += s.directory_round_trips;
        self.frames += s.frames;
        self.frame_subrequests += s.frame_subrequests;
    }
}

impl UserStats {
    /// Adds what shards that left the user's set had counted to the lifetime totals.
    pub fn add_retired(&mut self, r: &Retired) {
        self.connects_accepted += r.accepted;
        self.shard_refusals += r.rejected;
        self.directory_round_trips += r.directory_round_trips;
        self.frames += r.frames;
        self.frame_subrequests += r.frame_subrequests;
        self.directory_round_trips_per_connect =
            ratio(self.directory_round_trips, self.connects_accepted);
        self.subrequests_per_frame = ratio(self.frame_subrequests, self.frames);
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
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
    let sum = |f: fn(&ShardStats) -> u64| shards.iter().map(f).sum::<u64>();
    // Ids may span shards: count each once.
    let distinct =
        |f: fn(&ShardStats) -> &[u64]| shards.iter().flat_map(f).collect::<BTreeSet<_>>().len();
    let mut by_type = ByType::default();
    for s in shards {
        by_type.add(&s.by_type);
    }
    let total = sum(|s| s.connections);
    let (accepted, round_trips) = (sum(|s| s.accepted), sum(|s| s.directory_round_trips));
    let (frames, frame_subrequests) = (sum(|s| s.frames), sum(|s| s.frame_subrequests));
    UserStats {
        moves: MoveStats::default(),
        total_connections: total,
        by_type,
        active_sessions: distinct(|s| &s.sessions) as u64,
        active_machines: distinct(|s| &s.machines) as u64,
        oldest_connection: shards.iter().filter_map(|s| s.oldest_connection).min(),
        memory_usage: sum(|s| s.memory_usage),
        message_queue_depth: sum(|s| s.message_queue_depth),
        rejected: ctx.rejected_tier_limit + ctx.rejected_unavailable,
        rejected_tier_limit: ctx.rejected_tier_limit,
        rejected_unavailable: ctx.rejected_unavailable,
        shard_refusals: sum(|s| s.rejected),
        tier: ctx.tier,
        limit: ctx.limit,
        policy: ctx.policy,
        imbalance: imbalance(shards, total),
        directory_round_trips_per_connect: ratio(round_trips, accepted),
        connects_accepted: accepted,
        directory_round_trips: round_trips,
        frames,
        frame_subrequests,
        subrequests_per_frame: ratio(frame_subrequests, frames),
        shards: shards.iter().map(ShardRow::from).collect(),
        failed_shards: failed,
        load: Load::over(&shards.iter().collect::<Vec<_>>()),
    }
}

/// The busiest shard's connections over the mean of the shards holding sockets: an emptied
/// shard still listed (a drained epoch, an old policy's shard) says nothing about balance.
fn imbalance(shards: &[ShardStats], total: u64) -> f64 {
    let active = shards.iter().filter(|s| s.connections > 0).count();
    let max = shards.iter().map(|s| s.connections).max().unwrap_or(0);
    if total == 0 {
        0.0
    } else {
        max as f64 / (total as f64 / active as f64)
    }
}

impl From<&ShardStats> for ShardRow {
    fn from(s: &ShardStats) -> Self {
        ShardRow {
            name: s.name.clone(),
            connections: s.connections,
            oldest_connection: s.oldest_connection,
            rejected: s.rejected,
            rejected_tier_limit: s.rejected_tier_limit,
            epoch: s.epoch,
            draining: s.draining,
            events: s.events,
            frames_sent: s.frames_sent,
            peak_events_per_second: s.peak_events_per_second,
            handoff_skipped: s.handoff_skipped,
            recent_shed: s.recent_shed,
            moved_shed: s.moved_shed,
        }
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
    fn a_shards_move_counters_show_only_when_not_zero() {
        let ctx = UserContext {
            tier: "pro".into(),
            limit: 100,
            policy: "single".into(),
            rejected_tier_limit: 0,
            rejected_unavailable: 0,
        };
        let mut busy = shard("a", 1, &[], None);
        busy.handoff_skipped = 2;
        busy.moved_shed = 1;
        let s = aggregate(ctx, &[busy, shard("b", 1, &[], None)], Vec::new());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["shards"][0]["handoffSkipped"], 2);
        assert_eq!(v["shards"][0]["movedShed"], 1);
        assert!(v["shards"][0].get("recentShed").is_none());
        assert!(v["shards"][1].get("handoffSkipped").is_none());
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
    fn the_busiest_object_and_its_share() {
        let mut a = shard("a", 1, &[], None);
        a.events = 30;
        a.peak_events_per_second = 4;
        let mut b = shard("b", 1, &[], None);
        b.events = 10;
        b.peak_events_per_second = 9;
        let idle = shard("idle", 0, &[], None);
        let l = Load::over(&[&a, &b, &idle]);
        assert_eq!((l.objects, l.events), (2, 40));
        assert_eq!(l.busiest_object, "a");
        assert_eq!(l.busiest_share, 0.75);
        assert_eq!(l.peak_events_per_second, 9);
        assert_eq!(Load::over(&[]).busiest_share, 0.0);
    }

    #[test]
    fn an_objects_load_counts_events_and_its_busiest_second() {
        let mut l = ObjectLoad::default();
        for t in [0, 10, 999, 1000, 2500, 2600, 2700, 2999] {
            l.event(t);
        }
        l.sent(3);
        assert_eq!(l.events(), 8);
        assert_eq!(l.peak_per_second(), 4);
        assert_eq!(l.frames_sent(), 3);
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
