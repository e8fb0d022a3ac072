//! `systemd_timer`: `NAME.service` (oneshot, the command) and `NAME.timer`
//! (the schedule) in `/etc/systemd/system`, written as
//! [`GeneratedFile`]s, one daemon-reload when either changed, the timer
//! enabled and started as a `service` resource would (restarted when its
//! unit changed while it runs, so the new schedule holds). The calendar
//! expression is put to `systemd-analyze calendar` before anything is
//! written. Absent: the timer and the service stopped, the timer disabled,
//! both units removed, systemd reloaded.
//!
//! Changes are labelled with their part: `timer unit: content`,
//! `service unit: ensure`, `timer: state`, `timer: enabled`.

use std::time::Duration;

use cms_roles::{Ensure, Service, ServiceEnsure, SystemdTimer, UNIT_DIRECTORY};

use crate::parts::{labelled, part};
use crate::service::ServiceProvider;
use crate::systemd::{GeneratedFile, daemon_reload_if_pending, exec_word};
use crate::{Change, CommandSpec, Context, Provider, ProviderError};

/// The oneshot service that runs the command.
pub fn service_unit_text(timer: &SystemdTimer) -> String {
    let mut text = format!(
        "# Written by cms for systemd_timer {name}; local changes are overwritten.\n\
         [Unit]\n\
         Description={description}\n\
         \n\
         [Service]\n\
         Type=oneshot\n",
        name = timer.name,
        description = description(timer).replace('%', "%%"),
    );
    if let Some(user) = &timer.user {
        text.push_str(&format!("User={}\n", user.replace('%', "%%")));
    }
    text.push_str(&format!(
        "ExecStart=/bin/sh -c {}\n",
        exec_word(timer.command.as_deref().unwrap_or_default())
    ));
    text
}

/// The timer: its schedule and the service it starts.
pub fn timer_unit_text(timer: &SystemdTimer) -> String {
    let mut text = format!(
        "# Written by cms for systemd_timer {name}; local changes are overwritten.\n\
         [Unit]\n\
         Description=Timer of {description}\n\
         \n\
         [Timer]\n",
        name = timer.name,
        description = description(timer).replace('%', "%%"),
    );
    if let Some(calendar) = &timer.on_calendar {
        text.push_str(&format!("OnCalendar={}\n", calendar.trim()));
    }
    if let Some(seconds) = timer.on_boot_sec {
        text.push_str(&format!("OnBootSec={}s\n", seconds.0));
    }
    if let Some(seconds) = timer.on_unit_active_sec {
        text.push_str(&format!("OnUnitActiveSec={}s\n", seconds.0));
    }
    if timer.persistent {
        text.push_str("Persistent=true\n");
    }
    if let Some(seconds) = timer.randomized_delay {
        text.push_str(&format!("RandomizedDelaySec={}s\n", seconds.0));
    }
    text.push_str(&format!(
        "Unit={}.service\n\n[Install]\nWantedBy=timers.target\n",
        timer.name
    ));
    text
}

fn description(timer: &SystemdTimer) -> String {
    timer
        .description
        .clone()
        .unwrap_or_else(|| format!("{} (managed by cms)", timer.name))
}

pub struct SystemdTimerProvider<'a>(pub &'a SystemdTimer);

impl SystemdTimerProvider<'_> {
    /// The two units, in the order they are written.
    fn files(&self) -> [(&'static str, GeneratedFile); 2] {
        let timer = self.0;
        let present = timer.ensure == Ensure::Present;
        [
            (
                "service unit",
                GeneratedFile::new(
                    format!("{UNIT_DIRECTORY}/{}.service", timer.name),
                    present.then(|| service_unit_text(timer)),
                ),
            ),
            (
                "timer unit",
                GeneratedFile::new(
                    format!("{UNIT_DIRECTORY}/{}.timer", timer.name),
                    present.then(|| timer_unit_text(timer)),
                ),
            ),
        ]
    }

    /// The units as services: the timer (running and enabled as asked, or
    /// stopped and disabled), and when absent the service too (stopped, in
    /// case a run is under way).
    fn units(&self) -> Vec<(&'static str, Service)> {
        let timer = self.0;
        let unit = |suffix: &str, ensure, enable| Service {
            name: format!("{}.{suffix}", timer.name),
            ensure: Some(ensure),
            enable,
            drain: None,
        };
        match timer.ensure {
            Ensure::Present => vec![(
                "timer",
                unit(
                    "timer",
                    if timer.active {
                        ServiceEnsure::Running
                    } else {
                        ServiceEnsure::Stopped
                    },
                    Some(timer.enable),
                ),
            )],
            Ensure::Absent => vec![
                ("timer", unit("timer", ServiceEnsure::Stopped, Some(false))),
                ("service", unit("service", ServiceEnsure::Stopped, None)),
            ],
        }
    }

    /// Refuses a calendar expression systemd does not accept, naming the
    /// field, before anything is written.
    fn verify_calendar(&self, cx: &Context<'_>) -> Result<(), ProviderError> {
        let Some(calendar) = &self.0.on_calendar else {
            return Ok(());
        };
        let output = cx.host.run(
            &CommandSpec::new(["systemd-analyze", "calendar", calendar.trim()])
                .timeout(Duration::from_secs(30)),
        )?;
        if output.success() {
            return Ok(());
        }
        Err(ProviderError::Failed(format!(
            "on_calendar `{calendar}` is refused by `systemd-analyze calendar`: {}\nhint: write a systemd calendar expression, e.g. \"daily\" or \"*-*-* 04:00:00\" (see `man systemd.time`)",
            output.tail(3).trim()
        )))
    }
}

impl Provider for SystemdTimerProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    fn refreshed_by(&self, _changes: &[Change]) -> bool {
        false
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let mut changes = Vec::new();
        if self.0.ensure == Ensure::Present {
            self.verify_calendar(cx)?;
        }
        for (label, file) in self.files() {
            changes.extend(labelled(label, file.check(cx)?));
        }
        for (label, unit) in self.units() {
            changes.extend(labelled(label, ServiceProvider(&unit).check(cx)?));
        }
        Ok(changes)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        let units = self.units();
        let apply_units = || -> Result<(), ProviderError> {
            for (label, unit) in &units {
                ServiceProvider(unit).apply(&part(changes, label), cx)?;
            }
            Ok(())
        };
        if self.0.ensure == Ensure::Absent {
            // Stopped and disabled while systemd still knows the units.
            apply_units()?;
        }
        for (label, file) in self.files() {
            file.apply(&part(changes, label), cx)?;
        }
        daemon_reload_if_pending(cx)?;
        if self.0.ensure == Ensure::Absent {
            return Ok(());
        }
        apply_units()?;
        // A running timer whose schedule changed is restarted, so that it
        // is armed by the new one.
        let timer_changed = !part(changes, "timer unit").is_empty();
        let timer_started = part(changes, "timer")
            .iter()
            .any(|c| c.attribute == "state");
        if timer_changed && !timer_started && self.0.active {
            ServiceProvider(&units[0].1).act(cx, "restart")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use cms_roles::Seconds;

    use super::*;

    fn timer() -> SystemdTimer {
        SystemdTimer {
            name: "backup".into(),
            ensure: Ensure::Present,
            command: Some("tar czf /var/backups/etc.tgz /etc && echo \"done 100%\"".into()),
            user: Some("backup".into()),
            description: None,
            on_calendar: Some("*-*-* 04:00:00".into()),
            on_boot_sec: None,
            on_unit_active_sec: None,
            persistent: true,
            randomized_delay: Some(Seconds(600)),
            enable: true,
            active: true,
        }
    }

    #[test]
    fn the_service_runs_the_command_once_through_the_shell_as_its_user() {
        assert_eq!(
            service_unit_text(&timer()),
            "# Written by cms for systemd_timer backup; local changes are overwritten.\n\
             [Unit]\n\
             Description=backup (managed by cms)\n\
             \n\
             [Service]\n\
             Type=oneshot\n\
             User=backup\n\
             ExecStart=/bin/sh -c \"tar czf /var/backups/etc.tgz /etc && echo \\\"done 100%%\\\"\"\n"
        );
    }

    #[test]
    fn the_timer_holds_the_schedule_and_starts_its_service() {
        assert_eq!(
            timer_unit_text(&timer()),
            "# Written by cms for systemd_timer backup; local changes are overwritten.\n\
             [Unit]\n\
             Description=Timer of backup (managed by cms)\n\
             \n\
             [Timer]\n\
             OnCalendar=*-*-* 04:00:00\n\
             Persistent=true\n\
             RandomizedDelaySec=600s\n\
             Unit=backup.service\n\
             \n\
             [Install]\n\
             WantedBy=timers.target\n"
        );
    }
}
