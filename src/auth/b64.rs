//! The encodings credentials use: base64url without padding out, a lenient decoder in (the
//! platform's accepts optional padding and the standard alphabet's `+` and `/`), and hex.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

pub fn encode(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes base64url with or without padding, also accepting `+` and `/`.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let trimmed = text.trim_end_matches('=');
    if trimmed.contains('=') {
        return None;
    }
    if trimmed.contains(['+', '/']) {
        let mapped: String = trimmed
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect();
        return URL_SAFE_NO_PAD.decode(mapped).ok();
    }
    URL_SAFE_NO_PAD.decode(trimmed).ok()
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
    fn lenient_decoding() {
        let want = b"\xfb\xff\xfe".to_vec();
        assert_eq!(decode("-__-"), Some(want.clone()));
        assert_eq!(decode("+//+"), Some(want));
        assert_eq!(decode("YQ=="), Some(b"a".to_vec()));
        assert_eq!(decode("YQ"), Some(b"a".to_vec()));
        assert_eq!(decode("Y=Q"), None);
        assert_eq!(decode("*"), None);
        assert_eq!(encode(b"\xfb\xff"), "-_8");
        assert_eq!(hex(&[0, 0xab, 0x0f]), "00ab0f");
    }
}
