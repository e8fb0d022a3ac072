//! `service`: a systemd service, running or stopped, started at boot or
//! not; restarted when notified.

use serde::{Deserialize, Serialize};

use super::{Drain, Kind, Resolver, check_drain, check_name};

/// `running` or `stopped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceEnsure {
    Running,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// Left alone when not given.
    pub ensure: Option<ServiceEnsure>,
    /// Start at boot; left alone when not given.
    pub enable: Option<bool>,
    /// Take the instance out of these load balancer target groups while it
    /// restarts (`drain.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
}


impl Kind for Service {
    type Spec = Service;
    const PATH_NAMED: bool = false;
    const REFRESHABLE: bool = true;

    fn name(&self) -> &str {
        &self.name
    }

    fn resolve(spec: Service, cx: &mut Resolver<'_>) -> Option<Service> {
        check_name(&spec.name, &mut cx.problems);
        if let Some(drain) = &spec.drain {
            check_drain(drain, &mut cx.problems);
        }
        Some(spec)
    }

    fn summary(&self) -> String {
        let mut text = String::new();
        if let Some(ensure) = self.ensure {
            text.push_str(&format!(" ensure={ensure:?}").to_lowercase());
        }
        if let Some(enable) = self.enable {
            text.push_str(&format!(" enable={enable}"));
        }
        text
    }
}
