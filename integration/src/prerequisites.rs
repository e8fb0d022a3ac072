//! What the machine must offer before the testbed can run, and a loud error
//! naming everything that is missing at once: the end-to-end tests fail on a
//! machine that cannot run them, they never skip or pass silently.

use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

/// A tool the testbed runs on the host, with the Debian package that ships it.
struct RequiredTool {
    program: &'static str,
    debian_package: &'static str,
    used_for: &'static str,
}

const REQUIRED_TOOLS: &[RequiredTool] = &[
    RequiredTool {
        program: "debootstrap",
        debian_package: "debootstrap",
        used_for: "building the image",
    },
    RequiredTool {
        program: "systemd-nspawn",
        debian_package: "systemd-container",
        used_for: "booting instances",
    },
    RequiredTool {
        program: "unshare",
        debian_package: "util-linux",
        used_for: "installing the agent's package into the image in a private mount namespace",
    },
    RequiredTool {
        program: "objcopy",
        debian_package: "binutils",
        used_for: "stripping binaries in scripts/package",
    },
    RequiredTool {
        program: "nsenter",
        debian_package: "util-linux",
        used_for: "running commands inside instances",
    },
    RequiredTool {
        program: "ip",
        debian_package: "iproute2",
        used_for: "the bridge, veth pairs and network namespaces",
    },
    RequiredTool {
        program: "dpkg-deb",
        debian_package: "dpkg",
        used_for: "building test packages",
    },
    RequiredTool {
        program: "dpkg-scanpackages",
        debian_package: "dpkg-dev",
        used_for: "indexing the internal package repository",
    },
    RequiredTool {
        program: "apt-get",
        debian_package: "apt",
        used_for: "downloading Debian packages for the internal repository",
    },
    RequiredTool {
        program: "cp",
        debian_package: "coreutils",
        used_for: "copying instance root file systems",
    },
];

/// What the prerequisite check needs to know about the host, behind a trait
/// so that the message for a machine lacking everything can be tested on a
/// machine that has everything.
pub(crate) trait HostProbe {
    fn effective_user_id(&self) -> u32;
    fn find_program(&self, program: &str) -> Option<PathBuf>;
}

struct RealHost;

impl HostProbe for RealHost {
    fn effective_user_id(&self) -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn find_program(&self, program: &str) -> Option<PathBuf> {
        // Look in PATH and also in the sbin directories, which a non-login
        // root shell may lack from PATH although the tools live there.
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(
                [
                    "/usr/local/sbin",
                    "/usr/local/bin",
                    "/usr/sbin",
                    "/usr/bin",
                    "/sbin",
                    "/bin",
                ]
                .into_iter()
                .map(PathBuf::from),
            )
            .map(|directory| directory.join(program))
            .find(|candidate| is_executable_file(candidate))
    }
}

/// The absolute path of a host tool, found as the prerequisite check finds
/// it; the bare name when it is missing (the command then fails with a
/// "not found" that names it).
pub(crate) fn locate_program(program: &str) -> PathBuf {
    RealHost
        .find_program(program)
        .unwrap_or_else(|| PathBuf::from(program))
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Checks that this process runs as root and that every tool the testbed
/// uses is installed. The error lists everything missing and how to get it.
pub fn check_prerequisites() -> Result<()> {
    check_prerequisites_with(&RealHost)
}

pub(crate) fn check_prerequisites_with(host: &dyn HostProbe) -> Result<()> {
    let mut missing = Vec::new();
    let effective_user_id = host.effective_user_id();
    if effective_user_id != 0 {
        missing.push(format!(
            "root: this process runs as user id {effective_user_id}; the testbed needs root for \
             debootstrap, mounts and network namespaces"
        ));
    }
    let mut packages_to_install = Vec::new();
    for tool in REQUIRED_TOOLS {
        if host.find_program(tool.program).is_none() {
            missing.push(format!(
                "`{}` (Debian package {}), needed for {}",
                tool.program, tool.debian_package, tool.used_for
            ));
            packages_to_install.push(tool.debian_package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let mut message = String::from(
        "Failed to start the testbed: this machine cannot boot test instances; missing:",
    );
    for item in &missing {
        message.push_str("\n  - ");
        message.push_str(item);
    }
    if !packages_to_install.is_empty() {
        message.push_str("\nhint: apt-get install ");
        message.push_str(&packages_to_install.join(" "));
    }
    if effective_user_id != 0 {
        message.push_str("\nhint: run the end-to-end tests as root (as .ci/run does)");
    }
    bail!(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeHost {
        effective_user_id: u32,
        installed_programs: Vec<&'static str>,
    }

    impl HostProbe for FakeHost {
        fn effective_user_id(&self) -> u32 {
            self.effective_user_id
        }

        fn find_program(&self, program: &str) -> Option<PathBuf> {
            self.installed_programs
                .contains(&program)
                .then(|| PathBuf::from("/usr/bin").join(program))
        }
    }

    #[track_caller]
    fn check(host: FakeHost) -> String {
        match check_prerequisites_with(&host) {
            Ok(()) => "ok".to_string(),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn a_root_host_with_every_tool_passes() {
        let everything = REQUIRED_TOOLS.iter().map(|tool| tool.program).collect();
        let outcome = check(FakeHost {
            effective_user_id: 0,
            installed_programs: everything,
        });
        assert_eq!(outcome, "ok");
    }

    #[test]
    fn a_bare_unprivileged_host_is_told_everything_it_lacks() {
        let outcome = check(FakeHost {
            effective_user_id: 1000,
            installed_programs: vec!["cp", "apt-get", "dpkg-deb", "nsenter", "unshare", "objcopy"],
        });
        assert_eq!(
            outcome,
            "Failed to start the testbed: this machine cannot boot test instances; missing:\n  \
             - root: this process runs as user id 1000; the testbed needs root for debootstrap, \
             mounts and network namespaces\n  \
             - `debootstrap` (Debian package debootstrap), needed for building the image\n  \
             - `systemd-nspawn` (Debian package systemd-container), needed for booting instances\n  \
             - `ip` (Debian package iproute2), needed for the bridge, veth pairs and network namespaces\n  \
             - `dpkg-scanpackages` (Debian package dpkg-dev), needed for indexing the internal package repository\n\
             hint: apt-get install debootstrap systemd-container iproute2 dpkg-dev\n\
             hint: run the end-to-end tests as root (as .ci/run does)"
        );
    }
}
