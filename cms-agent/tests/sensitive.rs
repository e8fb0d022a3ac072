//! A sensitive resource (one that used a secret) shows no value anywhere
//! the agent writes a run: the text output, `--format json`, `last_run.json`,
//! the report sent to the server and the metrics textfile. A content change
//! reads `content changed (sensitive)`; a non-sensitive file in the same run
//! still shows its diff. Each test converges a real catalog on this machine,
//! inside its own temporary directory.

use std::collections::BTreeMap;
use std::path::Path;

use cms_agent::converge::{ConvergeOptions, converge};
use cms_agent::output::{Colour, write_text};
use cms_agent::report::{RunReport, Status, to_proto};
use cms_modules::{BackupStore, Host};
use cms_roles::{Catalog, Node, RepoFiles, Repository, compile};
use sha2::Digest;

const OLD_SECRET: &str = "hunter2-old-db-password";
const NEW_SECRET: &str = "correct-horse-new-db-password";

/// Compiles `role` with `{dir}` replaced, and marks the resources whose
/// reference contains one of `sensitive` as the compiler does for those
/// that used a secret.
fn catalog(dir: &Path, role: &str, sensitive: &[&str]) -> Catalog {
    let mut files = RepoFiles::new();
    files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
    files.insert(
        "roles/test.toml",
        role.replace("{dir}", &dir.display().to_string()),
    );
    let repository = Repository::parse(files).unwrap_or_else(|d| panic!("{d}"));
    let node = Node {
        id: "test".into(),
        tags: BTreeMap::new(),
        facts: BTreeMap::new(),
        attested: BTreeMap::new(),
    };
    let mut catalog = compile(&repository, &node).unwrap_or_else(|d| panic!("{d}"));
    for resource in &mut catalog.resources {
        if sensitive.iter().any(|s| resource.reference.contains(s)) {
            resource.sensitive = true;
        }
    }
    catalog
}

fn run(dir: &Path, catalog: &Catalog, noop: bool) -> RunReport {
    let backups = BackupStore::open(dir.join("backups")).expect("backup store");
    converge(
        catalog,
        &Host::system(),
        &backups,
        &ConvergeOptions {
            noop,
            run_id: "test".into(),
            package_memory: None,
        },
        &cms_modules::UNCOORDINATED,
    )
}

/// Everything the agent writes about a run, as text.
fn every_rendering(dir: &Path, report: &RunReport) -> Vec<(&'static str, String)> {
    let mut text = Vec::new();
    write_text(&mut text, report, Colour::Never).expect("text output");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    cms_agent::state::save_report(&state, report).expect("last_run.json");
    let proto = to_proto(report, "rev", None);
    vec![
        ("text output", String::from_utf8(text).expect("utf-8")),
        (
            "--format json",
            serde_json::to_string_pretty(report).expect("json"),
        ),
        (
            "last_run.json",
            std::fs::read_to_string(state.join("last_run.json")).expect("read"),
        ),
        ("report to the server", format!("{proto:?}")),
        ("textfile", cms_agent::textfile::render(report)),
    ]
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn assert_nothing_shows(renderings: &[(&str, String)], values: &[&str]) {
    for (place, text) in renderings {
        for value in values {
            assert!(
                !text.contains(value),
                "{place} shows a sensitive value ({value}):\n{text}"
            );
        }
    }
}

const FILES_ROLE: &str = r#"
[[file]]
path = "{dir}/db.conf"
content = "password = correct-horse-new-db-password\n"

[[file]]
path = "{dir}/plain.conf"
content = "colour = blue\n"
"#;

#[test]
fn a_sensitive_content_change_shows_no_diff_hash_or_value_anywhere_and_a_plain_one_keeps_its_diff()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let old_db = format!("password = {OLD_SECRET}\n");
    std::fs::write(dir.path().join("db.conf"), &old_db).expect("write");
    std::fs::write(dir.path().join("plain.conf"), "colour = red\n").expect("write");
    let catalog = catalog(dir.path(), FILES_ROLE, &["db.conf"]);
    let new_db = format!("password = {NEW_SECRET}\n");
    let hidden = [
        OLD_SECRET,
        NEW_SECRET,
        &sha256_hex(old_db.as_bytes()),
        &sha256_hex(new_db.as_bytes()),
    ];
    for noop in [true, false] {
        let report = run(dir.path(), &catalog, noop);
        assert_eq!(report.summary.changed, 2, "{report:#?}");
        let renderings = every_rendering(dir.path(), &report);
        assert_nothing_shows(&renderings, &hidden);
        let text = &renderings[0].1;
        assert!(text.contains("content changed (sensitive)"), "{text}");
        for (place, rendering) in &renderings[..4] {
            assert!(
                rendering.contains("+colour = blue") && rendering.contains("-colour = red"),
                "{place} lost the plain file's diff:\n{rendering}"
            );
        }
    }
    // The real run wrote the secret byte-exact.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("db.conf")).unwrap(),
        new_db
    );
}

#[test]
fn a_new_sensitive_file_is_created_owner_only_without_showing_its_content() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = catalog(dir.path(), FILES_ROLE, &["db.conf"]);
    let report = run(dir.path(), &catalog, false);
    assert_nothing_shows(&every_rendering(dir.path(), &report), &[NEW_SECRET]);
    let mode = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("db.conf"), 0o600);
    assert_eq!(mode("plain.conf"), 0o644);
}

const EXEC_ROLE: &str = r#"
[[exec]]
name = "set-password"
command = "echo 'token=correct-horse-new-db-password' >&2; exit 3"

[[exec]]
name = "plain"
command = "echo 'disk on fire' >&2; exit 3"
"#;

#[test]
fn a_failing_sensitive_exec_shows_neither_its_command_nor_its_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let catalog = catalog(dir.path(), EXEC_ROLE, &["set-password"]);
    for noop in [true, false] {
        let report = run(dir.path(), &catalog, noop);
        let renderings = every_rendering(dir.path(), &report);
        assert_nothing_shows(&renderings, &[NEW_SECRET, "token="]);
        if !noop {
            let failed = &report.resources[0];
            assert_eq!(failed.status, Status::Failed);
            assert!(
                failed.error.as_deref().unwrap().contains("(sensitive)"),
                "{failed:?}"
            );
            // A plain exec still says what went wrong.
            let text = &renderings[0].1;
            assert!(text.contains("disk on fire"), "{text}");
        }
    }
}
