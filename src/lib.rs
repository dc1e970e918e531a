//! # edge-gateway
//!
//! A Cloudflare Worker (workers-rs) that spreads a user's WebSockets over many
//! `ConnectionManager` Durable Objects with a pluggable shard policy.
//!
//! # Layout
//!
//! Pure modules, tested natively, never touching `worker::*`:
//! - [`protocol`]: the wire protocol: connect query, frames, broadcast bodies, errors.
//! - [`auth`]: the platform's credentials: Ed25519 tokens, tickets, the ticket book, the
//!   verified-token cache, credential precedence, the admin token compare.
//! - [`cors`]: CORS for the browser calls.
//! - [`config`]: every var and secret, parsed and validated through [`config::VarSource`].
//! - [`ids`]: the id rule and connection ids.
//! - [`lease`]: exact tier limits across shards (directory ledger, shard leases).
//! - [`stats`]: per-shard reports and their aggregation.
//! - [`object_api`]: what each Durable Object is asked and answers, one type per message.
//! - [`metrics`]: mergeable latency histograms, outcome counters, time-windowed rings.
//! - [`exposition`]: Prometheus text exposition of the global metrics.
//! - [`slo`]: the per-tier SLO report and the admin stats.
//! - [`admission`]: SLO-aware admission: shard health and tier shedding.
//!
//! The runtime layer, thin: it converts between JS and the pure types and does I/O:
//! - `gateway`: the stateless Worker: routing, auth, placement, fan-out.
//! - [`ConnectionManager`]: the shard Durable Object (hibernating sockets); a user's home
//!   shard `cm:{user}` is also the user's authority (tier limit, shard set, presence, stats).
//! - [`Registry`]: `REGISTRY_SHARDS` objects holding users' metrics for the global view.
//! - [`Revocations`]: one object reading the platform's `RevokedToken` table for new rows and
//!   ending the revoked tokens' sockets.
//! - `placement`: the bridge to the `shard-policies` crate; `runtime`: env, clock, calls.

pub mod auth;
pub mod config;
pub mod object_api;
pub mod placement;
pub mod protocol;
pub mod routing;
pub mod upstream;

mod gateway;
mod objects;
mod runtime;

pub use objects::control::Control;
pub use objects::registry::Registry;
pub use objects::revocations::Revocations;
pub use objects::shard::ConnectionManager;

#[worker::event(fetch)]
async fn fetch(
    req: worker::Request,
    env: worker::Env,
    ctx: worker::Context,
) -> worker::Result<worker::Response> {
    gateway::handle(req, env, ctx).await
}
