//! What the home keeps per other shard: that shard's latest report, under `book:{shard}`.

use serde::{Deserialize, Serialize};

use crate::routing::view::ShardPresence;
use observability::stats::ShardStats;

/// Storage keys of the other shards' entries start with this.
pub const BOOK_PREFIX: &str = "book:";

/// Another shard's entry, stored under `book:{shard}` as JSON text.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BookEntry {
    pub incarnation: u64,
    pub seq: u64,
    pub presence: ShardPresence,
    pub stats: Option<ShardStats>,
}
