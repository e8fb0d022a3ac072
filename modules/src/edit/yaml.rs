//! The `yaml` editor: a line-based editor of block mappings, which keeps
//! comments, order and everything it does not edit byte for byte.
//!
//! It reads each line as a key (`key: value`, `"key": value`), a list item
//! (`- ...`), something else, or nothing (blank, comment, a first `---`).
//! A key's block is the lines indented deeper below it (and list items at
//! its own indentation). The text of block scalars (`|`, `>`) and of values
//! continued on more lines is never read as keys.
//!
//! - Setting a key replaces its value on its line (a trailing comment
//!   kept); a missing key goes after the last line of its parent's block,
//!   indented as its siblings (or one step, the file's own, deeper than its
//!   parent), with missing mappings on the way created.
//! - Removing a key removes its line and its block.
//! - Values are scalars: strings are written plain when YAML reads them
//!   back as the same string, else double-quoted; numbers and booleans
//!   plain.
//!
//! It refuses, naming the line and what to do, what it cannot edit safely:
//! several documents, a flow-style (`{...}`, `[...]`) file or value on the
//! way or at the key, an anchor, alias or tag there, a block scalar or a
//! multi-line value at the key, a list on the way, a key written twice, a
//! tab in an indentation, and a line it cannot read where it looks for a
//! key.

use cms_roles::KeyEdit;
use serde_json::Value;

use super::text::Lines;
use super::{Edited, FormatError, key_change};

/// What a line is.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// Blank, a comment, a directive or the first `---`.
    Nothing,
    /// A key, the byte offset of its `:`, and its value's byte range
    /// (without a trailing comment; empty when the value is below it or
    /// null).
    Key {
        key: String,
        colon: usize,
        value: (usize, usize),
    },
    /// A list item.
    Item,
    /// Anything else: the text of a multi-line value, a complex key.
    Other,
}

#[derive(Debug, Clone)]
struct Line {
    indent: usize,
    kind: Kind,
}

pub fn edit(text: &str, edits: &[KeyEdit]) -> Result<Edited, FormatError> {
    let mut document = Lines::parse(text);
    let mut changes = Vec::new();
    for edit in edits {
        let parsed = parse(&document.lines)?;
        let dotted = edit.dotted();
        let mut parent: Option<usize> = None;
        let mut found = None;
        for (depth, part) in edit.key.iter().enumerate() {
            match child(&parsed, parent, part)? {
                Some(index) if depth + 1 == edit.key.len() => found = Some(index),
                Some(index) => {
                    let value = value_text(&document.lines[index], &parsed[index]);
                    if !value.is_empty() && edit.value.is_none() {
                        // Nothing below a scalar: the key to remove is not
                        // there.
                        break;
                    }
                    if !value.is_empty() {
                        return Err(FormatError::at(
                            index + 1,
                            format!(
                                "`{}` holds {} here, not a mapping of keys, so `{dotted}` cannot be edited safely; change that line by hand or set `{}` itself",
                                edit.key[..=depth].join("."),
                                describe_value(value),
                                edit.key[..=depth].join(".")
                            ),
                        ));
                    }
                    parent = Some(index);
                }
                None => {
                    if let Some(value) = &edit.value {
                        insert(
                            &mut document.lines,
                            &parsed,
                            parent,
                            &edit.key[depth..],
                            value,
                        );
                        changes.push(key_change(&dotted, None, Some(&render(value))));
                    }
                    break;
                }
            }
        }
        let Some(index) = found else {
            continue;
        };
        let line = &document.lines[index];
        let value = value_text(line, &parsed[index]).to_string();
        let block = block_end(&parsed, index);
        let refuse = |what: &str| {
            Err(FormatError::at(
                index + 1,
                format!(
                    "`{dotted}` {what}, which this editor does not change safely; edit that part of the file by hand or manage the whole file with a `file` resource"
                ),
            ))
        };
        if value.starts_with(['&', '*']) {
            return refuse("has an anchor or alias");
        }
        match &edit.value {
            None => {
                changes.push(key_change(&dotted, Some(&value), None));
                document.lines.drain(index..=block);
            }
            Some(wanted) => {
                if value.starts_with('!') {
                    return refuse("has a tag");
                }
                if value.starts_with(['{', '[']) {
                    return refuse("holds a flow-style value");
                }
                if value.starts_with(['|', '>']) || block > index {
                    return refuse(if value.is_empty() {
                        "holds a mapping or list on the lines below"
                    } else {
                        "holds a value over several lines"
                    });
                }
                if parse_scalar(&value).as_ref() == Some(wanted) {
                    continue;
                }
                let Kind::Key {
                    colon,
                    value: (_, end),
                    ..
                } = parsed[index].kind
                else {
                    unreachable!("found keys are keys");
                };
                let rendered = render(wanted);
                let new_line = format!("{}: {rendered}{}", &line[..colon], &line[end..]);
                document.lines[index] = new_line;
                changes.push(key_change(&dotted, Some(&value), Some(&rendered)));
            }
        }
    }
    Ok(Edited {
        text: document.render(),
        changes,
    })
}

/// The value text of a key line.
fn value_text<'l>(line: &'l str, parsed: &Line) -> &'l str {
    match parsed.kind {
        Kind::Key {
            value: (start, end),
            ..
        } => &line[start..end],
        _ => "",
    }
}

fn describe_value(value: &str) -> &'static str {
    match value.chars().next() {
        Some('{' | '[') => "a flow-style value",
        Some('&' | '*') => "an anchor or alias",
        Some('!') => "a tag",
        Some('|' | '>') => "a block scalar",
        _ => "a scalar value",
    }
}

/// The key `name` directly in the mapping of `parent` (the document's
/// when `None`).
fn child(parsed: &[Line], parent: Option<usize>, name: &str) -> Result<Option<usize>, FormatError> {
    let range = match parent {
        Some(index) => index + 1..block_end(parsed, index) + 1,
        None => 0..parsed.len(),
    };
    let mut content = range.filter(|&i| parsed[i].kind != Kind::Nothing);
    let Some(first) = content.next() else {
        return Ok(None);
    };
    let indent = parsed[first].indent;
    let mut found: Vec<usize> = Vec::new();
    for index in std::iter::once(first).chain(content) {
        let line = &parsed[index];
        if line.indent != indent {
            continue;
        }
        match &line.kind {
            Kind::Key { key, .. } if key == name => found.push(index),
            Kind::Key { .. } => {}
            Kind::Item => {
                return Err(FormatError::at(
                    index + 1,
                    "a list where a mapping of keys was expected: a yaml resource edits keys of mappings, not list items; edit the list by hand or manage the whole file with a `file` resource",
                ));
            }
            _ => {
                return Err(FormatError::at(
                    index + 1,
                    "a line that is not `key: value` among keys (a complex key, or misindented text); fix the file or edit it by hand",
                ));
            }
        }
    }
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        several => Err(FormatError::at(
            several[1] + 1,
            format!(
                "`{name}` is written {} times in one mapping (lines {}); remove one by hand",
                several.len(),
                Lines::numbers(several)
            ),
        )),
    }
}

/// The last line of the block of the key at `index` (itself when it has
/// none): the lines below it indented deeper, and list items at its own
/// indentation, up to the last one that is not blank or a comment.
fn block_end(parsed: &[Line], index: usize) -> usize {
    let indent = parsed[index].indent;
    let mut last = index;
    for (offset, line) in parsed[index + 1..].iter().enumerate() {
        match line.kind {
            Kind::Nothing => continue,
            _ if line.indent > indent => last = index + 1 + offset,
            Kind::Item if line.indent == indent => last = index + 1 + offset,
            _ => break,
        }
    }
    last
}

/// Inserts `keys` (the first missing one and those below it) with
/// `value` at the end of the mapping of `parent`.
fn insert(
    lines: &mut Vec<String>,
    parsed: &[Line],
    parent: Option<usize>,
    keys: &[String],
    value: &Value,
) {
    let unit = indent_unit(parsed);
    let (mut indent, at) = match parent {
        Some(index) => {
            let end = block_end(parsed, index);
            let children = (index + 1..=end).find(|&i| parsed[i].kind != Kind::Nothing);
            let indent = children.map_or(parsed[index].indent + unit, |i| parsed[i].indent);
            (indent, end + 1)
        }
        None => {
            let last = parsed.iter().rposition(|l| l.kind != Kind::Nothing);
            let indent = parsed
                .iter()
                .find(|l| l.kind != Kind::Nothing)
                .map_or(0, |l| l.indent);
            (indent, last.map_or(lines.len(), |i| i + 1))
        }
    };
    let mut new_lines = Vec::new();
    for (position, key) in keys.iter().enumerate() {
        let key = render(&Value::String(key.clone()));
        if position + 1 == keys.len() {
            new_lines.push(format!("{}{key}: {}", " ".repeat(indent), render(value)));
        } else {
            new_lines.push(format!("{}{key}:", " ".repeat(indent)));
        }
        indent += unit;
    }
    lines.splice(at..at, new_lines);
}

/// The file's indentation step: the smallest indentation deeper than 0,
/// or 2.
fn indent_unit(parsed: &[Line]) -> usize {
    parsed
        .iter()
        .filter(|l| matches!(l.kind, Kind::Key { .. }) && l.indent > 0)
        .map(|l| l.indent)
        .min()
        .unwrap_or(2)
}

fn parse(lines: &[String]) -> Result<Vec<Line>, FormatError> {
    let mut parsed = Vec::with_capacity(lines.len());
    let mut seen_content = false;
    // The indentation of a key whose value goes on over the next lines
    // (deeper ones): a block scalar, a multi-line plain, quoted or flow
    // value.
    let mut continued_from: Option<usize> = None;
    for (index, text) in lines.iter().enumerate() {
        let number = index + 1;
        let trimmed = text.trim_start_matches(' ');
        let indent = text.len() - trimmed.len();
        let nothing = Line {
            indent,
            kind: Kind::Nothing,
        };
        if let Some(from) = continued_from {
            if trimmed.trim().is_empty() {
                parsed.push(nothing);
                continue;
            }
            if indent > from {
                parsed.push(Line {
                    indent,
                    kind: Kind::Other,
                });
                continue;
            }
            continued_from = None;
        }
        let content = trimmed.trim_end();
        if content.is_empty() || content.starts_with('#') {
            parsed.push(nothing);
            continue;
        }
        if trimmed.starts_with('\t') {
            return Err(FormatError::at(
                number,
                "a tab in the indentation (YAML indents with spaces): replace it with spaces",
            ));
        }
        if content == "---" || content.starts_with("--- ") || content == "..." {
            if seen_content || content != "---" {
                return Err(FormatError::at(
                    number,
                    "a second YAML document (or a document end) in the file: a yaml resource edits single-document files; manage this one with a `file` resource",
                ));
            }
            parsed.push(nothing);
            continue;
        }
        if content.starts_with('%') && !seen_content {
            parsed.push(nothing);
            continue;
        }
        if !seen_content && content.starts_with(['{', '[']) {
            return Err(FormatError::at(
                number,
                "the file is in flow style (`{...}` or `[...]`): a yaml resource edits block-style YAML; use a `json` resource if it is JSON, or a `file` resource",
            ));
        }
        seen_content = true;
        if content == "-" || content.starts_with("- ") {
            parsed.push(Line {
                indent,
                kind: Kind::Item,
            });
            continue;
        }
        let Some((key, colon)) = read_key(text, indent) else {
            parsed.push(Line {
                indent,
                kind: Kind::Other,
            });
            continue;
        };
        let after = colon + 1;
        let start = after + (text[after..].len() - text[after..].trim_start().len());
        let end = value_end(text, start);
        let value = &text[start..end];
        let opens_children =
            value.is_empty() || (value.starts_with(['&', '!']) && !value.contains(' '));
        // A key with a value on its line has no block: deeper lines go on
        // with its value (a block scalar, a multi-line plain, quoted or
        // flow value).
        if !opens_children {
            continued_from = Some(indent);
        }
        parsed.push(Line {
            indent,
            kind: Kind::Key {
                key,
                colon,
                value: (start, end),
            },
        });
    }
    Ok(parsed)
}

/// The key of a `key: value` line and the byte offset of its `:`.
fn read_key(line: &str, indent: usize) -> Option<(String, usize)> {
    let rest = &line[indent..];
    let (key, after_key) = match rest.chars().next()? {
        '"' => {
            let end = closing_double_quote(rest)?;
            (serde_json::from_str::<String>(&rest[..end]).ok()?, end)
        }
        '\'' => {
            let end = closing_single_quote(rest)?;
            (rest[1..end - 1].replace("''", "'"), end)
        }
        '?' | '&' | '*' | '!' | '|' | '>' | '{' | '[' | '@' | '`' => return None,
        _ => {
            let colon = rest
                .char_indices()
                .find(|&(i, c)| c == ':' && rest[i + 1..].chars().next().is_none_or(|n| n == ' '))?
                .0;
            let key = rest[..colon].trim_end();
            if key.contains(" #") {
                return None;
            }
            (key.to_string(), colon)
        }
    };
    let between = &rest[after_key..];
    let colon = after_key + (between.len() - between.trim_start_matches(' ').len());
    let followed = rest[colon..].strip_prefix(':')?;
    if !(followed.is_empty() || followed.starts_with(' ')) {
        return None;
    }
    Some((key, indent + colon))
}

/// The end of a value starting at `start`: before a trailing comment and
/// blanks.
fn value_end(line: &str, start: usize) -> usize {
    let value = &line[start..];
    let scan_from = match value.chars().next() {
        Some('"') => closing_double_quote(value).unwrap_or(value.len()),
        Some('\'') => closing_single_quote(value).unwrap_or(value.len()),
        _ => 0,
    };
    let comment = value[scan_from..]
        .char_indices()
        .find(|&(i, c)| {
            c == '#' && (scan_from + i == 0 || value[..scan_from + i].ends_with([' ', '\t']))
        })
        .map_or(value.len(), |(i, _)| scan_from + i);
    start + value[..comment].trim_end().len()
}

/// The byte just after the closing `"` of a double-quoted scalar.
fn closing_double_quote(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The byte just after the closing `'` of a single-quoted scalar (`''`
/// is a quote inside it).
fn closing_single_quote(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        if bytes[i] == b'\'' {
            if bytes.get(i + 1) == Some(&b'\'') {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// A scalar as YAML 1.2's core schema reads it; `None` for what cannot be
/// compared (an escape JSON does not have), which is then rewritten.
fn parse_scalar(text: &str) -> Option<Value> {
    if text.starts_with('"') {
        return serde_json::from_str::<String>(text).ok().map(Value::String);
    }
    if let Some(inner) = text.strip_prefix('\'') {
        return Some(Value::String(inner.strip_suffix('\'')?.replace("''", "'")));
    }
    Some(match text {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ => {
            if is_integer(text)
                && let Ok(number) = text.parse::<i64>()
            {
                Value::from(number)
            } else if is_float(text)
                && let Some(number) = text
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
            {
                Value::Number(number)
            } else {
                Value::String(text.to_string())
            }
        }
    })
}

fn is_integer(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_float(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(whole)
        && digits(fraction)
        && (!whole.is_empty() || !fraction.is_empty())
        && (mantissa.contains('.') || exponent.is_some());
    let exponent_ok = exponent.is_none_or(is_integer);
    mantissa_ok && exponent_ok
}

/// A scalar as this editor writes it.
fn render(value: &Value) -> String {
    match value {
        Value::String(text) if is_plain_safe(text) => text.clone(),
        // A JSON string is a valid YAML double-quoted scalar.
        other => serde_json::to_string(other).expect("JSON values serialize"),
    }
}

/// Whether a string written plain reads back as the same string, in YAML
/// 1.2 and in YAML 1.1 readers (`yes`, `on`).
fn is_plain_safe(text: &str) -> bool {
    const YAML_1_1_WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF",
    ];
    !text.is_empty()
        && text.trim() == text
        && !text.starts_with([
            '-', '?', ':', ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%',
            '@', '`',
        ])
        && !text.contains(": ")
        && !text.contains(" #")
        && !text.ends_with(':')
        && !text.chars().any(char::is_control)
        && !YAML_1_1_WORDS.contains(&text)
        && parse_scalar(text) == Some(Value::String(text.to_string()))
}
