//! What the `user` and `group` providers share: reading `/etc/passwd` and
//! `/etc/group` under the host's root, and running the shadow tools
//! (`useradd`, `usermod`, `userdel`, `groupadd`, `groupmod`, `groupdel`).
//!
//! The tools get `--root` when the host's root is not `/`, so the same code
//! manages an image being built.

use std::time::Duration;

use crate::{CommandSpec, Host, ProviderError};

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PasswdEntry {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) comment: String,
    pub(crate) home: String,
    pub(crate) shell: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupEntry {
    pub(crate) name: String,
    pub(crate) gid: u32,
    pub(crate) members: Vec<String>,
}

pub(crate) fn read_passwd(host: &Host) -> Result<Vec<PasswdEntry>, ProviderError> {
    let text = String::from_utf8_lossy(&host.read_file("/etc/passwd")?).into_owned();
    Ok(text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 7).then(|| PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().unwrap_or(u32::MAX),
                gid: f[3].parse().unwrap_or(u32::MAX),
                comment: f[4].to_string(),
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
        .collect())
}

pub(crate) fn read_groups(host: &Host) -> Result<Vec<GroupEntry>, ProviderError> {
    let text = String::from_utf8_lossy(&host.read_file("/etc/group")?).into_owned();
    Ok(text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4).then(|| GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().unwrap_or(u32::MAX),
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect())
}

pub(crate) fn shadow_tool(host: &Host, tool: &str, args: Vec<String>) -> Result<(), ProviderError> {
    let mut argv = vec![tool.to_string()];
    if host.root() != std::path::Path::new("/") {
        argv.push("--root".into());
        argv.push(host.root().display().to_string());
    }
    argv.extend(args);
    let spec = CommandSpec::new(argv).timeout(Duration::from_secs(120));
    let output = host.run(&spec)?;
    if output.success() {
        Ok(())
    } else {
        Err(ProviderError::Failed(format!(
            "`{}` failed:\n{}",
            spec.argv.join(" "),
            output.tail(10)
        )))
    }
}
