//! Handlebars set up for configuration files, not HTML: no escaping, strict
//! mode (a missing variable is an error naming the template and line), and
//! the helpers people need in config files.
//!
//! Helpers are pure functions of their arguments and of the render context:
//! they read no files, run no commands and reach no network, because on the
//! server they run with every role's secrets at hand.
//!
//! Secrets are not in the render context. `{{secret "key"}}` and
//! `{{secret_base64 "key"}}` reach them through a [`SecretSession`] that
//! the compiler opens on its own thread for the duration of one node's
//! compile ([`with_secret_session`]); each use is recorded, so the
//! compiler knows which resources used a secret ([`take_secret_used`]) and
//! which values to scrub from its diagnostics.

use base64::Engine;
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderError, RenderErrorReason,
    ScopedJson, handlebars_helper,
};
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use crate::diagnostic::{Diagnostic, LineIndex, Position};

/// How deep blocks (`{{#if}}`, `{{#each}}`, `{{else if}}` chains),
/// sub-expressions and partials may nest in one template or placeholder.
/// handlebars parses and renders recursively, so the nesting is bounded
/// before any text reaches it.
pub const MAX_NESTING: usize = 64;

/// A set of compiled templates and the helpers they may call.
pub struct Templates {
    registry: Handlebars<'static>,
    /// What each registered template nests and which partials it uses.
    shapes: BTreeMap<String, Shape>,
    /// Each template's full nesting, partials included, once
    /// [`Templates::check_partials`] has run.
    depths: BTreeMap<String, usize>,
    /// Templates refused for their nesting or their partials: reported once
    /// where they are, and never rendered.
    refused: BTreeSet<String>,
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
        // handlebars' own `log` writes its parameters to the `log` crate,
        // which the server's logging collects: a template could send a
        // secret to the server's log. Ours writes nothing.
        registry.register_helper("log", Box::new(SilentLog));
        registry.register_helper("secret", Box::new(SecretHelper { base64: false }));
        registry.register_helper("secret_base64", Box::new(SecretHelper { base64: true }));
        Templates {
            registry,
            shapes: BTreeMap::new(),
            depths: BTreeMap::new(),
            refused: BTreeSet::new(),
        }
    }

    /// Compiles a template under its repository path (e.g.
    /// `templates/nginx.conf.hbs`), so that errors name the file. Nesting
    /// deeper than [`MAX_NESTING`] is refused before handlebars sees it;
    /// partials are checked by [`Templates::check_partials`] once every
    /// template is registered.
    pub fn register(&mut self, name: &str, text: &str) -> Result<(), Diagnostic> {
        let shape = Shape::of(text).map_err(|(position, message)| {
            self.refused.insert(name.to_string());
            Diagnostic::new(name, position, message)
        })?;
        self.shapes.insert(name.to_string(), shape);
        self.registry
            .register_template_string(name, text)
            .map_err(|error| {
                // Refused: whatever uses it says nothing more of it.
                self.refused.insert(name.to_string());
                if let Some((position, message)) = unbalanced_block(text) {
                    return Diagnostic::new(name, position, message);
                }
                let (line, column) = error.pos().unwrap_or((0, 0));
                Diagnostic::new(
                    name,
                    Position {
                        line: line as u32,
                        column: column as u32,
                    },
                    syntax_message(&error.reason().to_string()),
                )
            })
    }

    /// Checks the partials every template uses (`{{> templates/x.hbs}}`):
    /// no cycle, and no deeper than [`MAX_NESTING`] with the blocks around
    /// them. A template refused here is not rendered. Call once after
    /// registering every template.
    pub fn check_partials(&mut self) -> Vec<Diagnostic> {
        let mut diagnostics = Vec::new();
        let names: Vec<String> = self.shapes.keys().cloned().collect();
        for name in &names {
            let mut chain = Vec::new();
            if let Err((position, message)) = self.depth_of(name, &mut chain)
                && chain.is_empty()
            {
                diagnostics.push(Diagnostic::new(name, position, message));
            }
        }
        for diagnostic in &diagnostics {
            self.refused.insert(diagnostic.file.clone());
        }
        // A template using a refused one is refused with it, silently:
        // the problem is reported where it is.
        for name in &names {
            if !self.depths.contains_key(name) {
                self.refused.insert(name.clone());
            }
        }
        for name in &self.refused {
            self.registry.unregister_template(name);
        }
        diagnostics
    }

    /// The full nesting of a template, partials included; `chain` holds
    /// the templates being measured, outermost first. The error is the
    /// position in the template at `chain`'s level where the limit is
    /// passed (or the cycle closes).
    fn depth_of(
        &mut self,
        name: &str,
        chain: &mut Vec<String>,
    ) -> Result<usize, (Position, String)> {
        if let Some(depth) = self.depths.get(name) {
            return Ok(*depth);
        }
        let Some(shape) = self.shapes.get(name).cloned() else {
            // Not a template: handlebars says so when it renders.
            return Ok(0);
        };
        chain.push(name.to_string());
        let mut depth = shape.depth;
        let mut result = Ok(());
        for partial in &shape.partials {
            if chain.contains(&partial.name) {
                let message = if partial.name == name {
                    format!("partial `{}` includes itself", partial.name)
                } else {
                    format!(
                        "partials include each other: {} -> {}",
                        chain.join(" -> "),
                        partial.name
                    )
                };
                result = Err((partial.position, message));
                break;
            }
            let inner = match self.depth_of(&partial.name, chain) {
                Ok(inner) => inner,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            };
            let total = partial.depth + 1 + inner;
            if total > MAX_NESTING {
                result = Err((
                    partial.position,
                    format!(
                        "blocks nested {total} deep with partial `{}`; the limit is {MAX_NESTING}",
                        partial.name
                    ),
                ));
                break;
            }
            depth = depth.max(total);
        }
        chain.pop();
        match result {
            Ok(()) => {
                self.depths.insert(name.to_string(), depth);
                Ok(depth)
            }
            // Report the problem in the outermost template only when it is
            // its own; a problem inside a partial is reported there.
            Err(error) if chain.is_empty() => Err(error),
            Err(error) => {
                chain.clear();
                chain.push(name.to_string());
                Err(error)
            }
        }
    }

    /// Every registered template, parsed, by name: what `reads` walks.
    pub fn compiled(&self) -> impl Iterator<Item = (&str, &handlebars::Template)> {
        self.registry
            .get_templates()
            .iter()
            .map(|(name, template)| (name.as_str(), template))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.registry.has_template(name) || self.refused.contains(name)
    }

    /// Checks an inline template (a field of a role, a hierarchy layer)
    /// against [`MAX_NESTING`], partials included.
    fn check_inline(&self, text: &str) -> Result<(), String> {
        let shape = Shape::of(text).map_err(|(_, message)| message)?;
        for partial in &shape.partials {
            if self.refused.contains(&partial.name) {
                return Err(refused_message(&partial.name));
            }
            let inner = self.depths.get(&partial.name).copied().unwrap_or(0);
            let total = partial.depth + 1 + inner;
            if total > MAX_NESTING {
                return Err(format!(
                    "blocks nested {total} deep with partial `{}`; the limit is {MAX_NESTING}",
                    partial.name
                ));
            }
        }
        Ok(())
    }

    /// Renders a registered template.
    pub fn render(&self, name: &str, context: &Value) -> Result<String, Diagnostic> {
        self.render_prepared(name, context, None)
    }

    /// Renders a registered template with `context`, using `prepared`
    /// when it was made from that very context.
    pub fn render_prepared(
        &self,
        name: &str,
        context: &Value,
        prepared: Option<&PreparedContext<'_>>,
    ) -> Result<String, Diagnostic> {
        if self.refused.contains(name) {
            return Err(Diagnostic::new(
                name,
                Position::UNKNOWN,
                refused_message(name),
            ));
        }
        match prepared.and_then(|prepared| prepared.of(context)) {
            Some(prepared) => self.registry.render_with_context(name, prepared),
            None => self.registry.render(name, context),
        }
        // handlebars renders into an 8 KiB buffer; a catalog keeps every
        // rendered file, so it keeps only what the text needs (200 files of
        // a few hundred bytes held 1.6 MiB).
        .map(|mut text| {
            text.shrink_to_fit();
            text
        })
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
        self.check_inline(text)
            .map_err(|message| Diagnostic::new(file, position, message))?;
        self.registry
            .render_template(text, context)
            .map_err(|error| render_diagnostic(file, position, &error).at_field_position(position))
    }
}

/// The words every "refused template" follow-on error carries, so that
/// validation leaves them out (the template's own error is reported).
pub(crate) const REFUSED_MARK: &str = "see the error reported for it";

/// A template context converted once for handlebars, to render many
/// templates with: handlebars otherwise copies the whole context (the
/// node's values and its merged data) for every template it renders.
pub struct PreparedContext<'v> {
    source: &'v Value,
    context: handlebars::Context,
}

impl<'v> PreparedContext<'v> {
    pub fn new(source: &'v Value) -> PreparedContext<'v> {
        PreparedContext {
            source,
            context: handlebars::Context::wraps(source).expect("a JSON value converts"),
        }
    }

    /// The converted context, if `context` is the one it was made from.
    fn of(&self, context: &Value) -> Option<&handlebars::Context> {
        std::ptr::eq(self.source, context).then_some(&self.context)
    }
}

fn refused_message(name: &str) -> String {
    format!("template `{name}` is refused (see the error reported for it)")
}

/// What a template's text nests, found without parsing it: handlebars'
/// own parser recurses, so it must not see text nested too deep.
#[derive(Debug, Clone, Default)]
struct Shape {
    /// The deepest nesting of blocks and sub-expressions.
    depth: usize,
    partials: Vec<PartialUse>,
}

/// One `{{> name}}` (or `{{#> name}}`) in a template.
#[derive(Debug, Clone)]
struct PartialUse {
    name: String,
    /// Blocks around it.
    depth: usize,
    position: Position,
}

impl Shape {
    /// Scans the mustaches of `text`: blocks opened (`{{#…}}`, `{{^name}}`,
    /// each `{{else if …}}` of a chain, which handlebars nests) and closed
    /// (`{{/…}}`), parentheses of sub-expressions, partials. Comments and
    /// raw blocks are skipped. An error names the first place where the
    /// nesting passes [`MAX_NESTING`], or a partial whose name is computed.
    fn of(text: &str) -> Result<Shape, (Position, String)> {
        let bytes = text.as_bytes();
        let lines = LineIndex::new(text);
        let mut shape = Shape::default();
        // Per open block: how many `else if` levels it added.
        let mut blocks: Vec<usize> = Vec::new();
        let mut depth = 0usize;
        let mut at = 0usize;
        let too_deep = |offset: usize, depth: usize| {
            (
                lines.position(offset),
                format!("blocks nested {depth} deep; the limit is {MAX_NESTING}"),
            )
        };
        while let Some(found) = find(bytes, at, b"{{") {
            let start = found;
            if start > 0 && bytes[start - 1] == b'\\' {
                // `\{{` is a literal `{{`.
                at = start + 2;
                continue;
            }
            if bytes[start..].starts_with(b"{{{{") {
                // A raw block: nothing inside is parsed.
                let Some(open_end) = find(bytes, start, b"}}}}") else {
                    break;
                };
                at = match find(bytes, open_end + 4, b"{{{{/") {
                    Some(close) => find(bytes, close, b"}}}}").map_or(bytes.len(), |e| e + 4),
                    None => bytes.len(),
                };
                continue;
            }
            let mut inner = start + 2;
            if bytes[inner..].starts_with(b"!--") {
                at = find(bytes, inner, b"--}}").map_or(bytes.len(), |e| e + 4);
                continue;
            }
            if bytes[inner..].starts_with(b"!") {
                at = find(bytes, inner, b"}}").map_or(bytes.len(), |e| e + 2);
                continue;
            }
            let triple = bytes.get(inner) == Some(&b'{');
            if triple {
                inner += 1;
            }
            if bytes.get(inner) == Some(&b'~') {
                inner += 1;
            }
            // The end of the mustache, skipping quoted strings.
            let mut end = inner;
            let mut quote: Option<u8> = None;
            let mut parens = 0usize;
            let mut max_parens = 0usize;
            while end < bytes.len() {
                let b = bytes[end];
                match quote {
                    Some(q) if b == q => quote = None,
                    Some(_) => {}
                    None => match b {
                        b'"' | b'\'' => quote = Some(b),
                        b'(' => {
                            parens += 1;
                            max_parens = max_parens.max(parens);
                            if depth + parens > MAX_NESTING {
                                return Err(too_deep(start, depth + parens));
                            }
                        }
                        b')' => parens = parens.saturating_sub(1),
                        b'}' if bytes[end..].starts_with(b"}}") => break,
                        _ => {}
                    },
                }
                end += 1;
            }
            let body = std::str::from_utf8(&bytes[inner..end]).unwrap_or_default();
            at = (end + 2).min(bytes.len());
            let body_trimmed = body.trim_start();
            let first = body_trimmed.as_bytes().first().copied();
            let word = |s: &str| -> String {
                s.trim_start()
                    .split(|c: char| c.is_whitespace() || c == '~' || c == '}')
                    .next()
                    .unwrap_or_default()
                    .trim_matches(['"', '\''])
                    .to_string()
            };
            match first {
                Some(b'*') => return Err(decorator(lines.position(start))),
                Some(b'#') if body_trimmed[1..].starts_with('*') => {
                    return Err(decorator(lines.position(start)));
                }
                Some(b'#') => {
                    let rest = &body_trimmed[1..];
                    if let Some(partial) = rest.strip_prefix('>') {
                        shape.partial(partial, depth, lines.position(start))?;
                    }
                    depth += 1;
                    blocks.push(0);
                    if depth > MAX_NESTING {
                        return Err(too_deep(start, depth));
                    }
                }
                Some(b'^') if !word(&body_trimmed[1..]).is_empty() => {
                    depth += 1;
                    blocks.push(0);
                    if depth > MAX_NESTING {
                        return Err(too_deep(start, depth));
                    }
                }
                Some(b'/') => {
                    let extra = blocks.pop().unwrap_or(0);
                    depth = depth.saturating_sub(1 + extra);
                }
                Some(b'>') => {
                    shape.partial(&body_trimmed[1..], depth, lines.position(start))?;
                }
                _ if body_trimmed.starts_with("else") && !word(&body_trimmed[4..]).is_empty() => {
                    // `{{else if x}}`: handlebars nests the rest of the chain.
                    if let Some(extra) = blocks.last_mut() {
                        *extra += 1;
                        depth += 1;
                        if depth > MAX_NESTING {
                            return Err(too_deep(start, depth));
                        }
                    }
                }
                _ => {}
            }
            let with_parens = depth + max_parens;
            if with_parens > MAX_NESTING {
                return Err(too_deep(start, with_parens));
            }
            shape.depth = shape.depth.max(with_parens);
        }
        Ok(shape)
    }

    fn partial(
        &mut self,
        text: &str,
        depth: usize,
        position: Position,
    ) -> Result<(), (Position, String)> {
        let text = text.trim_start();
        if text.starts_with('(') {
            return Err((
                position,
                "a partial's name may not be computed: write the template's path, e.g. {{> templates/header.hbs}}".to_string(),
            ));
        }
        let name: String = text
            .split(|c: char| c.is_whitespace() || c == '~' || c == '}')
            .next()
            .unwrap_or_default()
            .trim_matches(['"', '\''])
            .to_string();
        self.partials.push(PartialUse {
            name,
            depth,
            position,
        });
        Ok(())
    }
}

/// Inline partials could call themselves with no template to check.
fn decorator(position: Position) -> (Position, String) {
    (
        position,
        "decorators and inline partials ({{#*inline}}) are not supported: put the partial in its own file under templates/ and use {{> templates/name.hbs}}".to_string(),
    )
}

/// The first `needle` in `haystack` at or after `from`.
fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
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

/// A block opened and never closed, or closed by the end of another
/// (`{{#each}} … {{/if}}`): where it was opened and what to write. Handlebars
/// reports these at the end of the text in its grammar's words.
fn unbalanced_block(text: &str) -> Option<(Position, String)> {
    let lines = LineIndex::new(text);
    let mut open: Vec<(String, usize)> = Vec::new();
    let mut at = 0;
    while let Some(start) = text[at..].find("{{").map(|i| i + at) {
        let end = text[start..].find("}}").map_or(text.len(), |i| i + start);
        let body = text[start + 2..end]
            .trim_start_matches(['{', '~'])
            .trim_start();
        at = (end + 2).min(text.len());
        if body.starts_with('!') {
            continue;
        }
        let name = |rest: &str| -> String {
            rest.split(|c: char| c.is_whitespace() || c == '~' || c == '}')
                .next()
                .unwrap_or_default()
                .to_string()
        };
        if let Some(rest) = body.strip_prefix('#').or_else(|| body.strip_prefix('^')) {
            if !rest.starts_with('>') && !rest.starts_with('*') {
                open.push((name(rest), start));
            }
        } else if let Some(rest) = body.strip_prefix('/') {
            let closing = name(rest);
            match open.pop() {
                Some((opened, _)) if opened == closing => {}
                Some((opened, offset)) => {
                    let place = lines.position(offset);
                    return Some((
                        lines.position(start),
                        format!(
                            "`{{{{/{closing}}}}}` closes `{{{{#{opened}}}}}`, opened at line {}, column {}: close it with `{{{{/{opened}}}}}` first",
                            place.line, place.column
                        ),
                    ));
                }
                None => {
                    return Some((
                        lines.position(start),
                        format!(
                            "`{{{{/{closing}}}}}` closes no open block: remove it or open one with `{{{{#{closing} …}}}}`"
                        ),
                    ));
                }
            }
        }
    }
    let (opened, offset) = open.pop()?;
    Some((
        lines.position(offset),
        format!(
            "`{{{{#{opened}}}}}` is never closed: add `{{{{/{opened}}}}}` where the block ends"
        ),
    ))
}

/// Handlebars' syntax error in our words: its parser lists every rule it
/// expected (`expected escape, expression, html_expression, …`).
fn syntax_message(reason: &str) -> String {
    if reason.contains("expected escape, expression") || reason.contains("html_expression") {
        "invalid template: a `{{` here starts nothing handlebars knows: write a value such as `{{data.port}}`, a helper call, or a block such as `{{#if …}}`; a literal `{{` is written `\\{{`".to_string()
    } else {
        format!("invalid template: {reason}")
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

/// Finds the value of a secret helper's parameter for the node being
/// compiled: the bytes, or a message saying why there are none.
pub(crate) type SecretLookup = Box<dyn Fn(&str) -> Result<Vec<u8>, String>>;

/// What the secret helpers reach while one node's catalog compiles.
struct SecretSession {
    lookup: SecretLookup,
    /// Whether a secret was rendered since [`take_secret_used`] last ran.
    used: Cell<bool>,
    /// Every value rendered, to scrub from diagnostics.
    values: RefCell<Vec<Vec<u8>>>,
}

thread_local! {
    static SECRET_SESSION: RefCell<Option<Rc<SecretSession>>> = const { RefCell::new(None) };
}

/// Closes the session when `work` returns or panics.
struct SessionGuard(Option<Rc<SecretSession>>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let previous = self.0.take();
        SECRET_SESSION.with(|session| *session.borrow_mut() = previous);
    }
}

/// Runs `work` with the secret helpers answering through `lookup`, and
/// returns what it returned and every secret value rendered meanwhile.
pub(crate) fn with_secret_session<T>(
    lookup: SecretLookup,
    work: impl FnOnce() -> T,
) -> (T, Vec<Vec<u8>>) {
    let session = Rc::new(SecretSession {
        lookup,
        used: Cell::new(false),
        values: RefCell::new(Vec::new()),
    });
    let previous = SECRET_SESSION.with(|s| s.borrow_mut().replace(session.clone()));
    let guard = SessionGuard(previous);
    let result = work();
    drop(guard);
    let values = session.values.take();
    (result, values)
}

/// Whether a secret was rendered since the last call, resetting it.
pub(crate) fn take_secret_used() -> bool {
    SECRET_SESSION.with(|s| s.borrow().as_ref().is_some_and(|s| s.used.replace(false)))
}

/// Marks a secret as rendered for the resource being compiled (after
/// [`take_secret_used`] looked at one field of it).
pub(crate) fn mark_secret_used() {
    SECRET_SESSION.with(|s| {
        if let Some(session) = s.borrow().as_ref() {
            session.used.set(true);
        }
    });
}

/// `{{log …}}`: renders nothing and logs nothing.
struct SilentLog;

impl HelperDef for SilentLog {
    fn call<'reg: 'rc, 'rc>(
        &self,
        _: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
        _: &mut dyn handlebars::Output,
    ) -> handlebars::HelperResult {
        Ok(())
    }
}

/// `{{secret "db_password"}}` (the UTF-8 value), `{{secret_base64 "key"}}`
/// (base64 of the bytes); the parameter is a key of `secrets/` or an AWS
/// reference (`ssm:/…`, `secretsmanager:…`).
struct SecretHelper {
    base64: bool,
}

impl HelperDef for SecretHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let helper = if self.base64 {
            "secret_base64"
        } else {
            "secret"
        };
        let name = match h.param(0).map(|p| p.value()) {
            Some(Value::String(name)) if h.params().len() == 1 => name.clone(),
            _ => {
                return Err(RenderErrorReason::Other(format!(
                    "{helper} takes one string, the key of a secret or an AWS reference: {{{{{helper} \"db_password\"}}}}"
                ))
                .into());
            }
        };
        let session = SECRET_SESSION.with(|s| s.borrow().clone()).ok_or_else(|| {
            RenderErrorReason::Other(format!(
                "secret `{name}`: secrets are resolved only by the server, while compiling a catalog"
            ))
        })?;
        let bytes = (session.lookup)(&name).map_err(RenderErrorReason::Other)?;
        let rendered = if self.base64 {
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        } else {
            match String::from_utf8(bytes.clone()) {
                Ok(text) => text,
                Err(_) => {
                    return Err(RenderErrorReason::Other(format!(
                        "secret `{name}` is not UTF-8 text: render it with {{{{secret_base64 \"{name}\"}}}} into a file's `content_base64`"
                    ))
                    .into());
                }
            }
        };
        session.used.set(true);
        let mut values = session.values.borrow_mut();
        if !values.contains(&bytes) {
            values.push(bytes);
        }
        Ok(ScopedJson::Derived(Value::String(rendered)))
    }
}

/// Whether a string needs rendering at all: most fields are plain text, and
/// skipping them keeps compiling thousands of resources fast.
pub fn has_placeholders(text: &str) -> bool {
    text.contains("{{")
}
