//! Platform tokens: arbitrary input never panics and never verifies; a token minted for the
//! fuzzed claims verifies to exactly those claims, and a single-byte change to it is refused
//! unless it lands in base64 padding bits.
#![no_main]

use edge_gateway::auth::{token, MintClaims, TokenKeys};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn keys() -> &'static TokenKeys {
    static K: OnceLock<TokenKeys> = OnceLock::new();
    K.get_or_init(|| TokenKeys::derive("fuzz-master-secret-0123456789"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(
            token::verify(text, keys(), 0).is_err(),
            "forged token verified: {text:?}"
        );
    }
    if data.len() < 3 {
        return;
    }
    let user: String = data[1..]
        .iter()
        .map(|b| char::from(b'a' + b % 26))
        .take(40)
        .collect();
    let claims = MintClaims::new(&user, 1_000, u64::from(data[0]) + 1);
    let t = token::mint(keys(), &claims);
    let v = token::verify(&t, keys(), 1_000).expect("a minted token verifies");
    assert_eq!((v.user_id.as_str(), v.exp), (user.as_str(), claims.exp));
    let i = usize::from(data[1]) % t.len();
    let mut bytes = t.into_bytes();
    bytes[i] ^= 1 + data[2] % 0x3f;
    if let Ok(tampered) = String::from_utf8(bytes) {
        if let Ok(v) = token::verify(&tampered, keys(), 1_000) {
            assert_eq!(v.user_id, user, "a tampered token verified for another user");
        }
    }
});
