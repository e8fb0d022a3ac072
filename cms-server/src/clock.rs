//! The one source of "now" for the server's wall-clock times (last seen,
//! received, trigger and token times), so that the domain modules take a
//! clock as a handle and a test can hand them one it sets; and of the
//! monotonic instants durations are measured with. Clippy refuses
//! `Instant::now` and `SystemTime::now` anywhere else (`.clippy.toml`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Wall-clock time in unix milliseconds.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_unix_ms(&self) -> u64;
}

/// How the domain holds its clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> u64 {
        now_unix_ms()
    }
}

/// The system clock as a shared handle.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// The system's time now, in unix milliseconds; 0 before 1970.
#[allow(clippy::disallowed_methods)] // This module is where the server reads the clock.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A monotonic instant, for durations and deadlines within the process
/// (compile times, lock waits, dashboard sessions).
#[allow(clippy::disallowed_methods)] // This module is where the server reads the clock.
pub fn instant() -> std::time::Instant {
    std::time::Instant::now()
}

/// A clock that says what it is told, for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn at(unix_ms: u64) -> ManualClock {
        ManualClock(AtomicU64::new(unix_ms))
    }

    pub fn set(&self, unix_ms: u64) {
        self.0.store(unix_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
