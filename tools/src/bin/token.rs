//! `make token USER=alice`: mints a token exactly as the platform's server does (Ed25519,
//! key derived from the master secret), signed with `.dev.vars`' `HAPPY_MASTER_SECRET`.
//!
//! Usage:
//!   token --user ID [--ttl SECONDS] [--iat SECONDS] [--exp SECONDS|none] [--dev-vars PATH]
//!   token --users N [--prefix P] [--ttl SECONDS] [--dev-vars PATH]   (JSON {"P-0": token, ...})
//!   token --ticket ID [--dev-vars PATH]   (a ticket, as POST /v1/websocket/ticket mints it)
//! The secret can also come from the HAPPY_MASTER_SECRET environment variable.
//! A token carries no tier: the operator sets one with `make tier USER=... TIER=...`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match edge_tools::token_command(&args, edge_tools::env_secret) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("token: {e}");
            ExitCode::from(2)
        }
    }
}
