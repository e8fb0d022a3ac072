//! The files of a roles repository, held in memory.
//!
//! The compiler never reads the filesystem: a repository is a map from
//! relative path to bytes, filled from a directory here or from a git commit
//! by the server. That keeps compilation a pure function of its inputs, and
//! makes path traversal impossible past this point: a path that is not a key
//! of the map does not exist.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

/// The repository settings file, at the root.
pub const SETTINGS_FILE: &str = "cms.toml";

/// One entry of a repository tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    File(Vec<u8>),
    /// A symbolic link whose target leaves the repository. It is never
    /// followed; referring to it is an error.
    EscapingSymlink(String),
}

/// The files of a roles repository, by path relative to its root, with `/`
/// as separator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoFiles {
    entries: BTreeMap<String, Entry>,
    /// Entries whose name is not UTF-8, printed lossily: reported as
    /// errors, never read (a folder's files are not listed).
    invalid_names: BTreeSet<String>,
}

/// Why a repository directory could not be read.
#[derive(Debug, thiserror::Error)]
#[error("Failed to read roles repository at {path}")]
pub struct ReadError {
    pub path: String,
    #[source]
    pub source: std::io::Error,
}

impl RepoFiles {
    pub fn new() -> Self {
        RepoFiles::default()
    }

    /// Adds a file; `path` is relative to the repository root.
    pub fn insert(&mut self, path: impl Into<String>, bytes: impl Into<Vec<u8>>) {
        self.entries.insert(path.into(), Entry::File(bytes.into()));
    }

    pub fn insert_escaping_symlink(&mut self, path: impl Into<String>, target: impl Into<String>) {
        self.entries
            .insert(path.into(), Entry::EscapingSymlink(target.into()));
    }

    /// Records an entry whose name is not UTF-8 (`path` printed lossily);
    /// [`crate::Repository::load`] reports it as an error. Only names under
    /// the repository's folders count (see [`is_repository_path`]).
    pub fn insert_invalid_name(&mut self, path: impl Into<String>) {
        self.invalid_names.insert(path.into());
    }

    /// The entries whose name is not UTF-8, printed lossily.
    pub fn invalid_names(&self) -> impl Iterator<Item = &str> {
        self.invalid_names.iter().map(String::as_str)
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// Every entry whose path starts with `prefix` (e.g. `roles/`).
    pub fn under<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a Entry)> + 'a {
        self.entries
            .range(prefix.to_string()..)
            .take_while(move |(path, _)| path.starts_with(prefix))
            .map(|(path, entry)| (path.as_str(), entry))
    }

    /// Reads a repository folder: `cms.toml` and the `roles/`,
    /// `templates/`, `files/`, `data/` and `secrets/` trees, nothing else (a README, CI
    /// files or a wrong `--repo` pointing at `/etc` are never read).
    /// Symbolic links are followed when they stay inside the repository and
    /// recorded as [`Entry::EscapingSymlink`] otherwise.
    pub fn read_dir(root: &Path) -> Result<RepoFiles, ReadError> {
        let canonical_root = root.canonicalize().map_err(|source| ReadError {
            path: root.display().to_string(),
            source,
        })?;
        let mut files = RepoFiles::new();
        let top = std::fs::read_dir(&canonical_root).map_err(|source| ReadError {
            path: canonical_root.display().to_string(),
            source,
        })?;
        drop(top);
        let mut stack: Vec<PathBuf> = REPOSITORY_FOLDERS
            .iter()
            .map(|folder| canonical_root.join(folder))
            .filter(|folder| folder.symlink_metadata().is_ok())
            .collect();
        let settings = canonical_root.join(SETTINGS_FILE);
        if settings.symlink_metadata().is_ok() {
            read_entry(&canonical_root, &settings, &mut files, &mut stack)?;
        }
        // The folders themselves may be links; read each through its entry.
        let folders = std::mem::take(&mut stack);
        for folder in folders {
            read_entry(&canonical_root, &folder, &mut files, &mut stack)?;
        }
        while let Some(dir) = stack.pop() {
            let read = std::fs::read_dir(&dir).map_err(|source| ReadError {
                path: dir.display().to_string(),
                source,
            })?;
            for entry in read {
                let entry = entry.map_err(|source| ReadError {
                    path: dir.display().to_string(),
                    source,
                })?;
                read_entry(&canonical_root, &entry.path(), &mut files, &mut stack)?;
            }
        }
        Ok(files)
    }
}

/// The folders of a repository besides `cms.toml`.
const REPOSITORY_FOLDERS: &[&str] = &["roles", "templates", "files", "data", "secrets"];

/// Whether a path (relative, `/`-separated) is one a repository is made of:
/// `cms.toml`, or anything under `roles/`, `templates/`, `files/`, `data/`,
/// `secrets/`.
/// A commit is read the same way a folder is: other paths are ignored.
pub fn is_repository_path(path: &str) -> bool {
    path == SETTINGS_FILE
        || REPOSITORY_FOLDERS.iter().any(|folder| {
            path.strip_prefix(folder)
                .is_some_and(|rest| rest.starts_with('/'))
        })
}

/// Reads one entry: a file into `files`, a folder onto `stack`, a link
/// followed when it stays inside the repository.
fn read_entry(
    root: &Path,
    path: &Path,
    files: &mut RepoFiles,
    stack: &mut Vec<PathBuf>,
) -> Result<(), ReadError> {
    let error = |source| ReadError {
        path: path.display().to_string(),
        source,
    };
    let relative = relative_name(root, path);
    if path.file_name().is_some_and(|name| name.to_str().is_none()) {
        files.insert_invalid_name(relative);
        return Ok(());
    }
    let file_type = path.symlink_metadata().map_err(error)?.file_type();
    if file_type.is_symlink() {
        let target = std::fs::read_link(path).map_err(error)?;
        match path.canonicalize() {
            Ok(resolved) if resolved.starts_with(root) => {
                if resolved.is_dir() {
                    // A link to a folder inside the repository would list the
                    // same files twice, unless it is one of the top folders.
                    if REPOSITORY_FOLDERS.contains(&relative.as_str()) {
                        stack.push(path.to_path_buf());
                    }
                    return Ok(());
                }
                let bytes = std::fs::read(&resolved).map_err(error)?;
                files.insert(relative, bytes);
            }
            _ => files.insert_escaping_symlink(relative, target.display().to_string()),
        }
    } else if file_type.is_dir() {
        stack.push(path.to_path_buf());
    } else if file_type.is_file() {
        let bytes = std::fs::read(path).map_err(error)?;
        files.insert(relative, bytes);
    }
    Ok(())
}

fn relative_name(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// A user-written path that [`join_inside`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error(
        "path `{path}` leaves `{folder}/`: paths are relative to `{folder}/` and may not climb out of it"
    )]
    Climbs { folder: String, path: String },
    #[error("path `{path}` is absolute: give a path relative to `{folder}/`")]
    Absolute { folder: String, path: String },
    #[error("path `{path}` names no file under `{folder}/`")]
    NamesNothing { folder: String, path: String },
}

/// Joins a user-written relative path onto a repository folder (`files`,
/// `templates`), refusing anything that would leave that folder: an absolute
/// path, or `..` climbing above it.
pub fn join_inside(folder: &str, user_path: &str) -> Result<String, JoinError> {
    let path = Path::new(user_path);
    let owned = || (folder.to_string(), user_path.to_string());
    let mut parts: Vec<String> = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    let (folder, path) = owned();
                    return Err(JoinError::Climbs { folder, path });
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                let (folder, path) = owned();
                return Err(JoinError::Absolute { folder, path });
            }
        }
    }
    if parts.is_empty() {
        let (folder, path) = owned();
        return Err(JoinError::NamesNothing { folder, path });
    }
    Ok(format!("{folder}/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_path_joins_inside_its_folder_and_one_that_leaves_it_is_refused() {
        let joined = |path| join_inside("templates", path);
        assert_eq!(joined("a.hbs").as_deref(), Ok("templates/a.hbs"));
        assert_eq!(joined("x/y/a.hbs").as_deref(), Ok("templates/x/y/a.hbs"));
        // Written another way, the same file.
        assert_eq!(
            joined("./x//y/./a.hbs/").as_deref(),
            Ok("templates/x/y/a.hbs")
        );
        assert_eq!(joined("x/../a.hbs").as_deref(), Ok("templates/a.hbs"));
        assert!(matches!(joined("../a.hbs"), Err(JoinError::Climbs { .. })));
        assert!(matches!(
            joined("x/../../a.hbs"),
            Err(JoinError::Climbs { .. })
        ));
        assert!(matches!(
            joined("/etc/passwd"),
            Err(JoinError::Absolute { .. })
        ));
        assert!(matches!(joined(""), Err(JoinError::NamesNothing { .. })));
        assert!(matches!(joined("./"), Err(JoinError::NamesNothing { .. })));
        assert!(matches!(
            joined("x/.."),
            Err(JoinError::NamesNothing { .. })
        ));
    }
}
