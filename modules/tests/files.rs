//! The file, directory and symlink providers and the backup store, tested on
//! a host whose root is a temporary directory, with a backup store in
//! another one. Tests talk about resources, files and changes; the
//! [`TestHost`] at the top is the only place that knows how providers are
//! called.

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use cms_modules::host::fs::{FileAttributes, FileKind, TEMPORARY_FILE_PREFIX, sha256_hex};
use cms_modules::{
    BackupStore, Change, Context, Host, ProviderError, Session, backup::BackupError, provider,
};
use cms_roles::{
    AuthorizedKeys, Content, Directory, Ensure, File, KernelModule, Mode, ModuleEnsure,
    ResourceKind, Symlink, Sysctl, SysctlValue,
};
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// Harness

/// A host rooted in a temporary directory, its backup store, and the
/// contents the resources refer to.
struct TestHost {
    root: TempDir,
    _backup_dir: TempDir,
    host: Host,
    backups: BackupStore,
    contents: BTreeMap<String, Content>,
    session: Session,
    /// Whether the resources run are sensitive (used a secret).
    sensitive: std::cell::Cell<bool>,
}

impl TestHost {
    fn new() -> TestHost {
        let root = TempDir::new().expect("a temporary root");
        let backup_dir = TempDir::new().expect("a temporary backup directory");
        let host = Host::new(root.path());
        let backups = BackupStore::open(backup_dir.path().join("backups")).expect("opens");
        TestHost {
            root,
            _backup_dir: backup_dir,
            host,
            backups,
            contents: BTreeMap::new(),
            session: Session::default(),
            sensitive: std::cell::Cell::new(false),
        }
    }

    /// A file resource with this content (registered in the catalog's
    /// contents).
    fn file_with_content(&mut self, path: &str, content: &[u8]) -> File {
        let sha256 = sha256_hex(content);
        self.contents
            .insert(sha256.clone(), Content(content.to_vec()));
        File {
            content_sha256: Some(sha256),
            ..file(path)
        }
    }

    /// What `check` says for each resource that differs, one line per
    /// change: `file:/etc/app.conf content: … -> …`.
    #[track_caller]
    fn check(&self, resources: &[ResourceKind]) -> Vec<String> {
        self.run(resources, false)
    }

    /// Checks and applies each resource in order, as the agent does;
    /// returns what was changed, as `check` lines.
    #[track_caller]
    fn converge(&self, resources: &[ResourceKind]) -> Vec<String> {
        self.run(resources, true)
    }

    #[track_caller]
    fn run(&self, resources: &[ResourceKind], apply: bool) -> Vec<String> {
        let mut lines = Vec::new();
        for resource in resources {
            let changes = self
                .try_run(resources, resource, apply)
                .unwrap_or_else(|error| {
                    panic!("{}: {}", resource.reference(), error_chain(&error))
                });
            lines.extend(
                changes
                    .iter()
                    .map(|change| format!("{} {change}", resource.reference())),
            );
        }
        lines
    }

    /// One resource, with the others of `catalog` as the managed paths;
    /// returns its changes, or its error.
    fn try_run(
        &self,
        catalog: &[ResourceKind],
        resource: &ResourceKind,
        apply: bool,
    ) -> Result<Vec<Change>, ProviderError> {
        let managed_paths: BTreeSet<String> = catalog
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    ResourceKind::File(_) | ResourceKind::Directory(_) | ResourceKind::Symlink(_)
                )
            })
            .map(|r| r.name().to_string())
            .collect();
        let cx = Context {
            host: &self.host,
            contents: &self.contents,
            backups: &self.backups,
            managed_paths: &managed_paths,
            session: &self.session,
            restarts: &cms_modules::UNCOORDINATED,
            sensitive: self.sensitive.get(),
        };
        let provider = provider(resource);
        let changes = provider.check(&cx)?;
        if apply && !changes.is_empty() {
            provider.apply(&changes, &cx)?;
        }
        Ok(changes)
    }

    /// The changes of one resource checked alone, with their diffs.
    #[track_caller]
    fn check_changes(&self, resource: &ResourceKind) -> Vec<Change> {
        self.try_run(std::slice::from_ref(resource), resource, false)
            .unwrap_or_else(|error| panic!("{}", error_chain(&error)))
    }

    /// The error converging one resource alone gives.
    #[track_caller]
    fn converge_error(&self, resource: &ResourceKind) -> String {
        match self.try_run(std::slice::from_ref(resource), resource, true) {
            Ok(changes) => panic!("expected an error, got changes {changes:?}"),
            Err(error) => error_chain(&error),
        }
    }

    /// Where a catalog path is on the real filesystem.
    fn real(&self, path: &str) -> PathBuf {
        self.host.path(path)
    }

    /// Writes a file directly (not through a provider), with its parents.
    fn write(&self, path: &str, content: &[u8]) {
        let real = self.real(path);
        std::fs::create_dir_all(real.parent().expect("a parent")).expect("creates parents");
        std::fs::write(&real, content).expect("writes");
    }

    fn mkdir(&self, path: &str) {
        std::fs::create_dir_all(self.real(path)).expect("creates the directory");
    }

    fn read(&self, path: &str) -> String {
        String::from_utf8(std::fs::read(self.real(path)).expect("reads")).expect("UTF-8")
    }

    fn exists(&self, path: &str) -> bool {
        self.real(path).symlink_metadata().is_ok()
    }

    fn mode(&self, path: &str) -> u32 {
        self.real(path).symlink_metadata().expect("exists").mode() & 0o7777
    }

    fn owner(&self, path: &str) -> (u32, u32) {
        let metadata = self.real(path).symlink_metadata().expect("exists");
        (metadata.uid(), metadata.gid())
    }

    fn chmod(&self, path: &str, mode: u32) {
        std::fs::set_permissions(self.real(path), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    }

    fn link_target(&self, path: &str) -> String {
        std::fs::read_link(self.real(path))
            .expect("a symlink")
            .to_string_lossy()
            .into_owned()
    }

    /// Every object under the root with everything `check` could change
    /// about it, inode and modification time included, so a rewrite of the
    /// same content shows too.
    fn snapshot(&self) -> BTreeMap<String, String> {
        let mut snapshot = BTreeMap::new();
        snapshot_into(self.root.path(), self.root.path(), &mut snapshot);
        snapshot
    }

    /// Files left behind by atomic writes anywhere under the root.
    fn temporary_files(&self) -> Vec<String> {
        self.snapshot()
            .into_keys()
            .filter(|path| {
                Path::new(path)
                    .file_name()
                    .is_some_and(|name| name.to_string_lossy().starts_with(TEMPORARY_FILE_PREFIX))
            })
            .collect()
    }

    /// The contents of the backups of `path`, newest first.
    fn backed_up(&self, path: &str) -> Vec<String> {
        self.backups
            .entries(path)
            .expect("lists backups")
            .iter()
            .map(|entry| {
                String::from_utf8(self.backups.content(entry).expect("reads the backup"))
                    .expect("UTF-8")
            })
            .collect()
    }
}

fn snapshot_into(root: &Path, directory: &Path, snapshot: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(directory).expect("lists") {
        let path = entry.expect("an entry").path();
        let metadata = path.symlink_metadata().expect("status");
        let what = if metadata.is_symlink() {
            format!("-> {}", std::fs::read_link(&path).expect("link").display())
        } else if metadata.is_file() {
            sha256_hex(&std::fs::read(&path).expect("reads"))
        } else {
            String::from("directory")
        };
        snapshot.insert(
            path.strip_prefix(root)
                .expect("below")
                .display()
                .to_string(),
            format!(
                "{what} mode {:o} uid {} gid {} inode {} mtime {}.{}",
                metadata.mode(),
                metadata.uid(),
                metadata.gid(),
                metadata.ino(),
                metadata.mtime(),
                metadata.mtime_nsec()
            ),
        );
        if metadata.is_dir() {
            snapshot_into(root, &path, snapshot);
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

fn file(path: &str) -> File {
    File {
        path: path.to_string(),
        ensure: Ensure::Present,
        content_sha256: None,
        owner: None,
        group: None,
        mode: None,
    }
}

fn directory(path: &str) -> Directory {
    Directory {
        path: path.to_string(),
        ensure: Ensure::Present,
        owner: None,
        group: None,
        mode: None,
        recurse: false,
        purge: false,
    }
}

fn symlink(path: &str, target: &str) -> Symlink {
    Symlink {
        path: path.to_string(),
        target: Some(target.to_string()),
        ensure: Ensure::Present,
        owner: None,
        group: None,
        mode: None,
    }
}

/// Owner and group tests change ownership, which needs root.
#[track_caller]
fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test sets file owners and must run as root (run `cargo test` as root, or in a testbed instance)"
    );
}

// ---------------------------------------------------------------------------
// Converging

#[test]
fn converges_from_scratch_then_a_second_check_reports_nothing() {
    let mut test = TestHost::new();
    let catalog = [
        ResourceKind::Directory(Directory {
            mode: Some(Mode(0o750)),
            ..directory("/srv")
        }),
        ResourceKind::File(File {
            mode: Some(Mode(0o640)),
            ..test.file_with_content("/srv/app.conf", b"port = 8080\n")
        }),
        ResourceKind::File(file("/srv/ready")),
        ResourceKind::Symlink(symlink("/srv/current", "app.conf")),
    ];

    let changes = test.converge(&catalog);

    assert_eq!(
        changes,
        [
            "directory:/srv ensure: absent -> present",
            "file:/srv/app.conf ensure: absent -> present",
            "file:/srv/ready ensure: absent -> present",
            "symlink:/srv/current ensure: absent -> symlink to app.conf",
        ]
    );
    assert_eq!(test.mode("/srv"), 0o750);
    assert_eq!(test.read("/srv/app.conf"), "port = 8080\n");
    assert_eq!(test.mode("/srv/app.conf"), 0o640);
    assert_eq!(test.read("/srv/ready"), "");
    assert_eq!(test.mode("/srv/ready"), 0o644);
    assert_eq!(test.link_target("/srv/current"), "app.conf");
    assert_eq!(test.check(&catalog), Vec::<String>::new());
    assert_eq!(test.temporary_files(), Vec::<String>::new());
}

#[test]
fn drift_is_repaired_edited_content_changed_mode_deleted_file_and_moved_link() {
    let mut test = TestHost::new();
    test.mkdir("/etc");
    let catalog = [
        ResourceKind::File(File {
            mode: Some(Mode(0o600)),
            ..test.file_with_content("/etc/app.conf", b"a\nb\nc\n")
        }),
        ResourceKind::File(test.file_with_content("/etc/motd", b"hello\n")),
        ResourceKind::Symlink(symlink("/etc/app.link", "/etc/app.conf")),
    ];
    test.converge(&catalog);
    test.write("/etc/app.conf", b"a\nB\nc\n");
    test.chmod("/etc/app.conf", 0o666);
    std::fs::remove_file(test.real("/etc/motd")).expect("removes");
    std::fs::remove_file(test.real("/etc/app.link")).expect("removes");
    std::os::unix::fs::symlink("/elsewhere", test.real("/etc/app.link")).expect("links");

    let repaired = test.converge(&catalog);

    assert_eq!(
        repaired,
        [
            format!(
                "file:/etc/app.conf content: sha256:{} -> sha256:{}",
                sha256_hex(b"a\nB\nc\n"),
                sha256_hex(b"a\nb\nc\n")
            ),
            "file:/etc/app.conf mode: 0666 -> 0600".to_string(),
            "file:/etc/motd ensure: absent -> present".to_string(),
            "symlink:/etc/app.link target: /elsewhere -> /etc/app.conf".to_string(),
        ]
    );
    assert_eq!(test.read("/etc/app.conf"), "a\nb\nc\n");
    assert_eq!(test.mode("/etc/app.conf"), 0o600);
    assert_eq!(test.read("/etc/motd"), "hello\n");
    assert_eq!(test.link_target("/etc/app.link"), "/etc/app.conf");
    assert_eq!(test.backed_up("/etc/app.conf"), ["a\nB\nc\n"]);
    assert_eq!(test.check(&catalog), Vec::<String>::new());
}

#[test]
fn check_never_changes_the_host() {
    let mut test = TestHost::new();
    test.write("/etc/app.conf", b"old\n");
    test.chmod("/etc/app.conf", 0o666);
    test.write("/etc/obsolete.conf", b"remove me\n");
    test.write("/srv/data/undeclared/cache.bin", b"cache");
    test.write("/srv/data/run.sh", b"#!/bin/sh\n");
    test.write("/opt/file-where-link-goes", b"x");
    test.mkdir("/var/empty-dir");
    let catalog = [
        ResourceKind::File(File {
            mode: Some(Mode(0o644)),
            ..test.file_with_content("/etc/app.conf", b"new\n")
        }),
        ResourceKind::File(File {
            ensure: Ensure::Absent,
            ..file("/etc/obsolete.conf")
        }),
        ResourceKind::File(test.file_with_content("/etc/new.conf", b"created\n")),
        ResourceKind::Directory(Directory {
            mode: Some(Mode(0o700)),
            recurse: true,
            purge: true,
            ..directory("/srv/data")
        }),
        ResourceKind::File(file("/srv/data/run.sh")),
        ResourceKind::Directory(Directory {
            ensure: Ensure::Absent,
            ..directory("/var/empty-dir")
        }),
        ResourceKind::Symlink(symlink("/opt/file-where-link-goes", "/etc/app.conf")),
    ];
    let before = test.snapshot();

    let planned = test.check(&catalog);

    assert_eq!(test.snapshot(), before);
    assert!(test.backups.all_entries().expect("lists").is_empty());
    assert_eq!(
        planned,
        [
            format!(
                "file:/etc/app.conf content: sha256:{} -> sha256:{}",
                sha256_hex(b"old\n"),
                sha256_hex(b"new\n")
            ),
            "file:/etc/app.conf mode: 0666 -> 0644".to_string(),
            "file:/etc/obsolete.conf ensure: present -> absent".to_string(),
            "file:/etc/new.conf ensure: absent -> present".to_string(),
            "directory:/srv/data mode: 0755 -> 0700".to_string(),
            "directory:/srv/data mode of /srv/data/run.sh: 0644 -> 0600".to_string(),
            "directory:/srv/data ensure of /srv/data/undeclared: directory -> purged".to_string(),
            "directory:/var/empty-dir ensure: present -> absent".to_string(),
            "symlink:/opt/file-where-link-goes ensure: file -> symlink to /etc/app.conf"
                .to_string(),
        ]
    );
    // The plan is what a real run then does.
    assert_eq!(test.converge(&catalog), planned);
    assert_eq!(test.check(&catalog), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// Content and diffs

#[test]
fn text_content_change_shows_a_unified_diff() {
    let mut test = TestHost::new();
    test.write(
        "/etc/app.conf",
        b"one\ntwo\nthree\nfour\nfive\nsix\nseven\nend\n",
    );
    let resource = ResourceKind::File(test.file_with_content(
        "/etc/app.conf",
        b"one\ntwo\nthree\nfour\nFIVE\nsix\nseven\nend\n",
    ));

    let changes = test.check_changes(&resource);

    assert_eq!(changes.len(), 1);
    assert_eq!(
        changes[0].diff.as_deref(),
        Some(
            "--- /etc/app.conf (current)\n\
             +++ /etc/app.conf (catalog)\n\
             @@ -2,7 +2,7 @@\n \
             two\n \
             three\n \
             four\n\
             -five\n\
             +FIVE\n \
             six\n \
             seven\n \
             end\n"
        )
    );
}

#[test]
fn new_text_file_shows_its_whole_content_as_added() {
    let mut test = TestHost::new();
    test.mkdir("/etc");
    let resource = ResourceKind::File(test.file_with_content("/etc/new.conf", b"a = 1\n"));

    let changes = test.check_changes(&resource);

    assert_eq!(
        changes[0].diff.as_deref(),
        Some("--- /etc/new.conf (current)\n+++ /etc/new.conf (catalog)\n@@ -0,0 +1 @@\n+a = 1\n")
    );
}

#[test]
fn binary_content_change_names_both_hashes_instead_of_a_diff() {
    let mut test = TestHost::new();
    test.write("/usr/lib/app.so", &[0x7f, b'E', b'L', b'F', 0xff, 0x00]);
    let wanted = [0x7f, b'E', b'L', b'F', 0xfe, 0x00];
    let resource = ResourceKind::File(test.file_with_content("/usr/lib/app.so", &wanted));

    let changes = test.check_changes(&resource);

    assert_eq!(
        changes[0].diff.as_deref(),
        Some(
            format!(
                "Binary or large content of /usr/lib/app.so changed: sha256 {} -> sha256 {}\n",
                sha256_hex(&[0x7f, b'E', b'L', b'F', 0xff, 0x00]),
                sha256_hex(&wanted)
            )
            .as_str()
        )
    );
}

#[test]
fn large_content_change_names_both_hashes_instead_of_a_diff() {
    let mut test = TestHost::new();
    let current = "line\n".repeat(300_000);
    test.write("/var/big.txt", current.as_bytes());
    let resource =
        ResourceKind::File(test.file_with_content("/var/big.txt", "other\n".repeat(10).as_bytes()));

    let changes = test.check_changes(&resource);

    let diff = changes[0].diff.as_deref().expect("a summary line");
    assert!(
        diff.starts_with("Binary or large content of /var/big.txt changed: sha256 "),
        "{diff}"
    );
    assert_eq!(
        changes[0].from,
        format!("sha256:{}", sha256_hex(current.as_bytes()))
    );
}

#[test]
fn file_without_content_is_created_empty_and_existing_content_is_kept() {
    let test = TestHost::new();
    test.write("/etc/kept", b"whatever is there\n");
    let catalog = [
        ResourceKind::File(file("/etc/kept")),
        ResourceKind::File(File {
            mode: Some(Mode(0o600)),
            ..file("/etc/created")
        }),
    ];

    let changes = test.converge(&catalog);

    assert_eq!(changes, ["file:/etc/created ensure: absent -> present"]);
    assert_eq!(test.read("/etc/kept"), "whatever is there\n");
    assert_eq!(test.read("/etc/created"), "");
    assert_eq!(test.mode("/etc/created"), 0o600);
}

#[test]
fn replaced_content_keeps_the_mode_the_catalog_does_not_set() {
    let mut test = TestHost::new();
    test.write("/usr/local/bin/tool", b"#!/bin/sh\necho old\n");
    test.chmod("/usr/local/bin/tool", 0o4755);
    let resource =
        ResourceKind::File(test.file_with_content("/usr/local/bin/tool", b"#!/bin/sh\necho new\n"));

    test.converge(&[resource]);

    assert_eq!(test.read("/usr/local/bin/tool"), "#!/bin/sh\necho new\n");
    assert_eq!(test.mode("/usr/local/bin/tool"), 0o4755);
}

#[test]
fn missing_content_is_an_error_naming_its_hash() {
    let test = TestHost::new();
    test.mkdir("/etc");
    let resource = ResourceKind::File(File {
        content_sha256: Some("0".repeat(64)),
        ..file("/etc/app.conf")
    });

    let error = test.converge_error(&resource);

    assert_eq!(
        error,
        format!("Failed to find content {} in the catalog", "0".repeat(64))
    );
    assert!(!test.exists("/etc/app.conf"));
}

#[test]
fn missing_parent_directory_is_an_error_naming_it() {
    let mut test = TestHost::new();
    let resource = ResourceKind::File(test.file_with_content("/srv/app/conf/app.toml", b"x\n"));

    let error = test.converge_error(&resource);

    assert_eq!(
        error,
        format!(
            "Failed to create /srv/app/conf/app.toml under the root {root}: its parent directory /srv/app/conf ({real}) does not exist; declare /srv/app/conf as a directory resource, or create it in the root first (packages are not installed under --root, so a directory a package would create is missing there)",
            root = test.root.path().display(),
            real = test.real("/srv/app/conf").display(),
        )
    );
    assert!(!test.exists("/srv"));
}

#[test]
fn file_replaces_a_symlink_but_refuses_a_directory() {
    let mut test = TestHost::new();
    test.mkdir("/etc/app.d");
    std::os::unix::fs::symlink("/run/real.conf", test.real("/etc/resolv.conf")).expect("links");
    let link_replaced =
        ResourceKind::File(test.file_with_content("/etc/resolv.conf", b"nameserver 10.0.0.2\n"));
    let directory_in_the_way = ResourceKind::File(test.file_with_content("/etc/app.d", b"x"));

    let changes = test.converge(std::slice::from_ref(&link_replaced));
    let error = test.converge_error(&directory_in_the_way);

    assert_eq!(
        changes,
        ["file:/etc/resolv.conf ensure: symlink to /run/real.conf -> present"]
    );
    assert_eq!(test.read("/etc/resolv.conf"), "nameserver 10.0.0.2\n");
    assert_eq!(
        error,
        "Failed to manage file /etc/app.d: a directory is in the way; remove it or declare the path as what it is"
    );
}

// ---------------------------------------------------------------------------
// Absent

#[test]
fn absent_file_is_removed_and_backed_up() {
    let test = TestHost::new();
    test.write("/etc/cron.d/old-job", b"* * * * * root true\n");
    let resource = ResourceKind::File(File {
        ensure: Ensure::Absent,
        ..file("/etc/cron.d/old-job")
    });

    let changes = test.converge(std::slice::from_ref(&resource));

    assert_eq!(
        changes,
        ["file:/etc/cron.d/old-job ensure: present -> absent"]
    );
    assert!(!test.exists("/etc/cron.d/old-job"));
    assert_eq!(
        test.backed_up("/etc/cron.d/old-job"),
        ["* * * * * root true\n"]
    );
    assert_eq!(test.check(&[resource]), Vec::<String>::new());
}

#[test]
fn absent_file_refuses_to_remove_a_directory() {
    let test = TestHost::new();
    test.write("/etc/app/keep.conf", b"x");
    let resource = ResourceKind::File(File {
        ensure: Ensure::Absent,
        ..file("/etc/app")
    });

    let error = test.converge_error(&resource);

    assert_eq!(
        error,
        "Failed to remove file /etc/app: a directory is there; a file resource never removes one"
    );
    assert_eq!(test.read("/etc/app/keep.conf"), "x");
}

#[test]
fn absent_directory_refuses_to_remove_contents_unless_purge() {
    let test = TestHost::new();
    test.write("/srv/old/data.db", b"rows");
    let without_purge = ResourceKind::Directory(Directory {
        ensure: Ensure::Absent,
        ..directory("/srv/old")
    });
    let with_purge = ResourceKind::Directory(Directory {
        ensure: Ensure::Absent,
        purge: true,
        ..directory("/srv/old")
    });

    let error = test.converge_error(&without_purge);
    let still_there = test.read("/srv/old/data.db");
    let changes = test.converge(&[with_purge]);

    assert_eq!(
        error,
        "Failed to remove directory /srv/old: it is not empty (1 entries); set purge = true to remove it with everything in it"
    );
    assert_eq!(still_there, "rows");
    assert_eq!(
        changes,
        ["directory:/srv/old ensure: present (1 entries) -> absent"]
    );
    assert!(!test.exists("/srv/old"));
    assert_eq!(test.backed_up("/srv/old/data.db"), ["rows"]);
}

#[test]
fn absent_symlink_is_removed_and_a_file_there_is_refused() {
    let test = TestHost::new();
    test.mkdir("/etc");
    std::os::unix::fs::symlink("/nowhere", test.real("/etc/link")).expect("links");
    test.write("/etc/real", b"x");
    let link = ResourceKind::Symlink(Symlink {
        ensure: Ensure::Absent,
        ..symlink("/etc/link", "/nowhere")
    });
    let not_a_link = ResourceKind::Symlink(Symlink {
        ensure: Ensure::Absent,
        ..symlink("/etc/real", "/nowhere")
    });

    let changes = test.converge(&[link]);
    let error = test.converge_error(&not_a_link);

    assert_eq!(
        changes,
        ["symlink:/etc/link ensure: symlink to /nowhere -> absent"]
    );
    assert!(!test.exists("/etc/link"));
    assert_eq!(
        error,
        "Failed to remove symlink /etc/real: a file is there, not a symlink; a symlink resource never removes one"
    );
}

// ---------------------------------------------------------------------------
// Directories: purge and recurse

#[test]
fn purge_removes_undeclared_entries_and_keeps_declared_ones_and_their_parents() {
    let mut test = TestHost::new();
    test.write("/etc/nginx/conf.d/default.conf", b"default");
    test.write("/etc/nginx/conf.d/stale.conf", b"stale");
    test.write("/etc/nginx/sites/old/site.conf", b"old site");
    test.write("/etc/nginx/deep/keep/me.conf", b"old me");
    test.write("/etc/nginx/deep/drop.conf", b"drop");
    std::os::unix::fs::symlink("/etc/passwd", test.real("/etc/nginx/link")).expect("links");
    let catalog = [
        ResourceKind::Directory(Directory {
            purge: true,
            ..directory("/etc/nginx")
        }),
        ResourceKind::Directory(directory("/etc/nginx/conf.d")),
        ResourceKind::File(test.file_with_content("/etc/nginx/conf.d/default.conf", b"default")),
        ResourceKind::File(test.file_with_content("/etc/nginx/deep/keep/me.conf", b"me")),
    ];

    let changes = test.converge(&catalog);

    assert_eq!(
        changes,
        [
            "directory:/etc/nginx ensure of /etc/nginx/conf.d/stale.conf: file -> purged",
            "directory:/etc/nginx ensure of /etc/nginx/deep/drop.conf: file -> purged",
            "directory:/etc/nginx ensure of /etc/nginx/link: symlink -> purged",
            "directory:/etc/nginx ensure of /etc/nginx/sites: directory -> purged",
            &format!(
                "file:/etc/nginx/deep/keep/me.conf content: sha256:{} -> sha256:{}",
                sha256_hex(b"old me"),
                sha256_hex(b"me")
            ),
        ]
    );
    assert_eq!(test.read("/etc/nginx/conf.d/default.conf"), "default");
    assert_eq!(test.read("/etc/nginx/deep/keep/me.conf"), "me");
    for purged in [
        "/etc/nginx/conf.d/stale.conf",
        "/etc/nginx/deep/drop.conf",
        "/etc/nginx/link",
        "/etc/nginx/sites",
    ] {
        assert!(!test.exists(purged), "{purged} is still there");
    }
    assert_eq!(test.backed_up("/etc/nginx/conf.d/stale.conf"), ["stale"]);
    assert_eq!(
        test.backed_up("/etc/nginx/sites/old/site.conf"),
        ["old site"]
    );
    assert_eq!(test.check(&catalog), Vec::<String>::new());
}

#[test]
fn recurse_applies_mode_owner_and_group_below_and_keeps_scripts_executable() {
    require_root();
    let test = TestHost::new();
    test.write("/srv/app/lib/app.jar", b"jar");
    test.write("/srv/app/bin/run.sh", b"#!/bin/sh\n");
    test.chmod("/srv/app/bin/run.sh", 0o755);
    std::os::unix::fs::symlink("lib/app.jar", test.real("/srv/app/current.jar")).expect("links");
    let catalog = [ResourceKind::Directory(Directory {
        mode: Some(Mode(0o750)),
        owner: Some("nobody".into()),
        group: Some("65534".into()),
        recurse: true,
        ..directory("/srv/app")
    })];

    test.converge(&catalog);

    assert_eq!(test.mode("/srv/app"), 0o750);
    assert_eq!(test.mode("/srv/app/lib"), 0o750);
    assert_eq!(test.mode("/srv/app/lib/app.jar"), 0o640);
    assert_eq!(test.mode("/srv/app/bin/run.sh"), 0o750);
    for path in [
        "/srv/app",
        "/srv/app/lib",
        "/srv/app/lib/app.jar",
        "/srv/app/bin/run.sh",
        "/srv/app/current.jar",
    ] {
        assert_eq!(test.owner(path), (65534, 65534), "{path}");
    }
    assert_eq!(test.check(&catalog), Vec::<String>::new());
}

#[test]
fn directory_in_the_way_of_nothing_but_a_file_is_refused() {
    let test = TestHost::new();
    test.write("/srv/app", b"a file, not a directory");
    let resource = ResourceKind::Directory(directory("/srv/app"));

    let error = test.converge_error(&resource);

    assert_eq!(
        error,
        "Failed to manage directory /srv/app: a file is in the way; remove it or declare the path as what it is"
    );
}

// ---------------------------------------------------------------------------
// Symlinks

#[test]
fn symlink_replacing_a_file_backs_it_up_and_refuses_a_directory() {
    let test = TestHost::new();
    test.write("/etc/alternatives/editor", b"a file someone put here\n");
    test.mkdir("/etc/alternatives/pager");
    let over_file = ResourceKind::Symlink(symlink("/etc/alternatives/editor", "/usr/bin/vim"));
    let over_directory = ResourceKind::Symlink(symlink("/etc/alternatives/pager", "/usr/bin/less"));

    let changes = test.converge(std::slice::from_ref(&over_file));
    let error = test.converge_error(&over_directory);

    assert_eq!(
        changes,
        ["symlink:/etc/alternatives/editor ensure: file -> symlink to /usr/bin/vim"]
    );
    assert_eq!(test.link_target("/etc/alternatives/editor"), "/usr/bin/vim");
    assert_eq!(
        test.backed_up("/etc/alternatives/editor"),
        ["a file someone put here\n"]
    );
    assert_eq!(
        error,
        "Failed to create symlink /etc/alternatives/pager: a directory is in the way; a symlink resource never replaces one"
    );
    assert_eq!(test.check(&[over_file]), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// Owners and groups

#[test]
fn owner_group_and_mode_are_set_on_new_content_and_repaired_alone() {
    require_root();
    let mut test = TestHost::new();
    test.mkdir("/etc");
    let resource = ResourceKind::File(File {
        owner: Some("nobody".into()),
        group: Some("nogroup".into()),
        mode: Some(Mode(0o640)),
        ..test.file_with_content("/etc/secret.conf", b"token = 1\n")
    });

    test.converge(std::slice::from_ref(&resource));
    let created_with = (
        test.owner("/etc/secret.conf"),
        test.mode("/etc/secret.conf"),
    );
    std::os::unix::fs::lchown(test.real("/etc/secret.conf"), Some(0), Some(0)).expect("chown");
    let repair = test.converge(std::slice::from_ref(&resource));

    assert_eq!(created_with, ((65534, 65534), 0o640));
    assert_eq!(
        repair,
        [
            "file:/etc/secret.conf owner: root -> nobody",
            "file:/etc/secret.conf group: root -> nogroup",
        ]
    );
    assert_eq!(test.owner("/etc/secret.conf"), (65534, 65534));
    assert_eq!(test.read("/etc/secret.conf"), "token = 1\n");
}

#[test]
fn account_names_come_from_the_roots_own_passwd_and_group_files() {
    require_root();
    let test = TestHost::new();
    test.write(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\napp:x:4242:4243::/srv/app:/bin/false\n",
    );
    test.write("/etc/group", b"root:x:0:\napp:x:4243:\n");
    test.write("/srv/app.conf", b"x");
    let resource = ResourceKind::File(File {
        owner: Some("app".into()),
        group: Some("app".into()),
        ..file("/srv/app.conf")
    });

    let changes = test.converge(&[resource]);

    assert_eq!(
        changes,
        [
            "file:/srv/app.conf owner: root -> app",
            "file:/srv/app.conf group: root -> app"
        ]
    );
    assert_eq!(test.owner("/srv/app.conf"), (4242, 4243));
}

#[test]
fn unknown_owner_shows_in_check_and_fails_apply_without_touching_the_file() {
    let mut test = TestHost::new();
    test.write("/etc/app.conf", b"old\n");
    let resource = ResourceKind::File(File {
        owner: Some("no-such-user-cms".into()),
        ..test.file_with_content("/etc/app.conf", b"new\n")
    });

    let planned = test.check_changes(&resource);
    let error = test.converge_error(&resource);

    assert_eq!(planned[1].to, "no-such-user-cms (not on this host yet)");
    assert_eq!(error, "Failed to find user `no-such-user-cms` on this host");
    assert_eq!(test.read("/etc/app.conf"), "old\n");
    assert_eq!(test.temporary_files(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// Atomic writes

#[test]
fn atomic_write_abandoned_midway_leaves_the_old_content_and_no_temporary_file() {
    let test = TestHost::new();
    test.write("/etc/app.conf", b"old content\n");

    let mut half_written = test
        .host
        .create_atomic_file("/etc/app.conf", FileAttributes::default())
        .expect("starts the write");
    half_written.write_all(b"new con").expect("writes half");
    let seen_midway = test.read("/etc/app.conf");
    drop(half_written);

    assert_eq!(seen_midway, "old content\n");
    assert_eq!(test.read("/etc/app.conf"), "old content\n");
    assert_eq!(test.temporary_files(), Vec::<String>::new());
}

#[test]
fn atomic_write_whose_rename_fails_leaves_the_target_and_no_temporary_file() {
    let test = TestHost::new();
    test.write("/etc/app.conf/inside", b"a directory where the file goes");

    let error = test
        .host
        .write_file_atomically("/etc/app.conf", b"new\n", FileAttributes::default())
        .expect_err("a file cannot replace a directory");

    assert!(
        error.to_string().starts_with("Failed to replace "),
        "{error}"
    );
    assert_eq!(
        test.read("/etc/app.conf/inside"),
        "a directory where the file goes"
    );
    assert_eq!(test.temporary_files(), Vec::<String>::new());
}

#[test]
fn temporary_file_of_a_killed_process_is_removed_by_the_next_write() {
    let test = TestHost::new();
    test.write("/etc/app.conf", b"old\n");
    let mut finished = Command::new("true").spawn().expect("runs true");
    let dead_pid = finished.id();
    finished.wait().expect("waits");
    let stale = format!("/etc/{TEMPORARY_FILE_PREFIX}{dead_pid}-0-app.conf");
    let of_a_running_process = format!("/etc/{TEMPORARY_FILE_PREFIX}1-0-app.conf");
    let of_another_file = format!("/etc/{TEMPORARY_FILE_PREFIX}{dead_pid}-0-other.conf");
    for path in [&stale, &of_a_running_process, &of_another_file] {
        test.write(path, b"half");
    }

    test.host
        .write_file_atomically("/etc/app.conf", b"new\n", FileAttributes::default())
        .expect("writes");

    assert!(!test.exists(&stale));
    assert!(test.exists(&of_a_running_process));
    assert!(test.exists(&of_another_file));
    assert_eq!(test.read("/etc/app.conf"), "new\n");
}

/// Set in the child process of the killed-write test: the root it writes
/// into until it is killed.
const KILLED_WRITER_ROOT: &str = "CMS_MODULES_TEST_KILLED_WRITER_ROOT";
const KILLED_WRITER_READY: &str = "cms-killed-writer-ready";
const KILLED_WRITER_SIZE: usize = 1024 * 1024;
/// About half of the kills land while a temporary file exists (the rest
/// during the directory fsync or between writes), so 16 rounds all missing
/// the write is a one in 65,536 chance.
const KILLED_WRITER_ROUNDS: usize = 16;

#[test]
fn atomic_write_killed_at_random_moments_leaves_old_or_new_content() {
    if let Some(root) = std::env::var_os(KILLED_WRITER_ROOT) {
        write_until_killed(Host::new(PathBuf::from(root)));
    }
    let test = TestHost::new();
    let (old, new) = killed_writer_contents();
    test.host
        .write_file_atomically("/data.bin", &old, FileAttributes::default())
        .expect("writes the old content");
    let mut random = RandomDelays::seeded();
    let mut kills_during_a_write = 0;

    for round in 0..KILLED_WRITER_ROUNDS {
        let mut writer = KillOnDrop(
            Command::new(std::env::current_exe().expect("the test binary"))
                .args([
                    "atomic_write_killed_at_random_moments_leaves_old_or_new_content",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(KILLED_WRITER_ROOT, test.root.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("starts the writer"),
        );
        let stdout = writer.0.stdout.take().expect("piped");
        let started = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains(KILLED_WRITER_READY));
        assert!(started, "round {round}: the writer exited before writing");
        // The delay is the random moment of the kill, not a wait for
        // anything: the writer is already writing in a loop.
        std::thread::sleep(random.next_delay(Duration::from_millis(40)));
        writer.0.kill().expect("kills the writer");
        writer.0.wait().expect("reaps the writer");

        if !test.temporary_files().is_empty() {
            kills_during_a_write += 1;
        }
        let content = std::fs::read(test.real("/data.bin")).expect("reads");
        assert!(
            content == old || content == new,
            "round {round}: /data.bin is neither the old nor the new content ({} bytes, starts {:?})",
            content.len(),
            String::from_utf8_lossy(&content[..content.len().min(16)])
        );
    }
    test.host
        .write_file_atomically("/data.bin", &old, FileAttributes::default())
        .expect("writes after the kills");

    assert!(
        kills_during_a_write > 0,
        "no kill landed during a write in {KILLED_WRITER_ROUNDS} rounds, so the test proved nothing"
    );
    assert_eq!(test.temporary_files(), Vec::<String>::new());
}

fn killed_writer_contents() -> (Vec<u8>, Vec<u8>) {
    let old = b"old content 0123\n".repeat(KILLED_WRITER_SIZE / 17);
    let new = b"NEW CONTENT 4567\n".repeat(KILLED_WRITER_SIZE / 17 + 1000);
    (old, new)
}

/// The child of the killed-write test: alternates the two contents forever.
fn write_until_killed(host: Host) -> ! {
    let (old, new) = killed_writer_contents();
    println!("{KILLED_WRITER_READY}");
    std::io::stdout().flush().expect("flushes");
    loop {
        for content in [&new, &old] {
            host.write_file_atomically("/data.bin", content, FileAttributes::default())
                .expect("writes");
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// xorshift, seeded from the clock: different kill moments on every run,
/// without a dependency for randomness.
struct RandomDelays(u64);

impl RandomDelays {
    fn seeded() -> RandomDelays {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .subsec_nanos();
        RandomDelays(u64::from(nanos) | 1)
    }

    fn next_delay(&mut self, at_most: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        at_most.mul_f64((self.0 % 1000) as f64 / 1000.0)
    }
}

// ---------------------------------------------------------------------------
// Backups and restore

#[test]
fn restore_brings_back_the_replaced_content_and_backs_up_what_it_replaces() {
    let mut test = TestHost::new();
    test.mkdir("/etc");
    let version_1 = ResourceKind::File(test.file_with_content("/etc/app.conf", b"version 1\n"));
    let version_2 = ResourceKind::File(test.file_with_content("/etc/app.conf", b"version 2\n"));
    test.converge(&[version_1]);
    test.converge(&[version_2]);

    let restored = test
        .backups
        .restore(&test.host, "/etc/app.conf", None)
        .expect("restores");

    assert_eq!(test.read("/etc/app.conf"), "version 1\n");
    assert_eq!(restored.restored.sha256, sha256_hex(b"version 1\n"));
    assert_eq!(
        restored.replaced.map(|entry| entry.sha256),
        Some(sha256_hex(b"version 2\n"))
    );
    assert_eq!(
        test.backed_up("/etc/app.conf"),
        ["version 2\n", "version 1\n"]
    );
}

#[test]
fn restore_at_a_time_puts_back_the_content_the_file_had_then() {
    let test = TestHost::new();
    test.write("/etc/app.conf", b"current\n");
    // Each backup holds the content that was live until it was saved: "one"
    // until 100, "two" from 100 to 200, "three" from 200 to 300, then
    // "current" (times after `base`, an hour ago, so that pruning by age
    // keeps them).
    let base = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 3600;
    for (time, content) in [(100, "one\n"), (200, "two\n"), (300, "three\n")] {
        test.backups
            .save_at("/etc/app.conf", content.as_bytes(), base + time)
            .expect("saves");
    }

    let at_150 = test
        .backups
        .restore(&test.host, "/etc/app.conf", Some(base + 150));
    let content_at_150 = test.read("/etc/app.conf");
    let at_50 = test
        .backups
        .restore(&test.host, "/etc/app.conf", Some(base + 50));
    let content_at_50 = test.read("/etc/app.conf");
    let again_at_50 = test
        .backups
        .restore(&test.host, "/etc/app.conf", Some(base + 50));
    let since_last_change =
        test.backups
            .restore(&test.host, "/etc/app.conf", Some(1_000_000_000_000));

    assert_eq!(at_150.expect("restores").restored.time, base + 200);
    assert_eq!(content_at_150, "two\n");
    assert_eq!(at_50.expect("restores").restored.time, base + 100);
    assert_eq!(content_at_50, "one\n");
    // Already the content: nothing is written or backed up.
    assert_eq!(again_at_50.expect("restores").replaced, None);
    assert!(
        since_last_change
            .expect_err("unchanged since")
            .to_string()
            .starts_with("Nothing to restore: /etc/app.conf has not changed since"),
    );
}

#[test]
fn restore_recreates_a_removed_file_with_the_mode_it_had() {
    let test = TestHost::new();
    test.write("/etc/credentials", b"secret\n");
    test.chmod("/etc/credentials", 0o600);
    test.converge(&[ResourceKind::File(File {
        ensure: Ensure::Absent,
        ..file("/etc/credentials")
    })]);

    test.backups
        .restore(&test.host, "/etc/credentials", None)
        .expect("restores");

    assert_eq!(test.read("/etc/credentials"), "secret\n");
    assert_eq!(test.mode("/etc/credentials"), 0o600);
}

#[test]
fn restore_of_a_path_never_backed_up_is_an_error() {
    let test = TestHost::new();

    let error = test
        .backups
        .restore(&test.host, "/etc/never", None)
        .expect_err("no backup");

    assert!(matches!(error, BackupError::NotFound { .. }));
    assert_eq!(error.to_string(), "Failed to find a backup of /etc/never");
}

#[test]
fn backup_index_with_a_line_torn_by_a_crash_stays_readable() {
    let test = TestHost::new();
    test.backups.save_at("/etc/a", b"first", 10).expect("saves");
    let index = test.backups.dir().join("index.jsonl");
    let mut torn = std::fs::OpenOptions::new()
        .append(true)
        .open(&index)
        .expect("opens the index");
    torn.write_all(br#"{"path":"/etc/a","sha2"#)
        .expect("tears a line");

    let while_torn = test.backups.entries("/etc/a").expect("reads");
    test.backups
        .save_at("/etc/a", b"second", 20)
        .expect("saves after the tear");
    let after_next_save = test.backups.entries("/etc/a").expect("reads");

    assert_eq!(while_torn.len(), 1);
    assert_eq!(
        after_next_save
            .iter()
            .map(|entry| entry.time)
            .collect::<Vec<_>>(),
        [20, 10]
    );
    assert_eq!(
        test.backups.content(&after_next_save[0]).expect("reads"),
        b"second"
    );
}

#[test]
fn backup_store_is_private_because_backups_hold_secrets() {
    let test = TestHost::new();
    let entry = test
        .backups
        .save("/etc/shadow", b"root:*:19000::::::\n")
        .expect("saves");

    let store_mode = test.backups.dir().metadata().expect("exists").mode() & 0o777;
    let blob_mode = test
        .backups
        .dir()
        .join("blobs")
        .join(&entry.sha256)
        .metadata()
        .expect("exists")
        .mode()
        & 0o777;

    assert_eq!((store_mode, blob_mode), (0o700, 0o600));
}

#[test]
fn file_kinds_are_reported_without_following_symlinks() {
    let test = TestHost::new();
    test.mkdir("/etc");
    std::os::unix::fs::symlink("/etc", test.real("/etc/loop")).expect("links");

    let status = test
        .host
        .status("/etc/loop")
        .expect("status")
        .expect("exists");
    let below_the_link = test.host.status("/etc/loop/x/y");
    test.write("/etc/hosts", b"127.0.0.1 localhost\n");
    let missing_below_a_file = test.host.status("/etc/hosts/x/y").expect("status");

    assert_eq!(status.kind, FileKind::Symlink);
    assert!(
        below_the_link
            .as_ref()
            .is_err_and(|e| e.to_string().contains("/etc/loop is a symlink")),
        "{below_the_link:?}"
    );
    assert_eq!(missing_below_a_file, None);
}

// ---------------------------------------------------------------------------
// Sensitive files and backup pruning

#[test]
fn a_sensitive_content_change_carries_no_diff_and_no_hash() {
    let mut test = TestHost::new();
    test.write("/etc/db.conf", b"password = old-secret\n");
    let wanted = test.file_with_content("/etc/db.conf", b"password = new-secret\n");
    test.sensitive.set(true);

    let changes = test.check_changes(&ResourceKind::File(wanted.clone()));

    assert_eq!(
        changes,
        [Change::new("content", "(sensitive)", "(sensitive)")],
        "{changes:?}"
    );
    assert_eq!(changes[0].to_string(), "content changed (sensitive)");
    test.sensitive.set(false);
    let plain = test.check_changes(&ResourceKind::File(wanted));
    assert!(
        plain[0]
            .diff
            .as_deref()
            .unwrap()
            .contains("+password = new-secret")
    );
}

#[test]
fn binary_content_is_written_byte_exact_owner_only_when_sensitive_and_never_diffed() {
    let mut test = TestHost::new();
    test.mkdir("/etc");
    // Not UTF-8: a keystore's bytes.
    let keystore: Vec<u8> = (0..=255u8).rev().chain([0xff, 0xfe, 0x00, 0x80]).collect();
    let wanted = test.file_with_content("/etc/keystore.p12", &keystore);
    test.sensitive.set(true);
    test.converge(&[ResourceKind::File(wanted.clone())]);
    assert_eq!(
        std::fs::read(test.real("/etc/keystore.p12")).unwrap(),
        keystore
    );
    assert_eq!(test.mode("/etc/keystore.p12"), 0o600);

    // A non-sensitive binary change is named by hashes, not diffed.
    test.sensitive.set(false);
    test.write("/etc/keystore.p12", &[0xc3, 0x28, 0x00]);
    let changes = test.check_changes(&ResourceKind::File(wanted));
    let diff = changes[0].diff.as_deref().unwrap();
    assert!(diff.starts_with("Binary or large content"), "{diff}");
}

#[test]
fn backups_keep_the_newest_five_of_each_path_and_drop_the_blobs_of_the_rest() {
    let test = TestHost::new();
    for time in 1..=7u64 {
        test.backups
            .save_at("/etc/a", format!("version {time}").as_bytes(), time)
            .expect("saves");
    }
    test.backups.save_at("/etc/b", b"only", 3).expect("saves");

    let times: Vec<u64> = test
        .backups
        .entries("/etc/a")
        .unwrap()
        .iter()
        .map(|e| e.time)
        .collect();
    assert_eq!(times, [7, 6, 5, 4, 3]);
    assert_eq!(test.backups.entries("/etc/b").unwrap().len(), 1);
    let blob = |content: &[u8]| test.backups.dir().join("blobs").join(sha256_hex(content));
    assert!(!blob(b"version 1").exists() && !blob(b"version 2").exists());
    assert!(blob(b"version 3").exists() && blob(b"only").exists());
}

#[test]
fn backups_older_than_ninety_days_go_except_the_newest_of_each_path() {
    let test = TestHost::new();
    let day = 24 * 60 * 60;
    test.backups
        .save_at("/etc/a", b"old 1", day)
        .expect("saves");
    test.backups
        .save_at("/etc/a", b"old 2", 2 * day)
        .expect("saves");
    test.backups
        .save_at("/etc/b", b"untouched", day)
        .expect("saves");
    test.backups
        .save_at("/etc/a", b"recent", 100 * day)
        .expect("saves");

    let times = |path: &str| -> Vec<u64> {
        test.backups
            .entries(path)
            .unwrap()
            .iter()
            .map(|e| e.time / day)
            .collect()
    };
    assert_eq!(times("/etc/a"), [100]);
    assert_eq!(times("/etc/b"), [1]);
}

#[test]
fn a_backup_store_found_wider_than_private_is_narrowed_on_open() {
    let dir = TempDir::new().unwrap();
    let store = dir.path().join("backups");
    std::fs::create_dir_all(store.join("blobs")).unwrap();
    std::fs::write(store.join("index.jsonl"), b"").unwrap();
    let chmod = |path: PathBuf, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod(store.clone(), 0o755);
    chmod(store.join("blobs"), 0o755);
    chmod(store.join("index.jsonl"), 0o644);

    BackupStore::open(&store).expect("opens");

    let mode = |path: PathBuf| path.metadata().unwrap().mode() & 0o7777;
    assert_eq!(
        (
            mode(store.clone()),
            mode(store.join("blobs")),
            mode(store.join("index.jsonl"))
        ),
        (0o700, 0o700, 0o600)
    );
}

// ---------------------------------------------------------------------------
// sysctl, kernel_module and authorized_keys: the files they generate, and
// the kernel's files (`/proc/sys`, `/proc/modules`, `/sys/module`), faked
// under the temporary root.

fn sysctl(name: &str, value: &str) -> ResourceKind {
    ResourceKind::Sysctl(Sysctl {
        name: name.into(),
        value: Some(SysctlValue(value.into())),
        ensure: Ensure::Present,
    })
}

#[test]
fn a_sysctl_is_set_in_proc_sys_and_persisted_then_repaired_after_drift() {
    let test = TestHost::new();
    test.write("/proc/sys/net/ipv4/ip_local_port_range", b"32768\t60999\n");
    test.mkdir("/etc/sysctl.d");
    let resource = sysctl("net.ipv4.ip_local_port_range", "1024  65000");

    let planned = test.check(std::slice::from_ref(&resource));
    assert_eq!(
        test.read("/proc/sys/net/ipv4/ip_local_port_range"),
        "32768\t60999\n"
    );
    let changes = test.converge(std::slice::from_ref(&resource));

    assert_eq!(planned, changes);
    assert_eq!(
        changes,
        [
            "sysctl:net.ipv4.ip_local_port_range value: 32768 60999 -> 1024 65000",
            "sysctl:net.ipv4.ip_local_port_range persisted: ensure: absent -> present",
        ]
    );
    assert_eq!(
        test.read("/proc/sys/net/ipv4/ip_local_port_range"),
        "1024 65000\n"
    );
    assert_eq!(
        test.read("/etc/sysctl.d/90-cms-net.ipv4.ip_local_port_range.conf"),
        "# Managed by cms (sysctl:net.ipv4.ip_local_port_range); changes here are replaced.\nnet.ipv4.ip_local_port_range = 1024 65000\n"
    );
    assert_eq!(
        test.mode("/etc/sysctl.d/90-cms-net.ipv4.ip_local_port_range.conf"),
        0o644
    );
    // The kernel's tabs are the same value.
    test.write("/proc/sys/net/ipv4/ip_local_port_range", b"1024\t65000\n");
    assert!(test.converge(std::slice::from_ref(&resource)).is_empty());

    test.write("/proc/sys/net/ipv4/ip_local_port_range", b"1\t2\n");
    test.write(
        "/etc/sysctl.d/90-cms-net.ipv4.ip_local_port_range.conf",
        b"edited\n",
    );
    let repaired = test.converge(std::slice::from_ref(&resource));
    assert_eq!(repaired.len(), 2, "{repaired:?}");
    assert!(repaired[1].starts_with("sysctl:net.ipv4.ip_local_port_range persisted: content: "));
    assert_eq!(
        test.read("/proc/sys/net/ipv4/ip_local_port_range"),
        "1024 65000\n"
    );
    assert!(test.converge(&[resource]).is_empty());
}

#[test]
fn an_absent_sysctl_removes_only_its_persisted_file() {
    let test = TestHost::new();
    test.write("/proc/sys/net/core/somaxconn", b"4096\n");
    test.write(
        "/etc/sysctl.d/90-cms-net.core.somaxconn.conf",
        b"net.core.somaxconn = 8192\n",
    );
    let resource = ResourceKind::Sysctl(Sysctl {
        name: "net.core.somaxconn".into(),
        value: None,
        ensure: Ensure::Absent,
    });

    let changes = test.converge(std::slice::from_ref(&resource));

    assert_eq!(
        changes,
        ["sysctl:net.core.somaxconn persisted: ensure: present -> absent"]
    );
    assert!(!test.exists("/etc/sysctl.d/90-cms-net.core.somaxconn.conf"));
    assert_eq!(test.read("/proc/sys/net/core/somaxconn"), "4096\n");
}

#[test]
fn a_sysctl_the_kernel_does_not_have_is_an_error_naming_its_proc_path() {
    let test = TestHost::new();
    test.mkdir("/proc/sys/net/core");
    test.mkdir("/etc/sysctl.d");

    let error = test.converge_error(&sysctl("net.core.no_such_key", "1"));

    assert!(
        error.starts_with("Failed to read sysctl net.core.no_such_key: /proc/sys/net/core/no_such_key does not exist"),
        "{error}"
    );
    assert!(!test.exists("/etc/sysctl.d/90-cms-net.core.no_such_key.conf"));
}

fn kernel_module(name: &str, ensure: ModuleEnsure) -> ResourceKind {
    ResourceKind::KernelModule(KernelModule {
        name: name.into(),
        ensure,
    })
}

#[test]
fn a_loaded_kernel_module_is_persisted_in_modules_load_d_and_its_blacklist_removed() {
    let test = TestHost::new();
    test.write(
        "/proc/modules",
        b"br_netfilter 32768 0 - Live 0x0000000000000000\nbridge 311296 1 br_netfilter, Live 0x0\n",
    );
    test.mkdir("/etc/modules-load.d");
    test.write(
        "/etc/modprobe.d/cms-blacklist-br-netfilter.conf",
        b"blacklist br-netfilter\n",
    );
    // The name as modprobe takes it: `-` and `_` are the same module.
    let resource = kernel_module("br-netfilter", ModuleEnsure::Loaded);

    let changes = test.converge(std::slice::from_ref(&resource));

    assert_eq!(
        changes,
        [
            "kernel_module:br-netfilter load: ensure: absent -> present",
            "kernel_module:br-netfilter blacklist: ensure: present -> absent",
        ]
    );
    assert_eq!(
        test.read("/etc/modules-load.d/br-netfilter.conf"),
        "# Managed by cms (kernel_module:br-netfilter); changes here are replaced.\nbr-netfilter\n"
    );
    assert!(!test.exists("/etc/modprobe.d/cms-blacklist-br-netfilter.conf"));
    assert!(test.converge(&[resource]).is_empty());
}

#[test]
fn a_built_in_kernel_module_counts_as_loaded_and_cannot_be_made_absent() {
    let test = TestHost::new();
    test.write("/proc/modules", b"");
    test.mkdir("/sys/module/unix/parameters");
    test.mkdir("/etc/modules-load.d");
    test.mkdir("/etc/modprobe.d");

    let loaded = test.converge(&[kernel_module("unix", ModuleEnsure::Loaded)]);
    let error = test.converge_error(&kernel_module("unix", ModuleEnsure::Absent));

    assert_eq!(
        loaded,
        ["kernel_module:unix load: ensure: absent -> present"]
    );
    assert!(
        error.starts_with("Failed to unload kernel module unix: it is built into the kernel"),
        "{error}"
    );
    assert!(!test.exists("/etc/modprobe.d/cms-blacklist-unix.conf"));
}

const ED25519_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFUh4JBMfA3A/DaZSoJd1GFLVHrwOHl1oRQ3imfXwEWd alice@laptop";
const OTHER_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZzTVJOI9Fm9Rqr0QXerV99bTueBjnNHKJULJfLETKK other";

/// A root with a user `deploy` (uid 4242, group 4243) whose home exists.
fn host_with_deploy_user() -> TestHost {
    let test = TestHost::new();
    test.write(
        "/etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\ndeploy:x:4242:4243::/home/deploy:/bin/sh\n",
    );
    test.write("/etc/group", b"root:x:0:\ndeploy:x:4243:\n");
    test.mkdir("/home/deploy");
    test
}

fn authorized_keys(keys: &[&str], exclusive: bool) -> ResourceKind {
    ResourceKind::AuthorizedKeys(AuthorizedKeys {
        user: "deploy".into(),
        keys: keys.iter().map(|key| key.to_string()).collect(),
        exclusive,
    })
}

#[test]
fn authorized_keys_are_written_owner_only_in_the_users_home_and_others_removed() {
    require_root();
    let test = host_with_deploy_user();
    let resource = authorized_keys(&[ED25519_KEY], true);

    let changes = test.converge(std::slice::from_ref(&resource));

    assert_eq!(
        changes,
        [
            "authorized_keys:deploy directory: ensure: absent -> present",
            "authorized_keys:deploy keys: ensure: absent -> present",
        ]
    );
    assert_eq!(
        test.read("/home/deploy/.ssh/authorized_keys"),
        format!("{ED25519_KEY}\n")
    );
    assert_eq!(test.mode("/home/deploy/.ssh"), 0o700);
    assert_eq!(test.mode("/home/deploy/.ssh/authorized_keys"), 0o600);
    assert_eq!(test.owner("/home/deploy/.ssh"), (4242, 4243));
    assert_eq!(
        test.owner("/home/deploy/.ssh/authorized_keys"),
        (4242, 4243)
    );
    assert!(test.converge(std::slice::from_ref(&resource)).is_empty());

    // Drift: a key added by hand, the file opened to everyone.
    test.write(
        "/home/deploy/.ssh/authorized_keys",
        format!("{ED25519_KEY}\n{OTHER_KEY}\n").as_bytes(),
    );
    test.chmod("/home/deploy/.ssh/authorized_keys", 0o644);
    let repaired = test.converge(std::slice::from_ref(&resource));
    assert_eq!(repaired.len(), 2, "{repaired:?}");
    assert!(repaired[0].starts_with("authorized_keys:deploy keys: content: "));
    assert_eq!(
        repaired[1],
        "authorized_keys:deploy keys: mode: 0644 -> 0600"
    );
    assert_eq!(
        test.read("/home/deploy/.ssh/authorized_keys"),
        format!("{ED25519_KEY}\n")
    );
    assert_eq!(test.mode("/home/deploy/.ssh/authorized_keys"), 0o600);
}

#[test]
fn non_exclusive_authorized_keys_keep_the_keys_already_there() {
    require_root();
    let test = host_with_deploy_user();
    test.mkdir("/home/deploy/.ssh");
    test.write(
        "/home/deploy/.ssh/authorized_keys",
        format!("{OTHER_KEY}\n").as_bytes(),
    );
    // The same key with another comment counts as present.
    let renamed = ED25519_KEY.replace("alice@laptop", "alice@desktop");
    let resource = authorized_keys(&[&renamed, OTHER_KEY], false);
    test.write(
        "/home/deploy/.ssh/authorized_keys",
        format!("{OTHER_KEY}\n{ED25519_KEY}\n").as_bytes(),
    );

    let changes = test.converge(std::slice::from_ref(&resource));

    assert!(
        changes
            .iter()
            .all(|change| !change.contains("keys: content")),
        "{changes:?}"
    );
    assert_eq!(
        test.read("/home/deploy/.ssh/authorized_keys"),
        format!("{OTHER_KEY}\n{ED25519_KEY}\n")
    );
    let added = authorized_keys(&[ED25519_KEY], false);
    test.write(
        "/home/deploy/.ssh/authorized_keys",
        format!("{OTHER_KEY}\n").as_bytes(),
    );
    test.converge(&[added]);
    assert_eq!(
        test.read("/home/deploy/.ssh/authorized_keys"),
        format!("{OTHER_KEY}\n{ED25519_KEY}\n")
    );
}

#[test]
fn authorized_keys_of_a_user_not_yet_created_are_a_change_and_an_error_on_apply() {
    let test = TestHost::new();
    test.write("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n");
    let resource = authorized_keys(&[ED25519_KEY], true);

    let planned = test.check(std::slice::from_ref(&resource));
    let error = test.converge_error(&resource);

    assert_eq!(
        planned,
        ["authorized_keys:deploy ensure: absent -> 1 keys (user deploy is not on this host yet)"]
    );
    assert!(
        error.starts_with(
            "Failed to write the authorized keys of deploy: there is no user deploy in /etc/passwd"
        ),
        "{error}"
    );
}

// ---------------------------------------------------------------------------
// java_truststore, with the host's keytool (the JDK the tests build with)

const CA_ONE: &str = include_str!("data/ca-one.pem");
const CA_TWO: &str = include_str!("data/ca-two.pem");
const TRUSTSTORE: &str = "/srv/app/truststore.p12";

impl TestHost {
    /// The names in a folder, sorted.
    fn read_dir_names(&self, path: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.real(path))
            .expect("lists")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// The truststore a role declares with these certificates (alias →
    /// PEM) and password, compiled as the server would; its contents join
    /// the host's.
    fn truststore(&mut self, certificates: &[(&str, &str)], password: &str) -> ResourceKind {
        let mut files = cms_roles::RepoFiles::new();
        files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
        let mut role = format!(
            "[[java_truststore]]\npath = \"{TRUSTSTORE}\"\npassword = \"{password}\"\nmode = \"0640\"\n[java_truststore.certificates]\n"
        );
        for (alias, pem) in certificates {
            files.insert(format!("files/{alias}.pem"), *pem);
            role.push_str(&format!("{alias} = {{ source = \"{alias}.pem\" }}\n"));
        }
        files.insert("roles/app.toml", role);
        let repository = cms_roles::Repository::parse(files).expect("parses");
        let node = cms_roles::Node {
            id: "i-1".into(),
            tags: BTreeMap::new(),
            facts: cms_roles::example_facts(),
            attested: BTreeMap::new(),
        };
        let catalog = cms_roles::compile(&repository, &node).expect("compiles");
        self.contents.extend(catalog.contents);
        catalog
            .resources
            .into_iter()
            .next()
            .expect("a resource")
            .kind
    }
}

#[test]
fn a_truststore_holds_exactly_the_catalogs_certificates_and_never_shows_its_password() {
    let mut test = TestHost::new();
    test.mkdir("/srv/app");
    let password = "store-secret-1";
    let both = test.truststore(&[("one", CA_ONE), ("two", CA_TWO)], password);

    let planned = test.check(std::slice::from_ref(&both));
    assert!(!test.exists(TRUSTSTORE), "check wrote nothing");
    let created = test.converge(std::slice::from_ref(&both));

    assert_eq!(planned, created);
    assert_eq!(
        created,
        ["java_truststore:/srv/app/truststore.p12 ensure: absent -> present with 2 certificates"]
    );
    assert_eq!(test.mode(TRUSTSTORE), 0o640);
    assert!(test.converge(std::slice::from_ref(&both)).is_empty());
    assert!(
        test.read_dir_names("/srv/app") == ["truststore.p12"],
        "no work file is left: {:?}",
        test.read_dir_names("/srv/app")
    );

    // One replaced, one removed.
    let only_one = test.truststore(&[("one", CA_TWO)], password);
    let before = std::fs::read(test.real(TRUSTSTORE)).expect("reads");
    let planned = test.check(std::slice::from_ref(&only_one));
    assert_eq!(std::fs::read(test.real(TRUSTSTORE)).expect("reads"), before);
    let changed = test.converge(std::slice::from_ref(&only_one));
    assert_eq!(planned, changed);
    assert_eq!(changed.len(), 2, "{changed:?}");
    assert!(
        changed[0].starts_with("java_truststore:/srv/app/truststore.p12 certificate one: SHA256 ")
    );
    assert!(
        changed[1].starts_with("java_truststore:/srv/app/truststore.p12 certificate two: SHA256 ")
    );
    assert!(changed[1].ends_with(" -> absent"));
    assert!(test.converge(std::slice::from_ref(&only_one)).is_empty());

    // Another password: the store is rebuilt with it.
    let new_password = test.truststore(&[("one", CA_TWO)], "store-secret-2");
    let rebuilt = test.converge(std::slice::from_ref(&new_password));
    assert_eq!(
        rebuilt,
        [
            "java_truststore:/srv/app/truststore.p12 content: not a PKCS#12 store the catalog's password opens -> rebuilt with 1 certificates"
        ]
    );
    assert!(test.converge(&[new_password]).is_empty());

    for line in created.iter().chain(&changed).chain(&rebuilt) {
        assert!(!line.contains("store-secret"), "{line}");
    }
}

#[test]
fn a_truststore_repairs_its_mode_without_rebuilding() {
    let mut test = TestHost::new();
    test.mkdir("/srv/app");
    let store = test.truststore(&[("one", CA_ONE)], "store-secret");
    test.converge(std::slice::from_ref(&store));
    let before = std::fs::read(test.real(TRUSTSTORE)).expect("reads");
    test.chmod(TRUSTSTORE, 0o666);

    let repaired = test.converge(std::slice::from_ref(&store));

    assert_eq!(
        repaired,
        ["java_truststore:/srv/app/truststore.p12 mode: 0666 -> 0640"]
    );
    assert_eq!(std::fs::read(test.real(TRUSTSTORE)).expect("reads"), before);
}
