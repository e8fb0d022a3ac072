//! `exec`: a command, guarded by `creates`, `unless` and `onlyif`, with a
//! timeout; a `refreshonly` exec runs only when notified.
//!
//! The guards are commands too, and run during `check` (also in `--noop`):
//! like Puppet's, they are expected to only look, never change.

use std::time::Duration;

use cms_roles::Exec;

use crate::{Change, CommandSpec, Context, Provider, ProviderError};

/// Five minutes, as Puppet's default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

pub struct ExecProvider<'a>(pub &'a Exec);

impl ExecProvider<'_> {
    fn spec(&self, script: &str) -> CommandSpec {
        let exec = self.0;
        CommandSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
            environment: exec.environment.clone(),
            cwd: exec.cwd.clone(),
            user: exec.user.clone(),
            timeout: Some(
                exec.timeout
                    .map_or(DEFAULT_TIMEOUT, |t| Duration::from_secs(t.0)),
            ),
        }
    }

    /// Whether the guards say the command should run now.
    fn guards_allow(&self, cx: &Context<'_>) -> Result<bool, ProviderError> {
        let exec = self.0;
        if let Some(creates) = &exec.creates
            && cx.host.path(creates).symlink_metadata().is_ok()
        {
            return Ok(false);
        }
        if let Some(unless) = &exec.unless
            && cx.host.run(&self.spec(unless))?.success()
        {
            return Ok(false);
        }
        if let Some(onlyif) = &exec.onlyif
            && !cx.host.run(&self.spec(onlyif))?.success()
        {
            return Ok(false);
        }
        Ok(true)
    }

    fn run_command(&self, cx: &Context<'_>) -> Result<(), ProviderError> {
        let exec = self.0;
        let output = cx.host.run(&self.spec(&exec.command))?;
        let accepted = exec.returns.clone().unwrap_or_else(|| vec![0]);
        match output.code {
            Some(code) if accepted.contains(&code) => Ok(()),
            code => {
                let status = code.map_or("a signal".to_string(), |c| format!("status {c}"));
                Err(ProviderError::FailedWithDetails {
                    full: format!(
                        "`{}` exited with {status}{}",
                        exec.command,
                        match output.tail(10) {
                            tail if tail.is_empty() => String::new(),
                            tail => format!(":\n{tail}"),
                        }
                    ),
                    safe: format!("The command exited with {status}"),
                })
            }
        }
    }
}

impl Provider for ExecProvider<'_> {
    fn packages(&self) -> Vec<String> {
        Vec::new()
    }

    /// An exec that ran in this run has done what a notification asks; it
    /// does not run twice.
    fn refreshed_by(&self, changes: &[Change]) -> bool {
        changes.iter().any(|c| c.attribute == "run")
    }

    fn check(&self, cx: &Context<'_>) -> Result<Vec<Change>, ProviderError> {
        if self.0.refreshonly || !self.guards_allow(cx)? {
            return Ok(Vec::new());
        }
        Ok(vec![Change::new("run", "not run", self.0.command.clone())])
    }

    fn apply(&self, changes: &[Change], cx: &Context<'_>) -> Result<(), ProviderError> {
        if changes.iter().any(|c| c.attribute == "run") {
            self.run_command(cx)?;
        }
        Ok(())
    }

    fn refresh(&self, cx: &Context<'_>) -> Result<Option<String>, ProviderError> {
        // A notified exec still honours its guards.
        if !self.guards_allow(cx)? {
            return Ok(None);
        }
        self.run_command(cx)?;
        Ok(Some(format!("ran `{}`", self.0.command)))
    }

    fn refresh_description(&self, cx: &Context<'_>) -> Result<Option<String>, ProviderError> {
        // The guards only look, so noop can ask them, as a real refresh would.
        if !self.guards_allow(cx)? {
            return Ok(None);
        }
        Ok(Some(format!("would run `{}`", self.0.command)))
    }
}
