//! The platform's persistent tokens (platform-protocol.md §1): compact Ed25519 JWTs.
//!
//! The signing seed is HKDF-SHA-256 of the master secret's UTF-8 bytes (salt `handy`, info
//! `ed25519-key`); the user id is the `user` claim; `iss` must be `handy`; `exp` is in seconds
//! with no leeway. Verification follows jose's `jwtVerify` as the platform calls it, plus two
//! stricter rules: `user` must be a valid id (the platform does not type-check it, and it names
//! our objects), and every part must be canonical base64url (the signature exactly 86
//! characters), so a token has one accepted spelling and its revocation hash and cache key
//! cover it (see [`b64`]). Time comes in as `now_s` so this module stays pure.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::b64;
use crate::protocol::ids::{validate_id, IdError};

/// Tokens longer than this are refused before any decoding work.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// The issuer the platform writes and requires.
pub const ISSUER: &str = "handy";
/// An Ed25519 signature.
const SIGNATURE_BYTES: usize = 64;
/// `base64url({"alg":"EdDSA","typ":"JWT"})`, the header jose writes (in that key order).
const HEADER_B64: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9";

/// The Ed25519 key pair derived from the master secret, once per isolate.
#[derive(Clone)]
pub struct TokenKeys {
    signing: SigningKey,
    verifying: VerifyingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the seed.
        write!(f, "TokenKeys(public {})", self.public_key_b64())
    }
}

impl PartialEq for TokenKeys {
    fn eq(&self, other: &Self) -> bool {
        self.verifying == other.verifying
    }
}

impl TokenKeys {
    /// The persistent-token keys: HKDF-SHA-256(IKM = secret, salt = `handy`, info = `ed25519-key`).
    pub fn derive(master_secret: &str) -> Self {
        Self::from_seed(hkdf32(master_secret.as_bytes(), b"handy", b"ed25519-key"))
    }

    fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let verifying = signing.verifying_key();
        Self { signing, verifying }
    }

    /// The 32-byte seed (the RFC 8032 private key), for the test vectors.
    pub fn seed(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }

    pub fn public_key_b64(&self) -> String {
        b64::encode(self.verifying.as_bytes())
    }
}

/// HKDF-SHA-256, extract then expand, 32 bytes out.
pub fn hkdf32(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA-256's 8160-byte maximum, so expand cannot fail; the
    // zero fallback keeps the function total without a panic path.
    if Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, &mut out)
        .is_err()
    {
        out = [0u8; 32];
    }
    out
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user_id: String,
    /// Expiry in seconds; `None` for a token without `exp` (accepted, as the platform does).
    pub exp: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("token is longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("token algorithm `{0}` is not accepted; only EdDSA (or Ed25519) is")]
    Algorithm(String),
    #[error("token header names critical extensions this server does not understand")]
    Critical,
    #[error("token signature does not verify")]
    Signature,
    #[error("token issuer must be `handy`")]
    Issuer,
    #[error("token expired at {exp} (now {now})")]
    Expired { exp: u64, now: u64 },
    #[error("token is not valid before {nbf} (now {now})")]
    NotYetValid { nbf: u64, now: u64 },
    #[error("token claim `user` is not a valid user id: {0}")]
    User(IdError),
}

impl TokenError {
    /// Stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing_token",
            TokenError::Expired { .. } => "token_expired",
            _ => "invalid_token",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A claim that must be a number when present (jose requires numbers for `exp`, `nbf` and
/// `iat`; a present `null` is not absent). Fractions are floored like the platform's
/// comparison.
fn seconds(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
    what: &'static str,
) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(serde_json::Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f.floor() as u64)),
            _ => Err(TokenError::Malformed(what)),
        },
        Some(_) => Err(TokenError::Malformed(what)),
    }
}

/// Verifies a persistent token at `now_s`: shape, header, signature, then claims.
pub fn verify(token: &str, keys: &TokenKeys, now_s: u64) -> Result<Verified, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    let header_bytes =
        b64::decode(h64).ok_or(TokenError::Malformed("header is not unpadded base64url"))?;
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|_| TokenError::Malformed("header is not a JSON object"))?;
    match header.alg.as_deref() {
        Some("EdDSA" | "Ed25519") => {}
        Some(other) => return Err(TokenError::Algorithm(other.chars().take(32).collect())),
        None => return Err(TokenError::Algorithm("(missing)".into())),
    }
    // We implement no JWS extension, so any critical one is unknown (jose rejects those).
    if header.crit.is_some() {
        return Err(TokenError::Critical);
    }
    let sig = b64::decode_array::<SIGNATURE_BYTES>(s64).ok_or(TokenError::Malformed(
        "signature is not 86 characters of unpadded base64url",
    ))?;
    let sig = Signature::from_bytes(&sig);
    let signed_len = h64.len() + 1 + p64.len();
    let signed = token
        .get(..signed_len)
        .ok_or(TokenError::Malformed("expected three dot-separated parts"))?;
    keys.verifying
        .verify_strict(signed.as_bytes(), &sig)
        .map_err(|_| TokenError::Signature)?;
    let payload_bytes =
        b64::decode(p64).ok_or(TokenError::Malformed("payload is not unpadded base64url"))?;
    let p: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&payload_bytes)
        .map_err(|_| TokenError::Malformed("payload is not a JSON object"))?;
    if p.get("iss").and_then(|v| v.as_str()) != Some(ISSUER) {
        return Err(TokenError::Issuer);
    }
    let exp = seconds(&p, "exp", "`exp` must be a number")?;
    let nbf = seconds(&p, "nbf", "`nbf` must be a number")?;
    seconds(&p, "iat", "`iat` must be a number")?;
    if let Some(exp) = exp {
        // jose: rejected when floor(now) >= exp, with no clock tolerance.
        if now_s >= exp {
            return Err(TokenError::Expired { exp, now: now_s });
        }
    }
    if let Some(nbf) = nbf {
        if nbf > now_s {
            return Err(TokenError::NotYetValid { nbf, now: now_s });
        }
    }
    let user = match p.get("user") {
        Some(serde_json::Value::String(u)) => u,
        _ => return Err(TokenError::User(IdError::Empty)),
    };
    validate_id(user).map_err(TokenError::User)?;
    Ok(Verified {
        user_id: user.clone(),
        exp,
    })
}

/// The claims of a token to mint, in the platform's key order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MintClaims {
    pub user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extras: Option<serde_json::Value>,
    pub iss: &'static str,
    pub iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

impl MintClaims {
    /// A persistent token as the platform issues it: `exp = iat + ttl_s`.
    pub fn new(user: &str, iat: u64, ttl_s: u64) -> Self {
        Self {
            user: user.to_owned(),
            extras: None,
            iss: ISSUER,
            iat,
            exp: Some(iat.saturating_add(ttl_s)),
        }
    }
}

/// Mints a token exactly as the platform's `createToken` does. Used by `make token`, the load
/// tests and the integration tests; the gateway itself never mints.
pub fn mint(keys: &TokenKeys, claims: &MintClaims) -> String {
    // Serializing strings, integers and a JSON value cannot fail.
    let body = serde_json::to_vec(claims).unwrap_or_default();
    let signed = format!("{HEADER_B64}.{}", b64::encode(&body));
    let sig = keys.signing.sign(signed.as_bytes());
    format!("{signed}.{}", b64::encode(&sig.to_bytes()))
}

/// The revocation key of a token: lowercase hex SHA-256 of its exact text, as the platform
/// computes it. A token has one spelling [`verify`] accepts, so this one hash covers it.
pub fn revocation_hash(token: &str) -> String {
    b64::hex(&Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// platform-protocol.md §1.5.
    const SECRET: &str = "test-secret-for-vitest-tests-min-32-chars";
    const VECTOR: &str = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.eyJ1c2VyIjoidXNlcl9hYmMxMjMiLCJpc3MiOiJoYW5keSIsImlhdCI6MTcwMDAwMDAwMCwiZXhwIjoxNzAyNTkyMDAwfQ.rEiGJAvRrJOSL6Sm2BZ4cyd1xbu6Vmc1riEOsk_0Nd83g8FOmd_mHf4N0Les1JQDTqlOmYhyoh_0I8bSvRkYCQ";

    fn keys() -> TokenKeys {
        TokenKeys::derive(SECRET)
    }

    /// Signs arbitrary header and payload JSON with the test key.
    fn forge(header: &str, payload: &str) -> String {
        let k = keys();
        let signed = format!(
            "{}.{}",
            b64::encode(header.as_bytes()),
            b64::encode(payload.as_bytes())
        );
        let sig = k.signing.sign(signed.as_bytes());
        format!("{signed}.{}", b64::encode(&sig.to_bytes()))
    }

    #[test]
    fn persistent_key_matches_the_platform_vector() {
        let k = keys();
        assert_eq!(
            b64::hex(&k.seed()),
            "2ce5e8913fb43c0f483d7035e280bb0606338e278763ffbade650d38912c605c"
        );
        assert_eq!(
            k.public_key_b64(),
            "loNI0Ba7Ec2T8N8Gkk8MnX2OXoBCwBeqpEwlnaofpzs"
        );
    }

    #[test]
    fn ephemeral_derivation_matches_the_platform_vector() {
        // The GitHub ephemeral key (salt `github-happy`): never accepted here, but the same
        // derivation must reproduce it, or the HKDF parameters are wrong.
        let k = TokenKeys::from_seed(hkdf32(SECRET.as_bytes(), b"github-happy", b"ed25519-key"));
        assert_eq!(
            b64::hex(&k.seed()),
            "a06a2635f7366b1c4962f2ce756f01a22d032448082952878bf675c53142f60e"
        );
        assert_eq!(
            k.public_key_b64(),
            "XydZ4mzsYfGZ7rhyxYMFr4AgNxR26V3yB2brQVYugvs"
        );
    }

    #[test]
    fn minted_token_equals_the_platform_vector_byte_for_byte() {
        let c = MintClaims {
            user: "user_abc123".into(),
            extras: None,
            iss: ISSUER,
            iat: 1_700_000_000,
            exp: Some(1_702_592_000),
        };
        assert_eq!(mint(&keys(), &c), VECTOR);
        assert_eq!(MintClaims::new("user_abc123", 1_700_000_000, 2_592_000), c);
    }

    #[test]
    fn the_vector_verifies_until_exp_and_not_at_exp() {
        let v = verify(VECTOR, &keys(), 1_702_591_999).unwrap();
        assert_eq!(v.user_id, "user_abc123");
        assert_eq!(v.exp, Some(1_702_592_000));
        assert_eq!(
            verify(VECTOR, &keys(), 1_702_592_000),
            Err(TokenError::Expired {
                exp: 1_702_592_000,
                now: 1_702_592_000
            })
        );
    }

    #[test]
    fn revocation_hash_matches_the_platform_vector() {
        assert_eq!(
            revocation_hash(VECTOR),
            "bc2417cac8ae363744b6a9a4569ea96e7ef28d04504cbd5dd571d1eba19ae162"
        );
    }

    #[test]
    fn another_secret_does_not_verify() {
        let other = TokenKeys::derive("another-secret-of-enough-length-000");
        assert_eq!(verify(VECTOR, &other, 1), Err(TokenError::Signature));
    }

    #[test]
    fn tampering_is_refused() {
        let mut parts: Vec<String> = VECTOR.split('.').map(str::to_owned).collect();
        parts[1] = b64::encode(br#"{"user":"mallory","iss":"handy","iat":1,"exp":9999999999}"#);
        assert_eq!(
            verify(&parts.join("."), &keys(), 1),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn algorithms() {
        let body = r#"{"user":"u1","iss":"handy","exp":9999999999}"#;
        assert!(verify(&forge(r#"{"alg":"Ed25519"}"#, body), &keys(), 1).is_ok());
        assert_eq!(
            verify(&forge(r#"{"alg":"HS256"}"#, body), &keys(), 1),
            Err(TokenError::Algorithm("HS256".into()))
        );
        assert_eq!(
            verify(&forge(r#"{"typ":"JWT"}"#, body), &keys(), 1),
            Err(TokenError::Algorithm("(missing)".into()))
        );
        // alg none with an empty signature never reaches signature checking.
        let none = format!(
            "{}.{}.",
            b64::encode(br#"{"alg":"none"}"#),
            b64::encode(body.as_bytes())
        );
        assert_eq!(
            verify(&none, &keys(), 1),
            Err(TokenError::Algorithm("none".into()))
        );
        assert_eq!(
            verify(
                &forge(r#"{"alg":"EdDSA","crit":["b64"]}"#, body),
                &keys(),
                1
            ),
            Err(TokenError::Critical)
        );
    }

    #[test]
    fn issuer_is_required() {
        for body in [
            r#"{"user":"u1","exp":9999999999}"#,
            r#"{"user":"u1","iss":"github-happy","exp":9999999999}"#,
            r#"{"user":"u1","iss":1,"exp":9999999999}"#,
        ] {
            assert_eq!(
                verify(&forge(r#"{"alg":"EdDSA"}"#, body), &keys(), 1),
                Err(TokenError::Issuer),
                "{body}"
            );
        }
    }

    #[test]
    fn a_token_without_exp_is_accepted_like_the_platform_does() {
        let t = forge(
            r#"{"alg":"EdDSA"}"#,
            r#"{"user":"u1","iss":"handy","iat":5}"#,
        );
        assert_eq!(
            verify(&t, &keys(), u64::MAX / 2),
            Ok(Verified {
                user_id: "u1".into(),
                exp: None
            })
        );
    }

    #[test]
    fn time_claims_must_be_numbers_and_nbf_is_honoured() {
        for body in [
            r#"{"user":"u1","iss":"handy","exp":"soon"}"#,
            r#"{"user":"u1","iss":"handy","iat":"then"}"#,
            r#"{"user":"u1","iss":"handy","nbf":null}"#,
        ] {
            assert!(
                matches!(
                    verify(&forge(r#"{"alg":"EdDSA"}"#, body), &keys(), 1),
                    Err(TokenError::Malformed(_))
                ),
                "{body}"
            );
        }
        let t = forge(
            r#"{"alg":"EdDSA"}"#,
            r#"{"user":"u1","iss":"handy","nbf":100}"#,
        );
        assert_eq!(
            verify(&t, &keys(), 99),
            Err(TokenError::NotYetValid { nbf: 100, now: 99 })
        );
        assert!(verify(&t, &keys(), 100).is_ok());
        // A fractional exp is floored, as jose compares it.
        let t = forge(
            r#"{"alg":"EdDSA"}"#,
            r#"{"user":"u1","iss":"handy","exp":100.9}"#,
        );
        assert!(verify(&t, &keys(), 99).is_ok());
        assert!(verify(&t, &keys(), 100).is_err());
    }

    #[test]
    fn user_must_be_a_valid_id() {
        for body in [
            r#"{"iss":"handy","exp":9999999999}"#,
            r#"{"user":"","iss":"handy","exp":9999999999}"#,
            r#"{"user":42,"iss":"handy","exp":9999999999}"#,
            r#"{"user":"a/b","iss":"handy","exp":9999999999}"#,
            r#"{"sub":"u1","iss":"handy","exp":9999999999}"#,
        ] {
            assert!(
                matches!(
                    verify(&forge(r#"{"alg":"EdDSA"}"#, body), &keys(), 1),
                    Err(TokenError::User(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn malformed_tokens() {
        for t in [
            "abc",
            "a.b",
            "a.b.c.d",
            "!!!.e30.x",
            &format!("{HEADER_B64}.e30.***"),
        ] {
            assert!(
                matches!(verify(t, &keys(), 1), Err(TokenError::Malformed(_))),
                "{t}"
            );
        }
        // A signature of the wrong length.
        let t = format!("{HEADER_B64}.e30.{}", b64::encode(&[0u8; 10]));
        assert!(matches!(
            verify(&t, &keys(), 1),
            Err(TokenError::Malformed(_))
        ));
        assert_eq!(verify("", &keys(), 1), Err(TokenError::Missing));
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(verify(&long, &keys(), 1), Err(TokenError::TooLong));
    }

    /// Replaces the character at byte `i` of `s`.
    fn with_char(s: &str, i: usize, c: char) -> String {
        let mut t = s.to_owned();
        t.replace_range(i..=i, &c.to_string());
        t
    }

    #[test]
    fn a_token_has_exactly_one_accepted_spelling() {
        // The signature covers only `header.payload`, so a lenient decoder would accept these
        // re-spellings of the signature, each a new revocation hash and cache key.
        let now = 1_700_000_001;
        assert!(verify(VECTOR, &keys(), now).is_ok());
        let (signed, sig) = VECTOR.rsplit_once('.').unwrap();
        assert_eq!(sig.len(), 86);
        let underscore = sig.find('_').unwrap();
        let mut variants = vec![
            format!("{VECTOR}="),
            format!("{VECTOR}=="),
            format!("{signed}.{}", with_char(sig, underscore, '/')),
            format!("{signed}.{}", sig.replace('_', "/").replace('-', "+")),
            format!("{signed}.{sig}AA"),
            format!("{signed}.{}", &sig[..84]),
        ];
        // Every other last character: 86 characters carry 516 bits for 512, so a lenient
        // decoder ignores the last 4 bits (`Q` ends in 0000, `R` to `f` do not).
        for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=".chars() {
            let v = format!("{signed}.{}", with_char(sig, 85, c));
            if v != VECTOR {
                variants.push(v);
            }
        }
        for v in &variants {
            assert!(verify(v, &keys(), now).is_err(), "{v}");
        }
        // The header and payload are covered by the signature, but must be canonical too.
        let (h, rest) = VECTOR.split_once('.').unwrap();
        assert!(verify(&format!("{h}=.{rest}"), &keys(), now).is_err());
    }

    #[test]
    fn a_signature_with_s_plus_l_is_refused() {
        // S + L verifies in a lax Ed25519 verifier: another spelling of one signature.
        // `verify_strict` requires S < L.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let (signed, sig) = VECTOR.rsplit_once('.').unwrap();
        let mut bytes = b64::decode(sig).unwrap();
        let mut carry = 0u16;
        for (b, l) in bytes[32..].iter_mut().zip(L) {
            let sum = u16::from(*b) + u16::from(l) + carry;
            *b = (sum & 0xff) as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0);
        let t = format!("{signed}.{}", b64::encode(&bytes));
        assert_eq!(verify(&t, &keys(), 1), Err(TokenError::Signature));
    }

    #[test]
    fn keys_never_print_their_seed() {
        let s = format!("{:?}", keys());
        assert!(!s.contains("2ce5e8"), "{s}");
        assert!(s.contains("loNI0Ba7"), "{s}");
    }
}
