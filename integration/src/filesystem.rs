//! File system chores of the testbed: reading the mount table, unmounting
//! everything below a directory before removing it (a directory that still
//! has /proc or an overlay mounted inside must never be deleted recursively),
//! atomic writes, and scratch directories that remove themselves.

use anyhow::{Context, Result};
use cms_modules::unescape_mountinfo_field;
use nix::mount::MntFlags;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One line of /proc/self/mountinfo, the fields the testbed looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// The path, inside its file system, of the directory mounted here.
    pub root: String,
    pub mount_point: PathBuf,
    pub file_system_type: String,
    pub source: String,
    pub super_options: String,
}

/// The mounts of a process's mount namespace (`/proc/PID/mountinfo`).
pub(crate) fn read_mount_table(mountinfo_path: &Path) -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string(mountinfo_path)
        .with_context(|| format!("Failed to read {}", mountinfo_path.display()))?;
    Ok(text.lines().filter_map(parse_mountinfo_line).collect())
}

/// The mounts of the testbed's own mount namespace.
pub(crate) fn read_own_mount_table() -> Result<Vec<MountEntry>> {
    read_mount_table(Path::new("/proc/self/mountinfo"))
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    let (before_separator, after_separator) = line.split_once(" - ")?;
    let mut fields = before_separator.split(' ');
    let root = unescape_mountinfo_field(fields.nth(3)?);
    let mount_point = PathBuf::from(unescape_mountinfo_field(fields.next()?));
    let mut fields = after_separator.split(' ');
    let file_system_type = fields.next()?.to_string();
    let source = unescape_mountinfo_field(fields.next()?);
    let super_options = unescape_mountinfo_field(fields.next().unwrap_or(""));
    Some(MountEntry {
        root,
        mount_point,
        file_system_type,
        source,
        super_options,
    })
}

/// Mount points at or below `directory`, deepest first (the order in which
/// they can be unmounted).
pub(crate) fn mount_points_under(directory: &Path) -> Result<Vec<PathBuf>> {
    let mut mount_points: Vec<PathBuf> = read_own_mount_table()?
        .into_iter()
        .map(|entry| entry.mount_point)
        .filter(|mount_point| mount_point.starts_with(directory))
        .collect();
    mount_points.sort_by_key(|mount_point| std::cmp::Reverse(mount_point.components().count()));
    mount_points.dedup();
    Ok(mount_points)
}

/// Unmounts one mount point; when it is busy, detaches it lazily so that it
/// disappears from the tree at once and is freed when its last user goes.
pub(crate) fn unmount(mount_point: &Path) -> Result<()> {
    match nix::mount::umount2(mount_point, MntFlags::empty()) {
        Ok(()) => Ok(()),
        // Already gone, for instance detached together with a parent mount.
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => nix::mount::umount2(mount_point, MntFlags::MNT_DETACH)
            .with_context(|| format!("Failed to detach busy mount {}", mount_point.display())),
        Err(error) => {
            Err(error).with_context(|| format!("Failed to unmount {}", mount_point.display()))
        }
    }
}

/// Unmounts every mount at or below `directory`, deepest first. A mount
/// point can appear several times (mounted over itself): each pass unmounts
/// the top one, until none is left.
pub(crate) fn unmount_everything_under(directory: &Path) -> Result<()> {
    // Each pass removes at least one mount, so the table shrinks; the bound
    // only guards against a mount that refuses to go away.
    for _ in 0..64 {
        let mount_points = mount_points_under(directory)?;
        if mount_points.is_empty() {
            return Ok(());
        }
        for mount_point in mount_points {
            unmount(&mount_point)?;
        }
    }
    anyhow::bail!(
        "Failed to unmount everything under {}: mounts keep coming back",
        directory.display()
    )
}

/// Removes a directory tree, first unmounting anything mounted inside it so
/// that the removal never descends into another file system such as /proc.
/// A missing directory is not an error.
pub(crate) fn remove_tree(directory: &Path) -> Result<()> {
    if std::fs::symlink_metadata(directory).is_err() {
        return Ok(());
    }
    unmount_everything_under(directory)?;
    std::fs::remove_dir_all(directory)
        .with_context(|| format!("Failed to remove {}", directory.display()))
}

/// Writes a file through a temporary sibling and a rename, so that a reader
/// (a concurrent test process, an HTTP client) never sees half a file.
pub(crate) fn write_file_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("Failed to write {}: it has no file name", path.display()))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(file_name);
    temporary_name.push(format!(".tmp-{}", std::process::id()));
    let temporary_path = path.with_file_name(temporary_name);
    std::fs::write(&temporary_path, contents)
        .with_context(|| format!("Failed to write {}", temporary_path.display()))?;
    std::fs::rename(&temporary_path, path)
        .with_context(|| format!("Failed to rename {} into place", temporary_path.display()))
}

/// Creates `path`'s parent directories and writes the file with `mode`.
pub(crate) fn write_file_with_mode(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("Failed to create {}", parent.display()))?;
    }
    std::fs::write(path, contents)
        .with_context(|| format!("Failed to write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("Failed to set mode {mode:o} on {}", path.display()))
}

/// A directory under `<cache>/scratch/` removed when dropped. Its name
/// carries the creating process's id, so that the leftover clean-up can tell
/// the scratch of a crashed run (its process is gone) from that of a test
/// process running concurrently.
#[derive(Debug)]
pub(crate) struct ScratchDirectory {
    path: PathBuf,
}

static SCRATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ScratchDirectory {
    pub fn create(scratch_root: &Path, purpose: &str) -> Result<ScratchDirectory> {
        std::fs::create_dir_all(scratch_root)
            .with_context(|| format!("Failed to create {}", scratch_root.display()))?;
        let sequence = SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = scratch_root.join(format!(
            "{}{}-{sequence}-{purpose}",
            crate::NAME_PREFIX,
            std::process::id()
        ));
        // A directory of that name can only be a leftover of a crashed
        // process that had the same id: it is ours to replace.
        remove_tree(&path)?;
        std::fs::create_dir(&path)
            .with_context(|| format!("Failed to create {}", path.display()))?;
        Ok(ScratchDirectory { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDirectory {
    fn drop(&mut self) {
        if let Err(error) = remove_tree(&self.path) {
            eprintln!("testbed: {error:#}");
        }
    }
}

/// The id of the process that created a scratch directory, from its name.
pub(crate) fn scratch_directory_owner(name: &str) -> Option<u32> {
    name.strip_prefix(crate::NAME_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

pub(crate) fn kernel_has_overlayfs() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|text| {
            text.lines()
                .any(|line| line.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_optional_fields_and_escapes() {
        let line = "105 83 0:39 / /var/cache/cms\\040testbed/root rw,relatime shared:3 master:1 - \
                    overlay cmstb-overlay rw,lowerdir=/a:/b,upperdir=/u,workdir=/w";
        assert_eq!(
            parse_mountinfo_line(line),
            Some(MountEntry {
                root: "/".to_string(),
                mount_point: PathBuf::from("/var/cache/cms testbed/root"),
                file_system_type: "overlay".to_string(),
                source: "cmstb-overlay".to_string(),
                super_options: "rw,lowerdir=/a:/b,upperdir=/u,workdir=/w".to_string(),
            })
        );
    }

    #[test]
    fn the_own_mount_table_has_a_root() {
        let table = read_own_mount_table().unwrap();
        assert!(
            table
                .iter()
                .any(|entry| entry.mount_point == Path::new("/"))
        );
    }

    #[test]
    fn scratch_directories_name_their_owner_and_remove_themselves() {
        let parent = std::env::temp_dir().join(format!("cmstb-unit-{}", std::process::id()));
        let scratch = ScratchDirectory::create(&parent, "unit").unwrap();
        let name = scratch
            .path()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(scratch_directory_owner(&name), Some(std::process::id()));
        std::fs::write(scratch.path().join("file"), "x").unwrap();
        let path = scratch.path().to_path_buf();
        drop(scratch);
        assert!(!path.exists());
        std::fs::remove_dir(&parent).unwrap();
    }

    #[test]
    fn atomic_writes_leave_only_the_final_file() {
        let parent = ScratchDirectory::create(
            &std::env::temp_dir().join(format!("cmstb-unit-atomic-{}", std::process::id())),
            "atomic",
        )
        .unwrap();
        let path = parent.path().join("Packages");
        write_file_atomically(&path, b"one").unwrap();
        write_file_atomically(&path, b"two").unwrap();
        let names: Vec<_> = std::fs::read_dir(parent.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("Packages")]);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        let grandparent = parent.path().parent().unwrap().to_path_buf();
        drop(parent);
        std::fs::remove_dir(grandparent).unwrap();
    }
}
