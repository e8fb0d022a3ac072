//! `mount`: a file system mounted at a path through a systemd mount unit
//! (`/etc/systemd/system/<escaped path>.mount`), mounted now and at boot.

use serde::{Deserialize, Serialize};

use super::{Kind, Resolver, check_path};

/// `mounted` or `absent`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountEnsure {
    #[default]
    Mounted,
    Absent,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Where: an absolute path.
    pub path: String,
    #[serde(default)]
    pub ensure: MountEnsure,
    /// What: `/dev/xvdf`, `UUID=…`, `LABEL=…`, `server:/export`, `tmpfs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// `ext4`, `xfs`, `nfs4`, `tmpfs`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    /// Comma-separated mount options, as in fstab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<String>,
}

/// File system types mounted over the network: their unit waits for the
/// network and belongs to `remote-fs.target`.
pub const NETWORK_FSTYPES: &[&str] = &["nfs", "nfs4", "cifs", "smb3", "glusterfs", "ceph"];

impl Kind for Mount {
    type Spec = Mount;
    const PATH_NAMED: bool = true;
    const REFRESHABLE: bool = false;
    /// The unit is world-readable (a CIFS password belongs in a
    /// `credentials=` file, not in `options`).
    const PUBLIC_FIELDS: &'static [&'static str] = &["device", "options"];

    fn name(&self) -> &str {
        &self.path
    }

    fn resolve(spec: Mount, cx: &mut Resolver<'_>) -> Option<Mount> {
        check_path(&spec.path, "path", &mut cx.problems);
        if spec.path == "/" {
            cx.problems
                .push(("path", "path `/` is the root file system: it is never a mount resource".into()));
        }
        let one_line = |text: &str| !text.trim().is_empty() && !text.contains(['\n', '\0']);
        if spec.ensure == MountEnsure::Mounted {
            match &spec.device {
                None => cx.problems.push((
                    "path",
                    "a mount needs a `device` (e.g. \"/dev/xvdf\", \"UUID=…\", \"server:/export\" or \"tmpfs\") unless ensure = \"absent\"".into(),
                )),
                Some(device) if !one_line(device) || device.contains(char::is_whitespace) => {
                    cx.problems.push(("device", format!("device `{device}` must be one word")))
                }
                Some(_) => {}
            }
            match &spec.fstype {
                None => cx.problems.push((
                    "path",
                    "a mount needs an `fstype` (e.g. \"ext4\", \"nfs4\", \"tmpfs\") unless ensure = \"absent\"".into(),
                )),
                Some(fstype)
                    if fstype.is_empty()
                        || !fstype
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) =>
                {
                    cx.problems.push(("fstype", format!(
                        "fstype `{fstype}` is not a file system type such as \"ext4\", \"nfs4\" or \"tmpfs\""
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(options) = &spec.options
            && (!one_line(options)
                || options.contains(char::is_whitespace)
                || options.split(',').any(str::is_empty))
        {
            cx.problems.push((
                "options",
                format!(
                    "options `{options}` must be comma-separated options without spaces, e.g. \"noatime,nodev\""
                ),
            ));
        }
        Some(spec)
    }

    fn summary(&self) -> String {
        let mut text = format!(" ensure={:?}", self.ensure).to_lowercase();
        if let Some(device) = &self.device {
            text.push_str(&format!(" device={device}"));
        }
        text
    }
}
