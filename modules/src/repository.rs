//! `repository`: a package source and its signing key, so that instances
//! can be pointed at an internal package repository.
//!
//! apt: `/etc/apt/sources.list.d/<name>.list` with a `signed-by` key in
//! `/etc/apt/keyrings/<name>.asc` (ASCII-armored) or `.gpg` (binary).
//! yum/dnf: `/etc/yum.repos.d/<name>.repo` with its key in
//! `/etc/pki/rpm-gpg/RPM-GPG-KEY-<name>`. Files are written atomically; any
//! change marks the package index stale, so it is refreshed once before the
//! next package is installed.

use cms_roles::{Ensure, PackageRepository, RepositoryFormat};

use crate::{Change, Context, FileAttributes, Provider, ProviderError};

pub struct RepositoryProvider<'a>(pub &'a PackageRepository);

/// The files a repository consists of: path and content (`None` for a file
/// that must not exist).
type DesiredFiles = Vec<(String, Option<Vec<u8>>)>;

impl RepositoryProvider<'_> {
    fn key_bytes<'c>(&self, cx: &'c Context<'_>) -> Result<Option<&'c [u8]>, ProviderError> {
        match &self.0.key_sha256 {
            Some(hash) => cx
                .contents
                .get(hash)
                .map(Some)
                .ok_or_else(|| ProviderError::MissingContent(hash.to_string())),
            None => Ok(None),
        }
    }

    fn desired_files(&self, cx: &Context<'_>) -> Result<DesiredFiles, ProviderError> {
        let repository = self.0;
        let name = &repository.name;
        let present = repository.ensure == Ensure::Present;
        let key = self.key_bytes(cx)?;
        let mut files = Vec::new();
        match repository.format {
            RepositoryFormat::Apt => {
                let armored = key.is_some_and(|k| k.starts_with(b"-----BEGIN PGP"));
                let (key_path, other_key_path) = if armored {
                    (
                        format!("/etc/apt/keyrings/{name}.asc"),
                        format!("/etc/apt/keyrings/{name}.gpg"),
                    )
                } else {
                    (
                        format!("/etc/apt/keyrings/{name}.gpg"),
                        format!("/etc/apt/keyrings/{name}.asc"),
                    )
                };
                let mut options = Vec::new();
                if key.is_some() {
                    options.push(format!("signed-by={key_path}"));
                }
                if repository.trusted {
                    options.push("trusted=yes".to_string());
                }
                let options = if options.is_empty() {
                    String::new()
                } else {
                    format!("[{}] ", options.join(" "))
                };
                let suite = repository.suite.clone().unwrap_or_default();
                let mut line = format!("deb {options}{} {suite}", repository.uri);
                for component in &repository.components {
                    line.push(' ');
                    line.push_str(component);
                }
                let list = format!(
                    "# Managed by cms.\n{}{line}\n",
                    if repository.enabled {
                        ""
                    } else {
                        "# disabled: "
                    }
                );
                files.push((
                    format!("/etc/apt/sources.list.d/{name}.list"),
                    present.then(|| list.into_bytes()),
                ));
                files.push((key_path, key.filter(|_| present).map(<[u8]>::to_vec)));
                files.push((other_key_path, None));
            }
            RepositoryFormat::Yum => {
                let key_path = format!("/etc/pki/rpm-gpg/RPM-GPG-KEY-{name}");
                let mut text = format!(
                    "# Managed by cms.\n[{name}]\nname={name}\nbaseurl={}\nenabled={}\ngpgcheck={}\n",
                    repository.uri,
                    u8::from(repository.enabled),
                    u8::from(!repository.trusted)
                );
                if key.is_some() {
                    text.push_str(&format!("gpgkey=file://{key_path}\n"));
                }
                files.push((
                    format!("/etc/yum.repos.d/{name}.repo"),
                    present.then(|| text.into_bytes()),
                ));
                files.push((key_path, key.filter(|_| present).map(<[u8]>::to_vec)));
            }
        }
        Ok(files)
    }
}

impl Provider for RepositoryProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let mut changes = Vec::new();
        for (path, wanted) in self.desired_files(cx)? {
            let exists = cx.host.status(&path)?.is_some();
            match wanted {
                Some(bytes) => {
                    let wanted_hash = crate::host::fs::sha256_hex(&bytes);
                    if !exists {
                        changes.push(Change::new(path, "absent", format!("sha256:{wanted_hash}")));
                    } else {
                        let current = cx.host.file_sha256(&path)?;
                        if current != wanted_hash {
                            changes.push(Change::new(
                                path,
                                format!("sha256:{current}"),
                                format!("sha256:{wanted_hash}"),
                            ));
                        }
                    }
                }
                None if exists => changes.push(Change::new(path, "present", "absent")),
                None => {}
            }
        }
        Ok(changes)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        let desired = self.desired_files(cx)?;
        for change in changes {
            let Some((path, wanted)) = desired.iter().find(|(path, _)| *path == change.attribute)
            else {
                continue;
            };
            match wanted {
                Some(bytes) => {
                    let parent = crate::host::fs::parent_path(path);
                    if !cx.host.is_directory(parent) {
                        // The keyring folders are the distribution's
                        // convention, not the role's; create them.
                        cx.host.create_directory(
                            parent,
                            FileAttributes {
                                mode: Some(0o755),
                                uid: Some(0),
                                gid: Some(0),
                            },
                        )?;
                    }
                    cx.host.write_file_atomically(
                        path,
                        bytes,
                        FileAttributes {
                            mode: Some(0o644),
                            uid: None,
                            gid: None,
                        },
                    )?;
                }
                None => cx.host.remove_file(path)?,
            }
        }
        if !changes.is_empty() {
            cx.session.index_stale.set(true);
        }
        Ok(())
    }
}
