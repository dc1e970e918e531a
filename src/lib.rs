//! # edge-gateway
//!
//! A Cloudflare Worker (workers-rs) that spreads a user's WebSockets over many
//! `ConnectionManager` Durable Objects with a pluggable shard policy.
//!
//! # Layout
//!
//! One folder per concern, each layer importing only those below it (no circles):
//!
//! ```text
//! gateway/     the stateless Worker: upgrade, ticket, user API (stats, broadcast, publish),
//!              admin (tiers, disconnect, metrics, SLO), the run-time policy switch, its
//!              caller identity and per-isolate caches, what it reports to homes
//! objects/     the Durable Objects: shard/ (ConnectionManager: admit, route, presence,
//!              reporter, drain, moves, policy, business events, end), home/ (the role a
//!              user's home shard plays: ledger, book, moves, policy, stats, registry push),
//!              registry/, revocations/, control/ (run-time policies), the hook outbox
//! runtime/     the thin layer to workers-rs: env, clock, alarms; calls: typed messages to
//!              the objects by Durable Object RPC (`ask`, `rpc_object!`)
//! object_api   what each object is asked and answers: one type per message (`Message`)
//! placement/   the bridge to `shard-policies`, leases (exact limits), SLO admission, the
//!              run-time switch's state (`switch`)
//! config/      every var and secret, validated (`Config::from_vars`)
//! routing/     envelope, the platform's rules, the routing view, the socket index, the
//!              frame guard, sealed RPC references, moves (what is held while a socket moves)
//! upstream/    the business-event and hook contract with the platform's backend
//! auth/        tokens, tickets, the ticket book, the token cache, secrets, the revocation feed
//! protocol/    connect query, frames, broadcast bodies, ids, CORS, errors
//! ```
//!
//! Beside it, two pure crates the compiler keeps free of `worker`: `shard-policies`
//! (placement, names, rotation, spread) and `observability` (histograms, windows, stats, the
//! SLO report, the Prometheus exposition, registry records).
//!
//! Following one connect: `gateway::upgrade` -> `placement::candidates` -> a shard's
//! `objects::shard::admit` (the home admits itself; another shard leases from the home).
//! Following one client frame: `objects::shard::route::on_frame` -> `routing::envelope` ->
//! `routing::rules` -> delivery here and on the shards `routing::view` names.

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
) -> worker::Result<runtime::Answer> {
    gateway::handle(req, env, ctx).await
}
