//! Waiting on a condition with a deadline: the one way the testbed and the
//! tests wait. Nothing sleeps blindly: the condition is checked, and between
//! checks a short poll interval passes, until the condition holds or the
//! deadline passes, and then the error says what was waited for.

use anyhow::{Result, bail};
use std::time::{Duration, Instant};

/// How long to wait between two checks of a condition that has no event to
/// wait on (a process appearing in /proc, a socket appearing in an instance).
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Calls `check` until it returns `Some`, an error, or `timeout` passes.
/// `waiting_for` completes the sentence "Timed out after 5s waiting for …".
pub fn wait_until<T>(
    timeout: Duration,
    waiting_for: &str,
    check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    wait_until_polling_every(POLL_INTERVAL, timeout, waiting_for, check)
}

/// [`wait_until`] with a poll interval of its own, for a check that costs
/// more than a look at /proc (a gRPC call with a TLS handshake, a command in
/// an instance).
pub fn wait_until_polling_every<T>(
    poll_interval: Duration,
    timeout: Duration,
    waiting_for: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("Timed out after {timeout:?} waiting for {waiting_for}");
        }
        std::thread::sleep(poll_interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_condition_holds() {
        let mut checks = 0;
        let value = wait_until(Duration::from_secs(5), "the third check", || {
            checks += 1;
            Ok((checks == 3).then_some("done"))
        })
        .unwrap();
        assert_eq!((value, checks), ("done", 3));
    }

    #[test]
    fn says_what_it_waited_for_when_the_deadline_passes() {
        let error = wait_until(Duration::ZERO, "a condition that never holds", || {
            Ok(None::<()>)
        })
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "Timed out after 0ns waiting for a condition that never holds"
        );
    }
}
