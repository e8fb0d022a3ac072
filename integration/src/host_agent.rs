//! `cms-agent` run as a process on the host, with a state directory of its
//! own: for tests of the server's side that need real agent runs but no
//! instance (files converge under a temporary folder).

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::{Command, Output};

/// One agent: the binary, its state directory and its configuration file
/// (which need not exist).
#[derive(Clone, Debug)]
pub struct HostAgent {
    pub binary: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
}

impl HostAgent {
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
        let output = self.run(&[
            "converge",
            "--state-dir",
            self.state.to_str().context("utf-8")?,
            "--config",
            self.config.to_str().context("utf-8")?,
        ])?;
        Ok((
            output.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ))
    }
}
