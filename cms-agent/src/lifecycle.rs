//! The instance's launch, told to its autoscaling group: after the first
//! successful converge the agent completes the launch lifecycle action
//! with CONTINUE (the group then puts the instance in service, and its
//! load balancers send it traffic); after `abandon_after` first converges
//! that failed, with ABANDON (the group replaces the instance), and the
//! run's report says why. Either is done once per instance: the outcome is
//! kept in `lifecycle.json` in the state directory. A run that could not
//! get a catalog at all does not count: the hook's own timeout and default
//! result decide then.
//!
//! Separately, the first successful converge since boot starts a systemd
//! target (`cms-converged.target`), which units that must not start on an
//! unconfigured instance order themselves after.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::aws::{Aws, LifecycleResult};
use crate::report::RunReport;
use crate::settings::Lifecycle;

const LIFECYCLE_FILE: &str = "lifecycle.json";
const CONVERGED_BOOT_FILE: &str = "converged-boot";

/// What the agent knows of its instance's launch.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LaunchState {
    /// `CONTINUE` or `ABANDON` once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completed: Option<String>,
    /// First converges that failed so far.
    #[serde(default)]
    failed_first_converges: u32,
}

fn load(state_dir: &Path) -> LaunchState {
    std::fs::read(state_dir.join(LIFECYCLE_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

fn save(state_dir: &Path, state: &LaunchState) -> anyhow::Result<()> {
    crate::state::write_private_atomically(
        &state_dir.join(LIFECYCLE_FILE),
        &serde_json::to_vec(state)?,
    )
}

/// After a run with a catalog: completes the launch lifecycle action when
/// this run decides it. Returns a note for the run's report, if any.
pub fn after_run(
    state_dir: &Path,
    lifecycle: &Lifecycle,
    aws: &Aws,
    report: &RunReport,
) -> Option<String> {
    if report.noop {
        return None;
    }
    let mut state = load(state_dir);
    if state.completed.is_some() {
        return None;
    }
    let failed = report.summary.failed;
    let (result, why) = if failed == 0 {
        (
            LifecycleResult::Continue,
            "the first converge succeeded".to_string(),
        )
    } else {
        state.failed_first_converges += 1;
        if state.failed_first_converges < lifecycle.abandon_after {
            let note = format!(
                "first converge failed ({failed} resource(s)), try {} of {}: the launch lifecycle action is abandoned after {}",
                state.failed_first_converges, lifecycle.abandon_after, lifecycle.abandon_after
            );
            if let Err(error) = save(state_dir, &state) {
                return Some(format!("{note}; Failed to record the try: {error:#}"));
            }
            return Some(note);
        }
        let failed_resources: Vec<&str> = report
            .resources
            .iter()
            .filter(|r| r.status == crate::report::Status::Failed)
            .map(|r| r.reference.as_str())
            .take(5)
            .collect();
        (
            LifecycleResult::Abandon,
            format!(
                "the first converge failed {} times (last: {})",
                state.failed_first_converges,
                failed_resources.join(", ")
            ),
        )
    };
    let word = match result {
        LifecycleResult::Continue => "CONTINUE",
        LifecycleResult::Abandon => "ABANDON",
    };
    match aws.complete_lifecycle_action(&lifecycle.hook, lifecycle.group.as_deref(), result) {
        Ok(group) => {
            state.completed = Some(word.to_string());
            let note = format!(
                "completed launch lifecycle hook {} of autoscaling group {group} with {word}: {why}",
                lifecycle.hook
            );
            match save(state_dir, &state) {
                Ok(()) => Some(note),
                Err(error) => Some(format!("{note}; Failed to record it: {error:#}")),
            }
        }
        Err(error) => {
            // The failed try is counted; the action is tried again next run.
            let _ = save(state_dir, &state);
            Some(format!(
                "Failed to complete launch lifecycle hook {} with {word} ({why}): {error}; the next run tries again",
                lifecycle.hook
            ))
        }
    }
}

/// The kernel's id of this boot.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_string())
}

/// After a run that failed nothing: starts `target` once per boot. Returns
/// a warning when systemd refused.
pub fn reach_converged_target(
    state_dir: &Path,
    target: &str,
    report: &RunReport,
) -> Option<String> {
    if report.noop || report.summary.failed > 0 {
        return None;
    }
    // Only where systemd is the running init (sd_booted's test): a
    // container or a chroot without it has no target to reach.
    if !Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let boot = boot_id()?;
    let marker = state_dir.join(CONVERGED_BOOT_FILE);
    if std::fs::read_to_string(&marker).is_ok_and(|seen| seen.trim() == boot) {
        return None;
    }
    let started = std::process::Command::new("systemctl")
        .args(["start", "--no-block", target])
        .output();
    // Written whatever systemd said: a missing unit warns once a boot, not
    // every run.
    let _ = crate::state::write_private_atomically(&marker, boot.as_bytes());
    match started {
        Ok(output) if output.status.success() => None,
        Ok(output) => Some(format!(
            "Failed to start {target}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) => Some(format!("Failed to run systemctl start {target}: {error}")),
    }
}
