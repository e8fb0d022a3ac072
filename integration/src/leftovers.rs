//! Finding and removing what the testbed left on the host: processes,
//! mounts, network namespaces, links and directories. A test run that was
//! killed cannot run its drop guards, so [`crate::Testbed::start`] removes
//! the leftovers of earlier runs first; and a test can call
//! [`find_leftovers`] after tearing down to check that nothing remains.
//!
//! Everything is recognised by the `cmstb-` prefix: machine names on the
//! `systemd-nspawn` command line, namespace and link names, and the
//! `instances/cmstb-NAME` directories instance root file systems live in.

use crate::filesystem::{
    read_mount_table, read_own_mount_table, remove_tree, scratch_directory_owner, unmount,
};
use crate::network::{
    delete_link, delete_network_namespace, testbed_link_names, testbed_network_namespace_names,
};
use crate::process_table::{ProcessEntry, ProcessTable, is_process_alive};
use crate::settings::TestbedSettings;
use crate::wait::wait_until;
use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Found in the path of every instance root file system, and so in the
/// mount table entry of the root of every process inside an instance.
const INSTANCE_DIRECTORY_MARKER: &str = "/instances/cmstb-";

/// What the testbed left behind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// `PID NAME COMMAND-LINE` of `systemd-nspawn` processes of testbed
    /// machines and of processes running inside an instance.
    pub processes: Vec<String>,
    /// Mount points of instance root file systems (and anything under the
    /// cache directory).
    pub mounts: Vec<PathBuf>,
    pub network_namespaces: Vec<String>,
    /// The bridge and veth pairs.
    pub links: Vec<String>,
    /// Instance directories, and scratch directories (baked layers, package
    /// repositories) whose process is gone or is this one.
    pub directories: Vec<PathBuf>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self == &Leftovers::default()
    }
}

impl fmt::Display for Leftovers {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return write!(formatter, "no testbed leftovers");
        }
        write!(formatter, "testbed leftovers:")?;
        let sections: [(&str, Vec<String>); 5] = [
            ("processes", self.processes.clone()),
            ("mounts", display_paths(&self.mounts)),
            ("network namespaces", self.network_namespaces.clone()),
            ("links", self.links.clone()),
            ("directories", display_paths(&self.directories)),
        ];
        for (title, items) in sections {
            for item in items {
                write!(formatter, "\n  {title}: {item}")?;
            }
        }
        Ok(())
    }
}

fn display_paths(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect()
}

/// Lists everything the testbed left on this host. Scratch directories of
/// other live processes (a concurrent test run) are not leftovers; those of
/// this process are, since it is expected to have dropped them.
///
/// Holds the machine lock while looking, so that a testbed starting in
/// another process does not show up as a leftover: it waits for a running
/// testbed of another process to finish, and fails while one of this
/// process is still running.
pub fn find_leftovers(settings: &TestbedSettings) -> Result<Leftovers> {
    let _machine_lock = crate::machine_lock::MachineLock::for_inspection()?;
    let processes = find_leftover_processes()?;
    Ok(Leftovers {
        processes: processes.iter().map(describe_process).collect(),
        mounts: find_leftover_mounts(settings)?,
        network_namespaces: testbed_network_namespace_names()?,
        links: testbed_link_names()?,
        directories: find_leftover_directories(settings, ScratchOwners::DeadOrThisProcess)?,
    })
}

/// What instance `name` left on this host after it was shut down: its
/// container's processes, its mounts, its network namespace and its
/// directory. Unlike [`find_leftovers`] it does not take the machine lock,
/// so a test can check its own instance while the testbed (shared with
/// other tests) runs on; the instance's veth pair is named after its
/// address slot, not its name, and is left to [`find_leftovers`].
pub fn find_leftovers_of_instance(settings: &TestbedSettings, name: &str) -> Result<Leftovers> {
    let prefixed = format!("{}{name}", crate::NAME_PREFIX);
    let marker = format!("/instances/{prefixed}/");
    let own_mount_namespace = std::fs::read_link("/proc/self/ns/mnt")
        .context("Failed to read this process's mount namespace")?;
    let machine_argument = format!("--machine={prefixed}");
    let processes = ProcessTable::snapshot()
        .processes()
        .filter(|process| !process.is_zombie())
        .filter(|process| {
            (process.name == "systemd-nspawn" && process.command_line.contains(&machine_argument))
                || is_inside(process.pid, &own_mount_namespace, &marker)
        })
        .map(describe_process)
        .collect();
    let mounts = read_own_mount_table()?
        .into_iter()
        .map(|entry| entry.mount_point)
        .filter(|mount_point| {
            let path = format!("{}/", mount_point.to_string_lossy());
            path.contains(&marker)
        })
        .collect();
    let directory = settings.instances_directory().join(&prefixed);
    Ok(Leftovers {
        processes,
        mounts,
        network_namespaces: testbed_network_namespace_names()?
            .into_iter()
            .filter(|namespace| *namespace == prefixed)
            .collect(),
        links: Vec::new(),
        directories: directory
            .exists()
            .then_some(directory)
            .into_iter()
            .collect(),
    })
}

/// Removes the leftovers of earlier runs. Called with the testbed lock held,
/// so no other process has live instances; live scratch directories of
/// other processes (and of this one) are kept.
pub(crate) fn remove_leftovers(settings: &TestbedSettings) -> Result<Leftovers> {
    let processes = find_leftover_processes()?;
    let removed_processes = processes.iter().map(describe_process).collect();
    for process in &processes {
        // SIGKILL to an instance's PID 1 ends every process inside it.
        let _ = kill(Pid::from_raw(process.pid as i32), Signal::SIGKILL);
    }
    wait_until(
        Duration::from_secs(10),
        "leftover processes to exit",
        || {
            Ok(processes
                .iter()
                .all(|process| !is_process_alive(process.pid))
                .then_some(()))
        },
    )
    .context("Failed to kill the processes of an earlier testbed run")?;

    let mounts = find_leftover_mounts(settings)?;
    for mount_point in &mounts {
        unmount(mount_point)?;
    }
    let network_namespaces = testbed_network_namespace_names()?;
    for name in &network_namespaces {
        delete_network_namespace(name)?;
    }
    let links = testbed_link_names()?;
    for name in &links {
        delete_link(name)?;
    }
    let directories = find_leftover_directories(settings, ScratchOwners::Dead)?;
    for directory in &directories {
        remove_tree(directory)?;
    }
    Ok(Leftovers {
        processes: removed_processes,
        mounts,
        network_namespaces,
        links,
        directories,
    })
}

fn describe_process(process: &ProcessEntry) -> String {
    format!(
        "{} {} {}",
        process.pid,
        process.name,
        process.command_line.join(" ")
    )
}

/// `systemd-nspawn` processes of testbed machines, and processes whose root
/// file system is an instance's. Zombies are already dead and left out.
fn find_leftover_processes() -> Result<Vec<ProcessEntry>> {
    let own_mount_namespace = std::fs::read_link("/proc/self/ns/mnt")
        .context("Failed to read this process's mount namespace")?;
    let table = ProcessTable::snapshot();
    Ok(table
        .processes()
        .filter(|process| !process.is_zombie())
        .filter(|process| {
            is_testbed_nspawn(process) || is_inside_an_instance(process.pid, &own_mount_namespace)
        })
        .cloned()
        .collect())
}

fn is_testbed_nspawn(process: &ProcessEntry) -> bool {
    let machine_argument = format!("--machine={}", crate::NAME_PREFIX);
    process.name == "systemd-nspawn"
        && process
            .command_line
            .iter()
            .any(|argument| argument.starts_with(&machine_argument))
}

fn is_inside_an_instance(pid: u32, own_mount_namespace: &Path) -> bool {
    is_inside(pid, own_mount_namespace, INSTANCE_DIRECTORY_MARKER)
}

/// Whether process `pid` runs in another mount namespace whose root file
/// system's path (or overlay options) contains `marker`.
fn is_inside(pid: u32, own_mount_namespace: &Path, marker: &str) -> bool {
    let process_directory = PathBuf::from(format!("/proc/{pid}"));
    // Processes sharing the host's mount namespace are not in an instance;
    // skipping them keeps the scan cheap.
    match std::fs::read_link(process_directory.join("ns/mnt")) {
        Ok(namespace) if namespace != own_mount_namespace => {}
        _ => return false,
    }
    let Ok(mounts) = read_mount_table(&process_directory.join("mountinfo")) else {
        return false;
    };
    mounts
        .iter()
        .filter(|mount| mount.mount_point == Path::new("/"))
        .any(|root| root.root.contains(marker) || root.super_options.contains(marker))
}

/// Mounts of instance root file systems and anything under the cache
/// directory, deepest first.
fn find_leftover_mounts(settings: &TestbedSettings) -> Result<Vec<PathBuf>> {
    let mut mounts: Vec<PathBuf> = read_own_mount_table()?
        .into_iter()
        .map(|entry| entry.mount_point)
        .filter(|mount_point| {
            mount_point.starts_with(settings.cache_directory())
                || mount_point
                    .to_string_lossy()
                    .contains(INSTANCE_DIRECTORY_MARKER)
        })
        .collect();
    mounts.sort_by_key(|mount_point| std::cmp::Reverse(mount_point.components().count()));
    Ok(mounts)
}

enum ScratchOwners {
    /// Scratch directories whose creating process is gone.
    Dead,
    /// Those, and the ones this process created.
    DeadOrThisProcess,
}

fn find_leftover_directories(
    settings: &TestbedSettings,
    owners: ScratchOwners,
) -> Result<Vec<PathBuf>> {
    let mut directories = list_directory(&settings.instances_directory())?;
    for scratch in list_directory(&settings.scratch_directory())? {
        let owner = scratch
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(scratch_directory_owner);
        let is_leftover = match (owner, &owners) {
            // Not named by the testbed: not ours to judge, leave it.
            (None, _) => false,
            (Some(pid), ScratchOwners::Dead) => pid != std::process::id() && !is_process_alive(pid),
            (Some(pid), ScratchOwners::DeadOrThisProcess) => {
                pid == std::process::id() || !is_process_alive(pid)
            }
        };
        if is_leftover {
            directories.push(scratch);
        }
    }
    Ok(directories)
}

fn list_directory(directory: &Path) -> Result<Vec<PathBuf>> {
    match std::fs::read_dir(directory) {
        Ok(entries) => entries
            .map(|entry| Ok(entry?.path()))
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("Failed to list {}", directory.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(error).with_context(|| format!("Failed to list {}", directory.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_read_as_a_list() {
        let leftovers = Leftovers {
            network_namespaces: vec!["cmstb-web".to_string()],
            mounts: vec![PathBuf::from(
                "/var/cache/cms-testbed/instances/cmstb-web/root",
            )],
            ..Leftovers::default()
        };
        assert_eq!(
            leftovers.to_string(),
            "testbed leftovers:\n  \
             mounts: /var/cache/cms-testbed/instances/cmstb-web/root\n  \
             network namespaces: cmstb-web"
        );
        assert_eq!(Leftovers::default().to_string(), "no testbed leftovers");
    }
}
