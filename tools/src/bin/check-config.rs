//! `make check-config`: validates the `[vars]` of wrangler.toml, top level and every
//! `[env.*]`, with the gateway's own config parser. Secrets are not in wrangler.toml, so
//! placeholders stand in for them here; `/health` checks the real ones at runtime.
//!
//! Usage: check-config [PATH]   (default: wrangler.toml)

use std::collections::BTreeMap;
use std::process::ExitCode;

use edge_gateway::config::Config;

const PLACEHOLDER_SECRET: &str = "placeholder-secret-for-check-config";

fn main() -> ExitCode {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "wrangler.toml".into());
    match check(&path) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("check-config: {e}");
            }
            ExitCode::from(1)
        }
    }
}

fn check(path: &str) -> Result<Vec<String>, Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{path}: {e}")])?;
    let doc: toml::Table = text
        .parse()
        .map_err(|e| vec![format!("{path} is not valid TOML: {e}")])?;
    let mut targets = vec![("(top level)".to_string(), doc.get("vars").cloned())];
    if let Some(toml::Value::Table(envs)) = doc.get("env") {
        for (name, env) in envs {
            targets.push((format!("env.{name}"), env.get("vars").cloned()));
        }
    }
    let mut ok = Vec::new();
    let mut errors = Vec::new();
    for (name, vars) in targets {
        let mut map = BTreeMap::new();
        if let Some(toml::Value::Table(t)) = vars {
            for (k, v) in t {
                match v {
                    toml::Value::String(s) => {
                        map.insert(k, s);
                    }
                    other => errors.push(format!(
                        "{name}: var {k} is a {}; workers-rs binds only string vars, quote it",
                        other.type_str()
                    )),
                }
            }
        }
        map.insert("HAPPY_MASTER_SECRET".into(), PLACEHOLDER_SECRET.into());
        map.insert("ADMIN_TOKEN".into(), PLACEHOLDER_SECRET.into());
        match Config::from_vars(&map) {
            // Injection endpoints must never reach a deployed environment.
            Ok(c) if c.test_knobs && name.starts_with("env.") => errors.push(format!(
                "{name}: TEST_KNOBS=\"on\" enables fault injection; deployed environments need \"off\""
            )),
            Ok(c) => ok.push(format!(
                "{name}: ok (policy {}, {} tiers, shard cap {})",
                c.policy,
                c.tiers.len(),
                c.shard_max_connections
            )),
            Err(e) => errors.push(format!("{name}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> String {
        let p = std::env::temp_dir().join(format!(
            "check-config-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    #[test]
    fn the_repository_config_is_valid() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../wrangler.toml");
        let lines = check(path).unwrap();
        assert_eq!(lines.len(), 3, "{lines:?}");
    }

    #[test]
    fn errors_name_the_environment_and_var() {
        let p = write(
            "[vars]\nSHARD_POLICY = \"hash:shards=0\"\n[env.staging.vars]\nSHARD_MAX_CONNECTIONS = 200\n",
        );
        let errors = check(&p).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("(top level): SHARD_POLICY")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("env.staging") && e.contains("quote it")),
            "{errors:?}"
        );
    }
}
