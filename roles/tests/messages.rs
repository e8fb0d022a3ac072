//! The exact words of errors a first-time user meets, one test each, so a
//! change of wording is a reviewed change of this file.

use cms_roles::{RepoFiles, Repository, example_facts, validate};

/// The problems `check` reports for one role file, one per line.
fn problems_of_role(role: &str) -> Vec<String> {
    problems_of(&[("roles/web.toml", role)])
}

#[test]
fn a_mode_written_as_an_octal_number_gets_the_mode_hint() {
    assert_eq!(
        problems_of_role("[[file]]\npath = \"/etc/x\"\ncontent = \"x\"\nmode = 0644\n"),
        [
            "roles/web.toml:4:8: mode 0644 is a number with a leading zero, which TOML refuses: write it as a string, mode = \"0644\", so it is read as octal"
        ]
    );
}

#[test]
fn another_number_with_a_leading_zero_says_both_ways_out() {
    assert_eq!(
        problems_of_role("[[file]]\npath = \"/etc/x\"\ncontent = \"x\"\nowner = 0123\n"),
        [
            "roles/web.toml:4:9: owner = 0123: TOML refuses a number with a leading zero; write owner = \"0123\" for text, or the number without its leading zeros"
        ]
    );
}

#[test]
fn a_value_of_the_wrong_type_names_the_field_and_the_resource() {
    assert_eq!(
        problems_of_role("[[service]]\nname = \"nginx\"\nenable = \"yes\"\n"),
        [
            "roles/web.toml:3:10: field `enable` of `service:nginx` must be a boolean, not string \"yes\""
        ]
    );
    assert_eq!(
        problems_of_role("[[file]]\npath = \"/etc/x\"\ncontent = 5\n"),
        ["roles/web.toml:3:11: field `content` of `file:/etc/x` must be a string, not integer `5`"]
    );
}

/// The problems `check` reports for a repository of these files.
fn problems_of(files: &[(&str, &str)]) -> Vec<String> {
    let mut repo = RepoFiles::new();
    repo.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    for (path, text) in files {
        repo.insert(*path, text.as_bytes());
    }
    let (repository, mut diagnostics) = Repository::load(repo);
    diagnostics.extend(validate(&repository, &example_facts()));
    diagnostics
        .into_sorted()
        .iter()
        .map(ToString::to_string)
        .collect()
}

const FILE_FROM_TEMPLATE: &str = "[[file]]\npath = \"/etc/app.conf\"\ntemplate = \"app.hbs\"\n";

#[test]
fn an_unclosed_block_is_one_error_at_the_line_it_was_opened() {
    assert_eq!(
        problems_of(&[
            ("roles/web.toml", FILE_FROM_TEMPLATE),
            ("templates/app.hbs", "a\n{{#each data.hosts}}\n  {{this}}\n"),
        ]),
        [
            "templates/app.hbs:2:1: `{{#each}}` is never closed: add `{{/each}}` where the block ends"
        ]
    );
}

#[test]
fn a_block_closed_by_another_names_both() {
    assert_eq!(
        problems_of(&[
            ("roles/web.toml", FILE_FROM_TEMPLATE),
            (
                "templates/app.hbs",
                "{{#each data.hosts}}\n{{#if this}}x{{/each}}\n"
            ),
        ]),
        [
            "templates/app.hbs:2:14: `{{/each}}` closes `{{#if}}`, opened at line 2, column 1: close it with `{{/if}}` first"
        ]
    );
}

#[test]
fn a_broken_data_file_is_one_error_not_one_per_value_it_held() {
    assert_eq!(
        problems_of(&[
            ("roles/web.toml", FILE_FROM_TEMPLATE),
            (
                "templates/app.hbs",
                "port={{data.port}}\nname={{data.name}}\n"
            ),
            ("data/common.toml", "port = 80\nname = \"unterminated\n"),
        ]),
        ["data/common.toml:2:21: invalid basic string, expected `\"`"]
    );
}

#[test]
fn a_value_missing_for_a_node_names_the_tags_of_the_node() {
    assert_eq!(
        problems_of(&[
            (
                "roles/web.toml",
                "[match]\nrole = \"web\"\n\n[[file]]\npath = \"/etc/app.conf\"\ntemplate = \"app.hbs\"\n",
            ),
            ("templates/app.hbs", "port={{data.port}}\n"),
        ]),
        [
            "roles/web.toml:6:1: templates/app.hbs:1:6: Failed to render: template uses `data.port`, which is not defined for the node with tags role=web: define it in data/, pass it in `vars`, or give a fallback with {{default data.port \"...\"}}"
        ]
    );
}
