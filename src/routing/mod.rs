//! Client-to-client routing across shards (platform-protocol.md §5, §6): the envelope, the
//! platform's routing rules, the view of where a user's recipients are, the sealed RPC
//! references that carry answers back to their caller, a shard's socket bookkeeping, and what
//! the home holds for sockets the edge moves.
//! Pure: the shard object (`objects::shard`) does the delivering.

pub mod ack_id;
pub mod calls;
pub mod envelope;
pub mod grace;
pub mod guard;
pub mod index;
pub mod moves;
pub mod rules;
pub mod view;
