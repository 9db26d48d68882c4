//! Lowercase hex, the one helper for logs, temporary names and root pins: a leaf module
//! any layer may use (it uses nothing of the crate).

use std::fmt::Write as _;

/// Lowercase hex of `bytes`, two digits per byte.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The first eight hex digits of a hash (its first four bytes): enough to tell versions apart in logs.
pub fn short_hex(hash: &[u8]) -> String {
    hex(&hash[..hash.len().min(4)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_short_hex_is_its_first_eight_digits() {
        assert_eq!(hex(&[0x00, 0xab, 0x0f, 0xff]), "00ab0fff");
        assert_eq!(hex(&[]), "");
        assert_eq!(short_hex(&[0xde, 0xad, 0xbe, 0xef, 0x01]), "deadbeef");
        assert_eq!(short_hex(&[0xab]), "ab");
    }
}
