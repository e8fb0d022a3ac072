//! sha256 as lowercase hex: how every hash of the project is written (the
//! catalog id, content keys, backup blobs, Java releases).
//!
//! One implementation, so that two hashes of the same bytes compare equal
//! as strings wherever they were computed.

use sha2::{Digest, Sha256};

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha256(bytes))
}

/// The sha256 of `bytes`, for the few places that use its bits rather than
/// its text (a node's splay).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lowercase hex of any bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = Vec::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)]);
        text.push(DIGITS[usize::from(byte & 0xf)]);
    }
    String::from_utf8(text).expect("hex digits are ASCII")
}

/// Whether `text` has the shape of a sha256 in hex: 64 hex digits (either
/// case).
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// A sha256 computed piece by piece, for bytes that are streamed (a large
/// file, a download) rather than held.
#[derive(Debug, Clone, Default)]
pub struct Sha256Hasher(Sha256);

impl Sha256Hasher {
    pub fn new() -> Sha256Hasher {
        Sha256Hasher::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The lowercase hex sha256 of everything given.
    pub fn finish_hex(self) -> String {
        hex(&self.0.finalize())
    }
}

impl std::io::Write for Sha256Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_of_nothing_is_the_well_known_one() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut hasher = Sha256Hasher::new();
        hasher.update(b"ab");
        hasher.update(b"c");
        assert_eq!(hasher.finish_hex(), sha256_hex(b"abc"));
        assert!(is_sha256_hex(&sha256_hex(b"x")));
        assert_eq!(hex(&[0x00, 0xfe]), "00fe");
    }
}
