//! Configuration: every `[vars]` entry and secret, parsed and validated in one place.
//!
//! Read through [`VarSource`] so tests (and `make check-config`) feed a map
//! instead of a Worker `Env`. Numeric vars are strings in `wrangler.toml`
//! because numeric vars do not bind in workers-rs.

use std::collections::BTreeMap;

use shard_policies::PolicyConfig;

use crate::auth::{Secret, TokenKeys};
use crate::protocol::cors::CorsPolicy;
use crate::routing::ack_id::AckKey;
pub use crate::routing::guard::Limits as FrameLimits;
use crate::upstream::backlog::Bounds;
use crate::upstream::{self, EventSet, Target, UpstreamConfig};
pub use observability::tier::{Tier, DEFAULT_TIERS};

/// Where configuration values come from: the Worker env, a TOML table, a map.
pub trait VarSource {
    fn var(&self, name: &str) -> Option<String>;
}

impl VarSource for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl VarSource for [(&str, &str)] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 65536;

/// Every var with its default; `None` means required.
pub const VARS: &[(&str, Option<&str>)] = &[
    ("SHARD_POLICY", Some("single")),
    ("SHARD_MAX_CONNECTIONS", Some("200")),
    ("TIERS", Some(DEFAULT_TIERS)),
    ("MAX_MESSAGE_BYTES", Some("65536")),
    ("FANOUT_TIMEOUT_MS", Some("5000")),
    ("LEASE_BATCH", Some("8")),
    ("BAD_FRAME_LIMIT", Some("10")),
    ("FRAME_RATE", Some("50")),
    ("FRAME_BURST", Some("200")),
    ("REVOCATION_POLL_MS", Some("5000")),
    ("METRICS_PUSH_MS", Some("60000")),
    ("STATS_CACHE_MS", Some("100")),
    ("PRESENCE_GRACE_MS", Some("0")),
    ("TEST_KNOBS", Some("off")),
    ("REGISTRY_SHARDS", Some("8")),
    ("METRICS_MAX_USER_SERIES", Some("50")),
    ("DEFAULT_TIER", Some("pro")),
    ("UPSTREAM", Some("off")),
    ("UPSTREAM_EVENTS", Some(upstream::DEFAULT_EVENTS)),
    ("UPSTREAM_TIMEOUT_MS", Some("4000")),
    ("UPSTREAM_MAX_IN_FLIGHT", Some("64")),
    ("UPSTREAM_HOOKS", Some("on")),
    ("UPSTREAM_HOOKS_MAX", Some("1000")),
    ("UPSTREAM_HOOKS_MAX_BYTES", Some("1048576")),
    ("UPSTREAM_SECRET", Some("")),
    ("CORS_ORIGINS", Some(DEFAULT_CORS_ORIGINS)),
    // The platform's master secret; the deprecated name is read when the new one is unset.
    ("HAPPY_MASTER_SECRET", None),
    ("HANDY_MASTER_SECRET", None),
    ("ADMIN_TOKEN", Some("")),
];

/// The platform's production CORS rules (platform-protocol.md §7.5): local origins and its
/// own web apps.
pub const DEFAULT_CORS_ORIGINS: &str = "localhost,https://happy.enflamemedia.com,https://happy-dev.enflamemedia.com,https://happy-vue.enflamemedia.com,https://happy-vue-dev.enflamemedia.com,https://happy.app,https://www.happy.app,https://api.happy.app";

/// What `UPSTREAM` may be, for its error message.
pub const UPSTREAM_ALLOWED: &str = "`off`, `service` (the UPSTREAM_SERVICE binding) or an https:// URL; plain http:// only to a loopback host (localhost, 127.0.0.0/8, [::1]) for local runs; no user or password in the URL";

/// The shortest master secret accepted (the platform's own test secrets are longer).
pub const MIN_SECRET_BYTES: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub policy: PolicyConfig,
    /// The policy as configured, for `/health`, stats and the `connected` frame.
    pub policy_name: String,
    pub shard_max_connections: u32,
    pub tiers: BTreeMap<String, Tier>,
    pub max_message_bytes: usize,
    pub fanout_timeout_ms: u32,
    pub lease_batch: u32,
    /// What one socket may send: frames per second, burst, invalid frames per minute.
    pub frame_limits: FrameLimits,
    /// How often the revocation feed reads `RevokedToken` for new rows.
    pub revocation_poll_ms: u64,
    /// How often at most a user's home pushes its metrics to the registry.
    pub metrics_push_ms: u64,
    /// How long after it arrived a gateway isolate answers a user's stats again from the
    /// user's home's last answer (0: every call asks the home).
    pub stats_cache_ms: u64,
    /// How long a machine that drops may take to come back before it is announced offline
    /// (`routing::grace`); 0, the platform's timing, announces at once.
    pub presence_grace_ms: u64,
    /// Fault and latency injection for tests (`POST /admin/test/shard`).
    /// Off unless the config says `on`; never enable it in production.
    pub test_knobs: bool,
    /// Registry objects the users' metrics are spread over (`reg:{k}`).
    pub registry_shards: u32,
    /// Users with their own series in `/metrics`; the rest fold into `_other`.
    pub metrics_max_user_series: u32,
    /// The tier of a user without an operator override (`PUT /admin/users/{id}/tier`).
    pub default_tier: String,
    /// The default tier's limits: a `Config` is only built by [`Config::from_vars`], which
    /// checks the default tier is configured, so every user resolves to a tier.
    default: Tier,
    pub cors: CorsPolicy,
    /// The platform's master secret: the ticket HMAC key, as its raw UTF-8 bytes.
    pub master_secret: Secret,
    /// The token keys derived from it (HKDF), once per isolate with the config.
    pub token_keys: TokenKeys,
    /// Seals the references that carry RPC answers back to their caller.
    pub ack_key: AckKey,
    /// Where business events and lifecycle hooks go (docs/upstream.md).
    pub upstream: UpstreamConfig,
    pub admin_token: Secret,
}

/// A configuration error names the var, the value and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={value:?} is invalid: {allowed}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub allowed: String,
}

impl Config {
    pub fn from_vars(src: &(impl VarSource + ?Sized)) -> Result<Self, ConfigError> {
        let policy_name = get(src, "SHARD_POLICY").trim().to_owned();
        let policy: PolicyConfig = policy_name.parse().map_err(|e| ConfigError {
            var: "SHARD_POLICY",
            value: policy_name.clone(),
            allowed: format!("{e}"),
        })?;
        let tiers = parse_tiers(&get(src, "TIERS"))?;
        let master_secret = match get(src, "HAPPY_MASTER_SECRET") {
            s if s.is_empty() => get(src, "HANDY_MASTER_SECRET"),
            s => s,
        };
        if master_secret.len() < MIN_SECRET_BYTES {
            return Err(ConfigError {
                var: "HAPPY_MASTER_SECRET",
                value: "(secret hidden)".into(),
                allowed: format!("the platform's master secret, at least {MIN_SECRET_BYTES} bytes (HANDY_MASTER_SECRET is read when it is unset); set it with `wrangler secret put HAPPY_MASTER_SECRET` (locally in .dev.vars)"),
            });
        }
        let default_tier = get(src, "DEFAULT_TIER").trim().to_owned();
        let Some(default) = tiers.get(&default_tier).cloned() else {
            return Err(ConfigError {
                var: "DEFAULT_TIER",
                value: default_tier,
                allowed: format!(
                    "one of the tiers in TIERS: {}",
                    tiers.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        };
        let upstream = parse_upstream(src)?;
        let cors_value = get(src, "CORS_ORIGINS");
        let cors = CorsPolicy::parse(&cors_value).map_err(|allowed| ConfigError {
            var: "CORS_ORIGINS",
            value: crate::protocol::truncate(&cors_value, 200),
            allowed: allowed.to_string(),
        })?;
        let admin_token = get(src, "ADMIN_TOKEN");
        // An unset ADMIN_TOKEN disables the admin endpoints instead of the
        // whole gateway; a short one is a mistake worth refusing.
        if !admin_token.is_empty() && admin_token.len() < 16 {
            return Err(ConfigError {
                var: "ADMIN_TOKEN",
                value: "(secret hidden)".into(),
                allowed: "unset (admin endpoints disabled) or a secret of at least 16 bytes; set it with `wrangler secret put ADMIN_TOKEN` (locally in .dev.vars)".into(),
            });
        }
        Ok(Config {
            policy,
            policy_name,
            shard_max_connections: int(src, "SHARD_MAX_CONNECTIONS", 1, 100_000)?,
            tiers,
            max_message_bytes: int(src, "MAX_MESSAGE_BYTES", 128, 1 << 20)? as usize,
            fanout_timeout_ms: int(src, "FANOUT_TIMEOUT_MS", 10, 60_000)?,
            lease_batch: int(src, "LEASE_BATCH", 1, 1_000)?,
            frame_limits: FrameLimits {
                rate_per_s: int(src, "FRAME_RATE", 1, 100_000)?,
                burst: int(src, "FRAME_BURST", 1, 1_000_000)?,
                bad_frames: int(src, "BAD_FRAME_LIMIT", 1, 10_000)?,
            },
            revocation_poll_ms: u64::from(int(src, "REVOCATION_POLL_MS", 500, 300_000)?),
            metrics_push_ms: u64::from(int(src, "METRICS_PUSH_MS", 500, 300_000)?),
            stats_cache_ms: u64::from(int(src, "STATS_CACHE_MS", 0, 5_000)?),
            presence_grace_ms: u64::from(int(src, "PRESENCE_GRACE_MS", 0, 60_000)?),
            test_knobs: switch(src, "TEST_KNOBS")?,
            registry_shards: int(src, "REGISTRY_SHARDS", 1, 256)?,
            metrics_max_user_series: int(src, "METRICS_MAX_USER_SERIES", 1, 10_000)?,
            default_tier,
            default,
            cors,
            token_keys: TokenKeys::derive(&master_secret),
            ack_key: AckKey::derive(&master_secret),
            upstream,
            master_secret: Secret::new(master_secret),
            admin_token: Secret::new(admin_token),
        })
    }

    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.get(name)
    }

    /// A user's tier: the operator's override when it is still configured, else the default.
    pub fn resolve_tier<'a>(&'a self, overridden: Option<&'a str>) -> (&'a str, &'a Tier) {
        if let Some((name, t)) = overridden.and_then(|n| self.tiers.get_key_value(n)) {
            return (name.as_str(), t);
        }
        (self.default_tier.as_str(), &self.default)
    }

    /// The configured tier names, for error messages.
    pub fn tier_names(&self) -> String {
        self.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn get(src: &(impl VarSource + ?Sized), name: &'static str) -> String {
    src.var(name)
        .or_else(|| {
            VARS.iter()
                .find(|(n, _)| *n == name)
                .and_then(|(_, d)| d.map(str::to_owned))
        })
        .unwrap_or_default()
}

fn int(
    src: &(impl VarSource + ?Sized),
    var: &'static str,
    min: u32,
    max: u32,
) -> Result<u32, ConfigError> {
    let value = get(src, var);
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| ConfigError {
            var,
            value,
            allowed: format!("an integer in {min}..={max}, as a string"),
        })
}

fn switch(src: &(impl VarSource + ?Sized), var: &'static str) -> Result<bool, ConfigError> {
    match get(src, var).trim() {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(ConfigError {
            var,
            value: other.to_owned(),
            allowed: "`on` or `off`".into(),
        }),
    }
}

fn parse_upstream(src: &(impl VarSource + ?Sized)) -> Result<UpstreamConfig, ConfigError> {
    let value = get(src, "UPSTREAM").trim().to_owned();
    let secret = Secret::new(get(src, "UPSTREAM_SECRET"));
    let target = match value.as_str() {
        "off" => Target::Off,
        "service" => Target::Service,
        other => {
            let url = upstream::upstream_url(other).map_err(|e| ConfigError {
                var: "UPSTREAM",
                value: crate::protocol::truncate(other, 200),
                allowed: format!("{e}; {UPSTREAM_ALLOWED}"),
            })?;
            if secret.is_empty() && url.scheme() == "https" {
                return Err(ConfigError {
                    var: "UPSTREAM_SECRET",
                    value: "(unset)".into(),
                    allowed: "a secret signing the requests to an HTTPS upstream; set it with `wrangler secret put UPSTREAM_SECRET`".into(),
                });
            }
            Target::Url(url.into())
        }
    };
    let events_value = get(src, "UPSTREAM_EVENTS");
    let events = EventSet::parse(&events_value).map_err(|allowed| ConfigError {
        var: "UPSTREAM_EVENTS",
        value: crate::protocol::truncate(&events_value, 200),
        allowed: allowed.to_string(),
    })?;
    Ok(UpstreamConfig {
        target,
        events,
        timeout_ms: int(src, "UPSTREAM_TIMEOUT_MS", 10, 60_000)?,
        max_in_flight: int(src, "UPSTREAM_MAX_IN_FLIGHT", 1, 10_000)?,
        hooks: switch(src, "UPSTREAM_HOOKS")?,
        hook_bounds: Bounds {
            max_hooks: int(src, "UPSTREAM_HOOKS_MAX", 16, 100_000)? as usize,
            max_bytes: int(src, "UPSTREAM_HOOKS_MAX_BYTES", 16_384, 64 << 20)? as usize,
        },
        secret,
    })
}

fn parse_tiers(value: &str) -> Result<BTreeMap<String, Tier>, ConfigError> {
    let err = |allowed: String| ConfigError {
        var: "TIERS",
        value: crate::protocol::truncate(value, 200),
        allowed,
    };
    let tiers: BTreeMap<String, Tier> = serde_json::from_str(value).map_err(|e| {
        err(format!(
            "a JSON object of tiers like {{\"pro\":{{\"limit\":100,\"latencyP95Ms\":200,\"availability\":99.9}}}} ({e})"
        ))
    })?;
    if tiers.is_empty() {
        return Err(err("at least one tier".into()));
    }
    for (name, t) in &tiers {
        if crate::protocol::ids::validate_id(name).is_err() {
            return Err(err(format!(
                "tier names are 1..128 chars of [A-Za-z0-9_.:-]; `{name}` is not"
            )));
        }
        if t.limit == 0 || t.limit > 100_000 {
            return Err(err(format!(
                "tier `{name}`: limit must be 1..=100000, got {}",
                t.limit
            )));
        }
        if t.latency_p95_ms == 0 {
            return Err(err(format!("tier `{name}`: latencyP95Ms must be > 0")));
        }
        if !(t.availability > 0.0 && t.availability < 100.0) {
            return Err(err(format!(
                "tier `{name}`: availability must be a percentage in (0, 100), got {}",
                t.availability
            )));
        }
    }
    Ok(tiers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRETS: [(&str, &str); 2] = [
        ("HAPPY_MASTER_SECRET", "0123456789abcdef0123"),
        ("ADMIN_TOKEN", "fedcba9876543210fedc"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let mut v: Vec<(&str, &str)> = SECRETS.to_vec();
        v.extend_from_slice(extra);
        Config::from_vars(v.as_slice())
    }

    #[test]
    fn defaults_are_the_seed() {
        let c = with(&[]).unwrap();
        assert_eq!(c.policy_name, "single");
        assert_eq!(c.shard_max_connections, 200);
        assert_eq!(c.max_message_bytes, 65536);
        assert_eq!(c.tier("free").unwrap().limit, 20);
        assert_eq!(c.tier("pro").unwrap().limit, 100);
        assert_eq!(c.tier("enterprise").unwrap().limit, 500);
        assert_eq!(c.tier("pro").unwrap().latency_p95_ms, 200);
        assert_eq!(c.tier("enterprise").unwrap().availability, 99.95);
        assert_eq!(c.tier_names(), "enterprise, free, pro");
    }

    #[test]
    fn numeric_vars_name_the_var_and_range() {
        let e = with(&[("SHARD_MAX_CONNECTIONS", "0")]).unwrap_err();
        assert_eq!(e.var, "SHARD_MAX_CONNECTIONS");
        assert_eq!(e.value, "0");
        assert!(e.allowed.contains("1..=100000"), "{e}");
        let e = with(&[("MAX_MESSAGE_BYTES", "lots")]).unwrap_err();
        assert_eq!(e.var, "MAX_MESSAGE_BYTES");
        let e = with(&[("FANOUT_TIMEOUT_MS", "1")]).unwrap_err();
        assert_eq!(e.var, "FANOUT_TIMEOUT_MS");
        let e = with(&[("LEASE_BATCH", "-3")]).unwrap_err();
        assert_eq!(e.var, "LEASE_BATCH");
        let e = with(&[("BAD_FRAME_LIMIT", "")]).unwrap_err();
        assert_eq!(e.var, "BAD_FRAME_LIMIT");
        let e = with(&[("TEST_KNOBS", "yes")]).unwrap_err();
        assert_eq!((e.var, e.allowed.as_str()), ("TEST_KNOBS", "`on` or `off`"));
        assert!(with(&[("TEST_KNOBS", "on")]).unwrap().test_knobs);
        assert!(!with(&[]).unwrap().test_knobs);
        let e = with(&[("REGISTRY_SHARDS", "0")]).unwrap_err();
        assert_eq!(e.var, "REGISTRY_SHARDS");
        let e = with(&[("METRICS_MAX_USER_SERIES", "1e3")]).unwrap_err();
        assert_eq!(e.var, "METRICS_MAX_USER_SERIES");
    }

    #[test]
    fn policy_errors_name_the_var() {
        let e = with(&[("SHARD_POLICY", "hash:shards=0")]).unwrap_err();
        assert_eq!(e.var, "SHARD_POLICY");
        assert_eq!(e.value, "hash:shards=0");
        assert!(!e.allowed.is_empty());
    }

    #[test]
    fn tier_errors() {
        for bad in [
            "nope",
            "{}",
            r#"{"pro":{"limit":0,"latencyP95Ms":1,"availability":99}}"#,
            r#"{"pro":{"limit":5,"latencyP95Ms":0,"availability":99}}"#,
            r#"{"pro":{"limit":5,"latencyP95Ms":1,"availability":100}}"#,
            r#"{"p/ro":{"limit":5,"latencyP95Ms":1,"availability":99}}"#,
            r#"{"pro":{"limit":5,"latencyP95Ms":1,"availability":99,"x":1}}"#,
        ] {
            let v = [("TIERS", bad)];
            let mut all: Vec<(&str, &str)> = SECRETS.to_vec();
            all.extend_from_slice(&v);
            let e = Config::from_vars(all.as_slice()).unwrap_err();
            assert_eq!(e.var, "TIERS", "{bad}");
        }
    }

    #[test]
    fn secrets_are_required_and_not_echoed() {
        let e =
            Config::from_vars([("ADMIN_TOKEN", "fedcba9876543210fedc")].as_slice()).unwrap_err();
        assert_eq!(e.var, "HAPPY_MASTER_SECRET");
        assert!(!e.to_string().contains("fedcba"));
        let c = Config::from_vars([("HAPPY_MASTER_SECRET", "0123456789abcdef0123")].as_slice())
            .unwrap();
        assert!(c.admin_token.is_empty());
        let e = Config::from_vars(
            [
                ("HAPPY_MASTER_SECRET", "0123456789abcdef0123"),
                ("ADMIN_TOKEN", "short"),
            ]
            .as_slice(),
        )
        .unwrap_err();
        assert_eq!(e.var, "ADMIN_TOKEN");
        assert!(!e.to_string().contains("short"));
        let e = Config::from_vars([("HAPPY_MASTER_SECRET", "short")].as_slice()).unwrap_err();
        assert_eq!(e.var, "HAPPY_MASTER_SECRET");
        assert!(!e.to_string().contains("short"));
    }

    #[test]
    fn the_deprecated_secret_name_is_a_fallback() {
        let old = "the-deprecated-secret-name-0123";
        let c = Config::from_vars([("HANDY_MASTER_SECRET", old)].as_slice()).unwrap();
        assert_eq!(c.master_secret.expose(), old);
        assert_eq!(format!("{:?}", c.master_secret), "(secret hidden)");
        assert_eq!(c.token_keys, TokenKeys::derive(old));
        let c = Config::from_vars(
            [
                ("HANDY_MASTER_SECRET", old),
                ("HAPPY_MASTER_SECRET", "the-current-name-0123456"),
            ]
            .as_slice(),
        )
        .unwrap();
        assert_eq!(c.master_secret.expose(), "the-current-name-0123456");
    }

    #[test]
    fn default_tier_and_resolution() {
        let c = with(&[]).unwrap();
        assert_eq!(c.default_tier, "pro");
        assert_eq!(c.resolve_tier(None).0, "pro");
        assert_eq!(c.resolve_tier(Some("enterprise")).1.limit, 500);
        // An override naming a tier that is no longer configured falls back to the default.
        assert_eq!(c.resolve_tier(Some("gone")).0, "pro");
        let e = with(&[("DEFAULT_TIER", "gold")]).unwrap_err();
        assert_eq!(e.var, "DEFAULT_TIER");
        assert!(e.allowed.contains("enterprise, free, pro"), "{e}");
    }

    #[test]
    fn upstream_settings() {
        let c = with(&[]).unwrap();
        assert!(!c.upstream.enabled());
        assert!(!c.upstream.handles("message"));
        let c = with(&[("UPSTREAM", "service")]).unwrap();
        assert!(c.upstream.handles("message") && !c.upstream.handles("rpc-call"));
        assert!(c.upstream.posts_hooks());
        assert_eq!(
            (c.upstream.timeout_ms, c.upstream.max_in_flight),
            (4000, 64)
        );
        let e = with(&[("UPSTREAM", "https://backend.example/edge")]).unwrap_err();
        assert_eq!(e.var, "UPSTREAM_SECRET");
        let c = with(&[
            ("UPSTREAM", "https://backend.example/edge"),
            ("UPSTREAM_SECRET", "s"),
            ("UPSTREAM_EVENTS", "message,artifact-*"),
            ("UPSTREAM_HOOKS", "off"),
        ])
        .unwrap();
        assert_eq!(
            c.upstream.target,
            Target::Url("https://backend.example/edge".into())
        );
        assert!(c.upstream.handles("artifact-read") && !c.upstream.handles("session-alive"));
        assert!(!c.upstream.posts_hooks());
        assert_eq!(
            with(&[("UPSTREAM", "ftp://x")]).unwrap_err().var,
            "UPSTREAM"
        );
    }

    #[test]
    fn plain_http_upstreams_must_be_loopback_hosts() {
        for ok in [
            "http://127.0.0.1:9/events",
            "http://127.0.0.1:8788/events",
            "http://127.8.9.10/events",
            "http://localhost:8788/events",
            "http://LOCALHOST/events",
            "http://[::1]:8788/events",
        ] {
            let c = with(&[("UPSTREAM", ok)]).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(
                matches!(&c.upstream.target, Target::Url(u) if u.starts_with("http://")),
                "{ok}"
            );
        }
        for bad in [
            "http://localhost@evil.tld/",
            "http://localhost:8788@evil.tld/events",
            "http://127.0.0.1@evil.tld/",
            "http://127.0.0.1.evil.tld/",
            "http://localhost.evil.tld/",
            "http://localhostevil.tld/",
            "http://evil.tld/http://localhost",
            "http://user:pw@localhost/",
            "http://[::2]/",
            "http://128.0.0.1/",
            "http://",
            "http:localhost",
        ] {
            let e = with(&[("UPSTREAM", bad), ("UPSTREAM_SECRET", "s")]).unwrap_err();
            assert_eq!(e.var, "UPSTREAM", "{bad}");
            assert!(e.allowed.contains("loopback"), "{bad}: {e}");
        }
        // Credentials in an HTTPS URL are refused too (fetch would refuse them anyway).
        let e = with(&[
            ("UPSTREAM", "https://user:pw@backend.example/edge"),
            ("UPSTREAM_SECRET", "s"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "UPSTREAM");
        assert_eq!(
            with(&[("UPSTREAM", "service"), ("UPSTREAM_EVENTS", "a b")])
                .unwrap_err()
                .var,
            "UPSTREAM_EVENTS"
        );
        assert_eq!(
            with(&[("UPSTREAM_TIMEOUT_MS", "5")]).unwrap_err().var,
            "UPSTREAM_TIMEOUT_MS"
        );
        assert_eq!(with(&[]).unwrap().upstream.hook_bounds, Bounds::default());
        assert_eq!(
            (Bounds::default().max_hooks, Bounds::default().max_bytes),
            (1_000, 1 << 20)
        );
        let c = with(&[
            ("UPSTREAM_HOOKS_MAX", "16"),
            ("UPSTREAM_HOOKS_MAX_BYTES", "65536"),
        ])
        .unwrap();
        assert_eq!(
            c.upstream.hook_bounds,
            Bounds {
                max_hooks: 16,
                max_bytes: 65_536
            }
        );
        for (var, bad) in [
            ("UPSTREAM_HOOKS_MAX", "15"),
            ("UPSTREAM_HOOKS_MAX_BYTES", "1024"),
        ] {
            assert_eq!(with(&[(var, bad)]).unwrap_err().var, var);
        }
    }

    #[test]
    fn the_frame_guard_matches_the_config() {
        // scripts/entry.mjs refuses oversized frames before they enter wasm: its
        // default, range, code and texts must be the ones the wasm side uses.
        let js = include_str!("../../scripts/entry.mjs");
        for line in [
            format!("const DEFAULT_MAX_MESSAGE_BYTES = {DEFAULT_MAX_MESSAGE_BYTES};"),
            "const MIN_MESSAGE_BYTES = 128;".to_owned(),
            format!("const MAX_MESSAGE_BYTES_CAP = {};", 1 << 20),
            format!(
                "const MESSAGE_TOO_BIG = {};",
                crate::routing::envelope::MESSAGE_TOO_BIG
            ),
            "message: `frame is ${size} bytes; MAX_MESSAGE_BYTES is ${max}`,".to_owned(),
            r#"ws.close(MESSAGE_TOO_BIG, "message too big");"#.to_owned(),
        ] {
            assert!(js.contains(&line), "entry.mjs lacks `{line}`");
        }
        assert_eq!(
            with(&[("MAX_MESSAGE_BYTES", "127")]).unwrap_err().var,
            "MAX_MESSAGE_BYTES"
        );
        assert!(with(&[("MAX_MESSAGE_BYTES", "1048576")]).is_ok());
        assert!(with(&[("MAX_MESSAGE_BYTES", "1048577")]).is_err());
    }

    #[test]
    fn cors_origins_are_checked() {
        let c = with(&[]).unwrap();
        assert_eq!(
            c.cors.allow_origin(Some("https://happy.app")).as_deref(),
            Some("https://happy.app")
        );
        assert_eq!(c.cors.allow_origin(Some("https://evil.example")), None);
        let e = with(&[("CORS_ORIGINS", "happy.app")]).unwrap_err();
        assert_eq!(e.var, "CORS_ORIGINS");
    }
}
