//! Why a node gets what it gets: which roles match its tags and why (each
//! `[match]` entry against each tag), which do not and the first entry
//! that fails, the data layers in order with the file each names, and
//! every data value its roles read with the `file:line` it comes from and
//! the layers it overrides. What `cms-server explain` prints, for a
//! repository folder or for a live node; Hiera's `lookup --explain`, for
//! the whole catalog.
//!
//! The explanation follows the compiler ([`select_roles`],
//! [`node_context`], the hierarchy of `cms.toml`) without compiling: it
//! shows what the compiler works from, whether or not the catalog
//! compiles.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::compile::tags_text;
use crate::compile::{Node, glob_match, node_context, role_matches, select_roles};
use crate::diagnostic::Position;
use crate::node_reads::declared_accesses;
use crate::reads::{Access, DataRead, walk};
use crate::repository::{Repository, Role};
use crate::source::{SETTINGS_FILE, join_inside};
use crate::template::has_placeholders;

/// Why a node gets its roles and data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The node's id (`trusted.id`).
    pub node: String,
    pub tags: BTreeMap<String, String>,
    /// The roles the node gets, in the order they apply.
    pub matched: Vec<MatchedRole>,
    /// The roles it does not get, by name.
    pub unmatched: Vec<UnmatchedRole>,
    /// The layers of `[hierarchy]`, most specific first.
    pub layers: Vec<ExplainedLayer>,
    /// Every data value the node's roles read, by path.
    pub values: Vec<ExplainedValue>,
}

/// A role the node gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchedRole {
    pub name: String,
    /// `roles/<name>.toml`.
    pub file: String,
    /// Each `[match]` entry with the tag value it matched; empty when the
    /// role has no `[match]` or is only included.
    pub entries: Vec<MatchedEntry>,
    /// Whether its own `[match]` holds (false: it is applied only because
    /// a matched role includes it).
    pub matched: bool,
    /// The matched roles that include it, directly.
    pub included_by: Vec<String>,
}

/// One `[match]` entry that holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchedEntry {
    pub tag: String,
    /// As written: a value or a glob.
    pub pattern: String,
    /// The node's value of the tag.
    pub value: String,
}

/// A role the node does not get, with the first `[match]` entry (in the
/// order of tag names) that fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnmatchedRole {
    pub name: String,
    pub file: String,
    pub tag: String,
    pub pattern: String,
    /// The node's value of the tag; `None` when it lacks the tag.
    pub value: Option<String>,
}

/// One layer of `[hierarchy]` for the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainedLayer {
    /// As written in `cms.toml`.
    pub written: String,
    /// As named for this node; `None` when a placeholder has no value for
    /// it (the layer is skipped).
    pub name: Option<String>,
    /// Why the layer is skipped, when it is.
    pub skipped: Option<String>,
    /// `data/<name>.toml`, when it exists.
    pub data_file: Option<String>,
    /// `secrets/<name>.toml`, when it exists.
    pub secrets_file: Option<String>,
}

/// One data value a role reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainedValue {
    /// `data.sysctl.somaxconn`.
    pub path: String,
    /// The value the node gets; `None` when no layer defines it.
    pub value: Option<Value>,
    /// `data/env/prod.toml:2`, where the value comes from.
    pub from: Option<String>,
    /// Where less specific layers define it too, most specific first: the
    /// values it overrides.
    pub overrides: Vec<String>,
}

impl Explanation {
    /// Whether the node gets any role.
    pub fn matched_any(&self) -> bool {
        !self.matched.is_empty()
    }
}

/// Explains the roles and data `node` gets from `repository`.
pub fn explain(repository: &Repository, node: &Node) -> Explanation {
    let selected = select_roles(repository, &node.tags);
    let selected_names: BTreeSet<&str> = selected.iter().map(|r| r.name.as_str()).collect();
    let matched = selected
        .iter()
        .map(|role| {
            let matched = role_matches(role, &node.tags);
            MatchedRole {
                name: role.name.clone(),
                file: role.file.clone(),
                entries: if matched {
                    role.matchers
                        .iter()
                        .map(|(tag, pattern)| MatchedEntry {
                            tag: tag.clone(),
                            pattern: pattern.clone(),
                            value: node.tags[tag].clone(),
                        })
                        .collect()
                } else {
                    Vec::new()
                },
                matched,
                included_by: selected
                    .iter()
                    .filter(|other| other.includes.iter().any(|i| i.role == role.name))
                    .map(|other| other.name.clone())
                    .collect(),
            }
        })
        .collect();
    let unmatched = repository
        .roles
        .values()
        .filter(|role| !selected_names.contains(role.name.as_str()))
        .filter_map(|role| first_failing_entry(role, &node.tags))
        .collect();
    let context = node_context(node);
    let layers = explain_layers(repository, &context);
    let applying: Vec<&str> = layers
        .iter()
        .filter(|layer| layer.data_file.is_some())
        .filter_map(|layer| layer.name.as_deref())
        .collect();
    let values = explain_values(repository, &selected, &applying);
    Explanation {
        node: node.id.clone(),
        tags: node.tags.clone(),
        matched,
        unmatched,
        layers,
        values,
    }
}

fn first_failing_entry(role: &Role, tags: &BTreeMap<String, String>) -> Option<UnmatchedRole> {
    let (tag, pattern) = role.matchers.iter().find(|(tag, pattern)| {
        !tags
            .get(*tag)
            .is_some_and(|value| glob_match(pattern, value))
    })?;
    Some(UnmatchedRole {
        name: role.name.clone(),
        file: role.file.clone(),
        tag: tag.clone(),
        pattern: pattern.clone(),
        value: tags.get(tag).cloned(),
    })
}

/// The layers of `[hierarchy]`, most specific first, as the compiler
/// names them (`compile::hierarchy_layers`).
fn explain_layers(repository: &Repository, context: &Value) -> Vec<ExplainedLayer> {
    repository
        .settings
        .hierarchy
        .layers
        .iter()
        .map(|written| {
            let name = if has_placeholders(written) {
                repository
                    .templates
                    .render_inline(written, context, SETTINGS_FILE, Position::UNKNOWN)
                    .ok()
                    .filter(|name| !name.split('/').any(|part| matches!(part, "" | "." | "..")))
            } else {
                Some(written.clone())
            };
            let skipped = name
                .is_none()
                .then(|| match missing_placeholder(written, context) {
                    Some(path) => format!("the node has no {path}"),
                    None => "a placeholder has no value for the node".to_string(),
                });
            let data_file = name
                .as_ref()
                .filter(|name| repository.data.contains_key(*name))
                .map(|name| format!("data/{name}.toml"));
            let secrets_file = name
                .as_ref()
                .filter(|name| repository.secrets.contains_key(*name))
                .map(|name| format!("secrets/{name}.toml"));
            ExplainedLayer {
                written: written.clone(),
                name,
                skipped,
                data_file,
                secrets_file,
            }
        })
        .collect()
}

/// The first `{{path}}` of a layer that names nothing in the context.
fn missing_placeholder(layer: &str, context: &Value) -> Option<String> {
    layer.split("{{").skip(1).find_map(|rest| {
        let inner = rest.split("}}").next()?.trim();
        if inner.contains(' ') {
            return None;
        }
        lookup(context, &inner.split('.').collect::<Vec<_>>())
            .is_none()
            .then(|| inner.to_string())
    })
}

fn lookup<'v>(value: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(value, |value, part| match value {
        Value::Object(map) => map.get(*part),
        _ => None,
    })
}

/// What the selected roles read: their fields, references and
/// `for_each`, and the templates their `template` and `config_template`
/// fields name.
fn role_accesses(repository: &Repository, roles: &[&Role]) -> Vec<Access> {
    let mut accesses = Vec::new();
    let mut templates = BTreeSet::new();
    for role in roles {
        declared_accesses(role, &mut accesses);
        for declared in &role.resources {
            let Value::Object(fields) = &declared.fields else {
                continue;
            };
            for (name, value) in fields {
                if matches!(name.as_str(), "template" | "config_template")
                    && let Value::String(path) = value
                {
                    if has_placeholders(path) {
                        // Which template it names is known only once
                        // rendered: any of them.
                        templates.extend(
                            repository
                                .templates
                                .compiled()
                                .map(|(name, _)| name.to_string()),
                        );
                    } else if let Ok(name) = join_inside("templates", path) {
                        templates.insert(name);
                    }
                }
            }
        }
    }
    for (name, template) in repository.templates.compiled() {
        if templates.contains(name) {
            walk(template, &mut accesses);
        }
    }
    accesses
}

/// Every data value the roles read, with where it comes from. `layers`
/// are the names of the layers that apply and have a data file, most
/// specific first.
fn explain_values(
    repository: &Repository,
    roles: &[&Role],
    layers: &[&str],
) -> Vec<ExplainedValue> {
    let mut merged = Value::Object(serde_json::Map::new());
    for layer in layers.iter().rev() {
        crate::compile::deep_merge(&mut merged, &repository.data[*layer]);
    }
    let mut reads: BTreeSet<Vec<String>> = BTreeSet::new();
    for access in role_accesses(repository, roles) {
        match access.data_read() {
            DataRead::Nothing => {}
            DataRead::At(path) => {
                reads.insert(path);
            }
            DataRead::Everything => {
                reads.insert(Vec::new());
            }
        }
    }
    let mut leaves: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut missing: BTreeSet<Vec<String>> = BTreeSet::new();
    for path in reads {
        let parts: Vec<&str> = path.iter().map(String::as_str).collect();
        match lookup(&merged, &parts) {
            Some(value) => collect_leaves(value, path, &mut leaves),
            None => {
                missing.insert(path);
            }
        }
    }
    let mut values: Vec<ExplainedValue> = leaves
        .into_iter()
        .map(|path| {
            let parts: Vec<&str> = path.iter().map(String::as_str).collect();
            let value = lookup(&merged, &parts).cloned();
            let mut defined = layers
                .iter()
                .filter(|layer| lookup(&repository.data[**layer], &parts).is_some());
            let place = |layer: &&str| {
                let line = repository
                    .data_positions
                    .get(*layer)
                    .and_then(|positions| positions.get(&path))
                    .map_or(0, |position| position.line);
                format!("data/{layer}.toml:{line}")
            };
            let from = defined.next().map(place);
            ExplainedValue {
                path: data_path(&path),
                value,
                from,
                overrides: defined.map(place).collect(),
            }
        })
        .collect();
    values.extend(missing.into_iter().map(|path| ExplainedValue {
        path: data_path(&path),
        value: None,
        from: None,
        overrides: Vec::new(),
    }));
    values.sort_by(|a, b| a.path.cmp(&b.path));
    values
}

/// The paths of the values below `value` that no layer merges further:
/// everything but tables. An empty table is a value of its own.
fn collect_leaves(value: &Value, path: Vec<String>, leaves: &mut BTreeSet<Vec<String>>) {
    let mut pending = vec![(value, path)];
    while let Some((value, path)) = pending.pop() {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, inner) in map {
                    let mut inner_path = path.clone();
                    inner_path.push(key.clone());
                    pending.push((inner, inner_path));
                }
            }
            _ => {
                if !path.is_empty() {
                    leaves.insert(path);
                }
            }
        }
    }
}

fn data_path(path: &[String]) -> String {
    if path.is_empty() {
        "data".to_string()
    } else {
        format!("data.{}", path.join("."))
    }
}
