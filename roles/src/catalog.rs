//! The catalog: the complete, resolved desired state of one node.
//!
//! A catalog is what the server sends and the agent applies. Every field is
//! final: templates are rendered, `for_each` is expanded, references are
//! checked, and resources are in the order they must be applied. Its id is the
//! sha256 of its canonical encoding, so an unchanged catalog costs one string
//! comparison.
//!
//! Contents travel inline up to `INLINE_CONTENT_MAX` bytes; larger ones are
//! named in `large_contents` by sha256 and size and fetched apart (see
//! `content`). A catalog's canonical encoding is at most [`MAX_CATALOG_BYTES`]:
//! a commit that compiles a larger one is refused at validation.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::content::{Content, MAX_CONTENT_BYTES, is_sha256_hex};
use crate::digest::sha256_hex;
use crate::kinds::ResourceKind;

/// The largest canonical encoding of a catalog (resources and inline
/// contents): 8 MiB. Contents that travel by hash count only by their
/// hash and size.
pub const MAX_CATALOG_BYTES: usize = 8 * 1024 * 1024;

/// The resolved desired state of one node.
///
/// Its canonical JSON has `catalog_id`, `roles`, `resources`, `contents`
/// (the inline contents, base64) and, only when there are any,
/// `large_contents` (sha256 → size of the contents that travel by hash).
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    /// sha256 (hex) of [`Catalog::identity_bytes`].
    pub catalog_id: String,
    /// The roles applied, in the order they were applied (includes first).
    pub roles: Vec<String>,
    /// Every resource, in apply order.
    pub resources: Vec<Resource>,
    /// File contents at hand, by sha256 (hex). Resources refer to contents
    /// by hash. In the encoding, those of at most `INLINE_CONTENT_MAX`
    /// bytes travel here (inline) and larger ones by hash.
    pub contents: BTreeMap<String, Content>,
    /// Contents that travel by hash and are not at hand yet: sha256 → size.
    /// Empty on the server (which compiled every content); filled by
    /// decoding, and emptied by [`Catalog::attach_content`] as the agent
    /// fetches them.
    pub to_fetch: BTreeMap<String, u64>,
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
    /// Whether a field, template or partial of the resource rendered a
    /// secret, or the role wrote `sensitive = true`: its content and
    /// fields are not to be shown (`check`, diffs, reports). Absent from
    /// the encoding when false, so catalogs without secrets keep their
    /// bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sensitive: bool,
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
        Catalog::with_identity(roles, resources, contents).0
    }

    /// [`Catalog::new`] and the identity bytes its id was hashed from.
    fn with_identity(
        roles: Vec<String>,
        resources: Vec<Resource>,
        contents: BTreeMap<String, Content>,
    ) -> (Catalog, Vec<u8>) {
        let mut catalog = Catalog {
            catalog_id: String::new(),
            roles,
            resources,
            contents,
            to_fetch: BTreeMap::new(),
        };
        let identity = catalog.identity_bytes();
        catalog.catalog_id = sha256_hex(&identity);
        (catalog, identity)
    }

    /// [`Catalog::new`] and the catalog's [`Catalog::canonical_bytes`],
    /// with the roles and resources encoded once: the identity encoding
    /// is hashed for the id and spliced into the canonical one, which
    /// holds it whole between the id and the contents (`WireOut`'s field
    /// order). A server sends every catalog it compiles, so it needs both.
    pub fn new_encoded(
        roles: Vec<String>,
        resources: Vec<Resource>,
        contents: BTreeMap<String, Content>,
    ) -> (Catalog, Vec<u8>) {
        let (catalog, identity) = Catalog::with_identity(roles, resources, contents);
        // `{"roles":…,"resources":…}` without its braces.
        let members = &identity[1..identity.len() - 1];
        let mut bytes = Vec::with_capacity(identity.len() + catalog.inline_len_hint() + 128);
        bytes.extend_from_slice(b"{\"catalog_id\":");
        serde_json::to_writer(&mut bytes, &catalog.catalog_id).expect("a string serializes");
        bytes.push(b',');
        bytes.extend_from_slice(members);
        bytes.extend_from_slice(b",\"contents\":{");
        let inline = catalog.contents.iter().filter(|(_, c)| c.is_inline());
        for (i, (hash, content)) in inline.enumerate() {
            if i > 0 {
                bytes.push(b',');
            }
            serde_json::to_writer(&mut bytes, hash).expect("a string serializes");
            bytes.extend_from_slice(b":\"");
            // base64 needs no JSON escaping: encoded in place.
            append_base64(&mut bytes, &content.0);
            bytes.push(b'"');
        }
        bytes.push(b'}');
        let large_contents = catalog.large_contents();
        if !large_contents.is_empty() {
            bytes.extend_from_slice(b",\"large_contents\":");
            serde_json::to_writer(&mut bytes, &large_contents).expect("sizes serialize");
        }
        bytes.push(b'}');
        debug_assert_eq!(bytes, catalog.canonical_bytes(), "spliced encoding");
        (catalog, bytes)
    }

    /// About the size of the inline contents in base64.
    fn inline_len_hint(&self) -> usize {
        self.contents
            .iter()
            .filter(|(_, content)| content.is_inline())
            .map(|(hash, content)| hash.len() + 6 + content.0.len().div_ceil(3) * 4)
            .sum()
    }

    /// sha256 → size of the contents that travel by hash: those not yet
    /// fetched and those at hand over the inline limit.
    fn large_contents(&self) -> BTreeMap<&str, u64> {
        let mut large_contents: BTreeMap<&str, u64> = self
            .to_fetch
            .iter()
            .map(|(hash, size)| (hash.as_str(), *size))
            .collect();
        for (hash, content) in &self.contents {
            if !content.is_inline() {
                large_contents.insert(hash, content.0.len() as u64);
            }
        }
        large_contents
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

    /// The catalog as compact JSON, inline contents included and larger
    /// ones by hash and size: what travels between server and agent. The
    /// same whether the large contents are at hand or not.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a catalog always serializes")
    }

    /// The length of [`Catalog::canonical_bytes`], without building them.
    pub fn encoded_len(&self) -> usize {
        let mut counter = ByteCounter(0);
        serde_json::to_writer(&mut counter, self).expect("a catalog always serializes");
        counter.0
    }

    /// Parses a catalog received from elsewhere and checks that its id and
    /// its inline contents match their hashes. Contents that travel by
    /// hash are in [`Catalog::to_fetch`], checked when attached.
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
        for (hash, size) in &catalog.to_fetch {
            if !is_sha256_hex(hash) || *size > MAX_CONTENT_BYTES as u64 {
                return Err(CatalogDecodeError::BadLargeContent {
                    hash: hash.clone(),
                    size: *size,
                });
            }
        }
        Ok(catalog)
    }

    /// Puts the bytes of a content that travels by hash in place, once
    /// they match the size and sha256 the catalog names.
    pub fn attach_content(&mut self, hash: &str, bytes: Vec<u8>) -> Result<(), CatalogDecodeError> {
        let Some(&size) = self.to_fetch.get(hash) else {
            return Err(CatalogDecodeError::NotToFetch { hash: hash.into() });
        };
        if bytes.len() as u64 != size {
            return Err(CatalogDecodeError::ContentSize {
                hash: hash.into(),
                expected: size,
                got: bytes.len() as u64,
            });
        }
        let computed = sha256_hex(&bytes);
        if computed != hash {
            return Err(CatalogDecodeError::ContentMismatch {
                claimed: hash.into(),
                computed,
            });
        }
        self.to_fetch.remove(hash);
        self.contents.insert(hash.to_string(), Content(bytes));
        Ok(())
    }

    /// The resource with this reference.
    pub fn resource(&self, reference: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.reference == reference)
    }

    /// What makes this catalog too large to serve: a content over
    /// `MAX_CONTENT_BYTES`, with the resources that use it, or an encoding
    /// over [`MAX_CATALOG_BYTES`], with the roles that weigh most. Empty
    /// when it fits.
    pub fn size_problems(&self) -> Vec<SizeProblem> {
        let mut problems = Vec::new();
        for (hash, content) in &self.contents {
            if content.0.len() > MAX_CONTENT_BYTES {
                problems.push(SizeProblem::Content {
                    size: content.0.len(),
                    used_by: self.users_of(hash),
                });
            }
        }
        let size = self.encoded_len();
        if size > MAX_CATALOG_BYTES {
            problems.push(SizeProblem::Catalog {
                size,
                roles: self.weight_by_role(),
            });
        }
        problems
    }

    /// `(role, reference)` of every resource whose fields name `hash`.
    fn users_of(&self, hash: &str) -> Vec<(String, String)> {
        self.resources
            .iter()
            .filter(|r| {
                let mut found = false;
                let value = serde_json::to_value(&r.kind).unwrap_or_default();
                for_each_string(&value, &mut |s| found |= s == hash);
                found
            })
            .map(|r| (r.role.clone(), r.reference.clone()))
            .collect()
    }

    /// Each role's share of the encoding (its resources and the inline
    /// contents they use), heaviest first.
    fn weight_by_role(&self) -> Vec<RoleWeight> {
        let mut weights: BTreeMap<&str, RoleWeight> = BTreeMap::new();
        for resource in &self.resources {
            let value = serde_json::to_value(resource).unwrap_or_default();
            let mut bytes = value.to_string().len();
            for_each_string(&value, &mut |s| {
                if let Some(content) = self.contents.get(s).filter(|c| c.is_inline()) {
                    bytes += content.0.len().div_ceil(3) * 4;
                }
            });
            let weight = weights
                .entry(resource.role.as_str())
                .or_insert_with(|| RoleWeight {
                    role: resource.role.clone(),
                    resources: 0,
                    bytes: 0,
                });
            weight.resources += 1;
            weight.bytes += bytes;
        }
        let mut weights: Vec<RoleWeight> = weights.into_values().collect();
        weights.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.role.cmp(&b.role)));
        weights
    }
}

/// Appends `data` in standard base64 (as [`Content`] serializes it).
fn append_base64(bytes: &mut Vec<u8>, data: &[u8]) {
    use base64::Engine as _;
    let start = bytes.len();
    let len = base64::encoded_len(data.len(), true).expect("a content's base64 fits in memory");
    bytes.resize(start + len, 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(data, &mut bytes[start..])
        .expect("the length was computed for it");
    bytes.truncate(start + written);
}

/// Calls `f` with every string in `value`.
fn for_each_string(value: &serde_json::Value, f: &mut impl FnMut(&str)) {
    match value {
        serde_json::Value::String(s) => f(s),
        serde_json::Value::Array(items) => items.iter().for_each(|v| for_each_string(v, f)),
        serde_json::Value::Object(map) => map.values().for_each(|v| for_each_string(v, f)),
        _ => {}
    }
}

/// Counts what is written to it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How much of a catalog's encoding one role's resources take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleWeight {
    pub role: String,
    pub resources: usize,
    pub bytes: usize,
}

/// Why a catalog cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeProblem {
    /// A content over `MAX_CONTENT_BYTES`, and `(role, reference)` of the
    /// resources that use it.
    Content {
        size: usize,
        used_by: Vec<(String, String)>,
    },
    /// An encoding over [`MAX_CATALOG_BYTES`], and each role's share.
    Catalog { size: usize, roles: Vec<RoleWeight> },
}

impl SizeProblem {
    /// The role to blame first.
    pub fn role(&self) -> Option<&str> {
        match self {
            SizeProblem::Content { used_by, .. } => used_by.first().map(|(role, _)| role.as_str()),
            SizeProblem::Catalog { roles, .. } => roles.first().map(|w| w.role.as_str()),
        }
    }
}

/// `1.5 MiB (1572864 bytes)`.
pub fn human_size(bytes: usize) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB ({bytes} bytes)", bytes as f64 / MIB)
    } else {
        format!("{:.1} KiB ({bytes} bytes)", bytes as f64 / 1024.0)
    }
}

impl fmt::Display for SizeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeProblem::Content { size, used_by } => {
                let users: Vec<String> = used_by
                    .iter()
                    .map(|(role, reference)| format!("{reference} (role {role})"))
                    .collect();
                write!(
                    f,
                    "content of {} is {}, over the limit of {} for one content: put it on an artifact server",
                    if users.is_empty() {
                        "a resource".to_string()
                    } else {
                        users.join(", ")
                    },
                    human_size(*size),
                    human_size(MAX_CONTENT_BYTES)
                )
            }
            SizeProblem::Catalog { size, roles } => {
                let heaviest: Vec<String> = roles
                    .iter()
                    .take(3)
                    .map(|w| {
                        format!(
                            "role {} {} in {} resources",
                            w.role,
                            human_size(w.bytes),
                            w.resources
                        )
                    })
                    .collect();
                write!(
                    f,
                    "catalog is {}, over the limit of {} (heaviest: {}): split the role or use fewer resources",
                    human_size(*size),
                    human_size(MAX_CATALOG_BYTES),
                    heaviest.join(", ")
                )
            }
        }
    }
}

/// The canonical encoding as written.
#[derive(Serialize)]
struct WireOut<'a> {
    catalog_id: &'a str,
    roles: &'a [String],
    resources: &'a [Resource],
    contents: InlineContents<'a>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    large_contents: BTreeMap<&'a str, u64>,
}

/// The contents that travel inside the catalog.
struct InlineContents<'a>(&'a BTreeMap<String, Content>);

impl Serialize for InlineContents<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().filter(|(_, content)| content.is_inline()))
    }
}

impl Serialize for Catalog {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        WireOut {
            catalog_id: &self.catalog_id,
            roles: &self.roles,
            resources: &self.resources,
            contents: InlineContents(&self.contents),
            large_contents: self.large_contents(),
        }
        .serialize(serializer)
    }
}

/// The canonical encoding as read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireIn {
    catalog_id: String,
    roles: Vec<String>,
    resources: Vec<Resource>,
    contents: BTreeMap<String, Content>,
    #[serde(default)]
    large_contents: BTreeMap<String, u64>,
}

impl<'de> Deserialize<'de> for Catalog {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireIn::deserialize(deserializer)?;
        Ok(Catalog {
            catalog_id: wire.catalog_id,
            roles: wire.roles,
            resources: wire.resources,
            contents: wire.contents,
            to_fetch: wire.large_contents,
        })
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
    #[error(
        "Failed to verify catalog: large content `{hash}` of {size} bytes is not a sha256 or is over the limit"
    )]
    BadLargeContent { hash: String, size: u64 },
    #[error("Failed to verify content {hash}: the catalog names {expected} bytes, got {got}")]
    ContentSize {
        hash: String,
        expected: u64,
        got: u64,
    },
    #[error("content {hash} is not one the catalog fetches by hash")]
    NotToFetch { hash: String },
}
