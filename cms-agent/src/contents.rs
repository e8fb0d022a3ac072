//! The agent's cache of file contents that travel by hash
//! (`<state>/contents/<sha256>`, owner-only): a content is fetched from the
//! server once, kept by its hash, and used again by later runs and when the
//! server is away. Every file is checked against its name's sha256 before
//! use, so a damaged or altered one is fetched again, never applied.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cms_roles::{Catalog, is_sha256_hex, sha256_hex};

use crate::state::write_private_atomically;

/// `bytes` when they are `size` bytes with sha256 `hash`; else an error
/// naming the content.
pub fn verified(hash: &str, size: u64, bytes: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if bytes.len() as u64 != size {
        anyhow::bail!(
            "Failed to fetch content {hash}: the catalog names {size} bytes, {} arrived",
            bytes.len()
        );
    }
    let computed = sha256_hex(&bytes);
    if computed != hash {
        anyhow::bail!("Failed to fetch content {hash}: what arrived hashes to {computed}");
    }
    Ok(bytes)
}

/// Moves checked bytes of a content `catalog` fetches by hash into its
/// contents.
pub fn attach(catalog: &mut Catalog, hash: &str, bytes: Vec<u8>) {
    if catalog.to_fetch.remove(hash).is_some() {
        catalog
            .contents
            .insert(hash.to_string(), cms_roles::Content(bytes));
    }
}

/// Contents by sha256 under the state directory.
#[derive(Debug, Clone)]
pub struct ContentCache {
    dir: PathBuf,
}

impl ContentCache {
    /// The cache in `state_dir`. A folder or content left wider than
    /// owner-only by an older agent is narrowed (0700, 0600): contents may
    /// be rendered secrets.
    pub fn new(state_dir: &Path) -> ContentCache {
        let cache = ContentCache {
            dir: state_dir.join("contents"),
        };
        let mut paths = vec![cache.dir.clone()];
        if let Ok(entries) = std::fs::read_dir(&cache.dir) {
            paths.extend(entries.flatten().map(|entry| entry.path()));
        }
        for path in paths {
            if let Err(error) = crate::state::narrow_to_owner(&path) {
                eprintln!("warning: {error:#}");
            }
        }
        cache
    }

    fn path(&self, hash: &str) -> Option<PathBuf> {
        // The hash names a file: only a sha256 may.
        is_sha256_hex(hash).then(|| self.dir.join(hash))
    }

    /// The bytes kept for `hash`, when there are some and they still hash
    /// to it. A file that does not is removed (it will be fetched again).
    pub fn get(&self, hash: &str) -> Option<Vec<u8>> {
        let path = self.path(hash)?;
        let bytes = std::fs::read(&path).ok()?;
        if sha256_hex(&bytes) == hash {
            return Some(bytes);
        }
        eprintln!(
            "warning: cached content {} does not match its hash; fetching it again",
            path.display()
        );
        let _ = std::fs::remove_file(&path);
        None
    }

    /// Keeps `bytes` under their hash, atomically (temporary file, fsync,
    /// rename).
    pub fn put(&self, hash: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self
            .path(hash)
            .with_context(|| format!("`{hash}` is not a sha256"))?;
        write_private_atomically(&path, bytes)
    }

    /// Attaches to `catalog` every content it fetches by hash that the
    /// cache holds; what is left in `catalog.to_fetch` must come from the
    /// server.
    pub fn fill(&self, catalog: &mut Catalog) {
        let wanted: Vec<(String, u64)> = catalog
            .to_fetch
            .iter()
            .map(|(hash, size)| (hash.clone(), *size))
            .collect();
        for (hash, size) in wanted {
            // `get` checked the sha256; a size that differs cannot have it.
            if let Some(bytes) = self.get(&hash).filter(|b| b.len() as u64 == size) {
                attach(catalog, &hash, bytes);
            }
        }
    }

    /// Removes every kept content that `catalog` does not use: the cache
    /// holds what the last good catalog needs, no more.
    pub fn keep_only(&self, catalog: &Catalog) -> anyhow::Result<()> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("Failed to list {}", self.dir.display()));
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let used = catalog.contents.contains_key(&name) || catalog.to_fetch.contains_key(&name);
            if !used {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_content_is_returned_only_while_it_matches_its_hash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ContentCache::new(dir.path());
        let bytes = b"large".to_vec();
        let hash = sha256_hex(&bytes);
        cache.put(&hash, &bytes).expect("put");
        assert_eq!(cache.get(&hash), Some(bytes));
        std::fs::write(dir.path().join("contents").join(&hash), b"altered").expect("tamper");
        assert_eq!(cache.get(&hash), None);
        assert!(!dir.path().join("contents").join(&hash).exists());
    }

    #[test]
    fn a_name_that_is_not_a_sha256_never_names_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ContentCache::new(dir.path());
        assert!(cache.put("../../etc/passwd", b"x").is_err());
        assert_eq!(cache.get("../../etc/passwd"), None);
    }

    #[test]
    fn contents_and_their_folder_left_wider_by_an_older_agent_are_made_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let contents = dir.path().join("contents");
        std::fs::create_dir(&contents).unwrap();
        let old = contents.join(sha256_hex(b"db_password=hunter2"));
        std::fs::write(&old, b"db_password=hunter2").unwrap();
        std::fs::set_permissions(&contents, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;

        let cache = ContentCache::new(dir.path());
        let new = b"keystore".to_vec();
        cache.put(&sha256_hex(&new), &new).unwrap();

        assert_eq!((mode(&contents), mode(&old)), (0o700, 0o600));
        assert_eq!(mode(&contents.join(sha256_hex(&new))), 0o600);
    }
}
