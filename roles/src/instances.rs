//! The role instances a node gets: each selected role once per distinct
//! set of parameter values, in the order they apply.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::diagnostic::{Diagnostic, Diagnostics, Position};
use crate::params::{Include, ParamType, contains_placeholders, value_type};
use crate::repository::{Repository, Role};
use crate::template::{has_placeholders, take_secret_used};

/// A role as a node gets it: with the values of its parameters when it
/// declares any.
#[derive(Debug, Clone)]
pub struct RoleInstance<'r> {
    pub role: &'r Role,
    /// `None` for a role without `[params]`.
    pub params: Option<Map<String, Value>>,
}

impl RoleInstance<'_> {
    /// How messages name the instance: `java_service (name = "orders",
    /// port = 8081)`, or the role's name alone.
    pub fn label(&self) -> String {
        match &self.params {
            None => format!("`{}`", self.role.name),
            Some(params) => {
                let values: Vec<String> =
                    params.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("`{}` ({})", self.role.name, values.join(", "))
            }
        }
    }

    /// The context its resources render with: `params` added to the
    /// node's context. `None` when it is the node's context itself.
    pub fn context(&self, node_context: &Value) -> Option<Value> {
        let params = self.params.as_ref()?;
        let mut context = node_context.clone();
        context["params"] = Value::Object(params.clone());
        Some(context)
    }
}

/// How many role instances one node may get: instances multiply along
/// include chains, and compiling must stay bounded.
pub const MAX_ROLE_INSTANCES: usize = 10_000;

/// The role instances a node gets, in the order they apply: the roles its
/// tags select (general before specific), each after what it includes,
/// each instance once. Problems with parameter values found while
/// rendering them (a value that does not read as its type, a secret) go to
/// `diagnostics`, at the include.
pub(crate) fn instances<'r>(
    repository: &'r Repository,
    matched: &[&'r Role],
    context: &Value,
    diagnostics: &mut Diagnostics,
) -> Vec<RoleInstance<'r>> {
    let mut order = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for &role in matched {
        let params = (!role.params.is_empty()).then(|| defaults(role));
        let root = RoleInstance { role, params };
        if !seen.insert(instance_key(&root)) {
            continue;
        }
        // Each instance on the walk with the index of its next include.
        let mut stack: Vec<(RoleInstance<'r>, usize)> = vec![(root, 0)];
        while let Some(top) = stack.len().checked_sub(1) {
            let next = stack[top].1;
            let Some(include) = stack[top].0.role.includes.get(next) else {
                let (done, _) = stack.pop().expect("the top exists");
                order.push(done);
                continue;
            };
            stack[top].1 += 1;
            let Some(included) = repository.roles.get(&include.role) else {
                continue;
            };
            let including = &stack[top].0;
            let Some(params) = given_params(
                repository,
                including,
                include,
                included,
                context,
                diagnostics,
            ) else {
                continue;
            };
            let instance = RoleInstance {
                role: included,
                params,
            };
            if seen.len() >= MAX_ROLE_INSTANCES {
                diagnostics.push(Diagnostic::new(
                    &including.role.file,
                    include.position,
                    format!(
                        "includes give this node more than {MAX_ROLE_INSTANCES} role instances; parameterized roles included with many values multiply along include chains"
                    ),
                ));
                return order;
            }
            if seen.insert(instance_key(&instance)) {
                stack.push((instance, 0));
            }
        }
    }
    order
}

fn defaults(role: &Role) -> Map<String, Value> {
    role.params
        .iter()
        .filter_map(|(name, param)| Some((name.clone(), param.default.clone()?)))
        .collect()
}

fn instance_key(instance: &RoleInstance<'_>) -> String {
    match &instance.params {
        None => instance.role.name.clone(),
        Some(params) => format!(
            "{}\u{0}{}",
            instance.role.name,
            Value::Object(params.clone())
        ),
    }
}

/// The values of an included role's parameters: its defaults, overridden
/// by what the include gives, rendered in the including instance's
/// context. `None` (with diagnostics) when a value is wrong.
fn given_params(
    repository: &Repository,
    including: &RoleInstance<'_>,
    include: &Include,
    included: &Role,
    node_context: &Value,
    diagnostics: &mut Diagnostics,
) -> Option<Option<Map<String, Value>>> {
    if included.params.is_empty() {
        return Some(None);
    }
    let file = &including.role.file;
    let mut values = defaults(included);
    let mut ok = true;
    let including_context = including.context(node_context);
    let context = including_context.as_ref().unwrap_or(node_context);
    for (name, given) in &include.params {
        let Some(param) = included.params.get(name) else {
            // Reported at parse time.
            ok = false;
            continue;
        };
        let value = if contains_placeholders(&given.value) {
            take_secret_used();
            let rendered = render(repository, &given.value, context, file, given.position);
            let used_secret = take_secret_used();
            let rendered = match rendered {
                Ok(rendered) => rendered,
                Err(diagnostic) => {
                    diagnostics.push(diagnostic);
                    ok = false;
                    continue;
                }
            };
            if used_secret {
                diagnostics.push(Diagnostic::new(
                    file,
                    given.position,
                    format!(
                        "parameter `{name}` uses a secret: a parameter's value may show in resource names and messages; read the secret inside role `{}` instead",
                        included.name
                    ),
                ));
                ok = false;
                continue;
            }
            match rendered {
                Value::String(text) if param.param_type != ParamType::String => {
                    match param.param_type.read_rendered(text.clone()) {
                        Some(value) => value,
                        None => {
                            diagnostics.push(Diagnostic::new(
                                file,
                                given.position,
                                format!(
                                    "parameter `{name}` of role `{}` is {}, but its value renders to {text:?} for this node",
                                    included.name,
                                    param.param_type.described()
                                ),
                            ));
                            ok = false;
                            continue;
                        }
                    }
                }
                other => other,
            }
        } else {
            given.value.clone()
        };
        if !param.param_type.accepts(&value) {
            ok = false;
            if !contains_placeholders(&given.value) {
                // A literal value: reported at parse time.
                continue;
            }
            // A rendered list or table may still hold the wrong thing.
            diagnostics.push(Diagnostic::new(
                file,
                given.position,
                format!(
                    "parameter `{name}` of role `{}` is {}, not {}",
                    included.name,
                    param.param_type.described(),
                    value_type(&value)
                ),
            ));
            continue;
        }
        values.insert(name.clone(), value);
    }
    if included
        .params
        .keys()
        .any(|name| !values.contains_key(name))
    {
        // A missing value is reported at parse time.
        ok = false;
    }
    ok.then_some(Some(values))
}

/// Renders every string with placeholders inside `value`.
fn render(
    repository: &Repository,
    value: &Value,
    context: &Value,
    file: &str,
    position: Position,
) -> Result<Value, Diagnostic> {
    Ok(match value {
        Value::String(text) if has_placeholders(text) => Value::String(
            repository
                .templates
                .render_inline(text, context, file, position)?,
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| render(repository, item, context, file, position))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render(repository, v, context, file, position)?)))
                .collect::<Result<_, Diagnostic>>()?,
        ),
        other => other.clone(),
    })
}
