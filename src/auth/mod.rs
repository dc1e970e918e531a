//! Credentials as the platform issues them (platform-protocol.md §1, §2): its Ed25519 tokens,
//! its tickets, which credential of a request counts, the verified-token cache, and the
//! operator's admin token. Pure: time comes in as arguments.

pub mod b64;
pub mod cache;
pub mod revocation;
pub mod secret;
pub use secret::Secret;
pub mod ticket;
pub mod ticket_book;
pub mod token;

use subtle::ConstantTimeEq;

pub use cache::TokenCache;
pub use ticket::{Ticket, TicketError};
pub use token::{MintClaims, TokenError, TokenKeys, Verified};

/// The token a socket was opened with, so the socket ends with it: the token's revocation
/// hash and expiry (ms). A ticket carries the one of the token it was issued for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRef {
    pub token_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl TokenRef {
    /// The reference of a verified token whose `exp` (seconds) is `exp_s`.
    pub fn of(token: &str, exp_s: Option<u64>) -> Self {
        Self {
            token_hash: token::revocation_hash(token),
            expires_at: exp_s.map(|s| s.saturating_mul(1000)),
        }
    }
}

/// The credential an upgrade presents, in the platform's order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// `?ticket=`: wins over any token, with no fallback when it is bad.
    Ticket(&'a str),
    /// `?token=`, else `Authorization: Bearer`.
    Token(&'a str),
    Missing,
}

/// Picks an upgrade's credential: a non-empty `ticket` query parameter, then a non-empty
/// `token` query parameter, then the `Authorization: Bearer` header.
pub fn upgrade_credential<'a>(
    query_ticket: Option<&'a str>,
    query_token: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Credential<'a> {
    if let Some(t) = query_ticket.filter(|t| !t.is_empty()) {
        return Credential::Ticket(t);
    }
    if let Some(t) = query_token.filter(|t| !t.is_empty()) {
        return Credential::Token(t);
    }
    match bearer(authorization) {
        Some(t) => Credential::Token(t),
        None => Credential::Missing,
    }
}

/// The token of an `Authorization: Bearer <token>` header. The platform requires the exact
/// `Bearer ` prefix; a lowercase scheme and surrounding spaces are tolerated here.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let h = authorization?.trim();
    h.strip_prefix("Bearer ")
        .or_else(|| h.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Constant-time comparison for the admin token. An empty expected token never matches, so
/// an unset `ADMIN_TOKEN` locks the admin endpoints.
pub fn admin_token_matches(given: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_precedence() {
        let b = Some("Bearer h");
        assert_eq!(
            upgrade_credential(Some("tk"), Some("q"), b),
            Credential::Ticket("tk")
        );
        assert_eq!(
            upgrade_credential(Some(""), Some("q"), b),
            Credential::Token("q")
        );
        assert_eq!(
            upgrade_credential(None, Some(""), b),
            Credential::Token("h")
        );
        assert_eq!(
            upgrade_credential(None, None, Some("Basic x")),
            Credential::Missing
        );
        assert_eq!(
            upgrade_credential(None, None, Some("Bearer ")),
            Credential::Missing
        );
        assert_eq!(upgrade_credential(None, None, None), Credential::Missing);
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("  bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Token abc")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn admin_token_compare() {
        assert!(admin_token_matches("s3cret", "s3cret"));
        assert!(!admin_token_matches("s3cre", "s3cret"));
        assert!(!admin_token_matches("", ""));
    }
}
