//! Resource providers that run on an instance: each one checks what differs
//! between the catalog and the host, and applies only that.
//!
//! Every provider follows query → diff → apply: [`Provider::check`] returns
//! the list of [`Change`]s (empty when the host already matches), and
//! [`Provider::apply`] makes exactly those changes. The list is the dry-run
//! output and the report, so a `--noop` run shows what a real run would do.
//!
//! All I/O goes through [`Host`] (`host/`): its filesystem root is a
//! parameter, so tests converge into a temporary directory.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cms_roles::{Content, ResourceKind};
use serde::{Deserialize, Serialize};

pub mod backup;
pub mod host;

pub mod java_app;
pub mod package;
pub mod restarts;
pub mod session;

mod account;
mod directory;
mod edit;
mod exec;
mod file;
mod group;
mod repository;
mod service;
mod symlink;
mod user;

mod authorized_keys;
mod java_truststore;
mod kernel_module;
mod limits;
mod mount;
mod parts;
mod sysctl;
mod systemd;
mod systemd_dropin;
mod systemd_timer;

pub use backup::{BackupEntry, BackupError, BackupStore, Restored};
pub use file::require_parent_directory;
pub use host::fs::{FileAttributes, FileIdentity, FileKind, FileStatus};
pub use host::{CommandOutput, CommandSpec, Host, HostError};
pub use mount::unescape_mountinfo_field;
pub use restarts::{RestartWindow, Restarts, UNCOORDINATED};
pub use session::Session;

/// One difference between what the catalog asks for and what the host has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// What differs: `ensure`, `content`, `mode`, `owner`, `group`,
    /// `target`, `state`, `enabled`, `version`, `run`, ….
    pub attribute: String,
    /// The host's value, in words (`absent`, `0644`, `stopped`).
    pub from: String,
    /// The catalog's value.
    pub to: String,
    /// A unified diff, for content changes of text files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

impl Change {
    pub fn new(
        attribute: impl Into<String>,
        from: impl Into<String>,
        to: impl Into<String>,
    ) -> Change {
        Change {
            attribute: attribute.into(),
            from: from.into(),
            to: to.into(),
            diff: None,
        }
    }

    pub fn with_diff(mut self, diff: impl Into<String>) -> Change {
        self.diff = Some(diff.into());
        self
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_withheld() {
            write!(f, "{} changed {SENSITIVE}", self.attribute)
        } else {
            write!(f, "{}: {} -> {}", self.attribute, self.from, self.to)
        }
    }
}

/// What a sensitive resource shows in place of a value: a content change
/// reads `content changed (sensitive)`.
pub const SENSITIVE: &str = "(sensitive)";

/// The attributes whose values a sensitive resource still shows: words and
/// numbers about the object (`present`, `0600`, `root`, `running`), never
/// its content. Directory children's `owner of <path>` and `mode of <path>`
/// count with them, as do a java_app's parts (`service: state`).
const SHOWN_WHEN_SENSITIVE: &[&str] = &["ensure", "mode", "owner", "group", "state", "enabled"];

impl Change {
    /// Whether this change had its values withheld ([`redact_changes`]).
    pub fn is_withheld(&self) -> bool {
        self.from == SENSITIVE && self.to == SENSITIVE && self.diff.is_none()
    }

    /// Whether this attribute's values may be shown for a sensitive
    /// resource.
    fn shown_when_sensitive(&self) -> bool {
        // A part's change (`service: state`) counts as its attribute.
        let attribute = self.attribute.rsplit(": ").next().unwrap_or_default();
        let attribute = attribute.split(" of ").next().unwrap_or_default();
        SHOWN_WHEN_SENSITIVE.contains(&attribute)
    }
}

/// Takes every value out of a sensitive resource's changes: no diff ever,
/// and `from`/`to` become [`SENSITIVE`] except for the attributes that say
/// nothing about content (ensure, mode, owner, group, state, enabled). The
/// attribute names stay, so the report still says *what* changed. The
/// converge engine calls this for every sensitive resource, whatever its
/// type, so a provider cannot forget it.
pub fn redact_changes(changes: &mut [Change]) {
    for change in changes {
        change.diff = None;
        if !change.shown_when_sensitive() {
            change.from = SENSITIVE.to_string();
            change.to = SENSITIVE.to_string();
        }
    }
}

/// What a refresh of a sensitive resource reports, in place of the
/// provider's words (an exec's would name its command).
pub fn redacted_refresh(noop: bool) -> String {
    if noop {
        format!("would refresh {SENSITIVE}")
    } else {
        format!("refreshed {SENSITIVE}")
    }
}

/// The error text a report shows: [`error_text`], or for a sensitive
/// resource only what cannot carry one of its values — a path and the
/// system's error, an account name — and otherwise a generic line. A
/// command line, its output, a URL, a content hash or a provider's own
/// words (which may quote a rendered field) are withheld.
pub fn report_error(error: &ProviderError, sensitive: bool) -> String {
    if !sensitive {
        return error_text(error);
    }
    match error {
        ProviderError::Host(host) => withheld_host_error(host),
        ProviderError::Backup(backup::BackupError::Host(host)) => withheld_host_error(host),
        // Paths, times and hashes of backups of the host's old content.
        ProviderError::Backup(backup) => match backup {
            backup::BackupError::Corrupt { path, .. } => {
                format!(
                    "Failed to verify a backup of {path} (hashes withheld: the resource is {SENSITIVE})"
                )
            }
            other => error_text(other),
        },
        ProviderError::MissingContent(_) => format!(
            "Failed to find this resource's content in the catalog (hash withheld: the resource is {SENSITIVE})"
        ),
        ProviderError::Failed(_) => withheld_error(),
        ProviderError::FailedWithDetails { safe, .. } => {
            format!("{safe} (details withheld: the resource is {SENSITIVE})")
        }
    }
}

/// The generic error of a sensitive resource.
pub fn withheld_error() -> String {
    format!(
        "Failed; the details are withheld because they may carry the resource's values (the resource is {SENSITIVE})"
    )
}

fn withheld_host_error(error: &HostError) -> String {
    match error {
        HostError::Io { .. }
        | HostError::UnknownAccount { .. }
        | HostError::SymlinkInPath { .. } => error_text(error),
        HostError::Spawn { source, .. } => format!(
            "Failed to run a command (command withheld: the resource is {SENSITIVE}): {source}"
        ),
        HostError::Timeout { seconds, .. } => format!(
            "A command did not finish within {seconds} s and was killed (command withheld: the resource is {SENSITIVE})"
        ),
        HostError::Http { .. } => {
            format!("Failed to fetch a URL (URL and answer withheld: the resource is {SENSITIVE})")
        }
    }
}

/// Why a provider could not check or apply a resource.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Backup(#[from] backup::BackupError),
    /// The catalog refers to content the agent does not have.
    #[error("Failed to find content {0} in the catalog")]
    MissingContent(String),
    /// Anything else, stated for the operator.
    #[error("{0}")]
    Failed(String),
    /// A failure whose whole text may quote values (a command line, its
    /// output, an app's log lines) but which can also be told without
    /// them: `safe` is what a sensitive resource's report shows.
    #[error("{full}")]
    FailedWithDetails { full: String, safe: String },
}

/// An error with its causes, `: `-separated, as reports show it.
pub fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Where providers find file contents by sha256.
pub trait ContentStore {
    fn get(&self, sha256: &str) -> Option<&[u8]>;
}

impl ContentStore for BTreeMap<String, Content> {
    fn get(&self, sha256: &str) -> Option<&[u8]> {
        BTreeMap::get(self, sha256).map(|c| c.0.as_slice())
    }
}

/// What a provider may use besides its resource.
pub struct Context<'a> {
    pub host: &'a Host,
    pub contents: &'a dyn ContentStore,
    pub backups: &'a BackupStore,
    /// Every path managed by a file, directory or symlink resource of the
    /// catalog: what a purging directory keeps.
    pub managed_paths: &'a BTreeSet<String>,
    /// What the run has learned so far (installed packages, pending
    /// daemon-reload).
    pub session: &'a Session,
    /// The resource being converged is sensitive (it used a secret): a
    /// provider reads no old content for a diff and writes the values
    /// owner-only. The engine redacts its changes and errors in any case
    /// ([`redact_changes`], [`report_error`]).
    pub sensitive: bool,
    /// Whom to ask before a restart ([`restarts`]): the server's restart
    /// budget and the load balancers to drain.
    pub restarts: &'a dyn Restarts,
}

/// A resource that can be checked and applied.
pub trait Provider {
    /// What differs; empty when the host already matches. Never changes
    /// the host.
    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError>;

    /// Makes the changes `check` returned, and only those.
    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError>;

    /// Reacts to a notification from a changed resource (a service restarts,
    /// an exec runs). Returns what it did, or `None` for types that do not
    /// react. Called at most once per run, after all notifiers.
    fn refresh(&self, _cx: &Context<'_>) -> Result<Option<String>, ProviderError> {
        Ok(None)
    }

    /// What `refresh` would do, for a `--noop` run. May look at the host
    /// (an exec's guards), never change it.
    fn refresh_description(&self, _cx: &Context<'_>) -> Result<Option<String>, ProviderError> {
        Ok(None)
    }

    /// The packages whose installed version the run's first package query
    /// reads, so that one query covers the whole catalog. No default: a
    /// provider that installs something says so.
    fn packages(&self) -> Vec<String>;

    /// Whether `changes`, just made by this run, already did what a
    /// notification asks (a service started, an application restarted, an
    /// exec ran), so that the notification needs no refresh. No default:
    /// a wrong `false` restarts twice, a wrong `true` never.
    fn refreshed_by(&self, changes: &[Change]) -> bool;
}

/// The provider of a catalog resource: the registry of providers, one line
/// per kind. The match is exhaustive, so a kind added to `cms_roles` does not
/// build until it has a provider here.
pub fn provider(kind: &ResourceKind) -> Box<dyn Provider + '_> {
    match kind {
        ResourceKind::File(f) => Box::new(file::FileProvider(f)),
        ResourceKind::Directory(d) => Box::new(directory::DirectoryProvider(d)),
        ResourceKind::Symlink(s) => Box::new(symlink::SymlinkProvider(s)),
        ResourceKind::Exec(e) => Box::new(exec::ExecProvider(e)),
        ResourceKind::Package(p) => Box::new(package::PackageProvider(p)),
        ResourceKind::Service(s) => Box::new(service::ServiceProvider(s)),
        ResourceKind::Repository(r) => Box::new(repository::RepositoryProvider(r)),
        ResourceKind::User(u) => Box::new(user::UserProvider(u)),
        ResourceKind::Group(g) => Box::new(group::GroupProvider(g)),
        ResourceKind::JavaApp(j) => Box::new(java_app::JavaAppProvider(j)),
        ResourceKind::Line(l) => Box::new(edit::EditProvider::new(&l.0, "line", edit::line::edit)),
        ResourceKind::Ini(i) => Box::new(edit::EditProvider::new(&i.0, "ini", edit::ini::edit)),
        ResourceKind::Properties(p) => Box::new(edit::EditProvider::new(
            &p.0,
            "properties",
            edit::properties::edit,
        )),
        ResourceKind::Json(j) => Box::new(edit::EditProvider::new(&j.0, "json", edit::json::edit)),
        ResourceKind::Yaml(y) => Box::new(edit::EditProvider::new(&y.0, "yaml", edit::yaml::edit)),
        ResourceKind::SystemdTimer(t) => Box::new(systemd_timer::SystemdTimerProvider(t)),
        ResourceKind::SystemdDropin(d) => Box::new(systemd_dropin::dropin_provider(d)),
        ResourceKind::Mount(m) => Box::new(mount::MountProvider(m)),
        ResourceKind::Limits(l) => Box::new(limits::limits_provider(l)),
        ResourceKind::Sysctl(s) => Box::new(sysctl::SysctlProvider(s)),
        ResourceKind::KernelModule(k) => Box::new(kernel_module::KernelModuleProvider(k)),
        ResourceKind::AuthorizedKeys(a) => Box::new(authorized_keys::AuthorizedKeysProvider(a)),
        ResourceKind::JavaTruststore(t) => Box::new(java_truststore::JavaTruststoreProvider(t)),
    }
}

/// The packages a resource has read in the run's first package query (see
/// [`Provider::packages`]).
pub fn packages_of(kind: &ResourceKind) -> Vec<String> {
    provider(kind).packages()
}

/// Whether a resource's own changes in this run already did what a
/// notification asks (see [`Provider::refreshed_by`]).
pub fn refreshed_by_own_change(kind: &ResourceKind, changes: &[Change]) -> bool {
    provider(kind).refreshed_by(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_attribute_names_and_words_and_drops_every_value_and_diff() {
        let mut changes = vec![
            Change::new("content", "sha256:aa", "sha256:bb").with_diff("-old\n+new\n"),
            Change::new("ensure", "absent", "present").with_diff("+secret\n"),
            Change::new("mode", "0644", "0600"),
            Change::new("owner of /srv/x", "root", "app"),
            Change::new("service: state", "stopped", "running"),
            Change::new("config: content", "sha256:aa", "sha256:bb"),
            Change::new("run", "not run", "curl -u admin:hunter2 …"),
        ];
        redact_changes(&mut changes);
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "content changed (sensitive)",
                "ensure: absent -> present",
                "mode: 0644 -> 0600",
                "owner of /srv/x: root -> app",
                "service: state: stopped -> running",
                "config: content changed (sensitive)",
                "run changed (sensitive)",
            ]
        );
        assert!(changes.iter().all(|c| c.diff.is_none()));
    }

    #[test]
    fn a_sensitive_resources_error_keeps_paths_and_drops_commands_and_provider_words() {
        let spawn = ProviderError::Host(HostError::Timeout {
            command: "mysql -phunter2".into(),
            seconds: 5,
        });
        let failed = ProviderError::Failed("`echo hunter2` exited with status 1".into());
        let detailed = ProviderError::FailedWithDetails {
            full: "`echo hunter2` exited with status 1".into(),
            safe: "the command exited with status 1".into(),
        };
        assert_eq!(
            report_error(&detailed, true),
            "the command exited with status 1 (details withheld: the resource is (sensitive))"
        );
        let io = ProviderError::Host(HostError::Io {
            action: "write",
            path: "/etc/db.conf".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        });
        for error in [&spawn, &failed, &detailed] {
            assert!(!report_error(error, true).contains("hunter2"));
            assert!(report_error(error, false).contains("hunter2"));
        }
        assert!(report_error(&io, true).starts_with("Failed to write /etc/db.conf: "));
    }
}
