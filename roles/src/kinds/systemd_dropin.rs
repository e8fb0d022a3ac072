//! `systemd_dropin`: part of a unit a package owns, overridden by
//! `/etc/systemd/system/UNIT.d/NAME.conf`; its reference is
//! `systemd_dropin:UNIT/NAME` (`systemd_dropin:nginx.service/50-cms`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::systemd_fields::{check_unit_name, dropin_path};
use super::{Ensure, Kind, Resolver};

/// One value of a unit setting: a word or number, or a list for a setting
/// written once per element (`ExecStart = ["", "/usr/bin/x"]`: the empty
/// one resets what the unit had).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    Text(String),
    Integer(i64),
    Boolean(bool),
    List(Vec<String>),
}

/// A drop-in as a role declares it: exactly one of `content` or
/// `settings`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdDropinSpec {
    /// The unit overridden, with its type: `nginx.service`.
    pub unit: String,
    /// The drop-in's file name without `.conf`: `50-cms`.
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    /// The drop-in's text, as written.
    pub content: Option<String>,
    /// Sections of settings: `[systemd_dropin.settings.Service]`
    /// `LimitNOFILE = 65536`.
    pub settings: Option<BTreeMap<String, BTreeMap<String, SettingValue>>>,
}

/// A drop-in as a catalog carries it: its text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdDropin {
    /// `UNIT/NAME`, the name part of the reference.
    pub key: String,
    pub unit: String,
    pub name: String,
    pub ensure: Ensure,
    /// The text of the file; none when absent.
    pub content: Option<String>,
}

impl SystemdDropin {
    /// `/etc/systemd/system/UNIT.d/NAME.conf`.
    pub fn path(&self) -> String {
        dropin_path(&self.unit, &self.name)
    }
}

/// The text of a drop-in made of `settings`, sections and keys in order.
pub fn settings_text(settings: &BTreeMap<String, BTreeMap<String, SettingValue>>) -> String {
    let mut text = String::from("# Written by cms; local changes are overwritten.\n");
    for (section, values) in settings {
        text.push_str(&format!("\n[{section}]\n"));
        for (key, value) in values {
            let lines = match value {
                SettingValue::Text(text) => vec![text.clone()],
                SettingValue::Integer(number) => vec![number.to_string()],
                SettingValue::Boolean(flag) => vec![if *flag { "yes" } else { "no" }.to_string()],
                SettingValue::List(list) => list.clone(),
            };
            for line in lines {
                text.push_str(&format!("{key}={line}\n"));
            }
        }
    }
    text
}

/// A drop-in's file name: what may stand before `.conf`.
pub(crate) fn check_dropin_name(name: &str, problems: &mut super::Problems) {
    if name.is_empty()
        || name.ends_with(".conf")
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
    {
        problems.push(("name", format!(
            "name `{name}` is not a drop-in name: letters, digits and `-_.@`, without `.conf` (the kind adds it), e.g. \"50-cms\""
        )));
    }
}

impl Kind for SystemdDropin {
    type Spec = SystemdDropinSpec;
    const PATH_NAMED: bool = false;
    const REFRESHABLE: bool = false;
    /// Literal content is used as written: `%` specifiers are systemd's.
    const LITERAL_FIELDS: &'static [&'static str] = &["content"];
    /// The drop-in is world-readable.
    const PUBLIC_FIELDS: &'static [&'static str] = &["content", "settings"];

    // The reference names the unit and the drop-in, `UNIT/NAME`: not the
    // `name` field alone.
    #[allow(clippy::misnamed_getters)]
    fn name(&self) -> &str {
        &self.key
    }

    fn resolve(spec: SystemdDropinSpec, cx: &mut Resolver<'_>) -> Option<SystemdDropin> {
        check_unit_name(&spec.unit, "unit", true, &mut cx.problems);
        check_dropin_name(&spec.name, &mut cx.problems);
        let content = match (spec.ensure, spec.content, &spec.settings) {
            (Ensure::Absent, None, None) => None,
            (Ensure::Absent, _, _) => {
                cx.problems.push((
                    "ensure",
                    "an absent drop-in has no `content` or `settings`".into(),
                ));
                return None;
            }
            (Ensure::Present, Some(_), Some(_)) => {
                cx.problems.push((
                    "settings",
                    "a drop-in takes exactly one of `content` or `settings`; this one has both"
                        .into(),
                ));
                return None;
            }
            (Ensure::Present, None, None) => {
                cx.problems.push((
                    "unit",
                    "a drop-in needs `content` or `settings`, e.g. settings = { Service = { LimitNOFILE = 65536 } }".into(),
                ));
                return None;
            }
            (Ensure::Present, Some(content), None) => Some(content),
            (Ensure::Present, None, Some(settings)) => {
                for (section, values) in settings {
                    let words = |text: &str| {
                        !text.is_empty()
                            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    };
                    if !words(section) {
                        cx.problems.push((
                            "settings",
                            format!("settings section `{section}` is not a unit section name such as `Service` or `Unit`"),
                        ));
                    }
                    for (key, value) in values {
                        if !words(key) {
                            cx.problems.push((
                                "settings",
                                format!("settings key `{key}` in [{section}] is not a unit setting name such as `LimitNOFILE`"),
                            ));
                        }
                        let newline = match value {
                            SettingValue::Text(text) => text.contains('\n'),
                            SettingValue::List(list) => list.iter().any(|t| t.contains('\n')),
                            _ => false,
                        };
                        if newline {
                            cx.problems.push((
                                "settings",
                                format!("settings value of `{key}` has a newline: a unit setting is one line; use a list for several"),
                            ));
                        }
                    }
                }
                Some(settings_text(settings))
            }
        };
        Some(SystemdDropin {
            key: format!("{}/{}", spec.unit, spec.name),
            unit: spec.unit,
            name: spec.name,
            ensure: spec.ensure,
            content,
        })
    }

    fn summary(&self) -> String {
        format!(" ensure={:?}", self.ensure).to_lowercase()
    }

    fn written_files(&self) -> Vec<String> {
        vec![self.path()]
    }
}
