//! Large contents, large catalogs and large reports, with the real agent
//! binary against an in-process server over mTLS on loopback: a 50 MB
//! `source` file converges on a fresh node (fetched by hash in chunks and
//! kept in the agent's cache); a commit whose catalog the server could not
//! send is refused at validation and the last good revision keeps being
//! served; a report too large for the server does not hold up the reports
//! queued behind it.

// The time of the 50 MB delivery is printed (not asserted) for the notes.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use cms_agent::report::{ResourceResult, RunReport, Status, Summary};
use cms_agent::state::ReportQueue;
use cms_integration::{GitRepo, HostAgent, TestServer, build_workspace_binary};
use cms_proto::v1 as pb;
use cms_roles::sha256_hex;

/// Bytes with no pattern to speak of: each 64-byte block is the sha256 (hex)
/// of its index.
fn noise(len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 64);
    let mut block = 0u64;
    while bytes.len() < len {
        bytes.extend_from_slice(sha256_hex(&block.to_le_bytes()).as_bytes());
        block += 1;
    }
    bytes.truncate(len);
    bytes
}

fn small_role(out: &Path, text: &str) -> String {
    format!(
        "[[directory]]\npath = \"{out}\"\n\n[[file]]\npath = \"{out}/small.conf\"\ncontent = \"{text}\\n\"\nrequire = [\"directory:{out}\"]\n",
        out = out.display()
    )
}

/// What three of these tests start from: a roles repository of one small
/// role writing `<dir>/out/small.conf`, an in-process server serving it,
/// and the agent binary enrolled as `app-1` with `role=app`.
struct SmallApp {
    out: PathBuf,
    agent: HostAgent,
    server: TestServer,
    git: GitRepo,
}

fn small_app(dir: &Path, text: &str) -> Result<SmallApp> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let out = dir.join("out");
    let git = GitRepo::init(&dir.join("roles"))?;
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("roles/app.toml", &small_role(&out, text)),
        ],
        text,
    )?;
    let binary = build_workspace_binary("cms-agent", "cms-agent")?;
    let server = TestServer::start(&dir.join("server"), git.path(), 0)?;
    let token = server.token(&[("role", "*")])?;
    let agent = HostAgent::in_directory(&binary, dir, "app")?;
    ensure!(
        agent
            .enroll(&server.address, &token, "app-1", "role=app")?
            .status
            .success()
    );
    Ok(SmallApp {
        out,
        agent,
        server,
        git,
    })
}

fn reports(server: &TestServer, node: &str) -> Result<Vec<pb::RunReport>> {
    server.runtime.block_on(async {
        let mut admin = server.admin().await?;
        anyhow::Ok(
            admin
                .get_reports(pb::GetReportsRequest {
                    node_id: node.into(),
                    limit: 20,
                })
                .await?
                .into_inner()
                .reports,
        )
    })
}

#[test]
fn a_50_megabyte_source_file_converges_on_a_fresh_node_and_arrives_intact() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let git = GitRepo::init(&dir.path().join("roles"))?;
    let big = noise(50 * 1000 * 1000);
    let files = git.path().join("files");
    std::fs::create_dir_all(&files)?;
    std::fs::write(files.join("big.bin"), &big)?;
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            (
                "roles/big.toml",
                &format!(
                    "{}\n[[file]]\npath = \"{out}/big.bin\"\nsource = \"big.bin\"\nrequire = [\"directory:{out}\"]\n",
                    small_role(&out, "small"),
                    out = out.display()
                ),
            ),
        ],
        "a 50 MB file",
    )?;
    let binary = build_workspace_binary("cms-agent", "cms-agent")?;
    let server = TestServer::start(&dir.path().join("server"), git.path(), 0)?;
    let token = server.token(&[("role", "*")])?;
    let agent = HostAgent::in_directory(&binary, dir.path(), "fresh")?;
    let enrolled = agent.enroll(&server.address, &token, "fresh-1", "role=big")?;
    ensure!(
        enrolled.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&enrolled.stderr)
    );

    let started = std::time::Instant::now();
    let (code, output) = agent.converge()?;
    let took = started.elapsed();
    eprintln!("measured: first converge with the 50 MB file took {took:?}");
    ensure!(
        code == 2 && !output.contains("cached catalog"),
        "a fresh node converges the 50 MB file, got {code}:\n{output}"
    );
    let written = std::fs::read(out.join("big.bin"))?;
    ensure!(
        written.len() == big.len() && sha256_hex(&written) == sha256_hex(&big),
        "the file arrived intact: {} bytes",
        written.len()
    );
    let cached = agent.state.join("contents").join(sha256_hex(&big));
    ensure!(
        std::fs::metadata(&cached)?.len() == big.len() as u64,
        "the agent keeps the content by hash in {}",
        cached.display()
    );

    // The next run finds it unchanged, from its cache, and the node's
    // revision is the one served.
    let (code, output) = agent.converge()?;
    ensure!(code == 0, "an unchanged node, got {code}:\n{output}");
    let (nodes, serving) = server.runtime.block_on(async {
        let mut admin = server.admin().await?;
        let nodes = admin
            .list_nodes(pb::ListNodesRequest { selector: None })
            .await?
            .into_inner()
            .nodes;
        anyhow::Ok((nodes, server.sync().await?.revision))
    })?;
    ensure!(
        nodes.len() == 1 && nodes[0].revision == serving && !serving.is_empty(),
        "the node shows the revision it converged: {nodes:?}, serving {serving}"
    );

    // A damaged cache file is not applied: it is fetched again.
    std::fs::write(&cached, b"damaged")?;
    std::fs::write(out.join("big.bin"), b"drifted")?;
    let (code, output) = agent.converge()?;
    ensure!(
        code == 2,
        "the file is put back from a fresh fetch, got {code}:\n{output}"
    );
    ensure!(sha256_hex(&std::fs::read(out.join("big.bin"))?) == sha256_hex(&big));
    server.stop()?;
    Ok(())
}

#[test]
fn a_commit_whose_catalog_is_too_large_is_refused_and_the_last_good_revision_is_served()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let SmallApp {
        out,
        agent,
        server,
        git,
    } = small_app(dir.path(), "good")?;
    let good = server.runtime.block_on(server.sync())?.revision;
    let (code, output) = agent.converge()?;
    ensure!(code == 2, "{output}");

    // A template that renders 100 MB.
    let megabyte = "x".repeat(1024 * 1024);
    git.commit(
        &[
            ("templates/huge.hbs", &"{{vars.m}}".repeat(100)),
            (
                "roles/app.toml",
                &format!(
                    "{}\n[[file]]\npath = \"{out}/huge\"\ntemplate = \"huge.hbs\"\nvars = {{ m = \"{megabyte}\" }}\n",
                    small_role(&out, "bad"),
                    out = out.display()
                ),
            ),
        ],
        "100 MB template",
    )?;
    let refused = server.runtime.block_on(server.sync())?;
    ensure!(
        !refused.accepted
            && refused.errors.iter().any(|e| e.file == "roles/app.toml"
                && e.message
                    .contains(&format!("file:{}/huge (role app)", out.display()))
                && e.message.contains("100.0 MiB")),
        "refused with the resource and its size named: {:?}",
        refused
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.file, e.message))
            .collect::<Vec<_>>()
    );

    // 40 inline contents of 200 KiB: a catalog of 10.7 MiB.
    let mut role = small_role(&out, "bad");
    let mut files: Vec<(String, String)> = Vec::new();
    for i in 0..40 {
        files.push((
            format!("files/part-{i}"),
            String::from_utf8(noise(200 * 1024 + i))?,
        ));
        role.push_str(&format!(
            "\n[[file]]\npath = \"{out}/part-{i}\"\nsource = \"part-{i}\"\nrequire = [\"directory:{out}\"]\n",
            out = out.display()
        ));
    }
    let mut commit: Vec<(&str, &str)> = files
        .iter()
        .map(|(path, text)| (path.as_str(), text.as_str()))
        .collect();
    commit.push(("roles/app.toml", &role));
    commit.push(("templates/huge.hbs", "small now"));
    git.commit(&commit, "a catalog of 10.7 MiB")?;
    let refused = server.runtime.block_on(server.sync())?;
    ensure!(
        !refused.accepted
            && refused.errors.iter().any(|e| e.file == "roles/app.toml"
                && e.message.contains("catalog is 10.")
                && e.message.contains("over the limit of 8.0 MiB")
                && e.message.contains("role app")),
        "refused with the role and the sizes named: {:?}",
        refused
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.file, e.message))
            .collect::<Vec<_>>()
    );

    // The agent still gets the last good revision, fresh from the server.
    std::fs::write(out.join("small.conf"), "drifted\n")?;
    let (code, output) = agent.converge()?;
    ensure!(
        code == 2 && !output.contains("cached catalog"),
        "the last good revision is served, got {code}:\n{output}"
    );
    ensure!(std::fs::read_to_string(out.join("small.conf"))? == "good\n");
    let last = reports(&server, "app-1")?;
    ensure!(
        last.first().map(|r| r.revision.as_str()) == Some(good.as_str()),
        "the report names the good revision {good}: {:?}",
        last.first().map(|r| &r.revision)
    );
    server.stop()?;
    Ok(())
}

/// A report of `resources` changed files, each with a diff of `diff_bytes`.
fn big_report(run_id: &str, started: u64, resources: usize, diff_bytes: usize) -> RunReport {
    let results: Vec<ResourceResult> = (0..resources)
        .map(|i| ResourceResult {
            reference: format!("file:/srv/big-{i}"),
            status: Status::Changed,
            changes: vec![cms_modules::Change {
                attribute: "content".into(),
                from: "absent".into(),
                to: "present".into(),
                diff: Some("+a line of a large file\n".repeat(diff_bytes / 24)),
            }],
            not_done: Vec::new(),
            refresh: None,
            error: None,
            reason: None,
            duration_ms: 1.0,
        })
        .collect();
    RunReport {
        run_id: run_id.into(),
        catalog_id: "c".into(),
        roles: vec![],
        noop: false,
        started_at_unix_ms: started,
        duration_ms: 1.0,
        summary: RunReport::summarize(&results),
        resources: results,
    }
}

#[test]
fn a_5_megabyte_report_does_not_block_the_reports_behind_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let SmallApp { agent, server, .. } = small_app(dir.path(), "one")?;

    // Queued before the next run, oldest first: a report of 5 MB of diffs,
    // then one of 100,000 failed resources that no trimming of diffs can
    // bring under the limit.
    let queue = ReportQueue::new(&agent.state);
    queue.enqueue(&big_report("big-diffs", 1, 5, 1024 * 1024))?;
    let many_failures = {
        let mut report = big_report("many-failures", 2, 100_000, 0);
        for resource in &mut report.resources {
            resource.status = Status::Failed;
            resource.changes.clear();
            resource.error = Some("failed".into());
        }
        report.summary = Summary {
            total: 100_000,
            failed: 100_000,
            ..Summary::default()
        };
        report
    };
    queue.enqueue(&many_failures)?;

    let (code, output) = agent.converge()?;
    ensure!(code == 2, "{output}");
    ensure!(
        queue.pending()?.is_empty(),
        "nothing is left in the queue:\n{output}"
    );
    let stored = reports(&server, "app-1")?;
    let big = stored
        .iter()
        .find(|r| r.run_id == "big-diffs")
        .context("the 5 MB report arrived, trimmed")?;
    ensure!(
        big.resources.len() == 5
            && big
                .resources
                .iter()
                .all(|r| r.diff.contains("[diff truncated: ")),
        "its diffs say they were cut"
    );
    ensure!(
        stored
            .iter()
            .any(|r| r.run_id != "big-diffs" && r.run_id != "many-failures"),
        "the run behind it was delivered: {:?}",
        stored.iter().map(|r| &r.run_id).collect::<Vec<_>>()
    );
    let refused: Vec<_> = std::fs::read_dir(agent.state.join("reports"))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.ends_with(".json.refused"))
        .collect();
    ensure!(
        refused.len() == 1 && refused[0].contains("many-failures"),
        "the report the server refused for good is kept aside, not dropped: {refused:?}"
    );
    ensure!(
        output.contains("refused queued report") && output.contains("over the limit"),
        "and the agent says so:\n{output}"
    );
    server.stop()?;
    Ok(())
}

#[test]
fn the_server_refuses_an_oversized_report_with_its_size_and_the_limit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let SmallApp { agent, server, .. } = small_app(dir.path(), "one")?;
    let identity = cms_agent::identity::load_identity(&agent.state)?.context("enrolled")?;
    let address = cms_agent::client::ServerAddress::parse(&server.address)?;
    let report = |run_id: &str, diff_bytes: usize| pb::RunReport {
        run_id: run_id.into(),
        resources: vec![pb::ResourceResult {
            reference: "file:/srv/big".into(),
            status: pb::ResourceStatus::Changed as i32,
            diff: "x".repeat(diff_bytes),
            ..Default::default()
        }],
        ..Default::default()
    };
    let (over_report_limit, over_request_limit) = server.runtime.block_on(async {
        // Past the agent's own limit on what it sends: the server is tested.
        let mut client = cms_agent::client::Connector::new(&address, &identity)?
            .connect()
            .await?
            .max_encoding_message_size(64 * 1024 * 1024);
        let over_report_limit = client.report(report("three-mb", 3 * 1024 * 1024)).await;
        let over_request_limit = client.report(report("five-mb", 5 * 1024 * 1024)).await;
        anyhow::Ok((over_report_limit, over_request_limit))
    })?;
    ensure!(
        matches!(&over_report_limit, Err(status)
            if status.code() == tonic::Code::InvalidArgument
                && status.message().contains("three-mb")
                && status.message().contains("over the limit of 2097152 bytes")),
        "{over_report_limit:?}"
    );
    ensure!(
        matches!(&over_request_limit, Err(status) if status.code() == tonic::Code::OutOfRange),
        "{over_request_limit:?}"
    );
    ensure!(reports(&server, "app-1")?.is_empty(), "neither was stored");
    server.stop()?;
    Ok(())
}
