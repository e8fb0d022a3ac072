//! What a whole repository can read of a node, whichever roles the node
//! gets: the server keys its catalog cache by it, so that nodes share a
//! compile exactly when nothing the repository can read tells them apart.
//! Also what a repository's `secret` helpers name: the AWS references the
//! server must fetch ([`aws_references`]) and stand-ins for every secret
//! (`SecretValues::placeholders`).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::reads::{Access, NodeReads, for_each_access, inline, strings, walk};
use crate::repository::{Repository, Role};
use crate::secrets::{SecretSource, SecretValues, from_references, is_aws_reference};

/// Every read of every template, field, reference, `for_each` and include
/// parameter of the repository.
fn accesses(repository: &Repository) -> Vec<Access> {
    let mut accesses = Vec::new();
    for (_, template) in repository.templates.compiled() {
        walk(template, &mut accesses);
    }
    for role in repository.roles.values() {
        declared_accesses(role, &mut accesses);
    }
    accesses
}

/// What a role reads where it is written, templates aside: the values its
/// includes give, its `for_each` expressions, references and fields
/// (except the kinds' literal fields).
pub(crate) fn declared_accesses(role: &Role, accesses: &mut Vec<Access>) {
    for include in &role.includes {
        for given in include.params.values() {
            strings(&given.value, accesses);
        }
    }
    for declared in &role.resources {
        if let Some(expression) = &declared.for_each {
            accesses.push(for_each_access(expression));
        }
        for reference in declared.require.iter().chain(&declared.notify) {
            inline(reference, accesses);
        }
        if let Value::Object(fields) = &declared.fields {
            let literal = declared.resource_type.literal_fields();
            for (name, value) in fields {
                if !literal.contains(&name.as_str()) {
                    strings(value, accesses);
                }
            }
        }
    }
}

impl NodeReads {
    /// What every role, template and field of the repository can read,
    /// whichever roles a node gets. A `secret` helper reads the node values
    /// the scopes of that key name (`trusted.<key>`; tags are part of
    /// every key); one whose key is not a literal reads everything.
    pub fn of(repository: &Repository) -> NodeReads {
        let mut reads = NodeReads::default();
        let mut secret_keys = BTreeSet::new();
        for access in &accesses(repository) {
            match access.secret() {
                Some(Some(key)) => {
                    secret_keys.insert(key.to_string());
                }
                Some(None) => return NodeReads::everything(),
                None => reads.add(access),
            }
        }
        for layer in repository.secrets.values() {
            for (key, entry) in layer {
                if !secret_keys.contains(key) {
                    continue;
                }
                for name in entry.scope.keys() {
                    if let Some(attested) = name.strip_prefix("trusted.") {
                        reads.attested.insert(attested.to_string());
                    }
                }
            }
        }
        reads
    }
}

/// Every AWS reference the repository can render: the `from =` of its
/// secrets and the literal parameters of `secret` helpers that are AWS
/// references (`{{secret "ssm:/prod/x"}}`). The server fetches these.
pub fn aws_references(repository: &Repository) -> BTreeSet<String> {
    let mut references = from_references(&repository.secrets);
    for access in &accesses(repository) {
        if let Some(Some(key)) = access.secret()
            && is_aws_reference(key)
        {
            references.insert(key.to_string());
        }
    }
    references
}

impl SecretValues {
    /// A stand-in for every secret of the repository and every AWS
    /// reference it names, so that `check` compiles without the server's
    /// key or credentials. A stand-in is `placeholder:<key>` (or
    /// `placeholder:<reference>`), UTF-8.
    pub fn placeholders(repository: &Repository) -> SecretValues {
        let mut values = SecretValues::new();
        for (layer, secrets) in &repository.secrets {
            for (key, entry) in secrets {
                match &entry.source {
                    SecretSource::Age(_) => {
                        values.insert_age(layer, key, format!("placeholder:{key}").into_bytes());
                    }
                    SecretSource::Aws(reference) => values
                        .insert_aws(reference, format!("placeholder:{reference}").into_bytes()),
                }
            }
        }
        for reference in aws_references(repository) {
            values.insert_aws(&reference, format!("placeholder:{reference}").into_bytes());
        }
        values
    }
}
