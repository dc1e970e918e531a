//! Identifiers: the id rule for users, sessions and machines, and connection ids.

pub use shard_policies::{validate_id, IdError};

/// A connection id from 16 random bytes: 32 lowercase hex digits, which is
/// itself a valid id so clients can name it in an `exclude` filter.
pub fn connection_id(random: [u8; 16]) -> String {
    let mut s = String::with_capacity(32);
    for b in random {
        s.push(hex_digit(b >> 4));
        s.push(hex_digit(b & 0x0f));
    }
    s
}

fn hex_digit(n: u8) -> char {
    char::from_digit(u32::from(n), 16).unwrap_or('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_are_hex_and_valid_ids() {
        let id = connection_id([0xab; 16]);
        assert_eq!(id, "ab".repeat(16));
        assert!(validate_id(&id).is_ok());
        assert_ne!(connection_id([0; 16]), connection_id([1; 16]));
    }
}
