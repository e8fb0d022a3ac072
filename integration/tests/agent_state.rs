//! The agent's own state under faults, with a real server over mTLS on
//! loopback and the real `cms-agent` binary: a damaged cached catalog is
//! set aside and replaced by a fresh pull, and a run whose `last_run.json`
//! cannot be written is still reported to the server; a daemon's periodic
//! check uses the catalog it kept in memory, and still takes a new commit.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use cms_agent::remote::RunMemory;
use cms_agent::report::RunReport;
use cms_integration::{GitRepo, HostAgent, TestServer, build_workspace_binary};

fn role(out: &Path) -> String {
    format!(
        "[match]\nrole = \"app\"\n\n[[directory]]\npath = \"{out}\"\n\n[[file]]\npath = \"{out}/app.conf\"\ncontent = \"managed\\n\"\nrequire = [\"directory:{out}\"]\n",
        out = out.display()
    )
}

/// A server with one role, and an enrolled agent that converged once.
fn enrolled_agent(dir: &Path) -> Result<(TestServer, HostAgent)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let out = dir.join("out");
    let git = GitRepo::init(&dir.join("roles"))?;
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("roles/app.toml", &role(&out)),
        ],
        "roles",
    )?;
    let binary = build_workspace_binary("cms-agent", "cms-agent")?;
    let server = TestServer::start(&dir.join("server"), git.path(), 0)?;
    let token = server.token(&[("role", "app")])?;
    let agent = HostAgent::in_directory(&binary, dir, "app-1")?;
    let enrolled = agent.enroll(&server.address, &token, "app-1", "role=app")?;
    ensure!(enrolled.status.success(), "enroll: {enrolled:?}");
    let (code, output) = agent.converge()?;
    ensure!(
        code == 2,
        "the first converge changes things, got {code}:\n{output}"
    );
    Ok((server, agent))
}

#[test]
fn a_corrupt_cached_catalog_is_set_aside_and_the_next_converge_pulls_a_fresh_one() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, agent) = enrolled_agent(dir.path())?;
    let cached = agent.state.join("catalog.json");
    let bytes = std::fs::read(&cached)?;
    // Half the file, as a torn write or a bad disk leaves it.
    std::fs::write(&cached, &bytes[..bytes.len() / 2])?;

    let (code, output) = agent.converge()?;

    ensure!(
        code == 0,
        "the run pulls a fresh catalog and finds nothing to change, got {code}:\n{output}"
    );
    ensure!(output.contains("catalog.json.corrupt"), "{output}");
    ensure!(std::fs::read(agent.state.join("catalog.json.corrupt"))? == bytes[..bytes.len() / 2]);
    ensure!(
        std::fs::read(&cached)? == bytes,
        "the fresh catalog is cached again"
    );
    let report = cms_integration::node_reports(&server, "app-1", 1)?
        .into_iter()
        .next()
        .context("no report")?;
    ensure!(
        report.note.contains("catalog.json.corrupt") && !report.revision.is_empty(),
        "the report came from a fresh catalog and says what happened: {report:?}"
    );
    server.stop()
}

#[test]
fn a_run_whose_last_run_file_cannot_be_written_is_still_reported() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, agent) = enrolled_agent(dir.path())?;
    let before = cms_integration::node_reports(&server, "app-1", 10)?.len();
    let last_run = agent.state.join("last_run.json");
    std::fs::remove_file(&last_run)?;
    // A directory in the way: the rename over it fails.
    std::fs::create_dir_all(last_run.join("in-the-way"))?;

    let (code, output) = agent.converge()?;

    ensure!(code == 0, "nothing to change, got {code}:\n{output}");
    ensure!(output.contains("last_run.json"), "the run warns: {output}");
    let after = cms_integration::node_reports(&server, "app-1", 10)?.len();
    ensure!(
        after == before + 1,
        "the run's report reached the server ({before} reports before, {after} after)"
    );
    server.stop()
}

/// One periodic run of a daemon (`cms-agent run`): in this process, with the
/// run memory the daemon keeps between its runs.
fn daemon_run(agent: &HostAgent, server: &TestServer, memory: &RunMemory) -> Result<RunReport> {
    let settings = cms_agent::settings::RunSettings {
        // Off a booted instance: no `systemctl start` of the target.
        converged_target: None,
        ..Default::default()
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(cms_agent::remote::converge_for_trigger(
            &agent.state,
            &server.address,
            false,
            &settings,
            "",
            memory,
        ))
}

#[test]
fn a_daemon_checks_against_the_catalog_it_kept_and_still_takes_a_new_commit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (server, agent) = enrolled_agent(dir.path())?;
    let memory = RunMemory::default();
    let first = daemon_run(&agent, &server, &memory)?;
    ensure!(first.exit_code() == 0, "nothing to change: {first:?}");
    ensure!(
        memory.keeps_a_catalog(),
        "the run kept its verified catalog"
    );
    // The cache on disk damaged after the daemon read it: its next periodic
    // check neither reads nor verifies it again.
    let cached = agent.state.join("catalog.json");
    let bytes = std::fs::read(&cached)?;
    std::fs::write(&cached, &bytes[..bytes.len() / 2])?;

    let second = daemon_run(&agent, &server, &memory)?;

    ensure!(second.exit_code() == 0, "nothing to change: {second:?}");
    ensure!(
        !agent.state.join("catalog.json.corrupt").exists(),
        "the kept catalog served the run; the cache on disk was not read"
    );
    // A new commit: the server is asked by the kept catalog's id, which is
    // no longer current, and the new catalog is pulled, converged, cached
    // and kept.
    let git = GitRepo::open(&dir.path().join("roles"));
    let out = dir.path().join("out");
    git.commit(
        &[(
            "roles/app.toml",
            &role(&out).replace("content = \"managed\\n\"", "content = \"managed, v2\\n\""),
        )],
        "v2",
    )?;
    server.runtime.block_on(server.sync())?;

    let third = daemon_run(&agent, &server, &memory)?;

    ensure!(
        third.exit_code() == 2,
        "the new commit changes the file: {third:?}"
    );
    ensure!(std::fs::read_to_string(out.join("app.conf"))? == "managed, v2\n");
    ensure!(
        std::fs::read(&cached)? != bytes[..bytes.len() / 2],
        "the new catalog is cached on disk"
    );
    // A new daemon (a restart) has no memory: it reads the cache on disk.
    std::fs::write(&cached, b"{")?;
    let after_restart = daemon_run(&agent, &server, &RunMemory::default())?;
    ensure!(after_restart.exit_code() == 0, "{after_restart:?}");
    ensure!(
        agent.state.join("catalog.json.corrupt").exists(),
        "a new daemon reads the cache on disk (and sets a damaged one aside)"
    );
    server.stop()
}
