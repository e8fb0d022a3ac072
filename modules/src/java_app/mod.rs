//! `java_app`: a Java application as one resource: its runtime package,
//! account, folders, verified jar, configuration file and systemd unit,
//! restarted once when any of them changes, health-checked, and rolled
//! back when the new state is not healthy.
//!
//! On the host (defaults; the catalog may move the folders):
//!
//! ```text
//! /opt/<app>/                       root, 0755, the unit's working directory
//! /opt/<app>/releases/<sha256>.jar  root, 0644, one file per release
//! /opt/<app>/current                -> releases/<sha256>.jar, what ExecStart runs
//! /opt/<app>/config/                root:<group>, 0750
//! /opt/<app>/config/application.properties (or .yml)  root:<group>, 0640
//! /opt/<app>/config/<app>.env      root:root, 0600, only for a sensitive app
//! /var/log/<app>/, /var/lib/<app>/  <user>:<group>, 0750
//! /etc/systemd/system/<app>.service root, 0644
//! ```
//!
//! `check` reuses the other providers for the parts they already manage
//! (package, group, user, directory, symlink, file, service) and prefixes
//! their changes with the part (`config: content`, `user: ensure`,
//! `service: state`); the release is this module's own (`release`). It
//! only stats and hashes files and asks systemd two questions: no JVM
//! starts and nothing is downloaded when the release is already there.
//!
//! A sensitive app (`Context::sensitive`: its fields used a secret) keeps
//! its `environment` out of the unit, which stays world-readable: the
//! values go to the owner-only `<app>.env` the unit names with
//! `EnvironmentFile=` (systemd reads it as root before dropping to the
//! app's user). It is one more part (`environment`): its change restarts
//! the app once and is rolled back with the rest.
//!
//! `apply` goes in an order that keeps a bad artifact harmless: runtime,
//! accounts and folders first, then the jar, downloaded into a temporary
//! file next to its release path, verified against the catalog's sha256 and
//! only then renamed into place (a wrong sha256 fails before the `current`
//! link, the configuration or the unit change). Then `current`, the
//! configuration and the unit are written (replaced contents go to the
//! backup store), systemd reloads, and the app restarts **once** if its
//! release, configuration, unit or runtime changed or it was not running.
//!
//! After that restart the app must become healthy within the health
//! timeout: an `http` URL answering 2xx, or a `tcp` port on 127.0.0.1
//! accepting; without a health check, staying active for
//! [`SETTLE_WITHOUT_HEALTH_CHECK`]. The wait ends early when systemd sees
//! the JVM exit. When it is not healthy, [`after_failure`] (in `deploy`) decides: with an
//! earlier release, `current`, the configuration and the unit are put back
//! as they were and the app restarts on them; on a first deployment it is
//! stopped (no crash loop). Either way the resource fails, and the error
//! carries the app's last log lines from the journal.
//!
//! After a healthy deployment the releases beyond the current one and
//! `keep_releases` earlier ones (by when they were last made current) are
//! removed.
//!
//! The heap given as a percentage is that share of the instance's memory
//! as the `memory_mb` fact counts it (`MemTotal` of `/proc/meminfo` in whole
//! MiB, rounded down), rounded down to whole MiB: `-Xmx<n>m`.
//!
//! The code is in three parts: `unit` (the generated systemd unit and the
//! heap option), `release` (the jar: download, verification, releases to
//! remove) and `deploy` (the plan, apply, health check and rollback); this
//! file holds the provider itself and what the parts share.

use std::time::Duration;

use cms_roles::{Ensure, JavaApp};

use crate::host::clock;
use crate::parts::{labelled, part};
use crate::{Change, Context, Provider, ProviderError};

mod deploy;
mod release;
mod unit;

pub use deploy::{AfterFailure, Previous, ProbeFailure, Unhealthy, after_failure};
pub use release::releases_to_remove;
pub use unit::{HeapError, environment_file, heap_option, memory_mb_from_meminfo, unit_file};

/// Where generated units go.
pub const UNIT_DIRECTORY: &str = "/etc/systemd/system";

/// Without a health check, the app counts as healthy once it has stayed
/// active this long after its start.
pub const SETTLE_WITHOUT_HEALTH_CHECK: Duration = Duration::from_secs(5);

/// The health timeout when the catalog gives none.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// How many of the app's log lines a failure report carries.
pub const LOG_LINES: usize = 30;

/// The parts whose change needs the app restarted.
const RESTARTING_PARTS: &[&str] = &[
    "runtime",
    "release",
    "current",
    "config",
    "environment",
    "unit",
    "service",
];

/// Whether these changes of a java_app restarted it (so a notification
/// needs no second restart).
pub fn restarts_on(changes: &[Change]) -> bool {
    changes.iter().any(|change| {
        let part = part_of(&change.attribute);
        RESTARTING_PARTS.contains(&part) && change.attribute != "service: enabled"
    })
}

fn part_of(attribute: &str) -> &str {
    attribute
        .split_once(": ")
        .map_or(attribute, |(part, _)| part)
}

pub struct JavaAppProvider<'a>(pub &'a JavaApp);

impl JavaAppProvider<'_> {
    pub(super) fn unit_name(&self) -> String {
        format!("{}.service", self.0.name)
    }

    pub(super) fn unit_path(&self) -> String {
        format!("{UNIT_DIRECTORY}/{}", self.unit_name())
    }

    pub(super) fn releases_dir(&self) -> String {
        format!("{}/releases", self.0.home)
    }

    pub(super) fn release_name(&self) -> String {
        format!("{}.jar", self.0.artifact_sha256)
    }

    pub(super) fn release_path(&self) -> String {
        format!("{}/{}", self.releases_dir(), self.release_name())
    }

    pub(super) fn current_path(&self) -> String {
        format!("{}/current", self.0.home)
    }

    /// The owner-only `EnvironmentFile=` of a sensitive app, in its
    /// configuration folder.
    pub(super) fn environment_path(&self) -> String {
        format!("{}/{}.env", self.0.config_dir, self.0.name)
    }
}

impl Provider for JavaAppProvider<'_> {
    /// The runtime is read in the same query as the catalog's packages.
    fn packages(&self) -> Vec<String> {
        self.0.runtime_package.iter().cloned().collect()
    }

    /// A Java application restarts (and is health-checked) once for any
    /// change of its release, configuration, unit or state.
    fn refreshed_by(&self, changes: &[Change]) -> bool {
        restarts_on(changes)
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        if self.0.ensure == Ensure::Absent {
            return self.check_absent(cx);
        }
        self.check_present(cx)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        if self.0.ensure == Ensure::Absent {
            return self.remove(cx);
        }
        self.deploy(changes, cx)
    }

    fn refresh(&self, cx: &Context<'_>) -> Result<Option<String>, ProviderError> {
        if self.0.ensure == Ensure::Absent {
            return Ok(None);
        }
        if cx.session.daemon_reload_pending() {
            self.daemon_reload(cx)?;
        }
        // A stopped app interrupts no one: it starts without a place.
        let mut window = if self.unit_state(cx)?.0 == "active" {
            Some(self.reserve_restart(cx)?)
        } else {
            None
        };
        if let (Some(window), Some(drain)) = (window.as_mut(), &self.0.drain) {
            window.drain(drain)?;
        }
        let restarted_at = clock::now();
        match self.restart_and_wait(cx)? {
            Ok(()) => {
                let text = format!("restarted {}; it is healthy", self.unit_name());
                Ok(Some(match window.map_or(Ok(None), |w| w.end(true))? {
                    Some(note) => format!("{text}; {note}"),
                    None => text,
                }))
            }
            Err(problem) => {
                let after = match window.map_or(Ok(None), |w| w.end(false)) {
                    Ok(Some(note)) => format!("; {note}"),
                    Ok(None) => String::new(),
                    Err(error) => format!("; {error}"),
                };
                Err(ProviderError::FailedWithDetails {
                    full: format!(
                        "java_app {} is not healthy after its restart{after}: {problem}\nlast log lines of {}:\n{}",
                        self.0.name,
                        self.unit_name(),
                        self.last_log_lines(cx, restarted_at)
                    ),
                    safe: format!("java_app {} is not healthy after its restart", self.0.name),
                })
            }
        }
    }

    fn refresh_description(&self, _cx: &Context<'_>) -> Result<Option<String>, ProviderError> {
        Ok((self.0.ensure == Ensure::Present).then(|| {
            format!(
                "would restart {} and wait until it is healthy",
                self.unit_name()
            )
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use cms_roles::{ConfigFormat, HealthCheck, Limits, RestartPolicy, Seconds};

    pub(crate) fn app() -> JavaApp {
        JavaApp {
            name: "orders".into(),
            ensure: Ensure::Present,
            runtime_package: Some("openjdk-17-jre-headless".into()),
            java: "/usr/bin/java".into(),
            artifact_url: None,
            artifact_sha256: "a".repeat(64),
            user: "orders".into(),
            group: "orders".into(),
            home: "/opt/orders".into(),
            config_dir: "/opt/orders/config".into(),
            log_dir: "/var/log/orders".into(),
            data_dir: "/var/lib/orders".into(),
            config_format: ConfigFormat::Properties,
            config_sha256: None,
            environment: BTreeMap::from([("SPRING_PROFILES_ACTIVE".into(), "prod".into())]),
            heap: Some("50%".into()),
            jvm_options: vec!["-XX:+UseG1GC".into(), "-Dgreeting=hello world".into()],
            args: vec!["--spring.main.banner-mode=off".into()],
            health: Some(HealthCheck {
                http: Some("http://127.0.0.1:8080/health".into()),
                tcp: None,
                timeout: Some(Seconds(30)),
            }),
            keep_releases: 2,
            restart: RestartPolicy::OnFailure,
            restart_delay: Seconds(5),
            drain: None,
            limits: Limits {
                nofile: Some(65536),
                nproc: None,
                memory: Some("2g".into()),
            },
        }
    }

    #[test]
    fn enabling_alone_restarts_nothing() {
        assert!(!restarts_on(&[Change::new(
            "service: enabled",
            "false",
            "true"
        )]));
        assert!(!restarts_on(&[Change::new(
            "directory /var/log/orders: mode",
            "0755",
            "0750"
        )]));
        assert!(restarts_on(&[Change::new(
            "config: content",
            "sha256:a",
            "sha256:b"
        )]));
        assert!(restarts_on(&[Change::new("release", "absent", "b")]));
        assert!(restarts_on(&[Change::new(
            "service: state",
            "stopped",
            "running"
        )]));
    }
}
