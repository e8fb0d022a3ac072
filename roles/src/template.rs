//! Handlebars set up for configuration files, not HTML: no escaping, strict
//! mode (a missing variable is an error naming the template and line), and
//! the helpers people need in config files.
//!
//! Helpers are pure functions of their arguments and of the render context:
//! they read no files, run no commands and reach no network, because on the
//! server they run with every role's secrets at hand.

use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson, handlebars_helper,
};
use serde_json::Value;

use crate::diagnostic::{Diagnostic, Position};

/// A set of compiled templates and the helpers they may call.
pub struct Templates {
    registry: Handlebars<'static>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field(
                "names",
                &self.registry.get_templates().keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for Templates {
    fn default() -> Self {
        Templates::new()
    }
}

impl Templates {
    pub fn new() -> Templates {
        let mut registry = Handlebars::new();
        registry.set_strict_mode(true);
        registry.register_escape_fn(handlebars::no_escape);
        registry.register_helper("default", Box::new(DefaultHelper));
        registry.register_helper("tag_is", Box::new(TagIsHelper));
        registry.register_helper("has_tag", Box::new(HasTagHelper));
        registry.register_helper("memory_percent", Box::new(MemoryPercentHelper));
        registry.register_helper("join", Box::new(join));
        registry.register_helper("upper", Box::new(upper));
        registry.register_helper("lower", Box::new(lower));
        registry.register_helper("replace", Box::new(replace));
        registry.register_helper("json", Box::new(json));
        registry.register_helper("percent", Box::new(percent));
        Templates { registry }
    }

    /// Compiles a template under its repository path (e.g.
    /// `templates/nginx.conf.hbs`), so that errors name the file.
    pub fn register(&mut self, name: &str, text: &str) -> Result<(), Diagnostic> {
        self.registry
            .register_template_string(name, text)
            .map_err(|error| {
                let (line, column) = error.pos().unwrap_or((0, 0));
                Diagnostic::new(
                    name,
                    Position {
                        line: line as u32,
                        column: column as u32,
                    },
                    format!("invalid template: {}", error.reason()),
                )
            })
    }

    /// Every registered template, parsed, by name: what `reads` walks.
    pub fn compiled(&self) -> impl Iterator<Item = (&str, &handlebars::Template)> {
        self.registry
            .get_templates()
            .iter()
            .map(|(name, template)| (name.as_str(), template))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.registry.has_template(name)
    }

    /// Renders a registered template.
    pub fn render(&self, name: &str, context: &Value) -> Result<String, Diagnostic> {
        self.registry
            .render(name, context)
            .map_err(|error| render_diagnostic(name, Position::UNKNOWN, &error))
    }

    /// Renders a string from a role file (a field of a resource). Errors are
    /// reported at `position` in `file`, where the field was written.
    pub fn render_inline(
        &self,
        text: &str,
        context: &Value,
        file: &str,
        position: Position,
    ) -> Result<String, Diagnostic> {
        self.registry
            .render_template(text, context)
            .map_err(|error| render_diagnostic(file, position, &error).at_field_position(position))
    }
}

trait AtFieldPosition {
    fn at_field_position(self, position: Position) -> Self;
}

impl AtFieldPosition for Diagnostic {
    /// An inline template's own line numbers count from the start of the
    /// string; the user wants the line in the role file.
    fn at_field_position(mut self, position: Position) -> Diagnostic {
        self.line = position.line;
        self.column = position.column;
        self
    }
}

fn render_diagnostic(fallback_file: &str, fallback: Position, error: &RenderError) -> Diagnostic {
    let file = error
        .template_name
        .clone()
        .unwrap_or_else(|| fallback_file.to_string());
    let position = match (error.line_no, error.column_no) {
        (Some(line), Some(column)) => Position {
            line: line as u32,
            column: column as u32,
        },
        _ => fallback,
    };
    let message = match error.reason() {
        RenderErrorReason::MissingVariable(Some(path)) => format!(
            "template uses `{path}`, which is not defined for this node: define it in data/, pass it in `vars`, or give a fallback with {{{{default {path} \"...\"}}}}"
        ),
        RenderErrorReason::MissingVariable(None) => {
            "template uses a variable that is not defined for this node".to_string()
        }
        RenderErrorReason::TemplateNotFound(name) | RenderErrorReason::PartialNotFound(name) => {
            format!("template `{name}` does not exist")
        }
        other => other.to_string(),
    };
    Diagnostic::new(file, position, format!("Failed to render: {message}"))
}

/// `{{default value "fallback"}}`: the value, or the fallback when the value
/// is missing, null or an empty string. Unlike a plain `{{value}}`, a missing
/// value here is not an error: that is the point of the helper.
struct DefaultHelper;

impl HelperDef for DefaultHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let value = h
            .param(0)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("default", 0))?;
        let fallback = h
            .param(1)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("default", 1))?;
        let use_fallback = value.is_value_missing()
            || matches!(value.value(), Value::Null)
            || value.value().as_str() == Some("");
        let chosen = if use_fallback { fallback } else { value };
        Ok(ScopedJson::Derived(chosen.value().clone()))
    }
}

/// `{{#if (tag_is "env" "prod")}}`: true when the node has the tag with this
/// value; false (not an error) when the node lacks the tag.
struct TagIsHelper;

impl HelperDef for TagIsHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let name = string_param(h, 0, "tag_is")?;
        let expected = string_param(h, 1, "tag_is")?;
        let actual = ctx.data().get("tag").and_then(|tags| tags.get(&name));
        Ok(ScopedJson::Derived(Value::Bool(
            actual.and_then(Value::as_str) == Some(expected.as_str()),
        )))
    }
}

/// `{{#if (has_tag "canary")}}`: true when the node has the tag at all.
struct HasTagHelper;

impl HelperDef for HasTagHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let name = string_param(h, 0, "has_tag")?;
        let present = ctx
            .data()
            .get("tag")
            .and_then(|tags| tags.get(&name))
            .is_some();
        Ok(ScopedJson::Derived(Value::Bool(present)))
    }
}

/// `{{memory_percent 50}}`: that share of the node's memory (`fact.memory_mb`)
/// in whole megabytes with the JVM's `m` suffix, e.g. `2048m` for half of
/// 4 GiB, for `-Xmx{{memory_percent 50}}`.
struct MemoryPercentHelper;

impl HelperDef for MemoryPercentHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let share = h.param(0).and_then(|p| p.value().as_f64()).ok_or(
            RenderErrorReason::InvalidParamType("a number from 1 to 100"),
        )?;
        if !(0.0..=100.0).contains(&share) {
            return Err(RenderErrorReason::Other(format!(
                "memory_percent {share}: expected a number from 0 to 100"
            ))
            .into());
        }
        let memory_mb = ctx
            .data()
            .get("fact")
            .and_then(|facts| facts.get("memory_mb"))
            .and_then(Value::as_f64)
            .ok_or_else(|| RenderErrorReason::MissingVariable(Some("fact.memory_mb".into())))?;
        let megabytes = (memory_mb * share / 100.0).floor() as u64;
        Ok(ScopedJson::Derived(Value::String(format!("{megabytes}m"))))
    }
}

fn string_param(h: &Helper<'_>, index: usize, helper: &'static str) -> Result<String, RenderError> {
    let param = h
        .param(index)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex(helper, index))?;
    match param.value() {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(RenderErrorReason::InvalidParamType("a string").into()),
    }
}

fn display(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

handlebars_helper!(join: |list: Value, separator: str| {
    match list {
        Value::Array(items) => items.iter().map(display).collect::<Vec<_>>().join(separator),
        other => display(&other),
    }
});
handlebars_helper!(upper: |text: str| text.to_uppercase());
handlebars_helper!(lower: |text: str| text.to_lowercase());
handlebars_helper!(replace: |text: str, from: str, to: str| text.replace(from, to));
handlebars_helper!(json: |value: Value| value.to_string());
handlebars_helper!(percent: |value: f64, share: f64| (value * share / 100.0).floor() as i64);

/// Whether a string needs rendering at all: most fields are plain text, and
/// skipping them keeps compiling thousands of resources fast.
pub fn has_placeholders(text: &str) -> bool {
    text.contains("{{")
}
