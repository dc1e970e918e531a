//! Client-to-client routing across shards (platform-protocol.md §5, §6): the envelope, the
//! platform's routing rules, the view of where a user's recipients are, the sealed RPC
//! references that carry answers back to their caller, and a shard's socket bookkeeping.
//! Pure: the shard object (`connection_manager`) does the delivering.

pub mod ack_id;
pub mod envelope;
pub mod guard;
pub mod index;
pub mod rules;
pub mod view;
