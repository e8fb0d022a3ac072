//! The launch lifecycle hook through real instances, against
//! `AwsApiDouble` (the AWS APIs cannot be reached from tests): two
//! instances of one autoscaling group with a launch lifecycle hook, booted
//! from an image whose agent.toml names the hook. `web-1`'s role converges;
//! its agent completes the launch with CONTINUE once, and starts
//! `cms-converged.target`. `bad-1`'s role fails (a file whose folder does
//! not exist); its first converge at boot is try 1 of 2, and its second,
//! asked for by a trigger, completes the launch with ABANDON, its report
//! saying why. Neither completes its launch twice.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cms_integration::{
    AgentBake, AgentConfigFile, AwsApiDouble, GitRepo, Image, ImageRecipe, Instance,
    InstanceConfig, TestServer, Testbed, begin_end_to_end_test, build_agent_package, node_reports,
    wait_for_first_report, wait_until_polling_every,
};
use cms_proto::v1 as pb;

const SETTINGS: &str = "[hierarchy]\nlayers = [\"common\"]\n";

const WEB: &str = r#"[match]
role = "web"

[[file]]
path = "/etc/motd"
content = "configured by cms\n"
mode = "0644"
"#;

/// A role that cannot converge: the folder of its file does not exist.
const BROKEN: &str = r#"[match]
role = "broken"

[[file]]
path = "/srv/missing-folder/app.conf"
content = "never written\n"
"#;

const GROUP: &str = "web-asg";
const HOOK: &str = "cms-launch";
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn the_launch_is_continued_once_after_a_good_first_converge_and_abandoned_after_first_converges_that_keep_failing()
-> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let image = Image::build_or_reuse(&ImageRecipe::debian_bookworm(), &settings)?;
    let testbed = Testbed::start(&settings)?;
    let double = AwsApiDouble::start(SocketAddr::from((testbed.host_address(), 0)))?;
    double.add_lifecycle_hook(GROUP, HOOK);

    let dir = tempfile::tempdir()?;
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[
            ("cms.toml", SETTINGS),
            ("roles/web.toml", WEB),
            ("roles/broken.toml", BROKEN),
        ],
        "a role that converges and one that cannot",
    )?;
    let server = TestServer::start_on(
        &dir.path().join("server"),
        git.path(),
        SocketAddr::from((testbed.host_address(), 0)),
    )?;
    let token = server.token(&[("role", "*")])?;
    // The group is left out: the agent finds it with
    // DescribeAutoScalingInstances.
    let baked = image.bake(&AgentBake {
        agent_package: build_agent_package()?,
        config_files: vec![AgentConfigFile {
            relative_path: "agent.toml".into(),
            contents: format!(
                "server = \"{}\"\ntoken = \"{token}\"\ninterval = \"30m\"\nsplay = \"0s\"\n\n[lifecycle]\nhook = \"{HOOK}\"\nabandon_after = 2\n\n[aws]\nendpoint = \"{}\"\nmetadata_endpoint = \"{}\"\n",
                server.address,
                double.endpoint_for_instances(),
                double.metadata_endpoint_for_instances(),
            ),
        }],
    })?;

    let mut web =
        testbed.start_instance(&baked, InstanceConfig::new("web-1").with_tag("role", "web"))?;
    double.add_instance(web.address().into(), "i-0web1");
    double.set_autoscaling_group("i-0web1", GROUP);
    let mut bad = testbed.start_instance(
        &baked,
        InstanceConfig::new("bad-1").with_tag("role", "broken"),
    )?;
    double.add_instance(bad.address().into(), "i-0bad1");
    double.set_autoscaling_group("i-0bad1", GROUP);
    web.wait_until_booted(BOOT_TIMEOUT)?;
    bad.wait_until_booted(BOOT_TIMEOUT)?;

    // web-1: converged, CONTINUE, the target reached.
    let report = wait_for_first_report(&server, &web)?;
    ensure!(
        report
            .resources
            .iter()
            .all(|r| r.status != pb::ResourceStatus::Failed as i32),
        "web-1 converges: {report:#?}\n{}",
        journal(&web)
    );
    ensure!(
        report.note.contains(&format!(
            "completed launch lifecycle hook {HOOK} of autoscaling group {GROUP} with CONTINUE"
        )),
        "web-1's first report says it continued the launch: {:?}\n{}",
        report.note,
        journal(&web)
    );
    let completed = completions(&double, "i-0web1");
    ensure!(
        completed == [(GROUP.to_string(), HOOK.to_string(), "CONTINUE".to_string())],
        "the double recorded one CONTINUE for web-1: {:#?}",
        double.calls()
    );
    ensure!(
        is_active(&web, "cms-converged.target")?,
        "cms-converged.target is active on web-1 after its first good converge\n{}",
        journal(&web)
    );

    // bad-1: its first converge failed: try 1 of 2, nothing completed.
    let report = wait_for_first_report(&server, &bad)?;
    ensure!(
        report
            .resources
            .iter()
            .any(|r| r.status == pb::ResourceStatus::Failed as i32),
        "bad-1's first converge fails: {report:#?}"
    );
    ensure!(
        report.note.contains("try 1 of 2"),
        "bad-1's first report counts the failed try: {:?}",
        report.note
    );
    ensure!(
        completions(&double, "i-0bad1").is_empty(),
        "nothing is completed for bad-1 after one failed try: {:#?}",
        double.lifecycle_results()
    );

    // A second failed converge abandons the launch, saying why.
    server.wait_until_watch_channels_held(&[("role", "broken")], 1)?;
    server.trigger(&[("role", "broken")], false, Duration::from_secs(120))?;
    let abandoned = wait_until_polling_every(
        Duration::from_millis(500),
        Duration::from_secs(60),
        "bad-1's report abandoning its launch",
        || {
            Ok(node_reports(&server, "bad-1", 5)?
                .into_iter()
                .find(|report| report.note.contains("with ABANDON")))
        },
    )
    .with_context(|| journal(&bad))?;
    ensure!(
        abandoned.note.contains("the first converge failed 2 times")
            && abandoned.note.contains("file:/srv/missing-folder/app.conf"),
        "the abandoning report says why, naming the failed resource: {:?}",
        abandoned.note
    );
    ensure!(
        completions(&double, "i-0bad1")
            == [(GROUP.to_string(), HOOK.to_string(), "ABANDON".to_string())],
        "the double recorded one ABANDON for bad-1: {:#?}",
        double.lifecycle_results()
    );
    ensure!(
        !is_active(&bad, "cms-converged.target")?,
        "cms-converged.target is not reached on bad-1"
    );

    // Later runs complete nothing again.
    server.wait_until_watch_channels_held(&[("role", "web")], 1)?;
    server.trigger(&[("role", "web")], false, Duration::from_secs(120))?;
    server.trigger(&[("role", "broken")], false, Duration::from_secs(120))?;
    ensure!(
        completions(&double, "i-0web1").len() == 1 && completions(&double, "i-0bad1").len() == 1,
        "one completion per instance, whatever the later runs: {:#?}",
        double.lifecycle_results()
    );

    web.shutdown()?;
    bad.shutdown()?;
    server.stop()?;
    testbed.shutdown()?;
    Ok(())
}

/// The lifecycle actions the double recorded for an instance: group, hook
/// and result.
fn completions(double: &AwsApiDouble, instance_id: &str) -> Vec<(String, String, String)> {
    double
        .lifecycle_results()
        .into_iter()
        .filter(|c| c.instance_id == instance_id)
        .map(|c| (c.group, c.hook, c.result))
        .collect()
}

fn is_active(instance: &Instance, unit: &str) -> Result<bool> {
    Ok(instance
        .run(&["systemctl", "is-active", "--quiet", unit])?
        .exit_code
        == Some(0))
}

fn journal(instance: &Instance) -> String {
    instance
        .run(&["journalctl", "-u", "cms-agent", "--no-pager", "-n", "60"])
        .map(|output| output.stdout)
        .unwrap_or_default()
}
