//! The platform's WebSocket tickets (platform-protocol.md §2.3), byte for byte.
//!
//! `base64url(payload) . base64url(HMAC-SHA256(master secret bytes, payload))`, where the
//! payload is the JSON `{"userId","exp","nonce"}` with `exp` in milliseconds. The MAC is over
//! the decoded bytes as received, so tickets the platform's server mints are accepted here and
//! ours there. Both parts must be canonical base64url (the MAC exactly 43 characters): the
//! platform's decoder is lenient, ours is not, so a ticket has one accepted spelling (see
//! [`b64`]). What the platform does not do, single use, is the home's job: this module
//! only says whether a ticket is authentic and within its window.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::b64;
use crate::protocol::ids::{validate_id, IdError};

type HmacSha256 = Hmac<Sha256>;

/// A ticket is valid for this long after it is minted...
pub const TTL_MS: u64 = 30_000;
/// ...plus this much clock skew.
pub const SKEW_MS: u64 = 5_000;
/// An HMAC-SHA256.
const MAC_BYTES: usize = 32;
/// Tickets longer than this are refused before decoding (ours are about 170 bytes).
pub const MAX_TICKET_BYTES: usize = 2048;

/// What a valid ticket says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub user_id: String,
    /// Expiry in epoch ms (the skew allowance comes on top).
    pub exp_ms: u64,
    pub nonce: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("ticket is longer than {MAX_TICKET_BYTES} bytes")]
    TooLong,
    #[error("ticket is malformed: {0}")]
    Malformed(&'static str),
    #[error("ticket expired at {exp_ms} (now {now_ms}, {SKEW_MS} ms skew allowed)")]
    Expired { exp_ms: u64, now_ms: u64 },
    #[error("ticket signature does not verify")]
    Signature,
    #[error("ticket `userId` is not a valid user id: {0}")]
    User(IdError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    user_id: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    nonce: Option<serde_json::Value>,
}

/// Mints a ticket for `user_id` at `now_ms` with a random `nonce` (a UUID v4 text).
pub fn mint(secret: &[u8], user_id: &str, now_ms: u64, nonce: &str) -> String {
    // Written by hand so the key order is the platform's; the strings are JSON-escaped.
    let body = format!(
        r#"{{"userId":{},"exp":{},"nonce":{}}}"#,
        serde_json::Value::from(user_id),
        now_ms.saturating_add(TTL_MS),
        serde_json::Value::from(nonce)
    );
    format!(
        "{}.{}",
        b64::encode(body.as_bytes()),
        b64::encode(&mac(secret, body.as_bytes()))
    )
}

/// Verifies a ticket at `now_ms`, in the platform's order: shape, payload, expiry, MAC.
pub fn verify(ticket: &str, secret: &[u8], now_ms: u64) -> Result<Ticket, TicketError> {
    if ticket.len() > MAX_TICKET_BYTES {
        return Err(TicketError::TooLong);
    }
    let mut parts = ticket.split('.');
    let (Some(p64), Some(s64), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(TicketError::Malformed("expected two dot-separated parts"));
    };
    if p64.is_empty() || s64.is_empty() {
        return Err(TicketError::Malformed("a part is empty"));
    }
    let payload =
        b64::decode(p64).ok_or(TicketError::Malformed("payload is not unpadded base64url"))?;
    let p: Payload = serde_json::from_slice(&payload)
        .map_err(|_| TicketError::Malformed("payload is not a JSON object"))?;
    let user_id = match p.user_id {
        Some(serde_json::Value::String(u)) if !u.is_empty() => u,
        _ => {
            return Err(TicketError::Malformed(
                "`userId` must be a non-empty string",
            ))
        }
    };
    let exp_ms = match p.exp.as_ref().and_then(serde_json::Value::as_f64) {
        Some(e) if e.is_finite() && e > 0.0 => e.floor() as u64,
        _ => return Err(TicketError::Malformed("`exp` must be a positive number")),
    };
    let nonce = match p.nonce {
        Some(serde_json::Value::String(n)) if !n.is_empty() && n.len() <= 128 => n,
        _ => return Err(TicketError::Malformed("`nonce` must be a non-empty string")),
    };
    if now_ms > exp_ms.saturating_add(SKEW_MS) {
        return Err(TicketError::Expired { exp_ms, now_ms });
    }
    let sig = b64::decode_array::<MAC_BYTES>(s64).ok_or(TicketError::Malformed(
        "signature is not 43 characters of unpadded base64url",
    ))?;
    let mut m = HmacSha256::new_from_slice(secret).map_err(|_| TicketError::Signature)?;
    m.update(&payload);
    m.verify_slice(&sig).map_err(|_| TicketError::Signature)?;
    validate_id(&user_id).map_err(TicketError::User)?;
    Ok(Ticket {
        user_id,
        exp_ms,
        nonce,
    })
}

fn mac(secret: &[u8], bytes: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length, so this cannot fail; an empty MAC never verifies.
    match HmacSha256::new_from_slice(secret) {
        Ok(mut m) => {
            m.update(bytes);
            m.finalize().into_bytes().to_vec()
        }
        Err(_) => Vec::new(),
    }
}

/// A UUID v4 in its text form, from 16 random bytes (what `crypto.randomUUID()` gives).
pub fn uuid_v4(mut b: [u8; 16]) -> String {
    if let Some(v) = b.get_mut(6) {
        *v = (*v & 0x0f) | 0x40;
    }
    if let Some(v) = b.get_mut(8) {
        *v = (*v & 0x3f) | 0x80;
    }
    let h = b64::hex(&b);
    let part = |r: std::ops::Range<usize>| h.get(r).unwrap_or_default();
    format!(
        "{}-{}-{}-{}-{}",
        part(0..8),
        part(8..12),
        part(12..16),
        part(16..20),
        part(20..32)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret-for-vitest-tests-min-32-chars";
    /// platform-protocol.md §2.3.
    const VECTOR: &str = "eyJ1c2VySWQiOiJ1c2VyX2FiYzEyMyIsImV4cCI6MTcwMDAwMDAzMDAwMCwibm9uY2UiOiIwMDAwMDAwMC0wMDAwLTQwMDAtODAwMC0wMDAwMDAwMDAwMDAifQ.XItWe3g7M_hQKvoJynymLK5hY74uC9oTy_EN3dAOjek";
    const NONCE: &str = "00000000-0000-4000-8000-000000000000";

    #[test]
    fn minted_ticket_equals_the_platform_vector() {
        assert_eq!(
            mint(SECRET, "user_abc123", 1_700_000_000_000, NONCE),
            VECTOR
        );
        let sig = VECTOR.split('.').nth(1).unwrap();
        assert_eq!(sig.len(), 43);
    }

    #[test]
    fn the_vector_verifies_within_its_window() {
        let t = verify(VECTOR, SECRET, 1_700_000_000_000).unwrap();
        assert_eq!(
            t,
            Ticket {
                user_id: "user_abc123".into(),
                exp_ms: 1_700_000_030_000,
                nonce: NONCE.into()
            }
        );
        // Up to exp + 5 s of skew, and not a millisecond later.
        assert!(verify(VECTOR, SECRET, 1_700_000_035_000).is_ok());
        assert_eq!(
            verify(VECTOR, SECRET, 1_700_000_035_001),
            Err(TicketError::Expired {
                exp_ms: 1_700_000_030_000,
                now_ms: 1_700_000_035_001
            })
        );
    }

    #[test]
    fn another_secret_is_refused() {
        assert_eq!(
            verify(
                VECTOR,
                b"some-other-secret-xxxxxxxxxxxxxxxxx",
                1_700_000_000_000
            ),
            Err(TicketError::Signature)
        );
    }

    #[test]
    fn the_mac_is_over_the_bytes_as_received() {
        // Same JSON meaning, other bytes (a space): the platform's MAC no longer matches,
        // so a verifier that re-serialized would accept what the platform refuses.
        let (_, sig) = VECTOR.split_once('.').unwrap();
        let spaced = br#"{"userId": "user_abc123","exp":1700000030000,"nonce":"00000000-0000-4000-8000-000000000000"}"#;
        let t = format!("{}.{sig}", b64::encode(spaced));
        assert_eq!(
            verify(&t, SECRET, 1_700_000_000_000),
            Err(TicketError::Signature)
        );
        // And a ticket over those exact bytes does verify.
        let t = format!(
            "{}.{}",
            b64::encode(spaced),
            b64::encode(&mac(SECRET, spaced))
        );
        assert!(verify(&t, SECRET, 1_700_000_000_000).is_ok());
    }

    #[test]
    fn a_ticket_has_exactly_one_accepted_spelling() {
        // The MAC is over the decoded payload, so a lenient decoder would accept every
        // spelling of either part (the platform's does; its tickets are canonical).
        let now = 1_700_000_000_000;
        let (p, s) = VECTOR.split_once('.').unwrap();
        assert_eq!(s.len(), 43);
        let mut variants = vec![
            format!("{VECTOR}="),
            format!("{p}=.{s}"),
            format!("{p}.{}", s.replace('_', "/")),
            format!("{p}.{}", s.replace('-', "+")),
            format!("{p}.{}", &s[..42]),
            format!("{p}.{s}AAAA"),
            format!("{}.{s}", p.replace('_', "/")),
        ];
        // 43 characters carry 258 bits for 256: every other last character.
        for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=".chars() {
            let mut t = s.to_owned();
            t.replace_range(42..43, &c.to_string());
            variants.push(format!("{p}.{t}"));
        }
        variants.retain(|v| v != VECTOR);
        for v in &variants {
            assert!(verify(v, SECRET, now).is_err(), "{v}");
        }
        assert!(verify(VECTOR, SECRET, now).is_ok());
    }

    #[test]
    fn the_platform_tests_malformed_tickets() {
        for t in [
            "not-a-valid-ticket",
            "missing.dot",
            ".empty-payload",
            "empty-signature.",
            "..double-dots",
        ] {
            assert!(
                matches!(verify(t, SECRET, 1), Err(TicketError::Malformed(_))),
                "{t}"
            );
        }
        assert_eq!(
            verify(&"a".repeat(MAX_TICKET_BYTES + 1), SECRET, 1),
            Err(TicketError::TooLong)
        );
    }

    #[test]
    fn fields_must_be_present() {
        for body in [
            r#"{"exp":1,"nonce":"n"}"#,
            r#"{"userId":"u","nonce":"n"}"#,
            r#"{"userId":"u","exp":1}"#,
            r#"{"userId":"","exp":1,"nonce":"n"}"#,
            r#"{"userId":"u","exp":0,"nonce":"n"}"#,
            r#"[1]"#,
        ] {
            let t = format!(
                "{}.{}",
                b64::encode(body.as_bytes()),
                b64::encode(&mac(SECRET, body.as_bytes()))
            );
            assert!(
                matches!(verify(&t, SECRET, 0), Err(TicketError::Malformed(_))),
                "{body}"
            );
        }
        let body = br#"{"userId":"a/b","exp":10,"nonce":"n"}"#;
        let t = format!("{}.{}", b64::encode(body), b64::encode(&mac(SECRET, body)));
        assert!(matches!(verify(&t, SECRET, 0), Err(TicketError::User(_))));
    }

    #[test]
    fn uuids_are_version_4() {
        let u = uuid_v4([0xff; 16]);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid_v4([0; 16]), NONCE);
    }
}
