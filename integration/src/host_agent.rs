//! `cms-agent` run as a process on the host, with a state directory of its
//! own: for tests of the server's side that need real agent runs but no
//! instance (files converge under a temporary folder). Its configuration
//! always names a node_exporter textfile under the test's folder: a host
//! agent never writes the host's own node_exporter folder.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// One agent: the binary, its state directory and its configuration file.
#[derive(Clone, Debug)]
pub struct HostAgent {
    pub binary: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
}

impl HostAgent {
    /// An agent named `name` living in `directory` (a test's temporary
    /// folder): state in `agent-NAME/`, configuration in `agent-NAME.toml`,
    /// which sends its node_exporter figures to [`HostAgent::textfile`].
    pub fn in_directory(binary: &Path, directory: &Path, name: &str) -> Result<HostAgent> {
        let agent = HostAgent {
            binary: binary.to_path_buf(),
            state: directory.join(format!("agent-{name}")),
            config: directory.join(format!("agent-{name}.toml")),
        };
        agent.write_config("")?;
        Ok(agent)
    }

    /// Writes the configuration: `extra` (TOML lines), and the textfile
    /// under the test's folder.
    pub fn write_config(&self, extra: &str) -> Result<()> {
        let textfile = self.textfile();
        std::fs::create_dir_all(textfile.parent().context("a textfile folder")?)?;
        std::fs::write(
            &self.config,
            format!(
                "textfile_collector = \"{}\"\n{extra}",
                textfile.to_str().context("utf-8")?
            ),
        )
        .with_context(|| format!("Failed to write {}", self.config.display()))
    }

    /// Where this agent writes its last run's figures for node_exporter.
    pub fn textfile(&self) -> PathBuf {
        self.state
            .with_extension("node-exporter")
            .join("cms_agent.prom")
    }

    /// Starts `cms-agent run` (the daemon: a run on its interval and the
    /// watch channel), its output going to `log`; it is killed when the
    /// returned handle is dropped.
    pub fn start_daemon(&self, log: &Path) -> Result<AgentDaemon> {
        let log_file = std::fs::File::create(log)?;
        let child = Command::new(&self.binary)
            .arg("run")
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--config")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("Failed to start cms-agent run")?;
        Ok(AgentDaemon(child))
    }

    /// Runs `cms-agent ARGS` without colours.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        Ok(Command::new(&self.binary)
            .args(args)
            .env("NO_COLOR", "1")
            .output()?)
    }

    /// `cms-agent enroll` as `node` with `tags`, into this agent's state.
    pub fn enroll(&self, server: &str, token: &str, node: &str, tags: &str) -> Result<Output> {
        self.run(&[
            "enroll",
            "--server",
            server,
            "--token",
            token,
            "--node",
            node,
            "--tags",
            tags,
            "--state-dir",
            self.state.to_str().context("utf-8")?,
        ])
    }

    /// `cms-agent converge`: its exit code and its stdout and stderr.
    pub fn converge(&self) -> Result<(i32, String)> {
        self.converge_with(&[])
    }

    /// `cms-agent converge EXTRA…` (`--noop`, say).
    pub fn converge_with(&self, extra: &[&str]) -> Result<(i32, String)> {
        self.refuse_the_default_textfile()?;
        let mut args = vec![
            "converge",
            "--state-dir",
            self.state.to_str().context("utf-8")?,
            "--config",
            self.config.to_str().context("utf-8")?,
        ];
        args.extend_from_slice(extra);
        let output = self.run(&args)?;
        Ok((
            output.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ))
    }

    /// A configuration without `textfile_collector` would let the agent
    /// write the host's node_exporter folder, where a real exporter may
    /// read it.
    fn refuse_the_default_textfile(&self) -> Result<()> {
        let config = std::fs::read_to_string(&self.config).unwrap_or_default();
        if !config.contains("textfile_collector") {
            anyhow::bail!(
                "{} names no textfile_collector: a host agent in a test would write the host's \
                 node_exporter folder (make it with HostAgent::in_directory)",
                self.config.display()
            );
        }
        Ok(())
    }
}

/// A running `cms-agent run`, killed when dropped.
#[derive(Debug)]
pub struct AgentDaemon(Child);

impl AgentDaemon {
    /// Its process id (for its figures in /proc).
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for AgentDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
