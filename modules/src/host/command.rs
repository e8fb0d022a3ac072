//! Running commands, with a timeout, an environment and optionally another
//! user. Output is captured whole; a command that outlives its timeout is
//! killed with its process group.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Host, HostError};

/// A command to run on the host.
#[derive(Debug, Clone, Default)]
pub struct CommandSpec {
    /// Program and arguments; see [`CommandSpec::shell`] for `/bin/sh -c`.
    pub argv: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub cwd: Option<String>,
    /// Run as this user (by name); needs root.
    pub user: Option<String>,
    pub timeout: Option<Duration>,
}

impl CommandSpec {
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> CommandSpec {
        CommandSpec {
            argv: argv.into_iter().map(Into::into).collect(),
            ..CommandSpec::default()
        }
    }

    /// `/bin/sh -c SCRIPT`.
    pub fn shell(script: &str) -> CommandSpec {
        CommandSpec::new(["/bin/sh", "-c", script])
    }

    pub fn timeout(mut self, timeout: Duration) -> CommandSpec {
        self.timeout = Some(timeout);
        self
    }

    fn display(&self) -> String {
        self.argv.join(" ")
    }
}

/// What a finished command returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last lines of stderr (or stdout), for an error message.
    pub fn tail(&self, lines: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        let all: Vec<&str> = text.trim_end().lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Host {
    /// Runs a command to completion and captures its output. A non-zero exit
    /// is not an error here; the caller decides what it means.
    pub fn run(&self, spec: &CommandSpec) -> Result<CommandOutput, HostError> {
        let (program, args) = spec.argv.split_first().ok_or_else(|| HostError::Spawn {
            command: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
        })?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(&spec.environment)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A process group of its own, so a timeout kills its children too.
            .process_group(0);
        if let Some(cwd) = &spec.cwd {
            command.current_dir(self.path(cwd));
        }
        if let Some(user) = &spec.user {
            let account = nix::unistd::User::from_name(user)
                .ok()
                .flatten()
                .ok_or_else(|| HostError::UnknownAccount {
                    kind: "user",
                    name: user.clone(),
                })?;
            command.uid(account.uid.as_raw()).gid(account.gid.as_raw());
            command.env("HOME", &account.dir).env("USER", user);
        }
        let spawn_error = |source| HostError::Spawn {
            command: spec.display(),
            source,
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        // Read both pipes on threads so a chatty command cannot fill one and
        // block while we wait on the other.
        let mut stdout_pipe = child.stdout.take().expect("piped");
        let mut stderr_pipe = child.stderr.take().expect("piped");
        let stdout_reader = std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let _ = stdout_pipe.read_to_end(&mut buffer);
            buffer
        });
        let stderr_reader = std::thread::spawn(move || {
            let mut buffer = Vec::new();
            let _ = stderr_pipe.read_to_end(&mut buffer);
            buffer
        });
        let started = super::clock::instant();
        let status = loop {
            if let Some(status) = child.try_wait().map_err(spawn_error)? {
                break status;
            }
            if let Some(timeout) = spec.timeout
                && started.elapsed() >= timeout
            {
                let group = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(HostError::Timeout {
                    command: spec.display(),
                    seconds: timeout.as_secs(),
                });
            }
            // Polling keeps this free of signal handling; commands run by an
            // agent take milliseconds to minutes, so 5 ms is cheap.
            std::thread::sleep(Duration::from_millis(5));
        };
        let stdout = stdout_reader.join().unwrap_or_default();
        let stderr = stderr_reader.join().unwrap_or_default();
        Ok(CommandOutput {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}
