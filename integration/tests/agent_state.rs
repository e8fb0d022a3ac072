//! The agent's own state under faults, with a real server over mTLS on
//! loopback and the real `cms-agent` binary: a damaged cached catalog is
//! set aside and replaced by a fresh pull, and a run whose `last_run.json`
//! cannot be written is still reported to the server.

use std::path::Path;

use anyhow::{Context, Result, ensure};
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
