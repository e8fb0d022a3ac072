//! Following a git repository of roles: fetch a branch into a bare mirror,
//! read a commit into [`RepoFiles`], and accept each new commit only when it
//! validates.
//!
//! Everything here blocks (network, disk, zlib): callers on the async runtime
//! run it in `tokio::task::spawn_blocking`, one sync at a time per
//! [`Syncer`] (it takes `&mut self`, so the borrow checker enforces that).
//!
//! The mirror is a cache: it can be deleted at any time and is cloned again
//! on the next fetch. The truth about which commit a branch points to comes
//! from what the remote advertises on each fetch, not from the mirror's own
//! refs, so a branch deleted upstream is reported as missing rather than
//! served from a stale ref.
//!
//! A commit becomes a [`RepoFiles`] without a checkout: blobs are read from
//! the object database, and symbolic links are resolved inside the commit's
//! tree. A link that leaves the tree (absolute, or climbing above the root)
//! is recorded as escaping and is never followed, so a commit can never make
//! the server read a file of its own host.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use cms_roles::{Diagnostics, RepoFiles, Repository, example_facts};

use crate::secrets::{RevisionSecrets, ServerSecrets};
use gix::remote::Direction;

/// The refspec of a mirror: every branch of the remote, under the same name,
/// moved even when the remote rewrote history. A bare clone stores no fetch
/// refspec by itself (../shared/STACK.md, pitfall 3), so it is always given.
const MIRROR_REFSPEC: &str = "+refs/heads/*:refs/heads/*";

/// How many refused commits keep their diagnostics, so that a bad head is
/// not validated again on every interval. Older ones are validated again if
/// the branch ever points back to them, which is correct, only slower.
const REMEMBERED_REFUSALS: usize = 64;

/// Symbolic links followed while resolving one link, like the kernel's
/// `MAXSYMLINKS`: more than that is taken to be a loop.
const MAX_SYMLINK_HOPS: usize = 40;

/// A git repository and branch to follow, and where to keep its mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    /// A local path, or a `file://`, `https://` or `ssh://` URL (scp-like
    /// `user@host:path` works too). Local paths and `file://` run the
    /// system's `git-upload-pack`, and ssh runs the system `ssh`, as git
    /// does.
    pub url: String,
    /// The branch name, without `refs/heads/`.
    pub branch: String,
    /// The bare mirror itself (not a parent folder): created on first use.
    /// One [`Syncer`] per mirror: git's lock files make a second, concurrent
    /// fetch fail rather than corrupt it, but it would fail.
    pub mirror_dir: PathBuf,
}

/// Why fetching or reading a commit failed. The git cause is kept as the
/// source, so `{:#}` in the binary prints the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("Failed to parse the repository URL `{url}`")]
    InvalidUrl {
        url: String,
        #[source]
        source: gix::Error,
    },
    #[error("Failed to prepare the mirror directory {}", path.display())]
    PrepareMirror {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to clone {url} into the mirror {}", mirror.display())]
    Clone {
        url: String,
        mirror: PathBuf,
        #[source]
        source: gix::Error,
    },
    #[error(
        "Failed to open the git mirror {}\nhint: it is only a cache; delete it and it is cloned again",
        mirror.display()
    )]
    OpenMirror {
        mirror: PathBuf,
        #[source]
        source: gix::Error,
    },
    #[error("Failed to fetch from {url}")]
    Fetch {
        url: String,
        #[source]
        source: gix::Error,
    },
    #[error(
        "Failed to find branch `{branch}` in {url}: {}",
        existing_branches(existing)
    )]
    MissingBranch {
        url: String,
        branch: String,
        /// The branches the remote has, sorted.
        existing: Vec<String>,
    },
    #[error("Failed to read commit {commit}: it is not a commit id")]
    InvalidCommitId {
        commit: String,
        #[source]
        source: gix::Error,
    },
    #[error("Failed to read commit {commit} from the mirror {}", mirror.display())]
    ReadCommit {
        commit: String,
        mirror: PathBuf,
        #[source]
        source: gix::Error,
    },
    #[error("Failed to find revision `{revision}` in the mirror of the roles repository: {reason}")]
    UnknownRevision { revision: String, reason: String },
    #[error("Failed to read `{path}` of commit {commit}")]
    ReadBlob {
        commit: String,
        path: String,
        #[source]
        source: gix::Error,
    },
}

/// A commit that validated, with its parsed repository, ready to compile
/// catalogs from. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Revision {
    /// The full commit id in hex; it is also the revision of every catalog
    /// compiled from it.
    pub commit: String,
    pub repository: Arc<Repository>,
    /// Its secret values (decrypted, fetched): only in memory.
    pub secrets: Arc<crate::secrets::RevisionSecrets>,
}

/// What one [`Syncer::sync_once`] did.
#[derive(Debug, Clone)]
pub enum SyncOutcome {
    /// The branch still points to the current revision.
    Unchanged { commit: String },
    /// A new commit validated and is now current.
    Accepted(Revision),
    /// The branch points to a commit that does not validate; the current
    /// revision (if any) stays. Returned again, with the same diagnostics
    /// and without validating again, on every sync while the branch stays
    /// there.
    Refused {
        commit: String,
        diagnostics: Diagnostics,
    },
}

/// Follows a [`GitSource`] and keeps the last good revision in memory.
#[derive(Debug)]
pub struct Syncer {
    source: GitSource,
    secrets: Arc<ServerSecrets>,
    current: Option<Revision>,
    /// Refused commits and why, oldest first.
    refused: VecDeque<(String, Diagnostics)>,
}

impl GitSource {
    /// Fetches the branch and returns the commit id it points to, in hex.
    /// Clones the mirror on first use.
    pub fn fetch(&self) -> Result<String, SyncError> {
        self.fetch_interruptible(&AtomicBool::new(false))
    }

    /// [`GitSource::fetch`], stopping early when `should_interrupt` is set
    /// (from another thread, e.g. on shutdown).
    pub fn fetch_interruptible(&self, should_interrupt: &AtomicBool) -> Result<String, SyncError> {
        let url = self.parsed_url()?;
        if url.scheme == gix::url::Scheme::Https {
            // reqwest is built without a crypto provider of its own (one
            // provider for the whole process, ../shared/STACK.md pitfall 1).
            // Installing fails only when one is installed already: fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let remote_refs = if self.mirror_is_new()? {
            self.clone_mirror(url, should_interrupt)?
        } else {
            self.fetch_into_mirror(url, should_interrupt)?
        };
        self.branch_head(&remote_refs)
    }

    /// Reads every file of `commit` (a full hex id, as [`GitSource::fetch`]
    /// returns) from the mirror.
    ///
    /// Symbolic links are resolved inside the commit's tree: a link to a file
    /// of the tree becomes a copy of that file; a link that is absolute or
    /// climbs above the root is recorded as escaping and never followed;
    /// links to directories and dangling links are left out, as are
    /// submodules. A name that is not UTF-8 under the repository's folders
    /// is recorded ([`RepoFiles::insert_invalid_name`]) and refused when the
    /// commit is validated, as `cms-server check` refuses it in a folder.
    pub fn read_commit(&self, commit: &str) -> Result<RepoFiles, SyncError> {
        let repo = self.open_mirror()?;
        let id = gix::ObjectId::from_hex(commit.as_bytes()).map_err(|source| {
            SyncError::InvalidCommitId {
                commit: commit.to_string(),
                source,
            }
        })?;
        let read_error = |source: gix::Error| SyncError::ReadCommit {
            commit: commit.to_string(),
            mirror: self.mirror_dir.clone(),
            source,
        };
        let tree = repo
            .find_commit(id)
            .and_then(|commit| commit.tree())
            .map_err(read_error)?;
        let records = tree.traverse().breadthfirst.files().map_err(read_error)?;

        let mut nodes = BTreeMap::new();
        let mut invalid_names = Vec::new();
        for record in records {
            let Ok(path) = std::str::from_utf8(&record.filepath) else {
                // An error, as `check` reports it for a folder: once, for
                // the outermost entry whose own name is not UTF-8.
                let raw: &[u8] = record.filepath.as_ref();
                let parent = raw
                    .iter()
                    .rposition(|b| *b == b'/')
                    .map_or(&raw[..0], |i| &raw[..i]);
                let lossy = String::from_utf8_lossy(raw).into_owned();
                if std::str::from_utf8(parent).is_ok() && cms_roles::is_repository_path(&lossy) {
                    invalid_names.push(lossy);
                }
                continue;
            };
            let node = match record.mode.kind() {
                gix::object::tree::EntryKind::Tree => TreeNode::Directory,
                gix::object::tree::EntryKind::Blob
                | gix::object::tree::EntryKind::BlobExecutable => TreeNode::File(record.oid),
                gix::object::tree::EntryKind::Link => TreeNode::Link(record.oid),
                gix::object::tree::EntryKind::Commit => TreeNode::Submodule,
            };
            nodes.insert(path.to_string(), node);
        }

        let read_blob = |path: &str, oid: gix::ObjectId| -> Result<Vec<u8>, SyncError> {
            repo.find_blob(oid)
                .map(|mut blob| blob.take_data())
                .map_err(|source| SyncError::ReadBlob {
                    commit: commit.to_string(),
                    path: path.to_string(),
                    source,
                })
        };
        let mut link_targets = BTreeMap::new();
        for (path, node) in &nodes {
            if let TreeNode::Link(oid) = node {
                let target = String::from_utf8_lossy(&read_blob(path, *oid)?).into_owned();
                link_targets.insert(path.clone(), target);
            }
        }

        let mut files = RepoFiles::new();
        for name in invalid_names {
            files.insert_invalid_name(name);
        }
        for (path, node) in &nodes {
            match node {
                TreeNode::File(oid) => files.insert(path.clone(), read_blob(path, *oid)?),
                TreeNode::Link(_) => match resolve_link(&nodes, &link_targets, path) {
                    Resolved::File(oid) => files.insert(path.clone(), read_blob(path, oid)?),
                    Resolved::Escapes => {
                        files.insert_escaping_symlink(path.clone(), link_targets[path].clone())
                    }
                    // A link to a directory would list the same files twice
                    // (RepoFiles::read_dir skips them too); a dangling link
                    // names nothing, so a reference to it is reported as a
                    // missing file.
                    Resolved::Directory | Resolved::Missing => {}
                },
                TreeNode::Directory | TreeNode::Submodule => {}
            }
        }
        Ok(files)
    }

    /// The full id of the commit `revision` names in the mirror: a commit
    /// id or an unambiguous prefix of one (hex only: no branch names or
    /// `HEAD~1`). Fails with [`SyncError::UnknownRevision`] when it names
    /// nothing, more than one object, or something else than a commit.
    pub fn resolve_commit(&self, revision: &str) -> Result<String, SyncError> {
        let unknown = |reason: String| SyncError::UnknownRevision {
            revision: revision.to_string(),
            reason,
        };
        if !is_commit_prefix(revision) {
            return Err(unknown(
                "give a commit id or a prefix of at least 4 hex digits".to_string(),
            ));
        }
        let repo = self.open_mirror()?;
        let prefix = gix::hash::Prefix::from_hex(&revision.to_ascii_lowercase())
            .map_err(|error| unknown(error.to_string()))?;
        let id = match repo.objects.lookup_prefix(prefix, None) {
            Ok(Some(Ok(id))) => id,
            Ok(Some(Err(()))) => {
                return Err(unknown("it is ambiguous: give more hex digits".to_string()));
            }
            Ok(None) => return Err(unknown("no such commit".to_string())),
            Err(error) => return Err(unknown(error.to_string())),
        };
        let commit = repo
            .find_commit(id)
            .map_err(|_| unknown("it is not a commit".to_string()))?;
        Ok(commit.id.to_string())
    }

    fn parsed_url(&self) -> Result<gix::Url, SyncError> {
        let invalid = |source: gix::Error| SyncError::InvalidUrl {
            url: redacted(&self.url),
            source,
        };
        let mut url = gix::url::parse(self.url.as_bytes()).map_err(invalid)?;
        // A relative local path means relative to the server's working
        // directory, once, rather than to wherever a fetch happens to run.
        let current_dir =
            std::env::current_dir().map_err(|e| invalid(gix::Error::from_error(e)))?;
        url.canonicalize(&current_dir).map_err(invalid)?;
        Ok(url)
    }

    /// Whether there is no mirror yet: no directory, or an empty one (left by
    /// an interrupted first clone, which gix removes again, or made by hand).
    fn mirror_is_new(&self) -> Result<bool, SyncError> {
        match std::fs::read_dir(&self.mirror_dir) {
            Ok(mut entries) => Ok(entries.next().is_none()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(true),
            Err(source) => Err(SyncError::PrepareMirror {
                path: self.mirror_dir.clone(),
                source,
            }),
        }
    }

    fn clone_mirror(
        &self,
        url: gix::Url,
        should_interrupt: &AtomicBool,
    ) -> Result<Vec<gix::protocol::handshake::Ref>, SyncError> {
        std::fs::create_dir_all(&self.mirror_dir).map_err(|source| SyncError::PrepareMirror {
            path: self.mirror_dir.clone(),
            source,
        })?;
        let clone_error = |source: gix::Error| SyncError::Clone {
            url: redacted(&self.url),
            mirror: self.mirror_dir.clone(),
            source,
        };
        let mut prepare = gix::clone::PrepareFetch::new(
            url,
            &self.mirror_dir,
            gix::create::Kind::Bare,
            gix::create::Options::default(),
            open_options(),
        )
        .map_err(clone_error)?
        .configure_remote(|remote| {
            Ok(remote
                .with_refspecs([MIRROR_REFSPEC], Direction::Fetch)?
                .with_fetch_tags(gix::remote::fetch::Tags::None))
        });
        let (_repo, outcome) = prepare
            .fetch_only(gix::progress::Discard, should_interrupt)
            .map_err(clone_error)?;
        Ok(outcome.ref_map.remote_refs)
    }

    fn fetch_into_mirror(
        &self,
        url: gix::Url,
        should_interrupt: &AtomicBool,
    ) -> Result<Vec<gix::protocol::handshake::Ref>, SyncError> {
        let repo = self.open_mirror()?;
        let fetch_error = |source: gix::Error| SyncError::Fetch {
            url: redacted(&self.url),
            source,
        };
        // An anonymous remote with the URL given now, rather than the one
        // the mirror was cloned from: when the operator points the server
        // at another URL, the mirror follows.
        let remote = repo
            .remote_at(url)
            .and_then(|remote| remote.with_refspecs([MIRROR_REFSPEC], Direction::Fetch))
            .map_err(fetch_error)?
            .with_fetch_tags(gix::remote::fetch::Tags::None);
        let outcome = remote
            .connect(Direction::Fetch)
            .and_then(|connection| {
                connection.prepare_fetch(gix::progress::Discard, Default::default())
            })
            .and_then(|prepare| prepare.receive(gix::progress::Discard, should_interrupt))
            .map_err(fetch_error)?;
        Ok(outcome.ref_map.remote_refs)
    }

    fn open_mirror(&self) -> Result<gix::Repository, SyncError> {
        gix::open_opts(&self.mirror_dir, open_options()).map_err(|source| SyncError::OpenMirror {
            mirror: self.mirror_dir.clone(),
            source,
        })
    }

    /// The commit the branch points to, as the remote advertised it.
    fn branch_head(
        &self,
        remote_refs: &[gix::protocol::handshake::Ref],
    ) -> Result<String, SyncError> {
        let wanted = format!("refs/heads/{}", self.branch);
        let mut existing = Vec::new();
        for remote_ref in remote_refs {
            let (name, target, peeled) = remote_ref.unpack();
            if name == wanted.as_bytes()
                && let Some(id) = peeled.or(target)
            {
                return Ok(id.to_string());
            }
            if let Some(branch) = name.strip_prefix(b"refs/heads/") {
                existing.push(String::from_utf8_lossy(branch).into_owned());
            }
        }
        existing.sort();
        existing.dedup();
        Err(SyncError::MissingBranch {
            url: redacted(&self.url),
            branch: self.branch.clone(),
            existing,
        })
    }
}

impl Syncer {
    pub fn new(source: GitSource) -> Syncer {
        Syncer {
            source,
            secrets: ServerSecrets::none(),
            current: None,
            refused: VecDeque::new(),
        }
    }

    /// The same, decrypting and fetching secrets with `secrets`.
    pub fn with_secrets(mut self, secrets: Arc<ServerSecrets>) -> Syncer {
        self.secrets = secrets;
        self
    }

    /// What validation reads secrets with.
    pub fn secrets(&self) -> &Arc<ServerSecrets> {
        &self.secrets
    }

    pub fn source(&self) -> &GitSource {
        &self.source
    }

    /// The last accepted revision; `None` until a commit validates.
    pub fn current(&self) -> Option<Revision> {
        self.current.clone()
    }

    /// Fetches the branch once and, when it moved to a commit not seen
    /// before, reads and validates that commit. The current revision changes
    /// only on [`SyncOutcome::Accepted`]; an error leaves it as it was.
    pub fn sync_once(&mut self) -> Result<SyncOutcome, SyncError> {
        let started = crate::clock::instant();
        let commit = self.source.fetch()?;
        let fetched = started.elapsed();
        if let Some(current) = &self.current
            && current.commit == commit
        {
            return Ok(SyncOutcome::Unchanged { commit });
        }
        if let Some((_, diagnostics)) = self.refused.iter().find(|(id, _)| *id == commit) {
            return Ok(SyncOutcome::Refused {
                commit,
                diagnostics: diagnostics.clone(),
            });
        }

        let files = self.source.read_commit(&commit)?;
        let read = started.elapsed();
        let (repository, secrets, diagnostics) = validate_files(files, &self.secrets);
        let validated = started.elapsed();
        tracing::info!(
            commit,
            problems = diagnostics.len(),
            fetch_ms = fetched.as_millis() as u64,
            read_ms = (read - fetched).as_millis() as u64,
            validate_ms = (validated - read).as_millis() as u64,
            "validated a new commit"
        );

        if diagnostics.is_empty() {
            let revision = Revision {
                commit,
                repository: Arc::new(repository),
                secrets,
            };
            self.current = Some(revision.clone());
            Ok(SyncOutcome::Accepted(revision))
        } else {
            if self.refused.len() == REMEMBERED_REFUSALS {
                self.refused.pop_front();
            }
            // A commit refused for an AWS value not fetched yet is
            // validated again on the next sync, not remembered.
            if !crate::secrets::may_pass_later(&diagnostics) {
                self.refused
                    .push_back((commit.clone(), diagnostics.clone()));
            }
            Ok(SyncOutcome::Refused {
                commit,
                diagnostics,
            })
        }
    }
}

/// Options for opening the mirror: trust it (we made it), read the user's
/// and system git configuration (credentials, `url.<base>.insteadOf`,
/// `http.sslCAInfo`), but do not run the `git` binary to find its
/// installation's configuration, as `gix::prepare_clone_bare` would.
fn open_options() -> gix::open::Options {
    use gix::sec::trust::DefaultForLevel;
    gix::open::Options::default_for_level(gix::sec::Trust::Full)
}

/// One entry of a commit's tree.
#[derive(Debug, Clone, Copy)]
enum TreeNode {
    Directory,
    File(gix::ObjectId),
    Link(gix::ObjectId),
    Submodule,
}

/// Where a symbolic link leads, within the tree.
#[derive(Debug, PartialEq, Eq)]
enum Resolved {
    File(gix::ObjectId),
    Directory,
    /// Absolute, or climbs above the root of the tree (possibly through
    /// another link).
    Escapes,
    /// Dangling, through a submodule, or a loop.
    Missing,
}

/// Resolves `link_path` component by component, as the kernel would on a
/// checkout, with the tree as the whole filesystem: links met on the way
/// (the link itself, or a linked directory in its target) are expanded
/// relative to the directory that holds them.
fn resolve_link(
    nodes: &BTreeMap<String, TreeNode>,
    link_targets: &BTreeMap<String, String>,
    link_path: &str,
) -> Resolved {
    let mut pending: VecDeque<String> = link_path.split('/').map(str::to_string).collect();
    let mut directory: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                if directory.pop().is_none() {
                    return Resolved::Escapes;
                }
                continue;
            }
            _ => {}
        }
        let candidate = if directory.is_empty() {
            part.clone()
        } else {
            format!("{}/{part}", directory.join("/"))
        };
        match nodes.get(&candidate) {
            Some(TreeNode::Directory) => directory.push(part),
            Some(TreeNode::File(oid)) => {
                return if pending.is_empty() {
                    Resolved::File(*oid)
                } else {
                    Resolved::Missing
                };
            }
            Some(TreeNode::Link(_)) => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Resolved::Missing;
                }
                let target = &link_targets[&candidate];
                if target.starts_with('/') {
                    return Resolved::Escapes;
                }
                for component in target.split('/').rev() {
                    pending.push_front(component.to_string());
                }
            }
            Some(TreeNode::Submodule) | None => return Resolved::Missing,
        }
    }
    Resolved::Directory
}

/// Whether `revision` may name a commit: 4 to 40 hex digits.
pub fn is_commit_prefix(revision: &str) -> bool {
    (4..=40).contains(&revision.len()) && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

fn existing_branches(existing: &[String]) -> String {
    if existing.is_empty() {
        "the repository has no branches".to_string()
    } else {
        format!("its branches are {}", existing.join(", "))
    }
}

/// The URL without a password, for messages and logs
/// (`https://user:token@host/…` → `https://user:***@host/…`).
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// Parses and validates a commit's files: every parse problem, every
/// secret that cannot be decrypted or fetched (`secrets`), and every
/// problem compiling each role, with its secrets, for the nodes it is
/// written for. The repository is usable only when the diagnostics are
/// empty.
pub fn validate_files(
    files: cms_roles::RepoFiles,
    secrets: &Arc<ServerSecrets>,
) -> (Repository, Arc<RevisionSecrets>, cms_roles::Diagnostics) {
    let (repository, mut diagnostics) = Repository::load(files);
    let resolved = match secrets.resolve(&repository) {
        Ok(resolved) => resolved,
        Err(problems) => {
            // The rest is still checked, with a stand-in for every secret:
            // one sync reports every problem.
            diagnostics.extend(problems);
            let placeholders = cms_roles::SecretValues::placeholders(&repository);
            diagnostics.extend(cms_roles::validate_with_secrets(
                &repository,
                &example_facts(),
                &placeholders,
            ));
            return (
                repository,
                RevisionSecrets::empty(),
                diagnostics.into_sorted(),
            );
        }
    };
    let (values, _) = resolved.values();
    diagnostics.extend(cms_roles::validate_with_secrets(
        &repository,
        &example_facts(),
        &values,
    ));
    (repository, resolved, diagnostics.into_sorted())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hex_prefixes_of_four_digits_or_more_name_a_commit() {
        assert!(is_commit_prefix("abcd"));
        assert!(is_commit_prefix(&"a".repeat(40)));
        for bad in ["abc", "main", "HEAD~1", "abcd^", "", &"a".repeat(41)] {
            assert!(!is_commit_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn a_secret_that_does_not_decrypt_is_reported_with_the_other_problems_of_the_commit() {
        let stranger = age::x25519::Identity::generate();
        let foreign =
            crate::secrets::crypt::encrypt_armored(b"v", &[stranger.to_public()]).unwrap();
        let mut files = RepoFiles::new();
        files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
        files.insert("roles/base.toml", "[[package]]\nnmae = \"curl\"\n");
        files.insert(
            "secrets/common.toml",
            format!("[db]\nage = '''\n{foreign}'''\n").as_str(),
        );
        let server = Arc::new(crate::secrets::ServerSecrets::with_identity(
            Some(age::x25519::Identity::generate()),
            &crate::secrets::SecretsConfig::default(),
            crate::clock::system(),
        ));
        let (_, _, diagnostics) = validate_files(files, &server);
        let text = diagnostics.to_string();
        assert!(
            text.contains("secrets/common.toml:1:2: secret `db`"),
            "{text}"
        );
        assert!(text.contains("roles/base.toml:2"), "{text}");
    }

    fn tree(
        entries: &[(&str, TreeNode)],
        links: &[(&str, &str)],
    ) -> (BTreeMap<String, TreeNode>, BTreeMap<String, String>) {
        (
            entries.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
            links
                .iter()
                .map(|(p, t)| (p.to_string(), t.to_string()))
                .collect(),
        )
    }

    #[track_caller]
    fn check_link(
        entries: &[(&str, TreeNode)],
        links: &[(&str, &str)],
        link: &str,
        expected: Resolved,
    ) {
        let (nodes, targets) = tree(entries, links);
        assert_eq!(resolve_link(&nodes, &targets, link), expected);
    }

    const BLOB: gix::ObjectId = gix::ObjectId::Sha1([1; 20]);
    const LINK: gix::ObjectId = gix::ObjectId::Sha1([2; 20]);

    #[test]
    fn links_inside_the_tree_resolve_to_their_file() {
        let entries = [
            ("files", TreeNode::Directory),
            ("files/real", TreeNode::File(BLOB)),
            ("files/same-dir", TreeNode::Link(LINK)),
            ("templates", TreeNode::Directory),
            ("templates/up-and-over", TreeNode::Link(LINK)),
            ("templates/chained", TreeNode::Link(LINK)),
            ("linked-dir", TreeNode::Link(LINK)),
            ("through-linked-dir", TreeNode::Link(LINK)),
        ];
        let links = [
            ("files/same-dir", "real"),
            ("templates/up-and-over", "../files/./real"),
            ("templates/chained", "up-and-over"),
            ("linked-dir", "files"),
            ("through-linked-dir", "linked-dir/real"),
        ];
        for link in [
            "files/same-dir",
            "templates/up-and-over",
            "templates/chained",
            "through-linked-dir",
        ] {
            check_link(&entries, &links, link, Resolved::File(BLOB));
        }
        check_link(&entries, &links, "linked-dir", Resolved::Directory);
    }

    #[test]
    fn links_leaving_the_tree_escape_and_dangling_links_are_missing() {
        let entries = [
            ("files", TreeNode::Directory),
            ("files/absolute", TreeNode::Link(LINK)),
            ("files/above-root", TreeNode::Link(LINK)),
            ("files/via-escaping-link", TreeNode::Link(LINK)),
            ("files/dangling", TreeNode::Link(LINK)),
            ("files/loop-a", TreeNode::Link(LINK)),
            ("files/loop-b", TreeNode::Link(LINK)),
            ("files/into-submodule", TreeNode::Link(LINK)),
            ("vendor", TreeNode::Submodule),
        ];
        let links = [
            ("files/absolute", "/etc/passwd"),
            ("files/above-root", "../../etc/passwd"),
            ("files/via-escaping-link", "above-root"),
            ("files/dangling", "nothing-here"),
            ("files/loop-a", "loop-b"),
            ("files/loop-b", "loop-a"),
            ("files/into-submodule", "../vendor/file"),
        ];
        for link in [
            "files/absolute",
            "files/above-root",
            "files/via-escaping-link",
        ] {
            check_link(&entries, &links, link, Resolved::Escapes);
        }
        for link in ["files/dangling", "files/loop-a", "files/into-submodule"] {
            check_link(&entries, &links, link, Resolved::Missing);
        }
    }

    #[test]
    fn passwords_in_urls_stay_out_of_messages() {
        assert_eq!(
            redacted("https://deploy:s3cret@git.example.com/roles.git"),
            "https://deploy:***@git.example.com/roles.git"
        );
        assert_eq!(
            redacted("ssh://git@git.example.com/roles.git"),
            "ssh://git@git.example.com/roles.git"
        );
        assert_eq!(redacted("/srv/roles"), "/srv/roles");
    }
}
