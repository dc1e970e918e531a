//! `make token USER=alice TIER=pro`: mints a dev token signed with `.dev.vars`' AUTH_SECRET.
//!
//! Usage: token --user ID [--tier TIER] [--ttl SECONDS] [--dev-vars PATH]
//! The secret can also come from the AUTH_SECRET environment variable.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use edge_gateway::auth::{mint, Claims};
use edge_gateway::ids::validate_id;

fn main() -> ExitCode {
    match run() {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("token: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<String, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let f = edge_tools::flags(&args, &["user", "tier", "ttl", "dev-vars"])?;
    let user = f.get("user").cloned().unwrap_or_else(|| "alice".into());
    validate_id(&user).map_err(|e| format!("--user: {e}"))?;
    let tier = f.get("tier").cloned().unwrap_or_else(|| "pro".into());
    let ttl: u64 = f
        .get("ttl")
        .map(|t| {
            t.parse()
                .map_err(|_| format!("--ttl must be seconds, got `{t}`"))
        })
        .transpose()?
        .unwrap_or(24 * 3600);
    let secret = match std::env::var("AUTH_SECRET") {
        Ok(s) if !s.is_empty() => s,
        _ => {
            let path = PathBuf::from(f.get("dev-vars").map_or(".dev.vars", String::as_str));
            edge_tools::read_dev_vars(&path)?
                .remove("AUTH_SECRET")
                .ok_or_else(|| format!("{} has no AUTH_SECRET", path.display()))?
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    Ok(mint(
        &Claims {
            sub: user,
            tier,
            exp: now + ttl,
        },
        secret.as_bytes(),
    ))
}
