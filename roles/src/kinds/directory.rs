//! `directory`: a directory, its owner and mode, optionally applied to
//! everything below (`recurse`) and emptied of what the catalog does not
//! declare (`purge`).

use serde::{Deserialize, Serialize};

use super::{Ensure, Kind, Mode, Resolver, check_path};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub path: String,
    #[serde(default)]
    pub ensure: Ensure,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<Mode>,
    /// Apply owner, group and mode to everything below, as Puppet's
    /// `recurse`.
    #[serde(default)]
    pub recurse: bool,
    /// Remove what is below the directory and not declared in the catalog.
    #[serde(default)]
    pub purge: bool,
}


impl Kind for Directory {
    type Spec = Directory;
    const PATH_NAMED: bool = true;
    const REFRESHABLE: bool = false;

    fn name(&self) -> &str {
        &self.path
    }

    fn resolve(spec: Directory, cx: &mut Resolver<'_>) -> Option<Directory> {
        check_path(&spec.path, "path", &mut cx.problems);
        Some(spec)
    }

    fn summary(&self) -> String {
        String::new()
    }
}
