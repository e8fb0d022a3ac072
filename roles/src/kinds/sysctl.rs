//! `sysctl`: a kernel parameter, set now (written to `/proc/sys`) and
//! persisted for the next boot in a file of its own under `/etc/sysctl.d`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Ensure, Kind, Resolver};

/// A kernel parameter as a role declares it and a catalog carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sysctl {
    /// `net.core.somaxconn`, or with slashes when a part holds a dot
    /// (`net/ipv4/conf/eth0.100/forwarding`).
    pub name: String,
    /// The value, as `sysctl` prints it; several fields are separated by
    /// spaces (`"32768 60999"`). Required unless `ensure = "absent"`.
    #[serde(default)]
    pub value: Option<SysctlValue>,
    /// `absent` removes the persisted file only; the running value stays
    /// until the next boot.
    #[serde(default)]
    pub ensure: Ensure,
}

/// A value written as a string or an integer (`value = 4096`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SysctlValue(#[serde(deserialize_with = "string_or_integer")] pub String);

impl fmt::Display for SysctlValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn string_or_integer<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a value as a string or an integer, e.g. \"4096\"")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<String, E> {
            Ok(text.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<String, E> {
            Ok(value.to_string())
        }
        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<String, E> {
            Ok(value.to_string())
        }
    }
    deserializer.deserialize_any(Visitor)
}

impl Sysctl {
    /// Where the kernel shows the parameter: `/proc/sys/net/core/somaxconn`.
    pub fn proc_path(&self) -> String {
        format!("/proc/sys/{}", self.name_with_slashes())
    }

    /// The file that persists it: `/etc/sysctl.d/90-cms-net.core.somaxconn.conf`,
    /// one per parameter, so that no two resources share a file.
    pub fn persisted_path(&self) -> String {
        format!(
            "/etc/sysctl.d/90-cms-{}.conf",
            self.name_with_slashes().replace('/', ".")
        )
    }

    fn name_with_slashes(&self) -> String {
        if self.name.contains('/') {
            self.name.clone()
        } else {
            self.name.replace('.', "/")
        }
    }
}

impl Kind for Sysctl {
    type Spec = Sysctl;
    const PATH_NAMED: bool = false;
    const REFRESHABLE: bool = false;

    fn name(&self) -> &str {
        &self.name
    }

    fn resolve(spec: Sysctl, cx: &mut Resolver<'_>) -> Option<Sysctl> {
        if let Err(problem) = check_sysctl_name(&spec.name) {
            cx.problems.push(("name", problem));
        }
        match (&spec.value, spec.ensure) {
            (None, Ensure::Present) => cx.problems.push((
                "value",
                format!(
                    "sysctl {} has no value: write value = \"...\" (or ensure = \"absent\")",
                    spec.name
                ),
            )),
            (Some(value), _) if value.0.trim().is_empty() || value.0.contains(['\n', '\0']) => {
                cx.problems.push((
                    "value",
                    format!(
                        "value {:?} must hold something and no newline; several fields are separated by spaces, e.g. \"32768 60999\"",
                        value.0
                    ),
                ))
            }
            _ => {}
        }
        Some(spec)
    }

    fn summary(&self) -> String {
        match (&self.value, self.ensure) {
            (_, Ensure::Absent) => " ensure=absent".into(),
            (Some(value), _) => format!(" value={value}"),
            (None, _) => String::new(),
        }
    }

    fn written_files(&self) -> Vec<String> {
        vec![self.persisted_path()]
    }
}

/// A name is parts of letters, digits, `_`, `-`, `:` or `@`, separated by
/// dots, or by slashes when a part holds a dot (an interface `eth0.100`).
fn check_sysctl_name(name: &str) -> Result<(), String> {
    let separator = if name.contains('/') { '/' } else { '.' };
    let bad_part = name.split(separator).find(|part| {
        part.is_empty()
            || *part == "."
            || *part == ".."
            || !part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-:@.".contains(c))
    });
    match bad_part {
        None => Ok(()),
        Some(_) => Err(format!(
            "invalid sysctl name `{name}`: write the parameter as sysctl names it, parts of letters, digits, `_` or `-` separated by dots (net.core.somaxconn), or by slashes when a part holds a dot (net/ipv4/conf/eth0.100/forwarding); no empty part, `.` or `..`"
        )),
    }
}
