//! Tests of `[restarts]` in `cms.toml`: what a repository's restart
//! budgets read as, how many places a budget gives a group, and what a user
//! is told about a bad value.

use std::collections::BTreeMap;

use crate::{MaxRestarting, RepoFiles, Repository, RestartBudgets};

const HIERARCHY: &str = "[hierarchy]\nlayers = [\"common\"]\n";

/// A repository with this `cms.toml` and the roles web and db.
fn repository_with_settings(settings: &str) -> RepoFiles {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", settings);
    files.insert(
        "roles/web.toml",
        "[match]\nrole = \"web\"\n[[package]]\nname = \"nginx\"\n",
    );
    files.insert(
        "roles/db.toml",
        "[match]\nrole = \"db\"\n[[package]]\nname = \"postgresql\"\n",
    );
    files
}

/// The restart budgets of a valid `cms.toml`.
#[track_caller]
fn budgets(settings: &str) -> Option<RestartBudgets> {
    Repository::parse(repository_with_settings(settings))
        .unwrap_or_else(|d| panic!("parse failed:\n{d}"))
        .settings
        .restarts
}

/// The diagnostics of a `cms.toml` that is refused, one per line.
#[track_caller]
fn refused(settings: &str) -> String {
    match Repository::parse(repository_with_settings(settings)) {
        Ok(repository) => panic!("expected errors, got {:?}", repository.settings.restarts),
        Err(diagnostics) => diagnostics.to_string(),
    }
}

#[track_caller]
fn assert_contains(text: &str, expected: &str) {
    assert!(text.contains(expected), "{expected:?} not in:\n{text}");
}

#[test]
fn without_a_restarts_table_there_is_no_budget() {
    assert_eq!(budgets(HIERARCHY), None);
}

#[test]
fn a_default_and_role_budgets_are_read_as_written() {
    let settings = format!(
        "{HIERARCHY}[restarts]\nmax_restarting = \"10%\"\n[restarts.role.web]\nmax_restarting = 2\n[restarts.role.db]\nmax_restarting = \"1\"\n"
    );
    let expected = RestartBudgets {
        default: Some(MaxRestarting::Percent(10)),
        roles: BTreeMap::from([
            ("web".to_string(), MaxRestarting::Count(2)),
            ("db".to_string(), MaxRestarting::Count(1)),
        ]),
    };
    assert_eq!(budgets(&settings), Some(expected.clone()));
    assert_eq!(expected.for_role("web"), Some(MaxRestarting::Count(2)));
    assert_eq!(expected.for_role("cache"), Some(MaxRestarting::Percent(10)));
}

#[test]
fn a_role_budget_alone_leaves_other_roles_without_one() {
    let written = budgets("[restarts.role.web]\nmax_restarting = \"20%\"\n").expect("budgets");
    assert_eq!(written.default, None);
    assert_eq!(written.for_role("web"), Some(MaxRestarting::Percent(20)));
    assert_eq!(written.for_role("db"), None);
}

#[test]
fn a_budget_is_a_share_or_a_count_and_displays_as_written() {
    for (written, max, toml) in [
        ("\"1%\"", MaxRestarting::Percent(1), "\"1%\""),
        ("\"20%\"", MaxRestarting::Percent(20), "\"20%\""),
        ("\"100%\"", MaxRestarting::Percent(100), "\"100%\""),
        ("\"3\"", MaxRestarting::Count(3), "3"),
        ("3", MaxRestarting::Count(3), "3"),
    ] {
        let settings = format!("[restarts]\nmax_restarting = {written}\n");
        let budget = budgets(&settings).and_then(|b| b.default);
        assert_eq!(budget, Some(max), "max_restarting = {written}");
        assert_eq!(max.to_string(), written.trim_matches('"'));
        assert_eq!(max.as_toml(), toml);
    }
}

#[test]
fn a_share_gives_its_floor_of_the_group_but_at_least_one_place() {
    for (max, group_size, places) in [
        (MaxRestarting::Percent(20), 10, 2),
        (MaxRestarting::Percent(20), 14, 2),
        (MaxRestarting::Percent(20), 15, 3),
        (MaxRestarting::Percent(10), 5, 1),
        (MaxRestarting::Percent(1), 1, 1),
        (MaxRestarting::Percent(50), 0, 1),
        (MaxRestarting::Percent(100), 7, 7),
        (MaxRestarting::Count(2), 10, 2),
        (MaxRestarting::Count(5), 3, 5),
        (MaxRestarting::Count(1), 0, 1),
    ] {
        assert_eq!(max.places(group_size), places, "{max} of {group_size}");
    }
}

#[test]
fn a_bad_budget_is_refused_at_its_value_saying_what_to_write() {
    for (written, reason) in [
        ("\"0%\"", "a share of the nodes is 1% to 100%"),
        ("\"120%\"", "a share of the nodes is 1% to 100%"),
        ("\"0\"", "a number of nodes is 1 or more"),
        ("0", "a number of nodes is 1 or more"),
        ("-2", "a number of nodes is 1 or more"),
        ("\"\"", "not a share of the nodes"),
        ("\"half\"", "not a share of the nodes"),
        ("\" 5\"", "not a share of the nodes"),
        ("true", "not a number nor a string"),
        ("0.5", "not a number nor a string"),
    ] {
        let errors = refused(&format!(
            "{HIERARCHY}[restarts]\nmax_restarting = {written}\n"
        ));
        assert_contains(
            &errors,
            &format!("cms.toml:4:18: [restarts] max_restarting = {written}: {reason}"),
        );
        assert_contains(
            &errors,
            "write max_restarting = \"20%\" (a share of the role group's nodes) or max_restarting = 2 (a number of nodes)",
        );
        assert_eq!(errors.lines().count(), 1, "{errors}");
    }
}

#[test]
fn a_bad_role_budget_is_refused_at_its_value_naming_the_role() {
    let errors = refused("[restarts.role.web]\nmax_restarting = \"200%\"\n");
    assert_eq!(
        errors,
        "cms.toml:2:18: [restarts.role.web] max_restarting = \"200%\": a share of the nodes is 1% to 100%; write max_restarting = \"20%\" (a share of the role group's nodes) or max_restarting = 2 (a number of nodes)"
    );
}

#[test]
fn a_role_table_without_a_budget_is_refused() {
    let errors = refused("[restarts.role.web]\n");
    assert_eq!(
        errors,
        "cms.toml:1:16: [restarts.role.web] has no max_restarting: write max_restarting = 2 (or \"20%\") below it, or remove the table"
    );
}

#[test]
fn a_budget_for_a_role_that_does_not_exist_is_refused_at_its_line() {
    let errors = refused(
        "[restarts]\nmax_restarting = 1\n[restarts.role.web]\nmax_restarting = 2\n[restarts.role.wbe]\nmax_restarting = 2\n",
    );
    assert_eq!(
        errors,
        "cms.toml:5:16: [restarts.role.wbe] names no role: there is no roles/wbe.toml; name an existing role or remove the table"
    );
}

#[test]
fn unknown_restarts_keys_are_refused_with_a_suggestion() {
    let errors = refused("[restarts]\nmax_restartng = 1\n");
    assert_eq!(
        errors,
        "cms.toml:2:1: [restarts] unknown field `max_restartng`, expected one of max_restarting, role (did you mean `max_restarting`?)"
    );
    let errors = refused("[restarts.role.web]\nmax_restartin = 1\n");
    assert_eq!(
        errors,
        "cms.toml:2:1: [restarts.role.web] unknown field `max_restartin`, expected one of max_restarting (did you mean `max_restarting`?)"
    );
}

#[test]
fn a_misspelt_restarts_table_is_refused_with_a_suggestion() {
    let errors = refused("[restart]\nmax_restarting = 1\n");
    assert_contains(&errors, "cms.toml:1:2: unknown field `restart`");
    assert_contains(&errors, "(did you mean `restarts`?)");
}

#[test]
fn restarts_and_its_roles_must_be_tables() {
    assert_eq!(
        refused("restarts = \"10%\"\n"),
        "cms.toml:1:1: `restarts` must be a table: write [restarts] on a line of its own, with max_restarting = \"10%\" below it"
    );
    assert_eq!(
        refused("[restarts]\nrole = \"web\"\n"),
        "cms.toml:2:1: [restarts] role must be a table of roles: write [restarts.role.web] on a line of its own, with max_restarting = 2 below it"
    );
    assert_eq!(
        refused("[restarts.role]\nweb = 2\n"),
        "cms.toml:2:1: [restarts.role.web] must be a table: write [restarts.role.web] on a line of its own, with max_restarting = 2 below it"
    );
}

#[test]
fn a_mistake_in_the_restarts_table_leaves_the_rest_in_force() {
    let (repository, diagnostics) = Repository::load(repository_with_settings(
        "[restarts]\nmax_restarting = \"0%\"\n[restarts.role.web]\nmax_restarting = 2\n",
    ));
    assert_eq!(diagnostics.len(), 1, "{diagnostics}");
    assert!(repository.settings_ok);
    assert_eq!(
        repository.settings.restarts,
        Some(RestartBudgets {
            default: None,
            roles: BTreeMap::from([("web".to_string(), MaxRestarting::Count(2))]),
        })
    );
}
