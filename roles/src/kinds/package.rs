//! `package`: a package of the system's package manager, present, absent,
//! purged, at its latest version or at exactly one version.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Kind, Resolver, check_name};

/// What state a package must be in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PackageEnsure {
    /// Installed, any version (`present` or `installed`).
    #[default]
    Present,
    /// Removed (`absent`).
    Absent,
    /// Removed with its configuration files (`purged`).
    Purged,
    /// The newest version the package sources offer (`latest`).
    Latest,
    /// Exactly this version, e.g. `1.22.1-9`.
    Version(String),
}

impl fmt::Display for PackageEnsure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackageEnsure::Present => f.write_str("present"),
            PackageEnsure::Absent => f.write_str("absent"),
            PackageEnsure::Purged => f.write_str("purged"),
            PackageEnsure::Latest => f.write_str("latest"),
            PackageEnsure::Version(v) => f.write_str(v),
        }
    }
}

impl Serialize for PackageEnsure {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PackageEnsure {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.as_str() {
            "present" | "installed" => PackageEnsure::Present,
            "absent" => PackageEnsure::Absent,
            "purged" => PackageEnsure::Purged,
            "latest" => PackageEnsure::Latest,
            version => {
                let valid = version.chars().next().is_some_and(|c| c.is_ascii_digit())
                    && version
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".+-~:_".contains(c));
                if !valid {
                    return Err(serde::de::Error::custom(format!(
                        "invalid package ensure `{version}`: expected present, absent, purged, latest or a version such as 1.22.1-9"
                    )));
                }
                PackageEnsure::Version(version.to_string())
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    #[serde(default)]
    pub ensure: PackageEnsure,
    /// `Some(true)`: held at its version (`apt-mark hold`, `dnf
    /// versionlock`); `Some(false)`, what a role that does not write
    /// `hold` gets: not held, so that removing `hold` releases it; `None`:
    /// holds are left as they are (a java_app's runtime).
    #[serde(default = "not_held", skip_serializing_if = "is_not_held")]
    pub hold: Option<bool>,
}

fn not_held() -> Option<bool> {
    Some(false)
}

fn is_not_held(hold: &Option<bool>) -> bool {
    *hold == Some(false)
}


impl Kind for Package {
    type Spec = Package;
    const PATH_NAMED: bool = false;
    const REFRESHABLE: bool = false;

    fn name(&self) -> &str {
        &self.name
    }

    fn resolve(spec: Package, cx: &mut Resolver<'_>) -> Option<Package> {
        check_name(&spec.name, &mut cx.problems);
        if spec.hold == Some(true)
            && matches!(spec.ensure, PackageEnsure::Absent | PackageEnsure::Purged)
        {
            cx.problems.push((
                "hold",
                format!(
                    "a package that is {} cannot be held: remove `hold = true`, or ensure it is present",
                    spec.ensure
                ),
            ));
        }
        Some(spec)
    }

    fn summary(&self) -> String {
        match self.hold {
            Some(true) => format!(" ensure={} hold=true", self.ensure),
            _ => format!(" ensure={}", self.ensure),
        }
    }
}
