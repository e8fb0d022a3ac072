//! `mount`: a mount unit `/etc/systemd/system/<escaped path>.mount`
//! ([`escape_path`], a [`GeneratedFile`]), the file system mounted now
//! (as `/proc/self/mountinfo` shows it) and at boot (the unit enabled).
//!
//! - Not mounted: `systemctl start`. Mounted from another device or type:
//!   `systemctl restart`. The unit's options changed, or a VFS flag the
//!   options ask for (`ro`, `noexec`, `nosuid`, `nodev`, `noatime`, …) is
//!   not in effect: `mount -o remount,OPTIONS PATH` (what the unit's
//!   reload does). File-system-specific options (`size=`, `rsize=`) are compared
//!   through the unit only: the kernel shows them in its own words.
//! - Absent: unmounted (`systemctl stop`), disabled, the unit removed,
//!   systemd reloaded.

use cms_roles::{Mount, MountEnsure, NETWORK_FSTYPES, Service, UNIT_DIRECTORY};

use crate::parts::{labelled, part};
use crate::service::ServiceProvider;
use crate::systemd::{GeneratedFile, daemon_reload_if_pending, escape_path};
use crate::{Change, CommandSpec, Context, Provider, ProviderError};

/// The text of the mount unit.
pub fn mount_unit_text(mount: &Mount) -> String {
    let fstype = mount.fstype.as_deref().unwrap_or("auto");
    let network = NETWORK_FSTYPES.contains(&fstype);
    let mut text = format!(
        "# Written by cms for mount {path}; local changes are overwritten.\n\
         [Unit]\n\
         Description=Mount {path} (managed by cms)\n",
        path = mount.path.replace('%', "%%"),
    );
    if network {
        text.push_str("Wants=network-online.target\nAfter=network-online.target\n");
    }
    text.push_str(&format!(
        "\n[Mount]\nWhat={}\nWhere={}\nType={fstype}\n",
        mount
            .device
            .as_deref()
            .unwrap_or_default()
            .replace('%', "%%"),
        mount.path.replace('%', "%%"),
    ));
    if let Some(options) = &mount.options {
        text.push_str(&format!("Options={}\n", options.replace('%', "%%")));
    }
    text.push_str(&format!(
        "\n[Install]\nWantedBy={}\n",
        if network {
            "remote-fs.target"
        } else {
            "local-fs.target"
        }
    ));
    text
}

/// A file system as `/proc/self/mountinfo` shows it mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveMount {
    pub source: String,
    pub fstype: String,
    /// The mount's own options (`rw,nosuid,noatime`).
    pub mount_options: Vec<String>,
}

/// What is mounted at `path`, the topmost mount when several are stacked.
pub fn live_mount(mountinfo: &str, path: &str) -> Option<LiveMount> {
    mountinfo.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|field| *field == "-")?;
        let mount_point = unescape_mountinfo_field(fields.get(4)?);
        (mount_point == path).then(|| LiveMount {
            source: unescape_mountinfo_field(fields.get(separator + 2).unwrap_or(&"")),
            fstype: fields.get(separator + 1).unwrap_or(&"").to_string(),
            mount_options: fields
                .get(5)
                .unwrap_or(&"")
                .split(',')
                .map(str::to_string)
                .collect(),
        })
    })
}

/// A field of `/proc/self/mountinfo` as it is: the kernel writes space,
/// tab, newline and backslash as `\NNN` octal.
pub fn unescape_mountinfo_field(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
        });
        match (bytes[index], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                index += 4;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The VFS flags among `options` that are not in effect on `live`: each
/// flag and the one that undoes it, as the kernel lists them.
pub fn flags_not_in_effect(options: &str, live: &LiveMount) -> Vec<String> {
    const OPPOSITES: &[(&str, &str)] = &[
        ("ro", "rw"),
        ("rw", "ro"),
        ("noexec", "exec"),
        ("nosuid", "suid"),
        ("nodev", "dev"),
        ("noatime", "relatime"),
        ("relatime", "noatime"),
        ("nodiratime", ""),
    ];
    let has = |flag: &str| live.mount_options.iter().any(|option| option == flag);
    options
        .split(',')
        .filter(|option| {
            match OPPOSITES.iter().find(|(flag, _)| flag == option) {
                Some((flag, _)) => !has(flag),
                // `exec`, `suid`, `dev`: in effect when the `no` form is
                // not listed.
                None => ["exec", "suid", "dev"].contains(option) && has(&format!("no{option}")),
            }
        })
        .map(str::to_string)
        .collect()
}

/// Whether the live source can be compared with the declared device:
/// `UUID=`, `LABEL=` and `/dev/disk/by-…` links name a device the kernel
/// shows by its own name.
fn comparable_device(device: &str) -> bool {
    !device.contains('=') && !device.starts_with("/dev/disk/")
}

pub struct MountProvider<'a>(pub &'a Mount);

impl MountProvider<'_> {
    fn unit_name(&self) -> String {
        format!("{}.mount", escape_path(&self.0.path))
    }

    fn file(&self) -> GeneratedFile {
        GeneratedFile::new(
            format!("{UNIT_DIRECTORY}/{}", self.unit_name()),
            (self.0.ensure == MountEnsure::Mounted).then(|| mount_unit_text(self.0)),
        )
    }

    /// The unit as a service resource that only manages `enabled`.
    fn unit(&self) -> Service {
        Service {
            name: self.unit_name(),
            ensure: None,
            enable: Some(self.0.ensure == MountEnsure::Mounted),
            drain: None,
        }
    }

    fn live(&self, cx: &Context<'_>) -> Result<Option<LiveMount>, ProviderError> {
        let output = cx
            .host
            .run(&CommandSpec::new(["cat", "/proc/self/mountinfo"]))?;
        if !output.success() {
            return Err(ProviderError::Failed(format!(
                "Failed to read /proc/self/mountinfo: {}",
                output.tail(3)
            )));
        }
        Ok(live_mount(&output.stdout, &self.0.path))
    }

    /// Remounts with the declared options, the command a mount unit's
    /// reload runs. Run directly: `systemctl reload` of the unit failed
    /// once in a testbed run right after a remount by hand (the drift this
    /// repairs; cause not found), and the direct command did not. systemd
    /// reads the result from mountinfo.
    fn remount(&self, cx: &Context<'_>) -> Result<(), ProviderError> {
        let options = match &self.0.options {
            Some(options) => format!("remount,{options}"),
            None => "remount".to_string(),
        };
        let output = cx.host.run(&CommandSpec::new([
            "mount",
            "-o",
            options.as_str(),
            self.0.path.as_str(),
        ]))?;
        if output.success() {
            return Ok(());
        }
        Err(ProviderError::Failed(format!(
            "`mount -o {options} {}` failed:\n{}",
            self.0.path,
            output.tail(10)
        )))
    }

    fn systemctl(&self, cx: &Context<'_>, verb: &str) -> Result<(), ProviderError> {
        let unit = Service {
            name: self.unit_name(),
            ensure: None,
            enable: None,
            drain: None,
        };
        ServiceProvider(&unit).act(cx, verb)
    }
}

impl Provider for MountProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let mount = self.0;
        let mut changes = labelled("unit", self.file().check(cx)?);
        let live = self.live(cx)?;
        match (mount.ensure, &live) {
            (MountEnsure::Absent, Some(_)) => {
                changes.push(Change::new("state", "mounted", "unmounted"))
            }
            (MountEnsure::Absent, None) => {}
            (MountEnsure::Mounted, None) => {
                changes.push(Change::new("state", "unmounted", "mounted"))
            }
            (MountEnsure::Mounted, Some(live)) => {
                let device = mount.device.as_deref().unwrap_or_default();
                let fstype = mount.fstype.as_deref().unwrap_or_default();
                if live.fstype != fstype || (comparable_device(device) && live.source != device) {
                    changes.push(Change::new(
                        "device",
                        format!("{} ({})", live.source, live.fstype),
                        format!("{device} ({fstype})"),
                    ));
                } else {
                    let missing =
                        flags_not_in_effect(mount.options.as_deref().unwrap_or_default(), live);
                    if !missing.is_empty() {
                        changes.push(Change::new(
                            "options",
                            live.mount_options.join(","),
                            format!("with {}", missing.join(",")),
                        ));
                    }
                }
            }
        }
        changes.extend(ServiceProvider(&self.unit()).check(cx)?);
        Ok(changes)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        let changed = |attribute: &str| changes.iter().any(|c| c.attribute == attribute);
        let enabled: Vec<Change> = changes
            .iter()
            .filter(|c| c.attribute == "enabled")
            .cloned()
            .collect();
        let unit_changes = part(changes, "unit");
        if self.0.ensure == MountEnsure::Absent {
            if changed("state") {
                self.systemctl(cx, "stop")?;
            }
            ServiceProvider(&self.unit()).apply(&enabled, cx)?;
            self.file().apply(&unit_changes, cx)?;
            return daemon_reload_if_pending(cx);
        }
        self.file().apply(&unit_changes, cx)?;
        daemon_reload_if_pending(cx)?;
        if changed("state") {
            self.systemctl(cx, "start")?;
        } else if changed("device") {
            self.systemctl(cx, "restart")?;
        } else if changed("options") || !unit_changes.is_empty() {
            self.remount(cx)?;
        }
        ServiceProvider(&self.unit()).apply(&enabled, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/my\\040data rw,nosuid,nodev shared:20 - tmpfs tmpfs rw,size=16384k,mode=755
41 22 0:36 / /srv/efs rw,relatime shared:21 - nfs4 fs-1234.efs.eu-west-1.amazonaws.com:/ rw,vers=4.1
42 40 0:37 / /mnt/my\\040data rw,noexec,relatime shared:22 - tmpfs other rw
";

    #[test]
    fn the_topmost_mount_at_a_path_is_read_with_its_escapes_undone() {
        assert_eq!(
            live_mount(MOUNTINFO, "/mnt/my data"),
            Some(LiveMount {
                source: "other".into(),
                fstype: "tmpfs".into(),
                mount_options: vec!["rw".into(), "noexec".into(), "relatime".into()],
            })
        );
        assert_eq!(
            live_mount(MOUNTINFO, "/srv/efs").map(|m| m.source),
            Some("fs-1234.efs.eu-west-1.amazonaws.com:/".into())
        );
        assert_eq!(live_mount(MOUNTINFO, "/srv"), None);
    }

    #[test]
    fn only_vfs_flags_the_options_ask_for_and_the_mount_lacks_are_drift() {
        let live = live_mount(MOUNTINFO, "/mnt/my data").expect("mounted");
        assert_eq!(
            flags_not_in_effect("size=16m,noexec,nosuid,ro,exec,defaults", &live),
            ["nosuid", "ro", "exec"]
        );
        assert!(flags_not_in_effect("rw,noexec,size=1g", &live).is_empty());
    }

    #[test]
    fn a_network_mount_waits_for_the_network_and_belongs_to_remote_fs() {
        let text = mount_unit_text(&Mount {
            path: "/srv/efs".into(),
            ensure: MountEnsure::Mounted,
            device: Some("fs-1234.efs.eu-west-1.amazonaws.com:/".into()),
            fstype: Some("nfs4".into()),
            options: Some("nfsvers=4.1,hard,_netdev".into()),
        });
        assert_eq!(
            text,
            "# Written by cms for mount /srv/efs; local changes are overwritten.\n\
             [Unit]\n\
             Description=Mount /srv/efs (managed by cms)\n\
             Wants=network-online.target\n\
             After=network-online.target\n\
             \n\
             [Mount]\n\
             What=fs-1234.efs.eu-west-1.amazonaws.com:/\n\
             Where=/srv/efs\n\
             Type=nfs4\n\
             Options=nfsvers=4.1,hard,_netdev\n\
             \n\
             [Install]\n\
             WantedBy=remote-fs.target\n"
        );
    }
}
