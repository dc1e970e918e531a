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
//! };
//! let candidates = policy.candidates(&req);
//! assert_eq!(candidates.len(), 3); // ceil(500 / 200) hash shards
//! for key in candidates {
//!     let name = key.object_name(req.user_id); // e.g. "cm:alice:h1"
//!     assert!(name.starts_with("cm:alice:h"));
//! }
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
