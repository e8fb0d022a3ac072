//! The compiler: `(repository, node) -> catalog`.
//!
//! A pure function. It selects the roles whose `[match]` holds for the node's
//! tags, applies their includes first, merges the data hierarchy, renders
//! fields and templates, resolves file contents, checks references and
//! conflicts, and orders resources so that every `require` and `notify`
//! points forward.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::catalog::{Catalog, Content, Resource, sha256_hex};
use crate::diagnostic::{Diagnostic, Diagnostics, Position};
use crate::repository::{
    DeclaredResource, META_KEYS, Repository, Role, SETTINGS_FILE, Spec, improve_unknown_field,
};
use crate::resource::{
    ConfigFormat, Ensure, File, FileSpec, JavaApp, JavaAppSpec, PackageRepository, RESOURCE_TYPES,
    RepositorySpec, ResourceKind, Seconds, is_path_type, is_refreshable_type, validate_heap,
    validate_size,
};
use crate::source::{Entry, join_inside};
use crate::template::has_placeholders;

/// What the compiler knows of a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The node's id: its instance id, or the name it enrolled with.
    pub id: String,
    pub tags: BTreeMap<String, String>,
    /// Facts as gathered by the agent: `hostname`, `memory_mb`, ….
    pub facts: BTreeMap<String, Value>,
}

/// The roles a node gets, each once: general roles before specific ones
/// (fewer `[match]` entries first, then by name), each after the roles it
/// includes.
pub fn select_roles<'r>(
    repository: &'r Repository,
    tags: &BTreeMap<String, String>,
) -> Vec<&'r Role> {
    let mut matched: Vec<&Role> = repository
        .roles
        .values()
        .filter(|role| role_matches(role, tags))
        .collect();
    matched.sort_by_key(|role| (role.matchers.len(), role.name.as_str()));
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for role in matched {
        push_with_includes(repository, role, &mut seen, &mut order);
    }
    order
}

/// Whether every matcher of the role holds for these tags.
pub fn role_matches(role: &Role, tags: &BTreeMap<String, String>) -> bool {
    role.matchers.iter().all(|(name, pattern)| {
        tags.get(name)
            .is_some_and(|value| glob_match(pattern, value))
    })
}

fn push_with_includes<'r>(
    repository: &'r Repository,
    role: &'r Role,
    seen: &mut BTreeSet<&'r str>,
    order: &mut Vec<&'r Role>,
) {
    if !seen.insert(role.name.as_str()) {
        return;
    }
    for (include, _) in &role.includes {
        if let Some(included) = repository.roles.get(include) {
            push_with_includes(repository, included, seen, order);
        }
    }
    order.push(role);
}

/// Parses `role=api,env=prod` (as `--tags` and `--select` take it) into
/// tags; an entry without `=`, an empty name or a name given twice is an
/// error.
pub fn parse_tag_list(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut tags = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = pair.split_once('=') else {
            return Err(format!(
                "Failed to parse tags: `{pair}` is not name=value\nhint: write role=api,env=prod"
            ));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            return Err(format!("Failed to parse tags: `{pair}` has an empty name"));
        }
        if tags.insert(name.to_string(), value.to_string()).is_some() {
            return Err(format!("Failed to parse tags: `{name}` is given twice"));
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

/// The merged data of the hierarchy for a node: layers whose placeholders
/// are all known are read, least specific first, each overriding the last.
pub fn merged_data(
    repository: &Repository,
    context: &Value,
    diagnostics: &mut Diagnostics,
) -> Value {
    let mut merged = Value::Object(Map::new());
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
                    "hierarchy layer `{layer}` becomes `{name}` for this node, which is not a path under data/: tag and fact values used in layers may not be empty or contain `/`, `.` or `..` parts"
                ),
            ));
            continue;
        }
        if let Some(layer_data) = repository.data.get(&name) {
            deep_merge(&mut merged, layer_data);
        }
    }
    merged
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

/// Compiles the catalog of one node, or every problem found on the way.
pub fn compile(repository: &Repository, node: &Node) -> Result<Catalog, Diagnostics> {
    let mut diagnostics = Diagnostics::default();
    let mut context = serde_json::json!({
        "tag": node.tags,
        "fact": node.facts,
        "node": { "id": node.id },
    });
    let data = merged_data(repository, &context, &mut diagnostics);
    context["data"] = data;

    let roles = select_roles(repository, &node.tags);
    let mut compiler = Compiler {
        repository,
        context: &context,
        diagnostics,
        resources: Vec::new(),
        origins: Vec::new(),
        by_reference: HashMap::new(),
        contents: BTreeMap::new(),
    };
    for role in &roles {
        for declared in &role.resources {
            compiler.declare(role, declared);
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
    let role_names = roles.iter().map(|r| r.name.clone()).collect();
    Ok(Catalog::new(role_names, ordered, contents))
}

/// Where a resource of the catalog was declared.
#[derive(Debug, Clone)]
struct Origin {
    file: String,
    position: Position,
    require_position: Position,
    notify_position: Position,
}

struct Compiler<'a> {
    repository: &'a Repository,
    context: &'a Value,
    diagnostics: Diagnostics,
    resources: Vec<Resource>,
    origins: Vec<Origin>,
    by_reference: HashMap<String, usize>,
    contents: BTreeMap<String, Content>,
}

impl Compiler<'_> {
    /// Declares one resource as written, or one per element of its
    /// `for_each` list.
    fn declare(&mut self, role: &Role, declared: &DeclaredResource) {
        let Some(expression) = &declared.for_each else {
            self.declare_one(role, declared, None);
            return;
        };
        let position = declared.position_of("for_each");
        let items: Vec<Value> = match lookup_path(self.context, expression) {
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
                        declared.type_name
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
            self.declare_one(role, declared, Some(item));
        }
    }

    fn declare_one(&mut self, role: &Role, declared: &DeclaredResource, item: Option<Value>) {
        let local_context;
        let context = match &item {
            Some(item) => {
                let mut with_item = self.context.clone();
                with_item["item"] = item.clone();
                local_context = with_item;
                &local_context
            }
            None => self.context,
        };
        let file = role.file.as_str();
        let spec = match &declared.parsed {
            Some(spec) => spec.clone(),
            None => {
                let rendered = match self.render_fields(declared, context, file) {
                    Some(rendered) => rendered,
                    None => return,
                };
                match Spec::deserialize(declared.type_name, rendered) {
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
                            format!("in {} after rendering: {message}", declared.type_name),
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
        let Some(kind) = self.resolve(spec, declared, context, file, item.as_ref()) else {
            return;
        };
        let resource = Resource {
            reference: kind.reference(),
            role: role.name.clone(),
            require,
            notify,
            kind,
        };
        let origin = Origin {
            file: file.to_string(),
            position: declared.position,
            require_position: declared.position_of("require"),
            notify_position: declared.position_of("notify"),
        };
        self.add(resource, origin);
    }

    /// Adds a resource, refusing a second declaration of the same reference
    /// unless it is identical and comes from another role.
    fn add(&mut self, resource: Resource, origin: Origin) {
        if let Some(&existing) = self.by_reference.get(&resource.reference) {
            let first = &self.resources[existing];
            let first_origin = &self.origins[existing];
            let same = first.kind == resource.kind
                && first.require == resource.require
                && first.notify == resource.notify;
            if first.role == resource.role {
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
        for (key, value) in map.iter_mut() {
            if declared.type_name == "file" && key == "content" {
                continue;
            }
            let position = declared.position_of(key);
            if let Err(diagnostic) = self.render_value(value, context, file, position) {
                self.diagnostics.push(diagnostic);
                ok = false;
            }
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
    /// values checked.
    fn resolve(
        &mut self,
        spec: Spec,
        declared: &DeclaredResource,
        context: &Value,
        file: &str,
        item: Option<&Value>,
    ) -> Option<ResourceKind> {
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        let kind = match spec {
            Spec::Package(p) => {
                check_name(&p.name, &mut problems);
                ResourceKind::Package(p)
            }
            Spec::File(f) => match self.resolve_file(f, context, item, &mut problems) {
                Some(f) => ResourceKind::File(f),
                None => return self.report(problems, declared, file),
            },
            Spec::Directory(d) => {
                check_path(&d.path, "path", &mut problems);
                ResourceKind::Directory(d)
            }
            Spec::Symlink(s) => {
                check_path(&s.path, "path", &mut problems);
                match (&s.target, s.ensure) {
                    (None, Ensure::Present) => problems.push((
                        "path",
                        "a symlink needs a `target` unless ensure = \"absent\"".into(),
                    )),
                    (Some(target), _) if target.is_empty() => {
                        problems.push(("target", "target is empty".into()))
                    }
                    _ => {}
                }
                ResourceKind::Symlink(s)
            }
            Spec::Service(s) => {
                check_name(&s.name, &mut problems);
                ResourceKind::Service(s)
            }
            Spec::User(u) => {
                check_name(&u.name, &mut problems);
                if let Some(home) = &u.home {
                    check_path(home, "home", &mut problems);
                }
                ResourceKind::User(u)
            }
            Spec::Group(g) => {
                check_name(&g.name, &mut problems);
                ResourceKind::Group(g)
            }
            Spec::Exec(e) => {
                check_name(&e.name, &mut problems);
                if e.command.trim().is_empty() {
                    problems.push(("command", "command is empty".into()));
                }
                if let Some(creates) = &e.creates {
                    check_path(creates, "creates", &mut problems);
                }
                ResourceKind::Exec(e)
            }
            Spec::Repository(r) => match self.resolve_repository(r, &mut problems) {
                Some(r) => ResourceKind::Repository(r),
                None => return self.report(problems, declared, file),
            },
            Spec::JavaApp(j) => match self.resolve_java_app(j, context, &mut problems) {
                Some(j) => ResourceKind::JavaApp(j),
                None => return self.report(problems, declared, file),
            },
        };
        if problems.is_empty() {
            Some(kind)
        } else {
            self.report(problems, declared, file)
        }
    }

    fn report(
        &mut self,
        problems: Vec<(&'static str, String)>,
        declared: &DeclaredResource,
        file: &str,
    ) -> Option<ResourceKind> {
        for (field, message) in problems {
            self.diagnostics
                .push(Diagnostic::new(file, declared.position_of(field), message));
        }
        None
    }

    fn add_content(&mut self, bytes: Vec<u8>) -> String {
        let hash = sha256_hex(&bytes);
        self.contents.entry(hash.clone()).or_insert(Content(bytes));
        hash
    }

    /// The bytes of `files/<path>`, refusing paths that leave `files/`.
    fn source_bytes(
        &self,
        user_path: &str,
        field: &'static str,
        problems: &mut Vec<(&'static str, String)>,
    ) -> Option<Vec<u8>> {
        let path = match join_inside("files", user_path) {
            Ok(path) => path,
            Err(message) => {
                problems.push((field, message));
                return None;
            }
        };
        match self.repository.files.get(&path) {
            Some(Entry::File(bytes)) => Some(bytes.clone()),
            Some(Entry::EscapingSymlink(target)) => {
                problems.push((field, format!("`{path}` is a symbolic link to `{target}`, outside the repository; it is never followed")));
                None
            }
            None => {
                problems.push((field, format!("`{path}` does not exist")));
                None
            }
        }
    }

    fn render_template(
        &self,
        user_path: &str,
        context: &Value,
        field: &'static str,
        problems: &mut Vec<(&'static str, String)>,
    ) -> Option<Vec<u8>> {
        let name = match join_inside("templates", user_path) {
            Ok(name) => name,
            Err(message) => {
                problems.push((field, message));
                return None;
            }
        };
        if let Some(Entry::EscapingSymlink(target)) = self.repository.files.get(&name) {
            problems.push((field, format!("`{name}` is a symbolic link to `{target}`, outside the repository; it is never followed")));
            return None;
        }
        if !self.repository.templates.contains(&name) {
            problems.push((field, format!("`{name}` does not exist")));
            return None;
        }
        match self.repository.templates.render(&name, context) {
            Ok(text) => Some(text.into_bytes()),
            Err(diagnostic) => {
                // The template's own file and line say where; the resource
                // that used it is named for context.
                problems.push((field, format!("{diagnostic}")));
                None
            }
        }
    }

    fn resolve_file(
        &mut self,
        spec: FileSpec,
        context: &Value,
        item: Option<&Value>,
        problems: &mut Vec<(&'static str, String)>,
    ) -> Option<File> {
        check_path(&spec.path, "path", problems);
        let sources: Vec<&str> = [
            spec.content.as_ref().map(|_| "content"),
            spec.source.as_ref().map(|_| "source"),
            spec.template.as_ref().map(|_| "template"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if sources.len() > 1 {
            problems.push((sources[1], format!(
                "a file takes its content from exactly one of content, source or template; this one has {}",
                sources.join(" and ")
            )));
            return None;
        }
        if spec.ensure == Ensure::Absent && !sources.is_empty() {
            problems.push((sources[0], format!("an absent file has no {}", sources[0])));
            return None;
        }
        if spec.vars.is_some() && spec.template.is_none() {
            problems.push(("vars", "vars are only used by a `template`".into()));
            return None;
        }
        let bytes = if let Some(content) = spec.content {
            Some(content.into_bytes())
        } else if let Some(source) = &spec.source {
            Some(self.source_bytes(source, "source", problems)?)
        } else if let Some(template) = &spec.template {
            let with_vars;
            let context = if spec.vars.is_some() || item.is_some() {
                let mut extended = context.clone();
                extended["vars"] = serde_json::to_value(spec.vars.clone().unwrap_or_default())
                    .expect("vars are JSON");
                with_vars = extended;
                &with_vars
            } else {
                context
            };
            Some(self.render_template(template, context, "template", problems)?)
        } else {
            None
        };
        let content_sha256 = bytes.map(|b| self.add_content(b));
        Some(File {
            path: spec.path,
            ensure: spec.ensure,
            content_sha256,
            owner: spec.owner,
            group: spec.group,
            mode: spec.mode,
        })
    }

    fn resolve_repository(
        &mut self,
        spec: RepositorySpec,
        problems: &mut Vec<(&'static str, String)>,
    ) -> Option<PackageRepository> {
        check_name(&spec.name, problems);
        if !(spec.uri.starts_with("http://")
            || spec.uri.starts_with("https://")
            || spec.uri.starts_with("file:/"))
        {
            problems.push((
                "uri",
                format!(
                    "uri `{}` must start with http://, https:// or file:/",
                    spec.uri
                ),
            ));
        }
        let key_sha256 = match &spec.key {
            Some(key) => {
                let bytes = self.source_bytes(key, "key", problems)?;
                Some(self.add_content(bytes))
            }
            None => None,
        };
        let flat = spec.suite.as_deref().is_some_and(|s| s.ends_with('/'));
        let components = spec.components.unwrap_or_else(|| {
            if flat {
                Vec::new()
            } else {
                vec!["main".to_string()]
            }
        });
        if spec.format == crate::resource::RepositoryFormat::Apt && spec.suite.is_none() {
            problems.push(("suite", "an apt repository needs a `suite`, e.g. \"bookworm\" or \"./\" for a flat repository".into()));
        }
        Some(PackageRepository {
            name: spec.name,
            ensure: spec.ensure,
            format: spec.format,
            uri: spec.uri,
            suite: spec.suite,
            components,
            key_sha256,
            trusted: spec.trusted,
            enabled: spec.enabled,
        })
    }

    fn resolve_java_app(
        &mut self,
        spec: JavaAppSpec,
        context: &Value,
        problems: &mut Vec<(&'static str, String)>,
    ) -> Option<JavaApp> {
        check_java_app(&spec, problems);
        let artifact = &spec.artifact;
        let artifact_sha256 = match (&artifact.url, &artifact.source) {
            (Some(url), None) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    problems.push((
                        "artifact",
                        format!("artifact url `{url}` must start with http:// or https://"),
                    ));
                }
                match &artifact.sha256 {
                    Some(sha) if is_sha256(sha) => sha.to_lowercase(),
                    Some(sha) => {
                        problems.push((
                            "artifact",
                            format!("artifact sha256 `{sha}` is not 64 hex digits"),
                        ));
                        return None;
                    }
                    None => {
                        problems.push(("artifact", "an artifact from a url needs its `sha256`: a jar is never used unverified".into()));
                        return None;
                    }
                }
            }
            (None, Some(source)) => {
                let bytes = self.source_bytes(source, "artifact", problems)?;
                let hash = self.add_content(bytes);
                if let Some(expected) = &artifact.sha256
                    && !expected.eq_ignore_ascii_case(&hash)
                {
                    problems.push(("artifact", format!("artifact `files/{source}` has sha256 {hash}, not the {expected} the role expects")));
                    return None;
                }
                hash
            }
            _ => {
                problems.push((
                    "artifact",
                    "an artifact has exactly one of `url` or `source`".into(),
                ));
                return None;
            }
        };
        let config = match (&spec.properties, &spec.config_template) {
            (Some(_), Some(_)) => {
                problems.push((
                    "config_template",
                    "give either `properties` or `config_template`, not both".into(),
                ));
                return None;
            }
            (Some(properties), None) => {
                Some(render_config(properties, spec.config_format).into_bytes())
            }
            (None, Some(template)) => {
                Some(self.render_template(template, context, "config_template", problems)?)
            }
            (None, None) => None,
        };
        let config_sha256 = config.map(|bytes| self.add_content(bytes));
        let home = spec.home.unwrap_or_else(|| format!("/opt/{}", spec.name));
        Some(JavaApp {
            user: spec.user.unwrap_or_else(|| spec.name.clone()),
            group: spec.group.unwrap_or_else(|| spec.name.clone()),
            config_dir: spec.config_dir.unwrap_or_else(|| format!("{home}/config")),
            log_dir: spec
                .log_dir
                .unwrap_or_else(|| format!("/var/log/{}", spec.name)),
            data_dir: spec
                .data_dir
                .unwrap_or_else(|| format!("/var/lib/{}", spec.name)),
            home,
            name: spec.name,
            ensure: spec.ensure,
            runtime_package: spec.runtime_package,
            java: spec.java.unwrap_or_else(|| "/usr/bin/java".into()),
            artifact_url: spec.artifact.url,
            artifact_sha256,
            config_format: spec.config_format,
            config_sha256,
            environment: spec.environment,
            heap: spec.heap,
            jvm_options: spec.jvm_options,
            args: spec.args,
            health: spec.health,
            keep_releases: spec.keep_releases.unwrap_or(3),
            restart: spec.restart,
            restart_delay: spec.restart_delay.unwrap_or(Seconds(5)),
            limits: spec.limits,
        })
    }
}

/// The checks of a Java application's fields that need nothing but the
/// fields.
fn check_java_app(spec: &JavaAppSpec, problems: &mut Vec<(&'static str, String)>) {
    // The name names the unit and, by default, folders: no room for
    // anything a path or a unit name would misread.
    let name_ok = spec
        .name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        problems.push((
            "name",
            format!(
                "java_app name `{}` must start with a letter or digit and hold only letters, digits, `-`, `_` and `.`: it names the systemd unit and the app's folders",
                spec.name
            ),
        ));
    }
    for (field, account) in [("user", &spec.user), ("group", &spec.group)] {
        let (account, defaulted) = match account {
            Some(account) => (account, ""),
            None => (&spec.name, " (the app's name, its default)"),
        };
        let valid = account
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && account
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_".contains(c))
            && account.len() <= 32;
        if !valid {
            problems.push((
                field,
                format!("{field} `{account}`{defaulted} is not a valid account name: lowercase letters, digits, `-` and `_`, starting with a letter or `_`"),
            ));
        } else if account == "root" {
            problems.push((
                field,
                format!("{field} `root`{defaulted}: a java_app runs as its own unprivileged account, never as root"),
            ));
        }
    }
    for (field, path) in [
        ("home", &spec.home),
        ("config_dir", &spec.config_dir),
        ("log_dir", &spec.log_dir),
        ("data_dir", &spec.data_dir),
        ("java", &spec.java),
    ] {
        if let Some(path) = path {
            check_path(path, field, problems);
        }
    }
    if let Some(heap) = &spec.heap
        && let Err(message) = validate_heap(heap)
    {
        problems.push(("heap", message));
    }
    for (key, value) in &spec.environment {
        let key_ok = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            problems.push((
                "environment",
                format!("environment variable name `{key}` must be letters, digits and `_`, not starting with a digit"),
            ));
        }
        if value.contains(['\n', '\0']) {
            problems.push((
                "environment",
                format!("environment variable `{key}` holds a newline or NUL"),
            ));
        }
    }
    for option in &spec.jvm_options {
        if !option.starts_with('-') || option.contains(['\n', '\0']) {
            problems.push((
                "jvm_options",
                format!("jvm option `{option}` must start with `-` and hold no newline"),
            ));
        } else if spec.heap.is_some() && option.starts_with("-Xmx") {
            problems.push((
                "jvm_options",
                format!("jvm option `{option}` sets the heap, which `heap` already does: keep one"),
            ));
        }
    }
    for arg in &spec.args {
        if arg.contains(['\n', '\0']) {
            problems.push(("args", format!("argument {arg:?} holds a newline or NUL")));
        }
    }
    if let Some(health) = &spec.health {
        match (&health.http, health.tcp) {
            (Some(_), Some(_)) | (None, None) => problems.push((
                "health",
                "a health check has exactly one of `http` (a URL answering 2xx) or `tcp` (a port accepting connections)".into(),
            )),
            (Some(url), None) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                problems.push((
                    "health",
                    format!("health url `{url}` must start with http:// or https://"),
                ))
            }
            (None, Some(0)) => problems.push(("health", "health port 0 is not a port".into())),
            _ => {}
        }
        if health.timeout.is_some_and(|t| t.0 == 0) {
            problems.push((
                "health",
                "a health timeout of 0 s leaves the app no time to start".into(),
            ));
        }
    }
    if let Some(keep) = spec.keep_releases
        && keep > 100
    {
        problems.push((
            "keep_releases",
            format!("keep_releases = {keep}: at most 100 earlier releases are kept"),
        ));
    }
    if let Some(memory) = &spec.limits.memory
        && let Err(message) = validate_size(memory)
    {
        problems.push(("limits", format!("limits.memory: {message}")));
    }
    if spec.limits.nofile == Some(0) || spec.limits.nproc == Some(0) {
        problems.push((
            "limits",
            "a limit of 0 would keep the app from starting".into(),
        ));
    }
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// A Java application's configuration as `application.properties` (dotted
/// keys) or `application.yml` (the same dotted keys, which Spring reads as
/// nested), sorted by key.
fn render_config(properties: &BTreeMap<String, Value>, format: ConfigFormat) -> String {
    let mut flat = BTreeMap::new();
    for (key, value) in properties {
        flatten(key, value, &mut flat);
    }
    let mut out = String::new();
    for (key, value) in flat {
        match format {
            ConfigFormat::Properties => out.push_str(&format!("{key}={value}\n")),
            ConfigFormat::Yaml => out.push_str(&format!(
                "{key}: {}\n",
                serde_json::to_string(&value).expect("strings serialize")
            )),
        }
    }
    out
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                flatten(&format!("{prefix}.{key}"), value, out);
            }
        }
        Value::Array(items) => {
            let joined = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",");
            out.insert(prefix.to_string(), joined);
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

fn check_name(name: &str, problems: &mut Vec<(&'static str, String)>) {
    if name.trim().is_empty() {
        problems.push(("name", "name is empty".into()));
    } else if name.contains(['\n', '\0']) {
        problems.push(("name", format!("name {name:?} contains a newline or NUL")));
    }
}

fn check_path(path: &str, field: &'static str, problems: &mut Vec<(&'static str, String)>) {
    if !path.starts_with('/') {
        problems.push((field, format!("{field} `{path}` must be absolute")));
    } else if path.split('/').any(|part| part == ".." || part == ".")
        || path.contains("//")
        || (path.len() > 1 && path.ends_with('/'))
        || path.contains('\0')
    {
        problems.push((field, format!("{field} `{path}` must be a normalized absolute path (no `.`, `..`, `//` or trailing `/`)")));
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
                if !RESOURCE_TYPES.contains(&type_name) {
                    diagnostics.push(Diagnostic::new(
                        &origin.file,
                        position,
                        format!("{field} `{reference}`: unknown resource type `{type_name}`, expected one of {}", RESOURCE_TYPES.join(", ")),
                    ));
                    continue;
                }
                if !by_reference.contains_key(reference) {
                    if repository.failed_references.contains(reference)
                        || !repository.unparsed_roles.is_empty()
                    {
                        // Already reported where that resource (or its whole
                        // role file) failed to parse.
                        continue;
                    }
                    let hint = if is_path_type(type_name) && !name.starts_with('/') {
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
                if field == "notify" && !is_refreshable_type(type_name) {
                    diagnostics.push(Diagnostic::new(
                        &origin.file,
                        position,
                        format!("notify `{reference}`: a {type_name} does nothing when notified; notify a service, exec or java_app, or use require for ordering"),
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
