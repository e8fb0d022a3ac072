//! The `line` editor, as Puppet's `file_line`, entry by entry:
//!
//! - present: nothing when the line is already in the file; otherwise the
//!   one line `match` finds is replaced (two or more is an error: the
//!   pattern must say which), or the line goes after the first line `after`
//!   finds, or at the end;
//! - absent: every line `match` finds goes, or without `match` every line
//!   equal to `line`.

use cms_roles::{Ensure, LineEdit};
use regex::Regex;

use super::text::Lines;
use super::{Edited, FormatError};
use crate::Change;

pub fn edit(text: &str, edits: &[LineEdit]) -> Result<Edited, FormatError> {
    let mut document = Lines::parse(text);
    let mut changes = Vec::new();
    for (index, entry) in edits.iter().enumerate() {
        let number = index + 1;
        let pattern = compile(entry.pattern.as_deref(), number, "match")?;
        let lines = &mut document.lines;
        match entry.ensure {
            Ensure::Present => {
                let wanted = entry.line.as_deref().unwrap_or_default();
                if lines.iter().any(|line| line == wanted) {
                    continue;
                }
                let found: Vec<usize> = match &pattern {
                    Some(pattern) => (0..lines.len())
                        .filter(|&i| pattern.is_match(&lines[i]))
                        .collect(),
                    None => Vec::new(),
                };
                match found.as_slice() {
                    [] => {
                        let after = compile(entry.after.as_deref(), number, "after")?;
                        let at = after
                            .and_then(|after| lines.iter().position(|line| after.is_match(line)))
                            .map_or(lines.len(), |i| i + 1);
                        lines.insert(at, wanted.to_string());
                        changes.push(Change::new("line", "absent", wanted));
                    }
                    [one] => {
                        let old = std::mem::replace(&mut lines[*one], wanted.to_string());
                        changes.push(Change::new("line", old, wanted));
                    }
                    several => {
                        return Err(FormatError::at(
                            several[1] + 1,
                            format!(
                                "lines entry {number}: `match` finds {} lines ({}), and replaces one: make the pattern match only the line to replace (e.g. anchor it with ^)",
                                several.len(),
                                Lines::numbers(several)
                            ),
                        ));
                    }
                }
            }
            Ensure::Absent => {
                let goes = |line: &String| match (&pattern, &entry.line) {
                    (Some(pattern), _) => pattern.is_match(line),
                    (None, Some(wanted)) => line == wanted,
                    (None, None) => false,
                };
                let mut kept = Vec::with_capacity(lines.len());
                for line in lines.drain(..) {
                    if goes(&line) {
                        changes.push(Change::new("line", line, "absent"));
                    } else {
                        kept.push(line);
                    }
                }
                *lines = kept;
            }
        }
    }
    Ok(Edited {
        text: document.render(),
        changes,
    })
}

/// The catalog's patterns were compiled by the server already; an agent
/// with another regex version could still refuse one.
fn compile(
    pattern: Option<&str>,
    number: usize,
    field: &str,
) -> Result<Option<Regex>, FormatError> {
    pattern
        .map(|pattern| {
            Regex::new(pattern).map_err(|_| {
                FormatError::whole(format!(
                    "lines entry {number}: `{field}` is not a regular expression this agent reads"
                ))
            })
        })
        .transpose()
}
