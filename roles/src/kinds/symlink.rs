//! `symlink`: a symbolic link and its target.

use serde::{Deserialize, Serialize};

use super::{Ensure, Kind, Mode, Resolver, check_path};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    pub path: String,
    pub target: Option<String>,
    #[serde(default)]
    pub ensure: Ensure,
    pub owner: Option<String>,
    pub group: Option<String>,
    /// Accepted for symmetry with files; Linux ignores the permission bits
    /// of a symbolic link, so it is never checked.
    pub mode: Option<Mode>,
}


impl Kind for Symlink {
    type Spec = Symlink;
    const PATH_NAMED: bool = true;
    const REFRESHABLE: bool = false;

    fn name(&self) -> &str {
        &self.path
    }

    fn resolve(spec: Symlink, cx: &mut Resolver<'_>) -> Option<Symlink> {
        check_path(&spec.path, "path", &mut cx.problems);
        match (&spec.target, spec.ensure) {
            (None, Ensure::Present) => cx.problems.push((
                "path",
                "a symlink needs a `target` unless ensure = \"absent\"".into(),
            )),
            (Some(target), _) if target.is_empty() => {
                cx.problems.push(("target", "target is empty".into()))
            }
            _ => {}
        }
        Some(spec)
    }

    fn summary(&self) -> String {
        String::new()
    }
}
