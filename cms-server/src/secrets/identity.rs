//! The server's age identity (X25519): made on first start in
//! `<data>/secrets/identity.txt`, owner-only (the file 0600, its folder
//! 0700), never rewritten, and kept out of the store, so a backup of the
//! store does not carry it. The file has the layout of `age-keygen`'s, so
//! the `age` tool reads it too. Also the team's break-glass identity
//! (`cms-server secrets new-identity`), in the same layout.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret as _;
use anyhow::{Context as _, bail};

/// The folder of the identity in the data directory.
pub fn secrets_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets")
}

/// The server's identity file in the data directory.
pub fn identity_path(data_dir: &Path) -> PathBuf {
    secrets_dir(data_dir).join("identity.txt")
}

/// The server's identity: read from the data directory, or made there
/// (owner-only) when there is none yet. An existing file is never
/// rewritten; one that does not hold an identity is an error.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<age::x25519::Identity> {
    use std::os::unix::fs::DirBuilderExt as _;
    let path = identity_path(data_dir);
    if let Ok(metadata) = std::fs::metadata(&path) {
        use std::os::unix::fs::PermissionsExt as _;
        if metadata.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the secrets identity is readable by others than its owner: chmod 600 it");
        }
        return read_identity_file(&path);
    }
    let dir = secrets_dir(data_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("Failed to create {}", dir.display()))?;
    let identity = age::x25519::Identity::generate();
    write_new_identity(&path, &identity)?;
    tracing::info!(path = %path.display(), recipient = %identity.to_public(), "made the server's secrets identity");
    Ok(identity)
}

/// Writes `identity` to a new file `path`, owner-only; an existing file is
/// left alone and is an error. The file is written under a temporary name
/// and linked into place, so it is never seen half-written.
pub fn write_new_identity(path: &Path, identity: &age::x25519::Identity) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let text = format!(
        "# the secrets identity of a cms server: keep it owner-only, never in git\n# public key: {}\n{}\n",
        identity.to_public(),
        identity.to_string().expose_secret()
    );
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file name", path.display()))?
        .to_string_lossy()
        .to_string();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("Failed to write {}", temporary.display()))?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::hard_link(&temporary, path));
    let _ = std::fs::remove_file(&temporary);
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            bail!("{} exists already: it is never overwritten", path.display())
        }
        Err(error) => {
            return Err(error).with_context(|| format!("Failed to write {}", path.display()));
        }
    }
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Reads an identity file: the first `AGE-SECRET-KEY-1…` line (comments
/// and blank lines are skipped).
pub fn read_identity_file(path: &Path) -> anyhow::Result<age::x25519::Identity> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("Failed to read the identity {}", path.display()))?;
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        return line.parse::<age::x25519::Identity>().map_err(|error| {
            anyhow::anyhow!(
                "{}:{}: not an age X25519 identity (AGE-SECRET-KEY-1…): {error}",
                path.display(),
                index + 1
            )
        });
    }
    bail!(
        "{}: holds no age identity (AGE-SECRET-KEY-1…)",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_identity_is_made_once_owner_only_and_never_rewritten() {
        let data = tempfile::tempdir().unwrap();
        let first = load_or_create(data.path()).unwrap();
        let path = identity_path(data.path());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&secrets_dir(data.path())), 0o700);
        let bytes = std::fs::read(&path).unwrap();
        let again = load_or_create(data.path()).unwrap();
        assert_eq!(again.to_public().to_string(), first.to_public().to_string());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the file was rewritten"
        );
        // The store never holds it: it is a file of its own.
        assert!(!data.path().join("db").exists());
    }

    #[test]
    fn a_new_identity_never_overwrites_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("break-glass.txt");
        let identity = age::x25519::Identity::generate();
        write_new_identity(&path, &identity).unwrap();
        assert_eq!(mode(&path), 0o600);
        let before = std::fs::read(&path).unwrap();
        let error = write_new_identity(&path, &age::x25519::Identity::generate()).unwrap_err();
        assert!(error.to_string().contains("never overwritten"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        assert_eq!(
            read_identity_file(&path).unwrap().to_public().to_string(),
            identity.to_public().to_string()
        );
    }

    #[test]
    fn a_file_without_an_identity_is_an_error_naming_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.txt");
        std::fs::write(&path, "# comment\n\nnot-a-key\n").unwrap();
        let Err(error) = read_identity_file(&path) else {
            panic!("read an identity from a file without one");
        };
        let error = error.to_string();
        assert!(error.contains("identity.txt:3:"), "{error}");
    }
}
