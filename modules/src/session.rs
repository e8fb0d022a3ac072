//! State shared by the resources of one run: the installed packages (read
//! once for the whole run), whether the package index must be refreshed,
//! and whether systemd must reload its unit files.
//!
//! Interior mutability (`RefCell`/`Cell`) because providers get a shared
//! `&Context`; a run is single-threaded, resource after resource.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};

/// What one run has learned and must remember between resources.
#[derive(Debug, Default)]
pub struct Session {
    /// Installed version by package name, or `None` when not installed.
    /// Filled by one query for every package of the catalog.
    pub(crate) installed: RefCell<Option<BTreeMap<String, Option<String>>>>,
    /// The newest version the sources offer, for `latest` packages.
    pub(crate) candidates: RefCell<Option<BTreeMap<String, Option<String>>>>,
    /// The packages held at their version (dpkg's selection `hold`, read
    /// by the same query as `installed`; dnf's versionlock list), read once
    /// for the run.
    pub(crate) held: RefCell<Option<BTreeSet<String>>>,
    /// Every package name of the catalog, so the first query covers them.
    pub(crate) package_names: Vec<String>,
    /// What earlier runs of this process learned of dpkg's database.
    pub(crate) package_memory: Option<std::sync::Arc<crate::package::PackageMemory>>,
    /// A package source changed: refresh the index before the next install.
    pub(crate) index_stale: Cell<bool>,
    /// What the last refresh of the index could not fetch (apt-get update
    /// only warns, and exits 0, when a source cannot be reached), said
    /// with a package the index then does not know.
    pub(crate) index_fetch_failures: RefCell<Vec<String>>,
    /// A unit file changed: `systemctl daemon-reload` before the next
    /// service action.
    pub(crate) daemon_reload_pending: Cell<bool>,
}

impl Session {
    /// A session for a catalog with these packages.
    pub fn new(package_names: Vec<String>) -> Session {
        Session {
            package_names,
            ..Session::default()
        }
    }

    /// The session, answering package queries from what earlier runs kept
    /// in `memory` while dpkg's database is unchanged, and keeping its own
    /// answers there.
    pub fn remembering(
        self,
        memory: Option<std::sync::Arc<crate::package::PackageMemory>>,
    ) -> Session {
        Session {
            package_memory: memory,
            ..self
        }
    }

    /// Tells the session that a file changed, so that a changed systemd unit
    /// leads to a daemon-reload before services are touched.
    pub fn file_changed(&self, path: &str) {
        const UNIT_DIRECTORIES: &[&str] = &[
            "/etc/systemd/system/",
            "/run/systemd/system/",
            "/lib/systemd/system/",
            "/usr/lib/systemd/system/",
        ];
        if UNIT_DIRECTORIES
            .iter()
            .any(|dir| path.starts_with(dir) || path == dir.trim_end_matches('/'))
        {
            self.daemon_reload_pending.set(true);
        }
    }

    /// Tells the session that packages were installed or removed: they may
    /// have brought or taken unit files.
    pub fn packages_changed(&self) {
        self.daemon_reload_pending.set(true);
    }

    /// Whether a unit file changed since the last daemon-reload.
    pub fn daemon_reload_pending(&self) -> bool {
        self.daemon_reload_pending.get()
    }
}
