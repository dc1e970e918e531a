//! The id rule shared by user, session and machine ids.
//!
//! Ids end up inside Durable Object names and WebSocket tags, so they are kept to a small,
//! printable alphabet: 1..=128 characters of `[A-Za-z0-9_.:-]`. `%` is deliberately not in
//! the alphabet: [`crate::name`] uses it as its escape character.

use thiserror::Error;

/// Longest id accepted, in bytes (every allowed character is one byte).
pub const MAX_ID_LEN: usize = 128;

/// Why an id was rejected by [`validate_id`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdError {
    /// The id is the empty string.
    #[error("id is empty; expected 1..=128 characters of [A-Za-z0-9_.:-]")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`] bytes.
    #[error("id is {len} bytes long; at most 128 characters of [A-Za-z0-9_.:-] are allowed")]
    TooLong {
        /// Length of the rejected id in bytes.
        len: usize,
    },
    /// The id contains a character outside `[A-Za-z0-9_.:-]`.
    #[error("id contains {ch:?} at byte {index}; only [A-Za-z0-9_.:-] is allowed")]
    InvalidChar {
        /// The first offending character.
        ch: char,
        /// Its byte offset in the id.
        index: usize,
    },
}

/// Is `b` one of `[A-Za-z0-9_.:-]`?
#[inline]
pub fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-')
}

/// Checks the id rule: 1..=128 characters of `[A-Za-z0-9_.:-]`.
///
/// The gateway applies it to `sub`, `sessionId` and `machineId`; [`crate::parse_object_name`]
/// applies it to the ids it decodes, so a parsed name always carries valid ids.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    // Check the alphabet before the length so a long id with a bad character is reported
    // for the character, which is the more useful fix.
    if let Some((index, ch)) = id
        .char_indices()
        .find(|&(_, c)| !c.is_ascii() || !is_id_byte(c as u8))
    {
        return Err(IdError::InvalidChar { ch, index });
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong { len: id.len() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_whole_alphabet_and_the_length_bounds() {
        assert_eq!(validate_id("a"), Ok(()));
        assert_eq!(validate_id("AZaz09_.:-"), Ok(()));
        assert_eq!(validate_id(&"x".repeat(MAX_ID_LEN)), Ok(()));
        assert_eq!(validate_id(":::"), Ok(()));
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(validate_id(""), Err(IdError::Empty));
    }

    #[test]
    fn rejects_too_long() {
        assert_eq!(
            validate_id(&"x".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong { len: 129 })
        );
    }

    #[test]
    fn rejects_each_kind_of_bad_character() {
        for (id, ch, index) in [
            ("a%3A", '%', 1),
            ("a b", ' ', 1),
            ("a/b", '/', 1),
            ("é", 'é', 0),
            ("ok\n", '\n', 2),
            ("a@b", '@', 1),
        ] {
            assert_eq!(
                validate_id(id),
                Err(IdError::InvalidChar { ch, index }),
                "{id:?}"
            );
        }
    }

    #[test]
    fn bad_character_wins_over_length() {
        let id = format!("{}%", "x".repeat(200));
        assert_eq!(
            validate_id(&id),
            Err(IdError::InvalidChar {
                ch: '%',
                index: 200
            })
        );
    }

    #[test]
    fn error_messages_say_what_is_allowed() {
        let msg = validate_id("a b").unwrap_err().to_string();
        assert!(msg.contains("[A-Za-z0-9_.:-]"), "{msg}");
    }
}
