//! Every `cms-server` and `cms-agent` command line shown in a code block of
//! the docs parses with the real command-line definitions, so the docs
//! cannot drift from the CLI. A synopsis (`[--flag VALUE]`, `A|B`, `...`)
//! is checked as its required part with the first alternative;
//! placeholders in capitals parse as the values they stand for.

use clap::Parser as _;

/// Splits a shell line into words: single and double quotes, backslash
/// escapes; stops at `|`, `>`, `<`, `;`, `&&`, `#` outside quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                    in_word = true;
                }
            }
            (None, '|' | '>' | '<' | ';' | '&') => break,
            (None, '#') if !in_word => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A synopsis (`cms-server rollout pause|resume [--env ENV] [ID]`, `A ...`)
/// as the command line it at least stands for: optional `[...]` groups
/// left out, the first of `A|B` alternatives, no `...`; a plain command
/// line comes back as it is (up to a pipe or a comment).
fn required_part(command: &str) -> String {
    let mut kept = String::new();
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for c in command.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => {
                quote = None;
                if depth == 0 {
                    kept.push(c);
                }
            }
            (Some(_), c) if depth == 0 => kept.push(c),
            (Some(_), _) => {}
            (None, '\'' | '"') => {
                quote = Some(c);
                if depth == 0 {
                    kept.push(c);
                }
            }
            (None, '[') => depth += 1,
            (None, ']') if depth > 0 => depth -= 1,
            (None, '#') if depth == 0 && kept.ends_with(' ') => break,
            (None, '|') if depth == 0 && kept.ends_with(' ') => break,
            (None, c) if depth == 0 => kept.push(c),
            _ => {}
        }
    }
    kept.split_whitespace()
        .filter(|word| *word != "..." && *word != "…")
        .map(|word| {
            if word.starts_with('\'') || word.starts_with('"') {
                word
            } else {
                word.split('|').next().unwrap_or(word)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The command lines of `program` in the code blocks of a Markdown text,
/// with the file's line number; continued lines (`\`) joined.
fn command_lines(text: &str, program: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut in_block = false;
    let mut pending: Option<(usize, String)> = None;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_block = !in_block;
            pending = None;
            continue;
        }
        if !in_block {
            continue;
        }
        let line = match pending.take() {
            Some((start, before)) => (start, format!("{before} {trimmed}")),
            None => (number + 1, trimmed.to_string()),
        };
        if let Some(head) = line.1.strip_suffix('\\') {
            pending = Some((line.0, head.to_string()));
            continue;
        }
        let text = line
            .1
            .trim_start_matches("$ ")
            .trim_start_matches("sudo ")
            .to_string();
        // A command substituted into another (`$(cms-server ...)`) or
        // after an assignment is still a command line.
        let Some(start) = text.find(&format!("{program} ")).or_else(|| {
            (text == program || text.ends_with(&format!(" {program}")))
                .then(|| text.rfind(program))
                .flatten()
        }) else {
            continue;
        };
        let before = &text[..start];
        if !(before.is_empty()
            || before.ends_with("$(")
            || before.ends_with("| ")
            || before.ends_with("&& ")
            || before.trim_end().ends_with('='))
        {
            continue;
        }
        let command = text[start..].trim_end_matches(')').to_string();
        found.push((line.0, required_part(&command)));
    }
    found
}

fn docs() -> Vec<(String, String)> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut files = vec![format!("{root}/README.md")];
    for entry in std::fs::read_dir(format!("{root}/docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path.display().to_string());
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read a doc");
            (path, text)
        })
        .collect()
}

/// `--help` and `--version` "fail" to parse by printing, as they should.
fn is_help(error: &clap::Error) -> bool {
    matches!(
        error.kind(),
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
    )
}

#[test]
fn every_command_line_in_the_docs_parses_with_the_real_cli() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for (path, text) in docs() {
        let name = path.rsplit("/../").next().unwrap_or(&path).to_string();
        for (line, command) in command_lines(&text, "cms-server") {
            checked += 1;
            if let Err(error) = cms_server::cli::Cli::try_parse_from(shell_words(&command))
                && !is_help(&error)
            {
                failures.push(format!("{name}:{line}: {command}\n  {}", error.render()));
            }
        }
        for (line, command) in command_lines(&text, "cms-agent") {
            checked += 1;
            if let Err(error) = cms_agent::cli::Cli::try_parse_from(shell_words(&command))
                && !is_help(&error)
            {
                failures.push(format!("{name}:{line}: {command}\n  {}", error.render()));
            }
        }
    }
    assert!(
        checked > 70,
        "only {checked} command lines found in the docs"
    );
    assert!(
        failures.is_empty(),
        "{} of {checked} command lines in the docs do not parse:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_synopsis_is_checked_as_its_required_part() {
    assert_eq!(
        required_part("cms-server rollout pause|resume|abort|promote [--env ENV] [ROLLOUT_ID]"),
        "cms-server rollout pause"
    );
    assert_eq!(
        required_part("cms-server diff --env ENV ... # compare"),
        "cms-server diff --env ENV"
    );
    assert_eq!(
        required_part("cms-server nodes --format json | jq -r '.[] | .id'"),
        "cms-server nodes --format json"
    );
}

#[test]
fn shell_words_split_like_a_shell_for_the_docs_lines() {
    assert_eq!(
        shell_words(r#"cms-server token create --tags 'env=prod,role=*' # a comment"#),
        ["cms-server", "token", "create", "--tags", "env=prod,role=*"]
    );
    assert_eq!(
        shell_words(r#"cms-server nodes --format json | jq -r '.[]'"#),
        ["cms-server", "nodes", "--format", "json"]
    );
    assert_eq!(
        shell_words(r#"cms-agent enroll --token "$(cat /run/t)" > out"#),
        ["cms-agent", "enroll", "--token", "$(cat /run/t)"]
    );
}
