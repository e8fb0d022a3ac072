//! What composite providers share: their changes labelled by the part
//! they belong to (`persisted: content`), and the files they generate
//! themselves (a sysctl's `/etc/sysctl.d` file, a user's
//! `authorized_keys`), managed by the `file` provider so that they are
//! written atomically, backed up and diffed like any declared file.

use cms_roles::{Ensure, File, Mode};

use crate::file::FileProvider;
use crate::host::fs::sha256_hex;
use crate::{Change, ContentStore, Context, Provider, ProviderError};

/// Prefixes a part's changes with its name.
pub(crate) fn labelled(label: &str, changes: Vec<Change>) -> Vec<Change> {
    changes
        .into_iter()
        .map(|mut change| {
            change.attribute = format!("{label}: {}", change.attribute);
            change
        })
        .collect()
}

/// The changes of one part, with the part's name taken off again.
pub(crate) fn part(changes: &[Change], label: &str) -> Vec<Change> {
    let prefix = format!("{label}: ");
    changes
        .iter()
        .filter_map(|change| {
            change
                .attribute
                .strip_prefix(&prefix)
                .map(|attribute| Change {
                    attribute: attribute.to_string(),
                    ..change.clone()
                })
        })
        .collect()
}

/// A file whose content a provider makes, present with that content or
/// absent.
pub(crate) struct GeneratedFile {
    pub(crate) file: File,
    content: Vec<u8>,
}

/// Who owns a generated file and its mode; `None` leaves them as they are
/// (a new file gets root and 0644).
#[derive(Default)]
pub(crate) struct Ownership {
    pub(crate) owner: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) mode: Option<u32>,
}

impl GeneratedFile {
    pub(crate) fn present(path: String, content: Vec<u8>, ownership: Ownership) -> GeneratedFile {
        GeneratedFile {
            file: File {
                path,
                ensure: Ensure::Present,
                content_sha256: Some(sha256_hex(&content)),
                owner: ownership.owner,
                group: ownership.group,
                mode: ownership.mode.map(Mode),
            },
            content,
        }
    }

    pub(crate) fn absent(path: String) -> GeneratedFile {
        GeneratedFile {
            file: File {
                path,
                ensure: Ensure::Absent,
                content_sha256: None,
                owner: None,
                group: None,
                mode: None,
            },
            content: Vec::new(),
        }
    }

    /// The file's changes, labelled `label`.
    pub(crate) fn check(
        &self,
        label: &str,
        cx: &Context<'_>,
    ) -> Result<Vec<Change>, ProviderError> {
        let changes = self.with_content(cx, |cx| FileProvider(&self.file).check(cx))?;
        Ok(labelled(label, changes))
    }

    /// Applies the changes labelled `label` among `changes`; returns
    /// whether there were any.
    pub(crate) fn apply(
        &self,
        label: &str,
        changes: &[Change],
        cx: &Context<'_>,
    ) -> Result<bool, ProviderError> {
        let own = part(changes, label);
        if own.is_empty() {
            return Ok(false);
        }
        self.with_content(cx, |cx| FileProvider(&self.file).apply(&own, cx))?;
        Ok(true)
    }

    /// Runs `action` with a context whose contents hold this file's.
    fn with_content<T>(
        &self,
        cx: &Context<'_>,
        action: impl FnOnce(&Context<'_>) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let contents = GeneratedContents {
            generated: vec![(
                self.file.content_sha256.clone().unwrap_or_default(),
                self.content.as_slice(),
            )],
            inner: cx.contents,
        };
        action(&Context {
            contents: &contents,
            ..*cx
        })
    }
}

/// The catalog's contents plus texts a provider generated, found by their
/// sha256 as the `file` provider asks for them.
pub(crate) struct GeneratedContents<'a> {
    generated: Vec<(String, &'a [u8])>,
    inner: &'a dyn ContentStore,
}

impl<'a> GeneratedContents<'a> {
    pub(crate) fn new(texts: &[&'a str], inner: &'a dyn ContentStore) -> GeneratedContents<'a> {
        GeneratedContents {
            generated: texts
                .iter()
                .map(|text| (sha256_hex(text.as_bytes()), text.as_bytes()))
                .collect(),
            inner,
        }
    }
}

impl ContentStore for GeneratedContents<'_> {
    fn get(&self, sha256: &str) -> Option<&[u8]> {
        match self.generated.iter().find(|(hash, _)| hash == sha256) {
            Some((_, bytes)) => Some(bytes),
            None => self.inner.get(sha256),
        }
    }
}
