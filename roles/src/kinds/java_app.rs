//! `java_app`: a Java application as one resource: its runtime package,
//! account, folders, verified jar (from a URL with its sha256, or from
//! `files/`), configuration file (a table written as properties or YAML, or
//! a rendered template) and systemd unit.
//!
//! Resolution fills in every default (folders, account, java, restart
//! policy), so the agent never guesses; validation refuses what would make
//! a bad unit or a path outside what the app owns.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Drain, Ensure, Kind, Problems, Resolver, Seconds, check_drain, check_path};
use crate::digest::is_sha256_hex;

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
    /// Take the instance out of these load balancer target groups while the
    /// app restarts (`drain.rs`).
    pub drain: Option<Drain>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
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

/// A heap or memory size that [`validate_heap`] or [`validate_size`]
/// refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("invalid heap `{0}`: a percentage must be a whole number from 1% to 100%")]
    HeapPercentage(String),
    #[error(
        "invalid heap `{0}`: expected a size such as \"512m\" or \"2g\", or a share of memory such as \"50%\""
    )]
    Heap(String),
    #[error(
        "invalid size `{0}`: expected a number with a unit k, m or g, e.g. \"512m\" or \"2g\""
    )]
    Size(String),
}

/// Checks a heap size: `512m`, `2g`, `1024k`, or a percentage `1%`–`100%`.
pub fn validate_heap(text: &str) -> Result<(), SizeError> {
    if let Some(percent) = text.strip_suffix('%') {
        return match percent.parse::<u32>() {
            Ok(p) if (1..=100).contains(&p) => Ok(()),
            _ => Err(SizeError::HeapPercentage(text.to_string())),
        };
    }
    validate_size(text).map_err(|_| SizeError::Heap(text.to_string()))
}

/// Checks a size with a unit: `512m`, `2g`, `1024k` (as the JVM and systemd
/// read them: powers of 1024).
pub fn validate_size(text: &str) -> Result<(), SizeError> {
    let digits = text.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
    if digits.len() + 1 == text.len()
        && !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && digits.parse::<u64>().is_ok_and(|n| n > 0)
    {
        Ok(())
    } else {
        Err(SizeError::Size(text.to_string()))
    }
}

impl Kind for JavaApp {
    type Spec = JavaAppSpec;
    const PATH_NAMED: bool = false;
    const REFRESHABLE: bool = true;
    /// Both are on the unit's `ExecStart=` line (a world-readable file) and
    /// on the JVM's command line (`ps`): values go in `environment` or
    /// `properties`.
    const PUBLIC_FIELDS: &'static [&'static str] = &["jvm_options", "args"];

    fn name(&self) -> &str {
        &self.name
    }

    fn resolve(spec: JavaAppSpec, cx: &mut Resolver<'_>) -> Option<JavaApp> {
        check_java_app(&spec, &mut cx.problems);
        let artifact = &spec.artifact;
        let artifact_sha256 = match (&artifact.url, &artifact.source) {
            (Some(url), None) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    cx.problems.push((
                        "artifact",
                        format!("artifact url `{url}` must start with http:// or https://"),
                    ));
                }
                match &artifact.sha256 {
                    Some(sha) if is_sha256_hex(sha) => sha.to_lowercase(),
                    Some(sha) => {
                        cx.problems.push((
                            "artifact",
                            format!("artifact sha256 `{sha}` is not 64 hex digits"),
                        ));
                        return None;
                    }
                    None => {
                        cx.problems.push(("artifact", "an artifact from a url needs its `sha256`: a jar is never used unverified".into()));
                        return None;
                    }
                }
            }
            (None, Some(source)) => {
                let bytes = cx.source_bytes(source, "artifact")?;
                let hash = cx.add_content(bytes);
                if let Some(expected) = &artifact.sha256
                    && !expected.eq_ignore_ascii_case(&hash)
                {
                    cx.problems.push(("artifact", format!("artifact `files/{source}` has sha256 {hash}, not the {expected} the role expects")));
                    return None;
                }
                hash
            }
            _ => {
                cx.problems.push((
                    "artifact",
                    "an artifact has exactly one of `url` or `source`".into(),
                ));
                return None;
            }
        };
        let config = match (&spec.properties, &spec.config_template) {
            (Some(_), Some(_)) => {
                cx.problems.push((
                    "config_template",
                    "give either `properties` or `config_template`, not both".into(),
                ));
                return None;
            }
            (Some(properties), None) => {
                Some(render_config(properties, spec.config_format).into_bytes())
            }
            (None, Some(template)) => {
                Some(cx.render_template(template, cx.context(), "config_template")?)
            }
            (None, None) => None,
        };
        let config_sha256 = config.map(|bytes| cx.add_content(bytes));
        let home = spec.home.unwrap_or_else(|| format!("/opt/{}", spec.name));
        Some(JavaApp {
            user: spec.user.unwrap_or_else(|| spec.name.clone()),
            group: spec.group.unwrap_or_else(|| spec.name.clone()),
            config_dir: spec.config_dir.unwrap_or_else(|| format!("{home}/config")),
            log_dir: spec
                .log_dir
                .unwrap_or_else(|| format!("/var/log/{}", spec.name)),
            data_dir: spec
                .data_dir
                .unwrap_or_else(|| format!("/var/lib/{}", spec.name)),
            home,
            name: spec.name,
            ensure: spec.ensure,
            runtime_package: spec.runtime_package,
            java: spec.java.unwrap_or_else(|| "/usr/bin/java".into()),
            artifact_url: spec.artifact.url,
            artifact_sha256,
            config_format: spec.config_format,
            config_sha256,
            environment: spec.environment,
            heap: spec.heap,
            jvm_options: spec.jvm_options,
            args: spec.args,
            health: spec.health,
            keep_releases: spec.keep_releases.unwrap_or(3),
            restart: spec.restart,
            restart_delay: spec.restart_delay.unwrap_or(Seconds(5)),
            limits: spec.limits,
            drain: spec.drain,
        })
    }
    fn summary(&self) -> String {
        format!(
            " artifact={} heap={}",
            &self.artifact_sha256[..12],
            self.heap.as_deref().unwrap_or("default")
        )
    }

    /// Its unit: a `systemd_timer` or a `file` of the same name would
    /// overwrite it.
    fn written_files(&self) -> Vec<String> {
        vec![format!("{}/{}.service", super::UNIT_DIRECTORY, self.name)]
    }
}

/// The checks of a Java application's fields that need nothing but the
/// fields.
fn check_java_app(spec: &JavaAppSpec, problems: &mut Problems) {
    // The name names the unit and, by default, folders: no room for
    // anything a path or a unit name would misread.
    let name_ok = spec
        .name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        problems.push((
            "name",
            format!(
                "java_app name `{}` must start with a letter or digit and hold only letters, digits, `-`, `_` and `.`: it names the systemd unit and the app's folders",
                spec.name
            ),
        ));
    }
    for (field, account) in [("user", &spec.user), ("group", &spec.group)] {
        let (account, defaulted) = match account {
            Some(account) => (account, ""),
            None => (&spec.name, " (the app's name, its default)"),
        };
        let valid = account
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && account
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_".contains(c))
            && account.len() <= 32;
        if !valid {
            problems.push((
                field,
                format!("{field} `{account}`{defaulted} is not a valid account name: lowercase letters, digits, `-` and `_`, starting with a letter or `_`"),
            ));
        } else if account == "root" {
            problems.push((
                field,
                format!("{field} `root`{defaulted}: a java_app runs as its own unprivileged account, never as root"),
            ));
        }
    }
    for (field, path) in [
        ("home", &spec.home),
        ("config_dir", &spec.config_dir),
        ("log_dir", &spec.log_dir),
        ("data_dir", &spec.data_dir),
        ("java", &spec.java),
    ] {
        if let Some(path) = path {
            check_path(path, field, problems);
        }
    }
    if let Some(drain) = &spec.drain {
        check_drain(drain, problems);
    }
    if let Some(heap) = &spec.heap
        && let Err(error) = validate_heap(heap)
    {
        problems.push(("heap", error.to_string()));
    }
    for (key, value) in &spec.environment {
        let key_ok = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            problems.push((
                "environment",
                format!("environment variable name `{key}` must be letters, digits and `_`, not starting with a digit"),
            ));
        }
        if value.contains(['\n', '\0']) {
            problems.push((
                "environment",
                format!("environment variable `{key}` holds a newline or NUL"),
            ));
        }
    }
    for option in &spec.jvm_options {
        if !option.starts_with('-') || option.contains(['\n', '\0']) {
            problems.push((
                "jvm_options",
                format!("jvm option `{option}` must start with `-` and hold no newline"),
            ));
        } else if spec.heap.is_some() && option.starts_with("-Xmx") {
            problems.push((
                "jvm_options",
                format!("jvm option `{option}` sets the heap, which `heap` already does: keep one"),
            ));
        }
    }
    for arg in &spec.args {
        if arg.contains(['\n', '\0']) {
            problems.push(("args", format!("argument {arg:?} holds a newline or NUL")));
        }
    }
    if let Some(health) = &spec.health {
        match (&health.http, health.tcp) {
            (Some(_), Some(_)) | (None, None) => problems.push((
                "health",
                "a health check has exactly one of `http` (a URL answering 2xx) or `tcp` (a port accepting connections)".into(),
            )),
            (Some(url), None) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                problems.push((
                    "health",
                    format!("health url `{url}` must start with http:// or https://"),
                ))
            }
            (None, Some(0)) => problems.push(("health", "health port 0 is not a port".into())),
            _ => {}
        }
        if health.timeout.is_some_and(|t| t.0 == 0) {
            problems.push((
                "health",
                "a health timeout of 0 s leaves the app no time to start".into(),
            ));
        }
    }
    if let Some(keep) = spec.keep_releases
        && keep > 100
    {
        problems.push((
            "keep_releases",
            format!("keep_releases = {keep}: at most 100 earlier releases are kept"),
        ));
    }
    if let Some(memory) = &spec.limits.memory
        && let Err(error) = validate_size(memory)
    {
        problems.push(("limits", format!("limits.memory: {error}")));
    }
    if spec.limits.nofile == Some(0) || spec.limits.nproc == Some(0) {
        problems.push((
            "limits",
            "a limit of 0 would keep the app from starting".into(),
        ));
    }
}

/// A Java application's configuration as `application.properties` (dotted
/// keys) or `application.yml` (the same dotted keys, which Spring reads as
/// nested), sorted by key.
fn render_config(properties: &BTreeMap<String, Value>, format: ConfigFormat) -> String {
    let mut flat = BTreeMap::new();
    for (key, value) in properties {
        flatten(key, value, &mut flat);
    }
    let mut out = String::new();
    for (key, value) in flat {
        match format {
            ConfigFormat::Properties => out.push_str(&format!("{key}={value}\n")),
            ConfigFormat::Yaml => out.push_str(&format!(
                "{key}: {}\n",
                serde_json::to_string(&value).expect("strings serialize")
            )),
        }
    }
    out
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                flatten(&format!("{prefix}.{key}"), value, out);
            }
        }
        Value::Array(items) => {
            let joined = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",");
            out.insert(prefix.to_string(), joined);
        }
        Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

