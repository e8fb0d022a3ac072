//! The local backup store: the content a change replaces or removes is kept
//! here, so that `cms-agent restore PATH [--at TIME]` can put it back.
//!
//! Layout, under the store's directory:
//!
//! - `blobs/<sha256>`: each content once, named by its hash;
//! - `index.jsonl`: one [`BackupEntry`] per line (path, hash, time, size, and
//!   the file's mode and owner), appended; rewritten only by pruning.
//!
//! The directory is private (mode 0700) and blobs are 0600: backups hold
//! whatever the files held, `/etc/shadow` included.
//!
//! A crash never corrupts the store. A blob is written atomically (temporary
//! file, fsync, rename, fsync of the directory) before its index line, so
//! every line names a whole blob; a crash in between leaves a blob that no
//! line names, which costs space and nothing else. A line is appended with a
//! single `write` on an `O_APPEND` file and fsynced. A crash during that
//! write can leave a last line without its newline: readers ignore it, and
//! the next append starts on a fresh line, after which readers skip the torn
//! line as unparseable. Appends from two processes (a run and a `restore`)
//! do not interleave, because each is one `write` to an `O_APPEND` file.
//!
//! The store does not grow forever: after each save it keeps, per path,
//! the newest [`KEEP_PER_PATH`] backups, and of those only the ones younger
//! than [`MAX_AGE_SECS`] except the newest, which is kept whatever its age
//! (the last content before the file's last change stays restorable). A
//! pruned entry's blob goes when no kept entry names it. Pruning rewrites
//! the index atomically (temporary file, rename), so a crash leaves the old
//! index or the new one. Saves and pruning take an exclusive `flock` on
//! `lock` in the store, so a `restore` saving the content it replaces
//! never races a run's pruning.
//!
//! On open, a store directory found wider than 0700 (or an index wider
//! than 0600) is narrowed again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use cms_roles::digest::Sha256Hasher;
use serde::{Deserialize, Serialize};

use crate::host::fs::{AtomicFile, FileAttributes, FileKind, parent_path, sha256_hex};
use crate::{Host, HostError};

/// Keeps the content a change replaces, by hash, with path and time.
#[derive(Debug)]
pub struct BackupStore {
    dir: PathBuf,
}

/// One saved content of one path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEntry {
    /// The catalog path the content was at.
    pub path: String,
    /// The content's sha256; the blob's name.
    pub sha256: String,
    /// When it was saved, in seconds since the Unix epoch: the moment just
    /// before it was replaced or removed.
    pub time: u64,
    /// Bytes.
    pub size: u64,
    /// The file's permission bits then, used when restoring to a path where
    /// no file is any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// What [`BackupStore::restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The backup that is now the file's content.
    pub restored: BackupEntry,
    /// The backup of the content the restore replaced; `None` when there was
    /// no file, or it already had the restored content (then nothing was
    /// written).
    pub replaced: Option<BackupEntry>,
}

/// Why the backup store could not save, list or restore.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("Failed to find a backup of {path}")]
    NotFound { path: String },
    #[error(
        "Nothing to restore: {path} has not changed since {at} (Unix time), so it already has the content it had then"
    )]
    UnchangedSince { path: String, at: u64 },
    #[error(
        "Failed to verify the backup {sha256} of {path}: the stored content has sha256 {computed}"
    )]
    Corrupt {
        path: String,
        sha256: String,
        computed: String,
    },
    #[error("Failed to restore {path}: a {kind} is there, and only a file or symlink is replaced")]
    InTheWay { path: String, kind: &'static str },
    #[error("Failed to restore {path}: its parent directory {parent} does not exist")]
    MissingParent { path: String, parent: String },
}

/// The mode of a restored file whose backup does not record one: private,
/// because it may be a secret.
const RESTORED_FILE_MODE_WHEN_UNKNOWN: u32 = 0o600;

/// How many backups of one path are kept: the newest ones.
pub const KEEP_PER_PATH: usize = 5;

/// Backups older than this (90 days) are pruned, except the newest of
/// each path.
pub const MAX_AGE_SECS: u64 = 90 * 24 * 60 * 60;

impl BackupStore {
    /// Opens the store in `dir`, creating it (mode 0700) when missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<BackupStore, BackupError> {
        let dir = dir.into();
        let blobs = dir.join("blobs");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&blobs)
            .map_err(|e| HostError::io("create the backup directory", &blobs, e))?;
        let store = BackupStore { dir };
        // A store made by an older agent, or widened by hand, is narrowed:
        // backups hold what the files held, secrets included.
        narrow_mode(&store.dir, 0o700)?;
        narrow_mode(&blobs, 0o700)?;
        narrow_mode(&store.index_path(), 0o600)?;
        Ok(store)
    }

    /// Takes the store's lock, released when the returned file closes.
    fn lock(&self) -> Result<File, BackupError> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| HostError::io("open", &path, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| HostError::io("lock", &path, e.into()))?;
        Ok(file)
    }

    /// Prunes the store as of `now` (seconds since the Unix epoch): see
    /// the module's documentation. Returns how many backups went.
    pub fn prune(&self, now: u64) -> Result<usize, BackupError> {
        let _lock = self.lock()?;
        self.prune_locked(now)
    }

    fn prune_locked(&self, now: u64) -> Result<usize, BackupError> {
        let entries = self.all_entries()?;
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut kept = Vec::with_capacity(entries.len());
        let mut dropped = Vec::new();
        for entry in &entries {
            // Newest first: `rank` 0 is the newest backup of its path.
            let rank = seen.entry(entry.path.as_str()).or_default();
            let too_old = now.saturating_sub(entry.time) > MAX_AGE_SECS;
            if *rank < KEEP_PER_PATH && (*rank == 0 || !too_old) {
                kept.push(entry);
            } else {
                dropped.push(entry);
            }
            *rank += 1;
        }
        if dropped.is_empty() {
            return Ok(0);
        }
        let mut text = Vec::new();
        for entry in kept.iter().rev() {
            serde_json::to_writer(&mut text, entry).expect("a backup entry always serializes");
            text.push(b'\n');
        }
        let index_path = self.index_path();
        let mut index = AtomicFile::create(&index_path, blob_attributes())?;
        index
            .write_all(&text)
            .map_err(|e| HostError::io("write", &index_path, e))?;
        index.commit()?;
        let still_named: BTreeSet<&str> = kept.iter().map(|e| e.sha256.as_str()).collect();
        let unnamed: BTreeSet<&str> = dropped
            .iter()
            .map(|e| e.sha256.as_str())
            .filter(|sha256| !still_named.contains(sha256))
            .collect();
        for sha256 in unnamed {
            let blob_path = self.blob_path(sha256);
            match std::fs::remove_file(&blob_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(HostError::io("remove", &blob_path, e).into()),
            }
        }
        Ok(dropped.len())
    }

    /// Where the store lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Saves `content` as the content of `path`, now.
    pub fn save(&self, path: &str, content: &[u8]) -> Result<BackupEntry, BackupError> {
        self.save_at(path, content, unix_time_now())
    }

    /// Saves `content` as the content of `path` at `time` (seconds since the
    /// Unix epoch): for tests, and for importing backups made elsewhere.
    pub fn save_at(
        &self,
        path: &str,
        content: &[u8],
        time: u64,
    ) -> Result<BackupEntry, BackupError> {
        let _lock = self.lock()?;
        let sha256 = sha256_hex(content);
        let blob_path = self.blob_path(&sha256);
        if !blob_path.is_file() {
            let mut blob = AtomicFile::create(&blob_path, blob_attributes())?;
            blob.write_all(content)
                .map_err(|e| HostError::io("write", &blob_path, e))?;
            blob.commit()?;
        }
        self.append(BackupEntry {
            path: path.to_string(),
            sha256,
            time,
            size: content.len() as u64,
            mode: None,
            uid: None,
            gid: None,
        })
        .and_then(|entry| self.prune_locked(time).map(|_| entry))
    }

    /// Saves the current content of a file on the host, with its mode and
    /// owner, reading it in pieces so a large file costs no memory. `None`
    /// when `path` is not a regular file (nothing there, a symlink, …).
    pub fn save_from_host(
        &self,
        host: &Host,
        path: &str,
    ) -> Result<Option<BackupEntry>, BackupError> {
        let Some(status) = host.status(path)? else {
            return Ok(None);
        };
        if status.kind != FileKind::File {
            return Ok(None);
        }
        let _lock = self.lock()?;
        let host_path = host.path(path);
        let read_error = |e| HostError::io("read", &host_path, e);
        // Opened without following a symlink on the way or at the path; the
        // mode and owner recorded are those of the file actually read.
        let mut source = host.open_file(path)?;
        let status = {
            use std::os::unix::fs::MetadataExt;
            let metadata = source.metadata().map_err(read_error)?;
            crate::host::fs::FileStatus {
                mode: metadata.mode() & 0o7777,
                uid: metadata.uid(),
                gid: metadata.gid(),
                size: metadata.len(),
                ..status
            }
        };
        // The blob's name is its hash, known only at the end: write under a
        // temporary name, then commit under the hash.
        let incoming_path = self.dir.join("blobs").join("incoming");
        let mut blob = AtomicFile::create(&incoming_path, blob_attributes())?;
        let mut hasher = Sha256Hasher::new();
        let mut size = 0u64;
        let mut buffer = vec![0; 64 * 1024];
        loop {
            let count = match source.read(&mut buffer) {
                Ok(0) => break,
                Ok(count) => count,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e).into()),
            };
            hasher.update(&buffer[..count]);
            blob.write_all(&buffer[..count])
                .map_err(|e| HostError::io("write", &incoming_path, e))?;
            size += count as u64;
        }
        let sha256 = hasher.finish_hex();
        let blob_path = self.blob_path(&sha256);
        if blob_path.is_file() {
            // Dropping the AtomicFile removes the temporary copy.
            drop(blob);
        } else {
            blob.commit_as(&blob_path)?;
        }
        let now = unix_time_now();
        let entry = self.append(BackupEntry {
            path: path.to_string(),
            sha256,
            time: now,
            size,
            mode: Some(status.mode),
            uid: Some(status.uid),
            gid: Some(status.gid),
        })?;
        self.prune_locked(now)?;
        Ok(Some(entry))
    }

    /// The backups of `path`, newest first.
    pub fn entries(&self, path: &str) -> Result<Vec<BackupEntry>, BackupError> {
        let mut entries = self.all_entries()?;
        entries.retain(|entry| entry.path == path);
        Ok(entries)
    }

    /// Every backup of every path, newest first.
    pub fn all_entries(&self) -> Result<Vec<BackupEntry>, BackupError> {
        let index_path = self.index_path();
        let text = match std::fs::read(&index_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HostError::io("read", &index_path, e).into()),
        };
        // Only lines ended by a newline are whole; anything after the last
        // newline is a write a crash interrupted.
        let whole_lines = match text.iter().rposition(|&b| b == b'\n') {
            Some(last_newline) => &text[..last_newline],
            None => &[][..],
        };
        let mut entries: Vec<BackupEntry> = whole_lines
            .split(|&b| b == b'\n')
            // A torn line that a later append closed does not parse; it
            // held no entry, as its blob's entry was never complete.
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect();
        // Lines are in the order they were saved; a stable sort by time
        // keeps that order within one second, and the reversal puts the
        // newest first.
        entries.sort_by_key(|entry| entry.time);
        entries.reverse();
        Ok(entries)
    }

    /// The content of a backup, checked against its hash.
    pub fn content(&self, entry: &BackupEntry) -> Result<Vec<u8>, BackupError> {
        let blob_path = self.blob_path(&entry.sha256);
        let content =
            std::fs::read(&blob_path).map_err(|e| HostError::io("read", &blob_path, e))?;
        let computed = sha256_hex(&content);
        if computed != entry.sha256 {
            return Err(BackupError::Corrupt {
                path: entry.path.clone(),
                sha256: entry.sha256.clone(),
                computed,
            });
        }
        Ok(content)
    }

    /// Puts back the content `path` had at time `at` (seconds since the
    /// Unix epoch), or, when `None`, the content the last change replaced,
    /// with an atomic write. A backup holds the content that was live until
    /// the moment it was saved, so the content live at `at` is the oldest
    /// backup saved after `at`; when there is none, the file has not changed
    /// since and there is nothing to restore. The content it replaces is backed up first, so a
    /// restore can itself be undone. A file that is still there keeps its
    /// owner and mode; one that is gone gets those its backup recorded.
    pub fn restore(
        &self,
        host: &Host,
        path: &str,
        at: Option<u64>,
    ) -> Result<Restored, BackupError> {
        let entries = self.entries(path)?;
        if entries.is_empty() {
            return Err(BackupError::NotFound {
                path: path.to_string(),
            });
        }
        let chosen = match at {
            None => entries.into_iter().next(),
            Some(at) => entries.into_iter().rev().find(|entry| entry.time > at),
        }
        .ok_or_else(|| BackupError::UnchangedSince {
            path: path.to_string(),
            at: at.unwrap_or_default(),
        })?;
        let content = self.content(&chosen)?;
        let current = host.status(path)?;
        let attributes = match current.map(|status| status.kind) {
            Some(FileKind::File) => {
                if host.file_sha256(path)? == chosen.sha256 {
                    return Ok(Restored {
                        restored: chosen,
                        replaced: None,
                    });
                }
                // None keeps the mode and owner of the file being replaced.
                FileAttributes::default()
            }
            Some(FileKind::Directory | FileKind::Other) => {
                return Err(BackupError::InTheWay {
                    path: path.to_string(),
                    kind: current.map_or("file", |status| status.kind.describe()),
                });
            }
            Some(FileKind::Symlink) | None => FileAttributes {
                mode: Some(chosen.mode.unwrap_or(RESTORED_FILE_MODE_WHEN_UNKNOWN)),
                uid: chosen.uid,
                gid: chosen.gid,
            },
        };
        let parent = parent_path(path);
        if !host.is_directory(parent) {
            return Err(BackupError::MissingParent {
                path: path.to_string(),
                parent: parent.to_string(),
            });
        }
        let replaced = self.save_from_host(host, path)?;
        host.write_file_atomically(path, &content, attributes)?;
        Ok(Restored {
            restored: chosen,
            replaced,
        })
    }

    fn blob_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("blobs").join(sha256)
    }

    fn index_path(&self) -> PathBuf {
        self.dir.join("index.jsonl")
    }

    fn append(&self, entry: BackupEntry) -> Result<BackupEntry, BackupError> {
        let index_path = self.index_path();
        let index_error = |e| HostError::io("append to", &index_path, e);
        let mut line = serde_json::to_vec(&entry).expect("a backup entry always serializes");
        line.push(b'\n');
        let mut index = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&index_path)
            .map_err(index_error)?;
        let length = index.metadata().map_err(index_error)?.len();
        if length > 0 {
            let mut last_byte = [0u8];
            index
                .read_exact_at(&mut last_byte, length - 1)
                .map_err(index_error)?;
            if last_byte[0] != b'\n' {
                line.insert(0, b'\n');
            }
        }
        // One write call, so concurrent appends never interleave.
        index.write_all(&line).map_err(index_error)?;
        index.sync_all().map_err(index_error)?;
        if length == 0 {
            crate::host::fs::sync_directory(&self.dir)?;
        }
        Ok(entry)
    }
}

fn blob_attributes() -> FileAttributes {
    FileAttributes {
        mode: Some(0o600),
        uid: None,
        gid: None,
    }
}

/// Takes away permission bits beyond `widest` from `path`, if it exists.
fn narrow_mode(path: &Path, widest: u32) -> Result<(), BackupError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(HostError::io("inspect", path, e).into()),
    };
    let mode = metadata.permissions().mode() & 0o7777;
    if metadata.file_type().is_symlink() || mode & !widest == 0 {
        return Ok(());
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & widest))
        .map_err(|e| HostError::io("narrow the mode of", path, e).into())
}

fn unix_time_now() -> u64 {
    crate::host::clock::unix_secs()
}
