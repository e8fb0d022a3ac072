//! The file-editing kinds (`line`, `ini`, `properties`, `json`, `yaml`):
//! one provider, [`EditProvider`], and one text editor per format.
//!
//! - A format's editor is a pure function from the file's text and the
//!   resource's edits to the new text and one [`Change`] per edit that
//!   changed something (`key server.port: 8080 -> 9090`); everything it is
//!   not told to change stays byte for byte. It refuses, with the line,
//!   what it cannot read or edit safely ([`FormatError`]).
//! - `check` reads the file (UTF-8, at most [`MAX_EDITED_BYTES`]), runs the
//!   editor and, when the text changes, lists the edits with the file's
//!   unified diff on the last one (none for a sensitive resource, whose
//!   values are withheld here already). Owner, group and mode are compared
//!   when the resource sets them.
//! - `apply` runs the editor again on the file as it is then, saves the old
//!   content to the backup store and writes the new one atomically, keeping
//!   the file's owner, group and mode unless the resource sets them.
//! - A missing file is an error that says what to do (`require` the
//!   package that ships it, or `create = true`); with `create` it is
//!   created (mode 0644, 0600 for a sensitive resource, unless `mode` says)
//!   and edited from empty. A symlink at the path is never followed.

use cms_roles::EditedFile;

use crate::file::{
    OwnershipAndMode, apply_ownership_and_mode, content_diff, metadata_changes,
    require_parent_directory, wanted_ownership,
};
use crate::host::fs::{FileAttributes, FileKind, sha256_hex};
use crate::{Change, Context, Provider, ProviderError, SENSITIVE};

pub mod ini;
pub mod json;
pub mod line;
pub mod properties;
pub mod text;
pub mod yaml;

/// The largest file an editing kind reads into memory: configuration
/// files are small, and a larger file is more likely a mistake of path.
pub const MAX_EDITED_BYTES: u64 = 16 * 1024 * 1024;

/// The new text of a file and what changed in it.
#[derive(Debug, Default, PartialEq)]
pub struct Edited {
    pub text: String,
    pub changes: Vec<Change>,
}

/// Why a file cannot be edited as it is: the line (1-based) when there is
/// one, and what is wrong and what to do. It never quotes the file's
/// content nor a value, which may hold a secret: a sensitive resource's
/// report shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    pub line: Option<usize>,
    pub message: String,
}

impl FormatError {
    pub fn at(line: usize, message: impl Into<String>) -> FormatError {
        FormatError {
            line: Some(line),
            message: message.into(),
        }
    }

    pub fn whole(message: impl Into<String>) -> FormatError {
        FormatError {
            line: None,
            message: message.into(),
        }
    }
}

/// A format's editor.
pub type EditFn<E> = fn(&str, &[E]) -> Result<Edited, FormatError>;

/// The provider of every editing kind: the file's part is here, the
/// format's in `edit`.
pub struct EditProvider<'a, E> {
    pub file: &'a EditedFile<E>,
    /// The kind's name, for messages.
    pub kind: &'static str,
    pub edit: EditFn<E>,
}

/// What `check` found and `apply` acts on.
struct Plan {
    /// Whether the file exists.
    exists: bool,
    before: String,
    after: String,
    changes: Vec<Change>,
}

impl<'a, E> EditProvider<'a, E> {
    pub fn new(file: &'a EditedFile<E>, kind: &'static str, edit: EditFn<E>) -> Self {
        EditProvider { file, kind, edit }
    }

    fn plan(&self, cx: &Context<'_>) -> Result<Plan, ProviderError> {
        let file = self.file;
        let path = &file.path;
        let status = cx.host.status(path)?;
        let (exists, before) = match status {
            None if file.create => (false, String::new()),
            None => {
                return Err(value_free_error(format!(
                    "Failed to edit {path}: the file does not exist; if a package installs it, add that package to `require` (`require = [\"package:NAME\"]`) so it is installed first, or set `create = true` to create it"
                )));
            }
            Some(status) => match status.kind {
                FileKind::File if status.size > MAX_EDITED_BYTES => {
                    return Err(value_free_error(format!(
                        "Failed to edit {path}: it is {} bytes, more than the {} a {} resource edits; manage it with a `file` resource instead",
                        status.size, MAX_EDITED_BYTES, self.kind
                    )));
                }
                FileKind::File => {
                    let bytes = cx.host.read_file(path)?;
                    let text = String::from_utf8(bytes).map_err(|_| {
                        value_free_error(format!(
                            "Failed to edit {path}: it is not UTF-8 text; a {} resource edits text files only",
                            self.kind
                        ))
                    })?;
                    (true, text)
                }
                FileKind::Symlink => {
                    return Err(value_free_error(format!(
                        "Failed to edit {path}: it is a symlink to {}; an edit never follows a link: edit the path it points to",
                        cx.host.read_symlink(path)?
                    )));
                }
                kind => {
                    return Err(value_free_error(format!(
                        "Failed to edit {path}: a {} is there, not a file",
                        kind.describe()
                    )));
                }
            },
        };
        let edited = (self.edit)(&before, &file.edits).map_err(|error| {
            let message = match error.line {
                Some(line) => format!("Failed to edit {path}: line {line}: {}", error.message),
                None => format!("Failed to edit {path}: {}", error.message),
            };
            value_free_error(message)
        })?;
        let mut changes = Vec::new();
        if !exists {
            changes.push(Change::new("ensure", "absent", "present"));
        }
        if edited.text != before {
            changes.extend(edited.changes);
            if cx.sensitive {
                // The engine withholds values of most attributes; a key
                // named like one it shows (`mode`) is withheld here.
                for change in changes.iter_mut().filter(|c| c.attribute != "ensure") {
                    change.from = SENSITIVE.to_string();
                    change.to = SENSITIVE.to_string();
                }
            } else if let Some(last) = changes.last_mut() {
                let diff = content_diff(
                    path,
                    Some(before.as_bytes()),
                    &sha256_hex(before.as_bytes()),
                    edited.text.as_bytes(),
                    &sha256_hex(edited.text.as_bytes()),
                );
                last.diff = Some(diff);
            }
        }
        if exists {
            let status = cx.host.status(path)?.expect("the file was just read");
            changes.extend(metadata_changes(
                cx.host,
                &status,
                &OwnershipAndMode {
                    owner: file.owner.as_deref(),
                    group: file.group.as_deref(),
                    mode: file.mode.map(|mode| mode.0),
                },
            )?);
        }
        Ok(Plan {
            exists,
            before,
            after: edited.text,
            changes,
        })
    }

    fn wanted_attributes(&self, cx: &Context<'_>) -> Result<FileAttributes, ProviderError> {
        Ok(FileAttributes {
            mode: self.file.mode.map(|mode| mode.0),
            ..wanted_ownership(
                cx.host,
                self.file.owner.as_deref(),
                self.file.group.as_deref(),
            )?
        })
    }
}

impl<E> Provider for EditProvider<'_, E> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        Ok(self.plan(cx)?.changes)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        let path = &self.file.path;
        // The file as it is now: what check saw, unless something changed
        // it since.
        let plan = self.plan(cx)?;
        let attributes = self.wanted_attributes(cx)?;
        if !plan.exists {
            require_parent_directory(cx.host, path)?;
            let default_mode = if cx.sensitive {
                crate::file::SENSITIVE_FILE_MODE
            } else {
                crate::host::fs::DEFAULT_FILE_MODE
            };
            let attributes = FileAttributes {
                mode: Some(attributes.mode.unwrap_or(default_mode)),
                ..attributes
            };
            cx.host
                .write_file_atomically(path, plan.after.as_bytes(), attributes)?;
            return Ok(());
        }
        if plan.after != plan.before {
            cx.backups.save_from_host(cx.host, path)?;
            cx.host
                .write_file_atomically(path, plan.after.as_bytes(), attributes)?;
            return Ok(());
        }
        let changed = |attribute: &str| changes.iter().any(|c| c.attribute == attribute);
        apply_ownership_and_mode(
            cx.host,
            path,
            OwnershipAndMode {
                owner: self.file.owner.as_deref().filter(|_| changed("owner")),
                group: self.file.group.as_deref().filter(|_| changed("group")),
                mode: self
                    .file
                    .mode
                    .map(|mode| mode.0)
                    .filter(|_| changed("mode")),
            },
        )
    }
}

/// An error of this module: its messages name paths, lines and keys (which
/// no secret can be rendered into), never a value or the file's content,
/// so a sensitive resource's report shows them whole.
fn value_free_error(message: String) -> ProviderError {
    ProviderError::FailedWithDetails {
        full: message.clone(),
        safe: message,
    }
}

/// `key server.port`: the attribute of a key's change.
pub(crate) fn key_attribute(dotted: &str) -> String {
    format!("key {dotted}")
}

/// A key's change: from its old value (or `absent`) to its new one.
pub(crate) fn key_change(dotted: &str, from: Option<&str>, to: Option<&str>) -> Change {
    Change::new(
        key_attribute(dotted),
        from.unwrap_or("absent"),
        to.unwrap_or("absent"),
    )
}
