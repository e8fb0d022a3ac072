//! One booted instance: a copy of a baked image (an overlayfs mount, or a
//! full copy), with its own tags, booted by `systemd-nspawn --boot` with
//! systemd as PID 1 inside its own network namespace on the testbed bridge.
//!
//! Commands run inside with `nsenter --all` against the instance's PID 1.
//! Dropping an [`Instance`] powers it off and removes its process, mount,
//! network namespace, veth pair and directory, also while a test panics.

use crate::filesystem::{remove_tree, unmount_everything_under, write_file_with_mode};
use crate::host_command::{
    CommandOutput, DEFAULT_COMMAND_TIMEOUT, describe_command, host_tool, run_command,
    run_command_successfully,
};
use crate::image::BakedImage;
use crate::network::{InstanceNetwork, TestbedAddresses};
use crate::process_table::{ProcessTable, is_process_alive};
use crate::slots::SlotReservation;
use crate::wait::{POLL_INTERVAL, wait_until};
use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Where an instance finds its tags: a TOML table of `tag = "value"`.
pub const TAGS_FILE_PATH: &str = "/etc/cms/tags.toml";

/// Where each instance finds the internal package repository.
pub const PACKAGE_SOURCE_PATH: &str = "/etc/apt/sources.list.d/internal-package-repository.list";

/// How long `systemd-nspawn` may take to start the instance's systemd.
const INIT_APPEARANCE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a powered-off instance may take to halt before it is killed.
const GRACEFUL_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How long killed processes may take to disappear from /proc.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// The environment of every command run inside an instance: that of a root
/// login, not of the test process.
const INSTANCE_COMMAND_ENVIRONMENT: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("LANG", "C.UTF-8"),
    ("TERM", "dumb"),
    ("DEBIAN_FRONTEND", "noninteractive"),
];

/// How an instance gets its own root file system from the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RootFilesystemStrategy {
    /// An overlayfs mount (the image and the baked layer below, a fresh
    /// upper directory on top): instant, and the image stays untouched.
    /// Falls back to [`RootFilesystemStrategy::FullCopy`] when the kernel
    /// has no overlayfs.
    #[default]
    OverlayWhenAvailable,
    /// `cp -a --reflink=auto` of the image, then of the baked layer.
    FullCopy,
}

/// Where [`Instance::write_roles_repository`] writes a roles repository in
/// an instance, for `cms-agent apply --repo`.
pub const LOCAL_ROLES_REPOSITORY: &str = "/srv/roles";

/// What makes an instance different from the others booted from an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceConfig {
    /// Lowercase letters, digits and `-`, at most 32 characters; used as
    /// hostname and, with the `cmstb-` prefix, as machine and namespace name.
    pub name: String,
    /// Written to [`TAGS_FILE_PATH`] before boot.
    pub tags: BTreeMap<String, String>,
    pub root_filesystem: RootFilesystemStrategy,
}

impl InstanceConfig {
    /// An instance named `name`, without tags, on an overlay.
    pub fn new(name: &str) -> InstanceConfig {
        InstanceConfig {
            name: name.to_string(),
            tags: BTreeMap::new(),
            root_filesystem: RootFilesystemStrategy::default(),
        }
    }

    pub fn with_tag(mut self, tag: &str, value: &str) -> InstanceConfig {
        self.tags.insert(tag.to_string(), value.to_string());
        self
    }

    pub fn with_root_filesystem(mut self, strategy: RootFilesystemStrategy) -> InstanceConfig {
        self.root_filesystem = strategy;
        self
    }
}

/// The state `systemctl is-system-running --wait` reported once boot ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SystemState {
    Running,
    /// Booted, but some units failed; `failed_units` says which.
    Degraded {
        failed_units: Vec<String>,
    },
}

/// A booted instance. Dropping it tears it down; [`Instance::shutdown`]
/// does the same and reports errors instead of printing them.
#[derive(Debug)]
pub struct Instance {
    name: String,
    tags: BTreeMap<String, String>,
    directory: PathBuf,
    root_directory: PathBuf,
    address: Ipv4Addr,
    // Teardown order: the container, then the root mount, the network and
    // the directory. Each is `None` once removed (or never created).
    container: Option<Container>,
    root_mount: Option<PathBuf>,
    network: Option<InstanceNetwork>,
    directory_created: bool,
    // Dropped after teardown: the address slot, then the image layer the
    // root file system was stacked on.
    slot: SlotReservation,
    _image: BakedImage,
}

#[derive(Debug)]
struct Container {
    nspawn: Child,
    init_pid: u32,
}

impl Instance {
    pub(crate) fn start(
        slot: SlotReservation,
        instances_directory: &Path,
        image: &BakedImage,
        addresses: &TestbedAddresses,
        config: InstanceConfig,
    ) -> Result<Instance> {
        check_instance_name(&config.name)?;
        let prefixed_name = format!("{}{}", crate::NAME_PREFIX, config.name);
        let directory = instances_directory.join(&prefixed_name);
        let mut instance = Instance {
            name: config.name.clone(),
            tags: config.tags.clone(),
            root_directory: directory.join("root"),
            directory,
            address: addresses.instance_address(slot.slot()),
            container: None,
            root_mount: None,
            network: None,
            directory_created: false,
            slot,
            _image: image.clone(),
        };
        // From here on, an early return drops `instance`, and its drop guard
        // removes whatever was created so far.
        instance
            .prepare_root_file_system(image, config.root_filesystem)
            .with_context(|| {
                format!("Failed to prepare the root file system of {}", config.name)
            })?;
        instance.write_identity()?;
        instance.write_package_source(addresses)?;
        instance.network = Some(InstanceNetwork::create(
            &prefixed_name,
            instance.slot.slot(),
            instance.address,
        )?);
        instance
            .start_container(&prefixed_name)
            .with_context(|| format!("Failed to boot instance {}", config.name))?;
        Ok(instance)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tags(&self) -> &BTreeMap<String, String> {
        &self.tags
    }

    /// The instance's address on the testbed bridge.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The instance's root file system as the host sees it.
    pub fn root_directory(&self) -> &Path {
        &self.root_directory
    }

    /// What the instance printed on its console (boot and shutdown).
    pub fn console_log_path(&self) -> PathBuf {
        self.directory.join("console.log")
    }

    /// The host's process id of the instance's systemd.
    pub fn init_pid(&self) -> Option<u32> {
        self.container.as_ref().map(|container| container.init_pid)
    }

    /// Waits until the instance's systemd has finished booting, with
    /// `systemctl is-system-running --wait`, and returns `running`, or
    /// `degraded` with the failed units.
    pub fn wait_until_booted(&mut self, timeout: Duration) -> Result<SystemState> {
        let deadline = Instant::now() + timeout;
        loop {
            self.fail_if_container_exited()?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let output =
                self.run_with_timeout(&["systemctl", "is-system-running", "--wait"], remaining);
            let state = match &output {
                Ok(output) => output.stdout.trim().to_string(),
                Err(_) => String::new(),
            };
            match state.as_str() {
                "running" => return Ok(SystemState::Running),
                "degraded" => {
                    let failed_units = self
                        .run_successfully(&[
                            "systemctl",
                            "list-units",
                            "--failed",
                            "--plain",
                            "--no-legend",
                        ])?
                        .stdout
                        .lines()
                        .filter_map(|line| line.split_whitespace().next())
                        .map(str::to_string)
                        .collect();
                    return Ok(SystemState::Degraded { failed_units });
                }
                "maintenance" | "stopping" => bail!(
                    "Failed to boot instance {}: systemd is in state {state}\n{}",
                    self.name,
                    self.console_tail()
                ),
                // Before systemd's bus is up, systemctl cannot ask it and
                // says "offline" or nothing: try again.
                _ => {}
            }
            if Instant::now() >= deadline {
                let output = match output {
                    Ok(output) => format!("{}{}", output.stdout, output.stderr),
                    Err(error) => format!("{error:#}"),
                };
                bail!(
                    "Failed to boot instance {}: not booted after {timeout:?}; last answer of \
                     `systemctl is-system-running`: {}\n{}",
                    self.name,
                    output.trim(),
                    self.console_tail()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Runs a command inside the instance as root and returns its output,
    /// whatever its exit status.
    pub fn run(&self, program_and_arguments: &[&str]) -> Result<CommandOutput> {
        self.run_with_timeout(program_and_arguments, DEFAULT_COMMAND_TIMEOUT)
    }

    /// Runs a shell command line inside the instance (`sh -c`) and returns
    /// its stdout, trimmed; fails unless it exits with 0.
    pub fn shell(&self, command: &str) -> Result<String> {
        Ok(self
            .run_successfully(&["sh", "-c", command])?
            .stdout
            .trim()
            .to_string())
    }

    /// Writes a roles repository into the instance, at
    /// [`LOCAL_ROLES_REPOSITORY`]: `(path, text)` pairs relative to it
    /// (`cms.toml`, `roles/app.toml`, `files/ca.pem`).
    pub fn write_roles_repository(&self, files: &[(&str, &str)]) -> Result<()> {
        let repository = self
            .root_directory()
            .join(LOCAL_ROLES_REPOSITORY.trim_start_matches('/'));
        for (path, text) in files {
            let path = repository.join(path);
            std::fs::create_dir_all(path.parent().context("a parent folder")?)?;
            std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
        }
        Ok(())
    }

    /// Runs `cms-agent apply` on the [`LOCAL_ROLES_REPOSITORY`] with `tags`
    /// (`role=app`) and `extra` arguments; returns its exit code (-1 when
    /// killed) and its stdout followed by its stderr.
    pub fn apply_roles_repository(&self, tags: &str, extra: &[&str]) -> Result<(i32, String)> {
        let mut args = vec![
            "cms-agent",
            "apply",
            "--repo",
            LOCAL_ROLES_REPOSITORY,
            "--tags",
            tags,
        ];
        args.extend_from_slice(extra);
        let output = self.run(&args)?;
        Ok((
            output.exit_code.unwrap_or(-1),
            format!("{}{}", output.stdout, output.stderr),
        ))
    }

    /// Runs a command inside the instance and fails unless it exits with 0;
    /// the error carries its stdout and stderr.
    pub fn run_successfully(&self, program_and_arguments: &[&str]) -> Result<CommandOutput> {
        self.run(program_and_arguments)?
            .into_success()
            .with_context(|| format!("Failed to run a command in instance {}", self.name))
    }

    /// Runs a command inside the instance, killing it after `timeout`.
    pub fn run_with_timeout(
        &self,
        program_and_arguments: &[&str],
        timeout: Duration,
    ) -> Result<CommandOutput> {
        let Some(container) = &self.container else {
            bail!(
                "Failed to run a command in instance {}: it is not running",
                self.name
            );
        };
        let mut command = host_tool("nsenter");
        command
            .env_clear()
            .envs(INSTANCE_COMMAND_ENVIRONMENT.iter().copied())
            .arg(format!("--target={}", container.init_pid))
            .arg("--all")
            .arg("--")
            .args(program_and_arguments);
        let mut output = run_command(command, timeout)
            .with_context(|| format!("Failed to run a command in instance {}", self.name))?;
        // Messages should show the command as run inside the instance.
        output.command_line = format!("[{}] {}", self.name, program_and_arguments.join(" "));
        Ok(output)
    }

    /// Powers the instance off and removes everything it used on the host.
    pub fn shutdown(mut self) -> Result<()> {
        self.tear_down()
    }

    /// Leaves the instance running, with its mount, network namespace, veth
    /// pair and directory in place, as a test process killed with SIGKILL
    /// would. Only for testing that [`crate::Testbed::start`] removes such
    /// leftovers.
    pub fn abandon_as_if_crashed(mut self) {
        // Dropping a `Child` neither kills nor waits for the process.
        self.container = None;
        self.root_mount = None;
        if let Some(network) = self.network.take() {
            std::mem::forget(network);
        }
        self.directory_created = false;
    }

    fn prepare_root_file_system(
        &mut self,
        image: &BakedImage,
        strategy: RootFilesystemStrategy,
    ) -> Result<()> {
        // A directory of this name can only be a leftover: names are unique
        // within a testbed, and the testbed lock excludes other processes.
        remove_tree(&self.directory)?;
        std::fs::create_dir_all(&self.root_directory)
            .with_context(|| format!("Failed to create {}", self.root_directory.display()))?;
        self.directory_created = true;
        let base_root = image.base().root_directory();
        let layer_directory = image.layer_directory();
        let layer = layer_directory.as_path();
        if strategy == RootFilesystemStrategy::OverlayWhenAvailable
            && crate::filesystem::kernel_has_overlayfs()
        {
            let upper = self.directory.join("upper");
            let work = self.directory.join("work");
            for directory in [&upper, &work] {
                std::fs::create_dir(directory)
                    .with_context(|| format!("Failed to create {}", directory.display()))?;
            }
            let paths = [layer, base_root.as_path(), &upper, &work];
            if let Some(unusable) = paths
                .iter()
                .find(|path| path.to_string_lossy().contains([',', ':']))
            {
                bail!(
                    "Failed to mount an overlay: the path {} contains `,` or `:`; choose another \
                     cache directory",
                    unusable.display()
                );
            }
            // The baked layer is listed first, so it lies above the image.
            let options = format!(
                "lowerdir={}:{},upperdir={},workdir={}",
                layer.display(),
                base_root.display(),
                upper.display(),
                work.display()
            );
            nix::mount::mount(
                Some("cmstb-overlay"),
                &self.root_directory,
                Some("overlay"),
                nix::mount::MsFlags::empty(),
                Some(options.as_str()),
            )
            .with_context(|| format!("Failed to mount overlay with {options}"))?;
            self.root_mount = Some(self.root_directory.clone());
        } else {
            for source in [base_root.as_path(), layer] {
                let mut copy = host_tool("cp");
                copy.args(["-a", "--reflink=auto"])
                    .arg(source.join("."))
                    .arg(&self.root_directory);
                run_command_successfully(copy, DEFAULT_COMMAND_TIMEOUT)?;
            }
        }
        Ok(())
    }

    fn write_identity(&self) -> Result<()> {
        let tags = toml::to_string(&self.tags).context("Failed to render the tags as TOML")?;
        let relative_tags_path = TAGS_FILE_PATH.trim_start_matches('/');
        write_file_with_mode(
            &self.root_directory.join(relative_tags_path),
            tags.as_bytes(),
            0o644,
        )?;
        write_file_with_mode(
            &self.root_directory.join("etc/hostname"),
            format!("{}\n", self.name).as_bytes(),
            0o644,
        )
    }

    /// The internal package repository of this testbed, as the instance's
    /// only apt source (the baked image has none). It is a flat repository
    /// (`./`), unsigned, hence `[trusted=yes]`.
    fn write_package_source(&self, addresses: &TestbedAddresses) -> Result<()> {
        write_file_with_mode(
            &self
                .root_directory
                .join(PACKAGE_SOURCE_PATH.trim_start_matches('/')),
            format!("deb [trusted=yes] {} ./\n", addresses.package_repo_url()).as_bytes(),
            0o644,
        )
    }

    fn start_container(&mut self, prefixed_name: &str) -> Result<()> {
        let console_log_path = self.console_log_path();
        let console_log = std::fs::File::create(&console_log_path)
            .with_context(|| format!("Failed to create {}", console_log_path.display()))?;
        let console_log_for_stderr = console_log
            .try_clone()
            .context("Failed to duplicate the console log handle")?;
        let mut nspawn = host_tool("systemd-nspawn");
        nspawn
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .arg(format!("--directory={}", self.root_directory.display()))
            .arg(format!("--machine={prefixed_name}"))
            .arg(format!("--hostname={}", self.name))
            // Without these two, nspawn asks systemd-machined on the host's
            // system bus, which this kind of machine does not have.
            .arg("--register=no")
            .arg("--keep-unit")
            .arg(format!(
                "--network-namespace-path=/run/netns/{prefixed_name}"
            ))
            // Leave the host's journal, resolv.conf and time zone alone.
            .arg("--link-journal=no")
            .arg("--resolv-conf=off")
            .arg("--timezone=off")
            .arg("--console=read-only")
            .arg("--boot")
            .stdin(Stdio::null())
            .stdout(console_log)
            .stderr(console_log_for_stderr);
        let command_line = describe_command(&nspawn);
        let mut child = nspawn
            .spawn()
            .with_context(|| format!("Failed to start `{command_line}`"))?;
        let nspawn_pid = child.id();
        // nspawn forks the process that becomes the instance's PID 1, which
        // then executes systemd.
        let init_pid = wait_until(
            INIT_APPEARANCE_TIMEOUT,
            "the instance's systemd to start",
            || {
                if let Some(status) = child
                    .try_wait()
                    .context("Failed to wait for systemd-nspawn")?
                {
                    bail!(
                        "systemd-nspawn exited with {status} before systemd started\n{}",
                        tail_of_file(&console_log_path)
                    );
                }
                Ok(ProcessTable::snapshot()
                    .find_descendant_named(nspawn_pid, "systemd")
                    .map(|process| process.pid))
            },
        );
        match init_pid {
            Ok(init_pid) => {
                self.container = Some(Container {
                    nspawn: child,
                    init_pid,
                });
                Ok(())
            }
            Err(error) => {
                // Without a known PID 1, stop nspawn itself; it takes its
                // children along.
                let _ = kill(Pid::from_raw(nspawn_pid as i32), Signal::SIGKILL);
                let _ = child.wait();
                Err(error)
            }
        }
    }

    fn fail_if_container_exited(&mut self) -> Result<()> {
        let Some(container) = &mut self.container else {
            bail!("Failed to use instance {}: it is not running", self.name);
        };
        if let Some(status) = container
            .nspawn
            .try_wait()
            .context("Failed to wait for systemd-nspawn")?
        {
            let name = self.name.clone();
            self.container = None;
            bail!(
                "Failed to use instance {name}: systemd-nspawn exited with {status}\n{}",
                self.console_tail()
            );
        }
        Ok(())
    }

    fn console_tail(&self) -> String {
        tail_of_file(&self.console_log_path())
    }

    fn tear_down(&mut self) -> Result<()> {
        let mut results = Vec::new();
        if let Some(container) = self.container.take() {
            results.push(stop_container(container));
        }
        if let Some(mount_point) = self.root_mount.take() {
            results.push(unmount_everything_under(&mount_point));
        }
        if let Some(mut network) = self.network.take() {
            results.push(network.remove());
        }
        if std::mem::take(&mut self.directory_created) {
            results.push(remove_tree(&self.directory));
        }
        let errors: Vec<anyhow::Error> = results.into_iter().filter_map(Result::err).collect();
        if errors.is_empty() {
            return Ok(());
        }
        let details: Vec<String> = errors.iter().map(|error| format!("{error:#}")).collect();
        bail!(
            "Failed to tear down instance {} completely:\n  {}",
            self.name,
            details.join("\n  ")
        )
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Err(error) = self.tear_down() {
            eprintln!("testbed: {error:#}");
        }
    }
}

/// Asks the instance to power off (nspawn turns SIGTERM into the signal
/// that makes systemd halt cleanly), and kills it if it has not halted by
/// the deadline. Killing the instance's PID 1 kills every process in it.
fn stop_container(mut container: Container) -> Result<()> {
    let nspawn_pid = Pid::from_raw(container.nspawn.id() as i32);
    let already_exited = container
        .nspawn
        .try_wait()
        .context("Failed to wait for systemd-nspawn")?
        .is_some();
    if !already_exited {
        let _ = kill(nspawn_pid, Signal::SIGTERM);
        let halted = wait_until(GRACEFUL_STOP_TIMEOUT, "the instance to halt", || {
            Ok(container
                .nspawn
                .try_wait()
                .context("Failed to wait for systemd-nspawn")?
                .map(|_| ()))
        });
        if let Err(error) = halted {
            eprintln!("testbed: {error:#}; killing it");
            kill_init_if_still_systemd(container.init_pid);
            let _ = kill(nspawn_pid, Signal::SIGKILL);
            container
                .nspawn
                .wait()
                .context("Failed to wait for the killed systemd-nspawn")?;
        }
    }
    // nspawn normally outlives its PID 1; make sure of it.
    wait_until(KILL_TIMEOUT, "the instance's processes to exit", || {
        if is_process_alive(container.init_pid) {
            kill_init_if_still_systemd(container.init_pid);
            return Ok(None);
        }
        Ok(Some(()))
    })
}

fn kill_init_if_still_systemd(init_pid: u32) {
    let table = ProcessTable::snapshot();
    if table
        .get(init_pid)
        .is_some_and(|process| process.name == "systemd")
    {
        let _ = kill(Pid::from_raw(init_pid as i32), Signal::SIGKILL);
    }
}

fn check_instance_name(name: &str) -> Result<()> {
    let valid_characters = name.chars().all(|character| {
        character.is_ascii_lowercase() || character.is_ascii_digit() || character == '-'
    });
    let valid = !name.is_empty()
        && name.len() <= 32
        && valid_characters
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !valid {
        bail!(
            "Failed to boot instance {name:?}: a name is 1 to 32 lowercase letters, digits and \
             inner `-`"
        );
    }
    Ok(())
}

/// The last lines of a log file, for error messages.
pub(crate) fn tail_of_file(path: &Path) -> String {
    const TAIL_LINES: usize = 40;
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
            format!(
                "--- last lines of {} ---\n{}",
                path.display(),
                tail.join("\n")
            )
        }
        Err(error) => format!("(could not read {}: {error})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_short_lowercase_hostnames() {
        for valid in ["web", "db-1", "a", "x234567890123456789012345678901z"] {
            assert!(check_instance_name(valid).is_ok(), "{valid}");
        }
        for invalid in [
            "",
            "Web",
            "web_1",
            "-web",
            "web-",
            "web.example",
            &"a".repeat(33),
        ] {
            assert!(check_instance_name(invalid).is_err(), "{invalid}");
        }
    }

    #[test]
    fn tags_are_written_as_a_toml_table() {
        let config = InstanceConfig::new("web")
            .with_tag("role", "web")
            .with_tag("env", "test");
        assert_eq!(
            toml::to_string(&config.tags).unwrap(),
            "env = \"test\"\nrole = \"web\"\n"
        );
    }
}
