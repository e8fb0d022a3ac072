//! `java_truststore`: a PKCS#12 truststore holding exactly the catalog's
//! certificates, managed with the JRE's `keytool`.
//!
//! - `check` lists the store (`keytool -list -v -storetype PKCS12`) and
//!   compares each alias's SHA-256 fingerprint with the catalog's: a
//!   `certificate ALIAS` change for each one to import, replace or remove.
//!   A store the password does not open (or that is not PKCS#12) is
//!   rebuilt (`content` change). Owner, group and mode as a file's.
//! - `apply` works on a copy next to the store (`.cms-truststore-NAME`):
//!   deletes and imports there, then puts the result in place atomically
//!   with its owner, group and mode (the old store goes to the backup
//!   store first), so that a Java application never reads a half-made
//!   store.
//! - The password reaches keytool in its environment (`-storepass:env`),
//!   never on a command line `ps` shows, and is never in a change or an
//!   error.

use std::collections::BTreeMap;
use std::time::Duration;

use cms_roles::JavaTruststore;

use crate::file::{
    OwnershipAndMode, SENSITIVE_FILE_MODE, apply_metadata_changes, metadata_changes,
};
use crate::host::fs::{FileAttributes, FileKind, parent_path};
use crate::{
    Change, CommandOutput, CommandSpec, Context, HostError, Provider, ProviderError,
    require_parent_directory,
};

/// The environment variable keytool reads the password from.
const PASSWORD_VARIABLE: &str = "CMS_TRUSTSTORE_PASSWORD";

pub struct JavaTruststoreProvider<'a>(pub &'a JavaTruststore);

/// What the store holds now.
enum Current {
    Missing,
    /// Alias → SHA-256 fingerprint.
    Entries(BTreeMap<String, String>),
    /// The password does not open it, or it is not PKCS#12.
    Unreadable,
}

impl Provider for JavaTruststoreProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let store = self.0;
        let status = cx.host.status(&store.path)?;
        if let Some(status) = &status
            && status.kind != FileKind::File
        {
            return Err(ProviderError::Failed(format!(
                "Failed to manage truststore {}: a {} is in the way",
                store.path,
                status.kind.describe()
            )));
        }
        let mut changes = match self.current(cx, status.is_some())? {
            Current::Missing => vec![Change::new(
                "ensure",
                "absent",
                format!("present with {} certificates", store.certificates.len()),
            )],
            Current::Unreadable => vec![Change::new(
                "content",
                "not a PKCS#12 store the catalog's password opens",
                format!("rebuilt with {} certificates", store.certificates.len()),
            )],
            Current::Entries(entries) => self.certificate_changes(&entries),
        };
        if let Some(status) = status {
            changes.extend(metadata_changes(cx.host, &status, &self.metadata())?);
        }
        Ok(changes)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        let store = self.0;
        let changed = |attribute: &str| changes.iter().any(|c| c.attribute == attribute);
        let rebuild = changed("ensure")
            || changed("content")
            || changes
                .iter()
                .any(|c| c.attribute.starts_with("certificate "));
        if rebuild {
            return self.rebuild(cx);
        }
        apply_metadata_changes(cx.host, &store.path, self.metadata(), changes)
    }
}

impl JavaTruststoreProvider<'_> {
    fn metadata(&self) -> OwnershipAndMode<'_> {
        OwnershipAndMode {
            owner: self.0.owner.as_deref(),
            group: self.0.group.as_deref(),
            mode: self.0.mode.map(|mode| mode.0),
        }
    }

    /// One change per alias to import, replace or remove.
    fn certificate_changes(&self, entries: &BTreeMap<String, String>) -> Vec<Change> {
        let wanted = &self.0.certificates;
        let mut changes = Vec::new();
        for (alias, certificate) in wanted {
            match entries.get(alias) {
                Some(fingerprint) if *fingerprint == certificate.fingerprint => {}
                current => changes.push(Change::new(
                    format!("certificate {alias}"),
                    current.map_or("absent".to_string(), |f| format!("SHA256 {f}")),
                    format!("SHA256 {}", certificate.fingerprint),
                )),
            }
        }
        for (alias, fingerprint) in entries {
            if !wanted.contains_key(alias) {
                changes.push(Change::new(
                    format!("certificate {alias}"),
                    format!("SHA256 {fingerprint}"),
                    "absent",
                ));
            }
        }
        changes
    }

    fn current(&self, cx: &Context<'_>, exists: bool) -> Result<Current, ProviderError> {
        if !exists {
            return Ok(Current::Missing);
        }
        let output = self.keytool(cx, &self.0.path, &["-list", "-v"])?;
        if !output.success() {
            return Ok(Current::Unreadable);
        }
        Ok(Current::Entries(parse_listing(&output.stdout)))
    }

    /// Makes the store anew on a copy, then puts it in place.
    fn rebuild(&self, cx: &Context<'_>) -> Result<(), ProviderError> {
        let store = self.0;
        require_parent_directory(cx.host, &store.path)?;
        let work = self.work_path("p12");
        let pem = self.work_path("pem");
        for leftover in [&work, &pem] {
            if cx.host.status(leftover)?.is_some() {
                cx.host.remove_file(leftover)?;
            }
        }
        let result = self.rebuild_in(cx, &work, &pem);
        for leftover in [&work, &pem] {
            if cx.host.status(leftover)?.is_some() {
                cx.host.remove_file(leftover)?;
            }
        }
        result
    }

    fn rebuild_in(&self, cx: &Context<'_>, work: &str, pem: &str) -> Result<(), ProviderError> {
        let store = self.0;
        let private = FileAttributes {
            mode: Some(0o600),
            uid: None,
            gid: None,
        };
        let exists = cx.host.status(&store.path)?.is_some();
        let mut entries = match self.current(cx, exists)? {
            Current::Entries(entries) => {
                cx.host
                    .write_file_atomically(work, &cx.host.read_file(&store.path)?, private)?;
                entries
            }
            Current::Missing | Current::Unreadable => BTreeMap::new(),
        };
        for (alias, fingerprint) in &entries {
            let keep = store
                .certificates
                .get(alias)
                .is_some_and(|wanted| wanted.fingerprint == *fingerprint);
            if !keep {
                self.keytool_successfully(cx, work, &["-delete", "-alias", alias])?;
            }
        }
        entries.retain(|alias, fingerprint| {
            store
                .certificates
                .get(alias)
                .is_some_and(|wanted| wanted.fingerprint == *fingerprint)
        });
        for (alias, certificate) in &store.certificates {
            if entries.contains_key(alias) {
                continue;
            }
            let bytes = cx
                .contents
                .get(&certificate.pem_sha256)
                .ok_or_else(|| ProviderError::MissingContent(certificate.pem_sha256.clone()))?;
            cx.host.write_file_atomically(pem, bytes, private)?;
            let pem_path = cx.host.path(pem).display().to_string();
            self.keytool_successfully(
                cx,
                work,
                &[
                    "-importcert",
                    "-noprompt",
                    "-alias",
                    alias,
                    "-file",
                    &pem_path,
                ],
            )?;
        }
        let attributes = FileAttributes {
            mode: store
                .mode
                .map(|mode| mode.0)
                .or((!exists).then_some(if cx.sensitive {
                    SENSITIVE_FILE_MODE
                } else {
                    crate::host::fs::DEFAULT_FILE_MODE
                })),
            uid: store
                .owner
                .as_deref()
                .map(|n| cx.host.user_id(n))
                .transpose()?,
            gid: store
                .group
                .as_deref()
                .map(|n| cx.host.group_id(n))
                .transpose()?,
        };
        let content = cx.host.read_file(work)?;
        cx.backups.save_from_host(cx.host, &store.path)?;
        cx.host
            .write_file_atomically(&store.path, &content, attributes)?;
        Ok(())
    }

    /// `DIR/.cms-truststore-NAME.EXTENSION`, next to the store.
    fn work_path(&self, extension: &str) -> String {
        let path = &self.0.path;
        let name = path.rsplit('/').next().unwrap_or_default();
        let parent = parent_path(path).trim_end_matches('/');
        format!("{parent}/.cms-truststore-{name}.{extension}")
    }

    /// Runs keytool on the store at `path` (a catalog path), the password
    /// in its environment.
    fn keytool(
        &self,
        cx: &Context<'_>,
        path: &str,
        arguments: &[&str],
    ) -> Result<CommandOutput, ProviderError> {
        let keystore = cx.host.path(path).display().to_string();
        let mut argv = vec!["keytool"];
        argv.extend_from_slice(arguments);
        argv.extend([
            "-storetype",
            "PKCS12",
            "-keystore",
            &keystore,
            "-storepass:env",
            PASSWORD_VARIABLE,
        ]);
        let mut spec = CommandSpec::new(argv).timeout(Duration::from_secs(120));
        spec.environment
            .insert(PASSWORD_VARIABLE.into(), self.0.password.clone());
        // keytool's words in English, whatever the host's locale.
        spec.environment.insert("LC_ALL".into(), "C".into());
        match cx.host.run(&spec) {
            Ok(output) => Ok(output),
            Err(HostError::Spawn { source, .. }) => Err(ProviderError::Failed(format!(
                "Failed to run keytool for truststore {}: {source}; keytool comes with the JRE: declare the package (e.g. openjdk-17-jre-headless) and require it",
                self.0.path
            ))),
            Err(error) => Err(error.into()),
        }
    }

    fn keytool_successfully(
        &self,
        cx: &Context<'_>,
        path: &str,
        arguments: &[&str],
    ) -> Result<(), ProviderError> {
        let output = self.keytool(cx, path, arguments)?;
        if output.success() {
            return Ok(());
        }
        // The command line holds no password; keytool's message neither.
        Err(ProviderError::Failed(format!(
            "Failed to update truststore {}: `keytool {}` failed: {}",
            self.0.path,
            arguments.first().copied().unwrap_or_default(),
            output.tail(3)
        )))
    }
}

/// Alias → SHA-256 fingerprint, from `keytool -list -v`.
fn parse_listing(listing: &str) -> BTreeMap<String, String> {
    let mut entries = BTreeMap::new();
    let mut alias: Option<String> = None;
    for line in listing.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("Alias name:") {
            alias = Some(name.trim().to_string());
        } else if let Some(fingerprint) = line.strip_prefix("SHA256:")
            && let Some(name) = alias.take()
        {
            entries.insert(name, fingerprint.trim().to_string());
        }
    }
    entries
}
