//! Fleet operations end to end, in testbed instances whose baked agent
//! enrolls at boot and holds a `Watch` stream open: `cms-server trigger`
//! with a canary and batches (and a failing canary that stops the
//! rollout), short-lived certificates renewed by the agent, a gone node
//! removed with its certificate refused, and its name taken by a new
//! instance. The server runs in this process with lifecycle times in
//! seconds; the admin commands are the real `cms-server` binary.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cms_integration::{
    AdminCli, GitRepo, Image, ImageRecipe, Instance, InstanceConfig, TestServer, Testbed,
    bake_agent_for_server, begin_end_to_end_test, build_workspace_binary, node_reports,
    wait_for_first_report, wait_until_polling_every,
};
use cms_proto::v1 as pb;

/// The web role: one file holding `version`, and optionally a smoke test
/// that fails.
fn web_role(version: &str, failing_smoke_test: bool) -> String {
    let mut role = format!(
        "[match]\nrole = \"web\"\n\n[[file]]\npath = \"/etc/web-version\"\ncontent = \"{version}\\n\"\n"
    );
    if failing_smoke_test {
        role.push_str(
            "\n[[exec]]\nname = \"smoke-test\"\ncommand = \"false\"\nrequire = [\"file:/etc/web-version\"]\n",
        );
    }
    role
}

fn reports(server: &TestServer, node: &str) -> Result<Vec<pb::RunReport>> {
    node_reports(server, node, 50)
}

fn wait_for_first_reports(server: &TestServer, instances: &[&Instance]) -> Result<()> {
    for instance in instances {
        wait_for_first_report(server, instance)?;
    }
    Ok(())
}

fn file_in(instance: &Instance, path: &str) -> Result<String> {
    Ok(instance.run(&["cat", path])?.stdout)
}

/// The trigger id from the summary's first line, `trigger ID: STATE`.
fn trigger_id(stdout: &str) -> Result<String> {
    stdout
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("trigger "))
        .and_then(|rest| rest.split(':').next())
        .map(str::to_string)
        .with_context(|| format!("no trigger id in:\n{stdout}"))
}

fn run_for_trigger(
    server: &TestServer,
    node: &str,
    trigger: &str,
) -> Result<Option<pb::RunReport>> {
    Ok(reports(server, node)?
        .into_iter()
        .find(|r| r.trigger_id == trigger))
}

#[test]
fn a_trigger_converges_the_canary_then_batches_of_the_selection_only_and_a_failing_canary_stops_the_rollout()
-> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("roles/web.toml", &web_role("one", false)),
            (
                "roles/db.toml",
                "[match]\nrole = \"db\"\n\n[[file]]\npath = \"/etc/db-version\"\ncontent = \"one\\n\"\n",
            ),
        ],
        "roles",
    )?;
    let admin_binary = build_workspace_binary("cms-server", "cms-server")?;
    let testbed = Testbed::start(&settings)?;
    let server = TestServer::start_on(
        &dir.path().join("server"),
        git.path(),
        std::net::SocketAddr::from((testbed.host_address(), 0)),
    )?;
    let admin = AdminCli::for_server(admin_binary, &server);
    let token = server.token(&[("role", "*")])?;
    let image = Image::build_or_reuse(&ImageRecipe::debian_bookworm(), &settings)?;
    let baked = bake_agent_for_server(&image, &server.address, &token)?;
    let boot = |name: &str, role: &str| {
        testbed.boot(&baked, InstanceConfig::new(name).with_tag("role", role))
    };
    let web = [
        boot("web-1", "web")?,
        boot("web-2", "web")?,
        boot("web-3", "web")?,
    ];
    let db = boot("db-1", "db")?;
    wait_for_first_reports(&server, &[&web[0], &web[1], &web[2], &db])?;
    for instance in &web {
        ensure!(file_in(instance, "/etc/web-version")? == "one\n");
    }

    // Version two, rolled out by a trigger: the canary, then 50% batches.
    git.commit(&[("roles/web.toml", &web_role("two", false))], "two")?;
    ensure!(server.runtime.block_on(server.sync())?.accepted);
    let db_reports_before = reports(&server, "db-1")?.len();
    let (code, stdout, stderr) = admin.run(&[
        "trigger",
        "--select",
        "role=web",
        "--canary",
        "1",
        "--batch",
        "50%",
        "--timeout",
        "2m",
    ])?;
    ensure!(
        code == Some(0),
        "trigger failed ({code:?}):\n{stdout}\n{stderr}"
    );
    ensure!(
        stdout.contains("3 nodes")
            && stdout.contains("3 changed, 0 unchanged, 0 failed, 0 unreachable"),
        "summary:\n{stdout}"
    );
    ensure!(
        stderr.contains("3/3"),
        "the progress reached 3/3:\n{stderr}"
    );
    let first = trigger_id(&stdout)?;
    for instance in &web {
        ensure!(
            file_in(instance, "/etc/web-version")? == "two\n",
            "{} converged version two",
            instance.name()
        );
    }
    // The stored progress, after the CLI has gone.
    let status = admin.json(&["trigger", "--status", &first])?;
    ensure!(status["state"] == "done", "{status:#}");
    let batch_of = |status: &serde_json::Value, node: &str| {
        status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["node"] == node)
            .map(|n| {
                (
                    n["batch"].as_u64().unwrap_or(0),
                    n["result"].as_str().unwrap_or("").to_string(),
                )
            })
    };
    ensure!(
        batch_of(&status, "web-1") == Some((1, "changed".into())),
        "{status:#}"
    );
    ensure!(
        batch_of(&status, "web-2") == Some((2, "changed".into())),
        "{status:#}"
    );
    ensure!(
        batch_of(&status, "web-3") == Some((2, "changed".into())),
        "{status:#}"
    );
    ensure!(
        batch_of(&status, "db-1").is_none(),
        "db-1 is not selected: {status:#}"
    );
    // The canary's run ended before any run of the next batch began.
    let canary = run_for_trigger(&server, "web-1", &first)?.context("the canary's report")?;
    let canary_end = canary.started_at_unix_ms + canary.duration_ms as i64;
    for node in ["web-2", "web-3"] {
        let run = run_for_trigger(&server, node, &first)?
            .with_context(|| format!("{node}'s report for the trigger"))?;
        ensure!(
            run.started_at_unix_ms >= canary_end,
            "{node} started at {} before the canary ended at {canary_end}",
            run.started_at_unix_ms
        );
    }
    // Outside the selection: not asked to run.
    let db_reports = reports(&server, "db-1")?;
    ensure!(
        db_reports.len() == db_reports_before && db_reports.iter().all(|r| r.trigger_id.is_empty()),
        "db-1 ran for the trigger: {db_reports:?}"
    );

    // Version three fails on the canary: nothing else changes.
    git.commit(&[("roles/web.toml", &web_role("three", true))], "three")?;
    ensure!(server.runtime.block_on(server.sync())?.accepted);
    let (code, stdout, stderr) = admin.run(&[
        "trigger",
        "--select",
        "role=web",
        "--canary",
        "1",
        "--batch",
        "50%",
        "--timeout",
        "2m",
    ])?;
    ensure!(
        code == Some(4),
        "a failed canary exits 4, got {code:?}:\n{stdout}\n{stderr}"
    );
    ensure!(
        stdout.contains("stopped") && stdout.contains("canary"),
        "summary says the canary stopped the rollout:\n{stdout}"
    );
    ensure!(
        stdout.contains("web-1: exec:smoke-test"),
        "summary names the failed resource:\n{stdout}"
    );
    let second = trigger_id(&stdout)?;
    ensure!(file_in(&web[0], "/etc/web-version")? == "three\n");
    for instance in &web[1..] {
        ensure!(
            file_in(instance, "/etc/web-version")? == "two\n",
            "{} must not change after the canary failed",
            instance.name()
        );
        ensure!(run_for_trigger(&server, instance.name(), &second)?.is_none());
    }
    let (code, status) = admin.json_and_code(&["trigger", "--status", &second])?;
    ensure!(
        code == Some(4) && status["state"] == "stopped",
        "{code:?} {status:#}"
    );
    ensure!(
        batch_of(&status, "web-2") == Some((2, "pending".into())),
        "{status:#}"
    );

    for instance in web {
        instance.shutdown()?;
    }
    db.shutdown()?;
    server.stop()?;
    testbed.shutdown()?;
    Ok(())
}

const AGENT_STATE: &str = "/var/lib/cms/agent";

#[test]
fn certificates_are_renewed_by_the_agent_a_gone_node_is_removed_and_refused_and_a_new_instance_takes_its_name()
-> Result<()> {
    let (_alone, settings) = begin_end_to_end_test()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("roles/web.toml", &web_role("one", false)),
        ],
        "roles",
    )?;
    let admin_binary = build_workspace_binary("cms-server", "cms-server")?;
    let agent_binary = build_workspace_binary("cms-agent", "cms-agent")?;
    let testbed = Testbed::start(&settings)?;
    let server = TestServer::start_with(
        &dir.path().join("server"),
        git.path(),
        std::net::SocketAddr::from((testbed.host_address(), 0)),
        |config| {
            config.certificate_validity = Duration::from_secs(30);
            config.gone_after = Duration::from_secs(3);
            config.remove_after = Duration::from_secs(3);
            config.presence_flush = Duration::from_millis(500);
        },
    )?;
    let admin = AdminCli::for_server(admin_binary, &server);
    let token = server.token(&[("role", "web")])?;
    let image = Image::build_or_reuse(&ImageRecipe::debian_bookworm(), &settings)?;
    let baked = bake_agent_for_server(&image, &server.address, &token)?;
    let first = testbed.boot(&baked, InstanceConfig::new("web-1").with_tag("role", "web"))?;
    wait_for_first_reports(&server, &[&first])?;

    // The certificate lives 30 s; the agent renews it after about 20 s.
    let certificate_path = format!("{AGENT_STATE}/cert.pem");
    let original = file_in(&first, &certificate_path)?;
    wait_until_polling_every(
        Duration::from_millis(500),
        Duration::from_secs(90),
        "the agent to renew its certificate",
        || Ok((file_in(&first, &certificate_path)? != original).then_some(())),
    )
    .or_else(|error| {
        let journal = first.run(&["journalctl", "-u", "cms-agent", "--no-pager", "-n", "30"])?;
        Err(error.context(format!("the agent's journal:\n{}", journal.stdout)))
    })?;
    let converge = first.run(&["cms-agent", "converge"])?;
    ensure!(
        converge.exit_code == Some(0),
        "the node is served with its renewed certificate:\n{}{}",
        converge.stdout,
        converge.stderr
    );

    // While web-1 lives, nobody else takes its name.
    let intruder = Command::new(&agent_binary)
        .args([
            "enroll",
            "--server",
            &server.address,
            "--token",
            &token,
            "--node",
            "web-1",
        ])
        .args(["--tags", "role=web", "--state-dir"])
        .arg(dir.path().join("intruder"))
        .output()?;
    let intruder_error = String::from_utf8_lossy(&intruder.stderr);
    ensure!(
        !intruder.status.success() && intruder_error.contains("web-1 is live"),
        "a live node's name is refused: {intruder_error}"
    );

    // The instance goes away for good (the autoscaler terminated it).
    let identity = cms_agent::identity::Identity {
        private_key_pem: file_in(&first, &format!("{AGENT_STATE}/key.pem"))?,
        certificate_pem: file_in(&first, &certificate_path)?,
        ca_certificate_pem: file_in(&first, &format!("{AGENT_STATE}/ca.pem"))?,
    };
    first.shutdown()?;
    let mut seen_gone = false;
    let mut last_listing = serde_json::Value::Null;
    wait_until_polling_every(
        Duration::from_millis(100),
        Duration::from_secs(60),
        "web-1 to be removed",
        || {
            let nodes = admin.json(&["nodes"])?;
            let web_1 = nodes
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["id"] == "web-1")
                .cloned();
            last_listing = nodes;
            Ok(match web_1 {
                Some(node) if node["status"] == "gone" => {
                    seen_gone = true;
                    None
                }
                Some(_) => None,
                None => Some(()),
            })
        },
    )
    .with_context(|| format!("web-1 was never removed: {last_listing:#}"))?;
    ensure!(seen_gone, "web-1 was listed as gone before it was removed");
    let refused = server.runtime.block_on(async {
        let address = cms_agent::client::ServerAddress::parse(&server.address)?;
        let mut client = cms_agent::client::Connector::new(&address, &identity)?
            .connect()
            .await?;
        anyhow::Ok(client.get_catalog(pb::CatalogRequest::default()).await)
    })?;
    ensure!(
        matches!(&refused, Err(status) if status.code() == tonic::Code::PermissionDenied),
        "the removed node's certificate (still within its validity) is refused: {refused:?}"
    );

    // A new instance with the same name enrolls without any cleanup.
    let second = testbed.boot(&baked, InstanceConfig::new("web-1").with_tag("role", "web"))?;
    wait_for_first_reports(&server, &[&second])?;
    let journal = second.run(&["journalctl", "-u", "cms-agent", "--no-pager", "-o", "cat"])?;
    ensure!(
        journal.stdout.contains("enrolled as web-1"),
        "{}",
        journal.stdout
    );
    ensure!(file_in(&second, "/etc/web-version")? == "one\n");
    let nodes = admin.json(&["nodes"])?;
    ensure!(
        nodes
            .as_array()
            .is_some_and(|n| n.len() == 1 && n[0]["id"] == "web-1" && n[0]["status"] != "gone"),
        "{nodes:#}"
    );

    second.shutdown()?;
    server.stop()?;
    testbed.shutdown()?;
    Ok(())
}
