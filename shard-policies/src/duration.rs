//! Whole-second durations as written in `SHARD_POLICY`: `30s`, `10m`, `1h`, `1d`.
//!
//! Only one number and one unit: compound forms like `1h30m` are rejected (write `90m`),
//! which keeps the canonical form unique and the parser trivially correct.

use core::fmt;

/// Why a duration string was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DurationError {
    /// Not `<digits><unit>` with unit one of `s`, `m`, `h`, `d`.
    Malformed,
    /// Well formed but does not fit in u64 seconds.
    Overflow,
}

/// Parses `<digits><s|m|h|d>` into seconds.
pub(crate) fn parse_secs(text: &str) -> Result<u64, DurationError> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    let scale: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(DurationError::Malformed),
    };
    if digits.is_empty() {
        return Err(DurationError::Malformed);
    }
    let mut value: u64 = 0;
    for b in digits.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or(DurationError::Overflow)?;
    }
    value.checked_mul(scale).ok_or(DurationError::Overflow)
}

/// Displays seconds in the largest unit that divides them exactly (`600` -> `10m`,
/// `90` -> `90s`): the canonical form, so `parse_secs(&Secs(x).to_string()) == Ok(x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Secs(pub u64);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s != 0 && s.is_multiple_of(86_400) {
            write!(f, "{}d", s / 86_400)
        } else if s != 0 && s.is_multiple_of(3600) {
            write!(f, "{}h", s / 3600)
        } else if s != 0 && s.is_multiple_of(60) {
            write!(f, "{}m", s / 60)
        } else {
            write!(f, "{s}s")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_secs("30s"), Ok(30));
        assert_eq!(parse_secs("10m"), Ok(600));
        assert_eq!(parse_secs("1h"), Ok(3600));
        assert_eq!(parse_secs("2d"), Ok(172_800));
        assert_eq!(parse_secs("0s"), Ok(0));
        assert_eq!(parse_secs("007m"), Ok(420));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "", "s", "10", "10ms", "1h30m", "-1s", "+1s", "1.5h", "10 m", "10M", " 1s", "1s ",
        ] {
            assert_eq!(parse_secs(bad), Err(DurationError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn reports_overflow() {
        assert_eq!(
            parse_secs("99999999999999999999999s"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            parse_secs("18446744073709551615d"),
            Err(DurationError::Overflow)
        );
    }

    #[test]
    fn displays_canonically_and_round_trips() {
        assert_eq!(Secs(0).to_string(), "0s");
        assert_eq!(Secs(90).to_string(), "90s");
        assert_eq!(Secs(600).to_string(), "10m");
        assert_eq!(Secs(5400).to_string(), "90m");
        assert_eq!(Secs(7200).to_string(), "2h");
        assert_eq!(Secs(86_400 * 7).to_string(), "7d");
        for s in [
            0u64,
            1,
            59,
            60,
            61,
            3599,
            3600,
            86_399,
            86_400,
            604_800,
            u64::MAX,
        ] {
            assert_eq!(parse_secs(&Secs(s).to_string()), Ok(s));
        }
    }
}
