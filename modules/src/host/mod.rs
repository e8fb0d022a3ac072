//! The host: the only place that touches the filesystem or runs commands.
//!
//! A [`Host`] has a filesystem root. On an instance it is `/`; in tests it is
//! a temporary directory, and every absolute path of the catalog is taken
//! relative to it. Commands always run on the real machine (with the root as
//! their working directory only when asked), so providers that need
//! `systemctl` or `apt-get` are tested in testbed instances, not here.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub mod clock;
mod command;
pub mod fs;
pub mod http;

pub use command::{CommandOutput, CommandSpec, wait_for_exit};

/// Why an operation on the host failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("Failed to {action} {path}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {seconds} s and was killed")]
    Timeout { command: String, seconds: u64 },
    #[error("Failed to fetch {url}: {message}")]
    Http { url: String, message: String },
    #[error("Failed to find {kind} `{name}` on this host")]
    UnknownAccount { kind: &'static str, name: String },
    #[error(
        "Failed to reach {path}: {link} is a symlink (to {target}), and the agent never follows a symlink on the way to a managed path; declare the path where it really is, or replace the link by a directory"
    )]
    SymlinkInPath {
        /// The catalog path that was to be read or changed.
        path: String,
        /// The catalog path of the first symlink on the way.
        link: String,
        /// What the link points at, as written in it.
        target: String,
    },
}

impl HostError {
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> HostError {
        HostError::Io {
            action,
            path: path.display().to_string(),
            source,
        }
    }
}

/// The machine being converged, seen through its filesystem root.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    /// Resolve paths by the `O_NOFOLLOW` walk even where `openat2` exists:
    /// how tests cover the fallback for kernels older than 5.6.
    resolve_by_walk: bool,
    /// Directories reached for reading, kept until the host changes
    /// (`fs::OpenedDirectories`); shared by the clones of this host, so a
    /// change through one forgets them for all.
    opened: Arc<Mutex<fs::OpenedDirectories>>,
    /// Commands started through this host and its clones.
    commands: Arc<std::sync::atomic::AtomicU64>,
}

impl Host {
    /// The host whose files live under `root` (`/` on a real instance).
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host {
            root: root.into(),
            resolve_by_walk: false,
            opened: Arc::default(),
            commands: Arc::default(),
        }
    }

    /// How many commands this host (and its clones) started so far: what
    /// a run cost in processes, for its log and for tests.
    pub fn commands_started(&self) -> u64 {
        self.commands.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This host, resolving paths by the `O_NOFOLLOW` walk that kernels
    /// without `openat2` get, for tests of that fallback.
    pub fn resolving_by_walk(mut self) -> Host {
        self.resolve_by_walk = true;
        self
    }

    /// The real machine.
    pub fn system() -> Host {
        Host::new("/")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where an absolute catalog path lives on this host.
    pub fn path(&self, absolute: &str) -> PathBuf {
        self.root.join(absolute.trim_start_matches('/'))
    }
}
