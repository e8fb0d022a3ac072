//! Parsing a roles repository: `cms.toml` (its `[rollout]` parsed by
//! `rollout`, its `[restarts]` by `restarts`), `roles/*.toml`, `templates/**`, `files/**`, `data/**.toml` and
//! `secrets/**.toml` (parsed by `secrets`), into a [`Repository`] that can
//! compile catalogs for any number of nodes.
//!
//! Parsing reports every problem it finds, not just the first: each file is
//! parsed on its own, and TOML's recoverable parser keeps going after a
//! syntax error. Resources are checked against their types (unknown fields
//! are errors) here when they contain no placeholders, and after rendering
//! when they do.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::diagnostic::{Diagnostic, Diagnostics, LineIndex, Position, unknown_key_message};
use crate::kinds::{RESOURCE_TYPES, ResourceType, Spec};
use crate::params::{Include, Param, include_problems, parse_includes, parse_params};
use crate::reads::untrusted_read_in_layer;
use crate::restarts::{RestartBudgets, check_restart_roles, parse_restarts};
use crate::rollout::{RolloutPolicy, parse_rollout};
use crate::secrets::{SecretEntry, check_recipient, parse_secret_file};
use crate::source::{Entry, RepoFiles, SETTINGS_FILE};
use crate::template::{Templates, has_placeholders};
use crate::toml_json::to_json;

/// A parsed roles repository.
#[derive(Debug)]
pub struct Repository {
    pub settings: Settings,
    /// Roles by name (the file stem of `roles/<name>.toml`).
    pub roles: BTreeMap<String, Role>,
    /// Every template under `templates/`, compiled.
    pub templates: Templates,
    /// Data files by layer path (`env/prod` for `data/env/prod.toml`).
    pub data: BTreeMap<String, Value>,
    /// Where each key of each data file was written, by layer path then
    /// by key path (`["sysctl", "somaxconn"]`): what `explain` names as a
    /// value's origin. Elements of lists have none (a list is replaced
    /// whole, never merged).
    pub data_positions: BTreeMap<String, BTreeMap<Vec<String>, Position>>,
    /// Secrets by layer path (`env/prod` for `secrets/env/prod.toml`), then
    /// by key. Values are not here: only their armored or AWS sources.
    pub secrets: BTreeMap<String, BTreeMap<String, SecretEntry>>,
    /// All files, for `source` lookups.
    pub files: RepoFiles,
    /// Role files that could not be parsed at all (TOML syntax errors).
    /// What they declare is unknown, so references that find nothing are
    /// not reported while any exist: the syntax error is reported instead.
    pub unparsed_roles: BTreeSet<String>,
    /// References of resources that failed to parse; references to them are
    /// not reported again as dangling.
    pub failed_references: BTreeSet<String>,
    /// Data files that could not be parsed (their error is reported): the
    /// values they hold are unknown, so a value found missing while any
    /// exist is not reported again as undefined.
    pub unparsed_data: BTreeSet<String>,
    /// Whether `cms.toml` was read; without it the hierarchy is a guess and
    /// compiling would report errors that are not there.
    pub settings_ok: bool,
}

/// `cms.toml`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub hierarchy: Hierarchy,
    pub secrets: SecretsSettings,
    /// `[rollout]`; `None` without the table: every accepted commit is
    /// served to every node of the environment at once.
    pub rollout: Option<RolloutPolicy>,
    /// `[restarts]`; `None` without the table: no node waits for a place
    /// before restarting a service.
    pub restarts: Option<RestartBudgets>,
}

/// `cms.toml` as serde reads it. `[rollout]` and `[restarts]` are only
/// checked to be there and are read by [`parse_rollout`] and
/// [`parse_restarts`], key by key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrittenSettings {
    #[serde(default)]
    hierarchy: Hierarchy,
    #[serde(default)]
    secrets: SecretsSettings,
    #[serde(default, rename = "rollout")]
    _rollout: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "restarts")]
    _restarts: Option<serde::de::IgnoredAny>,
}

/// `[secrets]` of `cms.toml`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSettings {
    /// The age public keys (`age1…`) every age secret is encrypted to: the
    /// server's and the team's break-glass key.
    #[serde(default)]
    pub recipients: Vec<String>,
}

/// The data hierarchy, most specific layer first.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hierarchy {
    pub layers: Vec<String>,
}

impl Default for Hierarchy {
    fn default() -> Self {
        Hierarchy {
            layers: vec!["common".to_string()],
        }
    }
}

/// One role file.
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    /// `roles/<name>.toml`.
    pub file: String,
    pub description: Option<String>,
    /// Tag name → value or glob; all must hold.
    pub matchers: BTreeMap<String, String>,
    /// Where each `[match]` entry's value was written, by tag name.
    pub match_positions: BTreeMap<String, Position>,
    /// Roles applied before this one, in the order written.
    pub includes: Vec<Include>,
    /// `[params]`: what an include gives it. A role with parameters
    /// applies only where included, unless it has a `[match]`.
    pub params: BTreeMap<String, Param>,
    /// In declaration order.
    pub resources: Vec<DeclaredResource>,
}

/// A resource as written in a role file, before rendering.
#[derive(Debug, Clone)]
pub struct DeclaredResource {
    pub resource_type: ResourceType,
    /// Where its table starts.
    pub position: Position,
    /// Where each of its fields was written.
    pub field_positions: BTreeMap<String, Position>,
    pub require: Vec<String>,
    pub notify: Vec<String>,
    /// `data.apps`: declare one resource per element of that list.
    pub for_each: Option<String>,
    /// `sensitive = true`: the resource is sensitive whether or not it
    /// uses a secret.
    pub sensitive: bool,
    /// The fields as written, without `require`, `notify`, `for_each` and
    /// `sensitive`.
    pub fields: Value,
    /// Whether any field (other than the kind's literal fields, a file's
    /// `content`) holds a placeholder and must be rendered per node.
    pub templated: bool,
    /// The typed resource, when it needs no rendering.
    pub parsed: Option<Spec>,
}

impl DeclaredResource {
    /// Where a field was written, or the resource itself when unknown.
    pub fn position_of(&self, field: &str) -> Position {
        self.field_positions
            .get(field)
            .copied()
            .unwrap_or(self.position)
    }
}

impl Repository {
    /// Parses every file of a repository, reporting all problems found.
    pub fn parse(files: RepoFiles) -> Result<Repository, Diagnostics> {
        let (repository, diagnostics) = Repository::load(files);
        diagnostics.into_result(repository)
    }

    /// Parses what can be parsed and reports the rest: the repository keeps
    /// every role, resource, template and data file that is valid on its
    /// own, so that validation can go on to find the problems that only
    /// compiling shows. Runs on the compile stack
    /// ([`crate::bounded::on_compile_stack`]).
    pub fn load(files: RepoFiles) -> (Repository, Diagnostics) {
        match crate::bounded::on_compile_stack(move || Repository::load_here(files)) {
            Ok(loaded) => loaded,
            Err(message) => (
                Repository::load_here(RepoFiles::new()).0,
                Diagnostics(vec![Diagnostic::new(
                    "(repository)",
                    Position::UNKNOWN,
                    message,
                )]),
            ),
        }
    }

    /// [`Repository::load`] on the caller's stack.
    fn load_here(files: RepoFiles) -> (Repository, Diagnostics) {
        let mut diagnostics = Diagnostics::default();
        for name in files.invalid_names() {
            diagnostics.push(Diagnostic::new(
                name,
                Position::UNKNOWN,
                "the name is not valid UTF-8 (shown with \u{FFFD} for the bytes that are not): rename it; a repository's file names must be UTF-8",
            ));
        }
        let settings = parse_settings(&files, &mut diagnostics);
        let mut templates = Templates::new();
        for (path, entry) in files.under("templates/") {
            match entry {
                Entry::File(bytes) => match std::str::from_utf8(bytes) {
                    Ok(text) => {
                        if let Err(d) = templates.register(path, text) {
                            diagnostics.push(d);
                        }
                    }
                    Err(_) => diagnostics.push(Diagnostic::new(
                        path,
                        Position::UNKNOWN,
                        "template is not valid UTF-8",
                    )),
                },
                Entry::EscapingSymlink(target) => {
                    diagnostics.push(escaping_symlink(path, target));
                }
            }
        }
        for diagnostic in templates.check_partials() {
            diagnostics.push(diagnostic);
        }
        let mut data = BTreeMap::new();
        let mut data_positions = BTreeMap::new();
        let mut unparsed_data = BTreeSet::new();
        for (path, entry) in files.under("data/") {
            let Some(layer) = path
                .strip_prefix("data/")
                .and_then(|p| p.strip_suffix(".toml"))
            else {
                continue;
            };
            match entry {
                Entry::File(bytes) => match parse_data_file(path, bytes, &mut diagnostics) {
                    Some((value, positions)) => {
                        data.insert(layer.to_string(), value);
                        data_positions.insert(layer.to_string(), positions);
                    }
                    None => {
                        unparsed_data.insert(path.to_string());
                    }
                },
                Entry::EscapingSymlink(target) => {
                    diagnostics.push(escaping_symlink(path, target));
                }
            }
        }
        let mut secrets = BTreeMap::new();
        for (path, entry) in files.under("secrets/") {
            let Some(layer) = path
                .strip_prefix("secrets/")
                .and_then(|p| p.strip_suffix(".toml"))
            else {
                continue;
            };
            match entry {
                Entry::File(bytes) => {
                    if let Some(layer_secrets) = parse_secrets_file(path, bytes, &mut diagnostics) {
                        secrets.insert(layer.to_string(), layer_secrets);
                    }
                }
                Entry::EscapingSymlink(target) => {
                    diagnostics.push(escaping_symlink(path, target));
                }
            }
        }
        let mut roles = BTreeMap::new();
        let mut unparsed_roles = BTreeSet::new();
        let mut failed_references = BTreeSet::new();
        for (path, entry) in files.under("roles/") {
            let Some(name) = path
                .strip_prefix("roles/")
                .and_then(|p| p.strip_suffix(".toml"))
            else {
                continue;
            };
            if name.contains('/') {
                diagnostics.push(Diagnostic::new(
                    path,
                    Position::UNKNOWN,
                    "role files live directly in roles/: move it up, or name it after its role",
                ));
                continue;
            }
            match entry {
                Entry::File(bytes) => {
                    match parse_role(name, path, bytes, &mut diagnostics, &mut failed_references) {
                        Some(role) => {
                            roles.insert(name.to_string(), role);
                        }
                        None => {
                            unparsed_roles.insert(name.to_string());
                        }
                    }
                }
                Entry::EscapingSymlink(target) => {
                    diagnostics.push(escaping_symlink(path, target));
                }
            }
        }
        check_includes(&roles, &unparsed_roles, &mut diagnostics);
        check_include_params(&roles, &mut diagnostics);
        if let Some(Entry::File(bytes)) = files.get(SETTINGS_FILE)
            && let Ok(text) = std::str::from_utf8(bytes)
            && settings.as_ref().is_some_and(|s| s.restarts.is_some())
        {
            let known = |role: &str| roles.contains_key(role) || unparsed_roles.contains(role);
            check_restart_roles(text, known, &mut diagnostics);
        }
        let repository = Repository {
            settings_ok: settings.is_some(),
            settings: settings.unwrap_or_default(),
            roles,
            templates,
            data,
            data_positions,
            secrets,
            files,
            unparsed_roles,
            failed_references,
            unparsed_data,
        };
        (repository, diagnostics.into_sorted())
    }

    /// Reads a repository folder and parses what can be parsed.
    pub fn load_dir(root: &std::path::Path) -> (Repository, Diagnostics) {
        match RepoFiles::read_dir(root) {
            Ok(files) => Repository::load(files),
            Err(error) => {
                let mut message = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    message.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                let diagnostics = Diagnostics(vec![Diagnostic::new(
                    root.display().to_string(),
                    Position::UNKNOWN,
                    message,
                )]);
                (Repository::load(RepoFiles::new()).0, diagnostics)
            }
        }
    }

    /// Reads and parses a repository folder, failing on any problem.
    pub fn read_dir(root: &std::path::Path) -> Result<Repository, Diagnostics> {
        let (repository, diagnostics) = Repository::load_dir(root);
        diagnostics.into_result(repository)
    }
}

fn escaping_symlink(path: &str, target: &str) -> Diagnostic {
    Diagnostic::new(
        path,
        Position::UNKNOWN,
        format!("symbolic link to `{target}` leaves the repository; it is never followed"),
    )
}

fn parse_settings(files: &RepoFiles, diagnostics: &mut Diagnostics) -> Option<Settings> {
    let bytes = match files.get(SETTINGS_FILE) {
        Some(Entry::File(bytes)) => bytes,
        Some(Entry::EscapingSymlink(target)) => {
            diagnostics.push(escaping_symlink(SETTINGS_FILE, target));
            return None;
        }
        None => {
            diagnostics.push(Diagnostic::new(
                SETTINGS_FILE,
                Position::UNKNOWN,
                "missing: a roles repository has cms.toml at its root (is --repo the right folder?)",
            ));
            return None;
        }
    };
    let text = utf8(SETTINGS_FILE, bytes, diagnostics)?;
    match toml::from_str::<WrittenSettings>(text) {
        Ok(written) => {
            let mut settings = Settings {
                hierarchy: written.hierarchy,
                secrets: written.secrets,
                rollout: parse_rollout(text, diagnostics),
                restarts: parse_restarts(text, diagnostics),
            };
            if settings.hierarchy.layers.is_empty() {
                diagnostics.push(Diagnostic::new(
                    SETTINGS_FILE,
                    Position::UNKNOWN,
                    "[hierarchy] layers is empty: list at least one layer, e.g. \"common\"",
                ));
            }
            refuse_untrusted_layers(text, &mut settings, diagnostics);
            check_recipients(text, diagnostics);
            Some(settings)
        }
        Err(error) => {
            let lines = LineIndex::new(text);
            let mut diagnostic = toml_diagnostic(SETTINGS_FILE, &lines, &error);
            if error.message().starts_with("unknown field") {
                diagnostic.message = improve_unknown_field(&diagnostic.message, &[]);
            }
            diagnostics.push(diagnostic);
            None
        }
    }
}

/// Layers choose which data a node gets, so they may name only trusted
/// values (`trusted.*`, `tag.*`, `node.id`); a layer naming anything else is
/// reported where it was written and left out, so that not even `check`
/// compiles with it.
fn refuse_untrusted_layers(text: &str, settings: &mut Settings, diagnostics: &mut Diagnostics) {
    #[derive(Deserialize)]
    struct Written {
        hierarchy: Option<WrittenHierarchy>,
    }
    #[derive(Deserialize)]
    struct WrittenHierarchy {
        layers: Vec<Spanned<String>>,
    }
    let lines = LineIndex::new(text);
    let positions: Vec<Position> = toml::from_str::<Written>(text)
        .ok()
        .and_then(|written| written.hierarchy)
        .map(|hierarchy| {
            hierarchy
                .layers
                .iter()
                .map(|layer| lines.position(layer.span().start))
                .collect()
        })
        .unwrap_or_default();
    let mut index = 0;
    settings.hierarchy.layers.retain(|layer| {
        let position = positions.get(index).copied().unwrap_or(Position::UNKNOWN);
        index += 1;
        match untrusted_read_in_layer(layer) {
            Some(message) => {
                diagnostics.push(Diagnostic::new(SETTINGS_FILE, position, message));
                false
            }
            None => true,
        }
    });
}

/// Each `[secrets] recipients` entry must look like an age public key,
/// reported where it is written.
fn check_recipients(text: &str, diagnostics: &mut Diagnostics) {
    #[derive(Deserialize)]
    struct Written {
        secrets: Option<WrittenSecrets>,
    }
    #[derive(Deserialize)]
    struct WrittenSecrets {
        recipients: Option<Vec<Spanned<String>>>,
    }
    let recipients = toml::from_str::<Written>(text)
        .ok()
        .and_then(|written| written.secrets)
        .and_then(|secrets| secrets.recipients)
        .unwrap_or_default();
    let lines = LineIndex::new(text);
    for recipient in recipients {
        if let Err(message) = check_recipient(recipient.get_ref()) {
            diagnostics.push(Diagnostic::new(
                SETTINGS_FILE,
                lines.position(recipient.span().start),
                message,
            ));
        }
    }
}

/// Parses `secrets/<layer>.toml`; `None` when it is not TOML at all.
fn parse_secrets_file(
    path: &str,
    bytes: &[u8],
    diagnostics: &mut Diagnostics,
) -> Option<BTreeMap<String, SecretEntry>> {
    let text = utf8(path, bytes, diagnostics)?;
    let (table, errors) = DeTable::parse_recoverable(text);
    let lines = LineIndex::new(text);
    if !errors.is_empty() {
        for error in &errors {
            diagnostics.push(toml_diagnostic(path, &lines, error));
        }
        return None;
    }
    if let Err(diagnostic) = check_nesting(path, &lines, table.get_ref()) {
        diagnostics.push(diagnostic);
        return None;
    }
    Some(parse_secret_file(path, text, table.get_ref(), diagnostics))
}

fn utf8<'a>(path: &str, bytes: &'a [u8], diagnostics: &mut Diagnostics) -> Option<&'a str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(error) => {
            diagnostics.push(Diagnostic::new(
                path,
                Position::UNKNOWN,
                format!("not valid UTF-8 (byte {})", error.valid_up_to()),
            ));
            None
        }
    }
}

/// A TOML error at its position in the text `lines` indexes.
pub(crate) fn toml_diagnostic(
    path: &str,
    lines: &LineIndex<'_>,
    error: &toml::de::Error,
) -> Diagnostic {
    let position = error
        .span()
        .map(|span| lines.position(span.start))
        .unwrap_or_default();
    let message = error.message().trim();
    if message == "recursion limit" {
        // TOML's own limit, met before ours: say what it means.
        return Diagnostic::new(
            path,
            position,
            format!(
                "tables and arrays nested too deep for TOML's parser; the limit is {MAX_DATA_DEPTH}"
            ),
        );
    }
    if message.starts_with("unexpected leading zero") {
        let line = error.span().map_or("", |span| lines.line_text(span.start));
        if let Some((key, value)) = line.split_once('=') {
            let (key, value) = (key.trim(), value.trim());
            let hint = if key == "mode" {
                format!(
                    "mode {value} is a number with a leading zero, which TOML refuses: write it as a string, mode = \"{value}\", so it is read as octal"
                )
            } else {
                format!(
                    "{key} = {value}: TOML refuses a number with a leading zero; write {key} = \"{value}\" for text, or the number without its leading zeros"
                )
            };
            return Diagnostic::new(path, position, hint);
        }
    }
    Diagnostic::new(path, position, message.to_string())
}

/// A type error of a resource's field, with the field and the resource
/// named: serde's `invalid type: string "yes", expected a boolean` says
/// neither.
fn name_the_field(
    message: &str,
    resource_type: ResourceType,
    item: &Spanned<DeValue<'_>>,
    error: &toml::de::Error,
) -> Option<String> {
    let rest = message.strip_prefix("invalid type: ")?;
    let (found, expected) = rest.split_once(", expected ")?;
    let offset = error.span()?.start;
    let table = item.get_ref().as_table()?;
    let (field, _) = table.iter().find(|(_, value)| {
        let span = value.span();
        span.start <= offset && offset < span.end.max(span.start + 1)
    })?;
    let resource = attempted_reference(resource_type, item)
        .map(|reference| format!("`{reference}`"))
        .unwrap_or_else(|| format!("this {resource_type}"));
    Some(format!(
        "field `{}` of {resource} must be {expected}, not {found}",
        field.get_ref()
    ))
}

/// Where each key of a data file was written, by key path.
type KeyPositions = BTreeMap<Vec<String>, Position>;

fn parse_data_file(
    path: &str,
    bytes: &[u8],
    diagnostics: &mut Diagnostics,
) -> Option<(Value, KeyPositions)> {
    let text = utf8(path, bytes, diagnostics)?;
    let (table, errors) = DeTable::parse_recoverable(text);
    let lines = LineIndex::new(text);
    if !errors.is_empty() {
        for error in &errors {
            diagnostics.push(toml_diagnostic(path, &lines, error));
        }
        return None;
    }
    if let Err(diagnostic) = check_nesting(path, &lines, table.get_ref()) {
        diagnostics.push(diagnostic);
        return None;
    }
    let positions = key_positions(&lines, table.get_ref());
    Some((to_json(&DeValue::Table(table.into_inner())), positions))
}

/// The position of every key of a data file's tables, at any depth (the
/// nesting is bounded by [`check_nesting`], checked before). A key
/// written twice (an array of tables) keeps its first position.
fn key_positions(lines: &LineIndex<'_>, table: &DeTable<'_>) -> KeyPositions {
    let mut positions = KeyPositions::new();
    let mut pending: Vec<(Vec<String>, &DeTable<'_>)> = vec![(Vec::new(), table)];
    while let Some((prefix, table)) = pending.pop() {
        for (key, value) in table.iter() {
            let mut path = prefix.clone();
            path.push(key.get_ref().to_string());
            positions
                .entry(path.clone())
                .or_insert_with(|| lines.position(key.span().start));
            if let DeValue::Table(inner) = value.get_ref() {
                pending.push((path, inner));
            }
        }
    }
    positions
}

/// How deep tables and arrays may nest in a data or role file. Data is
/// merged, rendered and serialized recursively; TOML's own parser allows
/// 80 levels of inline tables and arrays, and any number through dotted
/// keys (`[a.b.c.…]`).
pub const MAX_DATA_DEPTH: usize = 64;

/// Refuses tables and arrays nested deeper than [`MAX_DATA_DEPTH`], at the
/// key or value that passes it. Walks without recursing.
fn check_nesting(path: &str, lines: &LineIndex<'_>, table: &DeTable<'_>) -> Result<(), Diagnostic> {
    let mut pending: Vec<(&DeValue<'_>, usize)> = Vec::new();
    let visit = |offset: usize, depth: usize| {
        if depth > MAX_DATA_DEPTH {
            return Err(Diagnostic::new(
                path,
                lines.position(offset),
                format!("tables and arrays nested {depth} deep; the limit is {MAX_DATA_DEPTH}"),
            ));
        }
        Ok(depth)
    };
    for (key, value) in table.iter() {
        let depth = visit(key.span().start, 1)?;
        pending.push((value.get_ref(), depth));
    }
    while let Some((value, depth)) = pending.pop() {
        match value {
            DeValue::Table(table) => {
                for (key, value) in table.iter() {
                    let depth = visit(key.span().start, depth + 1)?;
                    pending.push((value.get_ref(), depth));
                }
            }
            DeValue::Array(items) => {
                for item in items.iter() {
                    let depth = visit(item.span().start, depth + 1)?;
                    pending.push((item.get_ref(), depth));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn deserialize_value<T: DeserializeOwned>(
    value: &Spanned<DeValue<'_>>,
) -> Result<T, toml::de::Error> {
    T::deserialize(ValueDeserializer::from(value.clone()))
}

/// Keys a role file may have besides resource arrays.
const ROLE_KEYS: &[&str] = &["description", "match", "include", "params"];
/// Keys every resource may have besides its own fields.
pub(crate) const META_KEYS: &[&str] = &["require", "notify", "for_each", "sensitive"];

/// Parses a role file. `None` when the file is not TOML at all; otherwise
/// the role with every resource that is valid, and the references of those
/// that are not in `failed_references`.
fn parse_role(
    name: &str,
    path: &str,
    bytes: &[u8],
    diagnostics: &mut Diagnostics,
    failed_references: &mut BTreeSet<String>,
) -> Option<Role> {
    let text = utf8(path, bytes, diagnostics)?;
    let (table, errors) = DeTable::parse_recoverable(text);
    let lines = LineIndex::new(text);
    if !errors.is_empty() {
        for error in &errors {
            diagnostics.push(toml_diagnostic(path, &lines, error));
        }
        return None;
    }
    if let Err(diagnostic) = check_nesting(path, &lines, table.get_ref()) {
        diagnostics.push(diagnostic);
        return None;
    }
    let at = |offset: usize| lines.position(offset);
    let mut role = Role {
        name: name.to_string(),
        file: path.to_string(),
        description: None,
        matchers: BTreeMap::new(),
        match_positions: BTreeMap::new(),
        includes: Vec::new(),
        params: BTreeMap::new(),
        resources: Vec::new(),
    };
    let mut declared: Vec<(usize, DeclaredResource)> = Vec::new();
    for (key, value) in table.get_ref().iter() {
        let key_name = key.get_ref().as_ref();
        match key_name {
            "description" => match deserialize_value::<String>(value) {
                Ok(d) => role.description = Some(d),
                Err(e) => diagnostics.push(toml_diagnostic(path, &lines, &e)),
            },
            "match" => match deserialize_value::<BTreeMap<String, Spanned<String>>>(value) {
                Ok(m) => {
                    for (tag, pattern) in m {
                        role.match_positions
                            .insert(tag.clone(), at(pattern.span().start));
                        role.matchers.insert(tag, pattern.into_inner());
                    }
                }
                Err(e) => diagnostics.push(toml_diagnostic(path, &lines, &e)),
            },
            "include" => role.includes = parse_includes(path, &lines, value, diagnostics),
            "params" => role.params = parse_params(path, &lines, value, diagnostics),
            other => {
                let Some(resource_type) = ResourceType::from_name(other) else {
                    let expected: Vec<&str> =
                        ROLE_KEYS.iter().chain(RESOURCE_TYPES).copied().collect();
                    diagnostics.push(Diagnostic::new(
                        path,
                        at(key.span().start),
                        unknown_key_message(other, &expected),
                    ));
                    continue;
                };
                let Some(items) = value.get_ref().as_array() else {
                    diagnostics.push(Diagnostic::new(
                        path,
                        at(key.span().start),
                        format!(
                            "`{resource_type}` must be an array of tables: write [[{resource_type}]]"
                        ),
                    ));
                    continue;
                };
                for item in items.iter() {
                    match parse_resource(resource_type, item, path, &lines, diagnostics) {
                        Some(resource) => declared.push((item.span().start, resource)),
                        None => {
                            if let Some(reference) = attempted_reference(resource_type, item) {
                                failed_references.insert(reference);
                            }
                        }
                    }
                }
            }
        }
    }
    // Tables of different types interleave in a file; declaration order is
    // the order in the text.
    declared.sort_by_key(|(offset, _)| *offset);
    role.resources = declared.into_iter().map(|(_, r)| r).collect();
    Some(role)
}

/// The reference a resource that failed to parse would have had, when its
/// name is plain text.
fn attempted_reference(resource_type: ResourceType, item: &Spanned<DeValue<'_>>) -> Option<String> {
    let key = if resource_type.path_named() {
        "path"
    } else {
        "name"
    };
    let table = item.get_ref().as_table()?;
    let (_, value) = table.iter().find(|(k, _)| k.get_ref().as_ref() == key)?;
    let name = value.get_ref().as_str()?;
    (!has_placeholders(name)).then(|| format!("{resource_type}:{name}"))
}

fn parse_resource(
    resource_type: ResourceType,
    item: &Spanned<DeValue<'_>>,
    path: &str,
    lines: &LineIndex<'_>,
    diagnostics: &mut Diagnostics,
) -> Option<DeclaredResource> {
    let position = lines.position(item.span().start);
    let Some(table) = item.get_ref().as_table() else {
        diagnostics.push(Diagnostic::new(
            path,
            position,
            format!("each `{resource_type}` must be a table: write [[{resource_type}]]"),
        ));
        return None;
    };
    let mut fields = DeTable::new();
    let mut field_positions = BTreeMap::new();
    let mut require = Vec::new();
    let mut notify = Vec::new();
    let mut for_each = None;
    let mut sensitive = false;
    let mut failed = false;
    for (key, value) in table.iter() {
        let name = key.get_ref().as_ref();
        field_positions.insert(name.to_string(), lines.position(key.span().start));
        match name {
            "require" | "notify" => match deserialize_value::<Vec<String>>(value) {
                Ok(list) if name == "require" => require = list,
                Ok(list) => notify = list,
                Err(e) => {
                    diagnostics.push(toml_diagnostic(path, lines, &e));
                    failed = true;
                }
            },
            "for_each" => match deserialize_value::<String>(value) {
                Ok(expression) => for_each = Some(expression),
                Err(e) => {
                    diagnostics.push(toml_diagnostic(path, lines, &e));
                    failed = true;
                }
            },
            "sensitive" => match deserialize_value::<bool>(value) {
                Ok(flag) => sensitive = flag,
                Err(e) => {
                    diagnostics.push(toml_diagnostic(path, lines, &e));
                    failed = true;
                }
            },
            _ => {
                fields.insert(key.clone(), value.clone());
            }
        }
    }
    let json_fields = to_json(&DeValue::Table(fields.clone()));
    let templated = for_each.is_some()
        || require.iter().chain(&notify).any(|r| has_placeholders(r))
        || value_has_placeholders(&json_fields, resource_type.literal_fields());
    let spanned_fields = Spanned::new(item.span(), DeValue::Table(fields));
    let parsed = match Spec::deserialize(resource_type, ValueDeserializer::from(spanned_fields)) {
        Ok(spec) => Some(spec),
        Err(error) => {
            let unknown_field = error.message().starts_with("unknown field");
            if !templated || unknown_field {
                let mut diagnostic = toml_diagnostic(path, lines, &error);
                if unknown_field {
                    diagnostic.message = improve_unknown_field(&diagnostic.message, META_KEYS);
                } else if let Some(named) =
                    name_the_field(&diagnostic.message, resource_type, item, &error)
                {
                    diagnostic.message = named;
                }
                diagnostics.push(diagnostic);
                failed = true;
            }
            // A templated resource may only become valid once rendered
            // (`ensure = "{{item.version}}"`); it is checked again then.
            None
        }
    };
    if failed {
        return None;
    }
    Some(DeclaredResource {
        resource_type,
        position,
        field_positions,
        require,
        notify,
        for_each,
        sensitive,
        fields: json_fields,
        templated,
        parsed: if templated { None } else { parsed },
    })
}

/// Whether a field value holds a placeholder. The kind's literal fields (a
/// file's `content`) are never rendered, so they do not count; they are
/// top-level fields only.
fn value_has_placeholders(value: &Value, literal_fields: &[&str]) -> bool {
    match value {
        Value::String(s) => has_placeholders(s),
        Value::Array(items) => items.iter().any(|v| value_has_placeholders(v, &[])),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| !literal_fields.contains(&k.as_str()))
            .any(|(_, v)| value_has_placeholders(v, &[])),
        _ => false,
    }
}

/// serde lists the expected fields; add the ones every resource takes and a
/// suggestion for the likely typo.
pub(crate) fn improve_unknown_field(message: &str, extra: &[&str]) -> String {
    let Some(unknown) = message.split('`').nth(1) else {
        return message.to_string();
    };
    let mut expected: Vec<String> = message
        .split("expected")
        .nth(1)
        .map(|rest| {
            rest.split('`')
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, s)| s.to_string())
                .collect()
        })
        .unwrap_or_default();
    expected.extend(extra.iter().map(|s| s.to_string()));
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    unknown_key_message(unknown, &expected)
}

/// What parsing can tell of each include's parameters: every name known,
/// every value without placeholders of its type, every parameter without a
/// default given. And a role with a parameter that has no default may not
/// have a `[match]`: matched directly, it would have no value for it.
pub(crate) fn check_include_params(roles: &BTreeMap<String, Role>, diagnostics: &mut Diagnostics) {
    for role in roles.values() {
        if !role.matchers.is_empty()
            && let Some((name, param)) = role.params.iter().find(|(_, p)| p.default.is_none())
        {
            diagnostics.push(Diagnostic::new(
                &role.file,
                param.position,
                format!(
                    "parameter `{name}` has no default, so role `{}` cannot be selected by its [match]: give it a default, or remove the [match] and include the role with params",
                    role.name
                ),
            ));
        }
        for include in &role.includes {
            let Some(included) = roles.get(&include.role) else {
                continue;
            };
            for problem in
                include_problems(&included.name, &included.file, &included.params, include)
            {
                diagnostics.push(Diagnostic::new(&role.file, problem.0, problem.1));
            }
        }
    }
}

/// Every include names a role, and includes form no cycle.
fn check_includes(
    roles: &BTreeMap<String, Role>,
    unparsed_roles: &BTreeSet<String>,
    diagnostics: &mut Diagnostics,
) {
    for role in roles.values() {
        for Include {
            role: include,
            position,
            ..
        } in &role.includes
        {
            if !roles.contains_key(include) && !unparsed_roles.contains(include) {
                diagnostics.push(Diagnostic::new(
                    &role.file,
                    *position,
                    format!(
                        "include of unknown role `{include}`: there is no roles/{include}.toml"
                    ),
                ));
            }
        }
    }
    let mut reported = BTreeSet::new();
    let mut explored = BTreeSet::new();
    for name in roles.keys() {
        find_include_cycle(roles, name, &mut explored, &mut reported, diagnostics);
    }
    check_include_depth(roles, diagnostics);
}

/// How many roles deep includes may go (a role including one that includes
/// another is 3 deep).
pub const MAX_INCLUDE_DEPTH: usize = 64;

/// Refuses include chains longer than [`MAX_INCLUDE_DEPTH`], at the
/// include where the chain passes the limit. Cycles are reported by
/// [`find_include_cycle`]; here an include back into the chain is
/// ignored. Walks without recursing.
fn check_include_depth(roles: &BTreeMap<String, Role>, diagnostics: &mut Diagnostics) {
    // The longest chain from each role, and the include that starts it.
    let mut depth: BTreeMap<&str, (usize, Option<&str>)> = BTreeMap::new();
    let mut on_path: BTreeSet<&str> = BTreeSet::new();
    for start in roles.keys() {
        if depth.contains_key(start.as_str()) {
            continue;
        }
        // (role, index of the next include to look at)
        let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        on_path.insert(start.as_str());
        while let Some((name, next)) = stack.last_mut() {
            let role = &roles[*name];
            if let Some(include) = role.includes.get(*next) {
                *next += 1;
                if let Some((include, _)) = roles.get_key_value(&include.role)
                    && !depth.contains_key(include.as_str())
                    && on_path.insert(include.as_str())
                {
                    stack.push((include.as_str(), 0));
                }
                continue;
            }
            let name = *name;
            let longest = role
                .includes
                .iter()
                .filter_map(|include| {
                    depth
                        .get_key_value(include.role.as_str())
                        .map(|(k, (d, _))| (*d, *k))
                })
                .max();
            let entry = match longest {
                Some((d, include)) => (d + 1, Some(include)),
                None => (1, None),
            };
            depth.insert(name, entry);
            on_path.remove(name);
            stack.pop();
        }
    }
    for (name, (chain_depth, first)) in &depth {
        if *chain_depth != MAX_INCLUDE_DEPTH + 1 {
            continue;
        }
        let role = &roles[*name];
        let position = role
            .includes
            .iter()
            .find(|include| Some(include.role.as_str()) == *first)
            .map_or(Position::UNKNOWN, |include| include.position);
        let mut chain = vec![*name];
        let mut current = *first;
        while let Some(next) = current {
            chain.push(next);
            current = depth.get(next).and_then(|(_, n)| *n);
        }
        let shown = if chain.len() > 6 {
            format!(
                "{} -> … -> {}",
                chain[..3].join(" -> "),
                chain[chain.len() - 1]
            )
        } else {
            chain.join(" -> ")
        };
        diagnostics.push(Diagnostic::new(
            &role.file,
            position,
            format!(
                "includes go {chain_depth} roles deep here ({shown}); the limit is {MAX_INCLUDE_DEPTH}"
            ),
        ));
    }
}

/// Depth-first search for include cycles from `start`, with an explicit
/// stack (an include chain may be long). A role whose includes were all
/// explored is not walked again, so shared includes cost nothing.
fn find_include_cycle<'a>(
    roles: &'a BTreeMap<String, Role>,
    start: &'a str,
    explored: &mut BTreeSet<&'a str>,
    reported: &mut BTreeSet<Vec<String>>,
    diagnostics: &mut Diagnostics,
) {
    if explored.contains(start) {
        return;
    }
    // The path walked, each role with the index of its next include.
    let mut path: Vec<(&'a str, usize)> = vec![(start, 0)];
    let mut on_path: BTreeSet<&'a str> = BTreeSet::from([start]);
    while let Some(&(current, next)) = path.last() {
        let role = &roles[current];
        let Some(Include {
            role: include,
            position,
            ..
        }) = role.includes.get(next)
        else {
            explored.insert(current);
            on_path.remove(current);
            path.pop();
            continue;
        };
        path.last_mut().expect("not empty").1 += 1;
        if on_path.contains(include.as_str())
            && let Some(at) = path.iter().position(|(r, _)| *r == include.as_str())
        {
            let mut cycle: Vec<String> = path[at..].iter().map(|(r, _)| r.to_string()).collect();
            // Report each cycle once, whichever role the walk started from.
            let mut key = cycle.clone();
            key.sort();
            if reported.insert(key) {
                cycle.push(include.clone());
                diagnostics.push(Diagnostic::new(
                    &role.file,
                    *position,
                    format!("include cycle: {}", cycle.join(" -> ")),
                ));
            }
            continue;
        }
        if let Some((include, _)) = roles.get_key_value(include)
            && !explored.contains(include.as_str())
        {
            on_path.insert(include.as_str());
            path.push((include.as_str(), 0));
        }
    }
}
