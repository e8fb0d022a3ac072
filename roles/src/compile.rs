//! The compiler: `(repository, node) -> catalog`.
//!
//! A pure function. It selects the roles whose `[match]` holds for the node's
//! tags, applies their includes first, merges the data hierarchy, renders
//! fields and templates, resolves file contents, checks references and
//! conflicts, and orders resources so that every `require` and `notify`
//! points forward.
//!
//! Secrets reach templates only through the `secret` helpers, answered by
//! [`secret_lookup`] for the node being compiled (the most specific layer
//! of `secrets/` holding the key, if the node is in the secret's scope);
//! a resource that rendered one, or says `sensitive = true`, is marked
//! `sensitive`, and no diagnostic of the compile carries a value.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::catalog::{Catalog, Resource};
use crate::content::Content;
use crate::diagnostic::{Diagnostic, Diagnostics, Position};
use crate::instances::instances;
use crate::kinds::{RESOURCE_TYPES, Resolver, ResourceKind, ResourceType, Spec};
use crate::repository::{DeclaredResource, META_KEYS, Repository, Role, improve_unknown_field};
use crate::secrets::{
    SecretSource, SecretValues, check_aws_reference, is_aws_reference, scope_value, scrub,
};
use crate::source::SETTINGS_FILE;
use crate::template::{
    PreparedContext, SecretLookup, has_placeholders, mark_secret_used, take_secret_used,
    with_secret_session,
};

/// What the compiler knows of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The node's id: its instance id, or the name it enrolled with.
    pub id: String,
    pub tags: BTreeMap<String, String>,
    /// Facts as gathered by the agent: `hostname`, `memory_mb`, ….
    pub facts: BTreeMap<String, Value>,
    /// Values the server verified itself, not reported by the node: the
    /// EC2 instance id, account and region of an attested enrollment.
    /// Empty for a node that enrolled with a token.
    #[serde(default)]
    pub attested: BTreeMap<String, String>,
}

/// The roles a node gets, each once: general roles before specific ones
/// (fewer `[match]` entries first, then by name), each after the roles it
/// includes.
pub fn select_roles<'r>(
    repository: &'r Repository,
    tags: &BTreeMap<String, String>,
) -> Vec<&'r Role> {
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for role in matched_roles(repository, tags) {
        push_with_includes(repository, role, &mut seen, &mut order);
    }
    order
}

/// The roles a node's tags select on their own, general ones (fewer
/// `[match]` entries) first, then by name.
pub(crate) fn matched_roles<'r>(
    repository: &'r Repository,
    tags: &BTreeMap<String, String>,
) -> Vec<&'r Role> {
    let mut matched: Vec<&Role> = repository
        .roles
        .values()
        .filter(|role| role_matches(role, tags))
        .collect();
    matched.sort_by_key(|role| (role.matchers.len(), role.name.as_str()));
    matched
}

/// Whether the role applies to these tags on its own: every entry of its
/// `[match]` holds (a role without one matches every node), unless it
/// declares `[params]` and has no `[match]`: such a role applies only where
/// another includes it.
pub fn role_matches(role: &Role, tags: &BTreeMap<String, String>) -> bool {
    (role.params.is_empty() || !role.matchers.is_empty())
        && role.matchers.iter().all(|(name, pattern)| {
            tags.get(name)
                .is_some_and(|value| glob_match(pattern, value))
        })
}

/// Adds `role` to `order` after the roles it includes (depth first, in
/// the order written), each once. Walks with an explicit stack: the
/// include depth limit is checked at parse time, but compiling must not
/// depend on it.
fn push_with_includes<'r>(
    repository: &'r Repository,
    role: &'r Role,
    seen: &mut BTreeSet<&'r str>,
    order: &mut Vec<&'r Role>,
) {
    if !seen.insert(role.name.as_str()) {
        return;
    }
    // Each role on the walk with the index of its next include.
    let mut stack: Vec<(&'r Role, usize)> = vec![(role, 0)];
    while let Some((current, next)) = stack.last_mut() {
        let Some(include) = current.includes.get(*next) else {
            order.push(current);
            stack.pop();
            continue;
        };
        *next += 1;
        if let Some(included) = repository.roles.get(&include.role)
            && seen.insert(included.name.as_str())
        {
            stack.push((included, 0));
        }
    }
}

/// A tag list [`parse_tag_list`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TagListError {
    #[error("Failed to parse tags: `{0}` is not name=value\nhint: write role=api,env=prod")]
    NotNameValue(String),
    #[error("Failed to parse tags: `{0}` has an empty name")]
    EmptyName(String),
    #[error("Failed to parse tags: `{0}` is given twice")]
    GivenTwice(String),
}

/// Parses `role=api,env=prod` (as `--tags` and `--select` take it) into
/// tags; an entry without `=`, an empty name or a name given twice is an
/// error.
pub fn parse_tag_list(text: &str) -> Result<BTreeMap<String, String>, TagListError> {
    let mut tags = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(TagListError::NotNameValue(pair.to_string()));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            return Err(TagListError::EmptyName(pair.to_string()));
        }
        if tags.insert(name.to_string(), value.to_string()).is_some() {
            return Err(TagListError::GivenTwice(name.to_string()));
        }
    }
    Ok(tags)
}

/// Shell-style glob: `*` matches any run of characters, `?` any one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            backtrack = Some((p, t));
            p += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            t = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// The merged data of the hierarchy for a node: its layers (as
/// `hierarchy_layers` names them) that exist under `data/`, least specific
/// first, each overriding the last.
fn merged_data(repository: &Repository, layers: &[String]) -> Value {
    let mut merged = Value::Object(Map::new());
    for name in layers {
        if let Some(layer_data) = repository.data.get(name) {
            deep_merge(&mut merged, layer_data);
        }
    }
    merged
}

/// The data layers that apply to a node, least specific first: the layers
/// of `[hierarchy]` that name a file under `data/` or `secrets/` for this
/// node's trusted values, and the problems found naming them. A node's data
/// is these layers merged, and its secrets come from them, so two nodes
/// with the same layers get the same data and secrets.
///
/// A layer naming a trusted value the node does not have (a node enrolled
/// with a token has no `trusted.instance_id`) does not apply to it; nothing
/// takes its place. Layers cannot name reported values at all: the
/// repository refuses them (`Repository::parse`).
pub fn data_layers(repository: &Repository, context: &Value) -> (Vec<String>, Diagnostics) {
    let (mut layers, diagnostics) = hierarchy_layers(repository, context);
    layers
        .retain(|name| repository.data.contains_key(name) || repository.secrets.contains_key(name));
    (layers, diagnostics)
}

/// Every layer of `[hierarchy]` as named for this node, least specific
/// first, whether or not a file has that name.
fn hierarchy_layers(repository: &Repository, context: &Value) -> (Vec<String>, Diagnostics) {
    let mut layers = Vec::new();
    let mut diagnostics = Diagnostics::default();
    for layer in repository.settings.hierarchy.layers.iter().rev() {
        let name = if has_placeholders(layer) {
            match repository.templates.render_inline(
                layer,
                context,
                SETTINGS_FILE,
                Position::UNKNOWN,
            ) {
                Ok(name) => name,
                // A layer whose placeholders are not all known for this node
                // does not apply to it.
                Err(_) => continue,
            }
        } else {
            layer.clone()
        };
        if name.split('/').any(|part| matches!(part, "" | "." | "..")) {
            diagnostics.push(Diagnostic::new(
                SETTINGS_FILE,
                Position::UNKNOWN,
                format!(
                    "hierarchy layer `{layer}` becomes `{name}` for this node, which is not a path under data/: values used in layers may not be empty or contain `/`, `.` or `..` parts"
                ),
            ));
            continue;
        }
        layers.push(name);
    }
    (layers, diagnostics)
}

/// How the `secret` helpers find values for `node`: a key of `secrets/`
/// from the most specific layer that applies and holds it, refused when
/// the node is outside its scope; an AWS reference as the server fetched
/// it. `layers` are the node's hierarchy layers, least specific first.
fn secret_lookup(
    repository: &Repository,
    node: &Node,
    layers: &[String],
    values: &SecretValues,
) -> SecretLookup {
    // The lookup outlives this borrow of the repository (it is kept by a
    // thread-local while the compile runs), so it owns what it needs: for
    // each key, the most specific layer's entry (where it is written, its
    // scope, and its AWS reference if it has one; never the armored text).
    struct Applicable {
        layer: String,
        written: String,
        scope: BTreeMap<String, String>,
        scope_text: String,
        aws: Option<String>,
    }
    let mut entries: BTreeMap<String, Applicable> = BTreeMap::new();
    for layer in layers {
        if let Some(secrets) = repository.secrets.get(layer) {
            for (key, entry) in secrets {
                let applicable = Applicable {
                    layer: layer.clone(),
                    written: format!("{}:{}", entry.file, entry.position.line),
                    scope: entry.scope.clone(),
                    scope_text: entry.scope_text(),
                    aws: match &entry.source {
                        SecretSource::Aws(reference) => Some(reference.clone()),
                        SecretSource::Age(_) => None,
                    },
                };
                entries.insert(key.clone(), applicable);
            }
        }
    }
    let looked_in: Vec<String> = layers
        .iter()
        .rev()
        .map(|layer| format!("secrets/{layer}.toml"))
        .collect();
    let tags = node.tags.clone();
    let attested = node.attested.clone();
    let values = values.clone();
    let unresolved = "secrets are resolved only by the server (`cms-server check` uses stand-ins; `cms-agent apply` cannot render secrets)";
    Box::new(move |name: &str| {
        if is_aws_reference(name) {
            check_aws_reference(name)?;
            return values
                .aws_value(name)
                .cloned()
                .ok_or_else(|| format!("secret `{name}` has no value here: {unresolved}"));
        }
        let Some(entry) = entries.get(name) else {
            return Err(format!(
                "secret `{name}` is not defined for this node: looked in {}",
                if looked_in.is_empty() {
                    "no layer (no [hierarchy] layer applies)".to_string()
                } else {
                    looked_in.join(", ")
                }
            ));
        };
        let where_ = &entry.written;
        let in_scope = entry.scope.iter().all(|(scope, pattern)| {
            scope_value(scope, &tags, &attested).is_some_and(|value| glob_match(pattern, value))
        });
        if !in_scope {
            let node_values: Vec<String> = entry
                .scope
                .keys()
                .map(|scope| match scope_value(scope, &tags, &attested) {
                    Some(value) => format!("{scope}={value}"),
                    None => format!("no {scope}"),
                })
                .collect();
            return Err(format!(
                "secret `{name}` ({where_}) is scoped to {}; this role is compiled for {}",
                entry.scope_text,
                node_values.join(", ")
            ));
        }
        let value = match &entry.aws {
            None => values.age_value(&entry.layer, name),
            Some(reference) => values.aws_value(reference),
        };
        value
            .cloned()
            .ok_or_else(|| format!("secret `{name}` ({where_}) has no value here: {unresolved}"))
    })
}

/// What templates see of a node: `tag.*` and `node.id` (the server's
/// own), `fact.*` (what the node reports about itself), and `trusted.*`:
/// `trusted.id`, `trusted.tags` and every attested value
/// (`trusted.instance_id`, …). An attested value named `id` or `tags`
/// would hide the server's own and is left out.
pub fn node_context(node: &Node) -> Value {
    let mut trusted = Map::new();
    for (key, value) in &node.attested {
        if key != "id" && key != "tags" {
            trusted.insert(key.clone(), Value::String(value.clone()));
        }
    }
    trusted.insert("id".into(), Value::String(node.id.clone()));
    trusted.insert(
        "tags".into(),
        serde_json::to_value(&node.tags).expect("tags are JSON"),
    );
    serde_json::json!({
        "tag": node.tags,
        "fact": node.facts,
        "node": { "id": node.id },
        "trusted": trusted,
    })
}

/// Tables merge key by key; anything else in `overlay` replaces `base`.
pub fn deep_merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, overlay) => *base = overlay.clone(),
    }
}

/// Compiles the catalog of one node, or every problem found on the way,
/// without secret values: a role that renders a secret gets an error
/// naming it (secrets are resolved only by the server). Runs on the
/// compile stack ([`crate::bounded::on_compile_stack`]), so it needs the
/// same stack whoever calls it; a panic is returned as a diagnostic.
pub fn compile(repository: &Repository, node: &Node) -> Result<Catalog, Diagnostics> {
    compile_with_secrets(repository, node, &SecretValues::default())
}

/// [`compile`] with the values of secrets (the server's, or
/// `SecretValues::placeholders`). No diagnostic carries a value.
pub fn compile_with_secrets(
    repository: &Repository,
    node: &Node,
    values: &SecretValues,
) -> Result<Catalog, Diagnostics> {
    on_compile_stack(node, || compile_here(repository, node, values))
}

/// [`compile_with_secrets`] and the catalog's canonical bytes
/// ([`Catalog::new_encoded`]): what a server compiles to send, the id and
/// the encoding made from one encoding of the resources.
pub fn compile_encoded_with_secrets(
    repository: &Repository,
    node: &Node,
    values: &SecretValues,
) -> Result<(Catalog, Vec<u8>), Diagnostics> {
    on_compile_stack(node, || {
        compile_parts_here(repository, node, values)
            .map(|(roles, resources, contents)| Catalog::new_encoded(roles, resources, contents))
    })
}

/// Runs a compile on the compile stack; a panic becomes a diagnostic.
fn on_compile_stack<T>(
    node: &Node,
    compile: impl FnOnce() -> Result<T, Diagnostics> + Send,
) -> Result<T, Diagnostics>
where
    T: Send,
{
    crate::bounded::on_compile_stack(compile).unwrap_or_else(|message| {
        Err(Diagnostics(vec![Diagnostic::new(
            "(compiler)",
            Position::UNKNOWN,
            format!("Failed to compile the catalog of {}: {message}", node.id),
        )]))
    })
}

/// What a compile makes a catalog of: the roles applied, the resources in
/// apply order and their contents.
type CatalogParts = (Vec<String>, Vec<Resource>, BTreeMap<String, Content>);

/// [`compile_with_secrets`] on the caller's stack.
pub(crate) fn compile_here(
    repository: &Repository,
    node: &Node,
    values: &SecretValues,
) -> Result<Catalog, Diagnostics> {
    compile_parts_here(repository, node, values)
        .map(|(roles, resources, contents)| Catalog::new(roles, resources, contents))
}

/// [`compile_here`] up to the parts of the catalog.
fn compile_parts_here(
    repository: &Repository,
    node: &Node,
    values: &SecretValues,
) -> Result<CatalogParts, Diagnostics> {
    let mut diagnostics = Diagnostics::default();
    let mut context = node_context(node);
    // Layers are named from trusted values only, never from `data`.
    let (layers, problems) = hierarchy_layers(repository, &context);
    diagnostics.extend(problems);
    context["data"] = merged_data(repository, &layers);
    let lookup = secret_lookup(repository, node, &layers, values);
    let (result, used) = with_secret_session(lookup, || {
        compile_rendering(repository, node, &context, diagnostics)
    });
    let result = result.map_err(|diagnostics| name_the_node(diagnostics, &node.tags));
    if used.is_empty() {
        return result;
    }
    // Whatever a diagnostic quotes (a serde error quoting a field, a
    // template error), it never shows a value.
    result.map_err(|diagnostics| {
        Diagnostics(
            diagnostics
                .0
                .into_iter()
                .map(|mut diagnostic| {
                    diagnostic.message = scrub(&diagnostic.message, &used);
                    diagnostic
                })
                .collect(),
        )
    })
}

/// Tags as `env=prod, role=web`, or `no tags`: how messages name a node.
pub fn tags_text(tags: &BTreeMap<String, String>) -> String {
    if tags.is_empty() {
        return "no tags".to_string();
    }
    tags.iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Messages that depend on the node say which node: "for this node"
/// becomes "for the node with tags env=prod, role=web", since the same
/// role compiles for many nodes and `check` compiles it for several tag
/// combinations.
fn name_the_node(diagnostics: Diagnostics, tags: &BTreeMap<String, String>) -> Diagnostics {
    let node = match tags_text(tags).as_str() {
        "no tags" => "the node with no tags".to_string(),
        tags => format!("the node with tags {tags}"),
    };
    Diagnostics(
        diagnostics
            .0
            .into_iter()
            .map(|mut diagnostic| {
                diagnostic.message = diagnostic
                    .message
                    .replace("for this node", &format!("for {node}"))
                    .replace("this node's catalog", &format!("the catalog of {node}"));
                diagnostic
            })
            .collect(),
    )
}

/// The rest of [`compile_here`], with the secret helpers answering.
fn compile_rendering(
    repository: &Repository,
    node: &Node,
    context: &Value,
    diagnostics: Diagnostics,
) -> Result<CatalogParts, Diagnostics> {
    let mut diagnostics = diagnostics;
    let matched = matched_roles(repository, &node.tags);
    let instances = instances(repository, &matched, context, &mut diagnostics);
    let mut compiler = Compiler {
        repository,
        diagnostics,
        resources: Vec::new(),
        origins: Vec::new(),
        by_reference: HashMap::new(),
        contents: BTreeMap::new(),
    };
    let node_prepared = PreparedContext::new(context);
    for instance in &instances {
        let own_context = instance.context(context);
        let own_prepared = own_context.as_ref().map(PreparedContext::new);
        let scope = Scope {
            role: instance.role,
            context: own_context.as_ref().unwrap_or(context),
            prepared: own_prepared.as_ref().unwrap_or(&node_prepared),
            label: instance.params.is_some().then(|| instance.label()),
        };
        for declared in &instance.role.resources {
            compiler.declare(&scope, declared);
        }
    }
    let Compiler {
        mut diagnostics,
        resources,
        origins,
        by_reference,
        contents,
        ..
    } = compiler;
    check_references(
        repository,
        &resources,
        &origins,
        &by_reference,
        &mut diagnostics,
    );
    check_edited_files(&resources, &origins, &mut diagnostics);
    if !diagnostics.is_empty() {
        return Err(diagnostics.into_sorted());
    }
    let order = match apply_order(&resources, &by_reference) {
        Ok(order) => order,
        Err(cycle) => {
            let first = cycle[0];
            diagnostics.push(Diagnostic::new(
                &origins[first].file,
                origins[first].position,
                format!(
                    "dependency cycle: {}",
                    cycle
                        .iter()
                        .chain(std::iter::once(&first))
                        .map(|&i| resources[i].reference.as_str())
                        .collect::<Vec<_>>()
                        .join(" -> ")
                ),
            ));
            return Err(diagnostics);
        }
    };
    let mut slots: Vec<Option<Resource>> = resources.into_iter().map(Some).collect();
    let ordered = order
        .into_iter()
        .map(|i| slots[i].take().expect("each index once"))
        .collect();
    // Each role once, though it may apply with several sets of parameters.
    let mut role_names: Vec<String> = Vec::new();
    for instance in &instances {
        if !role_names.contains(&instance.role.name) {
            role_names.push(instance.role.name.clone());
        }
    }
    Ok((role_names, ordered, contents))
}

/// Where a resource of the catalog was declared.
#[derive(Debug, Clone)]
struct Origin {
    file: String,
    position: Position,
    require_position: Position,
    notify_position: Position,
    /// The instance of a parameterized role that declared it.
    label: Option<String>,
}

/// What one role instance's resources render with.
struct Scope<'s> {
    role: &'s Role,
    context: &'s Value,
    /// `context` converted once for the templates that render with it.
    prepared: &'s PreparedContext<'s>,
    /// How messages name a parameterized role's instance.
    label: Option<String>,
}

struct Compiler<'a> {
    repository: &'a Repository,
    diagnostics: Diagnostics,
    resources: Vec<Resource>,
    origins: Vec<Origin>,
    by_reference: HashMap<String, usize>,
    contents: BTreeMap<String, Content>,
}

impl Compiler<'_> {
    /// Declares one resource as written, or one per element of its
    /// `for_each` list.
    fn declare(&mut self, scope: &Scope<'_>, declared: &DeclaredResource) {
        let role = scope.role;
        let Some(expression) = &declared.for_each else {
            self.declare_one(scope, declared, None);
            return;
        };
        let position = declared.position_of("for_each");
        let items: Vec<Value> = match lookup_path(scope.context, expression) {
            Some(Value::Array(items)) => items.clone(),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| serde_json::json!({ "key": k, "value": v }))
                .collect(),
            Some(other) => {
                self.diagnostics.push(Diagnostic::new(
                    &role.file,
                    position,
                    format!(
                        "for_each `{expression}` is {}, expected a list (or a table) to declare one {} per element",
                        type_of(other),
                        declared.resource_type
                    ),
                ));
                return;
            }
            None => {
                self.diagnostics.push(Diagnostic::new(
                    &role.file,
                    position,
                    format!(
                        "for_each `{expression}` is not defined for this node: expected a path such as `data.apps` to a list in the data hierarchy"
                    ),
                ));
                return;
            }
        };
        for item in items {
            self.declare_one(scope, declared, Some(item));
        }
    }

    fn declare_one(&mut self, scope: &Scope<'_>, declared: &DeclaredResource, item: Option<Value>) {
        let role = scope.role;
        // Whatever this resource renders from here on counts for it alone.
        take_secret_used();
        let local_context;
        let context = match &item {
            Some(item) => {
                let mut with_item = scope.context.clone();
                with_item["item"] = item.clone();
                local_context = with_item;
                &local_context
            }
            None => scope.context,
        };
        let file = role.file.as_str();
        let spec = match &declared.parsed {
            Some(spec) => spec.clone(),
            None => {
                let rendered = match self.render_fields(declared, context, file) {
                    Some(rendered) => rendered,
                    None => return,
                };
                match Spec::deserialize(declared.resource_type, rendered) {
                    Ok(spec) => spec,
                    Err(error) => {
                        let message = error.to_string();
                        let (message, position) = if message.starts_with("unknown field") {
                            let field = message.split('`').nth(1).unwrap_or_default();
                            let position = declared.position_of(field);
                            (improve_unknown_field(&message, META_KEYS), position)
                        } else {
                            (message, declared.position)
                        };
                        self.diagnostics.push(Diagnostic::new(
                            file,
                            position,
                            format!("in {} after rendering: {message}", declared.resource_type),
                        ));
                        return;
                    }
                }
            }
        };
        let require = self.render_references(
            &declared.require,
            context,
            file,
            declared.position_of("require"),
        );
        let notify = self.render_references(
            &declared.notify,
            context,
            file,
            declared.position_of("notify"),
        );
        let (Some(require), Some(notify)) = (require, notify) else {
            return;
        };
        let Some(kind) = self.resolve(spec, declared, context, scope, item.as_ref()) else {
            return;
        };
        let resource = Resource {
            reference: kind.reference(),
            role: role.name.clone(),
            require,
            notify,
            kind,
            sensitive: declared.sensitive || take_secret_used(),
        };
        let origin = Origin {
            file: file.to_string(),
            position: declared.position,
            require_position: declared.position_of("require"),
            notify_position: declared.position_of("notify"),
            label: scope.label.clone(),
        };
        self.add(resource, origin);
    }

    /// Adds a resource, refusing a second declaration of the same reference
    /// unless it is identical and comes from another role.
    fn add(&mut self, resource: Resource, origin: Origin) {
        if let Some(&existing) = self.by_reference.get(&resource.reference) {
            let first = &mut self.resources[existing];
            let first_origin = &self.origins[existing];
            let same = first.kind == resource.kind
                && first.require == resource.require
                && first.notify == resource.notify;
            if same {
                // Two roles agreeing on a resource: sensitive if either
                // says so.
                first.sensitive |= resource.sensitive;
            }
            if first.role == resource.role && first_origin.label != origin.label {
                // Two instances of one parameterized role: like two roles,
                // they may agree on a resource.
                if same {
                    return;
                }
                self.diagnostics.push(Diagnostic::new(
                    &origin.file,
                    origin.position,
                    format!(
                        "duplicate resource `{}`: role {} and role {} both declare it, differently; make its name depend on a parameter, such as `{{{{params.name}}}}`",
                        resource.reference,
                        first_origin.label.as_deref().unwrap_or(&first.role),
                        origin.label.as_deref().unwrap_or(&resource.role),
                    ),
                ));
            } else if first.role == resource.role {
                self.diagnostics.push(Diagnostic::new(
                    &origin.file,
                    origin.position,
                    format!(
                        "duplicate resource `{}`: already declared in this role at line {}",
                        resource.reference, first_origin.position.line
                    ),
                ));
            } else if !same {
                self.diagnostics.push(Diagnostic::new(
                    &origin.file,
                    origin.position,
                    format!(
                        "conflicting resource `{}`: role `{}` declares it differently at {}:{}; a resource may be declared by several roles only if they agree on every field",
                        resource.reference, first.role, first_origin.file, first_origin.position.line
                    ),
                ));
            }
            return;
        }
        self.by_reference
            .insert(resource.reference.clone(), self.resources.len());
        self.resources.push(resource);
        self.origins.push(origin);
    }

    fn render_fields(
        &mut self,
        declared: &DeclaredResource,
        context: &Value,
        file: &str,
    ) -> Option<Value> {
        let mut fields = declared.fields.clone();
        let Value::Object(map) = &mut fields else {
            return Some(fields);
        };
        let mut ok = true;
        // The field that names the resource: its reference shows in every
        // output, report and log, so no secret may go into it.
        let name_field = if declared.resource_type.path_named() {
            "path"
        } else {
            "name"
        };
        // Whether a secret was rendered before these fields (a `for_each`
        // item's), so that checking each field leaves the resource's mark.
        let mut used_secret = take_secret_used();
        for (key, value) in map.iter_mut() {
            if declared
                .resource_type
                .literal_fields()
                .contains(&key.as_str())
            {
                continue;
            }
            let position = declared.position_of(key);
            if let Err(diagnostic) = self.render_value(value, context, file, position) {
                self.diagnostics.push(diagnostic);
                ok = false;
            }
            if take_secret_used() {
                used_secret = true;
                if key == name_field {
                    self.diagnostics.push(Diagnostic::new(
                        file,
                        position,
                        format!(
                            "`{key}` uses a secret: a resource's {key} shows in every output, report and log, so it may not hold one; use the secret in the content instead"
                        ),
                    ));
                    ok = false;
                } else if declared
                    .resource_type
                    .public_fields()
                    .contains(&key.as_str())
                {
                    self.diagnostics.push(Diagnostic::new(
                        file,
                        position,
                        format!(
                            "`{key}` uses a secret: a {}'s {key} is readable by anyone on the instance (the unit file, the process's command line), so it may not hold one",
                            declared.resource_type.name()
                        ),
                    ));
                    ok = false;
                }
            }
        }
        if used_secret {
            mark_secret_used();
        }
        ok.then_some(fields)
    }

    fn render_value(
        &self,
        value: &mut Value,
        context: &Value,
        file: &str,
        position: Position,
    ) -> Result<(), Diagnostic> {
        match value {
            Value::String(text) if has_placeholders(text) => {
                *text = self
                    .repository
                    .templates
                    .render_inline(text, context, file, position)?;
            }
            Value::Array(items) => {
                for item in items {
                    self.render_value(item, context, file, position)?;
                }
            }
            Value::Object(map) => {
                for item in map.values_mut() {
                    self.render_value(item, context, file, position)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn render_references(
        &mut self,
        references: &[String],
        context: &Value,
        file: &str,
        position: Position,
    ) -> Option<Vec<String>> {
        let mut out = Vec::with_capacity(references.len());
        for reference in references {
            if has_placeholders(reference) {
                match self
                    .repository
                    .templates
                    .render_inline(reference, context, file, position)
                {
                    Ok(rendered) => out.push(rendered),
                    Err(diagnostic) => {
                        self.diagnostics.push(diagnostic);
                        return None;
                    }
                }
            } else {
                out.push(reference.clone());
            }
        }
        Some(out)
    }

    /// Turns a role's declaration into a catalog resource: contents resolved,
    /// values checked. Problems are reported where their field was written.
    fn resolve(
        &mut self,
        spec: Spec,
        declared: &DeclaredResource,
        context: &Value,
        scope: &Scope<'_>,
        item: Option<&Value>,
    ) -> Option<ResourceKind> {
        let file = scope.role.file.as_str();
        // The prepared context is the scope's; with a `for_each` item the
        // context is another value, and the resolver converts it itself.
        let mut resolver = Resolver::new(
            &self.repository.files,
            &self.repository.templates,
            context,
            item,
            &mut self.contents,
            Some(scope.prepared),
        );
        let kind = spec.resolve(&mut resolver);
        let problems = resolver.problems;
        if problems.is_empty() {
            return kind;
        }
        for (field, message) in problems {
            self.diagnostics
                .push(Diagnostic::new(file, declared.position_of(field), message));
        }
        None
    }
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// `data.apps.0.name`-style lookup in the template context.
fn lookup_path<'v>(context: &'v Value, path: &str) -> Option<&'v Value> {
    let path = path
        .trim()
        .trim_start_matches("{{")
        .trim_end_matches("}}")
        .trim();
    path.split('.')
        .try_fold(context, |value, part| match value {
            Value::Object(map) => map.get(part),
            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        })
}

/// Refuses a file both declared by a `file` resource and edited in place
/// (`line`, `ini`, ...), or edited by two resources: each would undo the
/// other's work on every run.
fn check_edited_files(resources: &[Resource], origins: &[Origin], diagnostics: &mut Diagnostics) {
    let mut claimed: HashMap<String, usize> = HashMap::new();
    for (index, resource) in resources.iter().enumerate() {
        if let ResourceKind::File(file) = &resource.kind {
            claimed.entry(file.path.clone()).or_insert(index);
        }
    }
    for (index, resource) in resources.iter().enumerate() {
        let edited = resource
            .kind
            .edited_path()
            .map(|path| (path.to_string(), true));
        let written = resource
            .kind
            .written_files()
            .into_iter()
            .map(|path| (path, false));
        for (path, edits) in edited.into_iter().chain(written) {
            let Some(&first) = claimed.get(&path) else {
                claimed.insert(path, index);
                continue;
            };
            let (other, other_origin) = (&resources[first], &origins[first]);
            let origin = &origins[index];
            let hint = match (edits, matches!(other.kind, ResourceKind::File(_))) {
                (true, true) => {
                    "a file is either declared whole by `file` or edited in place: drop the edit and put the change in the file's content, or drop the file resource"
                }
                (true, false) => "one resource edits a file: put every edit of it in one resource",
                (false, _) => {
                    "a file has one owner: drop the other resource, or give this one another name"
                }
            };
            diagnostics.push(Diagnostic::new(
                &origin.file,
                origin.position,
                format!(
                    "`{}` {} {path}, which `{}` (role `{}`, {}:{}) also manages; {hint}",
                    resource.reference,
                    if edits { "edits" } else { "writes" },
                    other.reference,
                    other.role,
                    other_origin.file,
                    other_origin.position.line
                ),
            ));
        }
    }
}

fn check_references(
    repository: &Repository,
    resources: &[Resource],
    origins: &[Origin],
    by_reference: &HashMap<String, usize>,
    diagnostics: &mut Diagnostics,
) {
    for (resource, origin) in resources.iter().zip(origins) {
        for (field, list, position) in [
            ("require", &resource.require, origin.require_position),
            ("notify", &resource.notify, origin.notify_position),
        ] {
            for reference in list {
                let Some((type_name, name)) = reference.split_once(':') else {
                    diagnostics.push(Diagnostic::new(
                        &origin.file,
                        position,
                        format!("{field} `{reference}` is not a reference: write `type:name`, e.g. `package:nginx` or `file:/etc/nginx/nginx.conf`"),
                    ));
                    continue;
                };
                let Some(resource_type) = ResourceType::from_name(type_name) else {
                    diagnostics.push(Diagnostic::new(
                        &origin.file,
                        position,
                        format!("{field} `{reference}`: unknown resource type `{type_name}`, expected one of {}", RESOURCE_TYPES.join(", ")),
                    ));
                    continue;
                };
                if !by_reference.contains_key(reference) {
                    if repository.failed_references.contains(reference)
                        || !repository.unparsed_roles.is_empty()
                    {
                        // Already reported where that resource (or its whole
                        // role file) failed to parse.
                        continue;
                    }
                    let hint = if resource_type.path_named() && !name.starts_with('/') {
                        " (file-like resources are referenced by their absolute path)"
                    } else {
                        ""
                    };
                    diagnostics.push(Diagnostic::new(
                        &origin.file,
                        position,
                        format!("{field} `{reference}` refers to no resource in this node's catalog{hint}"),
                    ));
                    continue;
                }
                if reference == &resource.reference {
                    diagnostics.push(Diagnostic::new(
                        &origin.file,
                        position,
                        format!("`{reference}` {field}s itself"),
                    ));
                    continue;
                }
                if field == "notify" && !resource_type.refreshable() {
                    diagnostics.push(Diagnostic::new(
                        &origin.file,
                        position,
                        format!("notify `{reference}`: a {type_name} does nothing when notified; notify a {}, or use require for ordering", ResourceType::refreshable_names()),
                    ));
                }
            }
        }
    }
}

/// A stable topological order: declaration order, except that what a
/// resource requires comes before it, and a resource comes before what it
/// notifies. On a cycle, returns the indices that form it.
fn apply_order(
    resources: &[Resource],
    by_reference: &HashMap<String, usize>,
) -> Result<Vec<usize>, Vec<usize>> {
    let n = resources.len();
    let mut successors: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut indegree = vec![0usize; n];
    for (i, resource) in resources.iter().enumerate() {
        // References to nothing were reported (or excused) already.
        for &dependency in resource.require.iter().filter_map(|r| by_reference.get(r)) {
            successors[dependency].push(i);
            indegree[i] += 1;
        }
        for &target in resource.notify.iter().filter_map(|r| by_reference.get(r)) {
            successors[i].push(target);
            indegree[target] += 1;
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| indegree[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &next in &successors[i] {
            indegree[next] -= 1;
            if indegree[next] == 0 {
                ready.push(Reverse(next));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Every resource left has an unplaced predecessor; walking predecessors
    // from any of them must revisit one, which closes a cycle.
    let remaining: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] > 0).collect();
    let mut predecessors: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (from, tos) in successors.iter().enumerate() {
        for &to in tos {
            predecessors[to].push(from);
        }
    }
    let start = *remaining
        .iter()
        .next()
        .expect("a cycle leaves resources unplaced");
    let mut path = vec![start];
    let mut current = start;
    loop {
        let previous = *predecessors[current]
            .iter()
            .find(|p| remaining.contains(p))
            .expect("an unplaced resource has an unplaced predecessor");
        if let Some(at) = path.iter().position(|&p| p == previous) {
            let mut cycle = path[at..].to_vec();
            cycle.reverse();
            return Err(cycle);
        }
        path.push(previous);
        current = previous;
    }
}
