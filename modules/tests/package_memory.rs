//! A daemon keeps dpkg's answer from one run to the next
//! (`PackageMemory`): the real `dpkg-query`, on a dpkg database written
//! into a folder (`--admindir` under the host's root) the way dpkg writes
//! it, a new status file renamed into place and journal files in
//! `updates/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use cms_modules::package::{PackageMemory, PackageProvider};
use cms_modules::{BackupStore, Change, Context, Host, Provider, Session};
use cms_roles::{Content, Package, PackageEnsure};

/// One installed package in dpkg's status format; `selection` is
/// `install` or `hold`.
fn stanza(name: &str, selection: &str, version: &str) -> String {
    format!(
        "Package: {name}\nStatus: {selection} ok installed\nPriority: optional\nSection: misc\nMaintainer: cms <cms@example.com>\nArchitecture: all\nVersion: {version}\nDescription: cms test package\n\n"
    )
}

/// Writes the status file as dpkg does: a new file renamed over the old.
fn write_status(root: &Path, stanzas: &[String]) {
    let dir = root.join("var/lib/dpkg");
    std::fs::create_dir_all(dir.join("updates")).expect("mkdir");
    std::fs::write(dir.join("status-new"), stanzas.concat()).expect("write status-new");
    std::fs::rename(dir.join("status-new"), dir.join("status")).expect("rename status");
}

/// A host whose dpkg database holds alpha 1.0 and beta 2.0, held.
fn host_with_alpha_and_held_beta() -> (tempfile::TempDir, Host) {
    let root = tempfile::tempdir().expect("tempdir");
    write_status(
        root.path(),
        &[
            stanza("alpha", "install", "1.0"),
            stanza("beta", "hold", "2.0"),
        ],
    );
    let host = Host::new(root.path());
    (root, host)
}

fn packages() -> Vec<Package> {
    vec![
        Package {
            name: "alpha".into(),
            ensure: PackageEnsure::Version("1.0".into()),
            hold: Some(false),
        },
        Package {
            name: "beta".into(),
            ensure: PackageEnsure::Present,
            hold: Some(true),
        },
    ]
}

/// Checks every package in one session, as a run does; returns the
/// changes found by package and how many commands the run started.
fn check_run(
    host: &Host,
    memory: Option<&Arc<PackageMemory>>,
    packages: &[Package],
) -> (BTreeMap<String, Vec<Change>>, u64) {
    let session = Session::new(packages.iter().map(|p| p.name.clone()).collect())
        .remembering(memory.cloned());
    let backups_dir = tempfile::tempdir().expect("tempdir");
    let backups = BackupStore::open(backups_dir.path()).expect("backups");
    let contents: BTreeMap<String, Content> = BTreeMap::new();
    let managed = BTreeSet::new();
    let cx = Context {
        host,
        contents: &contents,
        backups: &backups,
        managed_paths: &managed,
        session: &session,
        restarts: &cms_modules::UNCOORDINATED,
        sensitive: false,
    };
    let before = host.commands_started();
    let changes = packages
        .iter()
        .map(|package| {
            let changes = PackageProvider(package)
                .check(&cx)
                .unwrap_or_else(|e| panic!("check {}: {e}", package.name));
            (package.name.clone(), changes)
        })
        .collect();
    (changes, host.commands_started() - before)
}

fn changed(changes: &BTreeMap<String, Vec<Change>>) -> Vec<String> {
    changes
        .iter()
        .flat_map(|(name, changes)| {
            changes
                .iter()
                .map(move |c| format!("{name} {}: {} -> {}", c.attribute, c.from, c.to))
        })
        .collect()
}

#[test]
fn a_kept_dpkg_answer_is_used_while_the_database_is_unchanged_and_read_again_once_it_changes() {
    let (root, host) = host_with_alpha_and_held_beta();
    let memory = Arc::new(PackageMemory::default());

    // The first run asks dpkg and keeps its answer; the next asks nobody.
    let (changes, commands) = check_run(&host, Some(&memory), &packages());
    assert_eq!(changed(&changes), Vec::<String>::new());
    assert_eq!(commands, 1, "one dpkg-query for both packages");
    assert!(memory.keeps_an_answer());
    let (changes, commands) = check_run(&host, Some(&memory), &packages());
    assert_eq!(changed(&changes), Vec::<String>::new());
    assert_eq!(commands, 0, "the database is unchanged: no dpkg-query");

    // dpkg replaced its status file (an upgrade of alpha, beta released):
    // the drift is seen at once, and the new answer kept.
    write_status(
        root.path(),
        &[
            stanza("alpha", "install", "1.1"),
            stanza("beta", "install", "2.0"),
        ],
    );
    let expected = vec![
        "alpha version: 1.1 -> 1.0".to_string(),
        "beta hold: not held -> held".to_string(),
    ];
    let (changes, commands) = check_run(&host, Some(&memory), &packages());
    assert_eq!(changed(&changes), expected);
    assert_eq!(commands, 1);
    let (changes, commands) = check_run(&host, Some(&memory), &packages());
    assert_eq!(changed(&changes), expected);
    assert_eq!(commands, 0);

    // A change still in dpkg's journal (`updates/`), not yet merged into
    // the status file, is what dpkg-query answers, so it is seen too.
    std::fs::write(
        root.path().join("var/lib/dpkg/updates/0000"),
        stanza("alpha", "install", "1.0"),
    )
    .expect("write the journal");
    let (changes, commands) = check_run(&host, Some(&memory), &packages());
    assert_eq!(
        changed(&changes),
        vec!["beta hold: not held -> held".to_string()]
    );
    assert_eq!(commands, 1);
}

#[test]
fn a_run_without_memory_asks_dpkg_every_time() {
    let (_root, host) = host_with_alpha_and_held_beta();
    for _ in 0..2 {
        let (changes, commands) = check_run(&host, None, &packages());
        assert_eq!(changed(&changes), Vec::<String>::new());
        assert_eq!(commands, 1);
    }
}

#[test]
fn a_package_the_kept_answer_does_not_cover_is_asked_for() {
    let root = tempfile::tempdir().expect("tempdir");
    let host = Host::new(root.path());
    write_status(root.path(), &[stanza("alpha", "install", "1.0")]);
    let memory = Arc::new(PackageMemory::default());
    let alpha = packages().remove(0);
    let (changes, commands) = check_run(&host, Some(&memory), &[alpha]);
    assert_eq!(changed(&changes), Vec::<String>::new());
    assert_eq!(commands, 1);
    assert!(memory.keeps_an_answer());
    // The next run's catalog has beta too, which the kept answer never
    // asked about: dpkg is asked again and beta found absent.
    let (changes, commands) = check_run(&host, Some(&memory), &packages());
    assert_eq!(commands, 1);
    assert_eq!(
        changed(&changes),
        vec![
            "beta version: absent -> present".to_string(),
            "beta hold: not held -> held".to_string()
        ]
    );
}
