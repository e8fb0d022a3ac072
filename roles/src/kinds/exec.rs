//! `exec`: a command run with `/bin/sh -c`, guarded by `creates`, `unless`
//! and `onlyif`; a `refreshonly` exec runs only when notified.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Kind, Resolver, Seconds, check_name, check_path};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    pub name: String,
    /// Run with `/bin/sh -c`.
    pub command: String,
    /// Skip when this path exists.
    pub creates: Option<String>,
    /// Skip when this command succeeds.
    pub unless: Option<String>,
    /// Run only when this command succeeds.
    pub onlyif: Option<String>,
    /// Run only when notified.
    #[serde(default)]
    pub refreshonly: bool,
    /// Kill the command after this long (default 300 s).
    pub timeout: Option<Seconds>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// Exit codes that mean success (default `[0]`).
    pub returns: Option<Vec<i32>>,
}


impl Kind for Exec {
    type Spec = Exec;
    const PATH_NAMED: bool = false;
    const REFRESHABLE: bool = true;

    fn name(&self) -> &str {
        &self.name
    }

    fn resolve(spec: Exec, cx: &mut Resolver<'_>) -> Option<Exec> {
        check_name(&spec.name, &mut cx.problems);
        if spec.command.trim().is_empty() {
            cx.problems.push(("command", "command is empty".into()));
        }
        if let Some(creates) = &spec.creates {
            check_path(creates, "creates", &mut cx.problems);
        }
        Some(spec)
    }

    fn summary(&self) -> String {
        format!(
            " command={:?}{}",
            self.command,
            if self.refreshonly { " refreshonly" } else { "" }
        )
    }
}
