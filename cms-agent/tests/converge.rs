//! The converge engine on real commands and files: ordering, failures and
//! what they skip, notifications, noop, and exit codes. Each test compiles a
//! small role and converges it on this machine, with every command writing
//! only inside the test's own temporary directory.

use std::collections::BTreeMap;
use std::path::Path;

use cms_agent::converge::{ConvergeOptions, converge};
use cms_agent::report::{RunReport, Status};
use cms_modules::{BackupStore, Host};
use cms_roles::{Node, RepoFiles, Repository, compile};

/// Compiles `role` (the text of one role file) with `{dir}` replaced by
/// the test's directory, and converges it on `host`.
fn run(dir: &Path, host: &Host, role: &str, noop: bool) -> RunReport {
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
    let catalog = compile(&repository, &node).unwrap_or_else(|d| panic!("{d}"));
    let backups = BackupStore::open(dir.join("backups")).expect("backup store");
    converge(
        &catalog,
        host,
        &backups,
        &ConvergeOptions {
            noop,
            run_id: "test".into(),
            package_memory: None,
        },
        &cms_modules::UNCOORDINATED,
    )
}

fn status<'r>(report: &'r RunReport, reference: &str) -> &'r Status {
    &report
        .resources
        .iter()
        .find(|r| r.reference == reference)
        .unwrap_or_else(|| panic!("no {reference} in report"))
        .status
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

const FAILURE_ROLE: &str = r#"
[[exec]]
name = "broken"
command = "echo 'disk on fire' >&2; exit 3"

[[exec]]
name = "needs-broken"
command = "touch {dir}/needs-broken"
require = ["exec:broken"]

[[exec]]
name = "needs-needs-broken"
command = "touch {dir}/needs-needs-broken"
require = ["exec:needs-broken"]

[[exec]]
name = "independent"
command = "touch {dir}/independent"
creates = "{dir}/independent"
"#;

#[test]
fn a_failed_resource_skips_its_dependents_and_the_rest_still_converges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = run(dir.path(), &Host::system(), FAILURE_ROLE, false);
    assert_eq!(status(&report, "exec:broken"), &Status::Failed);
    let broken = report
        .resources
        .iter()
        .find(|r| r.reference == "exec:broken")
        .expect("broken");
    let error = broken.error.as_deref().expect("error");
    assert!(
        error.contains("exited with status 3") && error.contains("disk on fire"),
        "{error}"
    );
    assert_eq!(status(&report, "exec:needs-broken"), &Status::Skipped);
    assert_eq!(status(&report, "exec:needs-needs-broken"), &Status::Skipped);
    assert_eq!(status(&report, "exec:independent"), &Status::Changed);
    assert!(dir.path().join("independent").exists());
    assert!(!dir.path().join("needs-broken").exists());
    assert_eq!(report.exit_code(), 6);
}

#[test]
fn exit_codes_say_unchanged_changed_or_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let role =
        "[[exec]]\nname = \"once\"\ncommand = \"touch {dir}/once\"\ncreates = \"{dir}/once\"\n";
    assert_eq!(run(dir.path(), &Host::system(), role, false).exit_code(), 2);
    assert_eq!(run(dir.path(), &Host::system(), role, false).exit_code(), 0);
    let failing = "[[exec]]\nname = \"fails\"\ncommand = \"exit 1\"\n";
    assert_eq!(
        run(dir.path(), &Host::system(), failing, false).exit_code(),
        4
    );
}

const NOTIFY_ROLE: &str = r#"
[[exec]]
name = "first-change"
command = "touch {dir}/a"
creates = "{dir}/a"
notify = ["exec:reload"]

[[exec]]
name = "second-change"
command = "touch {dir}/b"
creates = "{dir}/b"
notify = ["exec:reload"]

[[exec]]
name = "unchanged"
command = "true"
creates = "/"
notify = ["exec:reload"]

[[exec]]
name = "reload"
command = "echo reloaded >> {dir}/reloads"
refreshonly = true
"#;

#[test]
fn a_notified_resource_refreshes_once_after_all_its_notifiers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = run(dir.path(), &Host::system(), NOTIFY_ROLE, false);
    assert_eq!(read(&dir.path().join("reloads")), "reloaded\n");
    let order: Vec<&str> = report
        .resources
        .iter()
        .map(|r| r.reference.as_str())
        .collect();
    assert_eq!(order.last(), Some(&"exec:reload"));
    assert_eq!(status(&report, "exec:reload"), &Status::Changed);

    // Nothing changed the second time: no refresh.
    let again = run(dir.path(), &Host::system(), NOTIFY_ROLE, false);
    assert_eq!(read(&dir.path().join("reloads")), "reloaded\n");
    assert_eq!(status(&again, "exec:reload"), &Status::Unchanged);
    assert_eq!(again.exit_code(), 0);
}

#[test]
fn noop_changes_nothing_and_lists_the_refreshes_a_real_run_would_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = run(dir.path(), &Host::system(), NOTIFY_ROLE, true);
    assert!(report.noop);
    assert!(!dir.path().join("a").exists());
    assert!(!dir.path().join("reloads").exists());
    let reload = report
        .resources
        .iter()
        .find(|r| r.reference == "exec:reload")
        .expect("reload");
    assert_eq!(reload.status, Status::Changed);
    assert!(
        reload
            .refresh
            .as_deref()
            .is_some_and(|r| r.contains("would run")),
        "{reload:?}"
    );
    assert_eq!(report.exit_code(), 2);
}

#[test]
fn under_a_root_only_files_are_applied_and_commands_are_skipped_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    let role = "[[exec]]\nname = \"would-touch-the-machine\"\ncommand = \"touch {dir}/escaped\"\n";
    let report = run(dir.path(), &Host::new(&root), role, false);
    assert_eq!(
        status(&report, "exec:would-touch-the-machine"),
        &Status::Skipped
    );
    assert!(!dir.path().join("escaped").exists());
    assert!(
        report.resources[0]
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("--root"))
    );
}

#[test]
fn noop_predicts_the_missing_parent_the_real_run_fails_on_and_names_the_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    // /etc exists in the root; /etc/app is declared, so /etc/app/app.conf
    // will find its parent; /opt/app (a package's folder) is not there.
    let role = r#"
[[directory]]
path = "/etc/app"

[[file]]
path = "/etc/app/app.conf"
content = "a = 1\n"

[[symlink]]
path = "/etc/app/current"
target = "/opt/app"

[[file]]
path = "/opt/app/app.conf"
content = "b = 2\n"
"#;
    let host = Host::new(&root);
    let noop = run(dir.path(), &host, role, true);
    let real = run(dir.path(), &host, role, false);

    for report in [&noop, &real] {
        assert_eq!(status(report, "directory:/etc/app"), &Status::Changed);
        assert_eq!(status(report, "file:/etc/app/app.conf"), &Status::Changed);
        assert_eq!(status(report, "symlink:/etc/app/current"), &Status::Changed);
        assert_eq!(status(report, "file:/opt/app/app.conf"), &Status::Failed);
    }
    let error = |report: &RunReport| {
        report
            .resources
            .iter()
            .find(|r| r.reference == "file:/opt/app/app.conf")
            .and_then(|r| r.error.clone())
            .expect("an error")
    };
    assert_eq!(error(&noop), error(&real), "noop predicts the real message");
    assert_eq!(
        error(&noop),
        format!(
            "Failed to create /opt/app/app.conf under the root {root}: its parent directory /opt/app ({root}/opt/app) does not exist; declare /opt/app as a directory resource, or create it in the root first (packages are not installed under --root, so a directory a package would create is missing there)",
            root = root.display()
        )
    );
    assert_eq!(noop.exit_code(), real.exit_code());
}

#[test]
fn a_notified_exec_that_already_ran_in_this_run_does_not_run_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let role = r#"
[[exec]]
name = "notifier"
command = "touch {dir}/trigger"
creates = "{dir}/trigger"
notify = ["exec:counted"]

[[exec]]
name = "counted"
command = "echo ran >> {dir}/count"
unless = "test -f {dir}/count"
"#;
    let report = run(dir.path(), &Host::system(), role, false);
    assert_eq!(status(&report, "exec:counted"), &Status::Changed);
    assert_eq!(read(&dir.path().join("count")), "ran\n");
}

#[test]
fn noop_does_not_promise_a_refresh_that_the_guards_would_prevent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let role = r#"
[[exec]]
name = "notifier"
command = "touch {dir}/trigger"
creates = "{dir}/trigger"
notify = ["exec:guarded"]

[[exec]]
name = "guarded"
command = "echo ran >> {dir}/count"
onlyif = "false"
refreshonly = true
"#;
    let report = run(dir.path(), &Host::system(), role, true);
    let guarded = report
        .resources
        .iter()
        .find(|r| r.reference == "exec:guarded")
        .expect("guarded");
    assert_eq!(guarded.status, Status::Unchanged, "{guarded:?}");
    assert_eq!(guarded.refresh, None);
}

#[test]
fn an_absent_directory_with_purge_is_removed_with_its_contents() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("old/nested")).expect("mkdir");
    std::fs::write(dir.path().join("old/nested/file"), "x").expect("write");
    let role = "[[directory]]\npath = \"{dir}/old\"\nensure = \"absent\"\npurge = true\n";
    let report = run(dir.path(), &Host::system(), role, false);
    assert_eq!(report.exit_code(), 2, "{report:?}");
    assert!(!dir.path().join("old").exists());
}

#[test]
fn temporary_files_of_a_killed_run_are_swept_from_managed_directories_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc/app")).expect("mkdir");
    std::fs::create_dir_all(root.join("var/unmanaged")).expect("mkdir");
    let host = Host::new(&root);
    let role = "[[directory]]\npath = \"/etc/app\"\n\n[[file]]\npath = \"/etc/app/app.conf\"\ncontent = \"managed\\n\"\n";
    assert_eq!(run(dir.path(), &host, role, false).exit_code(), 2);
    // A run killed while writing a file the catalog no longer changes (or
    // has dropped) leaves its temporary file behind.
    let mut finished = std::process::Command::new("true")
        .spawn()
        .expect("runs true");
    let dead_pid = finished.id();
    finished.wait().expect("waits");
    let leftover = root.join(format!("etc/app/.cms-tmp-{dead_pid}-0-old.conf"));
    let of_a_running_process = root.join("etc/app/.cms-tmp-1-0-app.conf");
    let not_managed = root.join(format!("var/unmanaged/.cms-tmp-{dead_pid}-0-x"));
    for path in [&leftover, &of_a_running_process, &not_managed] {
        std::fs::write(path, b"half").expect("writes");
    }

    let noop = run(dir.path(), &host, role, true);
    assert!(leftover.exists(), "a noop run changes nothing");
    let report = run(dir.path(), &host, role, false);

    assert_eq!(noop.exit_code(), 0);
    assert_eq!(report.exit_code(), 0, "nothing else to change");
    assert!(
        !leftover.exists(),
        "the killed run's temporary file is gone"
    );
    assert!(of_a_running_process.exists());
    assert!(not_managed.exists(), "only managed directories are swept");
}
