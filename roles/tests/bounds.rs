//! Everything a commit controls is bounded: template nesting, partials,
//! include chains and data nesting each have a limit, reported as a
//! validation error naming the file, the line and the limit, and parsing,
//! validating and compiling run on a stack of their own, so the caller's
//! stack (a 2 MiB tokio worker, the 8 MiB main thread) makes no difference.
//!
//! Each test runs the library on a thread with a small stack, as the server
//! does: before the limits, these aborted the whole process ("fatal runtime
//! error: stack overflow").

use std::collections::BTreeMap;

use cms_roles::{Diagnostics, Node, RepoFiles, Repository, compile, example_facts, validate};

/// A tokio worker's stack, or less.
const SMALL_STACK: usize = 1024 * 1024;

fn repo(files: &[(&str, String)]) -> RepoFiles {
    let mut repo = RepoFiles::new();
    repo.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    for (path, text) in files {
        repo.insert(*path, text.as_bytes());
    }
    repo
}

/// Parses and validates the repository as `check` and the server do, on a
/// thread with a small stack; the problems found, one per line.
fn problems_on_a_small_stack(files: RepoFiles) -> Vec<String> {
    std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(move || {
            let (repository, mut diagnostics) = Repository::load(files);
            diagnostics.extend(validate(&repository, &example_facts()));
            diagnostics
                .into_sorted()
                .iter()
                .map(ToString::to_string)
                .collect()
        })
        .expect("spawn")
        .join()
        .expect("validation does not panic")
}

fn nested_ifs(depth: usize) -> String {
    let mut text = String::new();
    for _ in 0..depth {
        text.push_str("{{#if fact.hostname}}\n");
    }
    text.push_str("deep\n");
    for _ in 0..depth {
        text.push_str("{{/if}}\n");
    }
    text
}

fn role_with_template(template: &str) -> (&'static str, String) {
    (
        "roles/base.toml",
        format!("[[file]]\npath = \"/etc/deep\"\ntemplate = \"{template}\"\n"),
    )
}

fn node() -> Node {
    Node {
        id: "i-test".to_string(),
        tags: BTreeMap::new(),
        facts: example_facts(),
        attested: BTreeMap::new(),
    }
}

fn assert_one_problem_like(problems: &[String], expected: &str) {
    assert!(
        problems.iter().any(|p| p.contains(expected)),
        "expected a problem containing {expected:?}, got:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_template_of_1500_nested_ifs_is_refused_naming_the_file_line_and_limit() {
    let problems = problems_on_a_small_stack(repo(&[
        ("templates/deep.hbs", nested_ifs(1500)),
        role_with_template("deep.hbs"),
    ]));
    assert_one_problem_like(
        &problems,
        "templates/deep.hbs:65:1: blocks nested 65 deep; the limit is 64",
    );
}

#[test]
fn a_template_nested_to_the_limit_renders_whatever_the_callers_stack() {
    let files = repo(&[
        ("templates/deep.hbs", nested_ifs(64)),
        role_with_template("deep.hbs"),
    ]);
    assert_eq!(
        problems_on_a_small_stack(files.clone()),
        Vec::<String>::new()
    );
    let catalog = std::thread::Builder::new()
        .stack_size(SMALL_STACK / 4)
        .spawn(move || {
            let repository = Repository::parse(files).expect("parses");
            compile(&repository, &node()).map(|catalog| catalog.resources.len())
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(catalog, Ok(1));
}

#[test]
fn an_inline_placeholder_nested_too_deep_is_refused_at_its_field() {
    let deep = nested_ifs(1500).replace('\n', "");
    let problems = problems_on_a_small_stack(repo(&[(
        "roles/base.toml",
        format!("[[file]]\npath = \"/etc/deep\"\ncontent = \"x\"\nowner = \"{deep}\"\n"),
    )]));
    assert_one_problem_like(
        &problems,
        "roles/base.toml:4:1: blocks nested 65 deep; the limit is 64",
    );
}

#[test]
fn nested_subexpressions_are_bounded_too() {
    let deep = format!(
        "{{{{default {}fact.hostname{} \"x\"}}}}",
        "(default ".repeat(1000),
        " \"x\")".repeat(1000)
    );
    let problems = problems_on_a_small_stack(repo(&[
        ("templates/deep.hbs", deep),
        role_with_template("deep.hbs"),
    ]));
    assert_one_problem_like(
        &problems,
        "templates/deep.hbs:1:1: blocks nested 65 deep; the limit is 64",
    );
}

#[test]
fn a_template_including_itself_as_a_partial_is_refused() {
    let problems = problems_on_a_small_stack(repo(&[
        (
            "templates/loop.hbs",
            "{{#if fact.hostname}}{{> templates/loop.hbs}}{{/if}}\n".to_string(),
        ),
        role_with_template("loop.hbs"),
    ]));
    assert_one_problem_like(
        &problems,
        "templates/loop.hbs:1:22: partial `templates/loop.hbs` includes itself",
    );
}

#[test]
fn partials_count_toward_the_nesting_limit() {
    // 40 blocks, then a partial with 40 more: 80 deep in all.
    let outer = nested_ifs(40).replacen("deep\n", "{{> templates/inner.hbs}}\n", 1);
    let problems = problems_on_a_small_stack(repo(&[
        ("templates/outer.hbs", outer),
        ("templates/inner.hbs", nested_ifs(40)),
        role_with_template("outer.hbs"),
    ]));
    assert_one_problem_like(
        &problems,
        "templates/outer.hbs:41:1: blocks nested 81 deep with partial `templates/inner.hbs`; the limit is 64",
    );
}

#[test]
fn an_include_chain_6000_roles_deep_is_refused_naming_the_limit() {
    let mut files = vec![];
    for r in 0..6000 {
        let mut text = format!("[[package]]\nname = \"p{r}\"\n");
        if r + 1 < 6000 {
            text = format!("include = [\"r{:04}\"]\n{text}", r + 1);
        }
        files.push((format!("roles/r{r:04}.toml"), text));
    }
    let files: Vec<(&str, String)> = files.iter().map(|(p, t)| (p.as_str(), t.clone())).collect();
    let problems = problems_on_a_small_stack(repo(&files));
    assert_one_problem_like(
        &problems,
        "roles/r5935.toml:1:12: includes go 65 roles deep here (r5935 -> r5936 -> ",
    );
    assert_one_problem_like(&problems, "the limit is 64");
}

#[test]
fn an_include_chain_at_the_limit_compiles() {
    let mut files = vec![];
    for r in 0..64 {
        let mut text = format!("[[package]]\nname = \"p{r}\"\n");
        if r + 1 < 64 {
            text = format!("include = [\"r{:02}\"]\n{text}", r + 1);
        }
        files.push((format!("roles/r{r:02}.toml"), text));
    }
    let files: Vec<(&str, String)> = files.iter().map(|(p, t)| (p.as_str(), t.clone())).collect();
    assert_eq!(
        problems_on_a_small_stack(repo(&files)),
        Vec::<String>::new()
    );
}

#[test]
fn data_nested_too_deep_is_refused_naming_the_file_line_and_limit() {
    let keys = vec!["a"; 70].join(".");
    let problems = problems_on_a_small_stack(repo(&[
        (
            "data/common.toml",
            format!("port = 80\n[{keys}]\nvalue = 1\n"),
        ),
        (
            "roles/base.toml",
            "[[package]]\nname = \"curl\"\n".to_string(),
        ),
    ]));
    assert_one_problem_like(
        &problems,
        "data/common.toml:2:130: tables and arrays nested 65 deep; the limit is 64",
    );
}

#[test]
fn data_nested_thousands_deep_is_refused_by_the_toml_parser_with_the_limit() {
    let keys = vec!["a"; 5000].join(".");
    let problems = problems_on_a_small_stack(repo(&[
        ("data/common.toml", format!("[{keys}]\nvalue = 1\n")),
        (
            "roles/base.toml",
            "[[package]]\nname = \"curl\"\n".to_string(),
        ),
    ]));
    assert_one_problem_like(
        &problems,
        "data/common.toml: tables and arrays nested too deep for TOML's parser; the limit is 64",
    );
}

#[test]
fn a_role_file_nested_too_deep_is_refused() {
    let value = format!("{}1{}", "[".repeat(70), "]".repeat(70));
    let problems = problems_on_a_small_stack(repo(&[(
        "roles/base.toml",
        format!("[[package]]\nname = \"curl\"\nensure = {value}\n"),
    )]));
    assert_one_problem_like(
        &problems,
        "roles/base.toml:3:72: tables and arrays nested 65 deep; the limit is 64",
    );
}

/// A problem found by the library is a [`Diagnostics`], never a panic.
#[test]
fn compile_returns_diagnostics_not_panics() {
    let files = repo(&[
        ("templates/deep.hbs", nested_ifs(1500)),
        role_with_template("deep.hbs"),
    ]);
    let (repository, _) = Repository::load(files);
    let result: Result<_, Diagnostics> = std::thread::Builder::new()
        .stack_size(SMALL_STACK)
        .spawn(move || compile(&repository, &node()).map(|_| ()))
        .unwrap()
        .join()
        .expect("no panic");
    assert!(result.is_err());
}
