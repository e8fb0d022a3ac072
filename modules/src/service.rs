//! `service`: a systemd unit, started or stopped, enabled or disabled, and
//! restarted when notified.
//!
//! It talks to systemd through `systemctl`, not D-Bus: `systemctl` is on
//! every systemd host, its exit codes for `is-active` and `is-enabled` are a
//! stable interface, and it keeps the agent free of a D-Bus stack. Each
//! check costs two short processes. When a unit file changed earlier in the
//! run, `systemctl daemon-reload` runs once before the next service action.

use std::time::Duration;

use cms_roles::{Service, ServiceEnsure};

use crate::restarts::hold_for;
use crate::systemd::{daemon_reload_if_pending, systemctl};
use crate::{Change, CommandSpec, Context, Provider, ProviderError};

pub struct ServiceProvider<'a>(pub &'a Service);

impl ServiceProvider<'_> {
    fn unit(&self) -> String {
        let name = &self.0.name;
        if name.contains('.') {
            name.clone()
        } else {
            format!("{name}.service")
        }
    }

    /// `systemctl VERB UNIT`; a failure says why, with the unit's last log
    /// lines.
    pub(crate) fn act(&self, cx: &Context<'_>, verb: &str) -> Result<(), ProviderError> {
        let unit = self.unit();
        let output = systemctl(cx, &[verb, &unit])?;
        if output.success() {
            return Ok(());
        }
        if output.stderr.contains("not found") || output.stderr.contains("does not exist") {
            return Err(ProviderError::Failed(format!(
                "Failed to {verb} {unit}: there is no such unit\nhint: is the package that ships it installed, and required by this service?"
            )));
        }
        // The unit's own last log lines say why far better than systemctl.
        let journal = cx
            .host
            .run(
                &CommandSpec::new([
                    "journalctl",
                    "-u",
                    unit.as_str(),
                    "-n",
                    "10",
                    "--no-pager",
                    "-q",
                ])
                .timeout(Duration::from_secs(10)),
            )
            .map(|o| o.stdout)
            .unwrap_or_default();
        Err(ProviderError::Failed(format!(
            "`systemctl {verb} {unit}` failed:\n{}{}",
            output.tail(10),
            if journal.trim().is_empty() {
                String::new()
            } else {
                format!("\nlast log lines:\n{}", journal.trim_end())
            }
        )))
    }
}

/// How long `systemctl restart` may take: systemd's default start timeout.
const RESTART_WITHIN: Duration = Duration::from_secs(90);

impl ServiceProvider<'_> {
    /// Restarts the service within a place of the restart budget, drained
    /// from its load balancers when it says `drain`; returns what the
    /// coordination did, if worth saying.
    fn coordinated_restart(&self, cx: &Context<'_>) -> Result<Option<String>, ProviderError> {
        let unit = self.unit();
        let drain = self.0.drain.as_ref();
        let mut window = cx
            .restarts
            .reserve(&unit, hold_for(RESTART_WITHIN, drain))?;
        if let Some(drain) = drain {
            window.drain(drain)?;
        }
        let restarted = self.act(cx, "restart");
        let healthy =
            restarted.is_ok() && systemctl(cx, &["is-active", "--quiet", &unit])?.success();
        let done = window.end(healthy);
        restarted?;
        done
    }
}

/// `text`, followed by what the restart's coordination did.
fn with_note(text: String, note: Option<String>) -> String {
    match note {
        Some(note) => format!("{text}; {note}"),
        None => text,
    }
}

impl Provider for ServiceProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    /// A service this run started needs no restart for the changes that
    /// notified it: it started with them.
    fn refreshed_by(&self, changes: &[Change]) -> bool {
        changes
            .iter()
            .any(|c| c.attribute == "state" && c.to == "running")
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        daemon_reload_if_pending(cx)?;
        let unit = self.unit();
        let mut changes = Vec::new();
        if let Some(ensure) = self.0.ensure {
            let active = systemctl(cx, &["is-active", "--quiet", &unit])?.success();
            match (ensure, active) {
                (ServiceEnsure::Running, false) => {
                    changes.push(Change::new("state", "stopped", "running"))
                }
                (ServiceEnsure::Stopped, true) => {
                    changes.push(Change::new("state", "running", "stopped"))
                }
                _ => {}
            }
        }
        if let Some(enable) = self.0.enable {
            let output = systemctl(cx, &["is-enabled", &unit])?;
            let state = output.stdout.trim().to_string();
            if state.is_empty() || state == "not-found" || output.stderr.contains("No such file") {
                // Not installed yet: in a --noop run the package that ships
                // it has not been installed. Say what a real run would do;
                // if the unit is still missing then, `enable` fails and
                // says so.
                if enable {
                    changes.push(Change::new("enabled", "not installed", "true"));
                }
                return Ok(changes);
            }
            // `static` and `indirect` units cannot be enabled; leave them.
            let enabled = matches!(
                state.as_str(),
                "enabled" | "enabled-runtime" | "alias" | "static" | "indirect" | "generated"
            );
            if enable != enabled {
                changes.push(Change::new(
                    "enabled",
                    if enabled { "true" } else { state.as_str() },
                    enable.to_string(),
                ));
            }
        }
        Ok(changes)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        for change in changes {
            match (change.attribute.as_str(), change.to.as_str()) {
                ("enabled", "true") => self.act(cx, "enable")?,
                ("enabled", _) => self.act(cx, "disable")?,
                ("state", "running") => self.act(cx, "start")?,
                ("state", _) => self.act(cx, "stop")?,
                _ => {}
            }
        }
        Ok(())
    }

    fn refresh(&self, cx: &Context<'_>) -> Result<Option<String>, ProviderError> {
        daemon_reload_if_pending(cx)?;
        match self.0.ensure {
            // A service meant to be stopped is not started by a notification.
            Some(ServiceEnsure::Stopped) => Ok(None),
            Some(ServiceEnsure::Running) => {
                let unit = self.unit();
                // A stopped service interrupts no one: it starts without a
                // place.
                if !systemctl(cx, &["is-active", "--quiet", &unit])?.success() {
                    self.act(cx, "restart")?;
                    return Ok(Some(format!("started {unit}")));
                }
                let done = self.coordinated_restart(cx)?;
                Ok(Some(with_note(format!("restarted {unit}"), done)))
            }
            // Unmanaged state: restart only if it runs.
            None => {
                let unit = self.unit();
                if !systemctl(cx, &["is-active", "--quiet", &unit])?.success() {
                    return Ok(Some(format!("{unit} was not running: not restarted")));
                }
                let done = self.coordinated_restart(cx)?;
                Ok(Some(with_note(format!("restarted {unit}"), done)))
            }
        }
    }

    fn refresh_description(&self, _cx: &Context<'_>) -> Result<Option<String>, ProviderError> {
        Ok(match self.0.ensure {
            Some(ServiceEnsure::Stopped) => None,
            _ => Some(format!("would restart {}", self.unit())),
        })
    }
}
