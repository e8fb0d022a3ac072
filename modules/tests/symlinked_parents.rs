//! Attacks on the agent's filesystem through symbolic links in the parents
//! of managed paths. A local user who owns a directory on the way to a
//! managed path (`/home/alice` for `/home/alice/.ssh/authorized_keys`) can
//! replace a directory below it with a symlink to anywhere; root's writes,
//! mode and owner changes, removals and backups must then fail with an error
//! naming the link, and nothing outside may change.
//!
//! Every test runs twice: with `openat2` (`RESOLVE_NO_SYMLINKS`), and with
//! the `O_NOFOLLOW` walk used on kernels without it.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cms_modules::host::fs::{FileAttributes, sha256_hex};
use cms_modules::{BackupStore, Change, Context, Host, ProviderError, Session, provider};
use cms_roles::{Content, Directory, Ensure, File, Mode, ResourceKind, Symlink};
use tempfile::TempDir;

/// A host rooted in a temporary directory, and `outside`: a directory the
/// attacker's links point to, which nothing may change.
struct Attack {
    root: TempDir,
    outside: TempDir,
    _backup_dir: TempDir,
    host: Host,
    backups: BackupStore,
    contents: BTreeMap<String, Content>,
    session: Session,
}

#[derive(Clone, Copy, Debug)]
enum Resolver {
    Openat2,
    Walk,
}

const RESOLVERS: [Resolver; 2] = [Resolver::Openat2, Resolver::Walk];

impl Attack {
    fn new(resolver: Resolver) -> Attack {
        let root = TempDir::new().expect("a temporary root");
        let outside = TempDir::new().expect("a directory outside");
        let backup_dir = TempDir::new().expect("a backup directory");
        let host = match resolver {
            Resolver::Openat2 => Host::new(root.path()),
            Resolver::Walk => Host::new(root.path()).resolving_by_walk(),
        };
        let backups = BackupStore::open(backup_dir.path().join("backups")).expect("opens");
        Attack {
            root,
            outside,
            _backup_dir: backup_dir,
            host,
            backups,
            contents: BTreeMap::new(),
            session: Session::default(),
        }
    }

    fn real(&self, path: &str) -> PathBuf {
        self.host.path(path)
    }

    fn outside(&self, name: &str) -> PathBuf {
        self.outside.path().join(name)
    }

    fn mkdir(&self, path: &str) {
        std::fs::create_dir_all(self.real(path)).expect("creates the directory");
    }

    /// Makes `path` (under the root) a symlink to the outside directory.
    fn link_to_outside(&self, path: &str) {
        let real = self.real(path);
        std::fs::create_dir_all(real.parent().expect("a parent")).expect("creates parents");
        std::os::unix::fs::symlink(self.outside.path(), &real).expect("links");
    }

    fn write_outside(&self, name: &str, content: &[u8], mode: u32) {
        let path = self.outside(name);
        std::fs::write(&path, content).expect("writes");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// Everything in the outside directory: name, content hash, mode, owner.
    fn outside_snapshot(&self) -> Vec<String> {
        let mut entries: Vec<String> = std::fs::read_dir(self.outside.path())
            .expect("lists")
            .map(|entry| {
                let path = entry.expect("an entry").path();
                let metadata = path.symlink_metadata().expect("status");
                let content = if metadata.is_file() {
                    sha256_hex(&std::fs::read(&path).expect("reads"))
                } else {
                    "not a file".to_string()
                };
                format!(
                    "{} {content} {:o} {}:{}",
                    path.file_name().expect("a name").to_string_lossy(),
                    metadata.mode() & 0o7777,
                    metadata.uid(),
                    metadata.gid()
                )
            })
            .collect();
        entries.sort();
        entries
    }

    fn file_with_content(&mut self, path: &str, content: &[u8]) -> File {
        let sha256 = sha256_hex(content);
        self.contents
            .insert(sha256.clone(), Content(content.to_vec()));
        File {
            content_sha256: Some(sha256),
            ..file(path)
        }
    }

    fn context<'a>(&'a self, managed_paths: &'a BTreeSet<String>) -> Context<'a> {
        Context {
            host: &self.host,
            contents: &self.contents,
            backups: &self.backups,
            managed_paths,
            session: &self.session,
            restarts: &cms_modules::UNCOORDINATED,
            sensitive: false,
        }
    }

    fn try_converge(&self, resource: &ResourceKind) -> Result<Vec<Change>, ProviderError> {
        let managed_paths = BTreeSet::from([resource.name().to_string()]);
        let cx = self.context(&managed_paths);
        let provider = provider(resource);
        let changes = provider.check(&cx)?;
        if !changes.is_empty() {
            provider.apply(&changes, &cx)?;
        }
        Ok(changes)
    }

    /// Converges one resource and returns its error; panics if it succeeds.
    #[track_caller]
    fn converge_error(&self, resource: &ResourceKind) -> String {
        match self.try_converge(resource) {
            Ok(changes) => panic!("expected an error, got changes {changes:?}"),
            Err(error) => error_chain(&error),
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

/// The error names the managed path and the link in its way.
#[track_caller]
fn assert_names_the_link(error: &str, path: &str, link: &str) {
    assert!(error.contains(path), "the error names {path}: {error}");
    assert!(
        error.contains(&format!("{link} is a symlink")),
        "the error names the link {link}: {error}"
    );
}

#[test]
fn new_file_under_a_symlinked_parent_is_refused_and_nothing_is_written_through_the_link() {
    for resolver in RESOLVERS {
        let mut attack = Attack::new(resolver);
        attack.mkdir("/home/alice");
        attack.link_to_outside("/home/alice/.ssh");
        let keys = attack.file_with_content(
            "/home/alice/.ssh/authorized_keys",
            b"ssh-ed25519 AAAA root-key\n",
        );

        let error = attack.converge_error(&ResourceKind::File(keys));

        assert_names_the_link(
            &error,
            "/home/alice/.ssh/authorized_keys",
            "/home/alice/.ssh",
        );
        assert_eq!(
            attack.outside_snapshot(),
            Vec::<String>::new(),
            "{resolver:?}"
        );
    }
}

#[test]
fn existing_file_under_a_symlinked_grandparent_is_neither_read_nor_replaced() {
    for resolver in RESOLVERS {
        let mut attack = Attack::new(resolver);
        attack.link_to_outside("/srv/app");
        std::fs::create_dir(attack.outside("conf")).expect("mkdir");
        std::fs::write(attack.outside("conf/app.conf"), b"secret of another\n").expect("writes");
        let before = std::fs::read(attack.outside("conf/app.conf")).expect("reads");
        let conf = attack.file_with_content("/srv/app/conf/app.conf", b"managed\n");

        let error = attack.converge_error(&ResourceKind::File(conf));

        assert_names_the_link(&error, "/srv/app/conf/app.conf", "/srv/app");
        assert!(!error.contains("secret of another"), "{error}");
        assert_eq!(
            std::fs::read(attack.outside("conf/app.conf")).expect("reads"),
            before
        );
        assert_eq!(
            std::fs::read_dir(attack.outside("conf"))
                .expect("lists")
                .count(),
            1,
            "no temporary file was left outside ({resolver:?})"
        );
    }
}

#[test]
fn directory_under_a_symlinked_parent_is_not_created_through_the_link() {
    for resolver in RESOLVERS {
        let attack = Attack::new(resolver);
        attack.link_to_outside("/srv/app");

        let error = attack.converge_error(&ResourceKind::Directory(directory("/srv/app/data")));

        assert_names_the_link(&error, "/srv/app/data", "/srv/app");
        assert_eq!(
            attack.outside_snapshot(),
            Vec::<String>::new(),
            "{resolver:?}"
        );
    }
}

#[test]
fn mode_only_change_under_a_symlinked_parent_leaves_the_file_behind_the_link_alone() {
    for resolver in RESOLVERS {
        let attack = Attack::new(resolver);
        attack.link_to_outside("/srv/app");
        attack.write_outside("run.sh", b"#!/bin/sh\n", 0o644);
        let before = attack.outside_snapshot();
        let run = File {
            mode: Some(Mode(0o4755)),
            ..file("/srv/app/run.sh")
        };

        let error = attack.converge_error(&ResourceKind::File(run));

        assert_names_the_link(&error, "/srv/app/run.sh", "/srv/app");
        assert_eq!(attack.outside_snapshot(), before, "{resolver:?}");
    }
}

#[test]
fn owner_only_change_under_a_symlinked_parent_leaves_the_file_behind_the_link_alone() {
    for resolver in RESOLVERS {
        let attack = Attack::new(resolver);
        attack.link_to_outside("/etc/sudoers.d");
        attack.write_outside("alice", b"alice ALL=(ALL) ALL\n", 0o440);
        let before = attack.outside_snapshot();
        let sudoers = File {
            owner: Some("4321".into()),
            group: Some("4321".into()),
            ..file("/etc/sudoers.d/alice")
        };

        let error = attack.converge_error(&ResourceKind::File(sudoers));

        assert_names_the_link(&error, "/etc/sudoers.d/alice", "/etc/sudoers.d");
        assert_eq!(attack.outside_snapshot(), before, "{resolver:?}");
    }
}

#[test]
fn directory_mode_change_whose_own_path_became_a_symlink_is_refused() {
    for resolver in RESOLVERS {
        let attack = Attack::new(resolver);
        attack.link_to_outside("/srv/app");
        std::fs::set_permissions(
            attack.outside.path(),
            std::fs::Permissions::from_mode(0o700),
        )
        .expect("chmod");
        let app = Directory {
            mode: Some(Mode(0o777)),
            ..directory("/srv/app")
        };

        let error = attack.converge_error(&ResourceKind::Directory(app));

        assert!(error.contains("/srv/app"), "{error}");
        let mode = std::fs::metadata(attack.outside.path())
            .expect("status")
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o700, "{resolver:?}");
    }
}

#[test]
fn absent_file_under_a_symlinked_parent_is_not_removed_through_the_link() {
    for resolver in RESOLVERS {
        let attack = Attack::new(resolver);
        attack.link_to_outside("/etc/cron.d");
        attack.write_outside("backup", b"0 3 * * * root /usr/local/bin/backup\n", 0o644);
        let before = attack.outside_snapshot();
        let gone = File {
            ensure: Ensure::Absent,
            ..file("/etc/cron.d/backup")
        };

        let error = attack.converge_error(&ResourceKind::File(gone));

        assert_names_the_link(&error, "/etc/cron.d/backup", "/etc/cron.d");
        assert_eq!(attack.outside_snapshot(), before, "{resolver:?}");
        assert_eq!(
            attack.backups.all_entries().expect("lists"),
            Vec::new(),
            "nothing behind the link was copied into the backups"
        );
    }
}

#[test]
fn purged_directory_under_a_symlinked_parent_is_not_removed_through_the_link() {
    for resolver in RESOLVERS {
        let attack = Attack::new(resolver);
        attack.link_to_outside("/srv/app");
        std::fs::create_dir(attack.outside("cache")).expect("mkdir");
        std::fs::write(attack.outside("cache/entry"), b"kept\n").expect("writes");
        let gone = Directory {
            ensure: Ensure::Absent,
            purge: true,
            ..directory("/srv/app/cache")
        };

        let error = attack.converge_error(&ResourceKind::Directory(gone));

        assert_names_the_link(&error, "/srv/app/cache", "/srv/app");
        assert_eq!(
            std::fs::read(attack.outside("cache/entry")).expect("still there"),
            b"kept\n"
        );
    }
}

#[test]
fn symlink_resource_under_a_symlinked_parent_is_not_created_through_the_link() {
    for resolver in RESOLVERS {
        let attack = Attack::new(resolver);
        attack.link_to_outside("/etc/nginx/sites-enabled");
        std::fs::create_dir_all(attack.real("/etc/nginx/sites-available")).expect("mkdir");
        let site = Symlink {
            path: "/etc/nginx/sites-enabled/app".into(),
            target: Some("../sites-available/app".into()),
            ensure: Ensure::Present,
            owner: None,
            group: None,
            mode: None,
        };

        let error = attack.converge_error(&ResourceKind::Symlink(site));

        assert_names_the_link(
            &error,
            "/etc/nginx/sites-enabled/app",
            "/etc/nginx/sites-enabled",
        );
        assert_eq!(
            attack.outside_snapshot(),
            Vec::<String>::new(),
            "{resolver:?}"
        );
    }
}

#[test]
fn restore_under_a_symlinked_parent_is_refused_and_writes_nothing_through_the_link() {
    for resolver in RESOLVERS {
        let attack = Attack::new(resolver);
        attack.mkdir("/etc/app");
        std::fs::write(attack.real("/etc/app/app.conf"), b"old\n").expect("writes");
        attack
            .backups
            .save_from_host(&attack.host, "/etc/app/app.conf")
            .expect("backs up");
        std::fs::remove_dir_all(attack.real("/etc/app")).expect("removes");
        attack.link_to_outside("/etc/app");

        let error = attack
            .backups
            .restore(&attack.host, "/etc/app/app.conf", None)
            .expect_err("a restore through a link is refused");

        assert_names_the_link(&error_chain(&error), "/etc/app/app.conf", "/etc/app");
        assert_eq!(
            attack.outside_snapshot(),
            Vec::<String>::new(),
            "{resolver:?}"
        );
    }
}

#[test]
fn backup_of_a_path_under_a_symlinked_parent_copies_nothing_from_behind_the_link() {
    for resolver in RESOLVERS {
        let attack = Attack::new(resolver);
        attack.link_to_outside("/etc/app");
        attack.write_outside("app.conf", b"root's secret\n", 0o600);

        let error = attack
            .backups
            .save_from_host(&attack.host, "/etc/app/app.conf")
            .expect_err("a backup through a link is refused");

        assert_names_the_link(&error_chain(&error), "/etc/app/app.conf", "/etc/app");
        assert_eq!(attack.backups.all_entries().expect("lists"), Vec::new());
    }
}

#[test]
fn parent_swapped_for_a_symlink_between_check_and_apply_is_refused_at_apply() {
    for resolver in RESOLVERS {
        let mut attack = Attack::new(resolver);
        attack.mkdir("/home/alice/.ssh");
        std::fs::write(attack.real("/home/alice/.ssh/authorized_keys"), b"old\n").expect("writes");
        attack.write_outside("authorized_keys", b"what the link points at\n", 0o644);
        let before = attack.outside_snapshot();
        let keys = ResourceKind::File(
            attack.file_with_content("/home/alice/.ssh/authorized_keys", b"root-key\n"),
        );
        let managed_paths = BTreeSet::from([keys.name().to_string()]);
        let provider = provider(&keys);
        let changes = provider
            .check(&attack.context(&managed_paths))
            .expect("checks");
        assert_eq!(changes.len(), 1, "{changes:?}");

        // Alice owns /home/alice: she moves .ssh away and puts a link there.
        std::fs::rename(
            attack.real("/home/alice/.ssh"),
            attack.real("/home/alice/.ssh-moved"),
        )
        .expect("moves");
        attack.link_to_outside("/home/alice/.ssh");
        let error = provider
            .apply(&changes, &attack.context(&managed_paths))
            .expect_err("the write through the swapped link is refused");

        assert_names_the_link(
            &error_chain(&error),
            "/home/alice/.ssh/authorized_keys",
            "/home/alice/.ssh",
        );
        assert_eq!(attack.outside_snapshot(), before, "{resolver:?}");
    }
}

#[test]
fn file_swapped_for_a_symlink_after_its_status_is_never_read_through_the_link() {
    for resolver in RESOLVERS {
        let attack = Attack::new(resolver);
        attack.mkdir("/home/alice");
        std::fs::write(attack.real("/home/alice/notes"), b"alice's notes\n").expect("writes");
        attack.write_outside("shadow", b"root:$6$secret\n", 0o600);
        let status = attack.host.status("/home/alice/notes").expect("status");
        assert!(status.is_some());

        std::fs::remove_file(attack.real("/home/alice/notes")).expect("removes");
        std::os::unix::fs::symlink(attack.outside("shadow"), attack.real("/home/alice/notes"))
            .expect("links");
        let read = attack.host.read_file("/home/alice/notes");
        let hashed = attack.host.file_sha256("/home/alice/notes");

        assert!(read.is_err(), "read through a swapped link: {read:?}");
        assert!(hashed.is_err(), "hashed through a swapped link: {hashed:?}");
    }
}

#[test]
fn writes_below_the_root_never_escape_it_through_a_link_to_an_absolute_path() {
    for resolver in RESOLVERS {
        let attack = Attack::new(resolver);
        // A link whose target is absolute: under a root that is not `/`, it
        // would point out of the root even if links were followed inside.
        attack.link_to_outside("/var/lib/app");

        let error = attack
            .host
            .write_file_atomically("/var/lib/app/state", b"x", FileAttributes::default())
            .expect_err("refused");

        assert_names_the_link(&error_chain(&error), "/var/lib/app/state", "/var/lib/app");
        assert_eq!(
            attack.outside_snapshot(),
            Vec::<String>::new(),
            "{resolver:?}"
        );
    }
}

#[test]
fn managed_symlinks_and_real_directories_still_converge() {
    for resolver in RESOLVERS {
        let mut attack = Attack::new(resolver);
        attack.mkdir("/etc/app");
        let conf = attack.file_with_content("/etc/app/app.conf", b"managed\n");
        let link = Symlink {
            path: "/etc/app/current".into(),
            target: Some(attack.outside.path().display().to_string()),
            ensure: Ensure::Present,
            owner: None,
            group: None,
            mode: None,
        };

        attack
            .try_converge(&ResourceKind::File(conf))
            .expect("converges");
        attack
            .try_converge(&ResourceKind::Symlink(link))
            .expect("converges");

        assert_eq!(
            std::fs::read(attack.real("/etc/app/app.conf")).expect("reads"),
            b"managed\n"
        );
        assert_eq!(
            std::fs::read_link(attack.real("/etc/app/current")).expect("a link"),
            attack.outside.path()
        );
        let _: &Path = attack.root.path();
    }
}

#[test]
fn a_path_that_climbs_out_of_the_root_is_refused() {
    for resolver in RESOLVERS {
        let attack = Attack::new(resolver);
        attack.mkdir("/etc");
        let escape = format!("/etc/../..{}/planted", attack.outside.path().display());

        let error = attack
            .host
            .write_file_atomically(&escape, b"x", FileAttributes::default())
            .expect_err("refused");

        assert!(
            error_chain(&error).contains("never contains `..`"),
            "{error}"
        );
        assert_eq!(
            attack.outside_snapshot(),
            Vec::<String>::new(),
            "{resolver:?}"
        );
    }
}
