//! The resource types: what a role declares and what a catalog carries.
//!
//! Most types are the same in both places. Three differ because the compiler
//! resolves something in them: a [`FileSpec`] names its content (literal,
//! `files/` or `templates/`) and becomes a [`File`] carrying a content hash;
//! a [`RepositorySpec`] names its signing key file; a [`JavaAppSpec`] names
//! its artifact and configuration. All input types refuse unknown fields.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The resource types, as named in role files (`[[package]]`) and
/// references (`package:nginx`).
pub const RESOURCE_TYPES: &[&str] = &[
    "package",
    "file",
    "directory",
    "symlink",
    "service",
    "user",
    "group",
    "exec",
    "repository",
    "java_app",
];

/// Types whose name in a reference is a path.
pub fn is_path_type(type_name: &str) -> bool {
    matches!(type_name, "file" | "directory" | "symlink")
}

/// Types that do something when notified.
pub fn is_refreshable_type(type_name: &str) -> bool {
    matches!(type_name, "service" | "exec" | "java_app")
}

/// A resolved resource of a catalog, tagged with its type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// A catalog holds tens to thousands of these, once: boxing the largest
// variant would save little and change every match on it.
#[allow(clippy::large_enum_variant)]
pub enum ResourceKind {
    Package(Package),
    File(File),
    Directory(Directory),
    Symlink(Symlink),
    Service(Service),
    User(User),
    Group(Group),
    Exec(Exec),
    Repository(PackageRepository),
    JavaApp(JavaApp),
}

impl ResourceKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ResourceKind::Package(_) => "package",
            ResourceKind::File(_) => "file",
            ResourceKind::Directory(_) => "directory",
            ResourceKind::Symlink(_) => "symlink",
            ResourceKind::Service(_) => "service",
            ResourceKind::User(_) => "user",
            ResourceKind::Group(_) => "group",
            ResourceKind::Exec(_) => "exec",
            ResourceKind::Repository(_) => "repository",
            ResourceKind::JavaApp(_) => "java_app",
        }
    }

    /// The name part of the reference: the path for file-like types.
    pub fn name(&self) -> &str {
        match self {
            ResourceKind::Package(r) => &r.name,
            ResourceKind::File(r) => &r.path,
            ResourceKind::Directory(r) => &r.path,
            ResourceKind::Symlink(r) => &r.path,
            ResourceKind::Service(r) => &r.name,
            ResourceKind::User(r) => &r.name,
            ResourceKind::Group(r) => &r.name,
            ResourceKind::Exec(r) => &r.name,
            ResourceKind::Repository(r) => &r.name,
            ResourceKind::JavaApp(r) => &r.name,
        }
    }

    /// `type:name`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.type_name(), self.name())
    }
}

/// `present` or `absent`, for everything that simply exists or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ensure {
    #[default]
    Present,
    Absent,
}

/// What state a package must be in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PackageEnsure {
    /// Installed, any version (`present` or `installed`).
    #[default]
    Present,
    /// Removed (`absent`).
    Absent,
    /// Removed with its configuration files (`purged`).
    Purged,
    /// The newest version the package sources offer (`latest`).
    Latest,
    /// Exactly this version, e.g. `1.22.1-9`.
    Version(String),
}

impl fmt::Display for PackageEnsure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackageEnsure::Present => f.write_str("present"),
            PackageEnsure::Absent => f.write_str("absent"),
            PackageEnsure::Purged => f.write_str("purged"),
            PackageEnsure::Latest => f.write_str("latest"),
            PackageEnsure::Version(v) => f.write_str(v),
        }
    }
}

impl Serialize for PackageEnsure {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PackageEnsure {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(match text.as_str() {
            "present" | "installed" => PackageEnsure::Present,
            "absent" => PackageEnsure::Absent,
            "purged" => PackageEnsure::Purged,
            "latest" => PackageEnsure::Latest,
            version => {
                let valid = version.chars().next().is_some_and(|c| c.is_ascii_digit())
                    && version
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".+-~:_".contains(c));
                if !valid {
                    return Err(serde::de::Error::custom(format!(
                        "invalid package ensure `{version}`: expected present, absent, purged, latest or a version such as 1.22.1-9"
                    )));
                }
                PackageEnsure::Version(version.to_string())
            }
        })
    }
}

/// Unix permission bits, written in roles as an octal string (`"0644"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ModeVisitor;
        impl serde::de::Visitor<'_> for ModeVisitor {
            type Value = Mode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an octal mode as a string, e.g. \"0644\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Mode, E> {
                let digits = text.strip_prefix("0o").unwrap_or(text);
                if digits.is_empty() || digits.len() > 4 {
                    return Err(E::custom(format!(
                        "invalid mode `{text}`: expected 3 or 4 octal digits, e.g. \"0644\""
                    )));
                }
                u32::from_str_radix(digits, 8).map(Mode).map_err(|_| {
                    E::custom(format!(
                        "invalid mode `{text}`: expected octal digits 0-7, e.g. \"0644\""
                    ))
                })
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Mode, E> {
                Err(E::custom(format!(
                    "mode {value} is a number: write it as a string, e.g. mode = \"0{value}\", so it is read as octal"
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Mode, E> {
                self.visit_i64(value as i64)
            }
        }
        deserializer.deserialize_any(ModeVisitor)
    }
}

/// A duration in seconds, written as an integer (seconds) or a string with a
/// unit: `"30s"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub u64);

impl Serialize for Seconds {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecondsVisitor;
        impl serde::de::Visitor<'_> for SecondsVisitor {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration: seconds as an integer, or a string like \"30s\", \"5m\", \"1h\"",
                )
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Seconds, E> {
                Ok(Seconds(value))
            }
            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<Seconds, E> {
                u64::try_from(value)
                    .map(Seconds)
                    .map_err(|_| E::custom(format!("duration {value} is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Seconds, E> {
                parse_duration(text).map(Seconds).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SecondsVisitor)
    }
}

/// Parses `"90"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` into seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| {
        format!("invalid duration `{text}`: expected a number with an optional unit s, m, h or d, e.g. \"30s\"")
    })?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "invalid duration `{text}`: unknown unit `{unit}`, expected s, m, h or d"
            ));
        }
    };
    Ok(number * factor)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    #[serde(default)]
    pub ensure: PackageEnsure,
}

/// A file as a role declares it: its content comes from exactly one of
/// `content`, `source` or `template`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    #[serde(default)]
    pub ensure: Ensure,
    /// Literal content, used as written (never rendered).
    pub content: Option<String>,
    /// A path under `files/`.
    pub source: Option<String>,
    /// A path under `templates/`, rendered with handlebars.
    pub template: Option<String>,
    /// Extra values for the template, available as `vars.*`.
    pub vars: Option<BTreeMap<String, serde_json::Value>>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<Mode>,
}

/// A file as a catalog carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub path: String,
    pub ensure: Ensure,
    /// sha256 of the content; `None` when only metadata is managed or the
    /// file must be absent.
    pub content_sha256: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<Mode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub path: String,
    #[serde(default)]
    pub ensure: Ensure,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<Mode>,
    /// Apply owner, group and mode to everything below, as Puppet's
    /// `recurse`.
    #[serde(default)]
    pub recurse: bool,
    /// Remove what is below the directory and not declared in the catalog.
    #[serde(default)]
    pub purge: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Symlink {
    pub path: String,
    pub target: Option<String>,
    #[serde(default)]
    pub ensure: Ensure,
    pub owner: Option<String>,
    pub group: Option<String>,
    /// Accepted for symmetry with files; Linux ignores the permission bits
    /// of a symbolic link, so it is never checked.
    pub mode: Option<Mode>,
}

/// `running` or `stopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceEnsure {
    Running,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// Left alone when not given.
    pub ensure: Option<ServiceEnsure>,
    /// Start at boot; left alone when not given.
    pub enable: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    pub uid: Option<u32>,
    /// The primary group.
    pub group: Option<String>,
    /// Supplementary groups; the user is in exactly these.
    #[serde(default)]
    pub groups: Vec<String>,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub comment: Option<String>,
    /// A system account (low uid, no aging).
    #[serde(default)]
    pub system: bool,
    /// Create the home directory.
    #[serde(default)]
    pub manage_home: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    pub gid: Option<u32>,
    #[serde(default)]
    pub system: bool,
}

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

/// The package manager family a repository is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepositoryFormat {
    #[default]
    Apt,
    Yum,
}

/// A package source as a role declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySpec {
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    #[serde(default)]
    pub format: RepositoryFormat,
    /// The base URL (`deb` URI, or yum `baseurl`).
    pub uri: String,
    /// apt: the suite (`bookworm`, `stable`, or `./` for a flat repository).
    pub suite: Option<String>,
    /// apt: the components (default `["main"]`; none for a flat repository).
    pub components: Option<Vec<String>>,
    /// The signing key: a path under `files/` (ASCII-armored or binary).
    pub key: Option<String>,
    /// Accept the repository unsigned (apt `[trusted=yes]`, yum
    /// `gpgcheck=0`). Only for an internal repository on a network you
    /// control; give a `key` instead wherever you can.
    #[serde(default)]
    pub trusted: bool,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// A package source as a catalog carries it. (Named apart from the roles
/// `Repository` the compiler reads.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRepository {
    pub name: String,
    pub ensure: Ensure,
    pub format: RepositoryFormat,
    pub uri: String,
    pub suite: Option<String>,
    pub components: Vec<String>,
    pub key_sha256: Option<String>,
    pub trusted: bool,
    pub enabled: bool,
}

fn default_true() -> bool {
    true
}

/// The format of a Java application's configuration file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigFormat {
    /// `application.properties`.
    #[default]
    Properties,
    /// `application.yml`.
    Yaml,
}

/// Where a Java application's jar comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactSpec {
    /// An http(s) URL, e.g. of an internal artifact repository.
    pub url: Option<String>,
    /// A path under `files/`.
    pub source: Option<String>,
    /// Required with `url`; computed for `source`.
    pub sha256: Option<String>,
}

/// How to tell that a Java application is up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// A URL that must answer 2xx, e.g. `http://127.0.0.1:8080/actuator/health`.
    pub http: Option<String>,
    /// A local TCP port that must accept connections.
    pub tcp: Option<u16>,
    /// How long to wait after a (re)start (default 60 s).
    pub timeout: Option<Seconds>,
}

/// systemd's `Restart=`: when systemd restarts the application by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    Always,
    #[default]
    OnFailure,
    OnAbnormal,
    OnAbort,
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::OnAbnormal => "on-abnormal",
            RestartPolicy::OnAbort => "on-abort",
        })
    }
}

/// Resource limits of a Java application's unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// `LimitNOFILE=`: open files.
    pub nofile: Option<u64>,
    /// `LimitNPROC=`: processes (threads count).
    pub nproc: Option<u64>,
    /// `MemoryMax=`: a size such as `"2g"`, beyond which the kernel kills it.
    pub memory: Option<String>,
}

/// A Java application as a role declares it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JavaAppSpec {
    pub name: String,
    #[serde(default)]
    pub ensure: Ensure,
    /// The JDK/JRE package, e.g. `openjdk-17-jre-headless`.
    pub runtime_package: Option<String>,
    /// The `java` to run (default `/usr/bin/java`).
    pub java: Option<String>,
    pub artifact: ArtifactSpec,
    /// Defaults to the application's name.
    pub user: Option<String>,
    pub group: Option<String>,
    /// Defaults to `/opt/<name>`: releases, the `current` link, and the
    /// working directory.
    pub home: Option<String>,
    /// Defaults to `<home>/config`, where Spring Boot looks by itself.
    pub config_dir: Option<String>,
    /// Defaults to `/var/log/<name>`.
    pub log_dir: Option<String>,
    /// Defaults to `/var/lib/<name>`.
    pub data_dir: Option<String>,
    #[serde(default)]
    pub config_format: ConfigFormat,
    /// Configuration as a table, written in `config_format`.
    pub properties: Option<BTreeMap<String, serde_json::Value>>,
    /// Or a path under `templates/` that renders the whole file.
    pub config_template: Option<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// `-Xmx`: an absolute size (`"512m"`, `"2g"`) or a share of the
    /// instance's memory (`"50%"`).
    pub heap: Option<String>,
    #[serde(default)]
    pub jvm_options: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    pub health: Option<HealthCheck>,
    /// How many earlier releases to keep for rollback (default 3).
    pub keep_releases: Option<u32>,
    /// systemd's `Restart=` (default `on-failure`).
    #[serde(default)]
    pub restart: RestartPolicy,
    /// systemd's `RestartSec=` (default 5 s).
    pub restart_delay: Option<Seconds>,
    #[serde(default)]
    pub limits: Limits,
}

/// A Java application as a catalog carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JavaApp {
    pub name: String,
    pub ensure: Ensure,
    pub runtime_package: Option<String>,
    pub java: String,
    pub artifact_url: Option<String>,
    /// The jar's sha256; for a jar from the roles repository, also the key
    /// of its bytes in the catalog's contents.
    pub artifact_sha256: String,
    pub user: String,
    pub group: String,
    pub home: String,
    pub config_dir: String,
    pub log_dir: String,
    pub data_dir: String,
    pub config_format: ConfigFormat,
    /// The rendered configuration file.
    pub config_sha256: Option<String>,
    pub environment: BTreeMap<String, String>,
    pub heap: Option<String>,
    pub jvm_options: Vec<String>,
    pub args: Vec<String>,
    pub health: Option<HealthCheck>,
    pub keep_releases: u32,
    pub restart: RestartPolicy,
    pub restart_delay: Seconds,
    pub limits: Limits,
}

impl JavaApp {
    /// The configuration file: `<config_dir>/application.properties` or
    /// `application.yml`.
    pub fn config_path(&self) -> String {
        let file = match self.config_format {
            ConfigFormat::Properties => "application.properties",
            ConfigFormat::Yaml => "application.yml",
        };
        format!("{}/{file}", self.config_dir)
    }
}

/// Checks a heap size: `512m`, `2g`, `1024k`, or a percentage `1%`–`100%`.
pub fn validate_heap(text: &str) -> Result<(), String> {
    if let Some(percent) = text.strip_suffix('%') {
        return match percent.parse::<u32>() {
            Ok(p) if (1..=100).contains(&p) => Ok(()),
            _ => Err(format!(
                "invalid heap `{text}`: a percentage must be a whole number from 1% to 100%"
            )),
        };
    }
    validate_size(text).map_err(|_| {
        format!(
            "invalid heap `{text}`: expected a size such as \"512m\" or \"2g\", or a share of memory such as \"50%\""
        )
    })
}

/// Checks a size with a unit: `512m`, `2g`, `1024k` (as the JVM and systemd
/// read them: powers of 1024).
pub fn validate_size(text: &str) -> Result<(), String> {
    let digits = text.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
    if digits.len() + 1 == text.len()
        && !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && digits.parse::<u64>().is_ok_and(|n| n > 0)
    {
        Ok(())
    } else {
        Err(format!(
            "invalid size `{text}`: expected a number with a unit k, m or g, e.g. \"512m\" or \"2g\""
        ))
    }
}
