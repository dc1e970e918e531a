//! `make check-config`: validates the `[vars]` of wrangler.toml, top level and every
//! `[env.*]`, with the gateway's own config parser. Secrets are not in wrangler.toml, so
//! placeholders stand in for them here; `/health` checks the real ones at runtime. On top of
//! the parser's rules, a deployed environment (`[env.*]`) may not enable the test knobs nor
//! send events to a plain-http upstream (which the parser allows only to loopback hosts,
//! for local runs).
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
        // A secret too (`wrangler secret put UPSTREAM_SECRET`), needed by an https upstream.
        map.entry("UPSTREAM_SECRET".into())
            .or_insert_with(|| PLACEHOLDER_SECRET.into());
        let deployed = name.starts_with("env.");
        match Config::from_vars(&map) {
            // Injection endpoints must never reach a deployed environment.
            Ok(c) if c.test_knobs && deployed => errors.push(format!(
                "{name}: TEST_KNOBS=\"on\" enables fault injection; deployed environments need \"off\""
            )),
            // Events and hooks would cross the network unencrypted and unauthenticated by TLS.
            Ok(c) if c.upstream.target.is_plain_http() && deployed => errors.push(format!(
                "{name}: UPSTREAM=\"{}\" is plain http, allowed only for local runs; a deployed environment needs `off`, `service` (the UPSTREAM_SERVICE binding) or an https:// URL",
                map.get("UPSTREAM").map_or("", String::as_str)
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
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("check-config-{}-{n}.toml", std::process::id()));
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
    fn a_userinfo_upstream_is_refused_everywhere() {
        let p = write("[vars]\nUPSTREAM = \"http://localhost@evil.tld/\"\n");
        let errors = check(&p).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("(top level): UPSTREAM") && e.contains("loopback")),
            "{errors:?}"
        );
    }

    #[test]
    fn deployed_environments_refuse_a_plain_http_upstream() {
        // Fine for a local run (the top level), never in an `[env.*]` section.
        let p = write(concat!(
            "[vars]\nUPSTREAM = \"http://127.0.0.1:8788/events\"\n",
            "[env.staging.vars]\nUPSTREAM = \"http://localhost:8788/events\"\n",
            "[env.production.vars]\nUPSTREAM = \"https://backend.example/edge\"\n",
        ));
        let errors = check(&p).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert!(e.starts_with("env.staging: UPSTREAM"), "{e}");
        assert!(e.contains("http://localhost:8788/events"), "{e}");
        assert!(e.contains("https://") && e.contains("service"), "{e}");
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
