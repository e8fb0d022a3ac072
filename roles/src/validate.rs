//! Validating a whole repository without a particular node: what
//! `cms-server check` does with no tags, and what the server does to every
//! commit before serving it.
//!
//! Every role is compiled for the nodes it is written for: its `[match]`
//! values, and for each glob the values that the data hierarchy knows (the
//! `env` of `data/env/prod.toml` for a layer `env/{{tag.env}}`), so that a
//! role is checked against the data each environment really gives it.
//! Layer names under `secrets/` count as data's do, so a role rendering a
//! secret into a node outside the secret's scope is refused here.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::catalog::Catalog;
use crate::compile::{Node, compile_here, glob_match};
use crate::diagnostic::{Diagnostic, Diagnostics, Position};
use crate::repository::{Repository, Role};
use crate::secrets::SecretValues;

/// How many tag combinations one role is compiled for at most.
const MAX_NODES_PER_ROLE: usize = 32;

/// Whether a compile error only repeats one loading already reported: a
/// template refused for its own error, or a value found undefined while a
/// data file that may hold it did not parse. One root cause, one message.
fn is_follow_on(repository: &Repository, message: &str) -> bool {
    message.contains(crate::template::REFUSED_MARK)
        || (!repository.unparsed_data.is_empty()
            && message.contains("which is not defined for the node"))
}

/// Attested values used where no real node is at hand: an EC2 instance
/// enrolled with its identity document, as `trusted.*` shows them.
pub fn example_attested() -> BTreeMap<String, String> {
    [
        ("instance_id", "i-0123456789abcdef0"),
        ("account_id", "123456789012"),
        ("region", "us-east-1"),
        ("availability_zone", "us-east-1a"),
        ("instance_type", "t3.medium"),
        ("image_id", "ami-0123456789abcdef0"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into()
}

/// Compiles every role for the nodes it is written for and reports every
/// problem found, each once. The nodes are attested EC2 instances named by
/// their instance id ([`example_attested`]) with `facts`. Runs on the
/// compile stack ([`crate::bounded::on_compile_stack`]), as serving does.
/// Without secret values: a role rendering a secret gets an error; see
/// [`validate_with_secrets`].
pub fn validate(repository: &Repository, facts: &BTreeMap<String, Value>) -> Diagnostics {
    validate_with_secrets(repository, facts, &SecretValues::default())
}

/// [`validate`] with the values of secrets (the server's real ones, or
/// `SecretValues::placeholders` for `check`).
pub fn validate_with_secrets(
    repository: &Repository,
    facts: &BTreeMap<String, Value>,
    values: &SecretValues,
) -> Diagnostics {
    crate::bounded::on_compile_stack(|| validate_here(repository, facts, values)).unwrap_or_else(
        |message| {
            Diagnostics(vec![Diagnostic::new(
                "(compiler)",
                Position::UNKNOWN,
                format!("Failed to validate: {message}"),
            )])
        },
    )
}

fn validate_here(
    repository: &Repository,
    facts: &BTreeMap<String, Value>,
    values: &SecretValues,
) -> Diagnostics {
    let mut diagnostics = Diagnostics::default();
    if !repository.settings_ok {
        // Without cms.toml the data hierarchy is unknown; compiling would
        // report missing data that is really there.
        return diagnostics;
    }
    for tags in validation_tags(repository) {
        let attested = example_attested();
        let node = Node {
            id: attested["instance_id"].clone(),
            tags,
            facts: facts.clone(),
            attested,
        };
        match compile_here(repository, &node, values) {
            Ok(catalog) => diagnostics.extend(check_catalog_size(repository, &catalog)),
            Err(found) => {
                for diagnostic in found.iter() {
                    if !is_follow_on(repository, &diagnostic.message) {
                        diagnostics.push(diagnostic.clone());
                    }
                }
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

/// The tag combinations validation compiles, each once, in the order of
/// the roles they are written for: what `check` without tags lists.
/// Roles written for the same nodes (every role without `[match]`, say)
/// share their compiles: a compile is a function of the tags, so each tag
/// set is compiled once, and validating stays linear in the roles.
pub fn validation_tags(repository: &Repository) -> Vec<BTreeMap<String, String>> {
    let mut seen: BTreeSet<BTreeMap<String, String>> = BTreeSet::new();
    let mut ordered = Vec::new();
    for role in repository.roles.values() {
        for tags in candidate_tags(repository, role) {
            if seen.insert(tags.clone()) {
                ordered.push(tags);
            }
        }
    }
    ordered
}

/// A warning for each `[match]` glob that matches no value the
/// repository knows for its tag: no `data/` or `secrets/` layer name, no
/// secret's scope, no other role's plain `[match]` value. Such a glob is
/// compiled for a made-up value (`*` as `example`), and is often a typo
/// (`env = "prd*"`). Token scopes live on the server: a value only a
/// token binds is not known here.
pub fn unmatchable_globs(repository: &Repository) -> Diagnostics {
    let mut warnings = Diagnostics::default();
    for role in repository.roles.values() {
        for (tag, pattern) in &role.matchers {
            if !pattern.contains(['*', '?']) {
                continue;
            }
            let known = known_values(repository, tag);
            if known.iter().any(|value| glob_match(pattern, value)) {
                continue;
            }
            let known_text = if known.is_empty() {
                "none".to_string()
            } else {
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            };
            let position = role
                .match_positions
                .get(tag)
                .copied()
                .unwrap_or(Position::UNKNOWN);
            warnings.push(Diagnostic::new(
                &role.file,
                position,
                format!(
                    "[match] {tag} = {pattern:?} matches no value of tag {tag} this repository knows (known: {known_text}; from layer names under data/ and secrets/, secret scopes and [match] values), so it is compiled for {tag}={}; check its spelling, or add a data/ layer file for the value it should match",
                    pattern.replace('*', "example").replace('?', "x")
                ),
            ));
        }
    }
    warnings
}

/// A warning for each role with `[params]` and no `[match]` that no role
/// includes: it never applies, so validation never compiles it and its
/// mistakes stay unseen.
pub fn unincluded_parameterized_roles(repository: &Repository) -> Diagnostics {
    let included: BTreeSet<&str> = repository
        .roles
        .values()
        .flat_map(|role| role.includes.iter().map(|include| include.role.as_str()))
        .collect();
    let mut warnings = Diagnostics::default();
    for role in repository.roles.values() {
        if role.params.is_empty()
            || !role.matchers.is_empty()
            || included.contains(role.name.as_str())
        {
            continue;
        }
        let position = role
            .params
            .values()
            .map(|param| param.position)
            .min_by_key(|position| (position.line, position.column))
            .unwrap_or(Position::UNKNOWN);
        warnings.push(Diagnostic::new(
            &role.file,
            position,
            format!(
                "role `{}` has [params] and no [match], and no role includes it: it applies to no node, and check compiles none of it; include it with params = {{ … }}",
                role.name
            ),
        ));
    }
    warnings
}

/// The values of a tag the repository names: layer names under `data/`
/// and `secrets/` for a layer written with `{{tag.NAME}}`, plain values
/// of secret scopes and of roles' `[match]`.
fn known_values(repository: &Repository, tag: &str) -> BTreeSet<String> {
    let mut known: BTreeSet<String> = layer_values(repository, tag).collect();
    for role in repository.roles.values() {
        if let Some(value) = role.matchers.get(tag)
            && !value.contains(['*', '?'])
        {
            known.insert(value.clone());
        }
    }
    for secrets in repository.secrets.values() {
        for entry in secrets.values() {
            if let Some(value) = entry.scope.get(tag)
                && !value.contains(['*', '?'])
            {
                known.insert(value.clone());
            }
        }
    }
    known
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
    let mut values: BTreeSet<String> = layer_values(repository, tag)
        .filter(|value| glob_match(pattern, value))
        .collect();
    if values.is_empty() {
        values.insert(pattern.replace('*', "example").replace('?', "x"));
    }
    values.into_iter().collect()
}

/// The values of `tag` that `data/` and `secrets/` layer names give, for
/// layers written exactly with `{{tag.NAME}}` or `{{trusted.tags.NAME}}`.
fn layer_values<'r>(repository: &'r Repository, tag: &str) -> impl Iterator<Item = String> + 'r {
    let placeholders = [
        format!("{{{{tag.{tag}}}}}"),
        format!("{{{{trusted.tags.{tag}}}}}"),
    ];
    let shapes: Vec<(String, String)> = repository
        .settings
        .hierarchy
        .layers
        .iter()
        .filter_map(|layer| {
            placeholders
                .iter()
                .find_map(|placeholder| layer.split_once(placeholder.as_str()))
                .map(|(before, after)| (before.to_string(), after.to_string()))
        })
        .collect();
    let names: Vec<&'r String> = repository
        .data
        .keys()
        .chain(repository.secrets.keys())
        .collect();
    shapes.into_iter().flat_map(move |(before, after)| {
        names
            .clone()
            .into_iter()
            .filter_map(move |name| {
                name.strip_prefix(before.as_str())
                    .and_then(|rest| rest.strip_suffix(after.as_str()))
                    .filter(|value| {
                        !value.is_empty() && !value.contains('/') && !value.contains("{{")
                    })
                    .map(str::to_string)
            })
            .collect::<Vec<_>>()
    })
}
