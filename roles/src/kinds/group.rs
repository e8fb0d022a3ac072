//! `group`: a local group.

use serde::{Deserialize, Serialize};

use super::{Ensure, Kind, Resolver, check_name};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    pub gid: Option<u32>,
    #[serde(default)]
    pub system: bool,
}


impl Kind for Group {
    type Spec = Group;
    const PATH_NAMED: bool = false;
    const REFRESHABLE: bool = false;

    fn name(&self) -> &str {
        &self.name
    }

    fn resolve(spec: Group, cx: &mut Resolver<'_>) -> Option<Group> {
        check_name(&spec.name, &mut cx.problems);
        Some(spec)
    }

    fn summary(&self) -> String {
        String::new()
    }
}
