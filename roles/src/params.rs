//! Parameterized roles: a role's typed `[params]` with defaults, the values
//! an `include` gives them, and the role instances a node gets.
//!
//! ```toml
//! # roles/java_service.toml
//! [params]
//! name = { type = "string" }
//! port = { type = "integer", default = 8080 }
//!
//! # roles/api.toml
//! include = [
//!   { role = "java_service", params = { name = "orders", port = 8081 } },
//!   { role = "java_service", params = { name = "payments", port = 8082 } },
//! ]
//! ```
//!
//! Parsing checks what it can see in the text (unknown, missing and
//! mistyped parameters, a default of the wrong type), with file and line.
//! Compiling turns the selected roles into instances: one per distinct set
//! of values, each rendering its resources with `params` in the context.
//! Values with placeholders are rendered in the including role's context
//! (so a parameterized role can pass its own `{{params.x}}` on); a value
//! rendered to text becomes the declared type when it reads as one.

use std::collections::BTreeMap;

use serde_json::Value;
use toml::Spanned;
use toml::de::DeValue;

use crate::diagnostic::{Diagnostic, Diagnostics, LineIndex, Position, unknown_key_message};
use crate::template::has_placeholders;
use crate::toml_json::to_json;

/// The type of a parameter, as `[params]` writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamType {
    String,
    Integer,
    Float,
    Boolean,
    List,
    Table,
}

impl ParamType {
    const NAMES: &'static [&'static str] =
        &["string", "integer", "float", "boolean", "list", "table"];

    fn from_name(name: &str) -> Option<ParamType> {
        Some(match name {
            "string" => ParamType::String,
            "integer" => ParamType::Integer,
            "float" => ParamType::Float,
            "boolean" => ParamType::Boolean,
            "list" => ParamType::List,
            "table" => ParamType::Table,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Float => "float",
            ParamType::Boolean => "boolean",
            ParamType::List => "list",
            ParamType::Table => "table",
        }
    }

    /// With its article, for messages: "an integer".
    pub(crate) fn described(self) -> &'static str {
        match self {
            ParamType::String => "a string",
            ParamType::Integer => "an integer",
            ParamType::Float => "a float",
            ParamType::Boolean => "a boolean",
            ParamType::List => "a list",
            ParamType::Table => "a table",
        }
    }

    /// Whether `value` is of this type (an integer is a float too).
    pub(crate) fn accepts(self, value: &Value) -> bool {
        match self {
            ParamType::String => value.is_string(),
            ParamType::Integer => value.is_i64() || value.is_u64(),
            ParamType::Float => value.is_number(),
            ParamType::Boolean => value.is_boolean(),
            ParamType::List => value.is_array(),
            ParamType::Table => value.is_object(),
        }
    }

    /// A rendered value as this type: `"8081"` is the integer 8081 for an
    /// integer parameter. `None` when the text does not read as one.
    pub(crate) fn read_rendered(self, text: String) -> Option<Value> {
        let trimmed = text.trim();
        match self {
            ParamType::String => Some(Value::String(text)),
            ParamType::Integer => trimmed.parse::<i64>().ok().map(Value::from),
            ParamType::Float => trimmed
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
            ParamType::Boolean => trimmed.parse::<bool>().ok().map(Value::Bool),
            ParamType::List | ParamType::Table => None,
        }
    }
}

/// What a value is, for messages: "a string".
pub(crate) fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a float",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// One declared parameter: `port = { type = "integer", default = 8080 }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub param_type: ParamType,
    /// `None`: every include must give a value.
    pub default: Option<Value>,
    pub description: Option<String>,
    /// Where the parameter was declared.
    pub position: Position,
}

/// A value an include gives a parameter, and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamValue {
    pub value: Value,
    pub position: Position,
}

/// One entry of a role's `include`: `"base"`, or `{ role = "java_service",
/// params = { … } }`.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub role: String,
    /// Where the role's name was written.
    pub position: Position,
    /// The values given, by parameter name; empty for a plain name.
    pub params: BTreeMap<String, ParamValue>,
}

const PARAM_KEYS: &[&str] = &["type", "default", "description"];
const INCLUDE_KEYS: &[&str] = &["role", "params"];

/// Parses a role's `[params]` table. Problems go to `diagnostics`; a
/// parameter with a problem is left out.
pub(crate) fn parse_params(
    path: &str,
    lines: &LineIndex<'_>,
    value: &Spanned<DeValue<'_>>,
    diagnostics: &mut Diagnostics,
) -> BTreeMap<String, Param> {
    let mut params = BTreeMap::new();
    let at = |offset: usize| lines.position(offset);
    let Some(table) = value.get_ref().as_table() else {
        diagnostics.push(Diagnostic::new(
            path,
            at(value.span().start),
            "`params` must be a table: write [params] with one line per parameter, such as port = { type = \"integer\", default = 8080 }",
        ));
        return params;
    };
    for (key, declaration) in table.iter() {
        let name = key.get_ref().to_string();
        let position = at(key.span().start);
        if !is_param_name(&name) {
            diagnostics.push(Diagnostic::new(
                path,
                position,
                format!(
                    "parameter name `{name}` is not usable in templates: use letters, digits and `_`, starting with a letter"
                ),
            ));
            continue;
        }
        let Some(fields) = declaration.get_ref().as_table() else {
            diagnostics.push(Diagnostic::new(
                path,
                at(declaration.span().start),
                format!(
                    "parameter `{name}` must be a table with its type: write {name} = {{ type = \"string\" }}, or with a default: {name} = {{ type = \"integer\", default = 8080 }}"
                ),
            ));
            continue;
        };
        let mut param_type = None;
        let mut default = None;
        let mut description = None;
        let mut ok = true;
        for (field, field_value) in fields.iter() {
            let field_at = at(field_value.span().start);
            match field.get_ref().as_ref() {
                "type" => match field_value.get_ref().as_str() {
                    Some(text) => match ParamType::from_name(text) {
                        Some(t) => param_type = Some(t),
                        None => {
                            diagnostics.push(Diagnostic::new(
                                path,
                                field_at,
                                format!(
                                    "unknown type `{text}` of parameter `{name}`, expected one of {}",
                                    ParamType::NAMES.join(", ")
                                ),
                            ));
                            ok = false;
                        }
                    },
                    None => {
                        diagnostics.push(Diagnostic::new(
                            path,
                            field_at,
                            format!(
                                "the type of parameter `{name}` must be a string, one of {}",
                                ParamType::NAMES.join(", ")
                            ),
                        ));
                        ok = false;
                    }
                },
                "default" => default = Some((to_json(field_value.get_ref()), field_at)),
                "description" => match field_value.get_ref().as_str() {
                    Some(text) => description = Some(text.to_string()),
                    None => {
                        diagnostics.push(Diagnostic::new(
                            path,
                            field_at,
                            format!("the description of parameter `{name}` must be a string"),
                        ));
                        ok = false;
                    }
                },
                other => {
                    diagnostics.push(Diagnostic::new(
                        path,
                        at(field.span().start),
                        format!(
                            "{} in parameter `{name}`",
                            unknown_key_message(other, PARAM_KEYS)
                        ),
                    ));
                    ok = false;
                }
            }
        }
        let Some(param_type) = param_type else {
            if ok {
                diagnostics.push(Diagnostic::new(
                    path,
                    position,
                    format!(
                        "parameter `{name}` has no type: add type = \"…\", one of {}",
                        ParamType::NAMES.join(", ")
                    ),
                ));
            }
            continue;
        };
        if let Some((value, default_at)) = &default {
            if !param_type.accepts(value) {
                diagnostics.push(Diagnostic::new(
                    path,
                    *default_at,
                    format!(
                        "the default of parameter `{name}` is {}, but its type is {}",
                        value_type(value),
                        param_type.name()
                    ),
                ));
                ok = false;
            } else if contains_placeholders(value) {
                diagnostics.push(Diagnostic::new(
                    path,
                    *default_at,
                    format!(
                        "the default of parameter `{name}` holds `{{{{`: defaults are used as written; give the value where the role is included instead"
                    ),
                ));
                ok = false;
            }
        }
        if ok {
            params.insert(
                name,
                Param {
                    param_type,
                    default: default.map(|(value, _)| value),
                    description,
                    position,
                },
            );
        }
    }
    params
}

fn is_param_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(crate) fn contains_placeholders(value: &Value) -> bool {
    match value {
        Value::String(text) => has_placeholders(text),
        Value::Array(items) => items.iter().any(contains_placeholders),
        Value::Object(map) => map.values().any(contains_placeholders),
        _ => false,
    }
}

/// Parses a role's `include`: a list of role names and `{ role, params }`
/// tables.
pub(crate) fn parse_includes(
    path: &str,
    lines: &LineIndex<'_>,
    value: &Spanned<DeValue<'_>>,
    diagnostics: &mut Diagnostics,
) -> Vec<Include> {
    let at = |offset: usize| lines.position(offset);
    let hint = "write include = [\"base\"], or with parameters: include = [{ role = \"java_service\", params = { port = 8081 } }]";
    let Some(items) = value.get_ref().as_array() else {
        diagnostics.push(Diagnostic::new(
            path,
            at(value.span().start),
            format!("`include` must be a list: {hint}"),
        ));
        return Vec::new();
    };
    let mut includes = Vec::new();
    for item in items.iter() {
        let position = at(item.span().start);
        if let Some(name) = item.get_ref().as_str() {
            includes.push(Include {
                role: name.to_string(),
                position,
                params: BTreeMap::new(),
            });
            continue;
        }
        let Some(table) = item.get_ref().as_table() else {
            diagnostics.push(Diagnostic::new(
                path,
                position,
                format!("each include is a role's name or a table: {hint}"),
            ));
            continue;
        };
        let mut role = None;
        let mut params = BTreeMap::new();
        let mut ok = true;
        for (key, field) in table.iter() {
            match key.get_ref().as_ref() {
                "role" => match field.get_ref().as_str() {
                    Some(name) => role = Some((name.to_string(), at(field.span().start))),
                    None => {
                        diagnostics.push(Diagnostic::new(
                            path,
                            at(field.span().start),
                            "`role` of an include must be a role's name, a string",
                        ));
                        ok = false;
                    }
                },
                "params" => match field.get_ref().as_table() {
                    Some(values) => {
                        for (name, value) in values.iter() {
                            params.insert(
                                name.get_ref().to_string(),
                                ParamValue {
                                    value: to_json(value.get_ref()),
                                    position: at(name.span().start),
                                },
                            );
                        }
                    }
                    None => {
                        diagnostics.push(Diagnostic::new(
                            path,
                            at(field.span().start),
                            "`params` of an include must be a table: params = { port = 8081 }",
                        ));
                        ok = false;
                    }
                },
                other => {
                    diagnostics.push(Diagnostic::new(
                        path,
                        at(key.span().start),
                        format!("{} in an include", unknown_key_message(other, INCLUDE_KEYS)),
                    ));
                    ok = false;
                }
            }
        }
        match role {
            Some((role, position)) if ok => includes.push(Include {
                role,
                position,
                params,
            }),
            Some(_) => {}
            None => {
                if ok {
                    diagnostics.push(Diagnostic::new(
                        path,
                        position,
                        format!("an include table needs `role`: {hint}"),
                    ));
                }
            }
        }
    }
    includes
}

/// The problems of one include's parameters that the text shows, each
/// where it was written.
pub(crate) fn include_problems(
    role: &str,
    file: &str,
    params: &BTreeMap<String, Param>,
    include: &Include,
) -> Vec<(Position, String)> {
    let mut problems = Vec::new();
    if params.is_empty() {
        if let Some((_, value)) = include.params.iter().next() {
            problems.push((
                value.position,
                format!(
                    "role `{role}` takes no parameters: it has no [params] in {}",
                    file
                ),
            ));
        }
        return problems;
    }
    let names: Vec<&str> = params.keys().map(String::as_str).collect();
    for (name, given) in &include.params {
        let Some(param) = params.get(name) else {
            problems.push((
                given.position,
                unknown_key_message(name, &names).replacen(
                    &format!("unknown field `{name}`"),
                    &format!("unknown parameter `{name}` of role `{role}`"),
                    1,
                ),
            ));
            continue;
        };
        if !contains_placeholders(&given.value) && !param.param_type.accepts(&given.value) {
            problems.push((
                given.position,
                format!(
                    "parameter `{name}` of role `{role}` is {}, not {} (declared at {}:{})",
                    param.param_type.described(),
                    value_type(&given.value),
                    file,
                    param.position.line
                ),
            ));
        }
    }
    for (name, param) in params {
        if param.default.is_none() && !include.params.contains_key(name) {
            problems.push((
                include.position,
                format!(
                    "missing parameter `{name}` of role `{role}`: it has no default (declared at {}:{}); add it to params = {{ … }}",
                    file, param.position.line
                ),
            ));
        }
    }
    problems
}
