//! One catalog against another: which resources a new revision adds,
//! removes or changes, and for a changed one which fields, for
//! `cms-server diff` (`fleet_diff`).
//!
//! A field's values are shown (`from`, `to`), and a content (a field
//! `…_sha256` whose bytes the catalog holds: a file's content, a java_app's
//! configuration) as a unified diff of its text. A resource that is
//! `sensitive` in either catalog (it rendered a secret, or its role said
//! so) shows only the names of its changed fields (`content changed
//! (sensitive)`): never a value, a diff, or a content hash.

use std::collections::BTreeMap;

use cms_roles::{Catalog, Resource};
use serde::{Deserialize, Serialize};

/// The note of every changed field of a sensitive resource.
pub const SENSITIVE: &str = "changed (sensitive)";

/// Diffs of contents larger than this (either side) are summarised.
pub const MAX_DIFF_INPUT: usize = 256 * 1024;

/// What happened to one resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResourceChange {
    /// `type:name`, as in the catalog.
    pub reference: String,
    /// `added`, `removed` or `changed`.
    pub change: String,
    /// For `changed`: each field that differs, in the catalog's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

/// One field of a changed resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FieldChange {
    /// The field's name; a content hash field is named without `_sha256`
    /// (`content`, `config`).
    pub field: String,
    /// The old and new values as JSON text; absent for contents and for
    /// sensitive resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// A unified diff of a text content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// What is said instead of values: `changed (sensitive)`, `binary
    /// content changed (10 → 12 bytes)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The changes from `old` to `new`: removed resources first (in `old`'s
/// order), then added and changed ones (in `new`'s order). Empty when the
/// catalogs are the same.
pub fn diff(old: &Catalog, new: &Catalog) -> Vec<ResourceChange> {
    if old.catalog_id == new.catalog_id && !old.catalog_id.is_empty() {
        return Vec::new();
    }
    let before: BTreeMap<&str, &Resource> = old
        .resources
        .iter()
        .map(|r| (r.reference.as_str(), r))
        .collect();
    let after: BTreeMap<&str, &Resource> = new
        .resources
        .iter()
        .map(|r| (r.reference.as_str(), r))
        .collect();
    let mut changes = Vec::new();
    for resource in &old.resources {
        if !after.contains_key(resource.reference.as_str()) {
            changes.push(ResourceChange {
                reference: resource.reference.clone(),
                change: "removed".into(),
                fields: Vec::new(),
            });
        }
    }
    for resource in &new.resources {
        match before.get(resource.reference.as_str()) {
            None => changes.push(ResourceChange {
                reference: resource.reference.clone(),
                change: "added".into(),
                fields: Vec::new(),
            }),
            Some(previous) => {
                let fields = changed_fields(previous, old, resource, new);
                if !fields.is_empty() {
                    changes.push(ResourceChange {
                        reference: resource.reference.clone(),
                        change: "changed".into(),
                        fields,
                    });
                }
            }
        }
    }
    changes
}

/// A resource's fields as name → JSON value: its placement (`role`,
/// `require`, `notify`, `sensitive`), then its kind's own fields.
fn fields_of(resource: &Resource) -> Vec<(String, serde_json::Value)> {
    let mut fields = vec![
        ("role".to_string(), serde_json::json!(resource.role)),
        ("require".to_string(), serde_json::json!(resource.require)),
        ("notify".to_string(), serde_json::json!(resource.notify)),
        (
            "sensitive".to_string(),
            serde_json::json!(resource.sensitive),
        ),
    ];
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&resource.kind) {
        fields.extend(map.into_iter().filter(|(name, _)| name != "type"));
    }
    fields
}

/// Fields that say where a resource sits, never what it holds: shown
/// even for a sensitive resource.
const PLACEMENT: &[&str] = &["role", "require", "notify", "sensitive"];

fn changed_fields(
    old: &Resource,
    old_catalog: &Catalog,
    new: &Resource,
    new_catalog: &Catalog,
) -> Vec<FieldChange> {
    let sensitive = old.sensitive || new.sensitive;
    let before: BTreeMap<String, serde_json::Value> = fields_of(old).into_iter().collect();
    let mut seen = std::collections::BTreeSet::new();
    let mut changes = Vec::new();
    let null = serde_json::Value::Null;
    let mut compare = |name: &str, from: &serde_json::Value, to: &serde_json::Value| {
        if from == to {
            return;
        }
        let is_content = name.ends_with("sha256");
        let shown = name
            .strip_suffix("_sha256")
            .or_else(|| name.strip_suffix("sha256").map(|_| "content"))
            .unwrap_or(name)
            .to_string();
        let mut change = FieldChange {
            field: shown.clone(),
            from: None,
            to: None,
            diff: None,
            note: None,
        };
        if sensitive && !PLACEMENT.contains(&name) {
            change.note = Some(if is_content {
                format!("{shown} {SENSITIVE}")
            } else {
                SENSITIVE.to_string()
            });
        } else if is_content {
            let bytes = |value: &serde_json::Value, catalog: &Catalog| {
                value
                    .as_str()
                    .and_then(|hash| catalog.contents.get(hash))
                    .map(|content| content.0.clone())
            };
            match (bytes(from, old_catalog), bytes(to, new_catalog)) {
                (Some(a), Some(b)) => content_change(&mut change, &a, &b),
                (a, b) => {
                    // A content not in the catalog (a downloaded artifact):
                    // its hash is what the catalog says about it.
                    if a.is_none() && b.is_none() {
                        change.from = Some(from.to_string());
                        change.to = Some(to.to_string());
                    } else {
                        change.note = Some(format!(
                            "{shown} {}",
                            if from.is_null() {
                                "set"
                            } else if to.is_null() {
                                "unset"
                            } else {
                                "changed"
                            }
                        ));
                        if let Some(b) = b {
                            content_change(&mut change, &[], &b);
                        } else if let Some(a) = a {
                            content_change(&mut change, &a, &[]);
                        }
                    }
                }
            }
        } else {
            change.from = Some(from.to_string());
            change.to = Some(to.to_string());
        }
        changes.push(change);
    };
    for (name, to) in fields_of(new) {
        let from = before.get(&name).unwrap_or(&null);
        compare(&name, from, &to);
        seen.insert(name);
    }
    for (name, from) in &before {
        if !seen.contains(name) {
            compare(name, from, &null);
        }
    }
    changes
}

/// A unified diff of two text contents, or a note for binary or very
/// large ones.
fn content_change(change: &mut FieldChange, old: &[u8], new: &[u8]) {
    let text = |bytes: &[u8]| std::str::from_utf8(bytes).ok().map(str::to_owned);
    match (text(old), text(new)) {
        (Some(a), Some(b)) if a.len() <= MAX_DIFF_INPUT && b.len() <= MAX_DIFF_INPUT => {
            let diff = similar::TextDiff::from_lines(&a, &b)
                .unified_diff()
                .context_radius(3)
                .header("old", "new")
                .to_string();
            change.diff = Some(diff);
        }
        _ => {
            change.note = Some(format!(
                "{} content changed ({} → {} bytes)",
                if text(old).is_some() && text(new).is_some() {
                    "large"
                } else {
                    "binary"
                },
                old.len(),
                new.len()
            ));
        }
    }
}

/// The changes as people read them, each line indented by `indent`.
pub fn render(changes: &[ResourceChange], indent: &str) -> String {
    let mut out = String::new();
    for change in changes {
        out.push_str(&format!("{indent}{} {}\n", change.reference, change.change));
        for field in &change.fields {
            let mut line = format!("{indent}  {}", field.field);
            if let (Some(from), Some(to)) = (&field.from, &field.to) {
                line.push_str(&format!(": {from} → {to}"));
            }
            if let Some(note) = &field.note {
                line.push_str(&format!(": {note}"));
            } else if field.diff.is_some() && field.from.is_none() {
                line.push_str(" changed:");
            }
            out.push_str(&line);
            out.push('\n');
            if let Some(diff) = &field.diff {
                for diff_line in diff.lines() {
                    out.push_str(&format!("{indent}    {diff_line}\n"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cms_roles::{Node, RepoFiles, Repository, SecretValues, compile_with_secrets};

    fn catalog(role: &str, template: &str, secrets: &SecretValues) -> Catalog {
        let mut files = RepoFiles::new();
        files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
        files.insert("templates/app.conf.hbs", template);
        files.insert(
            "secrets/common.toml",
            "[db_password]\nfrom = \"ssm:/prod/db\"\n",
        );
        files.insert("roles/web.toml", role);
        let repository = Repository::parse(files).expect("valid");
        let node = Node {
            id: "n1".into(),
            tags: BTreeMap::from([("role".into(), "web".into())]),
            facts: BTreeMap::new(),
            attested: BTreeMap::new(),
        };
        compile_with_secrets(&repository, &node, secrets).expect("compiles")
    }

    fn plain(role: &str) -> Catalog {
        catalog(role, "port=80\n", &SecretValues::new())
    }

    const BASE: &str = "[[package]]\nname = \"nginx\"\n[[file]]\npath = \"/etc/app.conf\"\ntemplate = \"app.conf.hbs\"\nmode = \"0644\"\n";

    #[test]
    fn the_same_catalog_has_no_changes() {
        assert_eq!(diff(&plain(BASE), &plain(BASE)), Vec::new());
    }

    #[test]
    fn added_and_removed_resources_are_named() {
        let old = plain(BASE);
        let new = plain(&BASE.replace("nginx", "curl"));
        let changes = diff(&old, &new);
        let summary: Vec<(&str, &str)> = changes
            .iter()
            .map(|c| (c.reference.as_str(), c.change.as_str()))
            .collect();
        assert_eq!(
            summary,
            [("package:nginx", "removed"), ("package:curl", "added")]
        );
    }

    #[test]
    fn a_changed_field_is_named_with_its_old_and_new_value() {
        let old = plain(BASE);
        let new = plain(&BASE.replace("0644", "0600"));
        let changes = diff(&old, &new);
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].reference, "file:/etc/app.conf");
        assert_eq!(changes[0].change, "changed");
        assert_eq!(changes[0].fields.len(), 1, "{changes:?}");
        let field = &changes[0].fields[0];
        assert_eq!(field.field, "mode");
        assert!(field.from.as_deref().unwrap().contains("644"), "{field:?}");
        assert!(field.to.as_deref().unwrap().contains("600"), "{field:?}");
    }

    #[test]
    fn a_changed_content_shows_a_unified_diff_and_no_hash() {
        let old = catalog(BASE, "port=80\nworkers=4\n", &SecretValues::new());
        let new = catalog(BASE, "port=8080\nworkers=4\n", &SecretValues::new());
        let changes = diff(&old, &new);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let field = &changes[0].fields[0];
        assert_eq!(field.field, "content");
        let diff = field.diff.as_deref().expect("a diff");
        assert!(diff.contains("-port=80\n"), "{diff}");
        assert!(diff.contains("+port=8080\n"), "{diff}");
        assert!(diff.contains(" workers=4\n"), "{diff}");
        let text = render(&changes, "  ");
        assert!(text.contains("file:/etc/app.conf changed"), "{text}");
        assert!(text.contains("content changed:"), "{text}");
    }

    /// The attack: a secret rotated between two revisions must not show
    /// in the diff, neither its old nor its new value, nor a hash of the
    /// content that holds it.
    #[test]
    fn a_secret_changing_between_revisions_is_never_shown() {
        let template = "port=80\npassword={{secret \"db_password\"}}\n";
        let mut old_values = SecretValues::new();
        old_values.insert_aws("ssm:/prod/db", b"hunter2-old".to_vec());
        let mut new_values = SecretValues::new();
        new_values.insert_aws("ssm:/prod/db", b"s3cret-new".to_vec());
        let role = BASE.replace("0644", "0640");
        let old = catalog(BASE, template, &old_values);
        let new = catalog(&role, &template.replace("80", "81"), &new_values);
        assert!(new.resources.iter().any(|r| r.sensitive));
        let changes = diff(&old, &new);
        let file = changes
            .iter()
            .find(|c| c.reference == "file:/etc/app.conf")
            .expect("the file changed");
        let content = file
            .fields
            .iter()
            .find(|f| f.field == "content")
            .expect("its content changed");
        assert_eq!(content.note.as_deref(), Some("content changed (sensitive)"));
        let mode = file.fields.iter().find(|f| f.field == "mode").unwrap();
        assert_eq!(mode.note.as_deref(), Some(SENSITIVE));
        let json = serde_json::to_string(&changes).unwrap();
        let text = render(&changes, "");
        let hashes: Vec<&String> = old.contents.keys().chain(new.contents.keys()).collect();
        for shown in [&json, &text] {
            for secret in ["hunter2", "s3cret", "password=", "port=81", "0640"] {
                assert!(!shown.contains(secret), "{secret} shown: {shown}");
            }
            for hash in &hashes {
                assert!(!shown.contains(hash.as_str()), "a hash shown: {shown}");
            }
        }
    }

    #[test]
    fn a_resource_sensitive_in_the_old_revision_only_is_still_redacted() {
        let mut values = SecretValues::new();
        values.insert_aws("ssm:/prod/db", b"hunter2".to_vec());
        let old = catalog(BASE, "pw={{secret \"db_password\"}}\n", &values);
        let new = catalog(BASE, "pw=none\n", &values);
        let changes = diff(&old, &new);
        let text = format!(
            "{}{}",
            render(&changes, ""),
            serde_json::to_string(&changes).unwrap()
        );
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("pw="), "{text}");
        assert!(text.contains("content changed (sensitive)"), "{text}");
        // That it is no longer sensitive is said: a flag, not a value.
        assert!(text.contains("sensitive: true → false"), "{text}");
    }
}
