//! What each agent run needs from agent.toml besides its server, read once
//! by `config` and passed down as one value: where the AWS calls go, how
//! long a restart waits for a place in the budget, the launch lifecycle
//! hook, the target started once converged.

use std::time::Duration;

use crate::aws::AwsSettings;

/// How a launch lifecycle hook is completed (`lifecycle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub hook: String,
    pub group: Option<String>,
    pub abandon_after: u32,
}

/// What a run needs besides its server: read from agent.toml once.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub metadata_endpoint: Option<String>,
    /// How long a restart waits for a place in the restart budget.
    pub restart_wait: Duration,
    pub lifecycle: Option<Lifecycle>,
    pub aws_endpoint: Option<String>,
    pub aws_region: Option<String>,
    /// `[aws] metadata_endpoint`, else `metadata_endpoint`.
    pub aws_metadata_endpoint: Option<String>,
    /// The systemd target started after the first good converge since
    /// boot, if any.
    pub converged_target: Option<String>,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            metadata_endpoint: None,
            restart_wait: DEFAULT_RESTART_WAIT,
            lifecycle: None,
            aws_endpoint: None,
            aws_region: None,
            aws_metadata_endpoint: None,
            converged_target: Some(CONVERGED_TARGET.to_string()),
        }
    }
}

/// The default `[restarts] wait`.
pub const DEFAULT_RESTART_WAIT: Duration = Duration::from_secs(15 * 60);
/// The default `[lifecycle] abandon_after`.
pub const DEFAULT_ABANDON_AFTER: u32 = 3;
/// The target the packages ship (`cms-agent/cms-converged.target`).
pub const CONVERGED_TARGET: &str = "cms-converged.target";

impl RunSettings {
    /// Where this run's AWS calls go.
    pub fn aws(&self) -> AwsSettings {
        AwsSettings {
            endpoint: self.aws_endpoint.clone(),
            region: self.aws_region.clone(),
            metadata_endpoint: self.aws_metadata_endpoint.clone(),
        }
    }
}
