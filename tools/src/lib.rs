//! Shared helpers of the native developer commands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use edge_gateway::auth::{ticket, token, MintClaims, TokenKeys};
use edge_gateway::protocol::ids::validate_id;

/// The master secret: `HAPPY_MASTER_SECRET` (or the deprecated `HANDY_MASTER_SECRET`) from
/// the environment, else from the `.dev.vars` file at `dev_vars`.
pub fn env_secret(dev_vars: &Path) -> Result<String, String> {
    for name in ["HAPPY_MASTER_SECRET", "HANDY_MASTER_SECRET"] {
        if let Ok(s) = std::env::var(name) {
            if !s.is_empty() {
                return Ok(s);
            }
        }
    }
    let mut vars = read_dev_vars(dev_vars)?;
    vars.remove("HAPPY_MASTER_SECRET")
        .or_else(|| vars.remove("HANDY_MASTER_SECRET"))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            format!(
                "{} has no HAPPY_MASTER_SECRET (run `make dev-vars`)",
                dev_vars.display()
            )
        })
}

fn now_s() -> Result<u64, String> {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|e| e.to_string())
}

fn seconds(f: &BTreeMap<String, String>, name: &str, default: u64) -> Result<u64, String> {
    f.get(name).map_or(Ok(default), |t| {
        t.parse()
            .map_err(|_| format!("--{name} must be whole seconds, got `{t}`"))
    })
}

/// `token ...` (see the binary's usage). `secret` finds the master secret.
pub fn token_command(
    args: &[String],
    secret: impl Fn(&Path) -> Result<String, String>,
) -> Result<String, String> {
    let f = flags(
        args,
        &[
            "user", "users", "prefix", "ttl", "iat", "exp", "dev-vars", "ticket",
        ],
    )?;
    let dev_vars = PathBuf::from(f.get("dev-vars").map_or(".dev.vars", String::as_str));
    let secret = secret(&dev_vars)?;
    let keys = TokenKeys::derive(&secret);
    let iat = seconds(&f, "iat", now_s()?)?;
    // The platform's persistent tokens live 30 days.
    let ttl = seconds(&f, "ttl", 30 * 24 * 3600)?;
    if let Some(user) = f.get("ticket") {
        validate_id(user).map_err(|e| format!("--ticket: {e}"))?;
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce).map_err(|e| format!("no randomness: {e}"))?;
        return Ok(ticket::mint(
            secret.as_bytes(),
            user,
            iat.saturating_mul(1000),
            &ticket::uuid_v4(nonce),
        ));
    }
    if let Some(n) = f.get("users") {
        let n: usize = n
            .parse()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .ok_or_else(|| format!("--users must be 1..=100000, got `{n}`"))?;
        let prefix = f.get("prefix").map_or("load-user", String::as_str);
        let all: serde_json::Map<String, serde_json::Value> = (0..n)
            .map(|i| {
                let user = format!("{prefix}-{i}");
                let t = token::mint(&keys, &MintClaims::new(&user, iat, ttl));
                validate_id(&user)
                    .map(|()| (user, serde_json::Value::from(t)))
                    .map_err(|e| format!("--prefix: {e}"))
            })
            .collect::<Result<_, _>>()?;
        return Ok(serde_json::Value::Object(all).to_string());
    }
    let user = f.get("user").map_or("alice", String::as_str);
    validate_id(user).map_err(|e| format!("--user: {e}"))?;
    let mut claims = MintClaims::new(user, iat, ttl);
    match f.get("exp").map(String::as_str) {
        None => {}
        Some("none") => claims.exp = None,
        Some(_) => claims.exp = Some(seconds(&f, "exp", 0)?),
    }
    Ok(token::mint(&keys, &claims))
}

/// Reads `KEY=VALUE` lines of a `.dev.vars` file (blank lines and `#` comments skipped).
pub fn read_dev_vars(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e} (run `make dev-vars`)", path.display()))?;
    Ok(parse_dev_vars(&text))
}

pub fn parse_dev_vars(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            (k.trim().to_owned(), v.to_owned())
        })
        .collect()
}

/// Minimal `--flag value` parsing; returns an error naming unknown flags.
pub fn flags(args: &[String], known: &[&str]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(name) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument `{a}`"));
        };
        if !known.contains(&name) {
            return Err(format!(
                "unknown flag `--{name}`; known: {}",
                known
                    .iter()
                    .map(|k| format!("--{k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let v = it
            .next()
            .ok_or_else(|| format!("flag `--{name}` needs a value"))?;
        out.insert(name.to_owned(), v.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_vars() {
        let m = parse_dev_vars("# c\nA=1\n\nB=\"two\"\n bad line\n");
        assert_eq!(m.get("A").map(String::as_str), Some("1"));
        assert_eq!(m.get("B").map(String::as_str), Some("two"));
        assert_eq!(m.len(), 2);
    }

    const SECRET: &str = "test-secret-for-vitest-tests-min-32-chars";

    fn run(args: &[&str]) -> Result<String, String> {
        let a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        token_command(&a, |_| Ok(SECRET.to_owned()))
    }

    #[test]
    fn the_dev_tool_mints_the_platform_vector_byte_for_byte() {
        // platform-protocol.md §1.5
        let t = run(&[
            "--user",
            "user_abc123",
            "--iat",
            "1700000000",
            "--exp",
            "1702592000",
        ]);
        assert_eq!(t.unwrap(), "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.eyJ1c2VyIjoidXNlcl9hYmMxMjMiLCJpc3MiOiJoYW5keSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAyNTkyMDAwfQ.rEiGJAvRrJOSL6Sm2BZ4cyd1xbu6Vmc1riEOsk_0Nd83g8FOmd_mHf4N0Les1JQDTqlOmYhyoh_0I8bSvRkYCQ");
        // The default lifetime is the platform's 30 days.
        let t = run(&["--user", "user_abc123", "--iat", "1700000000"]).unwrap();
        let keys = TokenKeys::derive(SECRET);
        let v = token::verify(&t, &keys, 1_700_000_001).unwrap();
        assert_eq!(v.exp, Some(1_700_000_000 + 2_592_000));
    }

    #[test]
    fn many_users_and_tickets() {
        let all: serde_json::Value =
            serde_json::from_str(&run(&["--users", "3", "--prefix", "lt"]).unwrap()).unwrap();
        assert_eq!(all.as_object().unwrap().len(), 3);
        let keys = TokenKeys::derive(SECRET);
        let t = all["lt-2"].as_str().unwrap();
        assert_eq!(
            token::verify(t, &keys, now_s().unwrap()).unwrap().user_id,
            "lt-2"
        );
        let tk = run(&["--ticket", "bob"]).unwrap();
        let now_ms = now_s().unwrap() * 1000;
        assert_eq!(
            ticket::verify(&tk, SECRET.as_bytes(), now_ms)
                .unwrap()
                .user_id,
            "bob"
        );
        assert!(run(&["--user", "a/b"]).unwrap_err().contains("--user"));
        assert!(run(&["--users", "0"]).is_err());
        assert!(run(&["--ttl", "soon"]).unwrap_err().contains("--ttl"));
    }

    #[test]
    fn flag_parsing() {
        let a: Vec<String> = ["--user", "alice"].iter().map(|s| s.to_string()).collect();
        assert_eq!(flags(&a, &["user"]).unwrap()["user"], "alice");
        assert!(flags(&a, &["tier"]).unwrap_err().contains("--tier"));
        let a: Vec<String> = vec!["--user".into()];
        assert!(flags(&a, &["user"]).is_err());
    }
}
