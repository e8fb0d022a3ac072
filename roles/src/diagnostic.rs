//! Errors a user can act on: every problem found in a roles repository, each
//! with the file, line and column where it was found.

use std::fmt;

/// One problem in a roles repository.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Diagnostic {
    /// Path relative to the repository root, e.g. `roles/web.toml`.
    pub file: String,
    /// 1-based; 0 when the problem has no position (a missing file).
    pub line: u32,
    /// 1-based; 0 when unknown.
    pub column: u32,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: impl Into<String>, position: Position, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.into(),
            line: position.line,
            column: position.column,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (0, _) => write!(f, "{}: {}", self.file, self.message),
            (line, 0) => write!(f, "{}:{}: {}", self.file, line, self.message),
            (line, column) => write!(f, "{}:{}:{}: {}", self.file, line, column, self.message),
        }
    }
}

impl Diagnostic {
    /// The source line this diagnostic points at, with a caret under its
    /// column, as rustc shows them (`source` is the whole file):
    ///
    /// ```text
    ///   |
    /// 3 | mode = 0644
    ///   |        ^
    /// ```
    ///
    /// `None` when it has no line, or the file has no such line.
    pub fn snippet(&self, source: &str) -> Option<String> {
        if self.line == 0 {
            return None;
        }
        let text = source
            .split('\n')
            .nth(self.line as usize - 1)?
            .trim_end_matches('\r');
        let number = self.line.to_string();
        let gutter = " ".repeat(number.len());
        let mut out = format!("{gutter} |\n{number} | {text}");
        if self.column > 0 {
            // Tabs stay tabs, so the caret lines up however they are shown.
            let before: String = text
                .chars()
                .take(self.column as usize - 1)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            out.push_str(&format!("\n{gutter} | {before}^"));
        }
        Some(out)
    }
}

/// Each diagnostic as `error: FILE:LINE:COLUMN: MESSAGE`, followed by its
/// source line and a caret when the file can be read below `root` (the
/// repository folder), for people at a terminal. Logs and `--format json`
/// keep the one-line form.
pub fn render_with_sources(diagnostics: &Diagnostics, root: &std::path::Path) -> String {
    let mut sources: std::collections::BTreeMap<&str, Option<String>> = Default::default();
    let mut out = String::new();
    for diagnostic in diagnostics.iter() {
        out.push_str(&format!("error: {diagnostic}\n"));
        let source = sources
            .entry(diagnostic.file.as_str())
            .or_insert_with(|| std::fs::read_to_string(root.join(&diagnostic.file)).ok());
        if let Some(snippet) = source.as_deref().and_then(|s| diagnostic.snippet(s)) {
            out.push_str(&snippet);
            out.push('\n');
        }
    }
    out
}

/// A 1-based line and column in a file; zero means unknown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

impl Position {
    pub const UNKNOWN: Position = Position { line: 0, column: 0 };

    /// The position of a byte offset in `text`. It reads the text up to
    /// the offset: for many offsets in one text, use a [`LineIndex`].
    pub fn of_offset(text: &str, offset: usize) -> Position {
        let offset = offset.min(text.len());
        let before = &text.as_bytes()[..offset];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        Position {
            line: line as u32,
            column: column as u32,
        }
    }
}

/// Where each line of a text starts, so that the position of any byte
/// offset is found without reading the text again: a file of thousands of
/// resources asks for thousands of positions.
#[derive(Debug, Clone)]
pub struct LineIndex<'t> {
    text: &'t str,
    /// The offset of the first byte of each line.
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    pub fn new(text: &'t str) -> LineIndex<'t> {
        let starts = std::iter::once(0)
            .chain(
                text.bytes()
                    .enumerate()
                    .filter(|(_, b)| *b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        LineIndex { text, starts }
    }

    /// The position of a byte offset, as [`Position::of_offset`] gives it.
    pub fn position(&self, offset: usize) -> Position {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&start| start <= offset);
        let line_start = self.starts[line - 1];
        let column = String::from_utf8_lossy(&self.text.as_bytes()[line_start..offset])
            .chars()
            .count()
            + 1;
        Position {
            line: line as u32,
            column: column as u32,
        }
    }

    /// The text of the line that holds a byte offset, without its newline.
    pub fn line_text(&self, offset: usize) -> &'t str {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        let end = self
            .starts
            .get(line)
            .map_or(self.text.len(), |next| next - 1);
        &self.text[start..end.max(start)]
    }
}

/// All the problems found at once, sorted by file and position.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.0.push(diagnostic);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.0.iter()
    }

    pub fn extend(&mut self, other: Diagnostics) {
        self.0.extend(other.0);
    }

    /// Sorted by file and position, with exact repeats removed: validating
    /// several nodes can find the same problem more than once.
    pub fn into_sorted(mut self) -> Diagnostics {
        self.0.sort();
        self.0.dedup();
        self
    }

    /// `Ok(value)` when nothing was found, the diagnostics otherwise.
    pub fn into_result<T>(self, value: T) -> Result<T, Diagnostics> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self.into_sorted())
        }
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// `unknown field `x`, expected one of …`, with a suggestion for the
/// likely typo.
pub(crate) fn unknown_key_message(unknown: &str, expected: &[&str]) -> String {
    let mut message = format!(
        "unknown field `{unknown}`, expected one of {}",
        expected.join(", ")
    );
    if let Some(suggestion) = closest(unknown, expected) {
        message.push_str(&format!(" (did you mean `{suggestion}`?)"));
    }
    message
}

/// The candidate within edit distance 2 of `word`, if any.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snippet_shows_the_line_with_a_caret_under_the_column_tabs_kept() {
        let source = "[[file]]\npath = \"/etc/x\"\n\tmode = 0644\n";
        let at = |line, column| Diagnostic {
            file: "roles/web.toml".into(),
            line,
            column,
            message: "m".into(),
        };
        assert_eq!(
            at(3, 9).snippet(source).as_deref(),
            Some("  |\n3 | \tmode = 0644\n  | \t       ^")
        );
        assert_eq!(
            at(2, 0).snippet(source).as_deref(),
            Some("  |\n2 | path = \"/etc/x\"")
        );
        assert_eq!(at(0, 0).snippet(source), None);
        assert_eq!(at(9, 1).snippet(source), None);
        let wide = "x\n".repeat(11);
        assert_eq!(
            at(11, 1).snippet(&wide).as_deref(),
            Some("   |\n11 | x\n   | ^")
        );
    }

    #[test]
    fn a_line_index_gives_the_positions_a_rescan_gives() {
        let text = "first\nsécond é\n\n  [[x]]\nlast";
        let index = LineIndex::new(text);
        for offset in 0..=text.len() + 2 {
            assert_eq!(
                index.position(offset),
                Position::of_offset(text, offset),
                "offset {offset}"
            );
        }
    }

    #[test]
    fn a_line_index_agrees_with_a_rescan_on_crlf_and_multi_byte_text_at_every_offset() {
        // Two-, three- and four-byte characters, CRLF and LF line ends, a
        // lone CR, empty lines, and no newline at the end; offsets inside
        // a character too (a TOML error never points there, but the two
        // must still agree).
        let mut text = String::new();
        for i in 0..200 {
            text.push_str(match i % 7 {
                0 => "[[file]]\r\n",
                1 => "path = \"/etc/é/ü\"\r\n",
                2 => "content = \"日本語 ✓\"\n",
                3 => "\r\n",
                4 => "vars = { name = \"🦀 crab\" }\r\n",
                5 => "lone\rcarriage return\n",
                _ => "\n",
            });
        }
        text.push_str("last line, no newline: ß");
        let index = LineIndex::new(&text);
        for offset in 0..=text.len() + 3 {
            assert_eq!(
                index.position(offset),
                Position::of_offset(&text, offset),
                "offset {offset}"
            );
        }
        assert_eq!(
            index.position(text.len()),
            Position {
                line: 201,
                column: 25
            }
        );
    }

    #[test]
    fn a_line_index_of_empty_text_puts_everything_at_line_one_column_one() {
        let index = LineIndex::new("");
        for offset in 0..3 {
            assert_eq!(index.position(offset), Position { line: 1, column: 1 });
            assert_eq!(
                Position::of_offset("", offset),
                Position { line: 1, column: 1 }
            );
        }
    }
}
