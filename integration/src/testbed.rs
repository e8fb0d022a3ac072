//! The host side of the testbed: one per machine at a time (a lock file
//! keeps test processes, and tests within one process, from sharing the
//! bridge), leftovers of crashed runs removed at start, the bridge, the
//! address slots of instances, and the internal package repository's server.

use crate::http_file_server::HttpFileServer;
use crate::image::BakedImage;
use crate::instance::{Instance, InstanceConfig};
use crate::leftovers::remove_leftovers;
use crate::network::{Bridge, HOST_ADDRESS, MAXIMUM_INSTANCES, PACKAGE_REPO_PORT};
use crate::package_repo::PackageRepo;
use crate::settings::TestbedSettings;
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The machine-wide lock: the bridge, its subnet and the `cmstb-` names are
/// machine-wide, so one testbed runs at a time. `flock` locks conflict
/// between open files even within one process, so tests of one binary that
/// each start a testbed run one after the other.
const MACHINE_LOCK_PATH: &str = "/run/cms-testbed.lock";

/// How many testbeds of this process hold the machine lock; a process that
/// holds it must not wait for it again.
static LIVE_TESTBEDS_IN_THIS_PROCESS: AtomicUsize = AtomicUsize::new(0);

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
    /// Slot number to instance name.
    slots: Mutex<BTreeMap<u8, String>>,
    bridge: Bridge,
    // Declared last: released only after the bridge is removed.
    _machine_lock: File,
}

impl Testbed {
    /// Checks the prerequisites, takes the machine-wide lock (waiting for
    /// another testbed to finish), removes leftovers of earlier runs and
    /// creates the bridge.
    pub fn start(settings: &TestbedSettings) -> Result<Testbed> {
        crate::check_prerequisites()?;
        let machine_lock = take_machine_lock()?;
        let removed = remove_leftovers(settings)
            .context("Failed to remove the leftovers of an earlier testbed run")?;
        if !removed.is_empty() {
            eprintln!("testbed: removed {removed}");
        }
        let instances_directory = settings.instances_directory();
        std::fs::create_dir_all(&instances_directory)
            .with_context(|| format!("Failed to create {}", instances_directory.display()))?;
        let bridge = Bridge::create()?;
        LIVE_TESTBEDS_IN_THIS_PROCESS.fetch_add(1, Ordering::SeqCst);
        Ok(Testbed {
            shared: Arc::new(TestbedShared {
                settings: settings.clone(),
                slots: Mutex::new(BTreeMap::new()),
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
        let slot = SlotReservation::reserve(&self.shared, &config.name)?;
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
            let instances: Vec<String> = lock(&shared.slots).values().cloned().collect();
            anyhow::anyhow!(
                "Failed to shut the testbed down: still in use (instances: {instances:?}, or a \
                 package repository server)"
            )
        })?;
        shared.bridge.remove()
    }
}

impl Drop for TestbedShared {
    fn drop(&mut self) {
        LIVE_TESTBEDS_IN_THIS_PROCESS.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Takes the machine lock to look at the host while no testbed changes it.
/// Refuses while a testbed of this process holds the lock: waiting for it
/// would wait forever.
pub(crate) fn take_machine_lock_for_inspection() -> Result<File> {
    if LIVE_TESTBEDS_IN_THIS_PROCESS.load(Ordering::SeqCst) > 0 {
        bail!(
            "Failed to inspect the host: a testbed of this process is still running; shut it \
             down (and drop its instances and servers) first"
        );
    }
    take_machine_lock()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The protected data stays consistent even if a holder panicked.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn take_machine_lock() -> Result<File> {
    let lock_path = Path::new(MACHINE_LOCK_PATH);
    let lock_file = File::create(lock_path)
        .with_context(|| format!("Failed to open {}", lock_path.display()))?;
    match lock_file.try_lock() {
        Ok(()) => return Ok(lock_file),
        Err(std::fs::TryLockError::WouldBlock) => {
            eprintln!(
                "testbed: waiting for another testbed on this machine to finish ({} is locked)",
                lock_path.display()
            );
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(error).with_context(|| format!("Failed to lock {}", lock_path.display()));
        }
    }
    lock_file
        .lock()
        .with_context(|| format!("Failed to lock {}", lock_path.display()))?;
    Ok(lock_file)
}

/// An instance's address slot, returned to the testbed when dropped.
#[derive(Debug)]
pub(crate) struct SlotReservation {
    shared: Arc<TestbedShared>,
    slot: u8,
}

impl SlotReservation {
    fn reserve(shared: &Arc<TestbedShared>, name: &str) -> Result<SlotReservation> {
        let mut slots = lock(&shared.slots);
        if slots.values().any(|existing| existing == name) {
            bail!("Failed to boot instance {name}: an instance of that name is running");
        }
        let Some(slot) = (0..MAXIMUM_INSTANCES).find(|slot| !slots.contains_key(slot)) else {
            bail!("Failed to boot instance {name}: all {MAXIMUM_INSTANCES} addresses are in use");
        };
        slots.insert(slot, name.to_string());
        Ok(SlotReservation {
            shared: Arc::clone(shared),
            slot,
        })
    }

    pub fn slot(&self) -> u8 {
        self.slot
    }
}

impl Drop for SlotReservation {
    fn drop(&mut self) {
        lock(&self.shared.slots).remove(&self.slot);
    }
}
