//! Where an RPC answer goes. When the edge relays an `rpc-call` it replaces the caller's
//! `ackId` with a sealed reference to the call: the caller's user, shard, connection and own
//! `ackId`, an expiry, and an HMAC under a key derived from the master secret. The target
//! echoes it in its `rpc-response`, and any shard can send the answer to exactly the calling
//! socket without a lookup table, so routing survives hibernation and restarts.
//!
//! Forgery needs the key; a reference only reaches the sockets the call was delivered to, so
//! a socket that never saw the call cannot answer it; and a reference names its user, so it
//! can never reach another user's socket. Replays are refused by the caller's shard (see
//! `connection_manager`), which remembers references already answered by their text; that
//! holds because a reference has exactly one spelling [`open`] accepts (strict base64url,
//! see [`b64`]).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::auth::b64;
use crate::auth::token::hkdf32;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "e1.";
/// How long a relayed call can be answered. The apps time out after 30 s by default; a
/// machine RPC can pass its own, longer timeout.
pub const TTL_MS: u64 = 10 * 60 * 1000;
/// MAC bytes kept: 128 bits.
const MAC_BYTES: usize = 16;

/// The key, derived from the master secret once per isolate.
#[derive(Clone, PartialEq, Eq)]
pub struct AckKey([u8; 32]);

impl std::fmt::Debug for AckKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckKey(hidden)")
    }
}

impl AckKey {
    pub fn derive(master_secret: &str) -> Self {
        Self(hkdf32(
            master_secret.as_bytes(),
            b"edge-gateway",
            b"rpc-ack-id",
        ))
    }

    fn mac(&self, bytes: &[u8]) -> Vec<u8> {
        match HmacSha256::new_from_slice(&self.0) {
            Ok(mut m) => {
                m.update(bytes);
                let mut v = m.finalize().into_bytes().to_vec();
                v.truncate(MAC_BYTES);
                v
            }
            Err(_) => Vec::new(),
        }
    }
}

/// A relayed call, as sealed into the target's `ackId`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRef {
    #[serde(rename = "u")]
    pub user: String,
    #[serde(rename = "s")]
    pub shard: String,
    #[serde(rename = "c")]
    pub connection: String,
    #[serde(rename = "a")]
    pub ack_id: String,
    #[serde(rename = "x")]
    pub expires_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckIdError {
    #[error("not an ackId this edge issued")]
    Foreign,
    #[error("the ackId does not verify")]
    Forged,
    #[error("the call's answer window has passed")]
    Expired,
    #[error("the ackId belongs to another user")]
    OtherUser,
}

pub fn seal(key: &AckKey, call: &CallRef) -> String {
    // Serializing strings and an integer cannot fail.
    let body = serde_json::to_vec(call).unwrap_or_default();
    format!(
        "{PREFIX}{}.{}",
        b64::encode(&body),
        b64::encode(&key.mac(&body))
    )
}

/// The sealed reference a forwarded call carries (`envelope::forward_frame` puts `ackId`
/// last), if any: the socket it reaches owes an answer under it. No parse: it runs on every
/// delivery of a call.
pub fn sealed_in(frame: &str) -> Option<&str> {
    const KEY: &str = r#","ackId":""#;
    let body = frame.strip_suffix("\"}")?;
    let id = &body[body.rfind(KEY)? + KEY.len()..];
    let canonical = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    (id.starts_with(PREFIX) && canonical).then_some(id)
}

/// Opens a reference answered by a socket of `user` at `now_ms`.
pub fn open(key: &AckKey, text: &str, user: &str, now_ms: u64) -> Result<CallRef, AckIdError> {
    let rest = text.strip_prefix(PREFIX).ok_or(AckIdError::Foreign)?;
    let (p64, m64) = rest.split_once('.').ok_or(AckIdError::Foreign)?;
    // Canonical base64url only, the MAC exactly 22 characters: the caller's shard drops
    // repeats by the reference's text, so a second spelling would be a second answer.
    let body = b64::decode(p64).ok_or(AckIdError::Foreign)?;
    let mac = b64::decode_array::<MAC_BYTES>(m64).ok_or(AckIdError::Foreign)?;
    let mut m = HmacSha256::new_from_slice(&key.0).map_err(|_| AckIdError::Forged)?;
    m.update(&body);
    m.verify_truncated_left(&mac)
        .map_err(|_| AckIdError::Forged)?;
    let call: CallRef = serde_json::from_slice(&body).map_err(|_| AckIdError::Forged)?;
    if call.user != user {
        return Err(AckIdError::OtherUser);
    }
    if now_ms > call.expires_ms {
        return Err(AckIdError::Expired);
    }
    Ok(call)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forwarded_call_names_the_reference_its_callee_owes_an_answer_under() {
        let sealed = seal(&AckKey::derive("master-secret-for-ack-ids-0000"), &call());
        let data = serde_json::value::RawValue::from_string(r#"{"x":1}"#.into()).unwrap();
        let frame =
            crate::routing::envelope::forward_frame("rpc-request", Some(&data), Some(&sealed));
        assert_eq!(sealed_in(&frame), Some(sealed.as_str()));
        // Not a call: no ackId, a client's own (unsealed) one, one inside the data only.
        let plain = crate::routing::envelope::forward_frame("rpc-request", Some(&data), None);
        assert_eq!(sealed_in(&plain), None);
        let own = crate::routing::envelope::forward_frame("e", None, Some("4f1c"));
        assert_eq!(sealed_in(&own), None);
        let nested = format!(r#"{{"event":"e","data":{{"a":1,"ackId":"{sealed}"}}}}"#);
        assert_eq!(sealed_in(&nested), None);
    }

    fn call() -> CallRef {
        CallRef {
            user: "alice".into(),
            shard: "cm:alice:h3".into(),
            connection: "c0ffee".into(),
            ack_id: "4f1c-uuid".into(),
            expires_ms: 1_000,
        }
    }

    #[test]
    fn sealed_references_open_for_their_user_within_the_window() {
        let k = AckKey::derive("master-secret-for-ack-ids-0000");
        let s = seal(&k, &call());
        assert!(s.starts_with("e1."));
        assert_eq!(open(&k, &s, "alice", 1_000), Ok(call()));
        assert_eq!(open(&k, &s, "alice", 1_001), Err(AckIdError::Expired));
        assert_eq!(open(&k, &s, "bob", 10), Err(AckIdError::OtherUser));
    }

    #[test]
    fn forged_foreign_and_tampered_ids_are_refused() {
        let k = AckKey::derive("master-secret-for-ack-ids-0000");
        let other = AckKey::derive("another-secret-000000000000000");
        assert_eq!(
            open(&k, &seal(&other, &call()), "alice", 1),
            Err(AckIdError::Forged)
        );
        for foreign in ["4f1c-uuid", "e1.", "e1.abc", "e1.!!.??", ""] {
            assert!(open(&k, foreign, "alice", 1).is_err(), "{foreign}");
        }
        // Another user's shard in a reference the attacker builds: the MAC no longer matches.
        let s = seal(&k, &call());
        let (_, mac) = s.trim_start_matches("e1.").split_once('.').unwrap();
        let mut evil = call();
        evil.shard = "cm:bob".into();
        let body = b64::encode(&serde_json::to_vec(&evil).unwrap());
        assert_eq!(
            open(&k, &format!("e1.{body}.{mac}"), "alice", 1),
            Err(AckIdError::Forged)
        );
        // A shortened MAC is refused too.
        let short = format!("{}.{}", s.rsplit_once('.').unwrap().0, &mac[..4]);
        assert_eq!(open(&k, &short, "alice", 1), Err(AckIdError::Foreign));
    }

    #[test]
    fn a_reference_has_exactly_one_accepted_spelling() {
        // The caller's shard remembers answered references by their text, so a second
        // spelling of one reference would deliver a second answer.
        let k = AckKey::derive("master-secret-for-ack-ids-0000");
        let s = seal(&k, &call());
        let (body, mac) = s.strip_prefix("e1.").unwrap().split_once('.').unwrap();
        assert_eq!(mac.len(), 22);
        let mut variants = vec![
            format!("{s}="),
            format!("{s}=="),
            format!("e1.{body}=.{mac}"),
            format!("e1.{body}==.{mac}"),
            format!("e1.{}.{mac}", body.replace('-', "+").replace('_', "/")),
            format!("e1.{body}.{}", mac.replace('-', "+").replace('_', "/")),
            format!("e1.{body}.{mac}AAA"),
        ];
        // 22 characters carry 132 bits for 128: every other last character.
        for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=".chars() {
            let mut m = mac.to_owned();
            m.replace_range(21..22, &c.to_string());
            variants.push(format!("e1.{body}.{m}"));
        }
        variants.retain(|v| *v != s);
        for v in &variants {
            assert!(open(&k, v, "alice", 1).is_err(), "{v}");
        }
        assert_eq!(open(&k, &s, "alice", 1), Ok(call()));
    }
}
