//! Filesystem operations for the providers: status, reading, atomic writes,
//! directories, symbolic links, ownership, permissions and account names.
//!
//! Every `path` argument is a catalog path (absolute, as the catalog writes
//! it) and goes through [`Host::path`], so a host rooted in a temporary
//! directory never touches the real system. Nothing here follows a symbolic
//! link at the path itself: status is `lstat`, ownership is `lchown`, modes
//! are set with `fchmodat(AT_SYMLINK_NOFOLLOW)`, so a link planted where a
//! file was expected cannot redirect a change to another file.
//!
//! Writes are atomic. [`Host::write_file_atomically`] (and [`AtomicFile`] for
//! content that arrives in pieces) writes a temporary file next to the
//! target, gives it its final owner and mode, fsyncs it, renames it over the
//! target and fsyncs the directory. A reader, or a crash at any moment, sees
//! the old content or the new, never a mix, and never the new content with
//! the wrong permissions. Replacing by rename gives the path a new inode:
//! hard links to the old file keep the old content, and extended attributes
//! (ACLs, SELinux labels) are not carried over.
//!
//! Temporary files are named `.cms-tmp-<pid>-<counter>-<name>`. A process
//! killed mid-write leaves one behind; the next write to the same target
//! removes those whose process is gone.

use std::ffi::{OsStr, OsString};
use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cms_roles::digest::Sha256Hasher;

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

/// A file being written: the bytes go to a temporary file next to the
/// target, and [`AtomicFile::commit`] puts it in place. Dropping it without
/// committing (an error, a panic) removes the temporary file and leaves the
/// target as it was.
#[derive(Debug)]
pub struct AtomicFile {
    /// `None` once committed.
    file: Option<std::fs::File>,
    temporary_path: PathBuf,
    target_path: PathBuf,
    attributes: FileAttributes,
    renamed: bool,
}

impl Host {
    /// What is at `path` (not following a symlink there), or `None` when
    /// nothing is, including when a parent is missing or not a directory.
    pub fn status(&self, path: &str) -> Result<Option<FileStatus>, HostError> {
        status_at(&self.path(path))
    }

    /// Whether `path` is a directory, following symlinks: whether files can
    /// be created in it.
    pub fn is_directory(&self, path: &str) -> bool {
        self.path(path).is_dir()
    }

    /// The whole content of a file.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, HostError> {
        let host_path = self.path(path);
        std::fs::read(&host_path).map_err(|e| HostError::io("read", &host_path, e))
    }

    /// The sha256 of a file's content (lowercase hex), read in pieces so a
    /// large file costs no memory.
    pub fn file_sha256(&self, path: &str) -> Result<String, HostError> {
        let host_path = self.path(path);
        let read_error = |e| HostError::io("read", &host_path, e);
        let mut file = std::fs::File::open(&host_path).map_err(read_error)?;
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
        let host_path = self.path(path);
        let target = std::fs::read_link(&host_path)
            .map_err(|e| HostError::io("read the symlink", &host_path, e))?;
        Ok(target.to_string_lossy().into_owned())
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
        AtomicFile::create(&self.path(path), attributes)
    }

    /// Creates one directory (not its parents) with its final owner, group
    /// and mode: it is made private first, so nobody can use it before its
    /// permissions are right.
    pub fn create_directory(
        &self,
        path: &str,
        attributes: FileAttributes,
    ) -> Result<(), HostError> {
        let host_path = self.path(path);
        DirBuilder::new()
            .mode(0o700)
            .create(&host_path)
            .map_err(|e| HostError::io("create the directory", &host_path, e))?;
        if attributes.uid.is_some() || attributes.gid.is_some() {
            std::os::unix::fs::lchown(&host_path, attributes.uid, attributes.gid)
                .map_err(|e| HostError::io("set the owner of", &host_path, e))?;
        }
        set_mode_at(
            &host_path,
            attributes.mode.unwrap_or(DEFAULT_DIRECTORY_MODE),
        )?;
        sync_parent_directory(&host_path)
    }

    /// Removes a file, symlink or special file (never a directory).
    pub fn remove_file(&self, path: &str) -> Result<(), HostError> {
        let host_path = self.path(path);
        std::fs::remove_file(&host_path).map_err(|e| HostError::io("remove", &host_path, e))?;
        sync_parent_directory(&host_path)
    }

    /// Removes an empty directory.
    pub fn remove_empty_directory(&self, path: &str) -> Result<(), HostError> {
        let host_path = self.path(path);
        std::fs::remove_dir(&host_path)
            .map_err(|e| HostError::io("remove the directory", &host_path, e))?;
        sync_parent_directory(&host_path)
    }

    /// Removes a directory and everything in it. Symlinks inside are
    /// removed, never followed.
    pub fn remove_recursively(&self, path: &str) -> Result<(), HostError> {
        let host_path = self.path(path);
        std::fs::remove_dir_all(&host_path)
            .map_err(|e| HostError::io("remove the directory", &host_path, e))?;
        sync_parent_directory(&host_path)
    }

    /// The entries of a directory (not `.` and `..`), sorted by path.
    pub fn list_directory(&self, path: &str) -> Result<Vec<DirectoryEntry>, HostError> {
        let host_path = self.path(path);
        let list_error = |e| HostError::io("list the directory", &host_path, e);
        let mut entries = Vec::new();
        for entry in std::fs::read_dir(&host_path).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            let name = entry.file_name().into_string().map_err(|name| {
                list_error(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the entry name {name:?} is not UTF-8, so no catalog path can name it"),
                ))
            })?;
            let metadata = entry
                .metadata()
                .map_err(|e| HostError::io("read the status of", &entry.path(), e))?;
            entries.push(DirectoryEntry {
                path: format!("{}/{name}", path.trim_end_matches('/')),
                status: FileStatus::from_metadata(&metadata),
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
        let target_path = self.path(path);
        let (directory, name) = split_target(&target_path)?;
        remove_stale_temporary_files(directory, name);
        let temporary_path = loop {
            let candidate = directory.join(temporary_name(name));
            match std::os::unix::fs::symlink(target, &candidate) {
                Ok(()) => break candidate,
                // Another temporary file has the name (a process before us
                // with the same pid): take the next counter.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(HostError::io("create a symlink in", directory, e)),
            }
        };
        let result = (|| {
            if attributes.uid.is_some() || attributes.gid.is_some() {
                std::os::unix::fs::lchown(&temporary_path, attributes.uid, attributes.gid)
                    .map_err(|e| HostError::io("set the owner of", &target_path, e))?;
            }
            std::fs::rename(&temporary_path, &target_path)
                .map_err(|e| HostError::io("replace", &target_path, e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temporary_path);
        }
        result?;
        sync_directory(directory)
    }

    /// When a file's content last changed (or [`Host::touch`] was called),
    /// not following a symlink at the path.
    pub fn modified(&self, path: &str) -> Result<std::time::SystemTime, HostError> {
        let host_path = self.path(path);
        std::fs::symlink_metadata(&host_path)
            .and_then(|metadata| metadata.modified())
            .map_err(|e| HostError::io("read the status of", &host_path, e))
    }

    /// Sets a regular file's modification time to now, leaving its content.
    pub fn touch(&self, path: &str) -> Result<(), HostError> {
        let host_path = self.path(path);
        OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&host_path)
            .and_then(|file| file.set_modified(super::clock::now()))
            .map_err(|e| HostError::io("set the modification time of", &host_path, e))
    }

    /// Sets the permission bits (including setuid, setgid and sticky) of a
    /// file or directory. Fails on a symlink rather than following it.
    pub fn set_mode(&self, path: &str, mode: u32) -> Result<(), HostError> {
        set_mode_at(&self.path(path), mode)
    }

    /// Sets the owner and/or group of a file, directory or symlink itself
    /// (`lchown`). `None` leaves that one as it is.
    pub fn set_ownership(
        &self,
        path: &str,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), HostError> {
        let host_path = self.path(path);
        std::os::unix::fs::lchown(&host_path, uid, gid)
            .map_err(|e| HostError::io("set the owner of", &host_path, e))
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

impl AtomicFile {
    /// Starts an atomic write of `target_path`, a real path (not a catalog
    /// path): for the agent's own files, such as the backup store.
    pub fn create(target_path: &Path, attributes: FileAttributes) -> Result<AtomicFile, HostError> {
        let (directory, name) = split_target(target_path)?;
        remove_stale_temporary_files(directory, name);
        loop {
            let temporary_path = directory.join(temporary_name(name));
            // O_EXCL: never write into a file someone else created, even a
            // symlink planted under the name we picked.
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary_path);
            match opened {
                Ok(file) => {
                    return Ok(AtomicFile {
                        file: Some(file),
                        temporary_path,
                        target_path: target_path.to_path_buf(),
                        attributes,
                        renamed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(HostError::io("create a temporary file in", directory, e)),
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

    /// Commits under another name in the same directory: for content whose
    /// name is known only once it is written, such as a blob named by its
    /// hash.
    pub(crate) fn commit_as(mut self, target_path: &Path) -> Result<(), HostError> {
        let file = self.file.take().expect("an AtomicFile is committed once");
        let existing = match std::fs::symlink_metadata(target_path) {
            Ok(metadata) if metadata.is_file() => Some(FileStatus::from_metadata(&metadata)),
            _ => None,
        };
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
        std::fs::rename(&self.temporary_path, target_path)
            .map_err(|e| HostError::io("replace", target_path, e))?;
        self.renamed = true;
        sync_parent_directory(target_path)
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
            let _ = std::fs::remove_file(&self.temporary_path);
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

pub(crate) fn status_at(host_path: &Path) -> Result<Option<FileStatus>, HostError> {
    match std::fs::symlink_metadata(host_path) {
        Ok(metadata) => Ok(Some(FileStatus::from_metadata(&metadata))),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(HostError::io("read the status of", host_path, e)),
    }
}

/// fsyncs a directory, so that a rename or removal in it survives a crash.
pub(crate) fn sync_directory(directory: &Path) -> Result<(), HostError> {
    std::fs::File::open(directory)
        .and_then(|handle| handle.sync_all())
        .map_err(|e| HostError::io("flush to disk the directory", directory, e))
}

fn sync_parent_directory(path: &Path) -> Result<(), HostError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_directory(parent),
        _ => sync_directory(Path::new(".")),
    }
}

fn set_mode_at(host_path: &Path, mode: u32) -> Result<(), HostError> {
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        host_path,
        nix::sys::stat::Mode::from_bits_truncate(mode),
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    )
    .map_err(|errno| HostError::io("set the mode of", host_path, errno.into()))
}

fn split_target(target_path: &Path) -> Result<(&Path, &OsStr), HostError> {
    match (target_path.parent(), target_path.file_name()) {
        (Some(directory), Some(name)) => Ok((directory, name)),
        _ => Err(HostError::io(
            "write",
            target_path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        )),
    }
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

/// Removes the temporary files for `target_name` that a process which no
/// longer runs left in `directory` (it was killed mid-write). Best effort:
/// a failure here must not fail the write that called it.
fn remove_stale_temporary_files(directory: &Path, target_name: &OsStr) {
    // Without /proc, whether a process runs is unknown: leave everything.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    let wanted_name = shortened_name(target_name);
    let own_pid = std::process::id();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some((pid, name)) = parse_temporary_name(file_name.as_bytes()) else {
            continue;
        };
        if name != wanted_name || pid == own_pid {
            continue;
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
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
