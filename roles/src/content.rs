//! The bytes of a file a catalog carries, keyed by their sha256, and the
//! sizes that decide how they travel.
//!
//! A module of its own so that the resource kinds (which add contents while
//! they resolve) and the catalog (which carries them) both use it without
//! depending on each other.
//!
//! A content of at most [`INLINE_CONTENT_MAX`] bytes travels inside the
//! catalog (base64 in its JSON); a larger one travels by hash: the catalog
//! names its sha256 and size, and the agent fetches it with `GetContent`
//! (streamed in chunks) and keeps it in a cache by hash. No content may be
//! larger than [`MAX_CONTENT_BYTES`]: a commit with one is refused.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The largest content carried inside the catalog; larger ones travel by
/// hash through `GetContent`.
pub const INLINE_CONTENT_MAX: usize = 256 * 1024;

/// The largest content a catalog may refer to (a file's `source` or
/// rendered `template`, a key, a configuration): 64 MiB. A commit with a
/// larger one is refused at validation. Larger artifacts belong on an
/// artifact server (a java_app's `url` with its sha256).
pub const MAX_CONTENT_BYTES: usize = 64 * 1024 * 1024;

/// The bytes of a file, base64 in the canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content(pub Vec<u8>);

impl Content {
    /// Whether it travels inside the catalog rather than by hash.
    pub fn is_inline(&self) -> bool {
        self.0.len() <= INLINE_CONTENT_MAX
    }
}

impl Serialize for Content {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Content)
            .map_err(serde::de::Error::custom)
    }
}

/// Whether `text` is a sha256 as catalogs write them: 64 lowercase hex
/// digits. Checked before a hash names a file in the agent's cache.
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}
