//! `/etc/cms/agent.toml`: what the agent needs to find its server, read in
//! two stages (what the user wrote, with unknown keys refused; then
//! resolved durations).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// The default configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/cms/agent.toml";

/// What the user wrote.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentConfig {
    /// `host:port` of cms-server.
    pub server: Option<String>,
    /// An enrollment token, for the first start of an instance.
    pub token: Option<String>,
    /// Or a file holding it (e.g. written from EC2 user data).
    pub token_file: Option<String>,
    /// sha256 (hex) of the server's CA certificate. With no token, the
    /// agent enrolls by attestation on EC2 (the signed instance identity
    /// document) and trusts the server whose CA has this fingerprint.
    pub ca_fingerprint: Option<String>,
    /// Time between runs, e.g. "30m".
    pub interval: Option<String>,
    /// The largest delay added to each interval, spread per node, e.g. "5m".
    pub splay: Option<String>,
    /// `host:port` of an instance metadata service.
    pub metadata_endpoint: Option<String>,
    /// The file node_exporter's textfile collector reads the last run's
    /// figures from; `""` turns it off (see `textfile`).
    pub textfile_collector: Option<String>,
    /// The systemd target started after the first successful converge
    /// since boot; `""` turns it off.
    pub converged_target: Option<String>,
    #[serde(default)]
    pub restarts: RawRestarts,
    /// The launch lifecycle hook of the instance's autoscaling group.
    pub lifecycle: Option<RawLifecycle>,
    #[serde(default)]
    pub aws: RawAws,
}

/// `[restarts]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestarts {
    /// How long to wait for a place in the server's restart budget, e.g.
    /// "15m".
    pub wait: Option<String>,
}

/// `[lifecycle]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLifecycle {
    /// The launch lifecycle hook's name.
    pub hook: String,
    /// The autoscaling group; found from the instance when not given.
    pub group: Option<String>,
    /// Failed first converges before the launch is abandoned.
    pub abandon_after: Option<u32>,
}

/// `[aws]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAws {
    /// One base URL for every AWS API (a VPC endpoint, a test double).
    pub endpoint: Option<String>,
    /// The region; the instance's, from its metadata, when not given.
    pub region: Option<String>,
    /// `host:port` of the metadata service the AWS calls read the instance
    /// id, region and credentials from; the top-level `metadata_endpoint`
    /// (or EC2's) when not given.
    pub metadata_endpoint: Option<String>,
}

use crate::settings::{
    CONVERGED_TARGET, DEFAULT_ABANDON_AFTER, DEFAULT_RESTART_WAIT, Lifecycle, RunSettings,
};

/// Resolved.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: Option<String>,
    pub token: Option<String>,
    /// The server CA's fingerprint, for attested enrollment.
    pub ca_fingerprint: Option<String>,
    /// The file `token` was read from (`token_file`), deleted once the
    /// agent has enrolled (`forget_token_file`).
    pub token_file: Option<PathBuf>,
    pub interval: Duration,
    pub splay: Duration,
    pub metadata_endpoint: Option<String>,
    pub textfile: crate::textfile::Textfile,
    pub run: RunSettings,
}

impl AgentConfig {
    /// How this agent enrolls: with its token when it has one, else by
    /// attestation when the server's CA fingerprint is configured, else
    /// it cannot.
    pub fn enroll_with(&self) -> Option<crate::remote::EnrollWith> {
        match (&self.token, &self.ca_fingerprint) {
            (Some(token), _) => Some(crate::remote::EnrollWith::Token(token.clone())),
            (None, Some(ca_fingerprint)) => Some(crate::remote::EnrollWith::Attestation {
                ca_fingerprint: ca_fingerprint.clone(),
            }),
            (None, None) => None,
        }
    }

    /// Reads `path`; a missing file means the defaults.
    pub fn load(path: &Path) -> anyhow::Result<AgentConfig> {
        let raw: RawAgentConfig = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).with_context(|| {
                format!("Failed to read the agent configuration {}", path.display())
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => RawAgentConfig::default(),
            Err(error) => {
                return Err(error).with_context(|| format!("Failed to read {}", path.display()));
            }
        };
        let duration = |text: Option<&str>, default: u64| -> anyhow::Result<Duration> {
            Ok(Duration::from_secs(match text {
                Some(text) => cms_roles::parse_duration(text).map_err(anyhow::Error::msg)?,
                None => default,
            }))
        };
        let mut token_file = None;
        let token = match (raw.token, raw.token_file) {
            (Some(token), _) => Some(token),
            (None, Some(file)) => match std::fs::read_to_string(&file) {
                Ok(token) => {
                    token_file = Some(PathBuf::from(&file));
                    Some(token.trim().to_string())
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("Failed to read the token file {file}"));
                }
            },
            (None, None) => None,
        };
        let lifecycle = match raw.lifecycle {
            Some(lifecycle) => {
                if lifecycle.hook.trim().is_empty() {
                    anyhow::bail!(
                        "Failed to read the agent configuration {}: [lifecycle] hook is empty: write the name of the autoscaling group's launch lifecycle hook",
                        path.display()
                    );
                }
                Some(Lifecycle {
                    hook: lifecycle.hook,
                    group: lifecycle.group.filter(|g| !g.is_empty()),
                    abandon_after: match lifecycle.abandon_after {
                        Some(0) => anyhow::bail!(
                            "Failed to read the agent configuration {}: [lifecycle] abandon_after = 0: write how many failed first converges abandon the launch, 1 or more (default {DEFAULT_ABANDON_AFTER})",
                            path.display()
                        ),
                        Some(n) => n,
                        None => DEFAULT_ABANDON_AFTER,
                    },
                })
            }
            None => None,
        };
        let run = RunSettings {
            metadata_endpoint: raw.metadata_endpoint.clone(),
            restart_wait: duration(raw.restarts.wait.as_deref(), DEFAULT_RESTART_WAIT.as_secs())
                .with_context(|| format!("Failed to read [restarts] wait in {}", path.display()))?,
            lifecycle,
            aws_endpoint: raw.aws.endpoint,
            aws_region: raw.aws.region,
            aws_metadata_endpoint: raw.aws.metadata_endpoint.or(raw.metadata_endpoint.clone()),
            converged_target: match raw.converged_target {
                Some(target) if target.is_empty() => None,
                Some(target) => Some(target),
                None => Some(CONVERGED_TARGET.to_string()),
            },
        };
        Ok(AgentConfig {
            run,
            server: raw.server,
            token,
            ca_fingerprint: raw.ca_fingerprint,
            token_file,
            interval: duration(raw.interval.as_deref(), 30 * 60)?,
            splay: duration(raw.splay.as_deref(), 5 * 60)?,
            metadata_endpoint: raw.metadata_endpoint,
            textfile: crate::textfile::Textfile::from_setting(raw.textfile_collector.as_deref()),
        })
    }
}

/// Deletes the file an enrollment token was read from, once the agent has
/// enrolled: the token is used (or has a use fewer), and a copy left on
/// the disk is only something to steal. A file already gone is fine.
pub fn forget_token_file(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| {
            format!(
                "Failed to delete the enrollment token file {} after enrolling",
                path.display()
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::EnrollWith;

    fn load(text: &str) -> AgentConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        AgentConfig::load(&path).unwrap()
    }

    #[test]
    fn a_token_wins_over_attestation_and_attestation_needs_the_ca_fingerprint() {
        assert_eq!(
            load("token = \"s.f\"\nca_fingerprint = \"abc\"\n").enroll_with(),
            Some(EnrollWith::Token("s.f".into()))
        );
        assert_eq!(
            load("ca_fingerprint = \"abc\"\n").enroll_with(),
            Some(EnrollWith::Attestation {
                ca_fingerprint: "abc".into()
            })
        );
        assert_eq!(load("server = \"cms:7470\"\n").enroll_with(), None);
    }

    fn load_err(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text).unwrap();
        format!("{:#}", AgentConfig::load(&path).unwrap_err())
    }

    #[test]
    fn lifecycle_restarts_and_aws_are_read_with_their_defaults_and_bad_values_refused() {
        let defaults = load("");
        assert_eq!(defaults.run.lifecycle, None);
        assert_eq!(defaults.run.restart_wait, DEFAULT_RESTART_WAIT);
        assert_eq!(
            defaults.run.converged_target.as_deref(),
            Some(CONVERGED_TARGET)
        );
        let config = load(
            "metadata_endpoint = \"10.0.0.1:80\"\nconverged_target = \"\"\n[lifecycle]\nhook = \"launch\"\n[restarts]\nwait = \"2m\"\n[aws]\nregion = \"eu-west-1\"\n",
        );
        assert_eq!(
            config.run.lifecycle,
            Some(Lifecycle {
                hook: "launch".into(),
                group: None,
                abandon_after: DEFAULT_ABANDON_AFTER,
            })
        );
        assert_eq!(config.run.restart_wait, Duration::from_secs(120));
        assert_eq!(config.run.converged_target, None);
        assert_eq!(config.run.aws_region.as_deref(), Some("eu-west-1"));
        // The AWS calls read the same metadata service unless told apart.
        assert_eq!(
            config.run.aws_metadata_endpoint.as_deref(),
            Some("10.0.0.1:80")
        );
        assert!(
            load_err("[lifecycle]\nhook = \"launch\"\nabandon_after = 0\n")
                .contains("abandon_after = 0")
        );
        assert!(load_err("[lifecycle]\nhook = \" \"\n").contains("hook is empty"));
        assert!(load_err("[restarts]\nwait = \"soon\"\n").contains("[restarts] wait"));
        assert!(load_err("[aws]\nendpoints = \"x\"\n").contains("endpoints"));
    }

    #[test]
    fn a_token_read_from_a_file_remembers_the_file_and_forgetting_deletes_it() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("cms-token");
        std::fs::write(&token_file, "cmst_secret.fingerprint\n").unwrap();
        let config_file = dir.path().join("agent.toml");
        std::fs::write(
            &config_file,
            format!(
                "server = \"cms:7470\"\ntoken_file = \"{}\"\n",
                token_file.display()
            ),
        )
        .unwrap();
        let config = AgentConfig::load(&config_file).unwrap();
        assert_eq!(config.token.as_deref(), Some("cmst_secret.fingerprint"));
        assert_eq!(config.token_file.as_deref(), Some(token_file.as_path()));
        forget_token_file(&token_file).unwrap();
        assert!(!token_file.exists());
        // Gone already (a second start, another deleter): fine.
        forget_token_file(&token_file).unwrap();
        // The token written into agent.toml itself names no file to delete.
        std::fs::write(&config_file, "token = \"cmst_inline.f\"\n").unwrap();
        assert_eq!(AgentConfig::load(&config_file).unwrap().token_file, None);
    }
}
