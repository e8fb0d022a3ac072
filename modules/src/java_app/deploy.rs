//! Deploying a `java_app`: the plan (its parts as the resources other
//! providers manage), checking and applying it in an order that keeps a bad
//! artifact harmless, the health check after the restart, and the rollback
//! when the new state is not healthy.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use cms_roles::{
    Directory, Ensure, File, Group, Mode, Package, PackageEnsure, Service, ServiceEnsure, Symlink,
    User,
};

use super::unit::{environment_file, heap_option, memory_mb_from_meminfo, unit_file};
use super::{
    DEFAULT_HEALTH_TIMEOUT, JavaAppProvider, LOG_LINES, SETTLE_WITHOUT_HEALTH_CHECK, part_of,
    restarts_on,
};
use crate::directory::DirectoryProvider;
use crate::file::FileProvider;
use crate::group::GroupProvider;
use crate::host::clock;
use crate::host::fs::{FileAttributes, FileKind, sha256_hex};
use crate::package::PackageProvider;
use crate::parts::{GeneratedContents, labelled, part};
use crate::service::ServiceProvider;
use crate::symlink::SymlinkProvider;
use crate::systemd::{daemon_reload, daemon_reload_if_pending, systemctl};
use crate::user::UserProvider;
use crate::{Change, CommandSpec, Context, Provider, ProviderError};

/// The app's parts as the resources the other providers manage.
struct Plan {
    package: Option<Package>,
    group: Group,
    user: User,
    directories: Vec<Directory>,
    current: Symlink,
    config: Option<File>,
    /// The owner-only `EnvironmentFile=` of a sensitive app (present with
    /// its values), or absent (an app that is not, or no longer, sensitive,
    /// or has no environment).
    environment: File,
    environment_text: String,
    unit: File,
    unit_text: String,
    service: Service,
}

/// What was deployed before this run changed it: what a rollback restores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Previous {
    /// The target of `current`, when it points at a release that exists.
    pub release: Option<String>,
    pub config: Option<Vec<u8>>,
    /// The owner-only environment file of a sensitive app.
    pub environment: Option<Vec<u8>>,
    pub unit: Option<Vec<u8>>,
}

/// What to do when the app is not healthy after this run's restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Put the earlier release, configuration and unit back and restart.
    RollBack,
    /// A first deployment: nothing to go back to; stop the app.
    StopFirstDeployment,
    /// Nothing of the deployment changed (only a start or restart failed):
    /// nothing to go back to; leave it for the operator.
    Report,
}

/// The decision after an unhealthy (re)start.
pub fn after_failure(previous: &Previous, deployment_changed: bool) -> AfterFailure {
    if !deployment_changed {
        AfterFailure::Report
    } else if previous.release.is_none() {
        AfterFailure::StopFirstDeployment
    } else {
        AfterFailure::RollBack
    }
}

/// Why the app is not healthy after a (re)start.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    #[error("`systemctl restart {unit}` failed: {output}")]
    RestartFailed { unit: String, output: String },
    #[error("the JVM exited (systemd: {active}/{sub}) {seconds:.1} s after the start")]
    Exited {
        active: String,
        sub: String,
        seconds: f64,
    },
    #[error("not healthy within {seconds} s ({last_problem})")]
    NotHealthyInTime {
        seconds: u64,
        last_problem: ProbeFailure,
    },
}

/// Why one health probe did not pass.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    #[error("no answer yet")]
    NoAnswerYet,
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    /// The request failed; the text carries the causes, as reports show it.
    #[error("{0}")]
    Request(String),
    #[error("port {port} does not accept connections: {source}")]
    Port {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

impl JavaAppProvider<'_> {
    fn plan(&self, cx: &Context<'_>) -> Result<Plan, ProviderError> {
        let app = self.0;
        let heap = match &app.heap {
            None => None,
            Some(heap) => {
                let memory_mb = if heap.ends_with('%') {
                    let meminfo = cx.host.read_file("/proc/meminfo")?;
                    memory_mb_from_meminfo(&String::from_utf8_lossy(&meminfo))
                } else {
                    None
                };
                Some(heap_option(heap, memory_mb).map_err(|message| {
                    ProviderError::Failed(format!(
                        "Failed to size the heap of {}: {message}",
                        app.name
                    ))
                })?)
            }
        };
        // A sensitive app's environment carries secrets: it goes to an
        // owner-only file that systemd reads as root before it drops to the
        // app's user, never into the world-readable unit.
        let environment_path = self.environment_path();
        let separate_environment = cx.sensitive && !app.environment.is_empty();
        let unit_text = unit_file(
            app,
            heap.as_deref(),
            separate_environment.then_some(environment_path.as_str()),
        );
        let environment_text = if separate_environment {
            environment_file(app)
        } else {
            String::new()
        };
        let directory =
            |path: &str, owner: Option<&str>, group: Option<&str>, mode: u32| Directory {
                path: path.to_string(),
                ensure: Ensure::Present,
                owner: owner.map(str::to_string),
                group: group.map(str::to_string),
                mode: Some(Mode(mode)),
                recurse: false,
                purge: false,
            };
        let mut directories = vec![
            directory(&app.home, None, None, 0o755),
            directory(&self.releases_dir(), None, None, 0o755),
            directory(&app.config_dir, None, Some(&app.group), 0o750),
            directory(&app.log_dir, Some(&app.user), Some(&app.group), 0o750),
            directory(&app.data_dir, Some(&app.user), Some(&app.group), 0o750),
        ];
        // A folder given twice (data in the home, say) is managed once.
        let mut seen = std::collections::BTreeSet::new();
        directories.retain(|d| seen.insert(d.path.clone()));
        Ok(Plan {
            package: app.runtime_package.as_ref().map(|name| Package {
                name: name.clone(),
                ensure: PackageEnsure::Present,
                // The runtime's holds are the operator's.
                hold: None,
            }),
            group: Group {
                name: app.group.clone(),
                ensure: Ensure::Present,
                gid: None,
                system: true,
            },
            user: User {
                name: app.user.clone(),
                ensure: Ensure::Present,
                uid: None,
                group: Some(app.group.clone()),
                groups: Vec::new(),
                home: Some(app.data_dir.clone()),
                shell: Some("/usr/sbin/nologin".into()),
                comment: None,
                system: true,
                manage_home: false,
            },
            directories,
            current: Symlink {
                path: self.current_path(),
                target: Some(format!("releases/{}", self.release_name())),
                ensure: Ensure::Present,
                owner: None,
                group: None,
                mode: None,
            },
            config: app.config_sha256.as_ref().map(|sha256| File {
                path: app.config_path(),
                ensure: Ensure::Present,
                content_sha256: Some(sha256.clone()),
                owner: None,
                group: Some(app.group.clone()),
                mode: Some(Mode(0o640)),
            }),
            environment: File {
                path: environment_path,
                ensure: if separate_environment {
                    Ensure::Present
                } else {
                    Ensure::Absent
                },
                content_sha256: separate_environment
                    .then(|| sha256_hex(environment_text.as_bytes())),
                owner: Some("root".into()),
                group: Some("root".into()),
                mode: Some(Mode(0o600)),
            },
            environment_text,
            unit: File {
                path: self.unit_path(),
                ensure: Ensure::Present,
                content_sha256: Some(sha256_hex(unit_text.as_bytes())),
                owner: None,
                group: None,
                mode: Some(Mode(0o644)),
            },
            unit_text,
            service: Service {
                name: self.unit_name(),
                ensure: Some(ServiceEnsure::Running),
                enable: Some(true),
                drain: None,
            },
        })
    }

    fn previous(&self, cx: &Context<'_>) -> Result<Previous, ProviderError> {
        let current = self.current_path();
        let release = match cx.host.status(&current)? {
            Some(status) if status.kind == FileKind::Symlink => {
                let target = cx.host.read_symlink(&current)?;
                let absolute = if target.starts_with('/') {
                    target.clone()
                } else {
                    format!("{}/{target}", self.0.home)
                };
                matches!(cx.host.status(&absolute)?, Some(s) if s.kind == FileKind::File)
                    .then_some(target)
            }
            _ => None,
        };
        let read = |path: &str| -> Result<Option<Vec<u8>>, ProviderError> {
            match cx.host.status(path)? {
                Some(status) if status.kind == FileKind::File => Ok(Some(cx.host.read_file(path)?)),
                _ => Ok(None),
            }
        };
        Ok(Previous {
            release,
            config: read(&self.0.config_path())?,
            environment: read(&self.environment_path())?,
            unit: read(&self.unit_path())?,
        })
    }

    /// `ActiveState`, `SubState` and `NRestarts` of the unit.
    pub(super) fn unit_state(
        &self,
        cx: &Context<'_>,
    ) -> Result<(String, String, u64), ProviderError> {
        let output = systemctl(
            cx,
            &[
                "show",
                &self.unit_name(),
                "--property=ActiveState,SubState,NRestarts",
            ],
        )?;
        let mut values: BTreeMap<&str, &str> = BTreeMap::new();
        for line in output.stdout.lines() {
            if let Some((key, value)) = line.split_once('=') {
                values.insert(key, value);
            }
        }
        Ok((
            values.get("ActiveState").unwrap_or(&"").to_string(),
            values.get("SubState").unwrap_or(&"").to_string(),
            values
                .get("NRestarts")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        ))
    }

    /// How long the app may take to be healthy after a restart.
    fn health_timeout(&self) -> Duration {
        self.0
            .health
            .as_ref()
            .and_then(|h| h.timeout)
            .map_or(DEFAULT_HEALTH_TIMEOUT, |t| Duration::from_secs(t.0))
    }

    /// A place to restart the app ([`crate::restarts`]).
    pub(super) fn reserve_restart<'c>(
        &self,
        cx: &Context<'c>,
    ) -> Result<Box<dyn crate::RestartWindow + 'c>, ProviderError> {
        let hold = crate::restarts::hold_for(self.health_timeout(), self.0.drain.as_ref());
        cx.restarts.reserve(&self.unit_name(), hold)
    }

    /// Restarts the app and waits until it is healthy; `Err` says why not.
    pub(super) fn restart_and_wait(
        &self,
        cx: &Context<'_>,
    ) -> Result<Result<(), Unhealthy>, ProviderError> {
        let unit = self.unit_name();
        let output = systemctl(cx, &["restart", &unit])?;
        if !output.success() {
            return Ok(Err(Unhealthy::RestartFailed {
                output: output.tail(5).trim().to_string(),
                unit,
            }));
        }
        let (_, _, restarts_at_start) = self.unit_state(cx)?;
        let health = self.0.health.as_ref();
        let timeout = self.health_timeout();
        let started = clock::instant();
        let mut last_problem = ProbeFailure::NoAnswerYet;
        loop {
            let (active, sub, restarts) = self.unit_state(cx)?;
            if active == "failed"
                || active == "inactive"
                || sub == "auto-restart"
                || restarts > restarts_at_start
            {
                return Ok(Err(Unhealthy::Exited {
                    active,
                    sub,
                    seconds: started.elapsed().as_secs_f64(),
                }));
            }
            match health {
                Some(health) => match self.probe(cx, health) {
                    Ok(()) => return Ok(Ok(())),
                    Err(problem) => last_problem = problem,
                },
                None => {
                    if active == "active" && started.elapsed() >= SETTLE_WITHOUT_HEALTH_CHECK {
                        return Ok(Ok(()));
                    }
                }
            }
            let limit = if health.is_some() {
                timeout
            } else {
                SETTLE_WITHOUT_HEALTH_CHECK + Duration::from_secs(1)
            };
            if started.elapsed() >= limit {
                return Ok(Err(Unhealthy::NotHealthyInTime {
                    seconds: limit.as_secs(),
                    last_problem,
                }));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn probe(&self, cx: &Context<'_>, health: &cms_roles::HealthCheck) -> Result<(), ProbeFailure> {
        let attempt = Duration::from_secs(2);
        if let Some(url) = &health.http {
            match cx.host.http_get(url, attempt, &mut std::io::sink()) {
                Ok(status) if (200..300).contains(&status) => Ok(()),
                Ok(status) => Err(ProbeFailure::Status {
                    url: url.clone(),
                    status,
                }),
                Err(error) => Err(ProbeFailure::Request(crate::error_text(&error))),
            }
        } else if let Some(port) = health.tcp {
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            std::net::TcpStream::connect_timeout(&address, attempt)
                .map(drop)
                .map_err(|source| ProbeFailure::Port { port, source })
        } else {
            Ok(())
        }
    }

    pub(super) fn last_log_lines(&self, cx: &Context<'_>, since: SystemTime) -> String {
        let since = since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs().saturating_sub(1))
            .unwrap_or_default();
        let lines = LOG_LINES.to_string();
        let since = format!("@{since}");
        cx.host
            .run(
                &CommandSpec::new([
                    "journalctl",
                    "--unit",
                    &self.unit_name(),
                    "--since",
                    &since,
                    "--lines",
                    &lines,
                    "--no-pager",
                    "--quiet",
                ])
                .timeout(Duration::from_secs(30)),
            )
            .map(|output| output.stdout.trim_end().to_string())
            .unwrap_or_default()
    }

    /// Puts back what `previous` holds, reloads systemd and restarts.
    fn roll_back(
        &self,
        cx: &Context<'_>,
        previous: &Previous,
    ) -> Result<Result<(), Unhealthy>, ProviderError> {
        let app = self.0;
        if let Some(target) = &previous.release {
            cx.host.create_symlink_atomically(
                &self.current_path(),
                target,
                FileAttributes::default(),
            )?;
        }
        let config_attributes = FileAttributes {
            mode: Some(0o640),
            uid: None,
            gid: Some(cx.host.group_id(&app.group)?),
        };
        for (path, content, attributes) in [
            (app.config_path(), &previous.config, config_attributes),
            (
                self.environment_path(),
                &previous.environment,
                FileAttributes {
                    mode: Some(0o600),
                    uid: Some(0),
                    gid: Some(0),
                },
            ),
            (
                self.unit_path(),
                &previous.unit,
                FileAttributes {
                    mode: Some(0o644),
                    ..FileAttributes::default()
                },
            ),
        ] {
            // The failed content is kept in the backups, for a post-mortem.
            if cx.host.status(&path)?.is_some() {
                cx.backups.save_from_host(cx.host, &path)?;
            }
            match content {
                Some(bytes) => cx.host.write_file_atomically(&path, bytes, attributes)?,
                None => {
                    if cx.host.status(&path)?.is_some() {
                        cx.host.remove_file(&path)?;
                    }
                }
            }
        }
        daemon_reload(cx)?;
        self.restart_and_wait(cx)
    }

    pub(super) fn check_absent(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let present: Vec<String> = [self.unit_path(), self.0.home.clone()]
            .into_iter()
            .filter(|path| matches!(cx.host.status(path), Ok(Some(_))))
            .collect();
        Ok(if present.is_empty() {
            Vec::new()
        } else {
            vec![Change::new(
                "ensure",
                format!("present ({})", present.join(", ")),
                "absent",
            )]
        })
    }

    /// Stops and disables the app, removes its unit and its home
    /// (releases, and the configuration when it lives there). Accounts,
    /// logs and data stay.
    pub(super) fn remove(&self, cx: &Context<'_>) -> Result<(), ProviderError> {
        let unit_path = self.unit_path();
        if cx.host.status(&unit_path)?.is_some() {
            // A unit systemd does not know is already stopped.
            let _ = systemctl(cx, &["disable", "--now", &self.unit_name()])?;
            cx.backups.save_from_host(cx.host, &unit_path)?;
            cx.host.remove_file(&unit_path)?;
            daemon_reload(cx)?;
        }
        if cx.host.status(&self.0.config_path())?.is_some() {
            cx.backups.save_from_host(cx.host, &self.0.config_path())?;
        }
        // The environment file may live outside the home (a moved
        // configuration folder): its values do not outlive the app.
        let environment = self.environment_path();
        if cx.host.status(&environment)?.is_some() {
            cx.backups.save_from_host(cx.host, &environment)?;
            cx.host.remove_file(&environment)?;
        }
        if cx.host.status(&self.0.home)?.is_some() {
            cx.host.remove_recursively(&self.0.home)?;
        }
        Ok(())
    }

    /// What differs for a present app: every part, labelled.
    pub(super) fn check_present(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let plan = self.plan(cx)?;
        let contents =
            GeneratedContents::new(&[&plan.unit_text, &plan.environment_text], cx.contents);
        let with_unit = Context {
            contents: &contents,
            ..*cx
        };
        let mut changes = Vec::new();
        if let Some(package) = &plan.package {
            changes.extend(labelled("runtime", PackageProvider(package).check(cx)?));
        }
        changes.extend(labelled("group", GroupProvider(&plan.group).check(cx)?));
        changes.extend(labelled("user", UserProvider(&plan.user).check(cx)?));
        for directory in &plan.directories {
            let label = format!("directory {}", directory.path);
            changes.extend(labelled(&label, DirectoryProvider(directory).check(cx)?));
        }
        changes.extend(self.check_release(cx)?);
        changes.extend(labelled(
            "current",
            SymlinkProvider(&plan.current).check(cx)?,
        ));
        if let Some(config) = &plan.config {
            changes.extend(labelled("config", FileProvider(config).check(&with_unit)?));
        }
        changes.extend(labelled(
            "environment",
            FileProvider(&plan.environment).check(&with_unit)?,
        ));
        changes.extend(labelled(
            "unit",
            FileProvider(&plan.unit).check(&with_unit)?,
        ));
        changes.extend(labelled(
            "service",
            ServiceProvider(&plan.service).check(cx)?,
        ));
        Ok(changes)
    }

    /// Applies the changes of a present app, restarts it once when they
    /// need it, and rolls back when it is not healthy afterwards.
    pub(super) fn deploy(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        let app = self.0;
        let plan = self.plan(cx)?;
        // The restart's place comes first: when none is free, nothing of
        // the deployment is made, and the next run tries again. An app that
        // is not running (a first deployment) interrupts no one: it starts
        // without a place.
        let mut window = if restarts_on(changes) && self.unit_state(cx)?.0 == "active" {
            Some(self.reserve_restart(cx)?)
        } else {
            None
        };
        let contents =
            GeneratedContents::new(&[&plan.unit_text, &plan.environment_text], cx.contents);
        let with_unit = Context {
            contents: &contents,
            ..*cx
        };

        // Runtime, accounts and folders: what the release needs first.
        if let Some(package) = &plan.package {
            let runtime = part(changes, "runtime");
            if !runtime.is_empty() {
                cx.session.packages_changed();
                PackageProvider(package).apply(&runtime, cx)?;
            }
        }
        for (label, provider) in [
            ("group", &GroupProvider(&plan.group) as &dyn Provider),
            ("user", &UserProvider(&plan.user)),
        ] {
            let own = part(changes, label);
            if !own.is_empty() {
                provider.apply(&own, cx)?;
            }
        }
        for directory in &plan.directories {
            let own = part(changes, &format!("directory {}", directory.path));
            if !own.is_empty() {
                DirectoryProvider(directory).apply(&own, cx)?;
            }
        }
        if changes.iter().any(|c| c.attribute == "release") {
            self.install_release(cx)?;
        }

        // The deployment proper: remembered first, for a rollback.
        let previous = self.previous(cx)?;
        let current = part(changes, "current");
        if !current.is_empty() {
            SymlinkProvider(&plan.current).apply(&current, cx)?;
        }
        if let Some(config) = &plan.config {
            let own = part(changes, "config");
            if !own.is_empty() {
                FileProvider(config).apply(&own, &with_unit)?;
            }
        }
        let environment = part(changes, "environment");
        if !environment.is_empty() {
            FileProvider(&plan.environment).apply(&environment, &with_unit)?;
        }
        let unit = part(changes, "unit");
        if !unit.is_empty() {
            FileProvider(&plan.unit).apply(&unit, &with_unit)?;
            cx.session.file_changed(&plan.unit.path);
        }
        daemon_reload_if_pending(cx)?;
        let enable: Vec<Change> = part(changes, "service")
            .into_iter()
            .filter(|c| c.attribute == "enabled")
            .collect();
        if !enable.is_empty() {
            ServiceProvider(&plan.service).apply(&enable, cx)?;
        }
        if !restarts_on(changes) {
            return Ok(());
        }
        if let (Some(window), Some(drain)) = (window.as_mut(), &app.drain) {
            window.drain(drain)?;
        }
        let restarted_at = clock::now();
        let problem = match self.restart_and_wait(cx)? {
            Ok(()) => {
                if let Some(window) = window {
                    window.end(true)?;
                }
                if !current.is_empty() || changes.iter().any(|c| c.attribute == "release") {
                    // The release order for pruning is the order in which
                    // releases were made current.
                    cx.host.touch(&self.release_path())?;
                }
                self.prune_releases(cx)?;
                return Ok(());
            }
            Err(problem) => problem,
        };
        let logs = self.last_log_lines(cx, restarted_at);
        let deployment_changed = [
            "release",
            "current",
            "config",
            "environment",
            "unit",
            "runtime",
        ]
        .iter()
        .any(|label| changes.iter().any(|c| part_of(&c.attribute) == *label));
        // The outcome without the second failure's details, for a
        // sensitive app's report.
        let mut healthy_again = false;
        let (mut outcome, mut safe_outcome) = match after_failure(&previous, deployment_changed) {
            AfterFailure::RollBack => {
                let release = previous.release.as_deref().unwrap_or_default();
                let rolled_back =
                    format!("rolled back to release {release} with its configuration and unit");
                match self.roll_back(cx, &previous)? {
                    Ok(()) => {
                        healthy_again = true;
                        let text = format!("{rolled_back}; it is healthy again");
                        (text.clone(), text)
                    }
                    Err(again) => (
                        format!("{rolled_back}, which is not healthy either: {again}"),
                        format!("{rolled_back}, which is not healthy either"),
                    ),
                }
            }
            AfterFailure::StopFirstDeployment => {
                let _ = systemctl(cx, &["stop", &self.unit_name()])?;
                let text = "a first deployment has nothing to roll back to; the app was stopped"
                    .to_string();
                (text.clone(), text)
            }
            AfterFailure::Report => {
                let text =
                    "nothing of its deployment changed, so nothing was rolled back".to_string();
                (text.clone(), text)
            }
        };
        // Back into its load balancers either way (their own health check
        // keeps a sick instance out of service), and the place given up.
        match window.map_or(Ok(None), |window| window.end(healthy_again)) {
            Ok(Some(note)) => {
                outcome = format!("{outcome}; {note}");
                safe_outcome = format!("{safe_outcome}; {note}");
            }
            Ok(None) => {}
            Err(error) => {
                outcome = format!("{outcome}; {error}");
                safe_outcome = format!("{safe_outcome}; {}", crate::report_error(&error, true));
            }
        }
        Err(ProviderError::FailedWithDetails {
            full: format!(
                "java_app {} is not healthy after its restart: {problem}; {outcome}\nlast log lines of {}:\n{}",
                app.name,
                self.unit_name(),
                if logs.is_empty() {
                    "(none)"
                } else {
                    logs.as_str()
                }
            ),
            safe: format!(
                "java_app {} is not healthy after its restart; {safe_outcome}",
                app.name
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_change_rolls_back_unless_there_is_nothing_to_go_back_to() {
        let earlier = Previous {
            release: Some(format!("releases/{}.jar", "b".repeat(64))),
            config: Some(b"greeting=hello\n".to_vec()),
            environment: None,
            unit: Some(b"[Service]\n".to_vec()),
        };
        assert_eq!(after_failure(&earlier, true), AfterFailure::RollBack);
        assert_eq!(after_failure(&earlier, false), AfterFailure::Report);
        assert_eq!(
            after_failure(&Previous::default(), true),
            AfterFailure::StopFirstDeployment
        );
        assert_eq!(
            after_failure(&Previous::default(), false),
            AfterFailure::Report
        );
    }

    #[test]
    fn a_sensitive_apps_environment_is_planned_into_an_owner_only_file_and_out_of_the_unit() {
        let root = tempfile::tempdir().unwrap();
        let backups = crate::BackupStore::open(root.path().join("backups")).unwrap();
        let session = crate::Session::default();
        let contents: BTreeMap<String, cms_roles::Content> = BTreeMap::new();
        let managed_paths = std::collections::BTreeSet::new();
        let host = crate::Host::new(root.path());
        let mut app = super::super::tests::app();
        app.heap = None;
        app.environment
            .insert("DB_PASSWORD".into(), "hunter2-secret".into());
        let plan = |sensitive: bool| {
            let cx = Context {
                host: &host,
                contents: &contents,
                backups: &backups,
                managed_paths: &managed_paths,
                session: &session,
                sensitive,
                restarts: &crate::UNCOORDINATED,
            };
            JavaAppProvider(&app).plan(&cx).unwrap()
        };

        let secret = plan(true);
        assert!(!secret.unit_text.contains("hunter2-secret"));
        assert!(
            secret
                .unit_text
                .contains("EnvironmentFile=/opt/orders/config/orders.env\n")
        );
        assert_eq!(secret.unit.mode, Some(Mode(0o644)));
        assert!(
            secret
                .environment_text
                .contains("DB_PASSWORD=\"hunter2-secret\"\n")
        );
        assert_eq!(secret.environment.ensure, Ensure::Present);
        assert_eq!(secret.environment.mode, Some(Mode(0o600)));
        assert_eq!(
            (
                secret.environment.owner.as_deref(),
                secret.environment.group.as_deref()
            ),
            (Some("root"), Some("root"))
        );
        let config = secret.config.map(|c| (c.group, c.mode));
        assert!(config.is_none_or(|(group, mode)| group.is_some() && mode == Some(Mode(0o640))));

        // A plain app keeps its environment in the unit, and an environment
        // file left from when it was sensitive goes.
        let plain = plan(false);
        assert!(
            plain
                .unit_text
                .contains("Environment=\"DB_PASSWORD=hunter2-secret\"\n")
        );
        assert_eq!(plain.environment.ensure, Ensure::Absent);
        assert!(restarts_on(&[Change::new(
            "environment: content",
            "(sensitive)",
            "(sensitive)"
        )]));
    }
}
