//! The providers' one source of "now": the wall clock for timestamps a
//! host keeps (backups, a restart's journal cursor, a touched file) and a
//! monotonic instant for timeouts. Clippy refuses `Instant::now` and
//! `SystemTime::now` everywhere else (`.clippy.toml`), so that time, like
//! the file system and commands, enters the providers through `host`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The wall clock now.
#[allow(clippy::disallowed_methods)]
pub fn now() -> SystemTime {
    SystemTime::now()
}

/// Seconds since the Unix epoch; zero if the clock is set before it.
pub fn unix_secs() -> u64 {
    now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// A monotonic instant, for timeouts and durations.
#[allow(clippy::disallowed_methods)]
pub fn instant() -> Instant {
    Instant::now()
}
