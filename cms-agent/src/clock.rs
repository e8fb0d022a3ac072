//! The agent's one source of "now": Unix time for reports, run ids and
//! certificate dates, and monotonic instants for budgets and durations.
//! Every other module asks here, so there is one place that reads the
//! system clocks and one place a test can reason about.
//!
//! The daemon does not read the wall clock directly either: it keeps a
//! [`WallClock`], which in production is the system's and in tests follows
//! tokio's (paused) clock, so that certificate renewal and expiry are
//! scheduled on the same time line as everything else it waits for.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch; zero if the system clock is set before it.
#[allow(clippy::disallowed_methods)] // This module is where the agent reads the clock.
fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    since_epoch().as_millis() as u64
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> i64 {
    since_epoch().as_secs() as i64
}

/// Nanoseconds since the Unix epoch, truncated to 64 bits: a value that
/// differs between processes and runs, for seeding jitter.
pub fn unix_nanos() -> u64 {
    since_epoch().as_nanos() as u64
}

/// A monotonic instant, for budgets and durations within one process.
#[allow(clippy::disallowed_methods)] // This module is where the agent reads the clock.
pub fn instant() -> Instant {
    Instant::now()
}

/// The wall clock as the daemon sees it.
#[derive(Debug, Clone, Copy)]
pub enum WallClock {
    /// The system's clock.
    System,
    /// Unix time that starts at `start_unix_secs` and advances with tokio's
    /// clock from `start`: with paused time, `tokio::time::advance` moves it.
    FollowsTokio {
        start_unix_secs: i64,
        start: tokio::time::Instant,
    },
}

impl WallClock {
    /// A wall clock that reads `start_unix_secs` now and follows tokio's
    /// clock from here on.
    pub fn following_tokio(start_unix_secs: i64) -> WallClock {
        WallClock::FollowsTokio {
            start_unix_secs,
            start: tokio::time::Instant::now(),
        }
    }

    /// Seconds since the Unix epoch.
    pub fn unix_secs(&self) -> i64 {
        match self {
            WallClock::System => unix_secs(),
            WallClock::FollowsTokio {
                start_unix_secs,
                start,
            } => start_unix_secs + start.elapsed().as_secs() as i64,
        }
    }
}
