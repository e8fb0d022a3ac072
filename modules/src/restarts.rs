//! Restarts coordinated beyond the host: before a provider restarts a
//! service or a Java application, it asks the run's [`Restarts`] for a
//! place (the server's restart budget, which keeps a role's nodes from all
//! restarting at once), takes the instance out of its load balancers when
//! the resource says `drain`, and afterwards puts it back and gives the
//! place up. The agent implements it; [`UNCOORDINATED`] restarts at once
//! and refuses to drain, for runs with neither a server nor AWS.

use std::time::Duration;

use cms_roles::Drain;

use crate::ProviderError;

/// Coordinates the restarts of one run.
pub trait Restarts: Sync {
    /// Waits, bounded, for a place to restart `unit`, held at most `hold`.
    /// Called before the restart's changes are made, so that a refusal
    /// leaves the host as it was.
    fn reserve(
        &self,
        unit: &str,
        hold: Duration,
    ) -> Result<Box<dyn RestartWindow + '_>, ProviderError>;
}

/// A place to restart, from [`Restarts::reserve`] until [`RestartWindow::end`].
/// Dropped without `end` (an error on the way), it puts back what it took
/// out of the load balancers and gives the place up.
pub trait RestartWindow {
    /// Just before the restart: takes the instance out of `drain`'s target
    /// groups and waits, bounded by its timeout, until they drained it.
    fn drain(&mut self, drain: &Drain) -> Result<(), ProviderError>;

    /// After the restart: registers the instance again where it was drained
    /// (waiting, bounded, for it to be healthy there when `healthy`), and
    /// gives the place up. Returns what it did, for the report, if anything
    /// worth saying.
    fn end(self: Box<Self>, healthy: bool) -> Result<Option<String>, ProviderError>;
}

/// Restarts at once and knows no load balancer.
#[derive(Debug)]
pub struct Uncoordinated;

/// The [`Restarts`] of a run with neither a server nor AWS.
pub static UNCOORDINATED: Uncoordinated = Uncoordinated;

impl Restarts for Uncoordinated {
    fn reserve(
        &self,
        _unit: &str,
        _hold: Duration,
    ) -> Result<Box<dyn RestartWindow + '_>, ProviderError> {
        Ok(Box::new(Uncoordinated))
    }
}

impl RestartWindow for Uncoordinated {
    fn drain(&mut self, _drain: &Drain) -> Result<(), ProviderError> {
        Err(ProviderError::Failed(
            "drain needs the AWS load balancer API, which this run has no access to".into(),
        ))
    }

    fn end(self: Box<Self>, _healthy: bool) -> Result<Option<String>, ProviderError> {
        Ok(None)
    }
}

/// How long a restart holds its place at most: twice the time to become
/// healthy (a rollback restarts again) and to drain and come back, plus a
/// minute.
pub fn hold_for(healthy_within: Duration, drain: Option<&Drain>) -> Duration {
    let drain = drain.map_or(Duration::ZERO, |d| Duration::from_secs(d.timeout.0));
    2 * (healthy_within + 2 * drain) + Duration::from_secs(60)
}
