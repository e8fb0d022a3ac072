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
//! the JVM exit. When it is not healthy, [`after_failure`] decides: with an
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

use crate::service::systemctl;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use cms_roles::{
    Directory, Ensure, File, Group, JavaApp, Mode, Package, PackageEnsure, Service, ServiceEnsure,
    Symlink, User,
};
use sha2::{Digest, Sha256};

use crate::account::{GroupProvider, UserProvider};
use crate::directory::DirectoryProvider;
use crate::file::FileProvider;
use crate::host::fs::{FileAttributes, FileKind, hex, sha256_hex};
use crate::package::PackageProvider;
use crate::service::ServiceProvider;
use crate::symlink::SymlinkProvider;
use crate::{Change, CommandSpec, ContentStore, Context, Provider, ProviderError};

/// Where generated units go.
pub const UNIT_DIRECTORY: &str = "/etc/systemd/system";

/// Without a health check, the app counts as healthy once it has stayed
/// active this long after its start.
pub const SETTLE_WITHOUT_HEALTH_CHECK: Duration = Duration::from_secs(5);

/// The health timeout when the catalog gives none.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// How many of the app's log lines a failure report carries.
pub const LOG_LINES: usize = 30;

/// A download may wait this long for the next bytes.
const DOWNLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The parts whose change needs the app restarted.
const RESTARTING_PARTS: &[&str] = &["runtime", "release", "current", "config", "unit", "service"];

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

/// The app's parts as the resources the other providers manage.
struct Plan {
    package: Option<Package>,
    group: Group,
    user: User,
    directories: Vec<Directory>,
    current: Symlink,
    config: Option<File>,
    unit: File,
    unit_text: String,
    service: Service,
}

/// The catalog's contents plus the generated unit.
struct WithUnit<'a> {
    sha256: String,
    bytes: &'a [u8],
    inner: &'a dyn ContentStore,
}

impl ContentStore for WithUnit<'_> {
    fn get(&self, sha256: &str) -> Option<&[u8]> {
        if sha256 == self.sha256 {
            Some(self.bytes)
        } else {
            self.inner.get(sha256)
        }
    }
}

/// What was deployed before this run changed it: what a rollback restores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Previous {
    /// The target of `current`, when it points at a release that exists.
    pub release: Option<String>,
    pub config: Option<Vec<u8>>,
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

/// `-Xmx…` for a heap of `512m`/`2g` or a percentage of `memory_mb`.
pub fn heap_option(heap: &str, memory_mb: Option<u64>) -> Result<String, String> {
    let Some(percent) = heap.strip_suffix('%') else {
        return Ok(format!("-Xmx{heap}"));
    };
    let percent: u64 = percent
        .parse()
        .map_err(|_| format!("invalid heap percentage `{heap}`"))?;
    let memory_mb = memory_mb.ok_or_else(|| {
        format!("heap `{heap}` is a share of memory, but this host's memory is unknown (no MemTotal in /proc/meminfo)")
    })?;
    let megabytes = memory_mb * percent / 100;
    if megabytes == 0 {
        return Err(format!(
            "heap `{heap}` of {memory_mb} MiB is less than 1 MiB"
        ));
    }
    Ok(format!("-Xmx{megabytes}m"))
}

/// `MemTotal` of `/proc/meminfo` in whole MiB, as the `memory_mb` fact.
pub fn memory_mb_from_meminfo(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024)
}

/// The systemd unit of the app. `heap` is the `-Xmx` option, if any.
pub fn unit_file(app: &JavaApp, heap: Option<&str>) -> String {
    let mut out = format!(
        "# Written by cms for java_app {name}; local changes are overwritten.\n\
         [Unit]\n\
         Description=Java application {name} (managed by cms)\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         User={user}\n\
         Group={group}\n\
         WorkingDirectory={home}\n",
        name = app.name,
        user = app.user,
        group = app.group,
        home = app.home,
    );
    let mut environment: BTreeMap<&str, String> = app
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    if app.config_dir != format!("{}/config", app.home) {
        // Spring Boot finds `config/` of its working directory by itself;
        // elsewhere it is told.
        environment
            .entry("SPRING_CONFIG_ADDITIONAL_LOCATION")
            .or_insert_with(|| format!("file:{}/", app.config_dir));
    }
    for (key, value) in &environment {
        out.push_str(&format!(
            "Environment=\"{key}={}\"\n",
            escape_quoted(value, false)
        ));
    }
    let mut command = vec![app.java.clone()];
    command.extend(heap.map(str::to_string));
    command.extend(app.jvm_options.iter().cloned());
    command.push("-jar".into());
    command.push(format!("{}/current", app.home));
    command.extend(app.args.iter().cloned());
    let command: Vec<String> = command.iter().map(|arg| exec_word(arg)).collect();
    out.push_str(&format!("ExecStart={}\n", command.join(" ")));
    out.push_str(&format!(
        "Restart={}\nRestartSec={}\n",
        app.restart, app.restart_delay.0
    ));
    // The JVM exits with 143 on SIGTERM: a normal stop.
    out.push_str("SuccessExitStatus=143\nTimeoutStopSec=30\n");
    if let Some(nofile) = app.limits.nofile {
        out.push_str(&format!("LimitNOFILE={nofile}\n"));
    }
    if let Some(nproc) = app.limits.nproc {
        out.push_str(&format!("LimitNPROC={nproc}\n"));
    }
    if let Some(memory) = &app.limits.memory {
        out.push_str(&format!("MemoryMax={}\n", memory.to_ascii_uppercase()));
    }
    out.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    out
}

/// One word of `ExecStart=`: quoted when it holds anything but plain
/// characters; `%` (specifiers) and `$` (variables) are escaped always.
fn exec_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=+,@%$".contains(c));
    if plain {
        word.replace('%', "%%").replace('$', "$$")
    } else {
        format!("\"{}\"", escape_quoted(word, true))
    }
}

/// The inside of a double-quoted systemd value.
fn escape_quoted(text: &str, dollar: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            '$' if dollar => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

/// The release files to remove: every `<sha256>.jar` but `current` and the
/// `keep` most recently made current of the others (newest first by
/// modification time, then by name).
pub fn releases_to_remove(
    releases: &[(String, SystemTime)],
    current: &str,
    keep: u32,
) -> Vec<String> {
    let mut others: Vec<&(String, SystemTime)> = releases
        .iter()
        .filter(|(name, _)| name != current && is_release_name(name))
        .collect();
    others.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    others
        .into_iter()
        .skip(keep as usize)
        .map(|(name, _)| name.clone())
        .collect()
}

fn is_release_name(name: &str) -> bool {
    name.strip_suffix(".jar")
        .is_some_and(|sha| sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Writes through to a file while hashing.
struct Hashing<'a, W: Write> {
    inner: &'a mut W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl JavaAppProvider<'_> {
    fn unit_name(&self) -> String {
        format!("{}.service", self.0.name)
    }

    fn unit_path(&self) -> String {
        format!("{UNIT_DIRECTORY}/{}", self.unit_name())
    }

    fn releases_dir(&self) -> String {
        format!("{}/releases", self.0.home)
    }

    fn release_name(&self) -> String {
        format!("{}.jar", self.0.artifact_sha256)
    }

    fn release_path(&self) -> String {
        format!("{}/{}", self.releases_dir(), self.release_name())
    }

    fn current_path(&self) -> String {
        format!("{}/current", self.0.home)
    }

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
        let unit_text = unit_file(app, heap.as_deref());
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
            },
        })
    }

    /// The release part: is the verified jar at its release path?
    fn check_release(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        let path = self.release_path();
        let wanted = &self.0.artifact_sha256;
        let to = match &self.0.artifact_url {
            Some(url) => format!("{wanted} from {url}"),
            None => wanted.clone(),
        };
        match cx.host.status(&path)? {
            None => Ok(vec![Change::new("release", "absent", to)]),
            Some(status) if status.kind == FileKind::File => {
                let current = cx.host.file_sha256(&path)?;
                if &current == wanted {
                    Ok(Vec::new())
                } else {
                    Ok(vec![Change::new(
                        "release",
                        format!("damaged (sha256 {current})"),
                        to,
                    )])
                }
            }
            Some(status) => Err(ProviderError::Failed(format!(
                "Failed to manage release {path}: a {} is in the way",
                status.kind.describe()
            ))),
        }
    }

    /// Puts the verified jar at its release path, or fails changing nothing.
    fn install_release(&self, cx: &Context<'_>) -> Result<(), ProviderError> {
        let app = self.0;
        let path = self.release_path();
        let attributes = FileAttributes {
            mode: Some(0o644),
            uid: None,
            gid: None,
        };
        let Some(url) = &app.artifact_url else {
            let bytes = cx
                .contents
                .get(&app.artifact_sha256)
                .ok_or_else(|| ProviderError::MissingContent(app.artifact_sha256.clone()))?;
            cx.host.write_file_atomically(&path, bytes, attributes)?;
            return Ok(());
        };
        // Into a temporary file next to the release; dropped (removed)
        // unless the bytes are the ones the catalog names.
        let mut file = cx.host.create_atomic_file(&path, attributes)?;
        let mut hashing = Hashing {
            inner: &mut file,
            hasher: Sha256::new(),
        };
        let status = cx.host.http_get(url, DOWNLOAD_IDLE_TIMEOUT, &mut hashing)?;
        if !(200..300).contains(&status) {
            return Err(ProviderError::Failed(format!(
                "Failed to download the artifact of {} from {url}: the server answered {status}; nothing was changed",
                app.name
            )));
        }
        let got = hex(&hashing.hasher.finalize());
        if got != app.artifact_sha256 {
            return Err(ProviderError::Failed(format!(
                "Failed to verify the artifact of {} from {url}: its sha256 is {got}, not the {} the catalog names; it was not used and nothing was changed",
                app.name, app.artifact_sha256
            )));
        }
        file.commit()?;
        Ok(())
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
            unit: read(&self.unit_path())?,
        })
    }

    fn daemon_reload(&self, cx: &Context<'_>) -> Result<(), ProviderError> {
        let output = systemctl(cx, &["daemon-reload"])?;
        if !output.success() {
            return Err(ProviderError::Failed(format!(
                "`systemctl daemon-reload` failed:\n{}",
                output.tail(10)
            )));
        }
        cx.session.daemon_reload_pending.set(false);
        Ok(())
    }

    /// `ActiveState`, `SubState` and `NRestarts` of the unit.
    fn unit_state(&self, cx: &Context<'_>) -> Result<(String, String, u64), ProviderError> {
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

    /// Restarts the app and waits until it is healthy; `Err` says why not.
    fn restart_and_wait(&self, cx: &Context<'_>) -> Result<Result<(), String>, ProviderError> {
        let unit = self.unit_name();
        let output = systemctl(cx, &["restart", &unit])?;
        if !output.success() {
            return Ok(Err(format!(
                "`systemctl restart {unit}` failed: {}",
                output.tail(5).trim()
            )));
        }
        let (_, _, restarts_at_start) = self.unit_state(cx)?;
        let health = self.0.health.as_ref();
        let timeout = health
            .and_then(|h| h.timeout)
            .map_or(DEFAULT_HEALTH_TIMEOUT, |t| Duration::from_secs(t.0));
        let started = Instant::now();
        let mut last_problem = String::from("no answer yet");
        loop {
            let (active, sub, restarts) = self.unit_state(cx)?;
            if active == "failed"
                || active == "inactive"
                || sub == "auto-restart"
                || restarts > restarts_at_start
            {
                return Ok(Err(format!(
                    "the JVM exited (systemd: {active}/{sub}) {:.1} s after the start",
                    started.elapsed().as_secs_f64()
                )));
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
                return Ok(Err(format!(
                    "not healthy within {} s ({last_problem})",
                    limit.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn probe(&self, cx: &Context<'_>, health: &cms_roles::HealthCheck) -> Result<(), String> {
        let attempt = Duration::from_secs(2);
        if let Some(url) = &health.http {
            match cx.host.http_get(url, attempt, &mut std::io::sink()) {
                Ok(status) if (200..300).contains(&status) => Ok(()),
                Ok(status) => Err(format!("{url} answered {status}")),
                Err(error) => Err(crate::error_text(&error)),
            }
        } else if let Some(port) = health.tcp {
            let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            std::net::TcpStream::connect_timeout(&address, attempt)
                .map(drop)
                .map_err(|e| format!("port {port} does not accept connections: {e}"))
        } else {
            Ok(())
        }
    }

    fn last_log_lines(&self, cx: &Context<'_>, since: SystemTime) -> String {
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
    ) -> Result<Result<(), String>, ProviderError> {
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
        self.daemon_reload(cx)?;
        self.restart_and_wait(cx)
    }

    fn prune_releases(&self, cx: &Context<'_>) -> Result<(), ProviderError> {
        let mut releases = Vec::new();
        for entry in cx.host.list_directory(&self.releases_dir())? {
            if entry.status.kind != FileKind::File {
                continue;
            }
            let name = entry
                .path
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            releases.push((name, cx.host.modified(&entry.path)?));
        }
        for name in releases_to_remove(&releases, &self.release_name(), self.0.keep_releases) {
            cx.host
                .remove_file(&format!("{}/{name}", self.releases_dir()))?;
        }
        Ok(())
    }

    fn check_absent(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
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
    fn remove(&self, cx: &Context<'_>) -> Result<(), ProviderError> {
        let unit_path = self.unit_path();
        if cx.host.status(&unit_path)?.is_some() {
            // A unit systemd does not know is already stopped.
            let _ = systemctl(cx, &["disable", "--now", &self.unit_name()])?;
            cx.backups.save_from_host(cx.host, &unit_path)?;
            cx.host.remove_file(&unit_path)?;
            self.daemon_reload(cx)?;
        }
        if cx.host.status(&self.0.config_path())?.is_some() {
            cx.backups.save_from_host(cx.host, &self.0.config_path())?;
        }
        if cx.host.status(&self.0.home)?.is_some() {
            cx.host.remove_recursively(&self.0.home)?;
        }
        Ok(())
    }
}

/// Prefixes a part's changes with its name.
fn labelled(label: &str, changes: Vec<Change>) -> Vec<Change> {
    changes
        .into_iter()
        .map(|mut change| {
            change.attribute = format!("{label}: {}", change.attribute);
            change
        })
        .collect()
}

/// The changes of one part, with the part's name taken off again.
fn part(changes: &[Change], label: &str) -> Vec<Change> {
    let prefix = format!("{label}: ");
    changes
        .iter()
        .filter_map(|change| {
            change
                .attribute
                .strip_prefix(&prefix)
                .map(|attribute| Change {
                    attribute: attribute.to_string(),
                    ..change.clone()
                })
        })
        .collect()
}

impl Provider for JavaAppProvider<'_> {
    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        if self.0.ensure == Ensure::Absent {
            return self.check_absent(cx);
        }
        let plan = self.plan(cx)?;
        let contents = WithUnit {
            sha256: plan.unit.content_sha256.clone().unwrap_or_default(),
            bytes: plan.unit_text.as_bytes(),
            inner: cx.contents,
        };
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
            "unit",
            FileProvider(&plan.unit).check(&with_unit)?,
        ));
        changes.extend(labelled(
            "service",
            ServiceProvider(&plan.service).check(cx)?,
        ));
        Ok(changes)
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        if self.0.ensure == Ensure::Absent {
            return self.remove(cx);
        }
        let app = self.0;
        let plan = self.plan(cx)?;
        let contents = WithUnit {
            sha256: plan.unit.content_sha256.clone().unwrap_or_default(),
            bytes: plan.unit_text.as_bytes(),
            inner: cx.contents,
        };
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
        let unit = part(changes, "unit");
        if !unit.is_empty() {
            FileProvider(&plan.unit).apply(&unit, &with_unit)?;
            cx.session.file_changed(&plan.unit.path);
        }
        if cx.session.daemon_reload_pending() {
            self.daemon_reload(cx)?;
        }
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
        let restarted_at = SystemTime::now();
        let problem = match self.restart_and_wait(cx)? {
            Ok(()) => {
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
        let deployment_changed = ["release", "current", "config", "unit", "runtime"]
            .iter()
            .any(|label| changes.iter().any(|c| part_of(&c.attribute) == *label));
        let outcome = match after_failure(&previous, deployment_changed) {
            AfterFailure::RollBack => match self.roll_back(cx, &previous)? {
                Ok(()) => format!(
                    "rolled back to release {} with its configuration and unit; it is healthy again",
                    previous.release.as_deref().unwrap_or_default()
                ),
                Err(again) => format!(
                    "rolled back to release {} with its configuration and unit, which is not healthy either: {again}",
                    previous.release.as_deref().unwrap_or_default()
                ),
            },
            AfterFailure::StopFirstDeployment => {
                let _ = systemctl(cx, &["stop", &self.unit_name()])?;
                "a first deployment has nothing to roll back to; the app was stopped".to_string()
            }
            AfterFailure::Report => {
                "nothing of its deployment changed, so nothing was rolled back".to_string()
            }
        };
        Err(ProviderError::Failed(format!(
            "java_app {} is not healthy after its restart: {problem}; {outcome}\nlast log lines of {}:\n{}",
            app.name,
            self.unit_name(),
            if logs.is_empty() {
                "(none)"
            } else {
                logs.as_str()
            }
        )))
    }

    fn refresh(&self, cx: &Context<'_>) -> Result<Option<String>, ProviderError> {
        if self.0.ensure == Ensure::Absent {
            return Ok(None);
        }
        if cx.session.daemon_reload_pending() {
            self.daemon_reload(cx)?;
        }
        let restarted_at = SystemTime::now();
        match self.restart_and_wait(cx)? {
            Ok(()) => Ok(Some(format!(
                "restarted {}; it is healthy",
                self.unit_name()
            ))),
            Err(problem) => Err(ProviderError::Failed(format!(
                "java_app {} is not healthy after its restart: {problem}\nlast log lines of {}:\n{}",
                self.0.name,
                self.unit_name(),
                self.last_log_lines(cx, restarted_at)
            ))),
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
mod tests {
    use super::*;
    use cms_roles::{ConfigFormat, HealthCheck, Limits, RestartPolicy, Seconds};

    fn app() -> JavaApp {
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
            limits: Limits {
                nofile: Some(65536),
                nproc: None,
                memory: Some("2g".into()),
            },
        }
    }

    #[test]
    fn the_unit_runs_the_current_release_with_heap_options_environment_and_limits() {
        let unit = unit_file(&app(), Some("-Xmx1024m"));
        assert_eq!(
            unit,
            "# Written by cms for java_app orders; local changes are overwritten.\n\
             [Unit]\n\
             Description=Java application orders (managed by cms)\n\
             Wants=network-online.target\n\
             After=network-online.target\n\
             \n\
             [Service]\n\
             Type=simple\n\
             User=orders\n\
             Group=orders\n\
             WorkingDirectory=/opt/orders\n\
             Environment=\"SPRING_PROFILES_ACTIVE=prod\"\n\
             ExecStart=/usr/bin/java -Xmx1024m -XX:+UseG1GC \"-Dgreeting=hello world\" -jar /opt/orders/current --spring.main.banner-mode=off\n\
             Restart=on-failure\n\
             RestartSec=5\n\
             SuccessExitStatus=143\n\
             TimeoutStopSec=30\n\
             LimitNOFILE=65536\n\
             MemoryMax=2G\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n"
        );
    }

    #[test]
    fn unit_words_escape_quotes_specifiers_and_variables() {
        assert_eq!(exec_word("-Dx=100%"), "-Dx=100%%");
        assert_eq!(exec_word("$HOME"), "$$HOME");
        assert_eq!(exec_word("say \"hi\""), "\"say \\\"hi\\\"\"");
        assert_eq!(exec_word(""), "\"\"");
        assert_eq!(exec_word("a;b"), "\"a;b\"");
    }

    #[test]
    fn a_config_folder_outside_the_home_is_given_to_spring() {
        let mut moved = app();
        moved.config_dir = "/etc/orders".into();
        assert!(
            unit_file(&moved, None)
                .contains("Environment=\"SPRING_CONFIG_ADDITIONAL_LOCATION=file:/etc/orders/\"\n")
        );
        assert!(!unit_file(&app(), None).contains("SPRING_CONFIG"));
    }

    #[test]
    fn a_heap_percentage_is_that_share_of_memory_rounded_down_to_whole_mib() {
        assert_eq!(heap_option("50%", Some(7851)).as_deref(), Ok("-Xmx3925m"));
        assert_eq!(heap_option("60%", Some(4096)).as_deref(), Ok("-Xmx2457m"));
        assert_eq!(heap_option("100%", Some(512)).as_deref(), Ok("-Xmx512m"));
        assert_eq!(heap_option("512m", None).as_deref(), Ok("-Xmx512m"));
        assert!(heap_option("1%", Some(50)).is_err());
        assert!(heap_option("50%", None).is_err());
        assert_eq!(
            memory_mb_from_meminfo("MemTotal:        8039836 kB\nMemFree: 1 kB\n"),
            Some(7851)
        );
        assert_eq!(memory_mb_from_meminfo("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn pruning_keeps_the_current_release_and_the_most_recently_current_others() {
        let at = |seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        let name = |c: char| format!("{}.jar", c.to_string().repeat(64));
        let releases = vec![
            (name('a'), at(10)),
            (name('b'), at(40)),
            (name('c'), at(30)),
            (name('d'), at(20)),
            (name('e'), at(50)),
            (".cms-tmp-1-2-x.jar".to_string(), at(1)),
            ("notes.txt".to_string(), at(1)),
        ];
        // `b` is current again after a rollback: `e`, newer, is not
        // current, yet kept as one of the two most recent others.
        assert_eq!(
            releases_to_remove(&releases, &name('b'), 2),
            vec![name('d'), name('a')]
        );
        assert_eq!(
            releases_to_remove(&releases, &name('b'), 10),
            Vec::<String>::new()
        );
        assert_eq!(releases_to_remove(&releases, &name('e'), 0).len(), 4);
    }

    #[test]
    fn a_failed_change_rolls_back_unless_there_is_nothing_to_go_back_to() {
        let earlier = Previous {
            release: Some(format!("releases/{}.jar", "b".repeat(64))),
            config: Some(b"greeting=hello\n".to_vec()),
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
