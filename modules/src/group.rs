//! `group`: a system group with its id, managed with `groupadd`, `groupmod`
//! and `groupdel`.

use cms_roles::{Ensure, Group};

use crate::account::{read_groups, shadow_tool};
use crate::{Change, Context, Provider, ProviderError};

pub struct GroupProvider<'a>(pub &'a Group);

impl Provider for GroupProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let group = self.0;
        let current = read_groups(cx.host)?
            .into_iter()
            .find(|g| g.name == group.name);
        Ok(match (group.ensure, current) {
            (Ensure::Present, None) => vec![Change::new("ensure", "absent", "present")],
            (Ensure::Absent, Some(_)) => vec![Change::new("ensure", "present", "absent")],
            (Ensure::Present, Some(current)) => match group.gid {
                Some(gid) if gid != current.gid => {
                    vec![Change::new("gid", current.gid.to_string(), gid.to_string())]
                }
                _ => Vec::new(),
            },
            (Ensure::Absent, None) => Vec::new(),
        })
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        let group = self.0;
        for change in changes {
            match (change.attribute.as_str(), change.to.as_str()) {
                ("ensure", "absent") => shadow_tool(cx.host, "groupdel", vec![group.name.clone()])?,
                ("ensure", _) => {
                    let mut args = Vec::new();
                    if group.system {
                        args.push("--system".to_string());
                    }
                    if let Some(gid) = group.gid {
                        args.extend(["-g".to_string(), gid.to_string()]);
                    }
                    args.push(group.name.clone());
                    shadow_tool(cx.host, "groupadd", args)?;
                }
                ("gid", gid) => shadow_tool(
                    cx.host,
                    "groupmod",
                    vec!["-g".into(), gid.to_string(), group.name.clone()],
                )?,
                _ => {}
            }
        }
        Ok(())
    }
}
