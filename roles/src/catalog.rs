//! The catalog: the complete, resolved desired state of one node.
//!
//! A catalog is what the server sends and the agent applies. Every field is
//! final: templates are rendered, `for_each` is expanded, references are
//! checked, and resources are in the order they must be applied. Its id is the
//! sha256 of its canonical encoding, so an unchanged catalog costs one string
//! comparison.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::content::Content;
use crate::digest::sha256_hex;
use crate::kinds::ResourceKind;

/// The resolved desired state of one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// sha256 (hex) of [`Catalog::canonical_bytes`].
    pub catalog_id: String,
    /// The roles applied, in the order they were applied (includes first).
    pub roles: Vec<String>,
    /// Every resource, in apply order.
    pub resources: Vec<Resource>,
    /// File contents by sha256 (hex). Resources refer to contents by hash;
    /// the bytes travel here (inline) or by `GetContent` when large.
    pub contents: BTreeMap<String, Content>,
}

/// One resource of a catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// `type:name`, e.g. `package:nginx` or `file:/etc/nginx/nginx.conf`.
    pub reference: String,
    /// The role that declared it.
    pub role: String,
    /// References that must be applied (successfully) before this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require: Vec<String>,
    /// References refreshed (restarted, re-run) when this one changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
    pub kind: ResourceKind,
}

/// What the catalog id covers: everything but the id itself and the content
/// bytes, which are covered through their hashes in the resources.
#[derive(Serialize)]
struct Identity<'a> {
    roles: &'a [String],
    resources: &'a [Resource],
}

impl Catalog {
    /// Builds a catalog and computes its id.
    pub fn new(
        roles: Vec<String>,
        resources: Vec<Resource>,
        contents: BTreeMap<String, Content>,
    ) -> Catalog {
        let mut catalog = Catalog {
            catalog_id: String::new(),
            roles,
            resources,
            contents,
        };
        catalog.catalog_id = sha256_hex(&catalog.identity_bytes());
        catalog
    }

    /// The bytes the id is the hash of: compact JSON of the roles and
    /// resources, with object keys in a fixed order. The same catalog gives
    /// the same bytes on any machine.
    pub fn identity_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&Identity {
            roles: &self.roles,
            resources: &self.resources,
        })
        .expect("a catalog always serializes")
    }

    /// The whole catalog, contents included, as compact JSON: what travels
    /// between server and agent.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a catalog always serializes")
    }

    /// Parses a catalog received from elsewhere and checks that its id and
    /// its contents match their hashes.
    pub fn from_canonical_bytes(bytes: &[u8]) -> Result<Catalog, CatalogDecodeError> {
        let catalog: Catalog = serde_json::from_slice(bytes).map_err(CatalogDecodeError::Json)?;
        let expected = sha256_hex(&catalog.identity_bytes());
        if expected != catalog.catalog_id {
            return Err(CatalogDecodeError::IdMismatch {
                claimed: catalog.catalog_id,
                computed: expected,
            });
        }
        for (hash, content) in &catalog.contents {
            let computed = sha256_hex(&content.0);
            if &computed != hash {
                return Err(CatalogDecodeError::ContentMismatch {
                    claimed: hash.clone(),
                    computed,
                });
            }
        }
        Ok(catalog)
    }

    /// The resource with this reference.
    pub fn resource(&self, reference: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.reference == reference)
    }
}

/// A catalog that does not decode, or whose hashes do not hold.
#[derive(Debug, thiserror::Error)]
pub enum CatalogDecodeError {
    #[error("Failed to decode catalog")]
    Json(#[source] serde_json::Error),
    #[error("Failed to verify catalog: id {claimed} does not match its content ({computed})")]
    IdMismatch { claimed: String, computed: String },
    #[error("Failed to verify catalog: content {claimed} hashes to {computed}")]
    ContentMismatch { claimed: String, computed: String },
}
