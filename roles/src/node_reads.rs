//! What a whole repository can read of a node, whichever roles the node
//! gets: the server keys its catalog cache by it, so that nodes share a
//! compile exactly when nothing the repository can read tells them apart.

use serde_json::Value;

use crate::reads::{NodeReads, for_each_access, inline, strings, walk};
use crate::repository::Repository;

impl NodeReads {
    /// What every role, template and field of the repository can read,
    /// whichever roles a node gets.
    pub fn of(repository: &Repository) -> NodeReads {
        let mut accesses = Vec::new();
        for (_, template) in repository.templates.compiled() {
            walk(template, &mut accesses);
        }
        for role in repository.roles.values() {
            for declared in &role.resources {
                if let Some(expression) = &declared.for_each {
                    accesses.push(for_each_access(expression));
                }
                for reference in declared.require.iter().chain(&declared.notify) {
                    inline(reference, &mut accesses);
                }
                if let Value::Object(fields) = &declared.fields {
                    let literal = declared.resource_type.literal_fields();
                    for (name, value) in fields {
                        if !literal.contains(&name.as_str()) {
                            strings(value, &mut accesses);
                        }
                    }
                }
            }
        }
        let mut reads = NodeReads::default();
        for access in &accesses {
            reads.add(access);
        }
        reads
    }
}
