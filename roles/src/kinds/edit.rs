//! What the file-editing kinds share: `line`, `ini`, `properties`, `json`
//! and `yaml` each edit a file the role does not own (a configuration
//! file a package ships), keeping everything they are not told to change.
//!
//! One resource owns a set of lines or keys of one file and is named by
//! its path (`ini:/etc/php.ini`). The catalog carries an [`EditedFile`]:
//! the path, whether to create a missing file, the owner, group and mode to
//! enforce, and the edits. Every editing kind is declared with an
//! [`EditSpec`]; the four key-value kinds (`settings` to set, `remove` to
//! remove) differ only in
//! how a settings table names keys and which values a key may hold
//! ([`KeyRules`]); [`keyed_kind!`] declares such a kind. A file declared by
//! a `[[file]]` and edited by one of these, or edited by two of them, is a
//! compile error (`Kind::edited_path`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{LineEdit, Mode, Problems, check_path};

/// A file edited in place, as a catalog carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditedFile<E> {
    pub path: String,
    /// Create the file (empty, then edited) when it is missing; otherwise a
    /// missing file is an error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub create: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// In the order they are made.
    pub edits: Vec<E>,
}

/// One key to set or remove, for `ini`, `properties`, `json` and `yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEdit {
    /// `[section, key]` for ini, `[key]` for properties, the path's parts
    /// for json and yaml.
    pub key: Vec<String>,
    /// The value to set; `None` removes the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

impl KeyEdit {
    /// The key as roles write it: `mysqld.max_connections`, `server.port`.
    pub fn dotted(&self) -> String {
        self.key
            .iter()
            .filter(|part| !part.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// An editing kind as a role declares it: the fields of every edited
/// file, and its edits: `lines` for `line`, `settings` and `remove` for
/// the key-value kinds (a field of the other sort is an error naming it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditSpec {
    pub path: String,
    #[serde(default)]
    pub create: bool,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<Mode>,
    /// Keys to set, as a table (nested tables name nested keys).
    pub settings: Option<Map<String, Value>>,
    /// Keys to remove, dotted.
    pub remove: Option<Vec<String>>,
    /// A `line` resource's entries.
    pub lines: Option<Vec<LineEdit>>,
}

impl EditSpec {
    /// The catalog's file with these edits; checks the path, and refuses
    /// the fields of the other sort of kind.
    pub(crate) fn into_file<E>(
        self,
        kind: &str,
        edits: Vec<E>,
        problems: &mut Problems,
    ) -> EditedFile<E> {
        check_path(&self.path, "path", problems);
        let (own, foreign): (&str, &[(&'static str, bool)]) = if kind == "line" {
            (
                "`lines`",
                &[
                    ("settings", self.settings.is_some()),
                    ("remove", self.remove.is_some()),
                ],
            )
        } else {
            (
                "`settings` and `remove`",
                &[("lines", self.lines.is_some())],
            )
        };
        for (field, written) in foreign {
            if *written {
                problems.push((
                    field,
                    format!("a {kind} resource has no `{field}`: it takes {own}"),
                ));
            }
        }
        EditedFile {
            path: self.path,
            create: self.create,
            owner: self.owner,
            group: self.group,
            mode: self.mode,
            edits,
        }
    }
}

/// How a key-value kind reads `settings` and `remove`.
#[derive(Debug, Clone, Copy)]
pub struct KeyRules {
    pub kind: &'static str,
    pub keys: KeyNaming,
    pub values: KeyValues,
}

/// How the keys of a settings table become a file's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyNaming {
    /// ini: a table at the top is a section, a value at the top a key
    /// before the first section; deeper tables join their keys with `.`
    /// (`opcache.enable`). `remove` splits at the first `.`.
    Sections,
    /// properties: every level joined with `.` into one key.
    Flat,
    /// json and yaml: every level, and every `.` in a key, is one step of
    /// the path.
    Path,
}

/// Which values a key may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyValues {
    /// A string, number or boolean, written as text. `one_line`: a string
    /// must sit on an ini line as it is (no line break, no blank at either
    /// end, no ` ;` or ` #` that would read as a comment).
    Text { one_line: bool },
    /// A string, number or boolean, kept typed (yaml).
    Scalar,
    /// Anything, kept typed (json).
    Any,
}

/// Resolves a key-value kind's spec, pushing every problem with its field.
pub fn resolve_keys(
    spec: EditSpec,
    rules: KeyRules,
    problems: &mut Problems,
) -> Option<EditedFile<KeyEdit>> {
    let kind = rules.kind;
    let mut edits = Vec::new();
    for (name, value) in spec.settings.iter().flatten() {
        flatten(rules, Vec::new(), name, value, &mut edits, problems);
    }
    for dotted in spec.remove.iter().flatten() {
        let key = match rules.keys {
            KeyNaming::Sections => match dotted.split_once('.') {
                Some((section, key)) => vec![section.to_string(), key.to_string()],
                None => vec![String::new(), dotted.clone()],
            },
            KeyNaming::Flat => vec![dotted.clone()],
            KeyNaming::Path => dotted.split('.').map(str::to_string).collect(),
        };
        if key.last().is_none_or(String::is_empty)
            || (rules.keys == KeyNaming::Path && key.iter().any(String::is_empty))
        {
            problems.push((
                "remove",
                format!("remove: `{dotted}` has an empty key; write the key's name, e.g. \"section.key\""),
            ));
            continue;
        }
        edits.push(KeyEdit { key, value: None });
    }
    if edits.is_empty() && problems.is_empty() {
        problems.push((
            "settings",
            format!("a {kind} resource sets or removes at least one key: add `settings = {{ KEY = VALUE }}` or `remove = [\"KEY\"]`"),
        ));
    }
    check_distinct(rules, &edits, problems);
    Some(spec.into_file(kind, edits, problems))
}

/// Turns one entry of `settings` into key edits.
fn flatten(
    rules: KeyRules,
    parent: Vec<String>,
    name: &str,
    value: &Value,
    edits: &mut Vec<KeyEdit>,
    problems: &mut Problems,
) {
    let mut key = parent.clone();
    match rules.keys {
        KeyNaming::Path => key.extend(name.split('.').map(str::to_string)),
        KeyNaming::Flat => match key.last_mut() {
            Some(last) => *last = format!("{last}.{name}"),
            None => key.push(name.to_string()),
        },
        KeyNaming::Sections => match key.len() {
            0 | 1 => key.push(name.to_string()),
            _ => {
                let last = key.last_mut().expect("two parts");
                *last = format!("{last}.{name}");
            }
        },
    }
    let dotted = key.join(".");
    if name.is_empty() || (rules.keys == KeyNaming::Path && key.iter().any(String::is_empty)) {
        problems.push((
            "settings",
            format!("settings: `{dotted}` has an empty key; every key needs a name"),
        ));
        return;
    }
    if let Value::Object(table) = value {
        if table.is_empty() && rules.values == KeyValues::Any {
            edits.push(KeyEdit {
                key,
                value: Some(value.clone()),
            });
            return;
        }
        if table.is_empty() {
            problems.push((
                "settings",
                format!("settings: `{dotted}` is an empty table; give it keys, or leave it out"),
            ));
        }
        for (child, child_value) in table {
            flatten(rules, key.clone(), child, child_value, edits, problems);
        }
        return;
    }
    if rules.keys == KeyNaming::Sections && parent.is_empty() {
        // A value at the top is a key before the first section.
        key.insert(0, String::new());
    }
    let kind = rules.kind;
    let accepted = match (rules.values, value) {
        (KeyValues::Any, _) => Ok(value.clone()),
        (_, Value::Array(_)) => Err(format!(
            "settings: `{dotted}` is a list, but {kind} values are strings, numbers or booleans; write it as one string"
        )),
        (KeyValues::Scalar, Value::String(_) | Value::Number(_) | Value::Bool(_)) => {
            Ok(value.clone())
        }
        (KeyValues::Text { one_line }, Value::String(text)) => {
            if one_line && text.contains(['\n', '\r']) {
                Err(format!(
                    "settings: the value of `{dotted}` holds a line break, which a {kind} file cannot hold; write it on one line"
                ))
            } else if one_line && text.trim() != text {
                Err(format!(
                    "settings: the value of `{dotted}` starts or ends with a blank, which {kind} readers drop; write it without"
                ))
            } else if one_line && [" ;", " #", "\t;", "\t#"].iter().any(|c| text.contains(c)) {
                Err(format!(
                    "settings: the value of `{dotted}` holds ` ;` or ` #`, which {kind} readers take for the start of a comment; write it without the blank before"
                ))
            } else {
                Ok(value.clone())
            }
        }
        (KeyValues::Text { .. }, Value::Number(number)) => Ok(Value::String(number.to_string())),
        (KeyValues::Text { .. }, Value::Bool(flag)) => Ok(Value::String(flag.to_string())),
        (_, other) => Err(format!(
            "settings: `{dotted}` is {}, expected a string, number or boolean",
            match other {
                Value::Null => "null",
                _ => "of another type",
            }
        )),
    };
    match accepted {
        Ok(value) => edits.push(KeyEdit {
            key,
            value: Some(value),
        }),
        Err(message) => problems.push(("settings", message)),
    }
}

/// Refuses a key both set and removed, and (for paths) a key set under a
/// key that is itself set to a value.
fn check_distinct(rules: KeyRules, edits: &[KeyEdit], problems: &mut Problems) {
    let mut seen: BTreeSet<&[String]> = BTreeSet::new();
    for edit in edits {
        if !seen.insert(&edit.key) {
            problems.push((
                "remove",
                format!(
                    "`{}` is both in settings and in remove (or twice): keep it in one place",
                    edit.dotted()
                ),
            ));
        }
    }
    if rules.keys != KeyNaming::Path {
        return;
    }
    for edit in edits.iter().filter(|e| e.value.is_some()) {
        for other in edits {
            if other.key.len() > edit.key.len() && other.key.starts_with(&edit.key) {
                problems.push((
                    "settings",
                    format!(
                        "`{}` is set to a value and `{}` is a key inside it: set one or the other",
                        edit.dotted(),
                        other.dotted()
                    ),
                ));
            }
        }
    }
}

/// A key-value kind's summary for `check`: how many keys, never a value.
pub fn keys_summary(file: &EditedFile<KeyEdit>) -> String {
    let set = file.edits.iter().filter(|e| e.value.is_some()).count();
    let removed = file.edits.len() - set;
    let mut summary = format!(" set={set}");
    if removed > 0 {
        summary.push_str(&format!(" remove={removed}"));
    }
    if file.create {
        summary.push_str(" create");
    }
    summary
}

/// Declares a key-value kind: its catalog type (an [`EditedFile`] of
/// [`KeyEdit`]s) and its `Kind` implementation.
macro_rules! keyed_kind {
    ($(#[$doc:meta])* $kind:ident, $rules:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $kind(pub super::edit::EditedFile<super::edit::KeyEdit>);

        impl super::Kind for $kind {
            type Spec = super::edit::EditSpec;
            const PATH_NAMED: bool = true;
            const REFRESHABLE: bool = false;

            fn name(&self) -> &str {
                &self.0.path
            }

            fn resolve(spec: super::edit::EditSpec, cx: &mut super::Resolver<'_>) -> Option<$kind> {
                super::edit::resolve_keys(spec, $rules, &mut cx.problems).map($kind)
            }

            fn summary(&self) -> String {
                super::edit::keys_summary(&self.0)
            }

            fn edited_path(&self) -> Option<&str> {
                Some(&self.0.path)
            }
        }
    };
}
pub(crate) use keyed_kind;
