//! Where the testbed keeps its files and which Debian mirror builds its image:
//! the only settings it reads from the environment, read once, never written.

use std::path::{Path, PathBuf};

/// Directory holding the image cache, scratch directories and instance
/// directories. Kept outside git so images survive `git clean` and new clones.
/// Default: `/var/cache/cms-testbed`.
pub const CACHE_DIRECTORY_VARIABLE: &str = "CMS_TESTBED_CACHE";

/// The Debian mirror `debootstrap` downloads the image from. Only the host
/// talks to it, while building the image; instances never see it.
/// Default: `http://deb.debian.org/debian`.
pub const DEBIAN_MIRROR_VARIABLE: &str = "CMS_TESTBED_DEBIAN_MIRROR";

const DEFAULT_CACHE_DIRECTORY: &str = "/var/cache/cms-testbed";
const DEFAULT_DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// The resolved settings of the testbed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestbedSettings {
    /// Absolute directory for images (`images/`), scratch directories
    /// (`scratch/`) and instance directories (`instances/`).
    pub cache_directory: PathBuf,
    /// The Debian mirror used by `debootstrap` on the host.
    pub debian_mirror: String,
}

impl TestbedSettings {
    /// Reads [`CACHE_DIRECTORY_VARIABLE`] and [`DEBIAN_MIRROR_VARIABLE`] from
    /// the process environment, falling back to the defaults.
    pub fn from_environment() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Resolves the settings from any lookup, so tests can pass a map
    /// instead of touching the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let non_empty = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let cache_directory = non_empty(CACHE_DIRECTORY_VARIABLE)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_DIRECTORY));
        // A relative cache directory would move with the current directory;
        // resolve it once. `absolute` only fails on an empty path, excluded above.
        let cache_directory = std::path::absolute(&cache_directory).unwrap_or(cache_directory);
        let debian_mirror =
            non_empty(DEBIAN_MIRROR_VARIABLE).unwrap_or_else(|| DEFAULT_DEBIAN_MIRROR.to_string());
        Self {
            cache_directory,
            debian_mirror,
        }
    }

    pub(crate) fn images_directory(&self) -> PathBuf {
        self.cache_directory.join("images")
    }

    pub(crate) fn scratch_directory(&self) -> PathBuf {
        self.cache_directory.join("scratch")
    }

    pub(crate) fn instances_directory(&self) -> PathBuf {
        self.cache_directory.join("instances")
    }

    pub(crate) fn cache_directory(&self) -> &Path {
        &self.cache_directory
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[track_caller]
    fn check(variables: &[(&str, &str)], expected_cache: &str, expected_mirror: &str) {
        let variables: BTreeMap<String, String> = variables
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let settings = TestbedSettings::from_lookup(|name| variables.get(name).cloned());
        assert_eq!(settings.cache_directory, PathBuf::from(expected_cache));
        assert_eq!(settings.debian_mirror, expected_mirror);
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        check(
            &[],
            "/var/cache/cms-testbed",
            "http://deb.debian.org/debian",
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        check(
            &[
                (CACHE_DIRECTORY_VARIABLE, ""),
                (DEBIAN_MIRROR_VARIABLE, " "),
            ],
            "/var/cache/cms-testbed",
            "http://deb.debian.org/debian",
        );
    }

    #[test]
    fn variables_override_the_defaults() {
        check(
            &[
                (CACHE_DIRECTORY_VARIABLE, "/srv/testbed"),
                (DEBIAN_MIRROR_VARIABLE, "http://mirror.example/debian"),
            ],
            "/srv/testbed",
            "http://mirror.example/debian",
        );
    }
}
