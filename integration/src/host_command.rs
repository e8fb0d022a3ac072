//! Running a command to completion with a deadline and capturing what it
//! printed: host tools (`ip`, `debootstrap`, `dpkg-deb`) and, through
//! `nsenter`, commands inside instances.

use anyhow::{Context, Result, bail};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The default deadline of a host command: generous, because a cold
/// `apt-get install` or `debootstrap` on a slow mirror takes minutes, but
/// finite, so that a hung command fails the test instead of hanging CI.
pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// What a finished command printed, and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// The command line, for messages.
    pub command_line: String,
    /// The exit code, or `None` when a signal ended the command.
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// Whether the command exited with status 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// The output itself when the command succeeded, otherwise an error
    /// carrying the command line, exit status, stdout and stderr.
    pub fn into_success(self) -> Result<CommandOutput> {
        if self.succeeded() {
            return Ok(self);
        }
        bail!("{}", self.describe_failure())
    }

    fn describe_failure(&self) -> String {
        let status = match self.exit_code {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".to_string(),
        };
        format!(
            "Failed to run `{}`: {status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command_line,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `command` with stdin closed until it exits or `timeout` passes, in
/// which case its whole process group is killed and an error is returned.
pub(crate) fn run_command(mut command: Command, timeout: Duration) -> Result<CommandOutput> {
    let command_line = describe_command(&command);
    // A process group of its own lets a timeout kill the command together
    // with its children (nsenter forks the process that runs inside the
    // instance), so that no reader thread waits on a pipe forever.
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = command
        .spawn()
        .with_context(|| format!("Failed to start `{command_line}`"))?;
    let stdout_reader = spawn_pipe_reader(child.stdout.take());
    let stderr_reader = spawn_pipe_reader(child.stderr.take());

    let deadline = Instant::now() + timeout;
    let mut poll_interval = Duration::from_millis(1);
    let status: Option<ExitStatus> = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("Failed to wait for `{command_line}`"))?
        {
            break Some(status);
        }
        if Instant::now() >= deadline {
            kill_process_group(child.id());
            // Reap the killed child so that it does not linger as a zombie.
            let _ = child.wait();
            break None;
        }
        // Most commands finish within milliseconds: start polling fast and
        // slow down for the long ones.
        std::thread::sleep(poll_interval);
        poll_interval = (poll_interval * 2).min(crate::wait::POLL_INTERVAL);
    };
    let stdout = join_pipe_reader(stdout_reader);
    let stderr = join_pipe_reader(stderr_reader);
    let Some(status) = status else {
        bail!(
            "Failed to run `{command_line}`: timed out after {timeout:?} and was killed\n\
             --- stdout ---\n{}\n--- stderr ---\n{}",
            stdout.trim_end(),
            stderr.trim_end()
        );
    };
    Ok(CommandOutput {
        command_line,
        exit_code: status.code(),
        stdout,
        stderr,
    })
}

/// Runs `command` (see [`run_command`]) and fails unless it exits with 0.
pub(crate) fn run_command_successfully(
    command: Command,
    timeout: Duration,
) -> Result<CommandOutput> {
    run_command(command, timeout)?.into_success()
}

/// A `Command` for a host tool, found where the prerequisite check finds it.
pub(crate) fn host_tool(program: &str) -> Command {
    Command::new(crate::prerequisites::locate_program(program))
}

/// Runs a host tool with arguments, with the default deadline, and fails
/// unless it exits with 0.
pub(crate) fn run_host_tool<I, S>(program: &str, arguments: I) -> Result<CommandOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut command = host_tool(program);
    command.args(arguments);
    run_command_successfully(command, DEFAULT_COMMAND_TIMEOUT)
}

pub(crate) fn describe_command(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn kill_process_group(process_group_id: u32) {
    let Ok(raw_id) = i32::try_from(process_group_id) else {
        return;
    };
    // The group may already be gone; there is nothing more to do then.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(raw_id),
        nix::sys::signal::Signal::SIGKILL,
    );
}

type PipeReader = Option<std::thread::JoinHandle<Vec<u8>>>;

fn spawn_pipe_reader(pipe: Option<impl Read + Send + 'static>) -> PipeReader {
    pipe.map(|mut pipe| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            // A read error ends the capture; what was read so far is kept.
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    })
}

fn join_pipe_reader(reader: PipeReader) -> String {
    let bytes = reader
        .map(|reader| reader.join().unwrap_or_default())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_stdout_stderr_and_exit_code() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exit 3"]);
        let output = run_command(command, Duration::from_secs(10)).unwrap();
        assert_eq!(
            (
                output.exit_code,
                output.stdout.as_str(),
                output.stderr.as_str()
            ),
            (Some(3), "out\n", "err\n")
        );
        assert_eq!(
            output.into_success().unwrap_err().to_string(),
            "Failed to run `sh -c echo out; echo err >&2; exit 3`: exit status 3\n\
             --- stdout ---\nout\n--- stderr ---\nerr"
        );
    }

    #[test]
    fn kills_a_command_and_its_children_at_the_deadline() {
        let mut command = Command::new("sh");
        // The child `sleep` keeps stdout open: without killing the whole
        // group, reading stdout would wait for it.
        command.args(["-c", "echo started; sleep 60 & wait"]);
        let started = Instant::now();
        let error = run_command(command, Duration::from_millis(200)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(30));
        assert_eq!(
            error.to_string(),
            "Failed to run `sh -c echo started; sleep 60 & wait`: timed out after 200ms and was \
             killed\n--- stdout ---\nstarted\n--- stderr ---\n"
        );
    }
}
