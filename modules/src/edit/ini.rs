//! The `ini` editor. A line is blank, a comment (`;` or `#`), a section
//! header (`[name]`), a key with a value (`key = value`) or a bare key
//! (`skip-networking`, as `my.cnf` has). Keys before the first header are
//! in section `""`; a section may have several headers.
//!
//! - Setting a key rewrites only its value, keeping the spaces around `=`
//!   and an inline comment (` ; ...` or ` # ...`); a bare key becomes
//!   `key = value`. A missing key goes after the section's last key, in the
//!   file's style (`key = value` or `key=value`, from its first key); a
//!   missing section is appended at the end.
//! - Removing a key removes each of its lines in the section.
//! - A key written twice in one section is an error when it is to be set:
//!   which one counts depends on the program reading the file.

use cms_roles::KeyEdit;

use super::text::{Lines, indentation};
use super::{Edited, FormatError, key_change};

/// One line of an ini file, as the editor sees it.
#[derive(Debug, PartialEq)]
enum Item {
    Other,
    Section(String),
    /// A key; `value` is the byte range of its value in the line (without
    /// an inline comment), `None` for a bare key.
    Key {
        name: String,
        value: Option<(usize, usize)>,
    },
}

pub fn edit(text: &str, edits: &[KeyEdit]) -> Result<Edited, FormatError> {
    let mut document = Lines::parse(text);
    let mut changes = Vec::new();
    for edit in edits {
        let (section, key) = match edit.key.as_slice() {
            [section, key] => (section.as_str(), key.as_str()),
            _ => return Err(FormatError::whole("an ini key is a section and a name")),
        };
        let items = parse(&document.lines)?;
        let in_section = lines_of_section(&items, section);
        let found: Vec<usize> = in_section
            .iter()
            .copied()
            .filter(|&i| matches!(&items[i], Item::Key { name, .. } if name == key))
            .collect();
        let dotted = edit.dotted();
        let Some(value) = edit.value.as_ref() else {
            for &i in found.iter().rev() {
                let old = current_value(&document.lines[i], &items[i]).to_string();
                changes.push(key_change(&dotted, Some(&old), None));
                document.lines.remove(i);
            }
            continue;
        };
        let value = value.as_str().unwrap_or_default();
        match found.as_slice() {
            [] => {
                let line = format!("{key}{}{value}", separator(&document.lines, &items));
                let last_key = in_section
                    .iter()
                    .rev()
                    .find(|&&i| matches!(items[i], Item::Key { .. }));
                match (last_key, header(&items, section)) {
                    (Some(&last_key), _) => {
                        let indent = indentation(&document.lines[last_key]).to_string();
                        document
                            .lines
                            .insert(last_key + 1, format!("{indent}{line}"));
                    }
                    (None, Some(header)) => document.lines.insert(header + 1, line),
                    (None, None) if section.is_empty() => document.lines.insert(0, line),
                    (None, None) => {
                        if document.lines.last().is_some_and(|l| !l.trim().is_empty()) {
                            document.lines.push(String::new());
                        }
                        document.lines.push(format!("[{section}]"));
                        document.lines.push(line);
                    }
                }
                changes.push(key_change(&dotted, None, Some(value)));
            }
            [one] => {
                let line = &document.lines[*one];
                let old = current_value(line, &items[*one]);
                if old == value && matches!(items[*one], Item::Key { value: Some(_), .. }) {
                    continue;
                }
                let old = match items[*one] {
                    Item::Key { value: None, .. } => "(no value)".to_string(),
                    _ => old.to_string(),
                };
                let new_line = match items[*one] {
                    Item::Key {
                        value: Some((start, end)),
                        ..
                    } => format!("{}{value}{}", &line[..start], &line[end..]),
                    _ => format!(
                        "{}{key}{}{value}",
                        indentation(line),
                        separator(&document.lines, &items)
                    ),
                };
                document.lines[*one] = new_line;
                changes.push(key_change(&dotted, Some(&old), Some(value)));
            }
            several => {
                return Err(FormatError::at(
                    several[1] + 1,
                    format!(
                        "`{key}` is written {} times in section [{section}] (lines {}); which one counts depends on the program: keep one by hand, then run again",
                        several.len(),
                        Lines::numbers(several)
                    ),
                ));
            }
        }
    }
    Ok(Edited {
        text: document.render(),
        changes,
    })
}

fn parse(lines: &[String]) -> Result<Vec<Item>, FormatError> {
    lines
        .iter()
        .enumerate()
        .map(|(index, line)| {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with([';', '#']) {
                return Ok(Item::Other);
            }
            if let Some(rest) = trimmed.strip_prefix('[') {
                let Some((name, after)) = rest.split_once(']') else {
                    return Err(FormatError::at(
                        index + 1,
                        "a section header without its closing `]`: write `[name]`",
                    ));
                };
                let after = after.trim();
                if !after.is_empty() && !after.starts_with([';', '#']) {
                    return Err(FormatError::at(
                        index + 1,
                        "text after a section header: write `[name]` alone on its line",
                    ));
                }
                return Ok(Item::Section(name.trim().to_string()));
            }
            let Some(equals) = line.find('=') else {
                return Ok(Item::Key {
                    name: trimmed.to_string(),
                    value: None,
                });
            };
            let name = line[..equals].trim().to_string();
            let start =
                equals + 1 + (line[equals + 1..].len() - line[equals + 1..].trim_start().len());
            let comment = inline_comment(&line[start..]).map_or(line.len(), |at| start + at);
            let end = start + line[start..comment].trim_end().len();
            Ok(Item::Key {
                name,
                value: Some((start, end.max(start))),
            })
        })
        .collect()
}

/// Where an inline comment starts in a value: a `;` or `#` after a space.
fn inline_comment(value: &str) -> Option<usize> {
    value
        .char_indices()
        .find(|&(i, c)| (c == ';' || c == '#') && value[..i].ends_with([' ', '\t']))
        .map(|(i, _)| i)
}

fn current_value<'l>(line: &'l str, item: &Item) -> &'l str {
    match item {
        Item::Key {
            value: Some((start, end)),
            ..
        } => &line[*start..*end],
        _ => "",
    }
}

/// The indices of the lines in `section` (every header of it).
fn lines_of_section(items: &[Item], section: &str) -> Vec<usize> {
    let mut current = "";
    let mut inside = Vec::new();
    for (index, item) in items.iter().enumerate() {
        if let Item::Section(name) = item {
            current = name;
        } else if current == section {
            inside.push(index);
        }
    }
    inside
}

/// The last header of `section`.
fn header(items: &[Item], section: &str) -> Option<usize> {
    items
        .iter()
        .rposition(|item| matches!(item, Item::Section(name) if name == section))
}

/// What the file writes between a key and its value: that of its first
/// key with a value, or ` = `.
fn separator(lines: &[String], items: &[Item]) -> String {
    items
        .iter()
        .zip(lines)
        .find_map(|(item, line)| match item {
            Item::Key {
                name,
                value: Some((start, _)),
            } => {
                let key_end = indentation(line).len() + name.len();
                line.get(key_end..*start).map(str::to_string)
            }
            _ => None,
        })
        .unwrap_or_else(|| " = ".to_string())
}
