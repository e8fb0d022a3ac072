//! The store key: 32 bytes the operator provides (`--store-key-file`,
//! `CMS_STORE_KEY_FILE`) with which a shared store encrypts the secrets it
//! holds, today the CA's private key, so that a copy of the database (a
//! snapshot, a dump, a read replica) does not give away the CA.
//!
//! The file holds the key as base64 (what `cms-server store keygen`
//! prints) or as 64 hex digits, surrounding whitespace ignored. Values are
//! sealed with AES-256-GCM (`ring`): a fresh random 96-bit nonce per value,
//! stored in front of the ciphertext and its tag, and the purpose of the
//! value as associated data, so a sealed value cannot be moved to another
//! column and still open. The key itself is never logged: [`StoreKey`]'s
//! `Debug` shows only the file it came from.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

/// The length of a store key in bytes.
pub const STORE_KEY_BYTES: usize = 32;

/// The operator's key for the secrets in a shared store.
#[derive(Clone)]
pub struct StoreKey {
    bytes: [u8; STORE_KEY_BYTES],
    /// Where it was read from, for messages; empty for a key made in code.
    source: PathBuf,
}

impl fmt::Debug for StoreKey {
    /// Only where the key came from, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKey")
            .field("source", &self.source)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Why a store key file could not be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "Failed to read the store key from {}: {problem}; make a key with `cms-server store keygen > FILE` (then chmod 600 FILE) and give every replica the same file",
    path.display()
)]
pub struct StoreKeyError {
    pub path: PathBuf,
    pub problem: String,
}

impl StoreKey {
    /// Reads a key file: base64 of 32 bytes, or 64 hex digits.
    pub fn read(path: &Path) -> Result<StoreKey, StoreKeyError> {
        let error = |problem: String| StoreKeyError {
            path: path.to_path_buf(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let mut key = StoreKey::parse(text.trim()).map_err(error)?;
        key.source = path.to_path_buf();
        Ok(key)
    }

    /// A key from its text (base64 or hex).
    pub fn parse(text: &str) -> Result<StoreKey, String> {
        let decoded =
            if text.len() == 2 * STORE_KEY_BYTES && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                (0..STORE_KEY_BYTES)
                    .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|e| e.to_string())?
            } else {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| "it is neither base64 nor 64 hex digits".to_string())?
            };
        let bytes: [u8; STORE_KEY_BYTES] = decoded.as_slice().try_into().map_err(|_| {
            format!(
                "it holds {} bytes, a store key is {STORE_KEY_BYTES}",
                decoded.len()
            )
        })?;
        Ok(StoreKey {
            bytes,
            source: PathBuf::new(),
        })
    }

    /// A new random key as the text of a key file (base64, one line).
    pub fn generate_text() -> String {
        let mut bytes = [0u8; STORE_KEY_BYTES];
        SystemRandom::new()
            .fill(&mut bytes)
            .expect("the system's random source works");
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// The file the key was read from (empty for a key made in code).
    pub fn source(&self) -> &Path {
        &self.source
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.bytes).expect("a 32-byte key suits AES-256"),
        )
    }

    /// Encrypts `plaintext` for `purpose`: nonce, then ciphertext and tag.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source works");
        let mut in_out = plaintext.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.as_bytes()),
                &mut in_out,
            )
            .expect("sealing a value of this size works");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&in_out);
        sealed
    }

    /// Decrypts what [`seal`](StoreKey::seal) made for the same purpose;
    /// `None` when this is not the key it was sealed with (or the value was
    /// changed).
    pub fn open(&self, purpose: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, ciphertext) = sealed.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = self
            .aead()
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut in_out)
            .ok()?;
        Some(plaintext.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_with_its_key_and_purpose_only() {
        let key = StoreKey::parse(&StoreKey::generate_text()).unwrap();
        let other = StoreKey::parse(&StoreKey::generate_text()).unwrap();
        let sealed = key.seal("ca private key", b"-----BEGIN PRIVATE KEY-----");
        assert!(!sealed.windows(5).any(|w| w == b"BEGIN"));
        assert_eq!(
            key.open("ca private key", &sealed).as_deref(),
            Some(&b"-----BEGIN PRIVATE KEY-----"[..])
        );
        assert_eq!(other.open("ca private key", &sealed), None);
        assert_eq!(key.open("something else", &sealed), None);
        assert_eq!(key.open("ca private key", &sealed[..10]), None);
    }

    #[test]
    fn a_key_file_holds_base64_or_hex_of_32_bytes() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let from_hex = StoreKey::parse(hex).unwrap();
        let base64 = base64::engine::general_purpose::STANDARD.encode(from_hex.bytes);
        assert_eq!(StoreKey::parse(&base64).unwrap().bytes, from_hex.bytes);
        assert_eq!(
            StoreKey::parse("c2hvcnQ=").unwrap_err(),
            "it holds 5 bytes, a store key is 32"
        );
        assert_eq!(
            StoreKey::parse("not a key!").unwrap_err(),
            "it is neither base64 nor 64 hex digits"
        );
    }

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let key = StoreKey::parse(hex).unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(!shown.contains("17") && !shown.contains("0, 17"), "{shown}");
    }

    #[test]
    fn a_missing_key_file_says_how_to_make_one() {
        let error = StoreKey::read(Path::new("/nonexistent/store.key")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("make a key with `cms-server store keygen > FILE`"),
            "{error}"
        );
    }
}
