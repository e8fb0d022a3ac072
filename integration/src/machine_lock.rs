//! The machine-wide lock of the testbed. The bridge, its subnet and the
//! `cmstb-` names are machine-wide, so one testbed runs at a time, and the
//! search for leftovers looks at the host only while no testbed changes it.
//! Kept apart from [`crate::Testbed`] so that the leftover clean-up, which
//! the testbed calls, does not import the testbed back.

use anyhow::{Context, Result, bail};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `flock` locks conflict between open files even within one process, so
/// tests of one binary that each start a testbed run one after the other.
const MACHINE_LOCK_PATH: &str = "/run/cms-testbed.lock";

/// How many testbeds of this process hold the machine lock; a process that
/// holds it must not wait for it again.
static LIVE_TESTBEDS_IN_THIS_PROCESS: AtomicUsize = AtomicUsize::new(0);

/// The lock, held until dropped.
#[derive(Debug)]
pub(crate) struct MachineLock {
    _file: File,
    /// Whether a testbed holds it (and is counted as live in this process).
    held_by_a_testbed: bool,
}

impl MachineLock {
    /// Takes the lock for a testbed, waiting for another testbed on this
    /// machine to finish.
    pub fn for_testbed() -> Result<MachineLock> {
        let file = take_machine_lock()?;
        LIVE_TESTBEDS_IN_THIS_PROCESS.fetch_add(1, Ordering::SeqCst);
        Ok(MachineLock {
            _file: file,
            held_by_a_testbed: true,
        })
    }

    /// Takes the lock to look at the host while no testbed changes it.
    /// Refuses while a testbed of this process holds the lock: waiting for
    /// it would wait forever.
    pub fn for_inspection() -> Result<MachineLock> {
        if LIVE_TESTBEDS_IN_THIS_PROCESS.load(Ordering::SeqCst) > 0 {
            bail!(
                "Failed to inspect the host: a testbed of this process is still running; shut it \
                 down (and drop its instances and servers) first"
            );
        }
        Ok(MachineLock {
            _file: take_machine_lock()?,
            held_by_a_testbed: false,
        })
    }
}

impl Drop for MachineLock {
    fn drop(&mut self) {
        if self.held_by_a_testbed {
            LIVE_TESTBEDS_IN_THIS_PROCESS.fetch_sub(1, Ordering::SeqCst);
        }
    }
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
