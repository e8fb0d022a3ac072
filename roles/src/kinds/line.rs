//! `line`: lines of a file the role does not own, as Puppet's `file_line`.
//! Each entry of `lines` makes sure one line is present (replacing the line
//! its `match` finds, or inserted after the line `after` finds, or
//! appended), or that lines are absent (the ones equal to `line`, or the
//! ones `match` finds).

use serde::{Deserialize, Serialize};

use super::edit::{EditSpec, EditedFile};
use super::{Ensure, Kind, Resolver};

/// One line to make present or absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineEdit {
    /// The whole line, without its line break.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
    /// A regular expression: the line it finds is replaced (present), or
    /// every line it finds is removed (absent).
    #[serde(
        rename = "match",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub pattern: Option<String>,
    #[serde(default)]
    pub ensure: Ensure,
    /// A regular expression: a new line goes after the first line it finds
    /// (at the end when none does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// A `line` resource as a catalog carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Line(pub EditedFile<LineEdit>);

impl Kind for Line {
    type Spec = EditSpec;
    const PATH_NAMED: bool = true;
    const REFRESHABLE: bool = false;

    fn name(&self) -> &str {
        &self.0.path
    }

    fn resolve(mut spec: EditSpec, cx: &mut Resolver<'_>) -> Option<Line> {
        let lines = spec.lines.take().unwrap_or_default();
        if lines.is_empty() {
            cx.problems.push((
                "lines",
                "a line resource needs at least one entry: `lines = [{ line = \"...\" }]`".into(),
            ));
        }
        for (index, edit) in lines.iter().enumerate() {
            let number = index + 1;
            let mut problem = |message: String| {
                cx.problems
                    .push(("lines", format!("lines entry {number}: {message}")))
            };
            match (&edit.line, edit.ensure) {
                (None, Ensure::Present) => problem(
                    "`line` is missing: write the whole line to make present, e.g. line = \"PermitRootLogin no\"".into(),
                ),
                (None, Ensure::Absent) if edit.pattern.is_none() => problem(
                    "an absent entry needs `line` (the line to remove) or `match` (a regular expression finding the lines to remove)".into(),
                ),
                (Some(line), _) if line.contains(['\n', '\r']) => problem(
                    "`line` holds a line break; each entry is one line: write one entry per line".into(),
                ),
                _ => {}
            }
            if edit.ensure == Ensure::Absent && edit.after.is_some() {
                problem("`after` places a line; an absent entry has none: remove `after`".into());
            }
            for (field, pattern) in [("match", &edit.pattern), ("after", &edit.after)] {
                if let Some(pattern) = pattern
                    && let Err(error) = regex::Regex::new(pattern)
                {
                    problem(format!(
                        "`{field}` is not a valid regular expression: {}",
                        one_line(&error.to_string())
                    ));
                }
            }
        }
        Some(Line(spec.into_file("line", lines, &mut cx.problems)))
    }

    fn summary(&self) -> String {
        format!(" lines={}", self.0.edits.len())
    }

    fn edited_path(&self) -> Option<&str> {
        Some(&self.0.path)
    }
}

/// The regex crate's message spans lines (the pattern, a caret); a
/// diagnostic is one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
