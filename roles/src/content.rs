//! The bytes of a file a catalog carries, keyed by their sha256.
//!
//! A module of its own so that the resource kinds (which add contents while
//! they resolve) and the catalog (which carries them) both use it without
//! depending on each other.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The bytes of a file, base64 in the canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content(pub Vec<u8>);

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
