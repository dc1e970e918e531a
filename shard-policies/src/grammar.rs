//! The `SHARD_POLICY` grammar: parsing into [`PolicyConfig`] and the canonical `Display`.
//!
//! ```text
//! policy   = name [ ":" param *( "," param ) ]
//! name     = "single" | "hash" | "session" | "rotate"
//! param    = key "=" value
//!
//! single                                     no parameters
//! hash     [shards=N|auto]                   default shards=auto
//! session  [others=base|hash] [shards=N|auto] shards only with others=hash (default auto)
//! rotate   period=DUR, drain=DUR [shards=N|auto]
//!
//! N        = 1..=1024 (decimal digits)
//! DUR      = digits ("s" | "m" | "h" | "d")   period 10s..=7d, drain 1s..=period
//! ```
//!
//! Names, keys and units are lowercase. Parameters may come in any order; whitespace around
//! the whole string, the name, keys and values is ignored. `Display` prints the canonical
//! form (defaults spelled out, keys in the order above, durations in their largest exact
//! unit), which parses back to the same value.

use crate::duration::{parse_secs, DurationError, Secs};
use crate::policy::{
    HashPolicy, Others, PolicyConfig, RotatePolicy, SessionPolicy, ShardCount, SinglePolicy,
};
use crate::rotation::{Rotation, RotationError};
use core::fmt;
use core::str::FromStr;
use thiserror::Error;

/// The policy names, as listed in errors.
const POLICY_NAMES: &str = "`single`, `hash`, `session`, `rotate`";

/// Why a `SHARD_POLICY` string was rejected. Each message names the part, the value and
/// what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GrammarError {
    /// Nothing but whitespace.
    #[error("shard policy is empty; expected one of {POLICY_NAMES}")]
    Empty,
    /// The name before `:` is not a policy.
    #[error("unknown shard policy `{name}`; expected one of {POLICY_NAMES}")]
    UnknownPolicy {
        /// The name as written.
        name: String,
    },
    /// `single` was given parameters.
    #[error("`{policy}` takes no parameters, got `{params}`")]
    NoParameters {
        /// The policy name.
        policy: &'static str,
        /// Everything after the `:`.
        params: String,
    },
    /// An empty parameter: `hash:`, `hash:shards=4,` or `a=1,,b=2`.
    #[error("empty parameter #{position} for `{policy}` (stray `,` or trailing `:`?)")]
    EmptyParameter {
        /// The policy name.
        policy: &'static str,
        /// 1-based position in the parameter list.
        position: usize,
    },
    /// A parameter without `=` or with an empty key.
    #[error("parameter `{param}` for `{policy}` is not `key=value`")]
    MalformedParameter {
        /// The policy name.
        policy: &'static str,
        /// The parameter as written.
        param: String,
    },
    /// A key the policy does not take.
    #[error("unknown key `{key}` for `{policy}`; allowed keys: {allowed}")]
    UnknownKey {
        /// The policy name.
        policy: &'static str,
        /// The key as written.
        key: String,
        /// The keys this policy takes.
        allowed: &'static str,
    },
    /// A key given twice.
    #[error("key `{key}` is given more than once for `{policy}`")]
    DuplicateKey {
        /// The policy name.
        policy: &'static str,
        /// The repeated key.
        key: &'static str,
    },
    /// A required key is absent.
    #[error("`{policy}` needs `{key}`, e.g. `rotate:period=10m,drain=2m`")]
    MissingKey {
        /// The policy name.
        policy: &'static str,
        /// The missing key.
        key: &'static str,
    },
    /// `shards` is neither `auto` nor an integer in 1..=1024.
    #[error("shards must be an integer 1..=1024 or `auto`, got `{value}`")]
    InvalidShards {
        /// The value as written.
        value: String,
    },
    /// `others` is neither `base` nor `hash`.
    #[error("others must be `base` or `hash`, got `{value}`")]
    InvalidOthers {
        /// The value as written.
        value: String,
    },
    /// `session` got `shards` while its others go to the base shard.
    #[error(
        "`shards` only applies to `session:others=hash`; add `others=hash` or remove `shards`"
    )]
    ShardsWithoutHash,
    /// A duration is not `<digits><s|m|h|d>`.
    #[error("{key} must be a whole number followed by s, m, h or d (e.g. `30s`, `10m`, `1h`, `1d`), got `{value}`")]
    InvalidDuration {
        /// `period` or `drain`.
        key: &'static str,
        /// The value as written.
        value: String,
    },
    /// A well-formed duration outside its range.
    #[error("{key} must be within {allowed}, got `{value}`")]
    DurationOutOfRange {
        /// `period` or `drain`.
        key: &'static str,
        /// The value as written.
        value: String,
        /// The allowed range.
        allowed: &'static str,
    },
    /// `drain` is longer than `period`.
    #[error("drain `{drain}` is longer than period `{period}`; drain must be at most the period so that only one old epoch drains at a time")]
    DrainLongerThanPeriod {
        /// The drain as written.
        drain: String,
        /// The period as written.
        period: String,
    },
}

impl FromStr for PolicyConfig {
    type Err = GrammarError;

    fn from_str(s: &str) -> Result<Self, GrammarError> {
        parse(s)
    }
}

impl PolicyConfig {
    /// Parses a `SHARD_POLICY` string (same as `s.parse()`).
    pub fn parse(s: &str) -> Result<Self, GrammarError> {
        parse(s)
    }
}

/// Raw values of the keys a policy may take, as written.
#[derive(Default)]
struct Params<'s> {
    shards: Option<&'s str>,
    others: Option<&'s str>,
    period: Option<&'s str>,
    drain: Option<&'s str>,
}

fn parse(input: &str) -> Result<PolicyConfig, GrammarError> {
    let input = input.trim();
    if input.is_empty() {
        return Err(GrammarError::Empty);
    }
    let (name, params) = match input.split_once(':') {
        Some((name, params)) => (name.trim(), Some(params)),
        None => (input, None),
    };
    match name {
        "single" => match params {
            None => Ok(PolicyConfig::Single(SinglePolicy)),
            Some(params) => Err(GrammarError::NoParameters {
                policy: "single",
                params: params.to_owned(),
            }),
        },
        "hash" => {
            let p = split_params("hash", params, &["shards"], "`shards`")?;
            Ok(PolicyConfig::Hash(HashPolicy {
                shards: shard_count(p.shards)?,
            }))
        }
        "session" => {
            let p = split_params(
                "session",
                params,
                &["others", "shards"],
                "`others`, `shards`",
            )?;
            let others = match p.others {
                None | Some("base") if p.shards.is_some() => {
                    return Err(GrammarError::ShardsWithoutHash)
                }
                None | Some("base") => Others::Base,
                Some("hash") => Others::Hash(shard_count(p.shards)?),
                Some(other) => {
                    return Err(GrammarError::InvalidOthers {
                        value: other.to_owned(),
                    })
                }
            };
            Ok(PolicyConfig::Session(SessionPolicy { others }))
        }
        "rotate" => {
            let p = split_params(
                "rotate",
                params,
                &["period", "drain", "shards"],
                "`period`, `drain`, `shards`",
            )?;
            let period = p.period.ok_or(GrammarError::MissingKey {
                policy: "rotate",
                key: "period",
            })?;
            let drain = p.drain.ok_or(GrammarError::MissingKey {
                policy: "rotate",
                key: "drain",
            })?;
            let rotation = rotation(period, drain)?;
            let shards = p.shards.map(|v| shard_count(Some(v))).transpose()?;
            Ok(PolicyConfig::Rotate(RotatePolicy { rotation, shards }))
        }
        _ => Err(GrammarError::UnknownPolicy {
            name: name.to_owned(),
        }),
    }
}

/// Splits `k=v,k=v`, checking keys against `keys` (the policy's) and rejecting repeats.
fn split_params<'s>(
    policy: &'static str,
    params: Option<&'s str>,
    keys: &[&'static str],
    allowed: &'static str,
) -> Result<Params<'s>, GrammarError> {
    let mut out = Params::default();
    let Some(params) = params else {
        return Ok(out);
    };
    for (i, param) in params.split(',').enumerate() {
        let param = param.trim();
        if param.is_empty() {
            return Err(GrammarError::EmptyParameter {
                policy,
                position: i + 1,
            });
        }
        let malformed = || GrammarError::MalformedParameter {
            policy,
            param: param.to_owned(),
        };
        let (key, value) = param.split_once('=').ok_or_else(malformed)?;
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(malformed());
        }
        let Some(&key) = keys.iter().find(|&&k| k == key) else {
            return Err(GrammarError::UnknownKey {
                policy,
                key: key.to_owned(),
                allowed,
            });
        };
        let slot = match key {
            "shards" => &mut out.shards,
            "others" => &mut out.others,
            "period" => &mut out.period,
            _ => &mut out.drain,
        };
        if slot.replace(value).is_some() {
            return Err(GrammarError::DuplicateKey { policy, key });
        }
    }
    Ok(out)
}

/// `None` (absent) means `auto`.
fn shard_count(value: Option<&str>) -> Result<ShardCount, GrammarError> {
    let Some(value) = value else {
        return Ok(ShardCount::AUTO);
    };
    if value == "auto" {
        return Ok(ShardCount::AUTO);
    }
    let invalid = || GrammarError::InvalidShards {
        value: value.to_owned(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    value
        .parse::<u32>()
        .ok()
        .and_then(ShardCount::fixed)
        .ok_or_else(invalid)
}

fn rotation(period: &str, drain: &str) -> Result<Rotation, GrammarError> {
    const PERIOD_RANGE: &str = "10s..=7d";
    const DRAIN_RANGE: &str = "1s..=period";
    let secs = |key: &'static str, value: &str, allowed: &'static str| {
        parse_secs(value).map_err(|e| match e {
            DurationError::Malformed => GrammarError::InvalidDuration {
                key,
                value: value.to_owned(),
            },
            DurationError::Overflow => GrammarError::DurationOutOfRange {
                key,
                value: value.to_owned(),
                allowed,
            },
        })
    };
    let period_secs = secs("period", period, PERIOD_RANGE)?;
    let drain_secs = secs("drain", drain, DRAIN_RANGE)?;
    Rotation::try_new(period_secs, drain_secs).map_err(|e| match e {
        RotationError::PeriodOutOfRange { .. } => GrammarError::DurationOutOfRange {
            key: "period",
            value: period.to_owned(),
            allowed: PERIOD_RANGE,
        },
        RotationError::DrainTooShort { .. } => GrammarError::DurationOutOfRange {
            key: "drain",
            value: drain.to_owned(),
            allowed: DRAIN_RANGE,
        },
        RotationError::DrainLongerThanPeriod { .. } => GrammarError::DrainLongerThanPeriod {
            drain: drain.to_owned(),
            period: period.to_owned(),
        },
    })
}

impl fmt::Display for PolicyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyConfig::Single(_) => f.write_str("single"),
            PolicyConfig::Hash(p) => write!(f, "hash:shards={}", p.shards),
            PolicyConfig::Session(SessionPolicy {
                others: Others::Base,
            }) => f.write_str("session"),
            PolicyConfig::Session(SessionPolicy {
                others: Others::Hash(n),
            }) => {
                write!(f, "session:others=hash,shards={n}")
            }
            PolicyConfig::Rotate(p) => {
                let period = Secs(u64::from(p.rotation.period_secs()));
                let drain = Secs(u64::from(p.rotation.drain_secs()));
                write!(f, "rotate:period={period},drain={drain}")?;
                match p.shards {
                    Some(n) => write!(f, ",shards={n}"),
                    None => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> PolicyConfig {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn err(s: &str) -> GrammarError {
        match s.parse::<PolicyConfig>() {
            Ok(c) => panic!("{s:?} parsed as {c}"),
            Err(e) => e,
        }
    }

    fn msg(s: &str) -> String {
        err(s).to_string()
    }

    #[test]
    fn parses_every_policy_and_prints_it_canonically() {
        for (input, canonical) in [
            ("single", "single"),
            ("hash", "hash:shards=auto"),
            ("hash:shards=8", "hash:shards=8"),
            ("hash:shards=auto", "hash:shards=auto"),
            ("hash:shards=1024", "hash:shards=1024"),
            ("hash:shards=008", "hash:shards=8"),
            ("session", "session"),
            ("session:others=base", "session"),
            ("session:others=hash", "session:others=hash,shards=auto"),
            (
                "session:others=hash,shards=4",
                "session:others=hash,shards=4",
            ),
            (
                "session:shards=4,others=hash",
                "session:others=hash,shards=4",
            ),
            ("rotate:period=10m,drain=2m", "rotate:period=10m,drain=2m"),
            (
                "rotate:period=600s,drain=120s",
                "rotate:period=10m,drain=2m",
            ),
            (
                "rotate:drain=5m,period=1h,shards=auto",
                "rotate:period=1h,drain=5m,shards=auto",
            ),
            (
                "rotate:period=1d,drain=1d,shards=16",
                "rotate:period=1d,drain=1d,shards=16",
            ),
            ("rotate:period=90s,drain=1s", "rotate:period=90s,drain=1s"),
            ("  hash : shards = 4 ", "hash:shards=4"),
        ] {
            let cfg = ok(input);
            assert_eq!(cfg.to_string(), canonical, "{input:?}");
            assert_eq!(ok(canonical), cfg, "{canonical:?}");
        }
    }

    #[test]
    fn parsed_values_are_the_expected_structures() {
        assert_eq!(ok("single"), PolicyConfig::Single(SinglePolicy));
        assert_eq!(
            ok("hash:shards=8"),
            PolicyConfig::Hash(HashPolicy {
                shards: ShardCount::fixed(8).unwrap()
            })
        );
        assert_eq!(
            ok("session:others=hash,shards=4"),
            PolicyConfig::Session(SessionPolicy {
                others: Others::Hash(ShardCount::fixed(4).unwrap())
            })
        );
        assert_eq!(
            ok("rotate:period=1h,drain=5m,shards=auto"),
            PolicyConfig::Rotate(RotatePolicy {
                rotation: Rotation::try_new(3600, 300).unwrap(),
                shards: Some(ShardCount::AUTO),
            })
        );
        assert_eq!(
            PolicyConfig::parse("hash:shards=2"),
            "hash:shards=2".parse()
        );
    }

    #[test]
    fn empty() {
        assert_eq!(err(""), GrammarError::Empty);
        assert_eq!(err("  \n"), GrammarError::Empty);
        assert_eq!(
            msg(""),
            "shard policy is empty; expected one of `single`, `hash`, `session`, `rotate`"
        );
    }

    #[test]
    fn unknown_policy_lists_the_valid_ones() {
        assert_eq!(
            err("hashed:shards=2"),
            GrammarError::UnknownPolicy {
                name: "hashed".into()
            }
        );
        assert_eq!(
            err(":shards=2"),
            GrammarError::UnknownPolicy { name: "".into() }
        );
        assert_eq!(
            msg("Hash"),
            "unknown shard policy `Hash`; expected one of `single`, `hash`, `session`, `rotate`"
        );
    }

    #[test]
    fn single_takes_no_parameters() {
        assert_eq!(
            msg("single:shards=2"),
            "`single` takes no parameters, got `shards=2`"
        );
        assert_eq!(
            err("single:"),
            GrammarError::NoParameters {
                policy: "single",
                params: "".into()
            }
        );
    }

    #[test]
    fn empty_parameters() {
        assert_eq!(
            err("hash:"),
            GrammarError::EmptyParameter {
                policy: "hash",
                position: 1
            }
        );
        assert_eq!(
            err("hash:shards=4,"),
            GrammarError::EmptyParameter {
                policy: "hash",
                position: 2
            }
        );
        assert_eq!(
            msg("rotate:period=1h,,drain=1m"),
            "empty parameter #2 for `rotate` (stray `,` or trailing `:`?)"
        );
    }

    #[test]
    fn malformed_parameters() {
        assert_eq!(
            msg("hash:shards"),
            "parameter `shards` for `hash` is not `key=value`"
        );
        assert_eq!(
            err("hash:=4"),
            GrammarError::MalformedParameter {
                policy: "hash",
                param: "=4".into()
            }
        );
    }

    #[test]
    fn unknown_keys_list_the_allowed_ones() {
        assert_eq!(
            msg("hash:shard=4"),
            "unknown key `shard` for `hash`; allowed keys: `shards`"
        );
        assert_eq!(
            msg("session:period=1h"),
            "unknown key `period` for `session`; allowed keys: `others`, `shards`"
        );
        assert_eq!(
            msg("rotate:period=1h,drain=1m,others=hash"),
            "unknown key `others` for `rotate`; allowed keys: `period`, `drain`, `shards`"
        );
        assert_eq!(
            err("hash:Shards=4"),
            GrammarError::UnknownKey {
                policy: "hash",
                key: "Shards".into(),
                allowed: "`shards`"
            }
        );
    }

    #[test]
    fn duplicate_keys() {
        assert_eq!(
            msg("hash:shards=4,shards=8"),
            "key `shards` is given more than once for `hash`"
        );
        assert_eq!(
            err("rotate:period=1h,period=2h,drain=1m"),
            GrammarError::DuplicateKey {
                policy: "rotate",
                key: "period"
            }
        );
        assert_eq!(
            err("session:others=hash,others=hash"),
            GrammarError::DuplicateKey {
                policy: "session",
                key: "others"
            }
        );
        assert_eq!(
            err("rotate:drain=1m,period=1h,drain=2m"),
            GrammarError::DuplicateKey {
                policy: "rotate",
                key: "drain"
            }
        );
    }

    #[test]
    fn missing_keys() {
        assert_eq!(
            msg("rotate"),
            "`rotate` needs `period`, e.g. `rotate:period=10m,drain=2m`"
        );
        assert_eq!(
            err("rotate:drain=1m"),
            GrammarError::MissingKey {
                policy: "rotate",
                key: "period"
            }
        );
        assert_eq!(
            err("rotate:period=1h"),
            GrammarError::MissingKey {
                policy: "rotate",
                key: "drain"
            }
        );
    }

    #[test]
    fn invalid_shards_say_what_is_allowed() {
        assert_eq!(
            msg("hash:shards=0"),
            "shards must be an integer 1..=1024 or `auto`, got `0`"
        );
        for bad in [
            "1025",
            "-1",
            "+4",
            "4.0",
            "",
            "AUTO",
            "99999999999",
            "0x10",
            "4 4",
        ] {
            assert_eq!(
                err(&format!("hash:shards={bad}")),
                GrammarError::InvalidShards { value: bad.into() },
                "{bad:?}"
            );
        }
        assert_eq!(
            err("rotate:period=1h,drain=1m,shards=0"),
            GrammarError::InvalidShards { value: "0".into() }
        );
        assert_eq!(
            err("session:others=hash,shards=2000"),
            GrammarError::InvalidShards {
                value: "2000".into()
            }
        );
    }

    #[test]
    fn invalid_others() {
        assert_eq!(
            msg("session:others=ring"),
            "others must be `base` or `hash`, got `ring`"
        );
    }

    #[test]
    fn shards_need_others_hash() {
        assert_eq!(err("session:shards=4"), GrammarError::ShardsWithoutHash);
        assert_eq!(
            err("session:others=base,shards=4"),
            GrammarError::ShardsWithoutHash
        );
        assert_eq!(
            msg("session:shards=auto"),
            "`shards` only applies to `session:others=hash`; add `others=hash` or remove `shards`"
        );
    }

    #[test]
    fn malformed_durations() {
        assert_eq!(
            msg("rotate:period=10,drain=1m"),
            "period must be a whole number followed by s, m, h or d (e.g. `30s`, `10m`, `1h`, `1d`), got `10`"
        );
        for bad in ["1h30m", "10ms", "1.5h", "-1m", "m", "", "10M"] {
            assert_eq!(
                err(&format!("rotate:period=1h,drain={bad}")),
                GrammarError::InvalidDuration {
                    key: "drain",
                    value: bad.into()
                },
                "{bad:?}"
            );
        }
    }

    #[test]
    fn durations_out_of_range() {
        assert_eq!(
            msg("rotate:period=5s,drain=1s"),
            "period must be within 10s..=7d, got `5s`"
        );
        assert_eq!(
            err("rotate:period=8d,drain=1m"),
            GrammarError::DurationOutOfRange {
                key: "period",
                value: "8d".into(),
                allowed: "10s..=7d"
            }
        );
        assert_eq!(
            err("rotate:period=99999999999999999999d,drain=1m"),
            GrammarError::DurationOutOfRange {
                key: "period",
                value: "99999999999999999999d".into(),
                allowed: "10s..=7d"
            }
        );
        assert_eq!(
            msg("rotate:period=1h,drain=0s"),
            "drain must be within 1s..=period, got `0s`"
        );
        assert_eq!(
            err("rotate:period=1h,drain=99999999999999999999d"),
            GrammarError::DurationOutOfRange {
                key: "drain",
                value: "99999999999999999999d".into(),
                allowed: "1s..=period"
            }
        );
    }

    #[test]
    fn drain_longer_than_period() {
        assert_eq!(
            msg("rotate:period=10m,drain=15m"),
            "drain `15m` is longer than period `10m`; drain must be at most the period so that only one old epoch drains at a time"
        );
        assert_eq!(
            err("rotate:period=60s,drain=61s"),
            GrammarError::DrainLongerThanPeriod {
                drain: "61s".into(),
                period: "60s".into()
            }
        );
    }
}
