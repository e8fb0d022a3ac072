//! Clocks that disagree: the real `cms-agent` binary run under `faketime`
//! (its clock moved, the server's not) against an in-process server on
//! loopback. No instance is needed; each agent converges files under the
//! test's temporary folder.
//!
//! - An agent 30 minutes behind the server converges, also after the
//!   server restarts (each start issues the server a new certificate).
//! - An agent two days ahead converges with the identity it has.
//! - An agent so far behind that the server's certificate is not valid yet
//!   by its clock fails with an error that says to check the clock, with
//!   both times.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use cms_integration::{GitRepo, HostAgent, TestServer, build_workspace_binary};

/// A roles repository whose one role converges a file under `out`.
fn roles_repository(root: &Path, out: &Path) -> Result<PathBuf> {
    let repo = GitRepo::init(&root.join("roles"))?;
    let app = format!(
        "[match]\nrole = \"app\"\n\n[[file]]\npath = \"{out}/app.conf\"\ncontent = \"served\\n\"\n",
        out = out.display()
    );
    repo.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("roles/app.toml", &app),
        ],
        "roles",
    )?;
    std::fs::create_dir_all(out)?;
    Ok(repo.path().to_path_buf())
}

/// A script that runs the agent with its clock moved by `offset` (a
/// faketime offset such as `-30m` or `+2d`); monotonic time is left alone.
/// `None` when faketime is not installed (`scripts/test` installs it).
fn agent_with_clock(dir: &Path, binary: &Path, offset: &str) -> Result<Option<PathBuf>> {
    if std::process::Command::new("faketime")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: faketime is not installed (apt-get install faketime)");
        return Ok(None);
    }
    let name = format!("cms-agent{offset}");
    let script = dir.join(name);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nDONT_FAKE_MONOTONIC=1 exec faketime -f '{offset}' '{}' \"$@\"\n",
            binary.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(Some(script))
}

struct Setup {
    _dir: tempfile::TempDir,
    server: TestServer,
    repo: PathBuf,
    data: PathBuf,
    agent: HostAgent,
}

/// A server, and an agent enrolled with the right time whose later runs
/// use a clock moved by `offset`.
fn setup(offset: &str) -> Result<Option<Setup>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let repo = roles_repository(dir.path(), &dir.path().join("out"))?;
    let data = dir.path().join("server");
    let server = TestServer::start(&data, &repo, 0)?;
    let binary = build_workspace_binary("cms-agent", "cms-agent")?;
    let Some(skewed) = agent_with_clock(dir.path(), &binary, offset)? else {
        return Ok(None);
    };
    let enroller = HostAgent::in_directory(&binary, dir.path(), "app")?;
    let token = server.token(&[("role", "*")])?;
    let output = enroller.enroll(&server.address, &token, "app-1", "role=app")?;
    ensure!(
        output.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let agent = HostAgent {
        binary: skewed,
        ..enroller
    };
    Ok(Some(Setup {
        _dir: dir,
        server,
        repo,
        data,
        agent,
    }))
}

/// A run that reached the server: exit 0 (nothing changed) or 2 (changed),
/// and no fallback to a cached catalog.
fn converged(agent: &HostAgent) -> Result<()> {
    let (code, output) = agent.converge()?;
    ensure!(
        (code == 0 || code == 2) && !output.contains("unreachable"),
        "exit {code}: {output}"
    );
    Ok(())
}

#[test]
fn an_agent_30_minutes_behind_the_server_converges_also_after_a_server_restart() -> Result<()> {
    let Some(setup) = setup("-30m")? else {
        return Ok(());
    };
    converged(&setup.agent).context("before the restart")?;
    let address: std::net::SocketAddr = setup.server.address.parse()?;
    setup.server.stop()?;
    // The restarted server issues itself a new certificate.
    let _server = TestServer::start_on(&setup.data, &setup.repo, address)?;
    converged(&setup.agent).context("after the restart")?;
    Ok(())
}

#[test]
fn an_agent_two_days_ahead_of_the_server_converges_with_its_identity() -> Result<()> {
    let Some(setup) = setup("+2d")? else {
        return Ok(());
    };
    converged(&setup.agent)?;
    converged(&setup.agent)?;
    ensure!(setup.agent.state.join("cert.pem").exists());
    ensure!(!setup.agent.state.join("cert.pem.expired").exists());
    Ok(())
}

#[test]
fn an_agent_whose_clock_is_before_the_servers_certificate_is_told_to_check_the_clock() -> Result<()>
{
    let Some(setup) = setup("-3d")? else {
        return Ok(());
    };
    let (code, output) = setup.agent.converge()?;
    ensure!(code != 0 && code != 2, "exit {code}: {output}");
    ensure!(
        output.contains("check the clock") && output.contains("the agent's clock reads"),
        "exit {code}: {output}"
    );
    Ok(())
}
