//! `cms-server trigger` through the real binary and the server's real
//! trigger runner: with nodes that are enrolled but hold no watch channel
//! (each is unreachable at once, and counts as a failure towards
//! `--max-failures`), and with real `cms-agent run` daemons on this host
//! whose role fails. Exit codes and the summary are what an operator's
//! script reads.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cms_integration::{
    AdminCli, GitRepo, HostAgent, TestServer, build_workspace_binary, wait_until_polling_every,
};

/// A server, and three enrolled `role=web` nodes whose agents never run.
struct Fleet {
    server: TestServer,
    admin: AdminCli,
    _dir: tempfile::TempDir,
}

fn fleet_of_three_unreachable_nodes() -> Result<Fleet> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            (
                "roles/web.toml",
                "[match]\nrole = \"web\"\n\n[[directory]]\npath = \"/tmp/never-converged\"\n",
            ),
        ],
        "roles",
    )?;
    let server = TestServer::start(&dir.path().join("server"), git.path(), 0)?;
    let token = server.token(&[("role", "web")])?;
    let agent_binary = build_workspace_binary("cms-agent", "cms-agent")?;
    for node in ["web-1", "web-2", "web-3"] {
        let agent = HostAgent::in_directory(&agent_binary, dir.path(), node)?;
        let enrolled = agent.enroll(&server.address, &token, node, "role=web")?;
        ensure!(
            enrolled.status.success(),
            "enroll {node}: {}",
            String::from_utf8_lossy(&enrolled.stderr)
        );
    }
    let admin = AdminCli::for_server(build_workspace_binary("cms-server", "cms-server")?, &server);
    Ok(Fleet {
        server,
        admin,
        _dir: dir,
    })
}

/// The results of the trigger's nodes, from `trigger --status ID --format
/// json`, sorted.
fn node_results(admin: &AdminCli, stdout: &str) -> Result<Vec<String>> {
    let id = stdout
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("trigger "))
        .and_then(|rest| rest.split(':').next())
        .with_context(|| format!("no trigger id in:\n{stdout}"))?;
    let (_, json, stderr) = admin.run(&["trigger", "--status", id, "--format", "json"])?;
    let status: serde_json::Value =
        serde_json::from_str(&json).with_context(|| format!("{json}{stderr}"))?;
    let mut results: Vec<String> = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|node| node["result"].as_str().unwrap_or("").to_string())
        .collect();
    results.sort();
    Ok(results)
}

#[test]
fn a_rollout_stops_once_unreachable_nodes_exceed_max_failures_and_exits_4() -> Result<()> {
    let fleet = fleet_of_three_unreachable_nodes()?;
    let (code, stdout, stderr) = fleet.admin.run(&[
        "trigger",
        "--select",
        "role=web",
        "--batch",
        "1",
        "--max-failures",
        "1",
        "--timeout",
        "30s",
    ])?;
    ensure!(
        code == Some(4),
        "a stopped rollout exits 4, got {code:?}:\n{stdout}\n{stderr}"
    );
    for expected in [
        ": stopped",
        "2 nodes failed or were unreachable, more than --max-failures 1: rollout stopped",
        "0 changed, 0 unchanged, 0 failed, 2 unreachable, 1 not run",
    ] {
        ensure!(
            stdout.contains(expected),
            "the summary lacks {expected:?}:\n{stdout}"
        );
    }
    ensure!(
        node_results(&fleet.admin, &stdout)? == ["pending", "unreachable", "unreachable"],
        "the third batch never ran:\n{stdout}"
    );
    fleet.server.stop()
}

#[test]
fn unreachable_nodes_within_max_failures_let_every_batch_run_and_still_exit_4() -> Result<()> {
    let fleet = fleet_of_three_unreachable_nodes()?;
    let (code, stdout, stderr) = fleet.admin.run(&[
        "trigger",
        "--select",
        "role=web",
        "--batch",
        "1",
        "--max-failures",
        "3",
        "--timeout",
        "30s",
    ])?;
    ensure!(
        code == Some(4),
        "unreachable nodes make the trigger exit 4, got {code:?}:\n{stdout}\n{stderr}"
    );
    ensure!(stdout.contains(": done"), "{stdout}");
    ensure!(
        stdout.contains("0 changed, 0 unchanged, 0 failed, 3 unreachable, 0 not run"),
        "{stdout}"
    );
    ensure!(
        node_results(&fleet.admin, &stdout)? == ["unreachable", "unreachable", "unreachable"],
        "{stdout}"
    );
    // Each unreachable node says why: enrolled (so it called once), but
    // no daemon holds a channel.
    let why = "no agent daemon of it is connected (no watch channel open), so it was never told to converge; its last call was at ";
    ensure!(stdout.matches(why).count() == 3, "{stdout}");
    ensure!(
        stdout.contains("Check that the agent service runs there (`systemctl status cms-agent`, which runs `cms-agent run`) and reaches the server"),
        "{stdout}"
    );
    fleet.server.stop()
}

#[test]
fn a_trigger_that_selects_no_node_cannot_start_and_exits_3() -> Result<()> {
    let fleet = fleet_of_three_unreachable_nodes()?;
    let (code, stdout, stderr) =
        fleet
            .admin
            .run(&["trigger", "--select", "role=db", "--timeout", "30s"])?;
    ensure!(
        code == Some(3),
        "no node selected exits 3, got {code:?}:\n{stdout}\n{stderr}"
    );
    fleet.server.stop()
}

#[test]
fn a_rollout_stops_once_failing_nodes_exceed_max_failures_and_exits_4() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    // The role writes a file into a folder that does not exist: every run
    // fails (parents are never created implicitly).
    let missing = dir.path().join("no-such-folder");
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            (
                "roles/web.toml",
                &format!(
                    "[match]\nrole = \"web\"\n\n[[file]]\npath = \"{}/web.conf\"\ncontent = \"never\\n\"\n",
                    missing.display()
                ),
            ),
        ],
        "roles",
    )?;
    let server = TestServer::start(&dir.path().join("server"), git.path(), 0)?;
    let token = server.token(&[("role", "web")])?;
    let agent_binary = build_workspace_binary("cms-agent", "cms-agent")?;
    let mut daemons = Vec::new();
    for node in ["web-1", "web-2", "web-3"] {
        let agent = HostAgent::in_directory(&agent_binary, dir.path(), node)?;
        let enrolled = agent.enroll(&server.address, &token, node, "role=web")?;
        ensure!(
            enrolled.status.success(),
            "enroll {node}: {}",
            String::from_utf8_lossy(&enrolled.stderr)
        );
        // No run on its own during the test, and no metadata service but
        // a closed loopback port.
        agent.write_config(&format!(
            "server = \"{}\"\ninterval = \"1h\"\nsplay = \"0s\"\nmetadata_endpoint = \"127.0.0.1:1\"\n",
            server.address
        ))?;
        daemons.push(agent.start_daemon(&dir.path().join(format!("{node}.log")))?);
    }
    let admin = AdminCli::for_server(build_workspace_binary("cms-server", "cms-server")?, &server);
    // The daemons open their watch channels after their first run: until
    // a noop trigger reaches all three, they are not ready.
    wait_until_polling_every(
        Duration::from_millis(200),
        Duration::from_secs(60),
        "the three daemons to hold their watch channels",
        || {
            let (_, stdout, _) = admin.run(&[
                "trigger",
                "--select",
                "role=web",
                "--noop",
                "--timeout",
                "30s",
            ])?;
            Ok(stdout.contains(" 0 unreachable").then_some(()))
        },
    )
    .with_context(|| daemon_logs(dir.path()))?;

    let (code, stdout, stderr) = admin.run(&[
        "trigger",
        "--select",
        "role=web",
        "--batch",
        "1",
        "--max-failures",
        "1",
        "--timeout",
        "30s",
    ])?;
    ensure!(
        code == Some(4),
        "a stopped rollout exits 4, got {code:?}:\n{stdout}\n{stderr}"
    );
    for expected in [
        ": stopped",
        "2 nodes failed or were unreachable, more than --max-failures 1: rollout stopped",
        "0 changed, 0 unchanged, 2 failed, 0 unreachable, 1 not run",
    ] {
        ensure!(
            stdout.contains(expected),
            "the summary lacks {expected:?}:\n{stdout}\n{}",
            daemon_logs(dir.path())
        );
    }
    ensure!(
        node_results(&admin, &stdout)? == ["failed", "failed", "pending"],
        "the third batch never ran:\n{stdout}"
    );
    drop(daemons);
    server.stop()
}

fn daemon_logs(dir: &Path) -> String {
    ["web-1", "web-2", "web-3"]
        .iter()
        .map(|node| {
            let log = dir.join(format!("{node}.log"));
            format!(
                "{node}'s daemon:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
