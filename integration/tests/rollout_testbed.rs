//! A rollout through real instances: four `role=web` instances booted from
//! an image with the agent baked in, converged by a `cms-server` on the
//! testbed bridge that serves a git roles repository whose `cms.toml` has a
//! `[rollout]` policy (one canary, then waves of one). A good commit goes
//! through the four in waves, one after the other, as their reports show. A
//! commit that breaks nginx's site configuration is then tried on the
//! canary, whose nginx refuses to restart; the rollout halts, moves the
//! canary back, and the other three instances never see the commit.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cms_integration::{
    EXAMPLE_PACKAGES, GitRepo, Image, ImageRecipe, Instance, InstanceConfig, PackageRepo,
    TestServer, Testbed, bake_agent_for_server, begin_end_to_end_test, wait_for_first_report,
    wait_until_polling_every,
};
use cms_proto::v1 as pb;

/// The example repository's data hierarchy, and the rollout policy under
/// test: one canary per role group, then one node per wave, no bake.
const SETTINGS: &str = r#"[hierarchy]
layers = [
  "node/{{trusted.instance_id}}",
  "env/{{tag.env}}",
  "role/{{tag.role}}",
  "common",
]

[rollout]
canary = 1
batch = "1"
bake = "0s"
timeout = "3m"
"#;

/// The role: nginx from the internal package repository, a site of ours
/// that restarts nginx when it changes, and nginx running. curl is there
/// for the test to ask nginx from inside the instance.
const ROLE: &str = r#"[match]
role = "web"

[[package]]
name = "nginx"

[[package]]
name = "curl"

[[file]]
path = "/etc/nginx/conf.d/site.conf"
source = "site.conf"
owner = "root"
group = "root"
mode = "0644"
require = ["package:nginx"]
notify = ["service:nginx"]

[[service]]
name = "nginx"
ensure = "running"
enable = true
require = ["package:nginx"]
"#;

const SITE_PATH: &str = "/etc/nginx/conf.d/site.conf";
const SITE_PORT: u16 = 8080;
/// What the first site answers.
const FIRST: &str = "served by the first revision";
/// What the second site, rolled out in waves, answers.
const SECOND: &str = "served by the second revision";

fn site(greeting: &str) -> String {
    format!(
        "server {{\n    listen {SITE_PORT};\n    location / {{\n        return 200 \"{greeting}\\n\";\n    }}\n}}\n"
    )
}

/// The second site with a directive nginx does not know: `nginx -t`, which
/// nginx's unit runs before starting, refuses it, so the restart fails.
fn broken_site() -> String {
    site(SECOND).replace(
        "    location / {",
        "    serve_everything_faster on;\n    location / {",
    )
}

const INSTANCES: [&str; 4] = ["web-1", "web-2", "web-3", "web-4"];

/// How long an instance may take from starting to a finished boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a rollout may take, from the sync to its end: four waves of a
/// run of a few seconds each, or the canary's failed run and its rollback
/// run, with a margin for a loaded machine (the policy's timeout per node
/// is 3 minutes).
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);

/// The active states of a rollout.
const ACTIVE: [&str; 4] = ["running", "baking", "paused", "rolling_back"];

#[test]
fn a_good_commit_goes_through_the_instances_in_waves_and_one_that_breaks_nginx_is_rolled_back_on_the_canary_and_never_reaches_the_others()
-> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let image = Image::build_or_reuse(&ImageRecipe::debian_bookworm(), &settings)?;
    let testbed = Testbed::start(&settings)?;
    let mut repo = PackageRepo::create(&settings)?;
    repo.download_with_dependencies(&image, EXAMPLE_PACKAGES)?;
    let package_server = testbed.serve_package_repo(&repo)?;

    let dir = tempfile::tempdir()?;
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[
            ("cms.toml", SETTINGS),
            ("roles/web.toml", ROLE),
            ("files/site.conf", &site(FIRST)),
        ],
        "web: nginx with our site",
    )?;
    let stable = git.head()?;
    let server = TestServer::start_on(
        &dir.path().join("server"),
        git.path(),
        SocketAddr::from((testbed.host_address(), 0)),
    )?;
    let token = server.token(&[("role", "web")])?;
    let baked = bake_agent_for_server(&image, &server.address, &token)?;

    // Booted together; each agent enrolls and converges at boot.
    let mut instances = INSTANCES
        .iter()
        .map(|name| {
            testbed.start_instance(&baked, InstanceConfig::new(name).with_tag("role", "web"))
        })
        .collect::<Result<Vec<Instance>>>()?;
    for instance in &mut instances {
        instance.wait_until_booted(BOOT_TIMEOUT)?;
    }
    for instance in &instances {
        let report = wait_for_first_report(&server, instance)?;
        let failed = failed_resources(&report);
        ensure!(
            failed.is_empty() && report.revision == stable,
            "{}'s first run at {stable}: revision {}, failed {failed:?}\n{}",
            instance.name(),
            report.revision,
            journal(instance)
        );
        ensure_site_serves(instance, FIRST)?;
    }
    server.wait_until_watch_channels_held(&[("role", "web")], INSTANCES.len() as u32)?;

    // A good commit: canary, then one instance a wave, each wave after
    // the one before has reported.
    let (second, rollout, summary) = commit_and_roll_out(
        &git,
        &server,
        &instances,
        &site(SECOND),
        "site: a new greeting",
    )?;
    ensure!(
        rollout.state == "done" && rollout.from_revision == stable,
        "the good commit's rollout is done:\n{summary}"
    );
    let names: Vec<&str> = rollout.waves.iter().map(|w| w.name.as_str()).collect();
    ensure!(
        names == ["canary", "wave 2", "wave 3", "wave 4"]
            && rollout
                .waves
                .iter()
                .all(|wave| wave.nodes.len() == 1 && wave.nodes[0].result == "changed"),
        "four waves of one changed instance each:\n{summary}"
    );
    // The order shows in the reports: each wave's run of the second
    // revision starts after the run of the wave before has finished.
    let mut previous_end: Option<(String, i64)> = None;
    for wave in &rollout.waves {
        let node = &wave.nodes[0].node_id;
        let report = cms_integration::node_reports(&server, node, 5)?
            .into_iter()
            .find(|report| report.revision == second && report.run_id == wave.nodes[0].run_id)
            .with_context(|| format!("{node}'s report of {second}:\n{summary}"))?;
        if let Some((before, ended)) = &previous_end {
            ensure!(
                report.started_at_unix_ms >= *ended,
                "{node} ({}) started its run at {} before {before}'s ended at {ended}:\n{summary}",
                wave.name,
                report.started_at_unix_ms
            );
        }
        previous_end = Some((
            node.clone(),
            report.started_at_unix_ms + report.duration_ms as i64,
        ));
    }
    for instance in &instances {
        ensure_site_serves(instance, SECOND)?;
    }
    let stable = second;

    // The broken site is valid for cms: only nginx refuses it.
    let (broken, rollout, summary) = commit_and_roll_out(
        &git,
        &server,
        &instances,
        &broken_site(),
        "site: serve everything faster",
    )?;

    ensure!(
        rollout.state == "rolled_back" && rollout.from_revision == stable,
        "the rollout ends rolled back to {stable}:\n{summary}"
    );
    let canary_wave = rollout
        .waves
        .iter()
        .find(|wave| wave.name == "canary")
        .with_context(|| format!("no canary wave:\n{summary}"))?;
    ensure!(
        canary_wave.nodes.len() == 1 && canary_wave.nodes[0].result == "failed",
        "one canary, which failed:\n{summary}"
    );
    let canary = canary_wave.nodes[0].node_id.clone();
    ensure!(
        rollout
            .rollback
            .iter()
            .map(|n| n.node_id.as_str())
            .collect::<Vec<_>>()
            == [&canary],
        "the rollback moves the canary {canary} back, and only it:\n{summary}"
    );
    ensure!(
        rollout.rollback[0].result == "changed",
        "the canary's rollback run puts the good site back and restarts nginx:\n{summary}"
    );
    let mut others: Vec<(&str, &str)> = rollout
        .waves
        .iter()
        .filter(|wave| wave.name != "canary")
        .flat_map(|wave| wave.nodes.iter())
        .map(|node| (node.node_id.as_str(), node.result.as_str()))
        .collect();
    others.sort();
    let mut expected: Vec<(&str, &str)> = INSTANCES
        .iter()
        .filter(|name| **name != canary)
        .map(|name| (*name, "pending"))
        .collect();
    expected.sort();
    ensure!(
        others == expected,
        "the three other instances are never moved:\n{summary}"
    );

    // The canary's failed run was the broken commit's, its restart of
    // nginx the failure.
    let canary_reports = cms_integration::node_reports(&server, &canary, 3)?;
    ensure!(
        canary_reports.iter().any(|report| report.revision == broken
            && failed_resources(report).contains(&"service:nginx".to_string())),
        "the canary ran {broken} and nginx's restart failed: {canary_reports:#?}"
    );

    for instance in &instances {
        ensure_site_serves(instance, SECOND)
            .with_context(|| format!("the canary was {canary}\n{}", journal(instance)))?;
    }

    for instance in instances {
        instance.shutdown()?;
    }
    server.stop()?;
    drop(package_server);
    testbed.shutdown()?;
    Ok(())
}

/// Commits `site`, syncs (the commit must be accepted) and waits for its
/// rollout to end: the commit, the rollout, and a summary for messages.
fn commit_and_roll_out(
    git: &GitRepo,
    server: &TestServer,
    instances: &[Instance],
    site: &str,
    message: &str,
) -> Result<(String, pb::RolloutProgress, String)> {
    git.commit(&[("files/site.conf", site)], message)?;
    let commit = git.head()?;
    let synced = server.runtime.block_on(server.sync())?;
    ensure!(
        synced.accepted && synced.revision == commit,
        "{message}: the commit is accepted: {synced:?}"
    );
    let rollout =
        wait_until_the_rollout_of(server, &commit).with_context(|| journals(instances))?;
    let summary = format!("{rollout:#?}\n{}", journals(instances));
    Ok((commit, rollout, summary))
}

/// The site answering `greeting` is on disk and nginx serves it.
fn ensure_site_serves(instance: &Instance, greeting: &str) -> Result<()> {
    let on_disk = instance.run_successfully(&["cat", SITE_PATH])?.stdout;
    ensure!(
        on_disk == site(greeting),
        "{}'s {SITE_PATH} is not the one answering {greeting:?}:\n{on_disk}",
        instance.name()
    );
    let answer = instance.run(&[
        "curl",
        "-s",
        "--max-time",
        "10",
        &format!("http://127.0.0.1:{SITE_PORT}/"),
    ])?;
    ensure!(
        answer.stdout.trim() == greeting,
        "nginx on {} answered {answer:?}",
        instance.name()
    );
    Ok(())
}

/// Polls the default environment's rollout until the one to `revision`
/// has ended.
fn wait_until_the_rollout_of(server: &TestServer, revision: &str) -> Result<pb::RolloutProgress> {
    let mut last = None;
    wait_until_polling_every(
        Duration::from_millis(500),
        ROLLOUT_TIMEOUT,
        &format!("the rollout of {revision} to end"),
        || {
            let answer = server.runtime.block_on(async {
                server
                    .admin()
                    .await?
                    .rollout_status(pb::RolloutStatusRequest::default())
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(anyhow::Error::from)
            });
            let rollout = match answer {
                Ok(rollout) => rollout,
                // None yet: the sync starts it.
                Err(error)
                    if error
                        .downcast_ref::<tonic::Status>()
                        .is_some_and(|s| s.code() == tonic::Code::NotFound) =>
                {
                    return Ok(None);
                }
                Err(error) => return Err(error),
            };
            let ended =
                rollout.to_revision == revision && !ACTIVE.contains(&rollout.state.as_str());
            last = Some(rollout.clone());
            Ok(ended.then_some(rollout))
        },
    )
    .with_context(|| format!("the last status: {last:#?}"))
}

fn failed_resources(report: &pb::RunReport) -> Vec<String> {
    report
        .resources
        .iter()
        .filter(|r| r.status == pb::ResourceStatus::Failed as i32)
        .map(|r| r.reference.clone())
        .collect()
}

fn journal(instance: &Instance) -> String {
    let output = instance.run(&[
        "journalctl",
        "-u",
        "cms-agent",
        "-u",
        "nginx",
        "--no-pager",
        "-n",
        "60",
    ]);
    match output {
        Ok(output) => format!("{}'s journal:\n{}", instance.name(), output.stdout),
        Err(error) => format!("{}'s journal: {error:#}", instance.name()),
    }
}

fn journals(instances: &[Instance]) -> String {
    instances.iter().map(journal).collect::<Vec<_>>().join("\n")
}
