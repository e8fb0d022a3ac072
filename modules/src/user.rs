//! `user`: a system account with its id, primary and supplementary groups,
//! home and shell, managed with `useradd`, `usermod` and `userdel`.

use std::collections::BTreeSet;

use cms_roles::{Ensure, User};

use crate::account::{read_groups, read_passwd, shadow_tool};
use crate::{Change, Context, FileAttributes, Host, Provider, ProviderError};

pub struct UserProvider<'a>(pub &'a User);

impl Provider for UserProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let user = self.0;
        let current = read_passwd(cx.host)?
            .into_iter()
            .find(|e| e.name == user.name);
        let Some(current) = current else {
            return Ok(match user.ensure {
                Ensure::Present => vec![Change::new("ensure", "absent", "present")],
                Ensure::Absent => Vec::new(),
            });
        };
        if user.ensure == Ensure::Absent {
            return Ok(vec![Change::new("ensure", "present", "absent")]);
        }
        let groups = read_groups(cx.host)?;
        let mut changes = Vec::new();
        if let Some(uid) = user.uid
            && uid != current.uid
        {
            changes.push(Change::new("uid", current.uid.to_string(), uid.to_string()));
        }
        if let Some(primary) = &user.group {
            let current_group = groups
                .iter()
                .find(|g| g.gid == current.gid)
                .map_or(current.gid.to_string(), |g| g.name.clone());
            if &current_group != primary && primary != &current.gid.to_string() {
                changes.push(Change::new("group", current_group, primary.clone()));
            }
        }
        let member_of: BTreeSet<&str> = groups
            .iter()
            .filter(|g| g.members.contains(&user.name))
            .map(|g| g.name.as_str())
            .collect();
        let wanted: BTreeSet<&str> = user.groups.iter().map(String::as_str).collect();
        if member_of != wanted {
            changes.push(Change::new(
                "groups",
                member_of.into_iter().collect::<Vec<_>>().join(","),
                wanted.into_iter().collect::<Vec<_>>().join(","),
            ));
        }
        for (attribute, wanted, current) in [
            ("home", &user.home, &current.home),
            ("shell", &user.shell, &current.shell),
            ("comment", &user.comment, &current.comment),
        ] {
            if let Some(wanted) = wanted
                && wanted != current
            {
                changes.push(Change::new(attribute, current.clone(), wanted.clone()));
            }
        }
        if user.manage_home
            && let Some(home) = &user.home
            && !cx.host.is_directory(home)
        {
            changes.push(Change::new("home directory", "absent", home.clone()));
        }
        Ok(changes)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        let user = self.0;
        if let Some(change) = changes.iter().find(|c| c.attribute == "ensure") {
            return if change.to == "absent" {
                shadow_tool(cx.host, "userdel", vec![user.name.clone()])
            } else {
                shadow_tool(cx.host, "useradd", useradd_args(user))
            };
        }
        let mut args = Vec::new();
        for change in changes {
            match change.attribute.as_str() {
                "uid" => args.extend(["-u".to_string(), change.to.clone()]),
                "group" => args.extend(["-g".to_string(), change.to.clone()]),
                "groups" => args.extend(["-G".to_string(), change.to.clone()]),
                "home" => {
                    args.extend(["-d".to_string(), change.to.clone()]);
                    if user.manage_home {
                        args.push("-m".into());
                    }
                }
                "shell" => args.extend(["-s".to_string(), change.to.clone()]),
                "comment" => args.extend(["-c".to_string(), change.to.clone()]),
                _ => {}
            }
        }
        if !args.is_empty() {
            args.push(user.name.clone());
            shadow_tool(cx.host, "usermod", args)?;
        }
        if changes.iter().any(|c| c.attribute == "home directory")
            && let Some(home) = &user.home
        {
            create_home(cx.host, user, home)?;
        }
        Ok(())
    }
}

fn useradd_args(user: &User) -> Vec<String> {
    let mut args = Vec::new();
    if user.system {
        args.push("--system".into());
    }
    if let Some(uid) = user.uid {
        args.extend(["-u".into(), uid.to_string()]);
    }
    match &user.group {
        Some(group) => args.extend(["-g".into(), group.clone()]),
        // Debian's useradd makes a same-named group only when asked.
        None => args.push("-U".into()),
    }
    if !user.groups.is_empty() {
        args.extend(["-G".into(), user.groups.join(",")]);
    }
    if let Some(home) = &user.home {
        args.extend(["-d".into(), home.clone()]);
    }
    args.push(if user.manage_home {
        "-m".into()
    } else {
        "-M".into()
    });
    if let Some(shell) = &user.shell {
        args.extend(["-s".into(), shell.clone()]);
    }
    if let Some(comment) = &user.comment {
        args.extend(["-c".into(), comment.clone()]);
    }
    args.push(user.name.clone());
    args
}

/// A home directory for an existing account: owned by it, `0750`, like
/// `useradd -m` makes without the skeleton files.
fn create_home(host: &Host, user: &User, home: &str) -> Result<(), ProviderError> {
    let entry = read_passwd(host)?
        .into_iter()
        .find(|e| e.name == user.name)
        .ok_or_else(|| {
            ProviderError::Failed(format!(
                "Failed to find user {} after creating it",
                user.name
            ))
        })?;
    host.create_directory(
        home,
        FileAttributes {
            mode: Some(0o750),
            uid: Some(entry.uid),
            gid: Some(entry.gid),
        },
    )?;
    Ok(())
}
