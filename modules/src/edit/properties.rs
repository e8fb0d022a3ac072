//! The `properties` editor, reading a file as `java.util.Properties.load`
//! does: comments start with `#` or `!`; a key ends at an unescaped `=`,
//! `:` or blank; a line ending in an odd number of `\` continues on the
//! next; `\t`, `\n`, `\r`, `\f`, `\uXXXX` and `\x` escapes.
//!
//! - Setting a key rewrites its entry (the last one, which is the one Java
//!   keeps) as one line with its indentation and separator, or appends
//!   `key=value` (in the separator style of the file's first entry).
//! - Removing a key removes every entry of it.
//! - Values and keys are escaped as `Properties.store` escapes them
//!   (`\\`, `\=`, `\:`, `\#`, `\!`, a key's blanks, a value's leading
//!   blank, control characters, and anything outside printable ASCII as
//!   `\uXXXX`, which reads the same in ISO-8859-1 and UTF-8 files).

use cms_roles::KeyEdit;

use super::text::{Lines, indentation};
use super::{Edited, FormatError, key_change};

/// One key-value entry: the lines it spans, its key and value (unescaped)
/// and what its first line writes between the key and the value.
#[derive(Debug)]
struct Entry {
    first: usize,
    last: usize,
    key: String,
    value: String,
    separator: String,
}

pub fn edit(text: &str, edits: &[KeyEdit]) -> Result<Edited, FormatError> {
    let mut document = Lines::parse(text);
    let mut changes = Vec::new();
    for edit in edits {
        let key = edit.dotted();
        let entries = parse(&document.lines)?;
        let mine: Vec<&Entry> = entries.iter().filter(|e| e.key == key).collect();
        let Some(value) = edit.value.as_ref() else {
            for entry in mine.iter().rev() {
                changes.push(key_change(&key, Some(&entry.value), None));
                document.lines.drain(entry.first..=entry.last);
            }
            continue;
        };
        let value = value.as_str().unwrap_or_default();
        let written =
            |separator: &str| format!("{}{separator}{}", escape(&key, true), escape(value, false));
        match mine.last() {
            Some(entry) if entry.value == value => {}
            Some(entry) => {
                let separator = if entry.separator.is_empty() {
                    "="
                } else {
                    &entry.separator
                };
                let line = format!(
                    "{}{}",
                    indentation(&document.lines[entry.first]),
                    written(separator)
                );
                changes.push(key_change(&key, Some(&entry.value), Some(value)));
                document.lines.splice(entry.first..=entry.last, [line]);
            }
            None => {
                let separator = entries
                    .iter()
                    .map(|e| e.separator.as_str())
                    .find(|s| !s.is_empty())
                    .unwrap_or("=");
                changes.push(key_change(&key, None, Some(value)));
                document.lines.push(written(separator));
            }
        }
    }
    Ok(Edited {
        text: document.render(),
        changes,
    })
}

fn parse(lines: &[String]) -> Result<Vec<Entry>, FormatError> {
    let mut entries = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let first = index;
        let line = lines[index].trim_start_matches([' ', '\t', '\x0c']);
        index += 1;
        if line.is_empty() || line.starts_with(['#', '!']) {
            continue;
        }
        // The logical line: continuation lines lose their leading blanks.
        let mut logical = String::new();
        let mut part = line;
        loop {
            let trailing = part.len() - part.trim_end_matches('\\').len();
            if trailing % 2 == 1 && index < lines.len() {
                logical.push_str(&part[..part.len() - 1]);
                part = lines[index].trim_start_matches([' ', '\t', '\x0c']);
                index += 1;
            } else {
                logical.push_str(if trailing % 2 == 1 {
                    &part[..part.len() - 1]
                } else {
                    part
                });
                break;
            }
        }
        let (raw_key, separator, raw_value) = split_entry(&logical);
        let line_number = first + 1;
        entries.push(Entry {
            first,
            last: index - 1,
            key: unescape(raw_key, line_number)?,
            value: unescape(raw_value, line_number)?,
            separator: separator.to_string(),
        });
    }
    Ok(entries)
}

/// The raw key, the separator (blanks with at most one `=` or `:`) and the
/// raw value of a logical line.
fn split_entry(logical: &str) -> (&str, &str, &str) {
    let bytes = logical.as_bytes();
    let mut key_end = logical.len();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'=' | b':' | b' ' | b'\t' | b'\x0c' => {
                key_end = i;
                break;
            }
            _ => i += 1,
        }
    }
    let rest = &logical[key_end..];
    let blanks = |s: &str| s.len() - s.trim_start_matches([' ', '\t', '\x0c']).len();
    let mut value_start = key_end + blanks(rest);
    if logical[value_start..].starts_with(['=', ':']) {
        value_start += 1;
        value_start += blanks(&logical[value_start..]);
    }
    (
        &logical[..key_end],
        &logical[key_end..value_start],
        &logical[value_start..],
    )
}

fn unescape(raw: &str, line: usize) -> Result<String, FormatError> {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    let mut pending_high: Option<u32> = None;
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let digits: String = chars.by_ref().take(4).collect();
                let unit = (digits.len() == 4)
                    .then(|| u32::from_str_radix(&digits, 16).ok())
                    .flatten()
                    .ok_or_else(|| {
                        FormatError::at(
                            line,
                            "a `\\u` escape without four hexadecimal digits (Java refuses the file: \"Malformed \\uxxxx encoding\"); write \\u and 4 digits, e.g. \\u00e9",
                        )
                    })?;
                // Java's strings are UTF-16: a pair of escapes may make one
                // character.
                match (pending_high.take(), unit) {
                    (None, 0xD800..=0xDBFF) => pending_high = Some(unit),
                    (Some(high), 0xDC00..=0xDFFF) => out.push(
                        char::from_u32(0x10000 + ((high - 0xD800) << 10) + (unit - 0xDC00))
                            .unwrap_or('\u{fffd}'),
                    ),
                    (_, unit) => out.push(char::from_u32(unit).unwrap_or('\u{fffd}')),
                }
            }
            Some(other) => out.push(other),
            None => {}
        }
    }
    Ok(out)
}

/// Escapes as `Properties.store` does; `key` escapes every blank, a value
/// only a leading one.
fn escape(text: &str, key: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for (index, c) in text.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\x0c' => out.push_str("\\f"),
            '=' | ':' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if key || index == 0 => out.push_str("\\ "),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_text_reads_back_as_itself() {
        for text in ["a b", " lead", "x=y:z#!", "é€😀", "tab\tline\nend\\", ""] {
            for key in [true, false] {
                let escaped = escape(text, key);
                assert_eq!(unescape(&escaped, 1).unwrap(), text, "{escaped}");
            }
        }
    }
}
