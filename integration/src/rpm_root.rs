//! A root file system to install `.rpm` packages into with `rpm --root`,
//! as an image build installs into a chroot: no systemd running, no
//! network. rpm runs each scriptlet chrooted into the root with `/bin/sh`,
//! so the root holds the host's own `sh`, `systemctl`, `useradd`,
//! `groupadd`, `getent`, `chown`, `chmod` and `mkdir` with the libraries
//! they link (found with `ldd`): the scriptlets really run, with the real
//! tools, and what they did is read from the tree afterwards. A Debian host
//! has no glibc package in its rpm database, so packages are installed with
//! `--nodeps`; what they require is checked with `rpm -qp --requires`.

use crate::host_command::{
    CommandOutput, DEFAULT_COMMAND_TIMEOUT, host_tool, run_command, run_host_tool,
};
use crate::prerequisites::locate_program;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

/// The tools the scriptlets call, copied from the host into the root.
const SCRIPTLET_TOOLS: &[&str] = &[
    "sh",
    "getent",
    "groupadd",
    "useradd",
    "chown",
    "chmod",
    "mkdir",
    "systemctl",
];

/// The rpm database inside the root (Debian's rpm keeps its own under
/// `~/.rpmdb` by default; a distribution of RPMs uses this one).
const DATABASE_PATH: &str = "/var/lib/rpm";

/// A temporary root with an rpm database; removed when dropped.
pub struct RpmRoot {
    directory: tempfile::TempDir,
}

impl RpmRoot {
    /// A root with a merged `/usr` (as on Amazon Linux 2023), `/dev/null`,
    /// an `/etc/passwd` and `/etc/group` holding only root, the scriptlet
    /// tools, and an empty rpm database. Needs root (for `mknod` and
    /// rpm's `chroot`) and the host's `rpm` (Debian package rpm).
    pub fn create() -> Result<RpmRoot> {
        if nix::unistd::geteuid().as_raw() != 0 {
            bail!(
                "Failed to make an rpm root: installing into it with `rpm --root` chroots, which needs root\n\
                 hint: run the tests as root (as .ci/run does)"
            );
        }
        if !locate_program("rpm").is_absolute() {
            bail!(
                "Failed to make an rpm root: `rpm` is not installed (Debian package rpm)\n\
                 hint: apt-get install rpm"
            );
        }
        let directory = tempfile::Builder::new().prefix("cms-rpm-root.").tempdir()?;
        let root = RpmRoot { directory };
        for directory in ["usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "dev"] {
            std::fs::create_dir_all(root.path().join(directory))?;
        }
        for (link, target) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            std::os::unix::fs::symlink(target, root.path().join(link))?;
        }
        for (file, contents) in [
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
            ("etc/shadow", "root:*::0:99999:7:::\n"),
            ("etc/gshadow", "root:*::\n"),
        ] {
            std::fs::write(root.path().join(file), contents)?;
        }
        // The scriptlets send their output to /dev/null.
        run_host_tool(
            "mknod",
            [
                "-m",
                "666",
                &root.path().join("dev/null").to_string_lossy(),
                "c",
                "1",
                "3",
            ],
        )?;
        for tool in SCRIPTLET_TOOLS {
            root.copy_from_host_with_libraries(&locate_program(tool))?;
        }
        root.rpm(["--initdb"])?.into_success()?;
        Ok(root)
    }

    /// The root's directory on the host.
    pub fn path(&self) -> &Path {
        self.directory.path()
    }

    /// The host path of `path` inside the root (`/etc/cms/agent.toml`).
    pub fn join(&self, path: &str) -> PathBuf {
        self.path().join(path.trim_start_matches('/'))
    }

    /// Runs `rpm --root ROOT --dbpath /var/lib/rpm ARGUMENTS…`, whatever
    /// its exit status.
    pub fn rpm<I, S>(&self, arguments: I) -> Result<CommandOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = host_tool("rpm");
        command
            .arg("--root")
            .arg(self.path())
            .args(["--dbpath", DATABASE_PATH])
            .args(arguments);
        run_command(command, DEFAULT_COMMAND_TIMEOUT)
    }

    /// Installs `package` (`rpm -i --nodeps`), running its scriptlets.
    pub fn install(&self, package: &Path) -> Result<CommandOutput> {
        self.rpm(["-i".as_ref(), "--nodeps".as_ref(), package.as_os_str()])?
            .into_success()
    }

    /// Installs `package` again over itself as an upgrade does
    /// (`rpm -U --replacepkgs --nodeps`).
    pub fn reinstall(&self, package: &Path) -> Result<CommandOutput> {
        self.rpm([
            "-U".as_ref(),
            "--replacepkgs".as_ref(),
            "--nodeps".as_ref(),
            package.as_os_str(),
        ])?
        .into_success()
    }

    /// Erases the installed package `name` (`rpm -e`), running its
    /// scriptlets.
    pub fn erase(&self, name: &str) -> Result<CommandOutput> {
        self.rpm(["-e", "--nodeps", name])?.into_success()
    }

    /// Copies the host's `program` (following symlinks) and every library
    /// `ldd` says it loads to the same paths inside the root.
    fn copy_from_host_with_libraries(&self, program: &Path) -> Result<()> {
        let libraries = run_host_tool("ldd", [program])?.stdout;
        let paths = std::iter::once(program.to_path_buf()).chain(
            libraries
                .split_whitespace()
                .filter(|word| word.starts_with('/'))
                .map(PathBuf::from),
        );
        for path in paths {
            let destination = self.join(&path.to_string_lossy());
            if destination.exists() {
                continue;
            }
            if let Some(parent) = destination.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::copy(&path, &destination).with_context(|| {
                format!(
                    "Failed to copy {} into the rpm root at {}",
                    path.display(),
                    destination.display()
                )
            })?;
        }
        Ok(())
    }
}
