//! `user`: a local account, its primary and supplementary groups, home and
//! shell.

use serde::{Deserialize, Serialize};

use super::{Ensure, Kind, Resolver, check_name, check_path};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    pub uid: Option<u32>,
    /// The primary group.
    pub group: Option<String>,
    /// Supplementary groups; the user is in exactly these.
    #[serde(default)]
    pub groups: Vec<String>,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub comment: Option<String>,
    /// A system account (low uid, no aging).
    #[serde(default)]
    pub system: bool,
    /// Create the home directory.
    #[serde(default)]
    pub manage_home: bool,
}


impl Kind for User {
    type Spec = User;
    const PATH_NAMED: bool = false;
    const REFRESHABLE: bool = false;

    fn name(&self) -> &str {
        &self.name
    }

    fn resolve(spec: User, cx: &mut Resolver<'_>) -> Option<User> {
        check_name(&spec.name, &mut cx.problems);
        if let Some(home) = &spec.home {
            check_path(home, "home", &mut cx.problems);
        }
        Some(spec)
    }

    fn summary(&self) -> String {
        String::new()
    }
}
