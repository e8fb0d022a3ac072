//! The restart budget through real instances: ten `role=web` instances
//! booted from an image with the agent baked in, converged by a
//! `cms-server` whose roles repository says `[restarts] max_restarting =
//! "20%"`. The role runs a service whose every start takes two seconds
//! and writes when it began and when it was up; a commit changes the file
//! that restarts it, and a trigger asks all ten to converge at once. Each
//! agent asks the server for a place before its restart and gives it back
//! once the service is up again: the service's own log shows that no more
//! than two instances were restarting at any moment, and that all ten
//! restarted.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cms_integration::{
    GitRepo, Image, ImageRecipe, Instance, InstanceConfig, TestServer, Testbed,
    bake_agent_for_server, begin_end_to_end_test, wait_for_first_report,
};
use cms_proto::v1 as pb;

const SETTINGS: &str = r#"[hierarchy]
layers = ["common"]

[restarts]
max_restarting = "20%"
"#;

/// Where the service logs its starts, one line each: `begin NANOS` when
/// its start begins and `up NANOS` once it is running.
const LOG: &str = "/var/lib/timed-restart.log";

/// A service that takes two seconds to start and logs its starts.
const UNIT: &str = "[Unit]
Description=a service whose starts the restart budget test times

[Service]
ExecStartPre=/bin/sh -c 'echo begin $(date +%%s%%N) >> /var/lib/timed-restart.log; sleep 2'
ExecStart=/bin/sleep infinity
ExecStartPost=/bin/sh -c 'echo up $(date +%%s%%N) >> /var/lib/timed-restart.log'
";

const ROLE: &str = r#"[match]
role = "web"

[[file]]
path = "/etc/systemd/system/timed-restart.service"
source = "timed-restart.service"
mode = "0644"
notify = ["service:timed-restart"]

[[file]]
path = "/etc/timed-restart.conf"
source = "timed-restart.conf"
mode = "0644"
notify = ["service:timed-restart"]

[[service]]
name = "timed-restart"
ensure = "running"
require = ["file:/etc/systemd/system/timed-restart.service"]
"#;

const INSTANCES: usize = 10;
/// 20% of ten.
const PLACES: usize = 2;
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn with_a_budget_of_20_percent_no_more_than_two_of_ten_instances_restart_their_service_at_once()
-> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let image = Image::build_or_reuse(&ImageRecipe::debian_bookworm(), &settings)?;
    let testbed = Testbed::start(&settings)?;

    let dir = tempfile::tempdir()?;
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[
            ("cms.toml", SETTINGS),
            ("roles/web.toml", ROLE),
            ("files/timed-restart.service", UNIT),
            ("files/timed-restart.conf", "generation 1\n"),
        ],
        "web: a service that takes two seconds to start",
    )?;
    let first = git.head()?;
    let server = TestServer::start_on(
        &dir.path().join("server"),
        git.path(),
        SocketAddr::from((testbed.host_address(), 0)),
    )?;
    let token = server.token(&[("role", "web")])?;
    let baked = bake_agent_for_server(&image, &server.address, &token)?;

    let mut instances = (1..=INSTANCES)
        .map(|n| {
            testbed.start_instance(
                &baked,
                InstanceConfig::new(&format!("web-{n}")).with_tag("role", "web"),
            )
        })
        .collect::<Result<Vec<Instance>>>()?;
    for instance in &mut instances {
        instance.wait_until_booted(BOOT_TIMEOUT)?;
    }
    for instance in &instances {
        let report = wait_for_first_report(&server, instance)?;
        ensure!(
            report.revision == first
                && report
                    .resources
                    .iter()
                    .all(|r| r.status != pb::ResourceStatus::Failed as i32),
            "{}'s first run: {report:#?}",
            instance.name()
        );
    }
    server.wait_until_watch_channels_held(&[("role", "web")], INSTANCES as u32)?;
    // The first runs started the service: no place needed, nothing to
    // count. From here on, every start is a restart.
    let before: Vec<usize> = instances
        .iter()
        .map(|instance| starts(instance).map(|s| s.len()))
        .collect::<Result<_>>()?;

    git.commit(
        &[("files/timed-restart.conf", "generation 2\n")],
        "generation 2",
    )?;
    let second = git.head()?;
    let synced = server.runtime.block_on(server.sync())?;
    ensure!(
        synced.accepted && synced.revision == second,
        "the commit is accepted: {synced:?}"
    );
    let progress = server.trigger(&[("role", "web")], false, Duration::from_secs(600))?;
    ensure!(
        progress.total == INSTANCES as u32 && progress.failed == 0 && progress.unreachable == 0,
        "every instance converged the new generation without failing: {progress:#?}"
    );

    let mut windows = Vec::new();
    for (instance, before) in instances.iter().zip(before) {
        let all = starts(instance)?;
        let restarts = &all[before..];
        ensure!(
            restarts.len() == 1,
            "{} restarted its service once: {all:?}",
            instance.name()
        );
        windows.push((instance.name().to_string(), restarts[0]));
    }
    let (most, at) = most_at_once(&windows);
    ensure!(
        most <= PLACES,
        "at most {PLACES} instances restart at once, but {most} did at {at} ns: {windows:#?}"
    );

    for instance in instances {
        instance.shutdown()?;
    }
    server.stop()?;
    testbed.shutdown()?;
    Ok(())
}

/// Each start of the service on `instance`: when it began and when it was
/// up, in nanoseconds since the epoch (the instances share the host's
/// clock).
fn starts(instance: &Instance) -> Result<Vec<(u128, u128)>> {
    let log = instance.run_successfully(&["cat", LOG])?.stdout;
    let mut starts = Vec::new();
    let mut begun = None;
    for line in log.lines() {
        let (word, nanos) = line
            .split_once(' ')
            .with_context(|| format!("{}: a line of {LOG}: {line:?}", instance.name()))?;
        let nanos: u128 = nanos.trim().parse()?;
        match word {
            "begin" => begun = Some(nanos),
            "up" => starts.push((
                begun
                    .with_context(|| format!("{}: `up` without `begin`: {log}", instance.name()))?,
                nanos,
            )),
            other => anyhow::bail!("{}: unknown line {other:?} in {LOG}", instance.name()),
        }
    }
    Ok(starts)
}

/// The most windows open at one moment, and that moment.
fn most_at_once(windows: &[(String, (u128, u128))]) -> (usize, u128) {
    let mut events: Vec<(u128, i32)> = windows
        .iter()
        .flat_map(|(_, (begin, up))| [(*begin, 1), (*up, -1)])
        .collect();
    // An end before a begin at the same instant: touching is not overlapping.
    events.sort();
    let (mut open, mut most, mut at) = (0i32, 0i32, 0u128);
    for (time, step) in events {
        open += step;
        if open > most {
            most = open;
            at = time;
        }
    }
    (most as usize, at)
}

#[test]
fn the_most_windows_open_at_once_counts_overlaps_not_touches() {
    let w = |b, u| (String::new(), (b, u));
    assert_eq!(most_at_once(&[w(0, 10), w(10, 20), w(20, 30)]).0, 1);
    assert_eq!(most_at_once(&[w(0, 10), w(5, 20), w(6, 30)]), (3, 6));
}
