//! One run at a time on an instance: an exclusive `flock` on
//! `<state dir>/run.lock`, which the kernel releases when the process ends,
//! however it ends. A second run says who holds the lock and waits.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::Context;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Held for the length of a run.
#[derive(Debug)]
pub struct RunLock {
    _lock: Flock<File>,
}

impl RunLock {
    /// Takes the lock, waiting for a run in progress to finish; `on_wait` is
    /// told the holder's pid first.
    pub fn acquire(state_dir: &Path, on_wait: impl FnOnce(&str)) -> anyhow::Result<RunLock> {
        crate::state::create_private_dir(state_dir)?;
        let path = state_dir.join("run.lock");
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .with_context(|| format!("Failed to open the run lock {}", path.display()))
        };
        let mut lock = match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                on_wait(holder.trim());
                Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, errno)| errno)
                    .with_context(|| format!("Failed to lock {}", path.display()))?
            }
            Err((_, errno)) => {
                return Err(errno).with_context(|| format!("Failed to lock {}", path.display()));
            }
        };
        // Say who holds it, for the next run's message.
        lock.set_len(0).ok();
        lock.rewind().ok();
        let _ = write!(lock, "{}", std::process::id());
        Ok(RunLock { _lock: lock })
    }
}
