//! Integration tests against real workerd (`wrangler dev`) with real WebSocket and HTTP
//! clients. Each configuration's gateway starts once per run (see `support`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

mod basics;
mod credentials;
mod errors;
mod lifecycle;
mod moves;
mod observability;
mod reliability;
mod routing;
mod sharding;
mod trust;
mod upstream;
