//! HS256 JSON Web Tokens: verification for the gateway, minting for dev tools and tests.
//!
//! Only HS256 is accepted. The algorithm is read from the header and compared
//! exactly, so `alg: none`, `HS512` or a missing `alg` never reach signature
//! checking. Time comes in as `now_s` (seconds since the epoch) so this module
//! stays pure.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ids::{validate_id, IdError};

type HmacSha256 = Hmac<Sha256>;

/// Tokens longer than this are refused before any decoding work.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The claims the gateway relies on. `sub` and `tier` are validated by
/// [`verify`]; other claims in the token are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tier: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: pass it as `?token=<jwt>` or an `Authorization: Bearer <jwt>` header")]
    Missing,
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token algorithm `{0}` is not accepted; only HS256 is")]
    Algorithm(String),
    #[error("token signature does not verify")]
    Signature,
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("token claim `sub` is not a valid user id: {0}")]
    Subject(IdError),
}

impl AuthError {
    /// Stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::Expired { .. } => "token_expired",
            _ => "invalid_token",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
}

/// Verifies `token` against `secret` at time `now_s` and returns its claims.
pub fn verify(token: &str, secret: &[u8], now_s: u64) -> Result<Claims, AuthError> {
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("expected three dot-separated parts"));
    };
    let header: Header = decode_json(h64, "header")?;
    match header.alg.as_deref() {
        Some("HS256") => {}
        Some(other) => return Err(AuthError::Algorithm(other.chars().take(32).collect())),
        None => return Err(AuthError::Algorithm("(missing)".into())),
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s64)
        .map_err(|_| AuthError::Malformed("signature is not base64url"))?;
    let expected = sign(secret, h64, p64);
    if !bool::from(expected.as_slice().ct_eq(sig.as_slice())) {
        return Err(AuthError::Signature);
    }
    let claims: Claims = decode_json(p64, "payload")?;
    validate_id(&claims.sub).map_err(AuthError::Subject)?;
    if claims.exp <= now_s {
        return Err(AuthError::Expired {
            exp: claims.exp,
            now: now_s,
        });
    }
    Ok(claims)
}

/// Mints an HS256 token. Used by `make token`, the load tests and the
/// integration tests; the gateway itself never mints.
pub fn mint(claims: &Claims, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    // Serializing a struct of strings and integers cannot fail.
    let body = serde_json::to_vec(claims).unwrap_or_default();
    let payload = URL_SAFE_NO_PAD.encode(body);
    let sig = URL_SAFE_NO_PAD.encode(sign(secret, &header, &payload));
    format!("{header}.{payload}.{sig}")
}

fn sign(secret: &[u8], h64: &str, p64: &str) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; the
    // fallback keeps the function total without a panic path.
    match HmacSha256::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(h64.as_bytes());
            mac.update(b".");
            mac.update(p64.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(
    part: &str,
    what: &'static str,
) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| {
        AuthError::Malformed(if what == "header" {
            "header is not base64url"
        } else {
            "payload is not base64url"
        })
    })?;
    serde_json::from_slice(&bytes).map_err(|_| {
        AuthError::Malformed(if what == "header" {
            "header is not a JSON object with `alg`"
        } else {
            "payload must be JSON with string `sub`, string `tier` and integer `exp`"
        })
    })
}

/// Constant-time comparison for the admin token. An empty expected token
/// never matches, so an unset `ADMIN_TOKEN` locks the admin endpoints.
pub fn admin_token_matches(given: &str, expected: &str) -> bool {
    !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// Picks the token from `?token=` or an `Authorization: Bearer` header.
/// The query wins because browsers cannot set headers on a WebSocket.
pub fn token_from<'a>(query_token: Option<&'a str>, authorization: Option<&'a str>) -> &'a str {
    if let Some(t) = query_token.filter(|t| !t.is_empty()) {
        return t;
    }
    authorization
        .and_then(|h| {
            let h = h.trim();
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            tier: "pro".into(),
            exp,
        }
    }

    fn forge(header: &str, payload: &str, secret: &[u8]) -> String {
        let h = URL_SAFE_NO_PAD.encode(header);
        let p = URL_SAFE_NO_PAD.encode(payload);
        let s = URL_SAFE_NO_PAD.encode(sign(secret, &h, &p));
        format!("{h}.{p}.{s}")
    }

    #[test]
    fn round_trip() {
        let t = mint(&claims(2_000), SECRET);
        assert_eq!(verify(&t, SECRET, 1_000), Ok(claims(2_000)));
    }

    #[test]
    fn expired_at_exactly_exp() {
        let t = mint(&claims(1_000), SECRET);
        assert_eq!(
            verify(&t, SECRET, 1_000),
            Err(AuthError::Expired {
                exp: 1_000,
                now: 1_000
            })
        );
        assert_eq!(verify(&t, SECRET, 999).map(|c| c.exp), Ok(1_000));
    }

    #[test]
    fn wrong_secret_is_refused() {
        let t = mint(&claims(2_000), b"other");
        assert_eq!(verify(&t, SECRET, 1), Err(AuthError::Signature));
    }

    #[test]
    fn tampered_payload_is_refused() {
        let t = mint(&claims(2_000), SECRET);
        let mut parts: Vec<&str> = t.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(r#"{"sub":"mallory","tier":"enterprise","exp":2000}"#);
        parts[1] = &evil;
        assert_eq!(
            verify(&parts.join("."), SECRET, 1),
            Err(AuthError::Signature)
        );
    }

    #[test]
    fn alg_none_is_refused_even_without_signature() {
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
        let p = URL_SAFE_NO_PAD.encode(r#"{"sub":"alice","tier":"pro","exp":9999999999}"#);
        let t = format!("{h}.{p}.");
        assert_eq!(
            verify(&t, SECRET, 1),
            Err(AuthError::Algorithm("none".into()))
        );
    }

    #[test]
    fn other_algorithms_and_missing_alg_are_refused() {
        let body = r#"{"sub":"alice","tier":"pro","exp":9999999999}"#;
        let t = forge(r#"{"alg":"HS512"}"#, body, SECRET);
        assert_eq!(
            verify(&t, SECRET, 1),
            Err(AuthError::Algorithm("HS512".into()))
        );
        let t = forge(r#"{"typ":"JWT"}"#, body, SECRET);
        assert_eq!(
            verify(&t, SECRET, 1),
            Err(AuthError::Algorithm("(missing)".into()))
        );
    }

    #[test]
    fn malformed_tokens() {
        for t in [
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.x",
            "eyJhbGciOiJIUzI1NiJ9.e30.***",
        ] {
            assert!(
                matches!(verify(t, SECRET, 1), Err(AuthError::Malformed(_))),
                "{t}"
            );
        }
        assert_eq!(verify("", SECRET, 1), Err(AuthError::Missing));
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(verify(&long, SECRET, 1), Err(AuthError::TooLong));
    }

    #[test]
    fn claims_must_be_present_and_typed() {
        for body in [
            r#"{"sub":"alice","tier":"pro"}"#,
            r#"{"sub":"alice","exp":9999999999}"#,
            r#"{"tier":"pro","exp":9999999999}"#,
            r#"{"sub":"alice","tier":"pro","exp":"soon"}"#,
            r#"[1,2]"#,
        ] {
            let t = forge(r#"{"alg":"HS256"}"#, body, SECRET);
            assert!(
                matches!(verify(&t, SECRET, 1), Err(AuthError::Malformed(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn subject_must_be_a_valid_id() {
        for sub in ["", "a/b", "ü", &"x".repeat(129)] {
            let body = serde_json::json!({"sub": sub, "tier": "pro", "exp": 9_999_999_999u64});
            let t = forge(r#"{"alg":"HS256"}"#, &body.to_string(), SECRET);
            assert!(
                matches!(verify(&t, SECRET, 1), Err(AuthError::Subject(_))),
                "{sub}"
            );
        }
    }

    #[test]
    fn token_sources() {
        assert_eq!(token_from(Some("q"), Some("Bearer h")), "q");
        assert_eq!(token_from(Some(""), Some("Bearer h")), "h");
        assert_eq!(token_from(None, Some("  Bearer  h ")), "h");
        assert_eq!(token_from(None, Some("Basic h")), "");
        assert_eq!(token_from(None, None), "");
    }

    #[test]
    fn admin_token_compare() {
        assert!(admin_token_matches("s3cret", "s3cret"));
        assert!(!admin_token_matches("s3cre", "s3cret"));
        assert!(!admin_token_matches("", ""));
    }
}
