//! The agent's drain of its instance around a restart (`AgentRestarts`'s
//! window), against `AwsApiDouble` on loopback (tests never reach AWS):
//! the instance leaves the target groups it serves in and the window waits
//! until the group has let it go; after the restart it is registered again
//! and the window waits until it is healthy. What it took out is recorded
//! in the state directory until it is back, so a run killed in between is
//! repaired by the next one, and a window dropped on an error path puts it
//! back at once. A group the instance is not in is left alone.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{Result, ensure};
use cms_agent::aws::AwsSettings;
use cms_agent::restarts::AgentRestarts;
use cms_integration::{AwsApiDouble, TargetEventKind};
use cms_modules::Restarts;
use cms_roles::{Drain, Seconds};

const SERVING: &str = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/orders/1";
const OTHER: &str = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/admin/2";
const INSTANCE: &str = "i-0drain";
const PORT: u16 = 8080;

/// The double with the instance on loopback, a healthy target of
/// `SERVING` only; targets drain for `draining` and are `initial` for
/// `initial` after registering.
fn double(draining: Duration, initial: Duration) -> Result<AwsApiDouble> {
    let double = AwsApiDouble::start_on_loopback()?;
    double.add_instance(IpAddr::V4(Ipv4Addr::LOCALHOST), INSTANCE);
    for group in [SERVING, OTHER] {
        double.add_target_group(group, draining, initial);
    }
    double.add_healthy_target(SERVING, INSTANCE, Some(PORT));
    Ok(double)
}

fn restarts(double: &AwsApiDouble, state: &std::path::Path) -> AgentRestarts {
    AgentRestarts::new(
        None,
        Duration::ZERO,
        AwsSettings {
            endpoint: Some(double.endpoint_for_instances()),
            region: None,
            metadata_endpoint: Some(double.metadata_endpoint_for_instances()),
        },
        state,
    )
}

fn drain(timeout: u64) -> Drain {
    Drain {
        target_groups: vec![SERVING.into(), OTHER.into()],
        port: Some(PORT),
        timeout: Seconds(timeout),
    }
}

fn events(double: &AwsApiDouble, group: &str) -> Vec<TargetEventKind> {
    double
        .target_events(group)
        .into_iter()
        .map(|event| event.kind)
        .collect()
}

#[test]
fn a_restart_leaves_the_target_group_until_drained_and_comes_back_healthy_before_its_window_ends()
-> Result<()> {
    let double = double(Duration::from_secs(2), Duration::from_secs(2))?;
    let state = tempfile::tempdir()?;
    let restarts = restarts(&double, state.path());

    let started = cms_agent::clock::instant();
    let mut window = restarts.reserve("orders.service", Duration::from_secs(600))?;
    window.drain(&drain(30))?;
    let drained_after = started.elapsed();
    ensure!(
        drained_after >= Duration::from_secs(2),
        "the window waits for the deregistration delay: {drained_after:?}"
    );
    ensure!(
        events(&double, SERVING) == [TargetEventKind::Deregistered],
        "deregistered from the group it serves in: {:#?}",
        double.calls()
    );
    ensure!(
        state.path().join("drained.json").exists(),
        "what was taken out is recorded until it is back"
    );
    // The restart would happen here.
    let words = window.end(true)?.unwrap_or_default();
    ensure!(
        started.elapsed() >= drained_after + Duration::from_secs(2),
        "the window waits until the target is healthy again"
    );
    ensure!(
        events(&double, SERVING) == [TargetEventKind::Deregistered, TargetEventKind::Registered],
        "registered again after the restart: {:#?}",
        double.calls()
    );
    ensure!(
        events(&double, OTHER).is_empty(),
        "a group the instance was not in is left alone: {:#?}",
        double.calls()
    );
    ensure!(
        words.contains("drained from 1 target group(s)")
            && words.contains("registered again and healthy"),
        "the window says what it did: {words}"
    );
    ensure!(!state.path().join("drained.json").exists());
    Ok(())
}

#[test]
fn a_drain_that_outlasts_its_timeout_lets_the_restart_go_on_and_says_so() -> Result<()> {
    let double = double(Duration::from_secs(30), Duration::ZERO)?;
    let state = tempfile::tempdir()?;
    let restarts = restarts(&double, state.path());
    let started = cms_agent::clock::instant();
    let mut window = restarts.reserve("orders.service", Duration::from_secs(600))?;
    window.drain(&drain(1))?;
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the drain's timeout, not the group's delay"
    );
    let words = window.end(false)?.unwrap_or_default();
    ensure!(
        words.contains("still draining") && words.contains("restarted anyway"),
        "{words}"
    );
    Ok(())
}

#[test]
fn a_window_dropped_on_an_error_path_registers_the_instance_again() -> Result<()> {
    let double = double(Duration::ZERO, Duration::ZERO)?;
    let state = tempfile::tempdir()?;
    let restarts = restarts(&double, state.path());
    let mut window = restarts.reserve("orders.service", Duration::from_secs(600))?;
    window.drain(&drain(10))?;
    drop(window);
    ensure!(
        events(&double, SERVING) == [TargetEventKind::Deregistered, TargetEventKind::Registered],
        "{:#?}",
        double.calls()
    );
    ensure!(!state.path().join("drained.json").exists());
    Ok(())
}

#[test]
fn the_next_run_registers_again_what_a_killed_run_left_drained() -> Result<()> {
    let double = double(Duration::ZERO, Duration::ZERO)?;
    let state = tempfile::tempdir()?;
    {
        let restarts = restarts(&double, state.path());
        let mut window = restarts.reserve("orders.service", Duration::from_secs(600))?;
        window.drain(&drain(10))?;
        // Killed: neither `end` nor the drop runs.
        std::mem::forget(window);
    }
    ensure!(events(&double, SERVING) == [TargetEventKind::Deregistered]);
    let next = restarts(&double, state.path());
    let words = next.restore_drained().unwrap_or_default();
    ensure!(
        events(&double, SERVING) == [TargetEventKind::Deregistered, TargetEventKind::Registered],
        "{:#?}",
        double.calls()
    );
    ensure!(
        words.contains("registered the instance again in 1 target group(s)"),
        "{words}"
    );
    ensure!(
        next.restore_drained().is_none(),
        "nothing is left to restore"
    );
    Ok(())
}
