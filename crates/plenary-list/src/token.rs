//! Opaque tokens: 128 random bits as 26 lower-case base32 characters.
//!
//! Lower-case letters and digits only, so a token fits in an e-mail local part
//! (`LIST-confirm+TOKEN@`) and a URL path without escaping, survives case-folding MTAs, and
//! carries nothing about the address it stands for.

use rand::RngCore;

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

pub fn new_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let mut out = String::with_capacity(26);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// True for strings that could be one of our tokens (checked before any lookup).
pub fn plausible(t: &str) -> bool {
    t.len() == 26 && t.bytes().all(|b| ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_26_chars_and_distinct() {
        let a = new_token();
        let b = new_token();
        assert_eq!(a.len(), 26);
        assert!(plausible(&a) && plausible(&b));
        assert_ne!(a, b);
        assert!(!plausible("../../etc/passwd"));
    }
}
