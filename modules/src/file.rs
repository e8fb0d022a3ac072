//! `file`: a regular file's existence, content, owner, group and mode.
//!
//! - `ensure = "present"` with `content_sha256` writes that content; without
//!   it only existence and metadata are managed (a missing file is created
//!   empty, an existing one keeps its content).
//! - Content is written atomically, with its final owner, group and mode set
//!   on the temporary file before the rename, so the new content is never
//!   visible with the wrong permissions. The content it replaces goes to the
//!   backup store first.
//! - `check` lists a content change with a unified diff when both sides are
//!   UTF-8 text under [`DIFF_SIZE_LIMIT`], and otherwise a line naming both
//!   hashes.
//! - Mode, owner and group are compared only when the catalog sets them.
//!   A new file without a mode gets [`DEFAULT_FILE_MODE`](crate::host::fs::DEFAULT_FILE_MODE)
//!   ([`SENSITIVE_FILE_MODE`], 0600, when the resource is sensitive);
//!   a replaced one keeps its own.
//! - Content is bytes (text, or `content_base64` decoded by the compiler):
//!   written byte-exact, diffed only when both sides are UTF-8.
//! - A sensitive file (`Context::sensitive`) is only hashed: its old
//!   content is never read into a diff, and its content change is
//!   `content: (sensitive) -> (sensitive)`, without hashes.
//! - A symlink where a file is declared is replaced by the file (Puppet's
//!   `links => manage`); a directory or special file there is an error, as
//!   is a missing parent directory: parents are never created implicitly,
//!   as in Puppet, so a typo in a path does not grow a tree.
//! - `ensure = "absent"` removes a file or symlink, backing up a file first;
//!   it refuses to remove a directory.

use cms_roles::{Ensure, File};
use similar::TextDiff;

use crate::host::fs::{FileAttributes, FileKind, FileStatus, parent_path, sha256_hex};
use crate::{Change, Context, Host, HostError, Provider, ProviderError, SENSITIVE};

/// The mode of a new sensitive file whose resource sets none: owner-only,
/// as it holds a secret.
pub const SENSITIVE_FILE_MODE: u32 = 0o600;

/// Content larger than this (on either side) is summarised by its hashes
/// instead of diffed: a diff of megabytes helps nobody and costs memory.
pub const DIFF_SIZE_LIMIT: u64 = 1024 * 1024;

/// How long the diff algorithm may search for a minimal diff before it
/// settles for a correct but longer one.
const DIFF_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

pub struct FileProvider<'a>(pub &'a File);

impl Provider for FileProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let file = self.0;
        let status = cx.host.status(&file.path)?;
        match (file.ensure, status) {
            (Ensure::Absent, None) => Ok(Vec::new()),
            (Ensure::Absent, Some(status)) => match status.kind {
                FileKind::File => Ok(vec![Change::new("ensure", "present", "absent")]),
                FileKind::Symlink => Ok(vec![Change::new(
                    "ensure",
                    describe_symlink(cx.host, &file.path)?,
                    "absent",
                )]),
                kind => Err(ProviderError::Failed(format!(
                    "Failed to remove file {}: a {} is there; a file resource never removes one",
                    file.path,
                    kind.describe()
                ))),
            },
            (Ensure::Present, None) => {
                let mut change = Change::new("ensure", "absent", "present");
                if let Some(diff) = self.creation_diff(cx)? {
                    change = change.with_diff(diff);
                }
                Ok(vec![change])
            }
            (Ensure::Present, Some(status)) => match status.kind {
                FileKind::File => self.check_existing(&status, cx),
                FileKind::Symlink => {
                    let mut change =
                        Change::new("ensure", describe_symlink(cx.host, &file.path)?, "present");
                    if let Some(diff) = self.creation_diff(cx)? {
                        change = change.with_diff(diff);
                    }
                    Ok(vec![change])
                }
                kind => Err(ProviderError::Failed(format!(
                    "Failed to manage file {}: a {} is in the way; remove it or declare the path as what it is",
                    file.path,
                    kind.describe()
                ))),
            },
        }
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        let file = self.0;
        let changed = |attribute: &str| changes.iter().any(|c| c.attribute == attribute);
        if let Some(ensure) = changes.iter().find(|c| c.attribute == "ensure") {
            if ensure.to == "absent" {
                cx.backups.save_from_host(cx.host, &file.path)?;
                cx.host.remove_file(&file.path)?;
                return Ok(());
            }
            require_parent_directory(cx.host, &file.path)?;
            let content = match &file.content_sha256 {
                Some(sha256) => lookup_content(cx, sha256)?,
                None => &[],
            };
            let attributes = FileAttributes {
                mode: Some(file.mode.map_or(
                    if cx.sensitive {
                        SENSITIVE_FILE_MODE
                    } else {
                        crate::host::fs::DEFAULT_FILE_MODE
                    },
                    |mode| mode.0,
                )),
                ..self.wanted_ownership(cx.host)?
            };
            cx.host
                .write_file_atomically(&file.path, content, attributes)?;
            return Ok(());
        }
        if changed("content") {
            let sha256 = file
                .content_sha256
                .as_deref()
                .expect("a content change comes from a catalog content");
            let content = lookup_content(cx, sha256)?;
            // The catalog's metadata goes on the temporary file, so the
            // rename changes content, owner and mode at once; what the
            // catalog leaves unset is kept from the file being replaced.
            // Names are resolved before anything is saved or written.
            let attributes = FileAttributes {
                mode: file.mode.map(|mode| mode.0),
                ..self.wanted_ownership(cx.host)?
            };
            cx.backups.save_from_host(cx.host, &file.path)?;
            cx.host
                .write_file_atomically(&file.path, content, attributes)?;
            return Ok(());
        }
        apply_metadata_changes(cx.host, &file.path, self.metadata(), changes)
    }
}

impl FileProvider<'_> {
    fn metadata(&self) -> OwnershipAndMode<'_> {
        OwnershipAndMode {
            owner: self.0.owner.as_deref(),
            group: self.0.group.as_deref(),
            mode: self.0.mode.map(|mode| mode.0),
        }
    }

    fn check_existing(
        &self,
        status: &FileStatus,
        cx: &Context<'_>,
    ) -> Result<Vec<Change>, ProviderError> {
        let file = self.0;
        let mut changes = Vec::new();
        if let Some(wanted_sha256) = &file.content_sha256 {
            // A small file is read once, for its hash and its diff; a large
            // one is hashed in pieces and never held in memory.
            // A sensitive one is only hashed: its old content is never read
            // into a diff.
            let (current_sha256, current_content) =
                if status.size <= DIFF_SIZE_LIMIT && !cx.sensitive {
                    let content = cx.host.read_file(&file.path)?;
                    (sha256_hex(&content), Some(content))
                } else {
                    (cx.host.file_sha256(&file.path)?, None)
                };
            if &current_sha256 != wanted_sha256 && cx.sensitive {
                changes.push(Change::new("content", SENSITIVE, SENSITIVE));
            } else if &current_sha256 != wanted_sha256 {
                let wanted_content = lookup_content(cx, wanted_sha256)?;
                let diff = content_diff(
                    &file.path,
                    current_content.as_deref(),
                    &current_sha256,
                    wanted_content,
                    wanted_sha256,
                );
                changes.push(
                    Change::new(
                        "content",
                        format!("sha256:{current_sha256}"),
                        format!("sha256:{wanted_sha256}"),
                    )
                    .with_diff(diff),
                );
            }
        }
        changes.extend(metadata_changes(cx.host, status, &self.metadata())?);
        Ok(changes)
    }

    /// The diff shown for a file about to be created: all of its content.
    /// None for a sensitive file: its content is never shown.
    fn creation_diff(&self, cx: &Context<'_>) -> Result<Option<String>, ProviderError> {
        let Some(wanted_sha256) = &self.0.content_sha256 else {
            return Ok(None);
        };
        if cx.sensitive {
            return Ok(None);
        }
        let wanted_content = lookup_content(cx, wanted_sha256)?;
        Ok(Some(content_diff(
            &self.0.path,
            Some(b""),
            &sha256_hex(b""),
            wanted_content,
            wanted_sha256,
        )))
    }

    fn wanted_ownership(&self, host: &Host) -> Result<FileAttributes, ProviderError> {
        wanted_ownership(host, self.0.owner.as_deref(), self.0.group.as_deref())
    }
}

/// The ids of a resource's owner and group, to give a file as it is
/// written; `None` keeps what the file has.
pub(crate) fn wanted_ownership(
    host: &Host,
    owner: Option<&str>,
    group: Option<&str>,
) -> Result<FileAttributes, ProviderError> {
    Ok(FileAttributes {
        mode: None,
        uid: owner.map(|name| host.user_id(name)).transpose()?,
        gid: group.map(|name| host.group_id(name)).transpose()?,
    })
}

/// A unified diff from the host's content to the catalog's, or a line
/// naming both hashes when either side is binary or large.
pub(crate) fn content_diff(
    path: &str,
    current_content: Option<&[u8]>,
    current_sha256: &str,
    wanted_content: &[u8],
    wanted_sha256: &str,
) -> String {
    let texts = current_content
        .filter(|_| wanted_content.len() as u64 <= DIFF_SIZE_LIMIT)
        .and_then(|current| {
            Some((
                std::str::from_utf8(current).ok()?,
                std::str::from_utf8(wanted_content).ok()?,
            ))
        });
    match texts {
        Some((current_text, wanted_text)) => TextDiff::configure()
            .timeout(DIFF_TIMEOUT)
            .diff_lines(current_text, wanted_text)
            .unified_diff()
            .context_radius(3)
            .header(&format!("{path} (current)"), &format!("{path} (catalog)"))
            .to_string(),
        None => format!(
            "Binary or large content of {path} changed: sha256 {current_sha256} -> sha256 {wanted_sha256}\n"
        ),
    }
}

fn lookup_content<'c>(cx: &Context<'c>, sha256: &str) -> Result<&'c [u8], ProviderError> {
    cx.contents
        .get(sha256)
        .ok_or_else(|| ProviderError::MissingContent(sha256.to_string()))
}

fn describe_symlink(host: &Host, path: &str) -> Result<String, HostError> {
    Ok(format!("symlink to {}", host.read_symlink(path)?))
}

/// `0644`, as the catalog writes modes.
pub(crate) fn format_mode(mode: u32) -> String {
    format!("{mode:04o}")
}

/// Fails, naming the parent, when `path`'s parent directory does not exist:
/// providers never create parents implicitly. Under a root other than `/`
/// the message names the real path too, and says that packages (which
/// often create such directories) are not installed there.
pub fn require_parent_directory(host: &Host, path: &str) -> Result<(), ProviderError> {
    let parent = parent_path(path);
    if host.is_directory(parent) {
        return Ok(());
    }
    let problem = match host.status(parent)? {
        None => "does not exist".to_string(),
        Some(status) if status.kind == FileKind::Symlink => {
            return Err(HostError::SymlinkInPath {
                path: path.to_string(),
                link: parent.to_string(),
                target: host.read_symlink(parent)?,
            }
            .into());
        }
        Some(status) => format!("is a {}, not a directory", status.kind.describe()),
    };
    let root = host.root();
    Err(ProviderError::Failed(
        if root == std::path::Path::new("/") {
            format!(
                "Failed to create {path}: its parent directory {parent} {problem}; declare {parent} as a directory resource, or, if a package creates it, add that package to `require` (`require = [\"package:NAME\"]`) so it is installed first"
            )
        } else {
            format!(
                "Failed to create {path} under the root {root}: its parent directory {parent} ({real}) {problem}; declare {parent} as a directory resource, or create it in the root first (packages are not installed under --root, so a directory a package would create is missing there)",
                root = root.display(),
                real = host.path(parent).display(),
            )
        },
    ))
}

/// The owner and group changes of one object. `subject` names an object
/// below a directory (`owner of /srv/app/x`); `None` is the resource itself
/// (`owner`). A name this host does not know yet (a user resource of the
/// same run may create it) is still a change: apply fails if it is still
/// unknown then.
pub(crate) fn ownership_changes(
    host: &Host,
    status: &FileStatus,
    owner: Option<&str>,
    group: Option<&str>,
    subject: Option<&str>,
) -> Result<Vec<Change>, ProviderError> {
    let attribute = |name: &str| match subject {
        None => name.to_string(),
        Some(path) => format!("{name} of {path}"),
    };
    let mut changes = Vec::new();
    if let Some(owner) = owner {
        match host.user_id(owner) {
            Ok(uid) if uid == status.uid => {}
            Ok(_) => changes.push(Change::new(
                attribute("owner"),
                host.user_name(status.uid),
                owner,
            )),
            Err(HostError::UnknownAccount { .. }) => changes.push(Change::new(
                attribute("owner"),
                host.user_name(status.uid),
                format!("{owner} (not on this host yet)"),
            )),
            Err(error) => return Err(error.into()),
        }
    }
    if let Some(group) = group {
        match host.group_id(group) {
            Ok(gid) if gid == status.gid => {}
            Ok(_) => changes.push(Change::new(
                attribute("group"),
                host.group_name(status.gid),
                group,
            )),
            Err(HostError::UnknownAccount { .. }) => changes.push(Change::new(
                attribute("group"),
                host.group_name(status.gid),
                format!("{group} (not on this host yet)"),
            )),
            Err(error) => return Err(error.into()),
        }
    }
    Ok(changes)
}

/// The owner, group and mode changes of an existing object, for what
/// `wanted` sets.
pub(crate) fn metadata_changes(
    host: &Host,
    status: &FileStatus,
    wanted: &OwnershipAndMode<'_>,
) -> Result<Vec<Change>, ProviderError> {
    let mut changes = ownership_changes(host, status, wanted.owner, wanted.group, None)?;
    if let Some(mode) = wanted.mode
        && status.mode != mode
    {
        changes.push(Change::new(
            "mode",
            format_mode(status.mode),
            format_mode(mode),
        ));
    }
    Ok(changes)
}

/// Applies the `owner`, `group` and `mode` changes among `changes`.
pub(crate) fn apply_metadata_changes(
    host: &Host,
    path: &str,
    wanted: OwnershipAndMode<'_>,
    changes: &[Change],
) -> Result<(), ProviderError> {
    let changed = |attribute: &str| changes.iter().any(|c| c.attribute == attribute);
    apply_ownership_and_mode(
        host,
        path,
        OwnershipAndMode {
            owner: wanted.owner.filter(|_| changed("owner")),
            group: wanted.group.filter(|_| changed("group")),
            mode: wanted.mode.filter(|_| changed("mode")),
        },
    )
}

/// What to set on an existing object; `None` leaves it as it is.
pub(crate) struct OwnershipAndMode<'a> {
    pub owner: Option<&'a str>,
    pub group: Option<&'a str>,
    pub mode: Option<u32>,
}

/// Sets owner and group, then the mode. Linux clears setuid and setgid
/// when a file changes owner, so the mode the file had is put back when the
/// catalog does not set one.
pub(crate) fn apply_ownership_and_mode(
    host: &Host,
    path: &str,
    wanted: OwnershipAndMode<'_>,
) -> Result<(), ProviderError> {
    if wanted.owner.is_some() || wanted.group.is_some() {
        let uid = wanted.owner.map(|name| host.user_id(name)).transpose()?;
        let gid = wanted.group.map(|name| host.group_id(name)).transpose()?;
        let mode_before = host.status(path)?.map(|status| status.mode);
        host.set_ownership(path, uid, gid)?;
        if let Some(status) = host.status(path)?
            && wanted.mode.is_none()
            && status.kind != FileKind::Symlink
            && let Some(mode_before) = mode_before
            && status.mode != mode_before
        {
            host.set_mode(path, mode_before)?;
        }
    }
    if let Some(mode) = wanted.mode {
        host.set_mode(path, mode)?;
    }
    Ok(())
}
