//! `systemd_timer`: a command run on a schedule, the cron replacement: a
//! `NAME.timer` and the oneshot `NAME.service` it starts, written to
//! `/etc/systemd/system`, the timer enabled and started.

use serde::{Deserialize, Serialize};

use super::systemd_fields::{UNIT_DIRECTORY, calendar_problem, check_unit_name};
use super::{Ensure, Kind, Resolver, Seconds, check_name};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemdTimer {
    /// The units' base name: `NAME.timer` and `NAME.service`.
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    /// Run with `/bin/sh -c` by the service (`ExecStart=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The account the command runs as; root when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `OnCalendar=`: a calendar expression (`daily`, `*-*-* 04:00`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_calendar: Option<String>,
    /// `OnBootSec=`: this long after boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_boot_sec: Option<Seconds>,
    /// `OnUnitActiveSec=`: this long after the service last started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_unit_active_sec: Option<Seconds>,
    /// `Persistent=`: a run missed while the machine was off happens at
    /// the next boot.
    #[serde(default)]
    pub persistent: bool,
    /// `RandomizedDelaySec=`: spread the fleet's runs over this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub randomized_delay: Option<Seconds>,
    /// Start the timer at boot (default true).
    #[serde(default = "yes")]
    pub enable: bool,
    /// Keep the timer running now (default true).
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

impl Kind for SystemdTimer {
    type Spec = SystemdTimer;
    const PATH_NAMED: bool = false;
    const REFRESHABLE: bool = false;
    /// Both units are world-readable.
    const PUBLIC_FIELDS: &'static [&'static str] = &["command", "description", "user"];

    fn name(&self) -> &str {
        &self.name
    }

    fn resolve(spec: SystemdTimer, cx: &mut Resolver<'_>) -> Option<SystemdTimer> {
        check_name(&spec.name, &mut cx.problems);
        check_unit_name(&spec.name, "name", false, &mut cx.problems);
        if let Some(expression) = &spec.on_calendar
            && let Some(problem) = calendar_problem(expression)
        {
            cx.problems.push((
                "on_calendar",
                format!(
                    "on_calendar `{expression}` {problem}; write a systemd calendar expression, e.g. \"daily\" or \"*-*-* 04:00:00\" (see `man systemd.time`)"
                ),
            ));
        }
        if spec.ensure == Ensure::Absent {
            return Some(spec);
        }
        match &spec.command {
            None => cx.problems.push((
                "name",
                "a systemd_timer needs a `command` unless ensure = \"absent\"".into(),
            )),
            Some(command) if command.trim().is_empty() => {
                cx.problems.push(("command", "command is empty".into()))
            }
            Some(command) if command.contains('\n') => cx.problems.push((
                "command",
                "command has a newline: a unit's ExecStart= is one line; put a longer script in a file and run that".into(),
            )),
            Some(_) => {}
        }
        if spec.on_calendar.is_none()
            && spec.on_boot_sec.is_none()
            && spec.on_unit_active_sec.is_none()
        {
            cx.problems.push((
                "name",
                "a systemd_timer needs `on_calendar`, `on_boot_sec` or `on_unit_active_sec`, e.g. on_calendar = \"daily\"".into(),
            ));
        }
        for (field, value) in [("user", &spec.user), ("description", &spec.description)] {
            if let Some(value) = value
                && (value.trim().is_empty() || value.contains('\n'))
            {
                cx.problems
                    .push((field, format!("{field} must be one non-empty line")));
            }
        }
        Some(spec)
    }

    fn summary(&self) -> String {
        let mut text = format!(" ensure={:?}", self.ensure).to_lowercase();
        if let Some(calendar) = &self.on_calendar {
            text.push_str(&format!(" on_calendar={calendar:?}"));
        }
        text
    }

    fn written_files(&self) -> Vec<String> {
        ["timer", "service"]
            .map(|suffix| format!("{UNIT_DIRECTORY}/{}.{suffix}", self.name))
            .to_vec()
    }
}
