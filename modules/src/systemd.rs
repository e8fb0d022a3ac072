//! What the providers that write systemd units share (`java_app`,
//! `systemd_timer`, `systemd_dropin`, `mount`, `limits`): a file whose
//! text the provider generates ([`GeneratedFile`], checked and written by
//! the `file` provider, atomically and with a backup), a composite's
//! labelled parts ([`labelled`], [`part`]), one `systemctl daemon-reload`
//! ([`daemon_reload`]) and `systemctl` itself ([`systemctl`]), the words
//! of a unit's `ExecStart=` ([`exec_word`]) and the unit name of a path
//! ([`escape_path`], as `systemd-escape --path`).

use std::time::Duration;

use cms_roles::{Ensure, File, Mode};

use crate::file::FileProvider;
use crate::host::fs::sha256_hex;
use crate::{Change, CommandSpec, Context, Provider, ProviderError};

/// Starting a unit can wait on its start-up; a broken one must not hang the
/// run.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `systemctl ARGS` on the host, with a timeout long enough for a unit
/// that starts slowly.
pub(crate) fn systemctl(
    cx: &Context<'_>,
    args: &[&str],
) -> Result<crate::CommandOutput, ProviderError> {
    let mut argv = vec!["systemctl"];
    argv.extend_from_slice(args);
    Ok(cx
        .host
        .run(&CommandSpec::new(argv).timeout(SYSTEMCTL_TIMEOUT))?)
}

/// `systemctl daemon-reload`, and the session told that it ran.
pub(crate) fn daemon_reload(cx: &Context<'_>) -> Result<(), ProviderError> {
    let output = systemctl(cx, &["daemon-reload"])?;
    if !output.success() {
        return Err(ProviderError::Failed(format!(
            "`systemctl daemon-reload` failed:\n{}",
            output.tail(10)
        )));
    }
    cx.session.daemon_reload_pending.set(false);
    Ok(())
}

/// `systemctl daemon-reload` when a unit file changed since the last one.
pub(crate) fn daemon_reload_if_pending(cx: &Context<'_>) -> Result<(), ProviderError> {
    if cx.session.daemon_reload_pending() {
        daemon_reload(cx)?;
    }
    Ok(())
}

/// A root-owned 0644 file whose text the provider generates (a unit, a
/// drop-in), or its absence.
pub(crate) struct GeneratedFile {
    file: File,
    text: String,
}

impl GeneratedFile {
    pub(crate) fn new(path: String, text: Option<String>) -> GeneratedFile {
        GeneratedFile {
            file: File {
                path,
                ensure: if text.is_some() {
                    Ensure::Present
                } else {
                    Ensure::Absent
                },
                content_sha256: text.as_deref().map(|text| sha256_hex(text.as_bytes())),
                owner: Some("root".into()),
                group: Some("root".into()),
                mode: Some(Mode(0o644)),
            },
            text: text.unwrap_or_default(),
        }
    }

    pub(crate) fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let contents = crate::parts::GeneratedContents::new(&[&self.text], cx.contents);
        FileProvider(&self.file).check(&Context {
            contents: &contents,
            ..*cx
        })
    }

    /// Writes (or removes) the file; a unit or drop-in changed makes
    /// daemon-reload pending.
    pub(crate) fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        if changes.is_empty() {
            return Ok(());
        }
        let contents = crate::parts::GeneratedContents::new(&[&self.text], cx.contents);
        FileProvider(&self.file).apply(
            changes,
            &Context {
                contents: &contents,
                ..*cx
            },
        )?;
        cx.session.file_changed(&self.file.path);
        Ok(())
    }

    /// Applies the changes as a file that is a resource of its own (a
    /// drop-in, a limits file): its folder (`UNIT.d`) created when missing,
    /// as it is the kind's own (the agent never creates other parents),
    /// and systemd reloaded when it is a unit's.
    pub(crate) fn apply_alone(
        &self,
        changes: &[Change],
        cx: &Context<'_>,
    ) -> Result<(), ProviderError> {
        if self.file.ensure == Ensure::Present {
            self.create_parent(cx)?;
        }
        self.apply(changes, cx)?;
        daemon_reload_if_pending(cx)
    }

    fn create_parent(&self, cx: &Context<'_>) -> Result<(), ProviderError> {
        let parent = crate::host::fs::parent_path(&self.file.path);
        if cx.host.status(parent)?.is_none() {
            cx.host.create_directory(
                parent,
                crate::FileAttributes {
                    mode: Some(0o755),
                    uid: None,
                    gid: None,
                },
            )?;
        }
        Ok(())
    }
}

/// One word of `ExecStart=`: quoted when it holds anything but plain
/// characters; `%` (specifiers) and `$` (variables) are escaped always.
pub(crate) fn exec_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=+,@%$".contains(c));
    if plain {
        word.replace('%', "%%").replace('$', "$$")
    } else {
        format!("\"{}\"", escape_quoted(word, true))
    }
}

/// The inside of a double-quoted systemd value.
pub(crate) fn escape_quoted(text: &str, dollar: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' if dollar => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// A generated file that is a resource of its own (a drop-in, a limits
/// file) is its own provider.
impl Provider for GeneratedFile {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        GeneratedFile::check(self, cx)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        self.apply_alone(changes, cx)
    }
}

/// The unit name of a path, as `systemd-escape --path` makes it: `/` is
/// `-`, the leading and trailing `/` dropped; every byte but ASCII letters,
/// digits, `:`, `_` and `.` (and a `.` in front) is `\xNN`.
pub fn escape_path(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::with_capacity(trimmed.len());
    for (index, byte) in trimmed.bytes().enumerate() {
        match byte {
            b'/' => out.push('-'),
            b'.' if index == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => {
                out.push(b as char)
            }
            b => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_escaped_as_systemd_escape_path_does() {
        for (path, unit) in [
            ("/", "-"),
            ("/mnt/data", "mnt-data"),
            ("/mnt/my-data", "mnt-my\\x2ddata"),
            ("/srv/a b", "srv-a\\x20b"),
            ("/.hidden/x", "\\x2ehidden-x"),
            ("/srv/v1.2/x_y:z", "srv-v1.2-x_y:z"),
            ("/mnt/ü", "mnt-\\xc3\\xbc"),
            ("/mnt/back\\slash", "mnt-back\\x5cslash"),
        ] {
            assert_eq!(escape_path(path), unit, "{path}");
        }
    }
}
