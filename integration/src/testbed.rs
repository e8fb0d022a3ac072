//! The host side of the testbed: one per machine at a time (a lock file
//! keeps test processes, and tests within one process, from sharing the
//! bridge), leftovers of crashed runs removed at start, the bridge, the
//! address slots of instances, and the internal package repository's server.

use crate::http_file_server::HttpFileServer;
use crate::image::BakedImage;
use crate::instance::{Instance, InstanceConfig};
use crate::leftovers::remove_leftovers;
use crate::machine_lock::MachineLock;
use crate::network::{Bridge, HOST_ADDRESS, PACKAGE_REPO_PORT};
use crate::package_repo::PackageRepo;
use crate::settings::TestbedSettings;
use crate::slots::SlotTable;
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long [`Testbed::boot`] waits for an instance's systemd to finish
/// booting; a few seconds is usual.
pub(crate) const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The testbed. Instances and servers keep its bridge alive; the bridge is
/// removed when the testbed and all of them are gone.
#[derive(Debug)]
pub struct Testbed {
    shared: Arc<TestbedShared>,
}

#[derive(Debug)]
pub(crate) struct TestbedShared {
    settings: TestbedSettings,
    slots: Arc<SlotTable>,
    bridge: Bridge,
    // Declared last: released only after the bridge is removed.
    _machine_lock: MachineLock,
}

impl Testbed {
    /// Checks the prerequisites, takes the machine-wide lock (waiting for
    /// another testbed to finish), removes leftovers of earlier runs and
    /// creates the bridge.
    pub fn start(settings: &TestbedSettings) -> Result<Testbed> {
        crate::check_prerequisites()?;
        let machine_lock = MachineLock::for_testbed()?;
        let removed = remove_leftovers(settings)
            .context("Failed to remove the leftovers of an earlier testbed run")?;
        if !removed.is_empty() {
            eprintln!("testbed: removed {removed}");
        }
        let instances_directory = settings.instances_directory();
        std::fs::create_dir_all(&instances_directory)
            .with_context(|| format!("Failed to create {}", instances_directory.display()))?;
        let bridge = Bridge::create()?;
        Ok(Testbed {
            shared: Arc::new(TestbedShared {
                settings: settings.clone(),
                slots: Arc::default(),
                bridge,
                _machine_lock: machine_lock,
            }),
        })
    }

    pub fn settings(&self) -> &TestbedSettings {
        &self.shared.settings
    }

    /// Boots an instance and waits until its systemd has finished booting
    /// (see [`Instance::wait_until_booted`] for the state it reached).
    pub fn boot(&self, image: &BakedImage, config: InstanceConfig) -> Result<Instance> {
        let name = config.name.clone();
        let mut instance = self.start_instance(image, config)?;
        instance
            .wait_until_booted(DEFAULT_BOOT_TIMEOUT)
            .with_context(|| format!("Failed to boot instance {name}"))?;
        Ok(instance)
    }

    /// Starts booting an instance and returns once its systemd runs, without
    /// waiting for the boot to finish: start several, then wait for each.
    pub fn start_instance(&self, image: &BakedImage, config: InstanceConfig) -> Result<Instance> {
        let slot = self
            .shared
            .slots
            .reserve(&config.name, Arc::clone(&self.shared) as _)?;
        Instance::start(
            slot,
            &self.shared.settings.instances_directory(),
            image,
            config,
        )
    }

    /// Serves the repository over HTTP on the bridge address, where baked
    /// images expect the internal package repository.
    pub fn serve_package_repo(&self, repo: &PackageRepo) -> Result<HttpFileServer> {
        let address = SocketAddr::from((HOST_ADDRESS, PACKAGE_REPO_PORT));
        HttpFileServer::start_keeping_alive(
            address,
            repo.directory(),
            vec![Arc::clone(&self.shared) as _, repo.shared_directory() as _],
        )
        .context("Failed to serve the internal package repository")
    }

    /// Removes the bridge and releases the lock. Fails, and leaves the
    /// clean-up to the drop guards, while instances or servers still use
    /// the testbed.
    pub fn shutdown(self) -> Result<()> {
        let mut shared = Arc::try_unwrap(self.shared).map_err(|shared| {
            let instances = shared.slots.instance_names();
            anyhow::anyhow!(
                "Failed to shut the testbed down: still in use (instances: {instances:?}, or a \
                 package repository server)"
            )
        })?;
        shared.bridge.remove()
    }
}
