//! A text file as lines, for the line-based editors: split without the
//! line breaks, edited as a list, joined back with the same breaks (`\n`,
//! or `\r\n` when the file used them) and the same ending.

/// The lines of a file and how to join them back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lines {
    pub lines: Vec<String>,
    crlf: bool,
    /// Whether the last line ended with a line break (a new file's does).
    final_break: bool,
}

impl Lines {
    pub fn parse(text: &str) -> Lines {
        let crlf = text.contains("\r\n");
        let final_break = text.is_empty() || text.ends_with('\n');
        let body = text.strip_suffix('\n').unwrap_or(text);
        let lines = if text.is_empty() {
            Vec::new()
        } else {
            body.split('\n')
                .map(|line| {
                    if crlf {
                        line.strip_suffix('\r').unwrap_or(line)
                    } else {
                        line
                    }
                    .to_string()
                })
                .collect()
        };
        Lines {
            lines,
            crlf,
            final_break,
        }
    }

    pub fn render(&self) -> String {
        let separator = if self.crlf { "\r\n" } else { "\n" };
        let mut text = self.lines.join(separator);
        if self.final_break && !self.lines.is_empty() {
            text.push_str(separator);
        }
        text
    }

    /// `1, 4 and 9`, the 1-based numbers of lines at these indices.
    pub fn numbers(indices: &[usize]) -> String {
        let numbers: Vec<String> = indices.iter().map(|i| (i + 1).to_string()).collect();
        match numbers.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            Some((last, _)) => last.clone(),
            None => String::new(),
        }
    }
}

/// The leading spaces and tabs of a line.
pub fn indentation(line: &str) -> &str {
    &line[..line.len() - line.trim_start_matches([' ', '\t']).len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_join_back_to_the_same_text_whatever_the_breaks_and_ending() {
        for text in ["", "a", "a\n", "a\nb", "a\r\nb\r\n", "\n\n", "a\n\nb\n"] {
            assert_eq!(Lines::parse(text).render(), text, "{text:?}");
        }
    }
}
