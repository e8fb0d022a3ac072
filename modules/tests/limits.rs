//! The `limits` provider for a user, which only writes a file
//! (`/etc/security/limits.d/NAME.conf`), converged in a temporary root:
//! created with its folder, unchanged the second time, drift repaired,
//! removed. (A unit's limits are a drop-in followed by `systemctl
//! daemon-reload`, tested in a testbed instance:
//! `integration/tests/systemd_testbed.rs`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cms_modules::{BackupStore, Context, Host, Session, provider};
use cms_roles::{Content, Ensure, Limit, LimitValue, ResourceKind, ResourceLimits};
use tempfile::TempDir;

/// Checks and, unless `noop`, applies one resource in a root; returns its
/// changes as `attribute: from -> to`.
#[track_caller]
fn converge(root: &TempDir, resource: &ResourceKind, noop: bool) -> Vec<String> {
    let host = Host::new(root.path());
    let backup_dir = root.path().join("var/lib/cms-backups");
    let backups = BackupStore::open(backup_dir).expect("opens");
    let contents: BTreeMap<String, Content> = BTreeMap::new();
    let session = Session::default();
    let cx = Context {
        host: &host,
        contents: &contents,
        backups: &backups,
        managed_paths: &BTreeSet::new(),
        session: &session,
        restarts: &cms_modules::UNCOORDINATED,
        sensitive: false,
    };
    let provider = provider(resource);
    let changes = provider.check(&cx).expect("checks");
    if !noop && !changes.is_empty() {
        provider.apply(&changes, &cx).expect("applies");
    }
    assert!(
        !session.daemon_reload_pending(),
        "a user's limits are no unit"
    );
    changes.iter().map(|c| c.to_string()).collect()
}

fn root_with_accounts() -> TempDir {
    let root = TempDir::new().expect("a temporary root");
    std::fs::create_dir_all(root.path().join("etc/security")).expect("creates");
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
    )
    .expect("writes");
    std::fs::write(root.path().join("etc/group"), "root:x:0:\n").expect("writes");
    root
}

fn limits(ensure: Ensure) -> ResourceKind {
    ResourceKind::Limits(ResourceLimits {
        name: "app".into(),
        ensure,
        user: Some("app".into()),
        unit: None,
        nofile: Some(Limit {
            soft: LimitValue::Count(1024),
            hard: LimitValue::Count(65536),
        }),
        nproc: None,
    })
}

#[test]
fn a_users_limits_file_is_created_kept_repaired_and_removed() {
    let root = root_with_accounts();
    let path: PathBuf = root.path().join("etc/security/limits.d/app.conf");
    let wanted = "# Written by cms for limits app; local changes are overwritten.\n\
                  app soft nofile 1024\napp hard nofile 65536\n";

    assert_eq!(
        converge(&root, &limits(Ensure::Present), true),
        ["ensure: absent -> present"]
    );
    assert!(!path.exists(), "--noop writes nothing");
    assert_eq!(
        converge(&root, &limits(Ensure::Present), false),
        ["ensure: absent -> present"]
    );
    assert_eq!(std::fs::read_to_string(&path).expect("written"), wanted);
    assert!(converge(&root, &limits(Ensure::Present), false).is_empty());

    std::fs::write(&path, "app hard nofile 10\n").expect("drifts");
    let changes = converge(&root, &limits(Ensure::Present), false);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert!(changes[0].starts_with("content: sha256:"), "{changes:?}");
    assert_eq!(std::fs::read_to_string(&path).expect("repaired"), wanted);

    assert_eq!(
        converge(&root, &limits(Ensure::Absent), false),
        ["ensure: present -> absent"]
    );
    assert!(!path.exists());
    assert!(converge(&root, &limits(Ensure::Absent), false).is_empty());
}
