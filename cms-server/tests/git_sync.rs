//! Git sync against real repositories made with the `git` command line in
//! temporary directories: commits are accepted when they validate, refused
//! with file and line when they do not, and the last good revision stays.
//!
//! `git` runs with its global and system configuration turned off, so the
//! tests behave the same on any machine; nothing here touches the network.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use cms_roles::Entry;
use cms_server::git_sync::{GitSource, SyncError, SyncOutcome, Syncer};
use tempfile::TempDir;

#[test]
fn first_sync_accepts_a_valid_repository_and_a_second_without_new_commits_is_unchanged() {
    let upstream = RolesRepository::new();
    let first = upstream.head();
    let mut server = Server::following(upstream.path_url());

    let revision = server.accepted();
    assert_eq!(revision.commit, first);
    assert_eq!(
        revision.repository.roles.keys().collect::<Vec<_>>(),
        ["base"]
    );
    assert_eq!(server.current_commit().as_deref(), Some(first.as_str()));

    match server.sync() {
        SyncOutcome::Unchanged { commit } => assert_eq!(commit, first),
        other => panic!("expected Unchanged, got {other:?}"),
    }
}

#[test]
fn a_role_change_is_accepted_as_the_new_revision() {
    let upstream = RolesRepository::new();
    let mut server = Server::following(upstream.path_url());
    server.accepted();

    upstream.write(
        "roles/base.toml",
        &format!("{BASE_ROLE}\n[[package]]\nname = \"curl\"\n"),
    );
    let second = upstream.commit("base: install curl");

    let revision = server.accepted();
    assert_eq!(revision.commit, second);
    assert_eq!(revision.repository.roles["base"].resources.len(), 3);
    assert_eq!(server.current_commit(), Some(second));
}

#[test]
fn a_broken_commit_is_refused_with_file_and_line_and_the_last_good_revision_stays() {
    let upstream = RolesRepository::new();
    let good = upstream.head();
    let mut server = Server::following(upstream.path_url());
    server.accepted();

    upstream.write(
        "roles/base.toml",
        &BASE_ROLE.replace(
            "source = \"managed.txt\"",
            "source = \"managed.txt\"\ncolour = \"blue\"",
        ),
    );
    upstream.write(
        "templates/motd.hbs",
        "Welcome to {{fact.hostname}}.\nAsk {{data.oncall}} for help.\n",
    );
    let broken = upstream.commit("motd names the on-call person");

    let problems = server.refused(&broken);
    assert_eq!(
        problems,
        [
            "roles/base.toml:5:1: templates/motd.hbs:2:5: Failed to render: template uses `data.oncall`, \
             which is not defined for the node with no tags: define it in data/, pass it in `vars`, or give a fallback \
             with {{default data.oncall \"...\"}}",
            "roles/base.toml:11:1: unknown field `colour`, expected one of path, ensure, content, \
             content_base64, source, template, vars, owner, group, mode, require, notify, for_each, \
             sensitive",
        ]
    );
    assert_eq!(server.current_commit(), Some(good.clone()));

    // While the branch stays on the broken commit, every sync reports the
    // same refusal and the good revision keeps being served.
    assert_eq!(server.refused(&broken), problems);
    assert_eq!(server.current_commit(), Some(good));

    upstream.write("roles/base.toml", BASE_ROLE);
    upstream.write(
        "data/common.toml",
        "contact = \"ops@example.com\"\noncall = \"Kim\"\n",
    );
    let fixed = upstream.commit("define the on-call person");
    assert_eq!(server.accepted().commit, fixed);
    assert_eq!(server.current_commit(), Some(fixed));
}

#[test]
fn a_first_commit_that_is_broken_leaves_no_current_revision() {
    let upstream = RolesRepository::new();
    upstream.write(
        "cms.toml",
        "[hierarchy]\nlayers = [\"common\"]\nstrict = true\n",
    );
    let broken = upstream.commit("an unknown setting");
    let mut server = Server::following(upstream.path_url());

    let problems = server.refused(&broken);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("cms.toml:3:"), "{problems:?}");
    assert_eq!(server.current_commit(), None);
}

#[test]
fn a_symlink_leaving_the_repository_is_never_followed_and_a_role_using_it_is_refused() {
    let upstream = RolesRepository::new();
    upstream.symlink("/etc/passwd", "files/passwd");
    upstream.symlink("../../etc/shadow", "files/shadow");
    upstream.write(
        "roles/base.toml",
        &format!("{BASE_ROLE}\n[[file]]\npath = \"/etc/copied\"\nsource = \"passwd\"\n"),
    );
    let commit = upstream.commit("copy the host's passwd");
    let mut server = Server::following(upstream.path_url());

    assert_eq!(
        server.refused(&commit),
        [
            "roles/base.toml:14:1: `files/passwd` is a symbolic link to `/etc/passwd`, outside the repository; \
             it is never followed"
        ]
    );

    let files = server.syncer.source().read_commit(&commit).unwrap();
    assert_eq!(
        files.get("files/passwd"),
        Some(&Entry::EscapingSymlink("/etc/passwd".to_string()))
    );
    assert_eq!(
        files.get("files/shadow"),
        Some(&Entry::EscapingSymlink("../../etc/shadow".to_string()))
    );
}

#[test]
fn a_commit_is_read_like_a_checkout_links_inside_resolved_submodules_left_out() {
    let upstream = RolesRepository::new();
    upstream.symlink("managed.txt", "files/alias.txt");
    upstream.symlink("../files/managed.txt", "templates/from-files.hbs");
    upstream.symlink("files", "linked-files");
    upstream.symlink("missing.txt", "files/dangling.txt");
    upstream.add_submodule_entry("vendor/library");
    let commit = upstream.commit("links and a submodule");
    let server = Server::following(upstream.path_url());

    server.syncer.source().fetch().unwrap();
    let files = server.syncer.source().read_commit(&commit).unwrap();
    let managed = Some(Entry::File(MANAGED_FILE.as_bytes().to_vec()));
    assert_eq!(files.get("files/alias.txt").cloned(), managed);
    assert_eq!(files.get("templates/from-files.hbs").cloned(), managed);
    let mut paths: Vec<&str> = files.under("").map(|(path, _)| path).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "cms.toml",
            "data/common.toml",
            "files/alias.txt",
            "files/managed.txt",
            "roles/base.toml",
            "templates/from-files.hbs",
            "templates/motd.hbs",
        ]
    );
}

#[test]
fn a_file_name_that_is_not_utf8_is_refused_naming_it_as_check_does() {
    let upstream = RolesRepository::new();
    let mut server = Server::following(upstream.path_url());
    server.accepted();
    upstream.write_bytes(
        OsStr::from_bytes(b"roles/caf\xe9.toml"),
        b"[[package]]\nname = \"vim\"\n",
    );
    // Outside the repository's folders, a name is not read at all.
    upstream.write_bytes(OsStr::from_bytes(b"docs/caf\xe9.md"), b"notes");
    let commit = upstream.commit("a role with a Latin-1 file name");
    assert_eq!(
        server.refused(&commit),
        [
            "roles/caf\u{FFFD}.toml: the name is not valid UTF-8 (shown with \u{FFFD} for the bytes that are not): rename it; a repository's file names must be UTF-8"
        ]
    );
}

#[test]
fn syncing_works_from_a_file_url_and_from_a_plain_path() {
    let upstream = RolesRepository::new();
    let head = upstream.head();
    let file_url = format!("file://{}", upstream.dir.path().display());
    let plain_path = upstream.path_url();
    for url in [file_url, plain_path] {
        let mut server = Server::following(url.clone());
        assert_eq!(server.accepted().commit, head, "{url}");
    }
}

#[test]
fn a_missing_branch_is_an_error_naming_it_and_the_branches_that_exist() {
    let upstream = RolesRepository::new();
    upstream.git(&["branch", "staging"]);
    let mut server = Server::following_branch(upstream.path_url(), "production");

    let error = server.syncer.sync_once().unwrap_err();
    assert!(
        matches!(&error, SyncError::MissingBranch { branch, existing, .. }
            if branch == "production" && existing == &["main", "staging"]),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "Failed to find branch `production` in {}: its branches are main, staging",
            upstream.path_url()
        )
    );
    assert_eq!(server.current_commit(), None);
}

#[test]
fn a_branch_deleted_upstream_is_missing_even_though_the_mirror_still_has_it() {
    let upstream = RolesRepository::new();
    upstream.git(&["branch", "staging"]);
    let mut server = Server::following_branch(upstream.path_url(), "staging");
    server.accepted();

    upstream.git(&["branch", "-D", "staging"]);
    let error = server.syncer.sync_once().unwrap_err();
    assert!(
        matches!(&error, SyncError::MissingBranch { existing, .. } if existing == &["main"]),
        "{error:?}"
    );
    assert!(server.current_commit().is_some());
}

#[test]
fn history_rewritten_upstream_is_followed() {
    let upstream = RolesRepository::new();
    upstream.write("files/managed.txt", "first\n");
    upstream.commit("first");
    let mut server = Server::following(upstream.path_url());
    server.accepted();

    upstream.git(&["reset", "--hard", "HEAD~1"]);
    upstream.write("files/managed.txt", "rewritten\n");
    let rewritten = upstream.commit("rewritten");
    assert_eq!(server.accepted().commit, rewritten);
}

#[test]
fn a_deleted_mirror_is_cloned_again() {
    let upstream = RolesRepository::new();
    let mut server = Server::following(upstream.path_url());
    server.accepted();

    std::fs::remove_dir_all(&server.syncer.source().mirror_dir).unwrap();
    upstream.write("files/managed.txt", "changed\n");
    let changed = upstream.commit("change a file");
    assert_eq!(server.accepted().commit, changed);
}

#[test]
fn fetching_from_a_repository_that_does_not_exist_fails_with_the_url() {
    let missing = TempDir::new().unwrap().path().join("no-such-repository");
    let mut server = Server::following(missing.display().to_string());

    let error = server.syncer.sync_once().unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with("Failed to "), "{message}");
    assert!(message.contains("no-such-repository"), "{message}");
    assert!(std::error::Error::source(&error).is_some(), "{error:?}");
}

const BASE_ROLE: &str = r#"description = "What every instance gets"

[[file]]
path = "/etc/motd"
template = "motd.hbs"
mode = "0644"

[[file]]
path = "/etc/cms/managed"
source = "managed.txt"
"#;

const MANAGED_FILE: &str = "This file is managed by cms.\n";

/// A server's view of a repository: a [`Syncer`] and its mirror.
struct Server {
    syncer: Syncer,
    _mirror_parent: TempDir,
}

impl Server {
    fn following(url: String) -> Server {
        Server::following_branch(url, "main")
    }

    fn following_branch(url: String, branch: &str) -> Server {
        let mirror_parent = TempDir::new().unwrap();
        let source = GitSource {
            url,
            branch: branch.to_string(),
            mirror_dir: mirror_parent.path().join("mirror.git"),
        };
        Server {
            syncer: Syncer::new(source),
            _mirror_parent: mirror_parent,
        }
    }

    #[track_caller]
    fn sync(&mut self) -> SyncOutcome {
        match self.syncer.sync_once() {
            Ok(outcome) => outcome,
            Err(error) => panic!("sync failed: {}", error_chain(&error)),
        }
    }

    #[track_caller]
    fn accepted(&mut self) -> cms_server::git_sync::Revision {
        match self.sync() {
            SyncOutcome::Accepted(revision) => revision,
            other => panic!("expected Accepted, got {other:?}"),
        }
    }

    /// The problems of a refused commit, as the server shows them.
    #[track_caller]
    fn refused(&mut self, expected_commit: &str) -> Vec<String> {
        match self.sync() {
            SyncOutcome::Refused {
                commit,
                diagnostics,
            } => {
                assert_eq!(commit, expected_commit);
                diagnostics.iter().map(ToString::to_string).collect()
            }
            other => panic!("expected Refused, got {other:?}"),
        }
    }

    fn current_commit(&self) -> Option<String> {
        self.syncer.current().map(|revision| revision.commit)
    }
}

/// An upstream roles repository: a git working tree with one valid commit on
/// `main` to begin with.
struct RolesRepository {
    dir: TempDir,
}

impl RolesRepository {
    fn new() -> RolesRepository {
        let repository = RolesRepository {
            dir: TempDir::new().unwrap(),
        };
        repository.git(&["init", "--quiet", "--initial-branch=main"]);
        repository.write("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
        repository.write("data/common.toml", "contact = \"ops@example.com\"\n");
        repository.write(
            "templates/motd.hbs",
            "Welcome to {{fact.hostname}}.\nAsk {{data.contact}} for help.\n",
        );
        repository.write("files/managed.txt", MANAGED_FILE);
        repository.write("roles/base.toml", BASE_ROLE);
        repository.commit("a base role");
        repository
    }

    /// The repository as a plain local path.
    fn path_url(&self) -> String {
        self.dir.path().display().to_string()
    }

    fn write(&self, path: &str, text: &str) {
        self.write_bytes(OsStr::new(path), text.as_bytes());
    }

    fn write_bytes(&self, path: &OsStr, bytes: &[u8]) {
        let path = self.dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn symlink(&self, target: &str, path: &str) {
        let path = self.dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, path).unwrap();
    }

    /// A submodule as git records it: a commit entry in the tree (the
    /// commit need not exist here, as in a clone without submodules).
    fn add_submodule_entry(&self, path: &str) {
        let cacheinfo = format!("160000,{},{path}", "1".repeat(40));
        self.git(&["update-index", "--add", "--cacheinfo", &cacheinfo]);
    }

    /// Commits everything and returns the new commit id.
    fn commit(&self, message: &str) -> String {
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--message", message]);
        self.head()
    }

    fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// Runs git in the repository with no configuration but ours; returns
    /// its trimmed stdout.
    #[track_caller]
    fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .args([
                "-c",
                "user.name=cms tests",
                "-c",
                "user.email=tests@cms.invalid",
                "-c",
                "commit.gpgsign=false",
                "-c",
                "core.quotePath=false",
            ])
            .args(args)
            .current_dir(self.dir.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("the git command line is installed");
        assert!(
            output.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
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
