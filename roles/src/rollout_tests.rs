//! Tests of `[rollout]` in `cms.toml`: what a repository's rollout policy
//! reads as, and what a user is told about a bad value.

use std::time::Duration;

use crate::{Batch, RepoFiles, Repository, RolloutPolicy};

const HIERARCHY: &str = "[hierarchy]\nlayers = [\"common\"]\n";

/// A repository with this `cms.toml` and one role.
fn repository_with_settings(settings: &str) -> RepoFiles {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", settings);
    files.insert("roles/base.toml", "[[package]]\nname = \"curl\"\n");
    files
}

/// The rollout policy of a valid `cms.toml`.
#[track_caller]
fn policy(settings: &str) -> Option<RolloutPolicy> {
    Repository::parse(repository_with_settings(settings))
        .unwrap_or_else(|d| panic!("parse failed:\n{d}"))
        .settings
        .rollout
}

/// The diagnostics of a `cms.toml` that is refused, one per line.
#[track_caller]
fn refused(settings: &str) -> String {
    match Repository::parse(repository_with_settings(settings)) {
        Ok(repository) => panic!("expected errors, got {:?}", repository.settings.rollout),
        Err(diagnostics) => diagnostics.to_string(),
    }
}

#[track_caller]
fn assert_contains(text: &str, expected: &str) {
    assert!(text.contains(expected), "{expected:?} not in:\n{text}");
}

#[test]
fn without_a_rollout_table_there_is_no_policy() {
    assert_eq!(policy(HIERARCHY), None);
}

#[test]
fn a_full_rollout_table_is_read_as_written() {
    let settings = format!(
        "{HIERARCHY}[rollout]\ncanary = 2\nbatch = \"20%\"\nbake = \"2m\"\nmax_failures = 3\ntimeout = \"1h\"\n"
    );
    assert_eq!(
        policy(&settings),
        Some(RolloutPolicy {
            canary: 2,
            batch: Batch::Percent(20),
            bake: Duration::from_secs(120),
            max_failures: 3,
            timeout: Duration::from_secs(3600),
        })
    );
}

#[test]
fn an_empty_rollout_table_takes_the_defaults() {
    let expected = RolloutPolicy {
        canary: 1,
        batch: Batch::All,
        bake: Duration::ZERO,
        max_failures: 0,
        timeout: Duration::from_secs(600),
    };
    assert_eq!(policy(&format!("{HIERARCHY}[rollout]\n")), Some(expected));
    assert_eq!(RolloutPolicy::default(), expected);
    // Without [hierarchy] too: the two tables are independent.
    assert_eq!(policy("[rollout]\n"), Some(expected));
}

#[test]
fn a_batch_is_a_share_a_count_or_the_rest_and_displays_as_written() {
    for (written, batch) in [
        ("", Batch::All),
        ("1%", Batch::Percent(1)),
        ("20%", Batch::Percent(20)),
        ("100%", Batch::Percent(100)),
        ("1", Batch::Count(1)),
        ("5", Batch::Count(5)),
    ] {
        let settings = format!("[rollout]\nbatch = \"{written}\"\n");
        let policy = policy(&settings).expect("a policy");
        assert_eq!(policy.batch, batch, "batch = {written:?}");
        assert_eq!(policy.batch.to_string(), written);
    }
}

#[test]
fn a_duration_may_be_written_in_seconds_minutes_hours_or_days() {
    let written = policy("[rollout]\nbake = \"30s\"\ntimeout = \"1d\"\n").expect("a policy");
    assert_eq!(written.bake, Duration::from_secs(30));
    assert_eq!(written.timeout, Duration::from_secs(86400));
    // A bare number is seconds, as in resource fields.
    let in_seconds = policy("[rollout]\nbake = 90\n").expect("a policy");
    assert_eq!(in_seconds.bake, Duration::from_secs(90));
}

#[test]
fn a_bad_batch_is_refused_at_its_value_saying_what_to_write() {
    for (written, reason) in [
        ("\"0%\"", "a share of the nodes is 1% to 100%"),
        ("\"120%\"", "a share of the nodes is 1% to 100%"),
        ("\"0\"", "a number of nodes is 1 or more"),
        ("\"all\"", "not a share of the nodes"),
        ("\"-5\"", "not a share of the nodes"),
        ("\" 5\"", "not a share of the nodes"),
        ("5", "a number of nodes is written as a string"),
        ("true", "not a string"),
    ] {
        let errors = refused(&format!(
            "{HIERARCHY}[rollout]\ncanary = 1\nbatch = {written}\n"
        ));
        assert_contains(
            &errors,
            &format!("cms.toml:5:9: [rollout] batch = {written}: {reason}"),
        );
        assert_contains(&errors, "write batch = \"20%\" or \"5\"");
        assert_eq!(errors.lines().count(), 1, "{errors}");
    }
}

#[test]
fn a_bad_canary_or_max_failures_is_refused_at_its_value() {
    let errors = refused("[rollout]\ncanary = -1\nmax_failures = \"2\"\n");
    assert_contains(
        &errors,
        "cms.toml:2:10: [rollout] canary = -1 is not a number of nodes: write a whole number, 0 or more, e.g. canary = 1",
    );
    assert_contains(
        &errors,
        "cms.toml:3:16: [rollout] max_failures = \"2\" is not a number of nodes: write a whole number, 0 or more, e.g. max_failures = 0",
    );
}

#[test]
fn a_bad_bake_or_timeout_is_refused_at_its_value() {
    let errors = refused("[rollout]\nbake = \"2 minutes\"\ntimeout = \"5w\"\n");
    assert_contains(
        &errors,
        "cms.toml:2:8: [rollout] bake = \"2 minutes\" is not a duration: write a number with a unit s, m, h or d, e.g. bake = \"2m\"",
    );
    assert_contains(
        &errors,
        "cms.toml:3:11: [rollout] timeout = \"5w\" is not a duration: write a number with a unit s, m, h or d, e.g. timeout = \"10m\"",
    );
}

#[test]
fn a_duration_too_long_to_count_is_refused_rather_than_wrapped() {
    let errors = refused("[rollout]\nbake = \"999999999999999999d\"\n");
    assert_contains(
        &errors,
        "cms.toml:2:8: [rollout] bake = \"999999999999999999d\" is not a duration",
    );
}

#[test]
fn a_zero_timeout_is_refused_at_its_value() {
    let errors = refused("[rollout]\n  timeout = \"0s\"\n");
    assert_eq!(
        errors,
        "cms.toml:2:13: [rollout] timeout = \"0s\" leaves a node no time to report: write a duration above zero, e.g. timeout = \"10m\""
    );
}

#[test]
fn every_bad_value_of_the_table_is_reported_at_once() {
    let errors = refused("[rollout]\ncanary = -1\nbatch = \"0%\"\nbake = \"x\"\ntimeout = 0\n");
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 4, "{errors}");
    for (line, expected) in lines.iter().zip([
        "cms.toml:2:10:",
        "cms.toml:3:9:",
        "cms.toml:4:8:",
        "cms.toml:5:11:",
    ]) {
        assert!(line.starts_with(expected), "{expected} in:\n{errors}");
    }
}

#[test]
fn an_unknown_rollout_key_is_refused_with_a_suggestion() {
    let errors = refused("[rollout]\ncanary = 1\nbatches = \"5\"\n");
    assert_eq!(
        errors,
        "cms.toml:3:1: [rollout] unknown field `batches`, expected one of canary, batch, bake, max_failures, timeout (did you mean `batch`?)"
    );
}

#[test]
fn a_misspelt_rollout_table_is_refused_with_a_suggestion() {
    let errors = refused("[rollot]\ncanary = 1\n");
    assert_contains(&errors, "cms.toml:1:2: unknown field `rollot`");
    assert_contains(&errors, "(did you mean `rollout`?)");
}

#[test]
fn a_rollout_that_is_not_a_table_is_refused() {
    let errors = refused("rollout = \"canary\"\n");
    assert_eq!(
        errors,
        "cms.toml:1:1: `rollout` must be a table: write [rollout] on a line of its own, with its keys below it"
    );
}

#[test]
fn a_mistake_in_the_rollout_table_leaves_the_hierarchy_in_force() {
    let (repository, diagnostics) = Repository::load(repository_with_settings(
        "[hierarchy]\nlayers = [\"role/{{tag.role}}\", \"common\"]\n[rollout]\nbatch = \"0\"\n",
    ));
    assert_eq!(diagnostics.len(), 1, "{diagnostics}");
    assert!(repository.settings_ok);
    assert_eq!(
        repository.settings.hierarchy.layers,
        ["role/{{tag.role}}", "common"]
    );
    // The bad value is left at its default.
    assert_eq!(repository.settings.rollout, Some(RolloutPolicy::default()));
}
