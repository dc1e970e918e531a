//! The shard policy switched at run time (docs/policies.md, "Switching at run time"): what
//! the `control` object keeps and every gateway isolate reads. `SHARD_POLICY` stays the
//! default; an operator sets a policy for everyone and, to canary one first, for some users.
//! Pure: the object and the gateway's cache around it are in the runtime layer.

use std::collections::BTreeMap;

use observability::exposition::PolicyGauges;
use serde::{Deserialize, Serialize};
use shard_policies::{parse_object_name, PolicyConfig};

/// How long a gateway isolate uses the control state it read before reading it again: the
/// bound within which every isolate follows a switch.
pub const REFRESH_MS: u64 = 2_000;
/// Users with a policy of their own at once (canaries); more are refused.
pub const MAX_USER_POLICIES: usize = 1_000;
/// The drain window of a switch when the operator names none.
pub const DEFAULT_DRAIN_MS: u64 = 60_000;
/// The window's bounds: the fleet's reconnects spread over it.
pub const MIN_DRAIN_MS: u64 = 1_000;
pub const MAX_DRAIN_MS: u64 = 3_600_000;

/// One policy an operator set, in its canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Switch {
    pub policy: String,
    pub since_ms: u64,
    pub drain_ms: u64,
}

/// Everything set at run time. `version` grows with every change, so a shard applies a
/// notice only when it is newer than the last one it applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PolicyState {
    pub version: u64,
    pub global: Option<Switch>,
    pub users: BTreeMap<String, Switch>,
}

/// Where a user's policy comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `SHARD_POLICY` in the deployed config.
    Config,
    /// Set for everyone through `PUT /admin/policy`.
    Runtime,
    /// Set for this user through `PUT /admin/users/{id}/policy`.
    User,
}

/// Why a switch was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    #[error("invalid policy: {0}")]
    Policy(#[from] shard_policies::GrammarError),
    #[error("drainMs must be within {MIN_DRAIN_MS}..={MAX_DRAIN_MS}, got {0}")]
    Drain(u64),
    #[error("at most {MAX_USER_POLICIES} users may have a policy of their own; clear one first")]
    TooManyUsers,
}

impl Switch {
    /// A validated switch: the policy parsed and kept in its canonical form.
    pub fn try_new(policy: &str, drain_ms: Option<u64>, now_ms: u64) -> Result<Self, SwitchError> {
        let parsed: PolicyConfig = policy.parse()?;
        let drain_ms = drain_ms.unwrap_or(DEFAULT_DRAIN_MS);
        if !(MIN_DRAIN_MS..=MAX_DRAIN_MS).contains(&drain_ms) {
            return Err(SwitchError::Drain(drain_ms));
        }
        Ok(Self {
            policy: parsed.to_string(),
            since_ms: now_ms,
            drain_ms,
        })
    }

    pub fn parsed(&self) -> Option<PolicyConfig> {
        self.policy.parse().ok()
    }
}

impl PolicyState {
    /// Sets (or with `None` clears) the policy for everyone.
    pub fn set_global(&mut self, s: Option<Switch>) {
        self.global = s;
        self.version += 1;
    }

    /// Sets (or clears) one user's policy.
    pub fn set_user(&mut self, user: &str, s: Option<Switch>) -> Result<(), SwitchError> {
        match s {
            Some(s) => {
                if !self.users.contains_key(user) && self.users.len() >= MAX_USER_POLICIES {
                    return Err(SwitchError::TooManyUsers);
                }
                self.users.insert(user.to_owned(), s);
            }
            None => {
                self.users.remove(user);
            }
        }
        self.version += 1;
        Ok(())
    }

    /// The policy `user`'s new sockets follow, where it comes from, and the drain window
    /// of the switch that set it (`None` for the config's).
    pub fn effective(&self, user: &str, default: &PolicyConfig) -> Effective {
        let chosen = self
            .users
            .get(user)
            .map(|s| (s, Source::User))
            .or_else(|| self.global.as_ref().map(|s| (s, Source::Runtime)));
        match chosen.and_then(|(s, src)| s.parsed().map(|p| (p, src, s.drain_ms))) {
            Some((policy, source, drain_ms)) => Effective {
                policy,
                source,
                drain_ms,
                version: self.version,
            },
            None => Effective {
                policy: *default,
                source: Source::Config,
                drain_ms: self
                    .global
                    .as_ref()
                    .map_or(DEFAULT_DRAIN_MS, |s| s.drain_ms),
                version: self.version,
            },
        }
    }
}

/// A user's policy as the state resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub policy: PolicyConfig,
    pub source: Source,
    pub drain_ms: u64,
    pub version: u64,
}

/// Whether `policy` places sockets on the shard object `name`; a name that does not parse
/// is not placed (it drains).
pub fn places(policy: &PolicyConfig, name: &str) -> bool {
    parse_object_name(name).is_some_and(|n| policy.places(&n.key))
}

/// The policy families of `/metrics`, appended to the global exposition: the policy new
/// sockets follow and its source, the control's version, the users with a policy of their
/// own, and the shards draining now (rotation or a switch; as of their last report).
pub fn exposition(default: &str, e: &Effective, users: usize, draining: u64) -> String {
    let source = match e.source {
        Source::Config => "config",
        Source::Runtime => "runtime",
        Source::User => "user",
    };
    let active = match e.source {
        Source::Config => default.to_owned(),
        _ => e.policy.to_string(),
    };
    observability::exposition::render_policy(&PolicyGauges {
        active,
        source,
        default: default.to_owned(),
        version: e.version,
        user_overrides: users as u64,
        draining_shards: draining,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> PolicyConfig {
        s.parse().unwrap()
    }

    #[test]
    fn a_switch_is_canonical_and_bounded() {
        let s = Switch::try_new(" hash ", None, 5).unwrap();
        assert_eq!(s.policy, "hash:shards=auto");
        assert_eq!(s.drain_ms, DEFAULT_DRAIN_MS);
        assert!(matches!(
            Switch::try_new("hash:shards=0", None, 0),
            Err(SwitchError::Policy(_))
        ));
        assert_eq!(
            Switch::try_new("single", Some(10), 0),
            Err(SwitchError::Drain(10))
        );
        assert_eq!(
            Switch::try_new("single", Some(MAX_DRAIN_MS + 1), 0),
            Err(SwitchError::Drain(MAX_DRAIN_MS + 1))
        );
    }

    #[test]
    fn a_user_policy_wins_over_the_global_one_which_wins_over_the_config() {
        let default = cfg("single");
        let mut st = PolicyState::default();
        assert_eq!(st.effective("a", &default).source, Source::Config);
        st.set_global(Some(Switch::try_new("hash", Some(5_000), 1).unwrap()));
        st.set_user("a", Some(Switch::try_new("session", None, 2).unwrap()))
            .unwrap();
        let a = st.effective("a", &default);
        assert_eq!((a.policy, a.source), (cfg("session"), Source::User));
        let b = st.effective("b", &default);
        assert_eq!((b.policy, b.source), (cfg("hash"), Source::Runtime));
        assert_eq!((b.drain_ms, b.version), (5_000, 2));
        st.set_user("a", None).unwrap();
        st.set_global(None);
        let a = st.effective("a", &default);
        assert_eq!(
            (a.policy, a.source, a.version),
            (default, Source::Config, 4)
        );
        // Back to the config: the drain window of the switch that cleared it is gone too.
        assert_eq!(a.drain_ms, DEFAULT_DRAIN_MS);
    }

    #[test]
    fn user_policies_are_bounded() {
        let mut st = PolicyState::default();
        let s = Switch::try_new("hash", None, 0).unwrap();
        for i in 0..MAX_USER_POLICIES {
            st.set_user(&format!("u{i}"), Some(s.clone())).unwrap();
        }
        assert_eq!(
            st.set_user("one-more", Some(s.clone())),
            Err(SwitchError::TooManyUsers)
        );
        // Replacing one that exists is not growth.
        st.set_user("u0", Some(s)).unwrap();
        assert_eq!(st.users.len(), MAX_USER_POLICIES);
    }

    #[test]
    fn the_policy_families_parse_as_prometheus_text() {
        let st = {
            let mut s = PolicyState::default();
            s.set_global(Some(Switch::try_new("hash", None, 0).unwrap()));
            s
        };
        let e = st.effective("x", &cfg("single"));
        let text = exposition("single", &e, 3, 2);
        assert!(text.contains(
            "edge_policy_info{policy=\"hash:shards=auto\",source=\"runtime\",default=\"single\"} 1"
        ));
        assert!(text.contains("edge_policy_version 1\n"));
        assert!(text.contains("edge_policy_user_overrides 3\n"));
        assert!(text.contains("edge_draining_shards 2\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
        }
    }

    #[test]
    fn places_reads_object_names() {
        assert!(places(&cfg("single"), "cm:alice"));
        assert!(!places(&cfg("single"), "cm:alice:h2"));
        assert!(places(&cfg("hash:shards=auto"), "cm:alice:h2"));
        assert!(!places(&cfg("hash"), "reg:0"));
    }
}
