//! `directory`: a directory's existence, owner, group and mode, and with
//! `recurse` and `purge`, what is below it.
//!
//! - `ensure = "present"` creates one directory (mode
//!   [`DEFAULT_DIRECTORY_MODE`](crate::host::fs::DEFAULT_DIRECTORY_MODE)
//!   unless the catalog sets one). Its parent must exist: parents are never
//!   created implicitly. A file, symlink or special file in the way is an
//!   error, never replaced.
//! - `ensure = "absent"` removes an empty directory. A directory that is not
//!   empty is removed with everything in it only when `purge = true` (the
//!   resource already says "delete what the catalog does not declare"), and
//!   its regular files are backed up first; otherwise it is an error, as
//!   Puppet refuses without `force`.
//! - `recurse = true` applies owner and group to everything below, and the
//!   mode as `chmod -R` with `X` would: subdirectories get the mode;
//!   files get its read and write bits, and its execute bits only when the
//!   file already had an execute bit (a script stays runnable, a config file
//!   does not become one); setuid, setgid and sticky stay on directories.
//!   Symlinks get owner and group (`lchown`) and are never followed.
//! - `purge = true` removes every entry below that is not in
//!   `managed_paths` and is not an ancestor of one, at any depth (it goes
//!   into kept directories, including ones declared by their own resource,
//!   as Puppet's recursion does). Removed regular files are backed up first.
//!   A removed directory goes with everything in it.
//!
//! Changes to objects below the directory name their path in the
//! attribute: `mode of /srv/app/run.sh`, `owner of …`, `group of …`, and
//! `ensure of …` (to `purged`) for what purge removes, so `--noop` lists
//! each one.

use std::collections::BTreeSet;

use cms_roles::{Directory, Ensure};

use crate::file::{
    OwnershipAndMode, apply_ownership_and_mode, format_mode, ownership_changes,
    require_parent_directory,
};
use crate::host::fs::{DEFAULT_DIRECTORY_MODE, FileAttributes, FileKind, FileStatus};
use crate::{Change, Context, Provider, ProviderError};

pub struct DirectoryProvider<'a>(pub &'a Directory);

impl Provider for DirectoryProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let directory = self.0;
        let status = cx.host.status(&directory.path)?;
        match (directory.ensure, status) {
            (Ensure::Absent, None) => Ok(Vec::new()),
            (Ensure::Absent, Some(status)) if status.kind == FileKind::Directory => {
                let entry_count = cx.host.list_directory(&directory.path)?.len();
                if entry_count == 0 {
                    Ok(vec![Change::new("ensure", "present", "absent")])
                } else if directory.purge {
                    Ok(vec![Change::new(
                        "ensure",
                        format!("present ({entry_count} entries)"),
                        "absent",
                    )])
                } else {
                    Err(ProviderError::Failed(format!(
                        "Failed to remove directory {}: it is not empty ({entry_count} entries); set purge = true to remove it with everything in it",
                        directory.path
                    )))
                }
            }
            (Ensure::Absent, Some(status)) => Err(ProviderError::Failed(format!(
                "Failed to remove directory {}: a {} is there, not a directory; a directory resource never removes one",
                directory.path,
                status.kind.describe()
            ))),
            (Ensure::Present, None) => Ok(vec![Change::new("ensure", "absent", "present")]),
            (Ensure::Present, Some(status)) if status.kind == FileKind::Directory => {
                let mut changes = ownership_changes(
                    cx.host,
                    &status,
                    directory.owner.as_deref(),
                    directory.group.as_deref(),
                    None,
                )?;
                if let Some(mode) = directory.mode
                    && status.mode != mode.0
                {
                    changes.push(Change::new(
                        "mode",
                        format_mode(status.mode),
                        mode.to_string(),
                    ));
                }
                if directory.recurse || directory.purge {
                    self.check_below(&directory.path, cx, &mut changes)?;
                }
                Ok(changes)
            }
            (Ensure::Present, Some(status)) => Err(ProviderError::Failed(format!(
                "Failed to manage directory {}: a {} is in the way; remove it or declare the path as what it is",
                directory.path,
                status.kind.describe()
            ))),
        }
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        let directory = self.0;
        let changed = |attribute: &str| changes.iter().any(|c| c.attribute == attribute);
        if let Some(ensure) = changes.iter().find(|c| c.attribute == "ensure") {
            if ensure.to == "absent" {
                if directory.purge {
                    back_up_files_below(cx, &directory.path)?;
                    cx.host.remove_recursively(&directory.path)?;
                } else {
                    cx.host.remove_empty_directory(&directory.path)?;
                }
                return Ok(());
            }
            require_parent_directory(cx.host, &directory.path)?;
            cx.host.create_directory(
                &directory.path,
                FileAttributes {
                    mode: Some(directory.mode.map_or(DEFAULT_DIRECTORY_MODE, |mode| mode.0)),
                    uid: directory
                        .owner
                        .as_deref()
                        .map(|n| cx.host.user_id(n))
                        .transpose()?,
                    gid: directory
                        .group
                        .as_deref()
                        .map(|n| cx.host.group_id(n))
                        .transpose()?,
                },
            )?;
            return Ok(());
        }
        apply_ownership_and_mode(
            cx.host,
            &directory.path,
            OwnershipAndMode {
                owner: directory.owner.as_deref().filter(|_| changed("owner")),
                group: directory.group.as_deref().filter(|_| changed("group")),
                mode: directory
                    .mode
                    .map(|mode| mode.0)
                    .filter(|_| changed("mode")),
            },
        )?;
        for change in changes {
            let Some((attribute, path)) = change.attribute.split_once(" of ") else {
                continue;
            };
            match attribute {
                "ensure" => {
                    match cx.host.status(path)? {
                        Some(status) if status.kind == FileKind::Directory => {
                            back_up_files_below(cx, path)?;
                            cx.host.remove_recursively(path)?;
                        }
                        Some(_) => {
                            // Saves a regular file; a symlink or special
                            // file has no content to save.
                            cx.backups.save_from_host(cx.host, path)?;
                            cx.host.remove_file(path)?;
                        }
                        // Gone since check: what purge wanted.
                        None => {}
                    }
                }
                "owner" => apply_ownership_and_mode(
                    cx.host,
                    path,
                    OwnershipAndMode {
                        owner: directory.owner.as_deref(),
                        group: None,
                        mode: None,
                    },
                )?,
                "group" => apply_ownership_and_mode(
                    cx.host,
                    path,
                    OwnershipAndMode {
                        owner: None,
                        group: directory.group.as_deref(),
                        mode: None,
                    },
                )?,
                "mode" => {
                    let mode = u32::from_str_radix(&change.to, 8).map_err(|_| {
                        ProviderError::Failed(format!(
                            "Failed to set the mode of {path}: `{}` is not an octal mode",
                            change.to
                        ))
                    })?;
                    cx.host.set_mode(path, mode)?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl DirectoryProvider<'_> {
    /// Walks below `path` (never through a symlink), listing what purge
    /// removes and what recurse changes.
    fn check_below(
        &self,
        path: &str,
        cx: &Context<'_>,
        changes: &mut Vec<Change>,
    ) -> Result<(), ProviderError> {
        let directory = self.0;
        for entry in cx.host.list_directory(path)? {
            if directory.purge && !is_kept(cx.managed_paths, &entry.path) {
                changes.push(Change::new(
                    format!("ensure of {}", entry.path),
                    entry.status.kind.describe(),
                    "purged",
                ));
                continue;
            }
            if directory.recurse {
                changes.extend(ownership_changes(
                    cx.host,
                    &entry.status,
                    directory.owner.as_deref(),
                    directory.group.as_deref(),
                    Some(&entry.path),
                )?);
                if let Some(mode) = directory.mode
                    && let Some(wanted) = recursive_mode(mode.0, &entry.status)
                    && wanted != entry.status.mode
                {
                    changes.push(Change::new(
                        format!("mode of {}", entry.path),
                        format_mode(entry.status.mode),
                        format_mode(wanted),
                    ));
                }
            }
            if entry.status.kind == FileKind::Directory {
                self.check_below(&entry.path, cx, changes)?;
            }
        }
        Ok(())
    }
}

/// The mode `recurse` gives an object below a directory of mode
/// `directory_mode`; `None` for symlinks and special files, whose mode is
/// left alone.
fn recursive_mode(directory_mode: u32, status: &FileStatus) -> Option<u32> {
    match status.kind {
        FileKind::Directory => Some(directory_mode),
        FileKind::File => {
            let read_write = directory_mode & 0o666;
            let already_executable = status.mode & 0o111 != 0;
            Some(if already_executable {
                read_write | (directory_mode & 0o111)
            } else {
                read_write
            })
        }
        FileKind::Symlink | FileKind::Other => None,
    }
}

/// Whether purge keeps `path`: it is managed, or something managed is below
/// it.
fn is_kept(managed_paths: &BTreeSet<String>, path: &str) -> bool {
    if managed_paths.contains(path) {
        return true;
    }
    let below = format!("{path}/");
    managed_paths
        .range(below.clone()..)
        .next()
        .is_some_and(|managed| managed.starts_with(&below))
}

/// Saves every regular file below `path` before it is removed.
fn back_up_files_below(cx: &Context<'_>, path: &str) -> Result<(), ProviderError> {
    for entry in cx.host.list_directory(path)? {
        match entry.status.kind {
            FileKind::File => {
                cx.backups.save_from_host(cx.host, &entry.path)?;
            }
            FileKind::Directory => back_up_files_below(cx, &entry.path)?,
            FileKind::Symlink | FileKind::Other => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(kind: FileKind, mode: u32) -> FileStatus {
        FileStatus {
            kind,
            mode,
            uid: 0,
            gid: 0,
            size: 0,
        }
    }

    #[test]
    fn recurse_gives_files_execute_bits_only_when_already_executable() {
        assert_eq!(
            recursive_mode(0o750, &status(FileKind::File, 0o600)),
            Some(0o640)
        );
        assert_eq!(
            recursive_mode(0o750, &status(FileKind::File, 0o700)),
            Some(0o750)
        );
        assert_eq!(
            recursive_mode(0o2775, &status(FileKind::File, 0o644)),
            Some(0o664)
        );
        assert_eq!(
            recursive_mode(0o2775, &status(FileKind::Directory, 0o700)),
            Some(0o2775)
        );
        assert_eq!(
            recursive_mode(0o755, &status(FileKind::Symlink, 0o777)),
            None
        );
    }

    #[test]
    fn purge_keeps_managed_paths_and_their_ancestors_only() {
        let managed: BTreeSet<String> = ["/srv/app/conf/app.toml", "/srv/app/run.sh"]
            .map(String::from)
            .into();
        assert!(is_kept(&managed, "/srv/app/run.sh"));
        assert!(is_kept(&managed, "/srv/app/conf"));
        assert!(!is_kept(&managed, "/srv/app/con"));
        assert!(!is_kept(&managed, "/srv/app/conf.old"));
        assert!(!is_kept(&managed, "/srv/app/run.sh.bak"));
    }
}
