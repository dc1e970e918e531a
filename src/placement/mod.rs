//! Where connections go: the gateway's one point of contact with the
//! `shard-policies` crate, plus the object names and bindings.

pub mod admission;
pub mod lease;
pub mod switch;

use shard_policies::{
    parse_object_name, ConnectionRequest, PolicyConfig, Rotation, ShardKey, ShardPolicy,
};

use crate::config::Config;
use crate::protocol::{ClientType, SocketMeta};

/// The registry object a user's home reports to: `reg:{k}`, k from the
/// user id's hash, so the global view is a fan-out over `n` objects.
pub fn registry_name(user: &str, n: u32) -> String {
    let k = shard_policies::hash::xxh64(user.as_bytes()) % u64::from(n.max(1));
    format!("reg:{k}")
}

pub fn registry_names(n: u32) -> Vec<String> {
    (0..n.max(1)).map(|k| format!("reg:{k}")).collect()
}

/// The candidate shard names for a new socket, preferred first, for a user of `tier_limit`
/// spread over `spread` hash shards (`shard_policies::spread`).
pub fn candidates(
    cfg: &Config,
    policy: &PolicyConfig,
    tier_limit: u32,
    spread: u32,
    meta: &SocketMeta,
    now_ms: u64,
) -> Vec<String> {
    let req = ConnectionRequest {
        user_id: &meta.user_id,
        tier_limit,
        shard_max_connections: cfg.shard_max_connections,
        client_type: client_type(meta.client_type),
        session_id: meta.session_id.as_deref(),
        machine_id: meta.machine_id.as_deref(),
        connection_id: &meta.connection_id,
        now_ms,
        spread,
    };
    policy
        .candidates(&req)
        .map(|k| k.object_name(&meta.user_id))
        .collect()
}

fn client_type(t: ClientType) -> shard_policies::ClientType {
    match t {
        ClientType::UserScoped => shard_policies::ClientType::UserScoped,
        ClientType::SessionScoped => shard_policies::ClientType::SessionScoped,
        ClientType::MachineScoped => shard_policies::ClientType::MachineScoped,
    }
}

/// The user's home shard, `cm:{user}`: the user's authority (see `connection_manager::home`)
/// and the shard `single` uses.
pub fn home_name(user: &str) -> String {
    ShardKey::<&str>::Base.object_name(user)
}

/// Whether `shard` is a user's home shard.
pub fn is_home(shard: &str) -> bool {
    parse_object_name(shard).is_some_and(|n| n.key == ShardKey::Base)
}

/// The rotation schedule and epoch of a rotation shard, from its name.
pub fn rotation_of(shard: &str) -> Option<(Rotation, u64)> {
    parse_object_name(shard).and_then(|n| n.key.epoch())
}

/// A stable per-socket hash, for spreading drain slots.
pub fn socket_hash(connection_id: &str) -> u64 {
    shard_policies::hash::xxh64(connection_id.as_bytes())
}
