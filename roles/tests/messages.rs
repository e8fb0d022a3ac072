//! The exact words of errors a first-time user meets, one test each, so a
//! change of wording is a reviewed change of this file.

use cms_roles::{RepoFiles, Repository, example_facts, validate};

/// The problems `check` reports for one role file, one per line.
fn problems_of_role(role: &str) -> Vec<String> {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    files.insert("roles/web.toml", role.as_bytes());
    let (repository, mut diagnostics) = Repository::load(files);
    diagnostics.extend(validate(&repository, &example_facts()));
    diagnostics
        .into_sorted()
        .iter()
        .map(ToString::to_string)
        .collect()
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
