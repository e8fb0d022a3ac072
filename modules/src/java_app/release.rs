//! The release of a `java_app`: its jar at `releases/<sha256>.jar`, from the
//! catalog's contents or downloaded and verified against the catalog's
//! sha256 before it is used, and the earlier releases kept for rollback.

use std::io::Write;
use std::time::{Duration, SystemTime};

use cms_roles::digest::{Sha256Hasher, is_sha256_hex};

use super::JavaAppProvider;
use crate::host::fs::{FileAttributes, FileKind};
use crate::{Change, Context, ProviderError};

/// A download may wait this long for the next bytes.
const DOWNLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The release files to remove: every `<sha256>.jar` but `current` and the
/// `keep` most recently made current of the others (newest first by
/// modification time, then by name).
pub fn releases_to_remove(
    releases: &[(String, SystemTime)],
    current: &str,
    keep: u32,
) -> Vec<String> {
    let mut others: Vec<&(String, SystemTime)> = releases
        .iter()
        .filter(|(name, _)| name != current && is_release_name(name))
        .collect();
    others.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    others
        .into_iter()
        .skip(keep as usize)
        .map(|(name, _)| name.clone())
        .collect()
}

fn is_release_name(name: &str) -> bool {
    name.strip_suffix(".jar").is_some_and(is_sha256_hex)
}

/// Writes through to a file while hashing.
struct Hashing<'a, W: Write> {
    inner: &'a mut W,
    hasher: Sha256Hasher,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl JavaAppProvider<'_> {
    /// The release part: is the verified jar at its release path?
    pub(super) fn check_release(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let path = self.release_path();
        let wanted = &self.0.artifact_sha256;
        let to = match &self.0.artifact_url {
            Some(url) => format!("{wanted} from {url}"),
            None => wanted.clone(),
        };
        match cx.host.status(&path)? {
            None => Ok(vec![Change::new("release", "absent", to)]),
            Some(status) if status.kind == FileKind::File => {
                let current = cx.host.file_sha256(&path)?;
                if &current == wanted {
                    Ok(Vec::new())
                } else {
                    Ok(vec![Change::new(
                        "release",
                        format!("damaged (sha256 {current})"),
                        to,
                    )])
                }
            }
            Some(status) => Err(ProviderError::Failed(format!(
                "Failed to manage release {path}: a {} is in the way",
                status.kind.describe()
            ))),
        }
    }

    /// Puts the verified jar at its release path, or fails changing nothing.
    pub(super) fn install_release(&self, cx: &Context<'_>) -> Result<(), ProviderError> {
        let app = self.0;
        let path = self.release_path();
        let attributes = FileAttributes {
            mode: Some(0o644),
            uid: None,
            gid: None,
        };
        let Some(url) = &app.artifact_url else {
            let bytes = cx
                .contents
                .get(&app.artifact_sha256)
                .ok_or_else(|| ProviderError::MissingContent(app.artifact_sha256.clone()))?;
            cx.host.write_file_atomically(&path, bytes, attributes)?;
            return Ok(());
        };
        // Into a temporary file next to the release; dropped (removed)
        // unless the bytes are the ones the catalog names.
        let mut file = cx.host.create_atomic_file(&path, attributes)?;
        let mut hashing = Hashing {
            inner: &mut file,
            hasher: Sha256Hasher::new(),
        };
        let status = cx.host.http_get(url, DOWNLOAD_IDLE_TIMEOUT, &mut hashing)?;
        if !(200..300).contains(&status) {
            return Err(ProviderError::Failed(format!(
                "Failed to download the artifact of {} from {url}: the server answered {status}; nothing was changed",
                app.name
            )));
        }
        let got = hashing.hasher.finish_hex();
        if got != app.artifact_sha256 {
            return Err(ProviderError::Failed(format!(
                "Failed to verify the artifact of {} from {url}: its sha256 is {got}, not the {} the catalog names; it was not used and nothing was changed",
                app.name, app.artifact_sha256
            )));
        }
        file.commit()?;
        Ok(())
    }

    pub(super) fn prune_releases(&self, cx: &Context<'_>) -> Result<(), ProviderError> {
        let mut releases = Vec::new();
        for entry in cx.host.list_directory(&self.releases_dir())? {
            if entry.status.kind != FileKind::File {
                continue;
            }
            let name = entry
                .path
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            releases.push((name, cx.host.modified(&entry.path)?));
        }
        for name in releases_to_remove(&releases, &self.release_name(), self.0.keep_releases) {
            cx.host
                .remove_file(&format!("{}/{name}", self.releases_dir()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_current_release_and_the_most_recently_current_others() {
        let at = |seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        let name = |c: char| format!("{}.jar", c.to_string().repeat(64));
        let releases = vec![
            (name('a'), at(10)),
            (name('b'), at(40)),
            (name('c'), at(30)),
            (name('d'), at(20)),
            (name('e'), at(50)),
            (".cms-tmp-1-2-x.jar".to_string(), at(1)),
            ("notes.txt".to_string(), at(1)),
        ];
        // `b` is current again after a rollback: `e`, newer, is not
        // current, yet kept as one of the two most recent others.
        assert_eq!(
            releases_to_remove(&releases, &name('b'), 2),
            vec![name('d'), name('a')]
        );
        assert_eq!(
            releases_to_remove(&releases, &name('b'), 10),
            Vec::<String>::new()
        );
        assert_eq!(releases_to_remove(&releases, &name('e'), 0).len(), 4);
    }
}
