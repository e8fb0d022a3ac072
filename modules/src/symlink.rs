//! `symlink`: a symbolic link's existence, target, owner and group.
//!
//! - `ensure = "present"` points the link at `target`, written into the
//!   link exactly as the catalog gives it (relative targets stay relative).
//!   Creating or retargeting is atomic: a temporary link renamed over the
//!   path. A regular file at the path is backed up, then replaced; a
//!   directory there is an error, never replaced, since its contents would
//!   be lost. The parent directory must exist.
//! - Owner and group are the link's own (`lchown`). The mode is ignored:
//!   Linux does not use a link's permission bits.
//! - `ensure = "absent"` removes a link, and refuses to remove anything else.

use cms_roles::{Ensure, Symlink};

use crate::file::{
    OwnershipAndMode, apply_ownership_and_mode, ownership_changes, require_parent_directory,
};
use crate::host::fs::{FileAttributes, FileKind};
use crate::{Change, Context, Provider, ProviderError};

pub struct SymlinkProvider<'a>(pub &'a Symlink);

impl Provider for SymlinkProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let symlink = self.0;
        let status = cx.host.status(&symlink.path)?;
        if symlink.ensure == Ensure::Absent {
            return match status {
                None => Ok(Vec::new()),
                Some(status) if status.kind == FileKind::Symlink => Ok(vec![Change::new(
                    "ensure",
                    format!("symlink to {}", cx.host.read_symlink(&symlink.path)?),
                    "absent",
                )]),
                Some(status) => Err(ProviderError::Failed(format!(
                    "Failed to remove symlink {}: a {} is there, not a symlink; a symlink resource never removes one",
                    symlink.path,
                    status.kind.describe()
                ))),
            };
        }
        let target = self.target()?;
        let Some(status) = status else {
            return Ok(vec![Change::new(
                "ensure",
                "absent",
                format!("symlink to {target}"),
            )]);
        };
        match status.kind {
            FileKind::Symlink => {
                let current_target = cx.host.read_symlink(&symlink.path)?;
                if current_target != target {
                    // Retargeting creates a new link with the wanted owner
                    // and group, so those need no change of their own.
                    return Ok(vec![Change::new("target", current_target, target)]);
                }
                ownership_changes(
                    cx.host,
                    &status,
                    symlink.owner.as_deref(),
                    symlink.group.as_deref(),
                    None,
                )
            }
            FileKind::File => Ok(vec![Change::new(
                "ensure",
                "file",
                format!("symlink to {target}"),
            )]),
            kind => Err(ProviderError::Failed(format!(
                "Failed to create symlink {}: a {} is in the way; a symlink resource never replaces one",
                symlink.path,
                kind.describe()
            ))),
        }
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        let symlink = self.0;
        let changed = |attribute: &str| changes.iter().any(|c| c.attribute == attribute);
        if changes
            .iter()
            .any(|c| c.attribute == "ensure" && c.to == "absent")
        {
            cx.host.remove_file(&symlink.path)?;
            return Ok(());
        }
        if changed("ensure") || changed("target") {
            let target = self.target()?;
            require_parent_directory(cx.host, &symlink.path)?;
            // Saves the file a link replaces; does nothing for a link.
            cx.backups.save_from_host(cx.host, &symlink.path)?;
            let attributes = FileAttributes {
                mode: None,
                uid: symlink
                    .owner
                    .as_deref()
                    .map(|n| cx.host.user_id(n))
                    .transpose()?,
                gid: symlink
                    .group
                    .as_deref()
                    .map(|n| cx.host.group_id(n))
                    .transpose()?,
            };
            cx.host
                .create_symlink_atomically(&symlink.path, target, attributes)?;
            return Ok(());
        }
        apply_ownership_and_mode(
            cx.host,
            &symlink.path,
            OwnershipAndMode {
                owner: symlink.owner.as_deref().filter(|_| changed("owner")),
                group: symlink.group.as_deref().filter(|_| changed("group")),
                mode: None,
            },
        )
    }
}

impl SymlinkProvider<'_> {
    fn target(&self) -> Result<&str, ProviderError> {
        self.0.target.as_deref().ok_or_else(|| {
            ProviderError::Failed(format!(
                "Failed to manage symlink {}: it has no target; set target = \"…\"",
                self.0.path
            ))
        })
    }
}
