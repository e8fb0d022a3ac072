//! `authorized_keys`: the keys in `~USER/.ssh/authorized_keys`.
//!
//! - The home is the user's in the passwd database (`/etc/passwd` under
//!   the host's root, as the `user` provider reads it). A user that does
//!   not exist yet (a `user` resource of the same run creates it) is a
//!   change; apply fails if it still does not exist then.
//! - `~/.ssh` is a directory owned by the user and their primary group,
//!   mode 0700 (part `directory`), and `authorized_keys` a file owned by
//!   them, mode 0600 (part `keys`), written atomically by the `file`
//!   provider, its old content backed up, its change diffed.
//! - `exclusive = true` (the default): the file holds exactly the listed
//!   keys, one per line, in order. `exclusive = false`: the lines already
//!   there stay, and the listed keys missing from them are appended (a key
//!   is known by its type and base64; its comment does not count).

use cms_roles::{AuthorizedKeys, Directory, Ensure, Mode, key_identity};

use crate::account::{PasswdEntry, read_passwd};
use crate::directory::DirectoryProvider;
use crate::host::fs::FileKind;
use crate::parts::{GeneratedFile, Ownership, labelled, part};
use crate::{Change, Context, Provider, ProviderError};

const DIRECTORY: &str = "directory";
const KEYS: &str = "keys";

pub struct AuthorizedKeysProvider<'a>(pub &'a AuthorizedKeys);

impl Provider for AuthorizedKeysProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let Some(account) = self.account(cx)? else {
            return Ok(vec![Change::new(
                "ensure",
                "absent",
                format!(
                    "{} keys (user {} is not on this host yet)",
                    self.0.keys.len(),
                    self.0.user
                ),
            )]);
        };
        let (directory, keys) = self.parts(&account, cx)?;
        let mut changes = labelled(DIRECTORY, DirectoryProvider(&directory).check(cx)?);
        if cx.host.is_directory(&directory.path) {
            changes.extend(keys.check(KEYS, cx)?);
        } else {
            // The file is made in the directory the same run makes.
            changes.push(Change::new(format!("{KEYS}: ensure"), "absent", "present"));
        }
        Ok(changes)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        let account = self.account(cx)?.ok_or_else(|| {
            ProviderError::Failed(format!(
                "Failed to write the authorized keys of {user}: there is no user {user} in /etc/passwd; declare it as a user resource and add require = [\"user:{user}\"]",
                user = self.0.user
            ))
        })?;
        let (directory, keys) = self.parts(&account, cx)?;
        // A user made by this run gets everything; otherwise each part
        // its changes. The file's are read again once its directory
        // exists (a new directory's file was only announced).
        let everything = changes.iter().any(|c| c.attribute == "ensure");
        if everything || !part(changes, DIRECTORY).is_empty() {
            let own = DirectoryProvider(&directory).check(cx)?;
            DirectoryProvider(&directory).apply(&own, cx)?;
        }
        if everything || !part(changes, KEYS).is_empty() {
            let own = keys.check(KEYS, cx)?;
            keys.apply(KEYS, &own, cx)?;
        }
        Ok(())
    }
}

impl AuthorizedKeysProvider<'_> {
    fn account(&self, cx: &Context<'_>) -> Result<Option<PasswdEntry>, ProviderError> {
        Ok(read_passwd(cx.host)?
            .into_iter()
            .find(|entry| entry.name == self.0.user))
    }

    /// `~/.ssh` and `~/.ssh/authorized_keys` as they must be.
    fn parts(
        &self,
        account: &PasswdEntry,
        cx: &Context<'_>,
    ) -> Result<(Directory, GeneratedFile), ProviderError> {
        let folder = format!("{}/.ssh", account.home.trim_end_matches('/'));
        let group = cx.host.group_name(account.gid);
        let directory = Directory {
            path: folder.clone(),
            ensure: Ensure::Present,
            owner: Some(account.name.clone()),
            group: Some(group.clone()),
            mode: Some(Mode(0o700)),
            recurse: false,
            purge: false,
        };
        let path = format!("{folder}/authorized_keys");
        let content = self.content(&path, cx)?;
        let keys = GeneratedFile::present(
            path,
            content.into_bytes(),
            Ownership {
                owner: Some(account.name.clone()),
                group: Some(group),
                mode: Some(0o600),
            },
        );
        Ok((directory, keys))
    }

    /// The file's wanted content: the keys, or with `exclusive = false`,
    /// the lines there now and the keys they lack.
    fn content(&self, path: &str, cx: &Context<'_>) -> Result<String, ProviderError> {
        let mut lines: Vec<String> = Vec::new();
        if !self.0.exclusive
            && cx
                .host
                .status(path)?
                .is_some_and(|status| status.kind == FileKind::File)
        {
            let text = String::from_utf8_lossy(&cx.host.read_file(path)?).into_owned();
            lines.extend(text.lines().map(str::to_string));
        }
        let present: Vec<_> = lines.iter().filter_map(|line| key_identity(line)).collect();
        for key in &self.0.keys {
            if !key_identity(key).is_some_and(|identity| present.contains(&identity)) {
                lines.push(key.trim().to_string());
            }
        }
        Ok(lines.iter().map(|line| format!("{line}\n")).collect())
    }
}
