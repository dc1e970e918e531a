//! The Durable Objects (runtime layer). Each converts between the runtime and the pure
//! modules and does I/O; what it is asked and answers is in `object_api`.
//!
//! - [`shard`]: `ConnectionManager`, one per shard name: the user's sockets.
//! - [`home`]: the role a user's home shard `cm:{user}` plays beside its sockets: the user's
//!   authority (limit, shard set, presence, stats, tickets, usage, metrics).
//! - [`registry`]: `REGISTRY_SHARDS` objects holding users' metrics for the global view.
//! - [`revocations`]: one object reading `RevokedToken` and ending revoked tokens' sockets.
//! - [`control`]: one object keeping the shard policies set at run time.
//! - [`outbox`]: an object's lifecycle hooks on their way to the upstream.

pub mod control;
pub mod home;
pub mod outbox;
pub mod registry;
pub mod revocations;
pub mod shard;
