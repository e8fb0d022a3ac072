//! What templates can read of a node, found from handlebars' parsed
//! templates rather than from their text.
//!
//! Two users: the server keys its catalog cache by the node values a
//! repository can read (`NodeReads::of`, in `node_reads`), and the data hierarchy accepts
//! only layers that read trusted values ([`untrusted_read_in_layer`]).
//!
//! The analysis errs on the side of reading more. Every path a template
//! names is resolved against the block it sits in (`{{#each}}` and
//! `{{#with}}` open blocks, `../` climbs out of them, `@root.` starts from the
//! top); a value given to a helper (`{{json fact}}`, `{{#each fact}}`) counts
//! as read whole; a value computed by a helper is a function of what its
//! parameters read, so what is read below it adds nothing. Whenever the root
//! of a read cannot be told (a partial, a decorator, an unknown helper,
//! `../` out of the top, `{{json this}}` at the top) the template counts as
//! reading everything.

use std::collections::BTreeSet;

use handlebars::template::{HelperTemplate, Parameter, Subexpression, TemplateElement};
use handlebars::{Path, PathSeg, Template};
use serde_json::Value;

use crate::template::has_placeholders;

/// The node values a repository's templates, fields and `for_each`
/// expressions can read, beyond its tags (which select roles and so are
/// part of every catalog's identity) and its data (a function of the
/// revision and of the layers that apply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeReads {
    /// `node.id` or `trusted.id`.
    pub node_id: bool,
    /// Every fact (`{{#each fact}}`, `{{json this}}`, …).
    pub all_facts: bool,
    /// Facts read by name.
    pub facts: BTreeSet<String>,
    /// Every attested value (`{{json trusted}}`, …).
    pub all_attested: bool,
    /// Attested values read by name (`trusted.instance_id`).
    pub attested: BTreeSet<String>,
}

impl NodeReads {
    /// Everything a node has.
    pub fn everything() -> NodeReads {
        NodeReads {
            node_id: true,
            all_facts: true,
            all_attested: true,
            ..NodeReads::default()
        }
    }

    pub(crate) fn add(&mut self, access: &Access) {
        // What a secret helper reads depends on the repository's scopes:
        // `NodeReads::of` adds it.
        if access.derived || access.secret.is_some() {
            return;
        }
        let Some(path) = &access.path else {
            *self = NodeReads::everything();
            return;
        };
        let name = |index: usize| match path.get(index) {
            Some(Seg::Name(name)) => Some(name.as_str()),
            _ => None,
        };
        match path.first() {
            None | Some(Seg::Any) => *self = NodeReads::everything(),
            Some(Seg::Name(root)) => match root.as_str() {
                "fact" => match name(1) {
                    Some(fact) => {
                        self.facts.insert(fact.to_string());
                    }
                    None => self.all_facts = true,
                },
                "node" => self.node_id = true,
                "trusted" => match name(1) {
                    Some("id") => self.node_id = true,
                    // The tags are part of every key.
                    Some("tags") => {}
                    Some(key) => {
                        self.attested.insert(key.to_string());
                    }
                    None => {
                        self.node_id = true;
                        self.all_attested = true;
                    }
                },
                // `tag` is part of every key, `data` follows from the layers
                // that apply, `item` from its `for_each` expression,
                // `vars` from the fields that set them and `params` from
                // the includes that give them, all read already.
                // Nothing else is in the context.
                _ => {}
            },
        }
    }
}

/// The first read of a hierarchy layer that is not a trusted value, as a
/// message saying what to write instead; `None` when the layer reads only
/// `trusted.*`, `tag.*` and `node.id`.
pub(crate) fn untrusted_read_in_layer(layer: &str) -> Option<String> {
    if !has_placeholders(layer) {
        return None;
    }
    let template = match Template::compile(layer) {
        Ok(template) => template,
        Err(error) => {
            return Some(format!(
                "hierarchy layer `{layer}` is not a valid template: {}",
                error.reason()
            ));
        }
    };
    let mut accesses = Vec::new();
    walk(&template, &mut accesses);
    let untrusted = accesses.into_iter().find(|access| !is_trusted(access))?;
    let allowed = "layers choose which data a node gets, so they may use only values the server vouches for: `trusted.*` (the node id, its bound tags and attested values such as `trusted.instance_id`), `tag.*` and `node.id`";
    let fact = untrusted
        .path
        .as_ref()
        .and_then(|path| match path.as_slice() {
            [Seg::Name(root), rest @ ..] if root == "fact" => Some(rest),
            _ => None,
        });
    Some(match fact {
        Some([Seg::Name(name), ..]) => {
            let instead = if ATTESTED_KEYS.contains(&name.as_str()) {
                format!("trusted.{name}")
            } else {
                "trusted.id".to_string()
            };
            format!(
                "hierarchy layer `{layer}` selects data by `{}`, which the node reports about itself, so a node could claim another node's layer: {allowed}; write `{}`",
                untrusted.raw,
                layer.replace(&untrusted.raw, &instead)
            )
        }
        Some(_) => format!(
            "hierarchy layer `{layer}` reads `{}`, which the node reports about itself: {allowed}; write e.g. `node/{{{{trusted.instance_id}}}}` or `node/{{{{trusted.id}}}}`",
            untrusted.raw
        ),
        None if untrusted.path.is_none() => format!(
            "hierarchy layer `{layer}` uses {}, which may read any value: {allowed}",
            untrusted.raw
        ),
        None => format!(
            "hierarchy layer `{layer}` reads `{}`, which is not a trusted value: {allowed}",
            untrusted.raw
        ),
    })
}

/// The keys attested enrollment fills, as `trusted.<key>`.
pub const ATTESTED_KEYS: &[&str] = &[
    "instance_id",
    "account_id",
    "region",
    "availability_zone",
    "instance_type",
    "image_id",
];

fn is_trusted(access: &Access) -> bool {
    // Values computed by helpers and `@index`-like locals come from reads
    // that are checked themselves.
    if access.secret.is_some() {
        return false;
    }
    if access.derived {
        return true;
    }
    let Some(path) = &access.path else {
        return false;
    };
    match path.first() {
        Some(Seg::Name(root)) if root == "trusted" || root == "tag" => true,
        Some(Seg::Name(root)) if root == "node" => {
            matches!(path.get(1), Some(Seg::Name(id)) if id == "id")
        }
        _ => false,
    }
}

/// One path segment of a read: a name, or any element of a list or table.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Name(String),
    Any,
}

/// One read a template can make.
#[derive(Debug, Clone)]
pub(crate) struct Access {
    /// From the top of the context; `None` when it cannot be told.
    path: Option<Vec<Seg>>,
    /// Read below a computed value: nothing beyond its parameters.
    derived: bool,
    /// As written, for messages.
    raw: String,
    /// A `secret` or `secret_base64` helper: `Some(Some(key))` for a
    /// literal parameter, `Some(None)` when it cannot be told.
    secret: Option<Option<String>>,
}

/// What a read takes of the node's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DataRead {
    /// Nothing: another root, a secret, or a value computed by a helper.
    Nothing,
    /// The value at this path below `data` (`["sysctl"]` for
    /// `data.sysctl`), whole; `[]` for all of `data`.
    At(Vec<String>),
    /// Anything: the root of the read cannot be told.
    Everything,
}

impl Access {
    /// What this read takes of `data`: a path stops at the first segment
    /// that can be any element (`{{#each data.apps}}`), so it names the
    /// value read whole.
    pub(crate) fn data_read(&self) -> DataRead {
        if self.derived || self.secret.is_some() {
            return DataRead::Nothing;
        }
        let Some(path) = &self.path else {
            return DataRead::Everything;
        };
        match path.first() {
            None | Some(Seg::Any) => DataRead::Everything,
            Some(Seg::Name(root)) if root == "data" => DataRead::At(
                path[1..]
                    .iter()
                    .map_while(|seg| match seg {
                        Seg::Name(name) => Some(name.clone()),
                        Seg::Any => None,
                    })
                    .collect(),
            ),
            Some(Seg::Name(_)) => DataRead::Nothing,
        }
    }

    /// The secret this read asks for, when it is a `secret` helper: the
    /// literal key, or `None` when it cannot be told.
    pub(crate) fn secret(&self) -> Option<Option<&str>> {
        self.secret.as_ref().map(Option::as_deref)
    }
}

/// What the current block's `this` is.
#[derive(Debug, Clone)]
enum Scope {
    At(Vec<Seg>),
    /// A value a helper computed.
    Derived,
}

/// Helpers that read nothing but their parameters, and the node's tags
/// (`tag_is`, `has_tag`), which are part of every key and trusted.
const PLAIN_HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len", "default", "tag_is", "has_tag", "join", "upper", "lower", "replace",
    "json", "percent",
];

pub(crate) fn inline(text: &str, accesses: &mut Vec<Access>) {
    if !has_placeholders(text) {
        return;
    }
    match Template::compile(text) {
        Ok(template) => walk(&template, accesses),
        Err(_) => accesses.push(Access {
            path: None,
            derived: false,
            raw: text.to_string(),
            secret: None,
        }),
    }
}

pub(crate) fn strings(value: &Value, accesses: &mut Vec<Access>) {
    match value {
        Value::String(text) => inline(text, accesses),
        Value::Array(items) => items.iter().for_each(|item| strings(item, accesses)),
        Value::Object(map) => map.values().for_each(|item| strings(item, accesses)),
        _ => {}
    }
}

/// A `for_each` expression names a path (`data.apps`) that is read whole.
pub(crate) fn for_each_access(expression: &str) -> Access {
    let path = expression
        .trim()
        .trim_start_matches("{{")
        .trim_end_matches("}}")
        .trim();
    Access {
        path: Some(path.split('.').map(|s| Seg::Name(s.to_string())).collect()),
        derived: false,
        raw: path.to_string(),
        secret: None,
    }
}

pub(crate) fn walk(template: &Template, accesses: &mut Vec<Access>) {
    let mut walker = Walker {
        scopes: vec![Scope::At(Vec::new())],
        accesses,
    };
    walker.template(template);
}

struct Walker<'a> {
    /// The blocks open at this point, the innermost last.
    scopes: Vec<Scope>,
    accesses: &'a mut Vec<Access>,
}

/// Where a path points.
enum Target {
    At(Vec<Seg>),
    Derived,
    Unknown,
}

impl Walker<'_> {
    fn template(&mut self, template: &Template) {
        for element in &template.elements {
            self.element(element);
        }
    }

    fn element(&mut self, element: &TemplateElement) {
        match element {
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => {}
            TemplateElement::Expression(helper) | TemplateElement::HtmlExpression(helper) => {
                let name_only = !helper.block && helper.params.is_empty() && helper.hash.is_empty();
                match &helper.name {
                    Parameter::Path(path) if name_only && !is_helper(raw(path)) => {
                        self.read(path);
                    }
                    _ => self.helper(helper),
                }
            }
            TemplateElement::HelperBlock(helper) => self.block(helper),
            TemplateElement::DecoratorExpression(_)
            | TemplateElement::DecoratorBlock(_)
            | TemplateElement::PartialExpression(_)
            | TemplateElement::PartialBlock(_) => self.unknown("a partial or decorator"),
            _ => self.unknown("an unknown template element"),
        }
    }

    fn unknown(&mut self, what: &str) {
        self.accesses.push(Access {
            path: None,
            derived: false,
            raw: what.to_string(),
            secret: None,
        });
    }

    fn helper_name(parameter: &Parameter) -> Option<&str> {
        match parameter {
            Parameter::Name(name) => Some(name),
            Parameter::Path(path) => Some(raw(path)),
            _ => None,
        }
    }

    /// A helper call: its parameters are read whole.
    fn helper(&mut self, helper: &HelperTemplate) {
        self.call(&helper.name, &helper.params, helper.hash.values());
    }

    fn call<'p>(
        &mut self,
        name: &Parameter,
        params: &'p [Parameter],
        hash: impl Iterator<Item = &'p Parameter>,
    ) {
        let Some(name) = Self::helper_name(name) else {
            self.unknown("a computed helper name");
            return;
        };
        if name == "secret" || name == "secret_base64" {
            let key = match params {
                [Parameter::Literal(Value::String(key))] => Some(key.clone()),
                _ => None,
            };
            for param in params.iter().chain(hash) {
                self.param(param);
            }
            self.accesses.push(Access {
                path: None,
                derived: false,
                raw: format!("the helper `{name}`"),
                secret: Some(key),
            });
            return;
        }
        if name == "memory_percent" {
            self.accesses.push(Access {
                path: Some(vec![
                    Seg::Name("fact".into()),
                    Seg::Name("memory_mb".into()),
                ]),
                derived: false,
                raw: "memory_percent (fact.memory_mb)".into(),
                secret: None,
            });
        } else if !PLAIN_HELPERS.contains(&name) {
            self.unknown(&format!("the helper `{name}`"));
            return;
        }
        // `lookup x "name"` reads `x.name`.
        if name == "lookup"
            && let [Parameter::Path(path), Parameter::Literal(key)] = params
            && let Some(key) = key
                .as_str()
                .map(str::to_string)
                .or_else(|| key.as_u64().map(|n| n.to_string()))
        {
            match self.resolve(path) {
                Target::At(mut at) => {
                    at.push(Seg::Name(key.clone()));
                    self.accesses.push(Access {
                        path: Some(at),
                        derived: false,
                        raw: format!("{}.{key}", raw(path)),
                        secret: None,
                    });
                }
                target => self.record(target, raw(path)),
            }
            return;
        }
        for param in params.iter().chain(hash) {
            self.param(param);
        }
    }

    fn param(&mut self, param: &Parameter) {
        match param {
            Parameter::Path(path) => self.read(path),
            Parameter::Subexpression(sub) => self.subexpression(sub),
            Parameter::Literal(_) | Parameter::Name(_) => {}
            _ => self.unknown("an unknown parameter"),
        }
    }

    fn subexpression(&mut self, sub: &Subexpression) {
        match sub.as_element() {
            TemplateElement::Expression(helper) => self.helper(helper),
            _ => self.unknown("an unknown subexpression"),
        }
    }

    /// A block helper: `each` and `with` open a block over their first
    /// parameter; others render their blocks where they stand.
    fn block(&mut self, helper: &HelperTemplate) {
        let name = Self::helper_name(&helper.name).unwrap_or_default();
        let inner = match (name, helper.params.first()) {
            ("each" | "with", Some(first)) => {
                let scope = match first {
                    Parameter::Path(path) => match self.resolve(path) {
                        Target::At(mut at) => {
                            if name == "each" {
                                at.push(Seg::Any);
                            }
                            Scope::At(at)
                        }
                        Target::Derived => Scope::Derived,
                        Target::Unknown => {
                            self.unknown(&format!("`{}`", raw(path)));
                            Scope::Derived
                        }
                    },
                    _ => Scope::Derived,
                };
                Some(scope)
            }
            _ => None,
        };
        self.helper(helper);
        if let Some(body) = &helper.template {
            match inner {
                Some(scope) => {
                    self.scopes.push(scope);
                    self.template(body);
                    self.scopes.pop();
                }
                None => self.template(body),
            }
        }
        if let Some(inverse) = &helper.inverse {
            self.template(inverse);
        }
    }

    /// A path read whole.
    fn read(&mut self, path: &Path) {
        let target = self.resolve(path);
        self.record(target, raw(path));
    }

    fn record(&mut self, target: Target, raw: &str) {
        let access = match target {
            Target::At(at) => Access {
                path: Some(at),
                derived: false,
                raw: raw.to_string(),
                secret: None,
            },
            // Below a computed value: nothing is read beyond what its
            // parameters read.
            Target::Derived => Access {
                path: None,
                derived: true,
                raw: raw.to_string(),
                secret: None,
            },
            Target::Unknown => Access {
                path: None,
                derived: false,
                raw: format!("`{raw}`"),
                secret: None,
            },
        };
        self.accesses.push(access);
    }

    fn resolve(&self, path: &Path) -> Target {
        let segs = match path {
            // `@index`, `@key`, `@first`, `@last` are set by `each` from
            // the list it walks, which was read whole.
            Path::Local((_, name, _)) => {
                return if matches!(name.as_str(), "index" | "key" | "first" | "last") {
                    Target::Derived
                } else {
                    Target::Unknown
                };
            }
            Path::Relative((segs, _)) => segs,
        };
        let mut names = Vec::new();
        let mut from_root = false;
        let mut up = 0usize;
        for seg in segs {
            match seg {
                PathSeg::Named(name) => names.push(Seg::Name(name.clone())),
                ruled if names.is_empty() && !from_root => match ruled_kind(ruled) {
                    Some(Ruled::Root) if up == 0 => from_root = true,
                    Some(Ruled::Up) => up += 1,
                    _ => return Target::Unknown,
                },
                _ => return Target::Unknown,
            }
        }
        let base = if from_root {
            Scope::At(Vec::new())
        } else {
            match self.scopes.len().checked_sub(1 + up) {
                Some(index) => self.scopes[index].clone(),
                // Handlebars reads the current block when `../` climbs past
                // the top; say nothing about it.
                None => return Target::Unknown,
            }
        };
        match base {
            Scope::At(mut at) => {
                at.extend(names);
                Target::At(at)
            }
            Scope::Derived => Target::Derived,
        }
    }
}

fn raw(path: &Path) -> &str {
    match path {
        Path::Relative((_, raw)) => raw,
        Path::Local((_, _, raw)) => raw,
    }
}

fn is_helper(name: &str) -> bool {
    matches!(name, "memory_percent" | "secret" | "secret_base64") || PLAIN_HELPERS.contains(&name)
}

enum Ruled {
    Root,
    Up,
}

/// handlebars keeps its grammar's rules private; its `Debug` names them.
/// A test pins these names to the version in Cargo.lock.
fn ruled_kind(seg: &PathSeg) -> Option<Ruled> {
    match format!("{seg:?}").as_str() {
        "Ruled(path_root)" => Some(Ruled::Root),
        "Ruled(path_up)" => Some(Ruled::Up),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads_of(template: &str) -> NodeReads {
        let mut accesses = Vec::new();
        inline(template, &mut accesses);
        let mut reads = NodeReads::default();
        for access in &accesses {
            reads.add(access);
        }
        reads
    }

    fn facts(names: &[&str]) -> NodeReads {
        NodeReads {
            facts: names.iter().map(|n| n.to_string()).collect(),
            ..NodeReads::default()
        }
    }

    #[test]
    fn handlebars_names_its_path_rules_as_this_analysis_expects() {
        let segs = |text: &str| match Path::parse(text).expect("parses") {
            Path::Relative((segs, _)) => segs,
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            ruled_kind(&segs("@root.fact")[0]),
            Some(Ruled::Root)
        ));
        assert!(matches!(ruled_kind(&segs("../fact")[0]), Some(Ruled::Up)));
        assert!(segs("this.fact") == segs("fact"));
    }

    #[test]
    fn named_reads_are_found_where_they_point() {
        assert_eq!(reads_of("{{tag.role}} {{data.port}}"), NodeReads::default());
        assert_eq!(reads_of("{{fact.os}}"), facts(&["os"]));
        assert_eq!(reads_of("{{lookup fact \"os\"}}"), facts(&["os"]));
        assert_eq!(reads_of("{{memory_percent 50}}"), facts(&["memory_mb"]));
        assert!(reads_of("{{#with fact}}{{os}}{{/with}}").all_facts);
        assert_eq!(
            reads_of("{{#each data.apps}}{{name}} {{../fact.os}} {{@root.fact.cpus}}{{/each}}"),
            facts(&["cpus", "os"])
        );
        assert!(
            reads_of("{{#each data.apps}}{{#if enabled}}{{../node.id}}{{/if}}{{/each}}").node_id
        );
        let trusted = reads_of("{{trusted.instance_id}} {{trusted.tags.env}}");
        assert_eq!(trusted.attested, ["instance_id".to_string()].into());
        assert!(!trusted.node_id);
        assert!(reads_of("{{trusted.id}}").node_id);
    }

    #[test]
    fn reads_whose_root_cannot_be_told_read_everything() {
        for template in [
            "{{json this}}",
            "{{#each this}}{{this}}{{/each}}",
            "{{lookup this (lower \"FACT\")}}",
            "{{> other}}",
            "{{#with data}}{{json ../this}}{{/with}}",
            "{{../fact.os}}",
            "{{unknown_helper 1}}",
            "{{#with data}}{{json @root}}{{/with}}",
        ] {
            assert_eq!(reads_of(template), NodeReads::everything(), "{template}");
        }
        // A computed key into the facts reads every fact.
        assert!(reads_of("{{lookup fact (lower \"OS\")}}").all_facts);
    }

    #[test]
    fn values_computed_by_helpers_add_nothing_beyond_their_parameters() {
        assert_eq!(
            reads_of("{{#with (lookup data \"db\")}}{{host}}{{/with}}"),
            NodeReads::default()
        );
        assert_eq!(
            reads_of("{{#each data.apps as |app|}}{{app.name}}{{@index}}{{/each}}"),
            NodeReads::default()
        );
    }

    #[test]
    fn layers_reading_only_trusted_values_pass() {
        for layer in [
            "common",
            "node/{{trusted.instance_id}}",
            "node/{{trusted.id}}",
            "env/{{tag.env}}",
            "id/{{node.id}}",
            "region/{{lower trusted.region}}",
            "env/{{default trusted.tags.env \"none\"}}",
        ] {
            assert_eq!(untrusted_read_in_layer(layer), None, "{layer}");
        }
        assert!(
            untrusted_read_in_layer("node/{{fact.instance_id}}")
                .expect("refused")
                .contains("write `node/{{trusted.instance_id}}`")
        );
    }
}
