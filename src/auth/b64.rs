//! The encodings credentials use: base64url without padding, strictly, both ways; and hex.
//!
//! We deliberately differ from the platform here. Its decoder is lenient (padding optional,
//! the standard alphabet's `+` and `/` tolerated), so one credential has many spellings. Our
//! revocation hash, verified-token cache and once-per-call RPC answers are all keyed by a
//! credential's text, and the signatures cover only part of it (a token's `header.payload`,
//! a ticket's decoded payload, a reference's decoded body), so every extra spelling would be
//! a fresh key for the same credential: a revoked token working again, a cache miss (a D1
//! read) per request, a second answer to one call. Here only the canonical spelling decodes:
//! the URL-safe alphabet, no padding, zero trailing bits (the `base64` crate's
//! `URL_SAFE_NO_PAD` engine, whose default config refuses non-zero trailing bits), and fixed
//! lengths where the format fixes them. The platform's encoders (jose, its ticket code) write
//! exactly that spelling, so nothing it issues is refused. See docs/protocol.md, "One
//! spelling per credential".

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes canonical base64url: URL-safe alphabet, no padding, zero trailing bits. Exactly
/// one text decodes to given bytes, the one [`encode`] writes.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Decodes the canonical spelling of exactly `N` bytes (`ceil(4N/3)` characters).
pub fn decode_array<const N: usize>(text: &str) -> Option<[u8; N]> {
    // The length check first, so an oversized text costs no decoding.
    if text.len() != encoded_len(N) {
        return None;
    }
    decode(text)?.try_into().ok()
}

/// Characters of the unpadded base64 of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    let digit = |n: u8| char::from_digit(u32::from(n), 16).unwrap_or('0');
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(digit(b >> 4));
        s.push(digit(b & 0x0f));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_canonical_spelling_decodes() {
        assert_eq!(decode("-__-"), Some(b"\xfb\xff\xfe".to_vec()));
        assert_eq!(decode("YQ"), Some(b"a".to_vec()));
        assert_eq!(decode(""), Some(Vec::new()));
        // The standard alphabet, padding, stray characters, an impossible length.
        for bad in ["+//+", "YQ==", "YQ=", "Y=Q", "Y", "Y Q", "*", "YQ\n"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        // Non-zero trailing bits: `Q` is 010000, `R` 010001; both would decode to `a`.
        assert_eq!(decode("YR"), None);
        assert_eq!(encode(b"\xfb\xff"), "-_8");
        assert_eq!(decode_array::<2>("-_8"), Some([0xfb, 0xff]));
        assert_eq!(decode_array::<1>("-_8"), None);
        assert_eq!(decode_array::<3>("-_8"), None);
        assert_eq!(decode_array::<2>("-_8="), None);
        // The lengths the credentials fix: an Ed25519 signature, a ticket's HMAC-SHA256,
        // a sealed reference's 128-bit MAC.
        assert_eq!(
            (encoded_len(64), encoded_len(32), encoded_len(16)),
            (86, 43, 22)
        );
        assert_eq!(hex(&[0, 0xab, 0x0f]), "00ab0f");
    }

    #[test]
    fn every_decodable_text_is_the_encoding_of_its_bytes() {
        // Exhaustive over every text of 1 to 3 characters from the URL and standard
        // alphabets plus `=`: whatever decodes re-encodes to exactly itself, so no two
        // spellings share bytes. Longer texts are these tails after whole 4-char groups,
        // which carry no slack.
        let chars: Vec<char> =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/="
                .chars()
                .collect();
        let mut level = vec![String::new()];
        let mut texts = Vec::new();
        for _ in 0..3 {
            level = level
                .iter()
                .flat_map(|t| chars.iter().map(move |c| format!("{t}{c}")))
                .collect();
            texts.extend(level.iter().cloned());
        }
        let mut decoded = 0;
        for t in &texts {
            if let Some(b) = decode(t) {
                assert_eq!(encode(&b), *t);
                decoded += 1;
            }
        }
        // 2 chars: 64 * 4 canonical spellings of one byte; 3 chars: 64 * 64 * 16 of two.
        assert_eq!(decoded, 64 * 4 + 64 * 64 * 16);
    }
}
