//! Pure shard placement for the edge gateway: which ConnectionManager Durable Object a new
//! WebSocket goes to, where it spills when that shard is full, and which shards a fan-out
//! must reach. No I/O, no clock, no randomness: time and random bits are passed in, so the
//! crate builds for `wasm32-unknown-unknown` and natively, and is tested and fuzzed natively.
//!
//! # Layout
//!
//! * [`policy`]: the [`ShardPolicy`] trait, the [`ConnectionRequest`] it places, and the
//!   four policies (`single`, `hash`, `session`, `rotate`) plus [`PolicyConfig`], the enum
//!   over them that the gateway holds.
//! * [`grammar`]: the `SHARD_POLICY` string grammar: `FromStr` / `Display` for
//!   [`PolicyConfig`] and the precise [`GrammarError`]s.
//! * [`candidate`]: [`Candidates`], the allocation-free iterator of candidate shards
//!   (preferred first, then the spill order).
//! * [`name`]: [`ShardKey`] (which shard of a user), its Durable Object name, and
//!   [`parse_object_name`] back from a name; the escaping that keeps names collision-free.
//! * [`hash`]: xxh64, jump consistent hashing and the per-connection spill permutation.
//! * [`rotation`]: epochs of the `rotate` policy, their phases, and the [`DrainPlan`] that
//!   spreads reconnects over the drain window.
//! * [`mod@fanout`]: which known shards a broadcast or stats request must reach.
//! * [`spread`]: filling before spreading, the [`SpreadPlan`] of `shards=auto`.
//! * [`id`]: [`validate_id`], the id rule shared with the gateway.
//!
//! # Example
//!
//! ```
//! use shard_policies::{ClientType, ConnectionRequest, PolicyConfig, ShardPolicy};
//!
//! let policy: PolicyConfig = "hash:shards=auto".parse()?;
//! let req = ConnectionRequest {
//!     user_id: "alice",
//!     tier_limit: 500,
//!     shard_max_connections: 200,
//!     client_type: ClientType::UserScoped,
//!     session_id: None,
//!     machine_id: None,
//!     connection_id: "c-7f3a",
//!     now_ms: 1_760_000_000_000,
//!     spread: 2,
//! };
//! // A user spread over 2 of its ceil(500 / 200) = 3 hash shards: one of those first, then
//! // the spill order over all 3, then its home shard.
//! let candidates: Vec<String> = policy
//!     .candidates(&req)
//!     .map(|key| key.object_name(req.user_id))
//!     .collect();
//! assert_eq!(candidates.len(), 4);
//! assert!(["cm:alice:h0", "cm:alice:h1"].contains(&candidates[0].as_str()));
//! assert_eq!(candidates[3], "cm:alice");
//! # Ok::<(), shard_policies::GrammarError>(())
//! ```

mod duration;

pub mod candidate;
pub mod fanout;
pub mod grammar;
pub mod hash;
pub mod id;
pub mod name;
pub mod policy;
pub mod rotation;
pub mod spread;

pub use candidate::Candidates;
pub use fanout::{fanout, KnownShard};
pub use grammar::GrammarError;
pub use id::{validate_id, IdError, MAX_ID_LEN};
pub use name::{parse_object_name, ObjectName, ShardKey, SHARD_NAME_PREFIX};
pub use policy::{
    ClientType, ConnectionRequest, HashPolicy, Others, PolicyConfig, RotatePolicy, SessionPolicy,
    ShardCount, ShardPolicy, SinglePolicy, MAX_SHARDS,
};
pub use rotation::{DrainPlan, DrainSlot, EpochPhase, Rotation, RotationError};
pub use spread::{default_fill, SpreadPlan};
