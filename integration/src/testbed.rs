//! The host side of the testbed: one per machine at a time (a lock file
//! keeps test processes, and tests within one process, from sharing the
//! bridge), leftovers of crashed runs removed at start, the bridge, the
//! address slots of instances, and the internal package repository's server.

use crate::http_file_server::HttpFileServer;
use crate::image::BakedImage;
use crate::instance::{Instance, InstanceConfig};
use crate::leftovers::{find_leftovers_of_instance, remove_leftovers};
use crate::machine_lock::MachineLock;
use crate::network::{Bridge, TestbedAddresses, choose_host_address};
use crate::package_repo::PackageRepo;
use crate::settings::TestbedSettings;
use crate::slots::SlotTable;
use anyhow::{Context, Result};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Arc, Mutex};
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
    addresses: TestbedAddresses,
    /// The package repository's port, bound when the testbed starts (so
    /// that instances booted before the repository is served know it), and
    /// handed to the server by [`Testbed::serve_package_repo`].
    package_repo_listener: Mutex<Option<TcpListener>>,
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
        let host = choose_host_address()?;
        let bridge = Bridge::create(host)?;
        let package_repo_listener = TcpListener::bind((host, 0)).with_context(|| {
            format!("Failed to listen on {host} for the internal package repository")
        })?;
        let addresses = TestbedAddresses {
            host,
            package_repo_port: package_repo_listener.local_addr()?.port(),
        };
        Ok(Testbed {
            shared: Arc::new(TestbedShared {
                settings: settings.clone(),
                slots: Arc::default(),
                addresses,
                package_repo_listener: Mutex::new(Some(package_repo_listener)),
                bridge,
                _machine_lock: machine_lock,
            }),
        })
    }

    pub fn settings(&self) -> &TestbedSettings {
        &self.shared.settings
    }

    /// The host's address on the bridge, where instances reach the host:
    /// servers that instances use listen here (on port 0).
    pub fn host_address(&self) -> Ipv4Addr {
        self.shared.addresses.host
    }

    /// The internal package repository as instances see it,
    /// `http://HOST:PORT/`: the apt source every instance is given.
    pub fn package_repo_url(&self) -> String {
        self.shared.addresses.package_repo_url()
    }

    /// The bridge's subnet, as `ip route` shows it (`10.213.0.0/24`).
    pub fn subnet(&self) -> String {
        self.shared.addresses.subnet()
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

    /// Shuts an instance down and fails if anything of it is left on the
    /// host (its processes, mounts, network namespace, directory); the
    /// testbed itself lives on for the other tests.
    pub fn shut_down_leaving_nothing(&self, instance: Instance) -> Result<()> {
        let name = instance.name().to_string();
        instance.shutdown()?;
        let leftovers = find_leftovers_of_instance(self.settings(), &name)?;
        anyhow::ensure!(leftovers.is_empty(), "after {name}'s teardown, {leftovers}");
        Ok(())
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
            &self.shared.addresses,
            config,
        )
    }

    /// Serves the repository over HTTP on the bridge address, where
    /// instances expect the internal package repository. Once per testbed.
    pub fn serve_package_repo(&self, repo: &PackageRepo) -> Result<HttpFileServer> {
        let listener = self
            .shared
            .package_repo_listener
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .context(
                "Failed to serve the internal package repository: this testbed serves one already",
            )?;
        HttpFileServer::start_on_keeping_alive(
            listener,
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
