//! The `json` editor. It reads the file into a tree of byte ranges (its
//! own small parser: serde_json's `preserve_order` would change the key
//! order of every map in the workspace, the catalog's encoding among them)
//! and edits the text in place, so that the keys it does not touch keep
//! their order, spacing and number formats.
//!
//! - Setting a key replaces its value's text, when the value differs (as
//!   JSON values: `8080` and `8080.0` differ, `"8080"` is a string); a
//!   missing key is added at the end of its object, on its own line
//!   indented as its siblings (or after `, ` in a one-line object), with
//!   missing objects on the way created. A key on the way that holds
//!   something other than an object is an error.
//! - Removing a key removes it with its comma.
//! - An empty file (one being created) starts as `{}`.

use cms_roles::KeyEdit;
use serde_json::Value;

use super::{Edited, FormatError, key_change};

/// A value of the file: its byte range and, for an object, its members.
#[derive(Debug)]
struct Node {
    start: usize,
    end: usize,
    /// `Some` for an object.
    members: Option<Vec<Member>>,
}

#[derive(Debug)]
struct Member {
    key: String,
    key_start: usize,
    value: Node,
}

pub fn edit(text: &str, edits: &[KeyEdit]) -> Result<Edited, FormatError> {
    let mut text = if text.trim().is_empty() {
        "{}\n".to_string()
    } else {
        text.to_string()
    };
    let mut changes = Vec::new();
    for edit in edits {
        let root = parse(&text)?;
        let dotted = edit.dotted();
        let unit = indent_unit(&text, &root);
        // The deepest node of the path that exists, and how many keys
        // that is.
        let mut node = &root;
        let mut parents: Vec<&Node> = Vec::new();
        let mut depth = 0;
        while depth < edit.key.len() {
            let Some(members) = &node.members else {
                if edit.value.is_none() {
                    break;
                }
                return Err(FormatError::at(
                    line_of(&text, node.start),
                    format!(
                        "`{}` holds {} in the file, not an object, so `{dotted}` cannot be set: set `{}` itself, or fix the file",
                        edit.key[..depth].join("."),
                        describe(&text[node.start..node.end]),
                        edit.key[..depth].join(".")
                    ),
                ));
            };
            let Some(member) = members.iter().rev().find(|m| m.key == edit.key[depth]) else {
                break;
            };
            parents.push(node);
            node = &member.value;
            depth += 1;
        }
        let found = depth == edit.key.len();
        match (&edit.value, found) {
            (None, false) => {}
            (None, true) => {
                let parent = parents.last().expect("a found key has a parent");
                let members = parent.members.as_ref().expect("a parent is an object");
                let at = members
                    .iter()
                    .rposition(|m| m.key == edit.key[depth - 1])
                    .expect("found");
                let old = as_one_line(&text[node.start..node.end]);
                let range = if at + 1 < members.len() {
                    members[at].key_start..members[at + 1].key_start
                } else if at > 0 {
                    members[at - 1].value.end..node.end
                } else {
                    parent.start + 1..parent.end - 1
                };
                text.replace_range(range, "");
                changes.push(key_change(&dotted, Some(&old), None));
            }
            (Some(wanted), true) => {
                let current: Option<Value> = serde_json::from_str(&text[node.start..node.end]).ok();
                if current.as_ref() == Some(wanted) {
                    continue;
                }
                let old = as_one_line(&text[node.start..node.end]);
                let indent = line_indentation(&text, node.start).to_string();
                let new = render(wanted, &indent, &unit);
                text.replace_range(node.start..node.end, &new);
                changes.push(key_change(&dotted, Some(&old), Some(&compact(wanted))));
            }
            (Some(wanted), false) => {
                // Wrap the value in the objects that are missing.
                let mut value = wanted.clone();
                for key in edit.key[depth + 1..].iter().rev() {
                    value = Value::Object(serde_json::Map::from_iter([(key.clone(), value)]));
                }
                let key = serde_json::to_string(&edit.key[depth]).expect("a string");
                let members = node.members.as_ref().expect("checked above");
                let object_indent = line_indentation(&text, node.start).to_string();
                let insertion = match members.last() {
                    Some(last) => {
                        let multiline = text[node.start..members[0].key_start].contains('\n');
                        if multiline {
                            let indent = line_indentation(&text, last.key_start);
                            format!(",\n{indent}{key}: {}", render(&value, indent, &unit))
                        } else {
                            format!(", {key}: {}", compact(&value))
                        }
                        .to_string()
                    }
                    None => {
                        let indent = format!("{object_indent}{unit}");
                        format!(
                            "\n{indent}{key}: {}\n{object_indent}",
                            render(&value, &indent, &unit)
                        )
                    }
                };
                let at = match members.last() {
                    Some(last) => last.value.end,
                    None => node.start + 1,
                };
                let end_of_empty = node.end - 1;
                if members.is_empty() {
                    text.replace_range(at..end_of_empty, &insertion);
                } else {
                    text.insert_str(at, &insertion);
                }
                changes.push(key_change(&dotted, None, Some(&compact(wanted))));
            }
        }
    }
    Ok(Edited { text, changes })
}

/// A value of the file as one line, for changes.
fn as_one_line(text: &str) -> String {
    serde_json::from_str::<Value>(text).map_or_else(|_| text.to_string(), |value| compact(&value))
}

/// A value as one line, for changes.
fn compact(value: &Value) -> String {
    serde_json::to_string(value).expect("JSON values serialize")
}

/// A value written at a line indented by `indent`: scalars as they are,
/// objects and arrays over lines indented by `unit`.
fn render(value: &Value, indent: &str, unit: &str) -> String {
    if !matches!(value, Value::Object(m) if !m.is_empty())
        && !matches!(value, Value::Array(a) if !a.is_empty())
    {
        return compact(value);
    }
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(unit.as_bytes());
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(value, &mut serializer).expect("JSON values serialize");
    let pretty = String::from_utf8(out).expect("JSON is UTF-8");
    pretty.replace('\n', &format!("\n{indent}"))
}

/// The indentation step of the file: that of the root object's first
/// member when it is on its own line, else two spaces.
fn indent_unit(text: &str, root: &Node) -> String {
    root.members
        .as_ref()
        .and_then(|members| members.first())
        .filter(|first| text[root.start..first.key_start].contains('\n'))
        .map(|first| line_indentation(text, first.key_start).to_string())
        .filter(|unit| !unit.is_empty())
        .unwrap_or_else(|| "  ".to_string())
}

/// The blanks at the start of the line holding byte `at`.
fn line_indentation(text: &str, at: usize) -> &str {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start..];
    &line[..line.len() - line.trim_start_matches([' ', '\t']).len()]
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

fn describe(value: &str) -> &'static str {
    match value.as_bytes().first() {
        Some(b'[') => "a list",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn parse(text: &str) -> Result<Node, FormatError> {
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    parser.blanks();
    let root = parser.value(0)?;
    parser.blanks();
    if parser.at < parser.bytes.len() {
        return Err(parser.error("text after the end of the JSON value"));
    }
    if root.members.is_none() {
        return Err(FormatError::at(
            1,
            "the file holds a single value, not an object: a json resource edits the keys of an object",
        ));
    }
    Ok(root)
}

struct Parser<'t> {
    text: &'t str,
    bytes: &'t [u8],
    at: usize,
}

/// Deeper than this is refused, so that a hostile file cannot exhaust
/// the stack.
const MAX_DEPTH: usize = 256;

impl Parser<'_> {
    fn error(&self, what: &str) -> FormatError {
        FormatError::at(
            line_of(self.text, self.at),
            format!("not valid JSON: {what}; fix the file, then run again"),
        )
    }

    fn blanks(&mut self) {
        while self.at < self.bytes.len()
            && matches!(self.bytes[self.at], b' ' | b'\t' | b'\n' | b'\r')
        {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &str) -> Result<(), FormatError> {
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, FormatError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        let start = self.at;
        match self.bytes.get(self.at) {
            Some(b'{') => {
                let mut members = Vec::new();
                self.sequence(b'}', |parser| {
                    let key_start = parser.at;
                    let (key_from, key_to) = parser.string()?;
                    let key: String = serde_json::from_str(&parser.text[key_from..key_to])
                        .map_err(|_| parser.error("a key that is not a valid string"))?;
                    parser.blanks();
                    parser.expect(b':', "expected `:` after a key")?;
                    parser.blanks();
                    let value = parser.value(depth + 1)?;
                    members.push(Member {
                        key,
                        key_start,
                        value,
                    });
                    Ok(())
                })?;
                Ok(Node {
                    start,
                    end: self.at,
                    members: Some(members),
                })
            }
            Some(b'[') => {
                self.sequence(b']', |parser| parser.value(depth + 1).map(drop))?;
                Ok(Node {
                    start,
                    end: self.at,
                    members: None,
                })
            }
            Some(b'"') => {
                let (start, end) = self.string()?;
                Ok(Node {
                    start,
                    end,
                    members: None,
                })
            }
            Some(_) => {
                while self.at < self.bytes.len()
                    && matches!(self.bytes[self.at], b'-' | b'+' | b'.' | b'0'..=b'9' | b'a'..=b'z' | b'A'..=b'Z')
                {
                    self.at += 1;
                }
                let scalar = &self.text[start..self.at];
                if scalar.is_empty() || serde_json::from_str::<Value>(scalar).is_err() {
                    self.at = start;
                    return Err(self.error(
                        "expected a value (an object, list, string, number, true, false or null)",
                    ));
                }
                Ok(Node {
                    start,
                    end: self.at,
                    members: None,
                })
            }
            None => Err(self.error("the file ends where a value was expected")),
        }
    }

    /// The items of an object or array from its opening byte to `close`,
    /// separated by commas; `item` reads one.
    fn sequence(
        &mut self,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Result<(), FormatError>,
    ) -> Result<(), FormatError> {
        self.at += 1;
        self.blanks();
        if self.bytes.get(self.at) == Some(&close) {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.blanks();
            item(self)?;
            self.blanks();
            match self.bytes.get(self.at) {
                Some(b',') => self.at += 1,
                Some(&byte) if byte == close => {
                    self.at += 1;
                    return Ok(());
                }
                _ => {
                    return Err(self.error(&format!(
                        "expected `,` or `{}` after a value",
                        close as char
                    )));
                }
            }
        }
    }

    /// A string's byte range, quotes included.
    fn string(&mut self) -> Result<(usize, usize), FormatError> {
        let start = self.at;
        self.expect(b'"', "expected a string in double quotes")?;
        while let Some(&byte) = self.bytes.get(self.at) {
            self.at += 1;
            match byte {
                b'\\' => self.at += 1,
                b'"' => return Ok((start, self.at)),
                b'\n' => return Err(self.error("a line break inside a string")),
                _ => {}
            }
        }
        self.at = start;
        Err(self.error("a string that is never closed"))
    }
}
