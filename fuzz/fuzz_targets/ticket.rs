//! Tickets: arbitrary input never panics and never verifies; a minted ticket verifies to its
//! user within its window and never after; a single-byte change never verifies for another
//! user.
#![no_main]

use edge_gateway::auth::ticket;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-master-secret-0123456789";

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(
            ticket::verify(text, SECRET, 0).is_err(),
            "forged ticket verified: {text:?}"
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
    let now = 1_700_000_000_000 + u64::from(data[0]) * 1000;
    let t = ticket::mint(SECRET, &user, now, "00000000-0000-4000-8000-000000000000");
    assert_eq!(ticket::verify(&t, SECRET, now).map(|k| k.user_id), Ok(user.clone()));
    assert!(ticket::verify(&t, SECRET, now + ticket::TTL_MS + ticket::SKEW_MS + 1).is_err());
    let i = usize::from(data[1]) % t.len();
    let mut bytes = t.into_bytes();
    bytes[i] ^= 1 + data[2] % 0x3f;
    if let Ok(tampered) = String::from_utf8(bytes) {
        if let Ok(k) = ticket::verify(&tampered, SECRET, now) {
            assert_eq!(k.user_id, user, "a tampered ticket verified for another user");
        }
    }
});
