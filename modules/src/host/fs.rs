//! Filesystem operations for the providers: status, reading, atomic writes,
//! directories, symbolic links, ownership, permissions and account names.
//!
//! Every `path` argument is a catalog path (absolute, as the catalog writes
//! it), taken below the host's root ([`Host::path`]), so a host rooted in a
//! temporary directory never touches the real system.
//!
//! **No symlink is ever followed on the way to a path.** Each operation
//! first opens the parent directory with `openat2(RESOLVE_NO_SYMLINKS |
//! RESOLVE_BENEATH)` relative to the root (on kernels without `openat2`, an
//! `O_NOFOLLOW` walk one component at a time), then works on that open
//! directory: `fstatat`, `openat(O_NOFOLLOW)`, `mkdirat`, `renameat`,
//! `unlinkat`, `symlinkat`, `fchownat(AT_SYMLINK_NOFOLLOW)`, and `fchmod` on
//! a descriptor opened without following. A local user who owns a directory
//! on the way (`/home/alice` for `/home/alice/.ssh/authorized_keys`) and
//! puts a symlink there gets [`HostError::SymlinkInPath`], naming the link;
//! swapping a link in after a check changes nothing either, as the write
//! resolves the path again and the directory it opened stays the one it
//! checked. A symlink at the path itself is never followed: status is an
//! `lstat`, reads open with `O_NOFOLLOW`, and only a symlink resource's own
//! link is created or removed. Reads also refuse anything but a regular
//! file, so a FIFO planted as a managed file cannot block the agent.
//!
//! Writes are atomic. [`Host::write_file_atomically`] (and [`AtomicFile`] for
//! content that arrives in pieces) writes a temporary file (created
//! `O_EXCL`) in the already opened parent directory, gives it its final
//! owner and mode, fsyncs it, renames it over the target and fsyncs the
//! directory. A reader, or a crash at any moment, sees the old content or
//! the new, never a mix, and never the new content with the wrong
//! permissions. Replacing by rename gives the path a new inode: hard links
//! to the old file keep the old content, and extended attributes (ACLs,
//! SELinux labels) are not carried over.
//!
//! Reads reuse the directories they reached. A directory opened on the way
//! to a path that is only read (status, content, a link's target, a listing)
//! is kept open, by its path below the root, and the next read in the same
//! folder starts from it instead of walking from the root again: a check of
//! a role's 250 files opens each folder once. Every change made through the
//! host (a write, a removal, a new directory or link, an owner or mode, a
//! command run) first forgets them all, and a change always reaches its
//! path afresh, so what a change acts on is resolved as described above, at
//! the moment of the change. A kept directory was reached without following
//! a symlink; a read from it sees the folder that was there when it was
//! opened, as a read made at that moment would.
//!
//! Temporary files are named `.cms-tmp-<pid>-<counter>-<name>`. A process
//! killed mid-write leaves one behind; the next write to the same target
//! removes those whose process is gone, and
//! [`Host::remove_stale_temporary_files`] sweeps a whole managed directory
//! at the start of a run.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use cms_roles::digest::Sha256Hasher;
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

use super::{Host, HostError};

/// The mode of a new file when the catalog does not give one.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// The mode of a new directory when the catalog does not give one.
pub const DEFAULT_DIRECTORY_MODE: u32 = 0o755;

/// The prefix of every temporary file and link this module creates.
pub const TEMPORARY_FILE_PREFIX: &str = ".cms-tmp-";

/// What is at a path, without following a symbolic link there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    /// A socket, FIFO or device node: never created, changed or removed.
    Other,
}

impl FileKind {
    /// The kind in words, for messages: `file`, `directory`, `symlink`,
    /// `special file`.
    pub fn describe(self) -> &'static str {
        match self {
            FileKind::File => "file",
            FileKind::Directory => "directory",
            FileKind::Symlink => "symlink",
            FileKind::Other => "special file",
        }
    }
}

/// Which file a path is and which version of it: device, inode, size,
/// modification and change time (to the nanosecond). A file replaced by a
/// rename, or changed in place, has another identity; what a long-running
/// agent keys an answer by (dpkg's database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileIdentity {
    device: u64,
    inode: u64,
    size: i64,
    modified: (i64, i64),
    changed: (i64, i64),
}

/// The `lstat` of a path, reduced to what providers compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStatus {
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes; for a symlink, the length of its target.
    pub size: u64,
}

impl FileStatus {
    fn from_stat(stat: &rustix::fs::Stat) -> FileStatus {
        let kind = match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
            rustix::fs::FileType::Symlink => FileKind::Symlink,
            rustix::fs::FileType::Directory => FileKind::Directory,
            rustix::fs::FileType::RegularFile => FileKind::File,
            _ => FileKind::Other,
        };
        FileStatus {
            kind,
            mode: stat.st_mode & 0o7777,
            uid: stat.st_uid,
            gid: stat.st_gid,
            size: u64::try_from(stat.st_size).unwrap_or(0),
        }
    }

    fn from_metadata(metadata: &std::fs::Metadata) -> FileStatus {
        let file_type = metadata.file_type();
        let kind = if file_type.is_symlink() {
            FileKind::Symlink
        } else if file_type.is_dir() {
            FileKind::Directory
        } else if file_type.is_file() {
            FileKind::File
        } else {
            FileKind::Other
        };
        FileStatus {
            kind,
            mode: metadata.mode() & 0o7777,
            uid: metadata.uid(),
            gid: metadata.gid(),
            size: metadata.len(),
        }
    }
}

/// Owner, group and mode to give a file as it is written. `None` keeps what
/// the file being replaced has, or for a new file: mode
/// [`DEFAULT_FILE_MODE`], and the owner and group a new file gets from this
/// process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileAttributes {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// The entry's catalog path (`/etc/nginx/conf.d/default.conf`).
    pub path: String,
    pub status: FileStatus,
}

/// A file being written: the bytes go to a temporary file in the target's
/// directory (opened once, without following symlinks), and
/// [`AtomicFile::commit`] puts it in place. Dropping it without committing
/// (an error, a panic) removes the temporary file and leaves the target as
/// it was.
#[derive(Debug)]
pub struct AtomicFile {
    /// `None` once committed.
    file: Option<std::fs::File>,
    directory: Arc<OwnedFd>,
    temporary_name: OsString,
    target_path: PathBuf,
    attributes: FileAttributes,
    renamed: bool,
}

/// A path reached without following a symlink: its parent directory, open,
/// and its last component.
struct Reached {
    directory: Arc<OwnedFd>,
    name: OsString,
    /// Where the path is on this host, for messages.
    host_path: PathBuf,
}

/// What [`Host::open_directory_below`] found.
enum Opened {
    Directory(Arc<OwnedFd>),
    /// The directory could not be opened: `errno`, and the root, from
    /// which [`Host::explain_unreachable`] looks for the reason.
    Unreachable {
        root: Arc<OwnedFd>,
        errno: rustix::io::Errno,
    },
}

/// Set once `openat2` answered ENOSYS: later resolutions walk directly.
static OPENAT2_UNAVAILABLE: AtomicBool = AtomicBool::new(false);

/// How many directories a host keeps open for reads; past that they are
/// all forgotten and reopened as needed, so a catalog of thousands of
/// folders never holds thousands of descriptors.
const OPENED_DIRECTORIES_KEPT: usize = 64;

/// The directories a [`Host`] reached for reading, by their path below the
/// root (`""` is the root itself): see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct OpenedDirectories {
    by_path: HashMap<String, Arc<OwnedFd>>,
    /// Counts the changes; a directory opened before a change is not kept
    /// after it, even when another thread opened it.
    changes: u64,
}

/// Whether a path is reached to read it or to change something there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Directories on the way may come from those kept open.
    Read,
    /// Forgets the kept directories and reaches the path afresh.
    Change,
}

impl Host {
    /// What is at `path` (not following a symlink there), or `None` when
    /// nothing is, including when a parent is missing or not a directory.
    /// A symlink on the way is [`HostError::SymlinkInPath`].
    pub fn status(&self, path: &str) -> Result<Option<FileStatus>, HostError> {
        if self.components(path)?.is_empty() {
            // The root itself.
            return rustix::fs::fstat(&*self.open_root(Access::Read)?)
                .map(|stat| Some(FileStatus::from_stat(&stat)))
                .map_err(|errno| HostError::io("read the status of", self.root(), errno.into()));
        }
        let Some(reached) = self.reach(path, Access::Read)? else {
            return Ok(None);
        };
        status_in(&reached)
    }

    /// The [`FileIdentity`] of `path`, not following a symlink; `None`
    /// when nothing is there.
    pub fn identity(&self, path: &str) -> Result<Option<FileIdentity>, HostError> {
        let Some(reached) = self.reach(path, Access::Read)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&reached.directory, &reached.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(Some(FileIdentity {
                device: stat.st_dev,
                inode: stat.st_ino,
                size: stat.st_size,
                modified: (stat.st_mtime, stat.st_mtime_nsec as i64),
                changed: (stat.st_ctime, stat.st_ctime_nsec as i64),
            })),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(None),
            Err(errno) => Err(HostError::io(
                "read the status of",
                &reached.host_path,
                errno.into(),
            )),
        }
    }

    /// Whether `path` is a directory, following symlinks: a question only
    /// (a user's home may be a link). Whatever is then written below it is
    /// reached without following any, and fails with
    /// [`HostError::SymlinkInPath`] if a link is on the way.
    pub fn is_directory(&self, path: &str) -> bool {
        self.path(path).is_dir()
    }

    /// Opens a regular file for reading, without following a symlink on
    /// the way or at the path; anything but a regular file is refused.
    pub fn open_file(&self, path: &str) -> Result<std::fs::File, HostError> {
        self.open_regular_file(path).map(|(file, _)| file)
    }

    /// [`Host::open_file`], with the file's size when it was opened.
    fn open_regular_file(&self, path: &str) -> Result<(std::fs::File, u64), HostError> {
        let reached = self.reach_parent(path, "read", Access::Read)?;
        let read_error = |e| HostError::io("read", &reached.host_path, e);
        let fd = rustix::fs::openat(
            &reached.directory,
            reached.name.as_os_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| read_error(symlink_at_path_error(errno)))?;
        let file = std::fs::File::from(fd);
        let metadata = file.metadata().map_err(read_error)?;
        if !metadata.is_file() {
            return Err(read_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                "it is not a regular file",
            )));
        }
        Ok((file, metadata.len()))
    }

    /// The whole content of a file.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, HostError> {
        let (mut file, size) = self.open_regular_file(path)?;
        read_whole(&mut file, size).map_err(|e| HostError::io("read", &self.path(path), e))
    }

    /// The sha256 of a file's content (lowercase hex), read in pieces so a
    /// large file costs no memory.
    pub fn file_sha256(&self, path: &str) -> Result<String, HostError> {
        let mut file = self.open_file(path)?;
        let host_path = self.path(path);
        let read_error = |e| HostError::io("read", &host_path, e);
        let mut hasher = Sha256Hasher::new();
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let count = match file.read(&mut buffer) {
                Ok(0) => break,
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            };
            hasher.update(&buffer[..count]);
        }
        Ok(hasher.finish_hex())
    }

    /// The target of a symbolic link, as written in the link.
    pub fn read_symlink(&self, path: &str) -> Result<String, HostError> {
        let reached = self.reach_parent(path, "read the symlink", Access::Read)?;
        let target =
            rustix::fs::readlinkat(&reached.directory, reached.name.as_os_str(), Vec::new())
                .map_err(|errno| {
                    HostError::io("read the symlink", &reached.host_path, errno.into())
                })?;
        Ok(String::from_utf8_lossy(target.as_bytes()).into_owned())
    }

    /// Replaces (or creates) a file with `content`, atomically: see the
    /// module documentation. The parent directory must exist.
    pub fn write_file_atomically(
        &self,
        path: &str,
        content: &[u8],
        attributes: FileAttributes,
    ) -> Result<(), HostError> {
        let mut file = self.create_atomic_file(path, attributes)?;
        file.write_all(content)
            .map_err(|e| HostError::io("write", &file.target_path, e))?;
        file.commit()
    }

    /// Starts an atomic write of `path`; write the content into the returned
    /// [`AtomicFile`], then [`AtomicFile::commit`].
    pub fn create_atomic_file(
        &self,
        path: &str,
        attributes: FileAttributes,
    ) -> Result<AtomicFile, HostError> {
        let reached = self.reach_parent(path, "write", Access::Change)?;
        AtomicFile::create_in(reached.directory, &reached.host_path, attributes)
    }

    /// Creates one directory (not its parents) with its final owner, group
    /// and mode: it is made private first, so nobody can use it before its
    /// permissions are right.
    pub fn create_directory(
        &self,
        path: &str,
        attributes: FileAttributes,
    ) -> Result<(), HostError> {
        let reached = self.reach_parent(path, "create the directory", Access::Change)?;
        let host_path = &reached.host_path;
        rustix::fs::mkdirat(
            &reached.directory,
            reached.name.as_os_str(),
            Mode::from_raw_mode(0o700),
        )
        .map_err(|errno| HostError::io("create the directory", host_path, errno.into()))?;
        let created = rustix::fs::openat(
            &reached.directory,
            reached.name.as_os_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| HostError::io("open the new directory", host_path, errno.into()))?;
        if attributes.uid.is_some() || attributes.gid.is_some() {
            std::os::unix::fs::fchown(&created, attributes.uid, attributes.gid)
                .map_err(|e| HostError::io("set the owner of", host_path, e))?;
        }
        let mode = attributes.mode.unwrap_or(DEFAULT_DIRECTORY_MODE);
        rustix::fs::fchmod(&created, Mode::from_raw_mode(mode))
            .map_err(|errno| HostError::io("set the mode of", host_path, errno.into()))?;
        sync_fd(&reached.directory, host_path)
    }

    /// Removes a file, symlink or special file (never a directory).
    pub fn remove_file(&self, path: &str) -> Result<(), HostError> {
        let reached = self.reach_parent(path, "remove", Access::Change)?;
        rustix::fs::unlinkat(
            &reached.directory,
            reached.name.as_os_str(),
            AtFlags::empty(),
        )
        .map_err(|errno| HostError::io("remove", &reached.host_path, errno.into()))?;
        sync_fd(&reached.directory, &reached.host_path)
    }

    /// Removes an empty directory.
    pub fn remove_empty_directory(&self, path: &str) -> Result<(), HostError> {
        let reached = self.reach_parent(path, "remove the directory", Access::Change)?;
        rustix::fs::unlinkat(
            &reached.directory,
            reached.name.as_os_str(),
            AtFlags::REMOVEDIR,
        )
        .map_err(|errno| HostError::io("remove the directory", &reached.host_path, errno.into()))?;
        sync_fd(&reached.directory, &reached.host_path)
    }

    /// Removes a directory and everything in it. Nothing below is followed:
    /// each directory is opened `O_NOFOLLOW` from the one above it, and
    /// symlinks inside are removed, never followed.
    pub fn remove_recursively(&self, path: &str) -> Result<(), HostError> {
        let reached = self.reach_parent(path, "remove the directory", Access::Change)?;
        remove_tree(&reached.directory, &reached.name, &reached.host_path)?;
        sync_fd(&reached.directory, &reached.host_path)
    }

    /// The entries of a directory (not `.` and `..`), sorted by path.
    pub fn list_directory(&self, path: &str) -> Result<Vec<DirectoryEntry>, HostError> {
        let host_path = self.path(path);
        let directory = self.open_directory(path, "list the directory", Access::Read)?;
        let mut entries = Vec::new();
        for name in entry_names(&directory, &host_path)? {
            let entry_path = host_path.join(&name);
            let name = name.into_string().map_err(|name| {
                HostError::io(
                    "list the directory",
                    &host_path,
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the entry name {name:?} is not UTF-8, so no catalog path can name it"
                        ),
                    ),
                )
            })?;
            let status = status_at_fd(&directory, OsStr::new(&name), &entry_path)?;
            let Some(status) = status else {
                // Removed while listed.
                continue;
            };
            entries.push(DirectoryEntry {
                path: format!("{}/{name}", path.trim_end_matches('/')),
                status,
            });
        }
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(entries)
    }

    /// Points `path` at `target`, atomically: a temporary link renamed over
    /// whatever file or link is at `path` (never over a directory). Only the
    /// owner and group of `attributes` apply; Linux ignores a link's mode.
    pub fn create_symlink_atomically(
        &self,
        path: &str,
        target: &str,
        attributes: FileAttributes,
    ) -> Result<(), HostError> {
        let reached = self.reach_parent(path, "create the symlink", Access::Change)?;
        let directory = &reached.directory;
        let target_path = &reached.host_path;
        remove_stale_temporary_files_in(directory.as_fd(), Some(&reached.name));
        let temporary_name = loop {
            let candidate = temporary_name(&reached.name);
            match rustix::fs::symlinkat(target, directory, candidate.as_os_str()) {
                Ok(()) => break candidate,
                // Another temporary file has the name (a process before us
                // with the same pid): take the next counter.
                Err(rustix::io::Errno::EXIST) => continue,
                Err(errno) => {
                    return Err(HostError::io(
                        "create a symlink next to",
                        target_path,
                        errno.into(),
                    ));
                }
            }
        };
        let result = (|| {
            if attributes.uid.is_some() || attributes.gid.is_some() {
                rustix::fs::chownat(
                    directory,
                    temporary_name.as_os_str(),
                    attributes.uid.map(rustix::fs::Uid::from_raw),
                    attributes.gid.map(rustix::fs::Gid::from_raw),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|errno| HostError::io("set the owner of", target_path, errno.into()))?;
            }
            rustix::fs::renameat(
                directory,
                temporary_name.as_os_str(),
                directory,
                reached.name.as_os_str(),
            )
            .map_err(|errno| HostError::io("replace", target_path, errno.into()))
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(directory, temporary_name.as_os_str(), AtFlags::empty());
        }
        result?;
        sync_fd(directory, target_path)
    }

    /// When a file's content last changed (or [`Host::touch`] was called),
    /// not following a symlink at the path.
    pub fn modified(&self, path: &str) -> Result<std::time::SystemTime, HostError> {
        let reached = self.reach_parent(path, "read the status of", Access::Read)?;
        open_path_fd(&reached)
            .and_then(|fd| std::fs::File::from(fd).metadata())
            .and_then(|metadata| metadata.modified())
            .map_err(|e| HostError::io("read the status of", &reached.host_path, e))
    }

    /// Sets a regular file's modification time to now, leaving its content.
    pub fn touch(&self, path: &str) -> Result<(), HostError> {
        let reached = self.reach_parent(path, "set the modification time of", Access::Change)?;
        rustix::fs::openat(
            &reached.directory,
            reached.name.as_os_str(),
            OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(symlink_at_path_error)
        .map(std::fs::File::from)
        .and_then(|file| file.set_modified(super::clock::now()))
        .map_err(|e| HostError::io("set the modification time of", &reached.host_path, e))
    }

    /// Writes `content` into an existing file in one `write`, without a
    /// temporary file: for kernel files (`/proc/sys/...`), which cannot be
    /// created or renamed over and take a value in a single write. Never
    /// creates the file nor follows a symlink. (`O_TRUNC`, as `echo >`
    /// does: the kernel's files ignore it, a regular file is emptied.)
    pub fn write_existing_file(&self, path: &str, content: &[u8]) -> Result<(), HostError> {
        let reached = self.reach_parent(path, "write", Access::Change)?;
        let write_error = |e| HostError::io("write", &reached.host_path, e);
        let fd = rustix::fs::openat(
            &reached.directory,
            reached.name.as_os_str(),
            OFlags::WRONLY | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| write_error(symlink_at_path_error(errno)))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(content).map_err(write_error)
    }

    /// Sets the permission bits (including setuid, setgid and sticky) of a
    /// file or directory. Fails on a symlink rather than following it.
    pub fn set_mode(&self, path: &str, mode: u32) -> Result<(), HostError> {
        let reached = self.reach_parent(path, "set the mode of", Access::Change)?;
        set_mode_of(&reached, mode)
    }

    /// Sets the owner and/or group of a file, directory or symlink itself
    /// (`lchown`). `None` leaves that one as it is.
    pub fn set_ownership(
        &self,
        path: &str,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), HostError> {
        let reached = self.reach_parent(path, "set the owner of", Access::Change)?;
        rustix::fs::chownat(
            &reached.directory,
            reached.name.as_os_str(),
            uid.map(rustix::fs::Uid::from_raw),
            gid.map(rustix::fs::Gid::from_raw),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|errno| HostError::io("set the owner of", &reached.host_path, errno.into()))
    }

    /// Removes the temporary files that killed processes left in the
    /// directory `path` (any target name; only `.cms-tmp-<pid>-…` files and
    /// links whose process no longer runs). Returns how many went. Nothing
    /// there, or a symlink there or on the way, removes nothing.
    pub fn remove_stale_temporary_files(&self, path: &str) -> usize {
        // Removing a dead process's temporary file changes no directory on
        // the way to a managed path, so the folder may be a kept one. A
        // folder that cannot be opened removes nothing: why it could not is
        // not asked (no `explain_unreachable`), nobody would read it.
        let Ok(components) = self.components(path) else {
            return 0;
        };
        match self.open_directory_below(&components, Access::Read) {
            Ok(Opened::Directory(directory)) => {
                remove_stale_temporary_files_in(directory.as_fd(), None)
            }
            Ok(Opened::Unreachable { .. }) | Err(_) => 0,
        }
    }
    /// The uid of a user name (or of a number written as text). On a host
    /// whose root is not `/`, the root's `etc/passwd` is read when it exists,
    /// so a test can declare its own accounts; otherwise the system's
    /// resolver (NSS) answers.
    pub fn user_id(&self, name: &str) -> Result<u32, HostError> {
        if let Ok(uid) = name.parse::<u32>() {
            return Ok(uid);
        }
        let found = match self.account_database("/etc/passwd") {
            Some(database) => find_id_by_name(&database, name)?,
            None => nix::unistd::User::from_name(name)
                .map_err(|errno| HostError::io("look up the user", Path::new(name), errno.into()))?
                .map(|user| user.uid.as_raw()),
        };
        found.ok_or_else(|| HostError::UnknownAccount {
            kind: "user",
            name: name.to_string(),
        })
    }

    /// The gid of a group name (or of a number written as text), looked up
    /// as [`Host::user_id`] does.
    pub fn group_id(&self, name: &str) -> Result<u32, HostError> {
        if let Ok(gid) = name.parse::<u32>() {
            return Ok(gid);
        }
        let found = match self.account_database("/etc/group") {
            Some(database) => find_id_by_name(&database, name)?,
            None => nix::unistd::Group::from_name(name)
                .map_err(|errno| HostError::io("look up the group", Path::new(name), errno.into()))?
                .map(|group| group.gid.as_raw()),
        };
        found.ok_or_else(|| HostError::UnknownAccount {
            kind: "group",
            name: name.to_string(),
        })
    }

    /// The name of a uid, or the number as text when it has none: for
    /// display only.
    pub fn user_name(&self, uid: u32) -> String {
        let found = match self.account_database("/etc/passwd") {
            Some(database) => find_name_by_id(&database, uid),
            None => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                .ok()
                .flatten()
                .map(|user| user.name),
        };
        found.unwrap_or_else(|| uid.to_string())
    }

    /// The name of a gid, or the number as text when it has none: for
    /// display only.
    pub fn group_name(&self, gid: u32) -> String {
        let found = match self.account_database("/etc/group") {
            Some(database) => find_name_by_id(&database, gid),
            None => nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
                .ok()
                .flatten()
                .map(|group| group.name),
        };
        found.unwrap_or_else(|| gid.to_string())
    }

    /// The root's own `passwd` or `group` file, when the root is not the
    /// real machine's and has one.
    fn account_database(&self, path: &str) -> Option<PathBuf> {
        if self.root() == Path::new("/") {
            return None;
        }
        let database = self.path(path);
        database.is_file().then_some(database)
    }
}

impl Host {
    /// The components of a catalog path below the root; `..` is refused, so
    /// a path can never climb out of the root.
    fn components<'p>(&self, path: &'p str) -> Result<Vec<&'p str>, HostError> {
        let components: Vec<&str> = path
            .split('/')
            .filter(|component| !component.is_empty() && *component != ".")
            .collect();
        if components.contains(&"..") {
            return Err(HostError::io(
                "reach",
                &self.path(path),
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a managed path never contains `..`",
                ),
            ));
        }
        Ok(components)
    }

    /// Forgets the directories kept open for reads: called before every
    /// change made through this host (module documentation).
    pub(crate) fn forget_opened_directories(&self) {
        let mut opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        opened.by_path.clear();
        opened.changes += 1;
    }

    /// The directory kept open at `key` (its path below the root), if any.
    fn kept_directory(&self, key: &str) -> Option<Arc<OwnedFd>> {
        let opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        opened.by_path.get(key).cloned()
    }

    /// How many changes were made through this host so far.
    fn changes_so_far(&self) -> u64 {
        self.opened
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .changes
    }

    /// Keeps `directory`, opened at `key` when `changes` changes had been
    /// made, unless a change was made since.
    fn keep_directory(&self, key: &str, directory: &Arc<OwnedFd>, changes: u64) {
        let mut opened = self.opened.lock().unwrap_or_else(PoisonError::into_inner);
        if opened.changes != changes {
            return;
        }
        if opened.by_path.len() >= OPENED_DIRECTORIES_KEPT {
            opened.by_path.clear();
        }
        opened
            .by_path
            .insert(key.to_string(), Arc::clone(directory));
    }

    /// The root directory, open. The root itself is the operator's choice
    /// (`/`, or a test's directory), so symlinks in its own path are
    /// followed; nothing below it is.
    fn open_root(&self, access: Access) -> Result<Arc<OwnedFd>, HostError> {
        if access == Access::Read
            && let Some(root) = self.kept_directory("")
        {
            return Ok(root);
        }
        let changes = self.changes_so_far();
        let root = rustix::fs::open(
            self.root(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map(Arc::new)
        .map_err(|errno| HostError::io("open the root directory", self.root(), errno.into()))?;
        if access == Access::Read {
            self.keep_directory("", &root, changes);
        }
        Ok(root)
    }

    /// Opens the directory `components` lead to below the root, following
    /// no symlink (for a read, a kept one when there is); when it cannot be
    /// opened, the root and the error, for [`Host::explain_unreachable`].
    /// A change forgets the kept directories first.
    fn open_directory_below(
        &self,
        components: &[&str],
        access: Access,
    ) -> Result<Opened, HostError> {
        if access == Access::Change {
            self.forget_opened_directories();
        }
        let key = components.join("/");
        if access == Access::Read
            && let Some(directory) = self.kept_directory(&key)
        {
            return Ok(Opened::Directory(directory));
        }
        let changes = self.changes_so_far();
        let root = self.open_root(access)?;
        match self.open_below(&root, components) {
            Ok(directory) => {
                let directory = Arc::new(directory);
                if access == Access::Read {
                    self.keep_directory(&key, &directory, changes);
                }
                Ok(Opened::Directory(directory))
            }
            Err(errno) => Ok(Opened::Unreachable { root, errno }),
        }
    }

    /// Opens the directory `components` lead to below `root`, following no
    /// symlink: `openat2(RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH)`, or where
    /// the kernel has no `openat2`, an `O_NOFOLLOW` walk.
    fn open_below(&self, root: &OwnedFd, components: &[&str]) -> rustix::io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if components.is_empty() {
            return rustix::fs::openat(root, ".", flags, Mode::empty());
        }
        if !self.resolve_by_walk && !OPENAT2_UNAVAILABLE.load(Ordering::Relaxed) {
            let relative = components.join("/");
            // EAGAIN: a rename elsewhere raced the lookup; the kernel asks
            // to try again.
            for _ in 0..16 {
                match rustix::fs::openat2(
                    root,
                    relative.as_str(),
                    flags,
                    Mode::empty(),
                    ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH,
                ) {
                    Err(rustix::io::Errno::AGAIN) => continue,
                    Err(rustix::io::Errno::NOSYS) => {
                        OPENAT2_UNAVAILABLE.store(true, Ordering::Relaxed);
                        break;
                    }
                    result => return result,
                }
            }
            if !OPENAT2_UNAVAILABLE.load(Ordering::Relaxed) {
                return Err(rustix::io::Errno::AGAIN);
            }
        }
        // Intermediate directories are opened O_PATH (search permission is
        // enough), the last one for reading, so it can be listed and
        // fsynced. O_NOFOLLOW makes a symlink fail (ELOOP, or ENOTDIR for
        // O_PATH) instead of being followed.
        let (last, intermediate) = components.split_last().expect("not empty");
        let mut current: Option<OwnedFd> = None;
        for component in intermediate {
            let at = current.as_ref().map_or(root.as_fd(), |fd| fd.as_fd());
            current = Some(rustix::fs::openat(
                at,
                *component,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
        }
        let at = current.as_ref().map_or(root.as_fd(), |fd| fd.as_fd());
        rustix::fs::openat(at, *last, flags, Mode::empty())
    }

    /// Why the directory `components` lead to could not be opened: the
    /// first symlink on the way, when there is one (named in
    /// [`HostError::SymlinkInPath`]); `Ok(None)` when a component is
    /// missing or not a directory; `errno` otherwise.
    fn explain_unreachable(
        &self,
        path: &str,
        root: &OwnedFd,
        components: &[&str],
        errno: rustix::io::Errno,
    ) -> Result<Option<Reached>, HostError> {
        let mut walked = String::new();
        for (index, component) in components.iter().enumerate() {
            walked.push('/');
            walked.push_str(component);
            let relative = components[..=index].join("/");
            // A diagnosis only: the refusal has happened already, so
            // following nothing but reading each link's status is enough.
            match rustix::fs::statat(root, relative.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => {
                    let file_type = rustix::fs::FileType::from_raw_mode(stat.st_mode);
                    if file_type == rustix::fs::FileType::Symlink {
                        let target = rustix::fs::readlinkat(root, relative.as_str(), Vec::new())
                            .map(|target| String::from_utf8_lossy(target.as_bytes()).into_owned())
                            .unwrap_or_else(|_| "an unreadable target".to_string());
                        return Err(HostError::SymlinkInPath {
                            path: path.to_string(),
                            link: walked,
                            target,
                        });
                    }
                    if file_type != rustix::fs::FileType::Directory {
                        return Ok(None);
                    }
                }
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(None),
                Err(_) => break,
            }
        }
        match errno {
            rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR => Ok(None),
            errno => Err(HostError::io("reach", &self.path(path), errno.into())),
        }
    }

    /// Opens the parent directory of `path` without following a symlink;
    /// `None` when a parent is missing or not a directory.
    fn reach(&self, path: &str, access: Access) -> Result<Option<Reached>, HostError> {
        let components = self.components(path)?;
        let Some((name, parents)) = components.split_last() else {
            return Err(HostError::io(
                "reach",
                &self.path(path),
                io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
            ));
        };
        match self.open_directory_below(parents, access)? {
            Opened::Directory(directory) => Ok(Some(Reached {
                directory,
                name: OsString::from(*name),
                host_path: self.path(path),
            })),
            Opened::Unreachable { root, errno } => {
                self.explain_unreachable(path, &root, parents, errno)
            }
        }
    }

    /// [`Host::reach`] for a change or read: a missing parent is an error.
    fn reach_parent(
        &self,
        path: &str,
        action: &'static str,
        access: Access,
    ) -> Result<Reached, HostError> {
        self.reach(path, access)?.ok_or_else(|| {
            HostError::io(
                action,
                &self.path(path),
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("its parent directory {} does not exist", parent_path(path)),
                ),
            )
        })
    }

    /// Opens the directory at `path` itself, following no symlink on the
    /// way or at the path.
    fn open_directory(
        &self,
        path: &str,
        action: &'static str,
        access: Access,
    ) -> Result<Arc<OwnedFd>, HostError> {
        let components = self.components(path)?;
        match self.open_directory_below(&components, access)? {
            Opened::Directory(directory) => Ok(directory),
            Opened::Unreachable { root, errno } => {
                self.explain_unreachable(path, &root, &components, errno)?;
                Err(HostError::io(action, &self.path(path), errno.into()))
            }
        }
    }
}

impl AtomicFile {
    /// Starts an atomic write of `target_path`, a real path (not a catalog
    /// path): for the agent's own files, such as the backup store, whose
    /// directories belong to root.
    pub fn create(target_path: &Path, attributes: FileAttributes) -> Result<AtomicFile, HostError> {
        let directory_path = match target_path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let directory = rustix::fs::open(
            directory_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| HostError::io("open the directory", directory_path, errno.into()))?;
        AtomicFile::create_in(Arc::new(directory), target_path, attributes)
    }

    /// Starts an atomic write of the file named like `target_path` in the
    /// open `directory`.
    fn create_in(
        directory: Arc<OwnedFd>,
        target_path: &Path,
        attributes: FileAttributes,
    ) -> Result<AtomicFile, HostError> {
        let name = target_name(target_path)?;
        remove_stale_temporary_files_in(directory.as_fd(), Some(name));
        loop {
            let temporary_name = temporary_name(name);
            // O_EXCL: never write into a file someone else created, even a
            // symlink planted under the name we picked.
            let opened = rustix::fs::openat(
                &directory,
                temporary_name.as_os_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            );
            match opened {
                Ok(fd) => {
                    return Ok(AtomicFile {
                        file: Some(std::fs::File::from(fd)),
                        directory,
                        temporary_name,
                        target_path: target_path.to_path_buf(),
                        attributes,
                        renamed: false,
                    });
                }
                Err(rustix::io::Errno::EXIST) => continue,
                Err(errno) => {
                    return Err(HostError::io(
                        "create a temporary file next to",
                        target_path,
                        errno.into(),
                    ));
                }
            }
        }
    }

    /// The file the content will replace.
    pub fn target_path(&self) -> &Path {
        &self.target_path
    }

    /// Gives the written file its owner, group and mode, fsyncs it, renames
    /// it over the target and fsyncs the directory.
    pub fn commit(self) -> Result<(), HostError> {
        let target_path = self.target_path.clone();
        self.commit_as(&target_path)
    }

    /// Commits under another name in the same directory (only the last
    /// component of `target_path` counts): for content whose name is known
    /// only once it is written, such as a blob named by its hash.
    pub(crate) fn commit_as(mut self, target_path: &Path) -> Result<(), HostError> {
        let name = target_name(target_path)?.to_os_string();
        let file = self.file.take().expect("an AtomicFile is committed once");
        let existing = rustix::fs::openat(
            &self.directory,
            name.as_os_str(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .and_then(|fd| std::fs::File::from(fd).metadata().ok())
        .filter(|metadata| metadata.is_file())
        .map(|metadata| FileStatus::from_metadata(&metadata));
        let uid = self.attributes.uid.or(existing.map(|s| s.uid));
        let gid = self.attributes.gid.or(existing.map(|s| s.gid));
        let mode = self
            .attributes
            .mode
            .or(existing.map(|s| s.mode))
            .unwrap_or(DEFAULT_FILE_MODE);
        // Owner before mode: chown clears setuid and setgid.
        if uid.is_some() || gid.is_some() {
            std::os::unix::fs::fchown(&file, uid, gid)
                .map_err(|e| HostError::io("set the owner of", target_path, e))?;
        }
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| HostError::io("set the mode of", target_path, e))?;
        file.sync_all()
            .map_err(|e| HostError::io("flush to disk", target_path, e))?;
        drop(file);
        rustix::fs::renameat(
            &self.directory,
            self.temporary_name.as_os_str(),
            &self.directory,
            name.as_os_str(),
        )
        .map_err(|errno| HostError::io("replace", target_path, errno.into()))?;
        self.renamed = true;
        sync_fd(&self.directory, target_path)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buffer: &[u8]) -> io::Result<usize> {
        self.file
            .as_mut()
            .expect("an AtomicFile is not written after commit")
            .write(buffer)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file
            .as_mut()
            .expect("an AtomicFile is not written after commit")
            .flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.renamed {
            // The target was never touched; only our temporary file goes.
            let _ = rustix::fs::unlinkat(
                &self.directory,
                self.temporary_name.as_os_str(),
                AtFlags::empty(),
            );
        }
    }
}

/// The sha256 of `bytes` as lowercase hex: the one of `cms_roles`, so that
/// hashes computed here compare equal to the catalog's.
pub use cms_roles::digest::sha256_hex;

/// The parent of a catalog path: `/etc/nginx` for `/etc/nginx/nginx.conf`,
/// `/` for `/etc`.
pub fn parent_path(path: &str) -> &str {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some(("", _)) | None => "/",
        Some((parent, _)) => parent,
    }
}

/// fsyncs a directory, so that a rename or removal in it survives a crash.
pub(crate) fn sync_directory(directory: &Path) -> Result<(), HostError> {
    std::fs::File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(|e| HostError::io("flush to disk the directory", directory, e))
}

/// fsyncs an open directory; `path` names what changed in it, for messages.
fn sync_fd(directory: impl AsFd, path: &Path) -> Result<(), HostError> {
    rustix::fs::fsync(directory).map_err(|errno| {
        HostError::io(
            "flush to disk the directory of",
            path,
            io::Error::from(errno),
        )
    })
}

/// The whole content of an open file of `size` bytes (when it was opened),
/// read into a buffer of that size: no second status or seek, as
/// `read_to_end` on a `File` would make.
/// The first read of a file whose size is 0: kernel files answer a read in
/// one call, and a page holds any of them.
const KERNEL_FILE_READ: usize = 4096;

fn read_whole(file: &mut std::fs::File, size: u64) -> io::Result<Vec<u8>> {
    // One byte more than the size, so the read that finds the end needs no
    // bigger buffer; a file that grew meanwhile grows the buffer. A kernel
    // file (`/proc/sys/...`) says 0 bytes and must be read in one call: an
    // integer sysctl answers a read that does not start at 0 with nothing,
    // so a 1-byte buffer would read "3" of "3072".
    let capacity = match usize::try_from(size).unwrap_or(0) {
        0 => KERNEL_FILE_READ,
        size => size.saturating_add(1),
    };
    let mut content = vec![0; capacity];
    let mut filled = 0;
    loop {
        if filled == content.len() {
            content.resize(content.len().saturating_mul(2), 0);
        }
        match file.read(&mut content[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    content.truncate(filled);
    Ok(content)
}

/// The status of the last component of a reached path.
fn status_in(reached: &Reached) -> Result<Option<FileStatus>, HostError> {
    status_at_fd(&reached.directory, &reached.name, &reached.host_path)
}

/// The status of `name` in `directory`, not following a symlink there;
/// `None` when nothing is there.
fn status_at_fd(
    directory: &OwnedFd,
    name: &OsStr,
    host_path: &Path,
) -> Result<Option<FileStatus>, HostError> {
    // One `fstatat(AT_SYMLINK_NOFOLLOW)` of a single component in the
    // open directory: the lstat of the name, nothing followed.
    match rustix::fs::statat(directory, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(FileStatus::from_stat(&stat))),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(None),
        Err(errno) => Err(HostError::io("read the status of", host_path, errno.into())),
    }
}

/// An `O_PATH | O_NOFOLLOW` descriptor of the last component itself.
fn open_path_fd(reached: &Reached) -> io::Result<OwnedFd> {
    rustix::fs::openat(
        &reached.directory,
        reached.name.as_os_str(),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// `O_NOFOLLOW` on a symlink answers ELOOP ("Too many levels of symbolic
/// links"); say what it means.
fn symlink_at_path_error(errno: rustix::io::Errno) -> io::Error {
    if errno == rustix::io::Errno::LOOP {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a symlink is there, and it is never followed",
        )
    } else {
        errno.into()
    }
}

/// chmod of the object a reached path names, never of what a symlink there
/// points at: the object is opened `O_PATH | O_NOFOLLOW`, checked, and
/// changed through that descriptor (`/proc/self/fd`, as the C library's
/// `fchmodat(AT_SYMLINK_NOFOLLOW)` does), so a link swapped in after the
/// check is not followed either.
fn set_mode_of(reached: &Reached, mode: u32) -> Result<(), HostError> {
    let mode_error = |e| HostError::io("set the mode of", &reached.host_path, e);
    let fd = open_path_fd(reached).map_err(mode_error)?;
    let handle = std::fs::File::from(fd);
    let metadata = handle.metadata().map_err(mode_error)?;
    if metadata.file_type().is_symlink() {
        return Err(mode_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "it is a symlink, and a symlink is never followed",
        )));
    }
    let through_proc = format!("/proc/self/fd/{}", handle.as_raw_fd());
    match rustix::fs::chmod(through_proc.as_str(), Mode::from_raw_mode(mode)) {
        Ok(()) => Ok(()),
        // No /proc: open the object for reading, without following, and
        // check it is the one examined.
        Err(rustix::io::Errno::NOENT) => {
            let opened = rustix::fs::openat(
                &reached.directory,
                reached.name.as_os_str(),
                OFlags::RDONLY
                    | OFlags::NOFOLLOW
                    | OFlags::NONBLOCK
                    | OFlags::NOCTTY
                    | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|errno| mode_error(errno.into()))?;
            let same = rustix::fs::fstat(&opened).map_err(|errno| mode_error(errno.into()))?;
            if same.st_ino != metadata.ino() {
                return Err(mode_error(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "it was replaced while its mode was being set",
                )));
            }
            rustix::fs::fchmod(&opened, Mode::from_raw_mode(mode))
                .map_err(|errno| mode_error(errno.into()))
        }
        Err(errno) => Err(mode_error(errno.into())),
    }
}

/// Removes `name` in `directory` and, when it is a directory, everything
/// in it, opening each directory `O_NOFOLLOW` from its parent.
fn remove_tree(directory: &OwnedFd, name: &OsStr, host_path: &Path) -> Result<(), HostError> {
    let remove_error = |errno: rustix::io::Errno| HostError::io("remove", host_path, errno.into());
    match rustix::fs::unlinkat(directory, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        // A directory (EISDIR on Linux; EPERM elsewhere): empty it first.
        Err(rustix::io::Errno::ISDIR | rustix::io::Errno::PERM) => {}
        Err(errno) => return Err(remove_error(errno)),
    }
    let inner = rustix::fs::openat(
        directory,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(remove_error)?;
    for entry in entry_names(&inner, host_path)? {
        remove_tree(&inner, &entry, &host_path.join(&entry))?;
    }
    rustix::fs::unlinkat(directory, name, AtFlags::REMOVEDIR).map_err(remove_error)
}

/// The names in an open directory, without `.` and `..`.
fn entry_names(directory: &OwnedFd, host_path: &Path) -> Result<Vec<OsString>, HostError> {
    let list_error =
        |errno: rustix::io::Errno| HostError::io("list the directory", host_path, errno.into());
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(directory).map_err(list_error)? {
        let entry = entry.map_err(list_error)?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(OsString::from_vec(name.to_vec()));
    }
    Ok(names)
}

/// The last component of a path that names a file.
fn target_name(target_path: &Path) -> Result<&OsStr, HostError> {
    target_path.file_name().ok_or_else(|| {
        HostError::io(
            "write",
            target_path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        )
    })
}

/// Makes each temporary name in this process unique, together with the pid.
static TEMPORARY_NAME_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The longest part of the target's name a temporary name keeps: names are
/// limited to 255 bytes, and the prefix, pid and counter need room.
const TEMPORARY_NAME_KEEPS: usize = 200;

fn temporary_name(target_name: &OsStr) -> OsString {
    let counter = TEMPORARY_NAME_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = format!("{TEMPORARY_FILE_PREFIX}{}-{counter}-", std::process::id()).into_bytes();
    name.extend_from_slice(shortened_name(target_name));
    OsString::from_vec(name)
}

fn shortened_name(target_name: &OsStr) -> &[u8] {
    let bytes = target_name.as_bytes();
    &bytes[..bytes.len().min(TEMPORARY_NAME_KEEPS)]
}

/// Removes the temporary files (for `target_name`, or for any target when
/// `None`) that a process which no longer runs left in `directory` (it was
/// killed mid-write); returns how many. Only entries named
/// `.cms-tmp-<pid>-<counter>-…` go, removed with `unlinkat` (which never
/// follows a link, and never removes a directory). Best effort: a failure here must not fail the
/// write that called it.
fn remove_stale_temporary_files_in(
    directory: BorrowedFd<'_>,
    target_name: Option<&OsStr>,
) -> usize {
    // Without /proc, whether a process runs is unknown: leave everything.
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = rustix::fs::Dir::read_from(directory) else {
        return 0;
    };
    let wanted_name = target_name.map(shortened_name);
    let own_pid = std::process::id();
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name().to_bytes();
        let Some((pid, name)) = parse_temporary_name(file_name) else {
            continue;
        };
        if wanted_name.is_some_and(|wanted| wanted != name) || pid == own_pid {
            continue;
        }
        if !Path::new(&format!("/proc/{pid}")).exists()
            && rustix::fs::unlinkat(directory, entry.file_name(), AtFlags::empty()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// `.cms-tmp-<pid>-<counter>-<name>` → (pid, name).
fn parse_temporary_name(file_name: &[u8]) -> Option<(u32, &[u8])> {
    let rest = file_name.strip_prefix(TEMPORARY_FILE_PREFIX.as_bytes())?;
    let (pid, rest) = split_number(rest)?;
    let (_counter, name) = split_number(rest)?;
    Some((u32::try_from(pid).ok()?, name))
}

/// `123-rest` → (123, `rest`).
fn split_number(text: &[u8]) -> Option<(u64, &[u8])> {
    let dash = text.iter().position(|&b| b == b'-')?;
    let number = std::str::from_utf8(&text[..dash]).ok()?.parse().ok()?;
    Some((number, &text[dash + 1..]))
}

/// Looks a name up in a `passwd` or `group` file: in both, the name is the
/// first field and the id the third.
fn find_id_by_name(database: &Path, name: &str) -> Result<Option<u32>, HostError> {
    let text = std::fs::read_to_string(database).map_err(|e| HostError::io("read", database, e))?;
    Ok(text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let entry_name = fields.next()?;
        let id = fields.nth(1)?;
        (entry_name == name).then(|| id.parse().ok()).flatten()
    }))
}

fn find_name_by_id(database: &Path, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(database).ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let entry_name = fields.next()?;
        let entry_id: u32 = fields.nth(1)?.parse().ok()?;
        (entry_id == id).then(|| entry_name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_of_catalog_paths() {
        assert_eq!(parent_path("/etc/nginx/nginx.conf"), "/etc/nginx");
        assert_eq!(parent_path("/etc"), "/");
        assert_eq!(parent_path("/etc/nginx/"), "/etc");
    }

    #[test]
    fn temporary_names_parse_back_to_pid_and_target_name() {
        let name = temporary_name(OsStr::new("app-1.conf"));
        let (pid, target) = parse_temporary_name(name.as_bytes()).expect("parses");
        assert_eq!(pid, std::process::id());
        assert_eq!(target, b"app-1.conf");
        assert_eq!(parse_temporary_name(b".cms-tmp-x-1-a"), None);
        assert_eq!(parse_temporary_name(b"app.conf"), None);
    }

    #[test]
    fn temporary_names_of_long_targets_stay_within_255_bytes() {
        let long = "n".repeat(255);
        assert!(temporary_name(OsStr::new(&long)).len() <= 255);
    }
}
