//! Running commands, with a timeout, an environment and optionally another
//! user. Output is captured whole; a command that outlives its timeout is
//! killed with its process group.
//!
//! The wait for a command blocks on a pidfd ([`wait_for_exit`]), so a run
//! learns of the exit at once and never sleeps: a `dpkg-query` of 3 ms costs
//! 3 ms, not a 5 ms polling period.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
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
        // A command can change any file (a package brings its folders):
        // directories kept open for reads are reopened afterwards.
        self.forget_opened_directories();
        self.commands
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
        let status = match wait_for_exit(&mut child, spec.timeout).map_err(spawn_error)? {
            Some(status) => status,
            None => {
                let group = nix::unistd::Pid::from_raw(child.id() as i32);
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                return Err(HostError::Timeout {
                    command: spec.display(),
                    seconds: spec.timeout.unwrap_or_default().as_secs(),
                });
            }
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

/// Waits until `child` exits, for at most `timeout` (`None`: as long as it
/// takes); `Ok(None)` when it still runs then (it is neither killed nor
/// reaped, so its pid stays its own). Where the kernel has pidfds (Linux
/// 5.3 and later) it blocks in `poll` on one, waking when the child exits,
/// with no signal handling and no sleep; elsewhere it checks every 5 ms.
pub fn wait_for_exit(
    child: &mut Child,
    timeout: Option<Duration>,
) -> std::io::Result<Option<ExitStatus>> {
    let started = super::clock::instant();
    let left = |started: std::time::Instant| match timeout {
        None => Some(None),
        Some(timeout) => timeout.checked_sub(started.elapsed()).map(Some),
    };
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_child(child),
        rustix::process::PidfdFlags::empty(),
    );
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let Some(left) = left(started) else {
            return Ok(None);
        };
        match &pidfd {
            Ok(pidfd) => {
                // Readable once the child has exited (a zombie counts).
                let wait = left.and_then(|left| rustix::event::Timespec::try_from(left).ok());
                let mut fds = [rustix::event::PollFd::new(
                    pidfd,
                    rustix::event::PollFlags::IN,
                )];
                match rustix::event::poll(&mut fds, wait.as_ref()) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(errno) => return Err(errno.into()),
                }
            }
            // No pidfd (an older kernel): polling keeps this free of signal
            // handling; commands take milliseconds to minutes.
            Err(_) => std::thread::sleep(left.map_or(POLL_PERIOD, |left| left.min(POLL_PERIOD))),
        }
    }
}

/// How often [`wait_for_exit`] checks a child where there are no pidfds.
const POLL_PERIOD: Duration = Duration::from_millis(5);
