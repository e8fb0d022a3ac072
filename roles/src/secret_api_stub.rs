//! A stand-in for the secrets interface of cms-roles (issue 16), so that the
//! server's side builds on its own branch: the names and signatures are the
//! shared ones; `compile_with_secrets` and `validate_with_secrets` ignore the
//! values, and `repository_secrets` reads `secrets/<layer>.toml` with a
//! minimal parser (the real one is `Repository.secrets`). The lead replaces
//! this file with the real implementation when merging.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::{Catalog, Diagnostics, Node, Position, Repository};

/// One secret of one layer, as written in `secrets/<layer>.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretEntry {
    pub file: String,
    pub position: Position,
    pub scope: BTreeMap<String, String>,
    pub source: SecretSource,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An armored age file.
    Age(String),
    /// An AWS reference, as written (`ssm:/…`, `secretsmanager:NAME#field`).
    Aws(String),
}

/// Secret values for one compile.
#[derive(Default, Clone)]
pub struct SecretValues {
    age: BTreeMap<(String, String), Vec<u8>>,
    aws: BTreeMap<String, Vec<u8>>,
}

impl SecretValues {
    pub fn new() -> SecretValues {
        SecretValues::default()
    }

    pub fn insert_age(&mut self, layer: &str, key: &str, value: Vec<u8>) {
        self.age.insert((layer.to_string(), key.to_string()), value);
    }

    pub fn insert_aws(&mut self, reference: &str, value: Vec<u8>) {
        self.aws.insert(reference.to_string(), value);
    }

    /// A stand-in for every secret of `repository`.
    pub fn placeholders(repository: &Repository) -> SecretValues {
        let mut values = SecretValues::new();
        for (layer, entries) in repository_secrets(repository) {
            for (key, entry) in entries {
                match entry.source {
                    SecretSource::Age(_) => {
                        values.insert_age(&layer, &key, b"placeholder".to_vec())
                    }
                    SecretSource::Aws(reference) => {
                        values.insert_aws(&reference, b"placeholder".to_vec())
                    }
                }
            }
        }
        values
    }
}

/// Every AWS reference the repository can render (stand-in: the `from =`
/// entries only).
pub fn aws_references(repository: &Repository) -> BTreeSet<String> {
    repository_secrets(repository)
        .into_values()
        .flat_map(|entries| entries.into_values())
        .filter_map(|entry| match entry.source {
            SecretSource::Aws(reference) => Some(reference),
            SecretSource::Age(_) => None,
        })
        .collect()
}

/// Stand-in: compiles without the values.
pub fn compile_with_secrets(
    repository: &Repository,
    node: &Node,
    _secrets: &SecretValues,
) -> Result<Catalog, Diagnostics> {
    crate::compile(repository, node)
}

/// Stand-in: validates without the values.
pub fn validate_with_secrets(
    repository: &Repository,
    facts: &BTreeMap<String, Value>,
    _secrets: &SecretValues,
) -> Diagnostics {
    crate::validate(repository, facts)
}

/// The secrets of `repository` by layer and key: the stand-in of the field
/// `Repository.secrets`. Reads `secrets/<layer>.toml`; a file that does not
/// parse is skipped (the real parser reports it).
pub fn repository_secrets(
    repository: &Repository,
) -> BTreeMap<String, BTreeMap<String, SecretEntry>> {
    let mut layers = BTreeMap::new();
    for (name, entry) in repository.files.under("secrets/") {
        let (Some(layer), crate::Entry::File(bytes)) = (
            name.strip_prefix("secrets/")
                .and_then(|rest| rest.strip_suffix(".toml")),
            entry,
        ) else {
            continue;
        };
        let Ok(text) = std::str::from_utf8(bytes) else {
            continue;
        };
        let Ok(table) = text.parse::<toml::Table>() else {
            continue;
        };
        let mut entries = BTreeMap::new();
        for (key, value) in table {
            let Some(fields) = value.as_table() else {
                continue;
            };
            let source = match (fields.get("age"), fields.get("from")) {
                (Some(toml::Value::String(armored)), None) => SecretSource::Age(armored.clone()),
                (None, Some(toml::Value::String(reference))) => {
                    SecretSource::Aws(reference.clone())
                }
                _ => continue,
            };
            let scope = fields
                .get("scope")
                .and_then(|scope| scope.as_table())
                .map(|scope| {
                    scope
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            let header = format!("[{key}]");
            let line = text
                .lines()
                .position(|line| line.trim() == header)
                .map_or(0, |index| index as u32 + 1);
            entries.insert(
                key,
                SecretEntry {
                    file: name.to_string(),
                    position: Position { line, column: 1 },
                    scope,
                    source,
                },
            );
        }
        layers.insert(layer.to_string(), entries);
    }
    layers
}
