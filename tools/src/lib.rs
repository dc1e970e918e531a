//! Shared helpers of the native developer commands.

use std::collections::BTreeMap;
use std::path::Path;

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

    #[test]
    fn flag_parsing() {
        let a: Vec<String> = ["--user", "alice"].iter().map(|s| s.to_string()).collect();
        assert_eq!(flags(&a, &["user"]).unwrap()["user"], "alice");
        assert!(flags(&a, &["tier"]).unwrap_err().contains("--tier"));
        let a: Vec<String> = vec!["--user".into()];
        assert!(flags(&a, &["user"]).is_err());
    }
}
