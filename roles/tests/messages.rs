//! The exact words of errors a first-time user meets, one snapshot each
//! (`tests/snapshots/messages__*.snap`, with insta), so a change of wording
//! is a reviewed change of a snapshot. Each snapshot is what `check` prints:
//! the error, then its line with a caret under the column.

use std::collections::BTreeMap;

use cms_roles::{RepoFiles, Repository, example_facts, validate};

/// What `check` prints for one role file.
fn problems_of_role(role: &str) -> String {
    problems_of(&[("roles/web.toml", role)])
}

#[test]
fn a_mode_written_as_an_octal_number_gets_the_mode_hint() {
    insta::assert_snapshot!(problems_of_role(
        "[[file]]\npath = \"/etc/x\"\ncontent = \"x\"\nmode = 0644\n"
    ));
}

#[test]
fn another_number_with_a_leading_zero_says_both_ways_out() {
    insta::assert_snapshot!(problems_of_role(
        "[[file]]\npath = \"/etc/x\"\ncontent = \"x\"\nowner = 0123\n"
    ));
}

#[test]
fn a_value_of_the_wrong_type_names_the_field_and_the_resource() {
    insta::assert_snapshot!(problems_of_role(
        "[[service]]\nname = \"nginx\"\nenable = \"yes\"\n"
    ));
    insta::assert_snapshot!(problems_of_role(
        "[[file]]\npath = \"/etc/x\"\ncontent = 5\n"
    ));
}

/// What `check` prints for a repository of these files: each problem
/// with its source line and caret.
fn problems_of(files: &[(&str, &str)]) -> String {
    let mut repo = RepoFiles::new();
    repo.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    for (path, text) in files {
        repo.insert(*path, text.as_bytes());
    }
    let (repository, mut diagnostics) = Repository::load(repo);
    diagnostics.extend(validate(&repository, &example_facts()));
    let sources: BTreeMap<&str, &str> = files.iter().copied().collect();
    let mut out = String::new();
    for diagnostic in diagnostics.into_sorted().iter() {
        out.push_str(&format!("error: {diagnostic}\n"));
        if let Some(snippet) = sources
            .get(diagnostic.file.as_str())
            .and_then(|source| diagnostic.snippet(source))
        {
            out.push_str(&snippet);
            out.push('\n');
        }
    }
    out
}

const FILE_FROM_TEMPLATE: &str = "[[file]]\npath = \"/etc/app.conf\"\ntemplate = \"app.hbs\"\n";

#[test]
fn an_unclosed_block_is_one_error_at_the_line_it_was_opened() {
    insta::assert_snapshot!(problems_of(&[
        ("roles/web.toml", FILE_FROM_TEMPLATE),
        ("templates/app.hbs", "a\n{{#each data.hosts}}\n  {{this}}\n"),
    ]));
}

#[test]
fn a_block_closed_by_another_names_both() {
    insta::assert_snapshot!(problems_of(&[
        ("roles/web.toml", FILE_FROM_TEMPLATE),
        (
            "templates/app.hbs",
            "{{#each data.hosts}}\n{{#if this}}x{{/each}}\n"
        ),
    ]));
}

#[test]
fn a_broken_data_file_is_one_error_not_one_per_value_it_held() {
    insta::assert_snapshot!(problems_of(&[
        ("roles/web.toml", FILE_FROM_TEMPLATE),
        (
            "templates/app.hbs",
            "port={{data.port}}\nname={{data.name}}\n"
        ),
        ("data/common.toml", "port = 80\nname = \"unterminated\n"),
    ]));
}

#[test]
fn a_value_missing_for_a_node_names_the_tags_of_the_node() {
    insta::assert_snapshot!(problems_of(&[
        (
            "roles/web.toml",
            "[match]\nrole = \"web\"\n\n[[file]]\npath = \"/etc/app.conf\"\ntemplate = \"app.hbs\"\n",
        ),
        ("templates/app.hbs", "port={{data.port}}\n"),
    ]));
}

#[test]
fn parameter_mistakes_at_an_include_point_at_the_value_and_name_the_declaration() {
    insta::assert_snapshot!(problems_of(&[
        (
            "roles/java_service.toml",
            "[params]\nname = { type = \"string\" }\nport = { type = \"integer\", default = 8080 }\n\n[[service]]\nname = \"{{params.name}}\"\n",
        ),
        (
            "roles/web.toml",
            "include = [\n  { role = \"java_service\", params = { name = \"orders\", prot = 8081 } },\n  { role = \"java_service\", params = { name = \"payments\", port = \"8082\" } },\n  { role = \"java_service\", params = { port = 8083 } },\n]\n",
        ),
    ]));
}
