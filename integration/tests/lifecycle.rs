//! The agent's launch lifecycle decisions (`cms_agent::lifecycle`), against
//! `AwsApiDouble` on loopback (tests never reach AWS): which run completes
//! the launch, with what, once; what each report says; and that a failed
//! call is tried again by the next run. The testbed test
//! (`lifecycle_testbed.rs`) shows the same through booted instances.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, ensure};
use cms_agent::aws::{Aws, AwsSettings};
use cms_agent::lifecycle::after_run;
use cms_agent::report::{ResourceResult, RunReport, Status};
use cms_agent::settings::Lifecycle;
use cms_integration::AwsApiDouble;
use cms_integration::aws_api_double::ApiFailure;

const GROUP: &str = "orders-asg";
const HOOK: &str = "cms-launch";
const INSTANCE: &str = "i-0launch";

fn double() -> Result<AwsApiDouble> {
    let double = AwsApiDouble::start_on_loopback()?;
    double.add_instance(IpAddr::V4(Ipv4Addr::LOCALHOST), INSTANCE);
    double.set_autoscaling_group(INSTANCE, GROUP);
    double.add_lifecycle_hook(GROUP, HOOK);
    Ok(double)
}

fn aws(double: &AwsApiDouble) -> Aws {
    // No credentials from this process's environment: the instance role's.
    Aws::with_environment(
        AwsSettings {
            endpoint: Some(double.endpoint_for_instances()),
            region: None,
            metadata_endpoint: Some(double.metadata_endpoint_for_instances()),
        },
        |_| None,
    )
}

fn lifecycle(abandon_after: u32) -> Lifecycle {
    Lifecycle {
        hook: HOOK.into(),
        group: None,
        abandon_after,
    }
}

/// A real run's report; `failed` names the resources that failed.
fn report(failed: &[&str], noop: bool) -> RunReport {
    let resources: Vec<ResourceResult> = ["file:/etc/motd"]
        .iter()
        .chain(failed)
        .map(|reference| ResourceResult {
            reference: reference.to_string(),
            status: if failed.contains(reference) {
                Status::Failed
            } else {
                Status::Unchanged
            },
            changes: Vec::new(),
            not_done: Vec::new(),
            refresh: None,
            error: None,
            reason: None,
            duration_ms: 1.0,
        })
        .collect();
    RunReport {
        run_id: "run".into(),
        catalog_id: "catalog".into(),
        roles: vec!["web".into()],
        noop,
        started_at_unix_ms: 0,
        duration_ms: 1.0,
        summary: RunReport::summarize(&resources),
        resources,
    }
}

fn results(double: &AwsApiDouble) -> Vec<String> {
    double
        .lifecycle_results()
        .into_iter()
        .map(|c| format!("{} {} {} {}", c.group, c.hook, c.instance_id, c.result))
        .collect()
}

#[test]
fn a_good_first_run_continues_the_launch_once_and_later_runs_complete_nothing() -> Result<()> {
    let double = double()?;
    let state = tempfile::tempdir()?;
    let aws = aws(&double);
    // A --noop run decides nothing.
    ensure!(after_run(state.path(), &lifecycle(3), &aws, &report(&[], true)).is_none());
    let note =
        after_run(state.path(), &lifecycle(3), &aws, &report(&[], false)).unwrap_or_default();
    ensure!(
        note == format!(
            "completed launch lifecycle hook {HOOK} of autoscaling group {GROUP} with CONTINUE: the first converge succeeded"
        ),
        "{note}"
    );
    ensure!(results(&double) == [format!("{GROUP} {HOOK} {INSTANCE} CONTINUE")]);
    for failed in [&[][..], &["file:/etc/broken"][..]] {
        ensure!(after_run(state.path(), &lifecycle(3), &aws, &report(failed, false)).is_none());
    }
    ensure!(results(&double).len() == 1, "{:#?}", double.calls());
    Ok(())
}

#[test]
fn failed_first_runs_are_counted_and_the_last_try_abandons_the_launch_naming_what_failed()
-> Result<()> {
    let double = double()?;
    let state = tempfile::tempdir()?;
    let aws = aws(&double);
    let failing = report(&["file:/srv/app.conf"], false);
    for n in 1..3 {
        let note = after_run(state.path(), &lifecycle(3), &aws, &failing).unwrap_or_default();
        ensure!(note.contains(&format!("try {n} of 3")), "try {n}: {note}");
    }
    ensure!(results(&double).is_empty());
    let note = after_run(state.path(), &lifecycle(3), &aws, &failing).unwrap_or_default();
    ensure!(
        note.contains("with ABANDON")
            && note.contains("the first converge failed 3 times (last: file:/srv/app.conf)"),
        "{note}"
    );
    ensure!(results(&double) == [format!("{GROUP} {HOOK} {INSTANCE} ABANDON")]);
    // Once abandoned, a good run changes nothing.
    ensure!(after_run(state.path(), &lifecycle(3), &aws, &report(&[], false)).is_none());
    ensure!(results(&double).len() == 1);
    Ok(())
}

#[test]
fn a_completion_that_fails_is_tried_again_by_the_next_run() -> Result<()> {
    let double = double()?;
    let state = tempfile::tempdir()?;
    let aws = aws(&double);
    // The call's three attempts all fail.
    double.fail_next(3, ApiFailure::ServerError);
    let note =
        after_run(state.path(), &lifecycle(3), &aws, &report(&[], false)).unwrap_or_default();
    ensure!(
        note.starts_with("Failed to complete launch lifecycle hook cms-launch with CONTINUE")
            && note.ends_with("the next run tries again"),
        "{note}"
    );
    ensure!(results(&double).is_empty());
    let note =
        after_run(state.path(), &lifecycle(3), &aws, &report(&[], false)).unwrap_or_default();
    ensure!(note.contains("with CONTINUE"), "{note}");
    ensure!(results(&double).len() == 1);
    Ok(())
}
