//! Validating a whole repository without a particular node: what
//! `cms-server check` does with no tags, and what the server does to every
//! commit before serving it.
//!
//! Every role is compiled for the nodes it is written for: its `[match]`
//! values, and for each glob the values that the data hierarchy knows (the
//! `env` of `data/env/prod.toml` for a layer `env/{{tag.env}}`), so that a
//! role is checked against the data each environment really gives it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::catalog::Catalog;
use crate::compile::{Node, compile, glob_match};
use crate::diagnostic::{Diagnostic, Diagnostics, Position};
use crate::repository::{Repository, Role};

/// How many tag combinations one role is compiled for at most.
const MAX_NODES_PER_ROLE: usize = 32;

/// Facts used where no real node is at hand: a small Debian instance.
pub fn example_facts() -> BTreeMap<String, Value> {
    let json = serde_json::json!({
        "hostname": "example",
        "fqdn": "example.internal",
        "os": "debian",
        "os_family": "debian",
        "os_version": "12",
        "architecture": "x86_64",
        "cpus": 2,
        "memory_mb": 4096,
        "ipv4": ["192.0.2.10"],
        "ipv6": [],
        "instance_id": "i-0123456789abcdef0",
        "instance_type": "t3.medium",
        "region": "us-east-1",
    });
    serde_json::from_value(json).expect("example facts are an object")
}

/// Compiles every role for the nodes it is written for and reports every
/// problem found, each once.
pub fn validate(repository: &Repository, facts: &BTreeMap<String, Value>) -> Diagnostics {
    let mut diagnostics = Diagnostics::default();
    if !repository.settings_ok {
        // Without cms.toml the data hierarchy is unknown; compiling would
        // report missing data that is really there.
        return diagnostics;
    }
    for role in repository.roles.values() {
        for tags in candidate_tags(repository, role) {
            let node = Node {
                id: facts
                    .get("instance_id")
                    .and_then(Value::as_str)
                    .unwrap_or("example")
                    .to_string(),
                tags,
                facts: facts.clone(),
                attested: Default::default(),
            };
            match compile(repository, &node) {
                Ok(catalog) => diagnostics.extend(check_catalog_size(repository, &catalog)),
                Err(found) => diagnostics.extend(found),
            }
        }
    }
    if repository.roles.is_empty() && repository.unparsed_roles.is_empty() {
        diagnostics.push(Diagnostic::new(
            "roles/",
            Position::UNKNOWN,
            "no roles: add one as roles/<name>.toml",
        ));
    }
    diagnostics.into_sorted()
}

/// The catalog-size check of validation: a catalog the server could not
/// send (over `MAX_CATALOG_BYTES`, or with a content over
/// `MAX_CONTENT_BYTES`) is an error in the file of the role that weighs
/// most, naming the resources and sizes.
pub fn check_catalog_size(repository: &Repository, catalog: &Catalog) -> Diagnostics {
    let mut diagnostics = Diagnostics::default();
    for problem in catalog.size_problems() {
        let file = problem
            .role()
            .and_then(|role| repository.roles.get(role))
            .map_or_else(|| "roles/".to_string(), |role| role.file.clone());
        diagnostics.push(Diagnostic::new(
            file,
            Position::UNKNOWN,
            problem.to_string(),
        ));
    }
    diagnostics
}

/// The tag sets a role is compiled for during validation.
fn candidate_tags(repository: &Repository, role: &Role) -> Vec<BTreeMap<String, String>> {
    let mut combinations: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    for (name, pattern) in &role.matchers {
        let values = candidate_values(repository, name, pattern);
        let mut next = Vec::new();
        for combination in &combinations {
            for value in &values {
                if next.len() == MAX_NODES_PER_ROLE {
                    break;
                }
                let mut tags = combination.clone();
                tags.insert(name.clone(), value.clone());
                next.push(tags);
            }
        }
        combinations = next;
    }
    combinations
}

fn candidate_values(repository: &Repository, tag: &str, pattern: &str) -> Vec<String> {
    if !pattern.contains(['*', '?']) {
        return vec![pattern.to_string()];
    }
    let placeholder = format!("{{{{tag.{tag}}}}}");
    let mut values = BTreeSet::new();
    for layer in &repository.settings.hierarchy.layers {
        let Some((before, after)) = layer.split_once(&placeholder) else {
            continue;
        };
        for name in repository.data.keys() {
            if let Some(value) = name
                .strip_prefix(before)
                .and_then(|rest| rest.strip_suffix(after))
                && !value.is_empty()
                && !value.contains('/')
                && !value.contains("{{")
                && glob_match(pattern, value)
            {
                values.insert(value.to_string());
            }
        }
    }
    if values.is_empty() {
        values.insert(pattern.replace('*', "example").replace('?', "x"));
    }
    values.into_iter().collect()
}
