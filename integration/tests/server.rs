//! The server and the agent together, over real mTLS on loopback: a roles
//! repository in git, `cms-server`'s `run` in this process, and the real
//! `cms-agent` binary enrolling and converging files under a temporary
//! folder. Enrollment scope, catalogs by bound tags, not-modified answers,
//! refused commits, revocation, reports that survive the server being
//! away, the last good revision served after a restart, and more distinct
//! catalogs asked at once than the server compiles at once.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use cms_integration::{GitRepo, HostAgent, TestServer, build_workspace_binary};
use cms_proto::v1 as pb;

fn role(out: &Path, text: &str) -> String {
    format!(
        "[match]\nrole = \"app\"\n\n[[directory]]\npath = \"{out}\"\n\n[[file]]\npath = \"{out}/app.conf\"\ncontent = \"{text}\\n\"\nrequire = [\"directory:{out}\"]\n",
        out = out.display()
    )
}

#[test]
fn agents_enroll_converge_by_bound_tags_and_their_reports_survive_the_server_being_away()
-> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("roles/app.toml", &role(&out, "version one")),
        ],
        "first",
    )?;
    let binary = build_workspace_binary("cms-agent", "cms-agent")?;
    let agent = |name: &str| HostAgent::in_directory(&binary, dir.path(), name);
    let server = TestServer::start(&dir.path().join("server"), git.path(), 0)?;
    let token = server.token(&[("role", "app")])?;

    // A token for role=app cannot enroll a db node.
    let intruder = agent("intruder")?;
    let refused = intruder.enroll(&server.address, &token, "db-1", "role=db")?;
    ensure!(
        refused.status.code() == Some(1),
        "enrollment outside the scope must fail"
    );
    ensure!(
        String::from_utf8_lossy(&refused.stderr).contains("role"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let first = agent("one")?;
    let enrolled = first.enroll(&server.address, &token, "app-1", "role=app")?;
    ensure!(
        enrolled.status.success(),
        "enroll: {}",
        String::from_utf8_lossy(&enrolled.stderr)
    );
    let (code, output) = first.converge()?;
    ensure!(
        code == 2,
        "first converge should change things, got {code}:\n{output}"
    );
    ensure!(std::fs::read_to_string(out.join("app.conf"))? == "version one\n");
    let (code, output) = first.converge()?;
    ensure!(
        code == 0,
        "an unchanged catalog changes nothing, got {code}:\n{output}"
    );

    // A client without a certificate gets nothing but a refusal.
    let anonymous = server.runtime.block_on(async {
        let ca = std::fs::read_to_string(server.data.join("admin/ca.pem"))?;
        let channel =
            tonic::transport::Endpoint::from_shared(format!("https://{}", server.address))?
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                        .domain_name("localhost"),
                )?
                .connect()
                .await?;
        let mut client = pb::agent_client::AgentClient::new(channel);
        anyhow::Ok(client.get_catalog(pb::CatalogRequest::default()).await)
    })?;
    ensure!(
        matches!(&anonymous, Err(status) if status.code() == tonic::Code::Unauthenticated),
        "a call without a certificate is refused: {anonymous:?}"
    );

    // A role change is synced and converged.
    git.commit(&[("roles/app.toml", &role(&out, "version two"))], "second")?;
    ensure!(
        server.runtime.block_on(server.sync())?.accepted,
        "a valid commit is accepted"
    );
    let (code, output) = first.converge()?;
    ensure!(code == 2, "{output}");
    ensure!(std::fs::read_to_string(out.join("app.conf"))? == "version two\n");

    // A broken commit is refused; the node keeps the last good state.
    git.commit(
        &[(
            "roles/app.toml",
            &format!("{}\nmdoe = \"0644\"\n", role(&out, "broken")),
        )],
        "broken",
    )?;
    let refused = server.runtime.block_on(server.sync())?;
    ensure!(
        !refused.accepted
            && refused
                .errors
                .iter()
                .any(|e| e.file == "roles/app.toml" && e.message.contains("mdoe")),
        "{refused:?}"
    );
    let (code, output) = first.converge()?;
    ensure!(
        code == 0,
        "the last good revision is still served, got {code}:\n{output}"
    );
    ensure!(std::fs::read_to_string(out.join("app.conf"))? == "version two\n");

    // The server knows the node and its runs.
    let (nodes, reports) = server.runtime.block_on(async {
        let mut admin = server.admin().await?;
        let nodes = admin
            .list_nodes(pb::ListNodesRequest { selector: None })
            .await?
            .into_inner()
            .nodes;
        let reports = admin
            .get_reports(pb::GetReportsRequest {
                node_id: "app-1".into(),
                limit: 10,
            })
            .await?
            .into_inner()
            .reports;
        anyhow::Ok((nodes, reports))
    })?;
    ensure!(
        nodes.len() == 1
            && nodes[0].node_id == "app-1"
            && nodes[0].tags.get("role").map(String::as_str) == Some("app"),
        "{nodes:?}"
    );
    ensure!(
        reports.len() == 4,
        "four runs reported, got {}",
        reports.len()
    );

    // The server away: the agent converges from its cache and queues its
    // report, which arrives once the server is back.
    let address = server.address.clone();
    let port: u16 = address.rsplit_once(':').context("port")?.1.parse()?;
    let data = server.data.clone();
    server.stop()?;
    std::fs::write(out.join("app.conf"), "drifted\n")?;
    let (code, output) = first.converge()?;
    ensure!(
        code == 2 && output.contains("server unreachable"),
        "from the cache, got {code}:\n{output}"
    );
    ensure!(std::fs::read_to_string(out.join("app.conf"))? == "version two\n");
    let server = TestServer::start(&data, git.path(), port)?;
    let (code, output) = first.converge()?;
    ensure!(code == 0, "{output}");
    let reports = server.runtime.block_on(async {
        let mut admin = server.admin().await?;
        anyhow::Ok(
            admin
                .get_reports(pb::GetReportsRequest {
                    node_id: "app-1".into(),
                    limit: 10,
                })
                .await?
                .into_inner()
                .reports,
        )
    })?;
    ensure!(
        reports.len() == 6,
        "the queued report arrived after the restart: {} reports",
        reports.len()
    );
    ensure!(
        reports
            .iter()
            .any(|r| r.note.contains("server unreachable")),
        "the report says it ran from the cache"
    );

    // Another node gets the catalog of its own bound tags, never app-1's:
    // there is no way to ask for another node's catalog.
    let other = agent("other")?;
    let wide = server.token(&[("role", "*")])?;
    ensure!(
        other
            .enroll(&server.address, &wide, "web-9", "role=web")?
            .status
            .success()
    );
    std::fs::write(out.join("app.conf"), "left alone\n")?;
    let (code, output) = other.converge()?;
    ensure!(
        code == 0 && output.contains("0 resources"),
        "web-9 has no role here, got {code}:\n{output}"
    );
    ensure!(std::fs::read_to_string(out.join("app.conf"))? == "left alone\n");
    std::fs::write(out.join("app.conf"), "version two\n")?;

    // A revoked node is refused at once.
    server.runtime.block_on(async {
        let mut admin = server.admin().await?;
        admin
            .revoke_node(pb::RevokeNodeRequest {
                node_id: "app-1".into(),
            })
            .await?;
        anyhow::Ok(())
    })?;
    let (code, output) = first.converge()?;
    ensure!(
        code == 1 && output.contains("revoked"),
        "a revoked node is refused, got {code}:\n{output}"
    );
    server.stop()?;
    Ok(())
}

#[test]
fn an_instance_boots_enrolls_with_its_token_converges_its_role_and_reports() -> Result<()> {
    use cms_integration::{Image, ImageRecipe, InstanceConfig, Testbed, begin_end_to_end_test};

    let (_alone, settings) = begin_end_to_end_test()?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("templates/motd.hbs", "{{node.id}} is a {{tag.role}} instance\n"),
            (
                "roles/web.toml",
                "[match]\nrole = \"web\"\n\n[[file]]\npath = \"/etc/motd\"\ntemplate = \"motd.hbs\"\n\n[[exec]]\nname = \"converged-marker\"\ncommand = \"date > /var/tmp/converged\"\ncreates = \"/var/tmp/converged\"\n",
            ),
        ],
        "roles",
    )?;
    let testbed = Testbed::start(&settings)?;
    // The server listens on the bridge, where instances reach the host.
    let server = TestServer::start_on(
        &dir.path().join("server"),
        git.path(),
        std::net::SocketAddr::from((testbed.host_address(), 0)),
    )?;
    let token = server.token(&[("role", "web"), ("env", "*")])?;

    let image = Image::build_or_reuse(&ImageRecipe::debian_bookworm(), &settings)?;
    let baked = cms_integration::bake_agent_for_server(&image, &server.address, &token)?;
    let instance = testbed.boot(
        &baked,
        InstanceConfig::new("web-7")
            .with_tag("role", "web")
            .with_tag("env", "test"),
    )?;

    // Boot to converged: the agent enrolls and converges at once.
    let first_report = cms_integration::wait_for_first_report(&server, &instance)?;
    let motd = instance.run_successfully(&["cat", "/etc/motd"])?.stdout;
    ensure!(motd.ends_with("is a web instance\n"), "motd {motd:?}");
    ensure!(
        instance
            .run(&["test", "-f", "/var/tmp/converged"])?
            .succeeded(),
        "the exec ran"
    );
    ensure!(
        first_report
            .resources
            .iter()
            .all(|r| r.status != pb::ResourceStatus::Failed as i32),
        "{first_report:?}"
    );

    // `cms-agent converge` on the instance: nothing left to do.
    let again = instance.run(&["cms-agent", "converge"])?;
    ensure!(
        again.exit_code == Some(0),
        "{}{}",
        again.stdout,
        again.stderr
    );

    instance.shutdown()?;
    server.stop()?;
    testbed.shutdown()?;
    Ok(())
}

#[test]
fn the_example_web_role_is_served_and_converged_at_boot_and_a_second_run_changes_nothing()
-> Result<()> {
    let (_alone, settings) = cms_integration::begin_end_to_end_test()?;
    let run = cms_integration::converge_example_web_role(&settings, |_| {})?;
    let failed: Vec<&pb::ResourceResult> = run
        .first_report
        .resources
        .iter()
        .filter(|r| r.status == pb::ResourceStatus::Failed as i32)
        .collect();
    ensure!(
        failed.is_empty(),
        "failures at boot: {failed:?}\njournal:\n{}",
        run.boot_journal
    );
    ensure!(
        run.first_report
            .resources
            .iter()
            .any(|r| r.reference == "service:nginx"
                && r.status == pb::ResourceStatus::Changed as i32),
        "nginx configured and restarted at boot: {:?}",
        run.first_report
    );
    ensure!(
        run.second_converge.exit_code == Some(0),
        "second run:\n{}{}",
        run.second_converge.stdout,
        run.second_converge.stderr
    );
    ensure!(
        run.nodes.len() == 1 && run.nodes[0].node_id == "web-1",
        "{:?}",
        run.nodes
    );
    // nginx runs with the role's upstream, whose application is absent.
    ensure!(
        run.http_answer == "HTTP 502",
        "nginx answered {:?}",
        run.http_answer
    );
    ensure!(
        run.motd.starts_with("web-1 (web, prod)"),
        "motd {:?}",
        run.motd
    );
    let leftovers = cms_integration::find_leftovers(&settings)?;
    ensure!(leftovers.is_empty(), "after teardown, {leftovers}");
    Ok(())
}

#[test]
fn the_last_good_revision_is_still_served_after_a_server_restart() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out");
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("roles/app.toml", &role(&out, "version one")),
        ],
        "good",
    )?;
    let good = git.head()?;
    let binary = build_workspace_binary("cms-agent", "cms-agent")?;
    let server = TestServer::start(&dir.path().join("server"), git.path(), 0)?;
    let token = server.token(&[("role", "app")])?;
    let agent = HostAgent::in_directory(&binary, dir.path(), "app-1")?;
    ensure!(
        agent
            .enroll(&server.address, &token, "app-1", "role=app")?
            .status
            .success()
    );
    let (code, output) = agent.converge()?;
    ensure!(
        code == 2,
        "the first converge changes things, got {code}:\n{output}"
    );

    // A broken commit is refused, and then the server restarts: its sync at
    // start refuses the branch's commit again.
    git.commit(
        &[(
            "roles/app.toml",
            &format!("{}\nmdoe = \"0644\"\n", role(&out, "broken")),
        )],
        "broken",
    )?;
    ensure!(!server.runtime.block_on(server.sync())?.accepted);
    let port: u16 = server.address.rsplit_once(':').context("port")?.1.parse()?;
    let data = server.data.clone();
    server.stop()?;
    let server = TestServer::start(&data, git.path(), port)?;
    let refused = server.runtime.block_on(server.sync())?;
    ensure!(
        !refused.accepted && refused.revision != good,
        "after the restart the branch still points at the refused commit: {refused:?}"
    );

    // The node is served the last good revision: a fresh answer from the
    // server (no note about a cached catalog), for the good commit.
    let (code, output) = agent.converge()?;
    ensure!(
        code == 0,
        "the last good revision is still served, got {code}:\n{output}"
    );
    ensure!(std::fs::read_to_string(out.join("app.conf"))? == "version one\n");
    let report = cms_integration::node_reports(&server, "app-1", 1)?
        .into_iter()
        .next()
        .context("no report after the restart")?;
    ensure!(
        report.revision == good,
        "the report names revision {:?}, not the last good {good}",
        report.revision
    );
    ensure!(
        report.note.is_empty(),
        "the catalog came from the server, not the agent's cache: note {:?}",
        report.note
    );
    server.stop()
}

#[test]
fn more_distinct_catalogs_than_compile_permits_asked_at_once_are_all_answered() -> Result<()> {
    use cms_agent::client::{Connector, ServerAddress, enroll};
    use cms_agent::identity::{Identity, generate_key_and_csr};
    use sha2::Digest as _;

    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("templates/shard.hbs", "shard {{default tag.shard \"none\"}}\n"),
            (
                "roles/app.toml",
                "[match]\nrole = \"app\"\n\n[[file]]\npath = \"/tmp/shard\"\ntemplate = \"shard.hbs\"\n",
            ),
        ],
        "roles",
    )?;
    let server = TestServer::start(&dir.path().join("server"), git.path(), 0)?;
    let synced = server.runtime.block_on(server.sync())?;
    ensure!(synced.accepted, "the roles validate: {synced:?}");
    let token = server.token(&[("role", "app"), ("shard", "*")])?;
    // The server lets as many compiles run at once as this machine has
    // cores (cms-server/src/catalogs.rs); four times that, and one more,
    // each with its own tags and so its own catalog, must queue, not fail.
    let permits = std::thread::available_parallelism().map_or(2, |n| n.get());
    let nodes = permits * 4 + 1;
    let answers = server.runtime.block_on(async {
        let address = ServerAddress::parse(&server.address)?;
        let ca_pem = std::fs::read_to_string(server.data.join("admin/ca.pem"))?;
        let mut identities = Vec::new();
        for shard in 0..nodes {
            let name = format!("app-{shard}");
            let key = generate_key_and_csr(&name)?;
            let response = enroll(
                &address,
                &ca_pem,
                cms_proto::v1::EnrollRequest {
                    token: token.clone(),
                    csr_pem: key.csr_pem,
                    tags: [
                        ("role".to_string(), "app".to_string()),
                        ("shard".to_string(), shard.to_string()),
                    ]
                    .into(),
                    node_name: name,
                    identity: None,
                },
            )
            .await?;
            identities.push(Identity {
                private_key_pem: key.private_key_pem,
                certificate_pem: response.certificate_pem,
                ca_certificate_pem: response.ca_certificate_pem,
            });
        }
        let mut calls = tokio::task::JoinSet::new();
        for (shard, identity) in identities.into_iter().enumerate() {
            let address = address.clone();
            calls.spawn(async move {
                let mut client = Connector::new(&address, &identity)?.connect().await?;
                let answer = client
                    .get_catalog(pb::CatalogRequest::default())
                    .await?
                    .into_inner();
                anyhow::Ok((shard, answer))
            });
        }
        let mut answers = Vec::new();
        while let Some(joined) = calls.join_next().await {
            answers.push(joined??);
        }
        anyhow::Ok(answers)
    })?;
    ensure!(
        answers.len() == nodes,
        "{} answers for {nodes} nodes",
        answers.len()
    );
    for (shard, answer) in answers {
        match answer.result {
            Some(pb::catalog_response::Result::Catalog(catalog)) => {
                // The catalog names its file's content by sha256.
                let text = String::from_utf8_lossy(&catalog.canonical_json);
                let content_sha256: String =
                    sha2::Sha256::digest(format!("shard {shard}\n").as_bytes())
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                ensure!(
                    text.contains(&format!("\"content_sha256\":\"{content_sha256}\"")),
                    "app-{shard} got another node's catalog: {text}"
                );
            }
            other => anyhow::bail!("app-{shard} got no catalog: {other:?}"),
        }
    }
    server.stop()
}

/// The sha256 of `text`, as a catalog names a file's content.
fn content_sha256(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_node_reporting_another_nodes_instance_id_is_not_served_that_nodes_data() -> Result<()> {
    use cms_agent::client::{Connector, ServerAddress, enroll};
    use cms_agent::identity::{Identity, generate_key_and_csr};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let git = GitRepo::init(&dir.path().join("roles"))?;
    let role = "[match]\nrole = \"app\"\n\n[[file]]\npath = \"/tmp/db-password\"\ntemplate = \"db-password.hbs\"\n";
    // The hierarchy as the documentation had it: data chosen by the
    // instance id the node reports.
    git.commit(
        &[
            (
                "cms.toml",
                "[hierarchy]\nlayers = [\"node/{{fact.instance_id}}\", \"common\"]\n",
            ),
            ("data/common.toml", "db_password = \"none\"\n"),
            (
                "data/node/app-prod.toml",
                "db_password = \"production-secret\"\n",
            ),
            ("templates/db-password.hbs", "{{data.db_password}}\n"),
            ("roles/app.toml", role),
        ],
        "data by reported instance id",
    )?;
    let server = TestServer::start(&dir.path().join("server"), git.path(), 0)?;
    let by_fact = server.runtime.block_on(server.sync())?;
    let token = server.token(&[("role", "app"), ("env", "*")])?;
    let address = ServerAddress::parse(&server.address)?;
    let ca_pem = std::fs::read_to_string(server.data.join("admin/ca.pem"))?;
    let enrolled = |name: &'static str, env: &'static str| {
        let (address, ca_pem, token) = (address.clone(), ca_pem.clone(), token.clone());
        async move {
            let key = generate_key_and_csr(name)?;
            let response = enroll(
                &address,
                &ca_pem,
                pb::EnrollRequest {
                    token,
                    csr_pem: key.csr_pem,
                    tags: [
                        ("role".to_string(), "app".to_string()),
                        ("env".to_string(), env.to_string()),
                    ]
                    .into(),
                    node_name: name.to_string(),
                    identity: None,
                },
            )
            .await?;
            anyhow::Ok(Identity {
                private_key_pem: key.private_key_pem,
                certificate_pem: response.certificate_pem,
                ca_certificate_pem: response.ca_certificate_pem,
            })
        }
    };
    let (prod, staging) = server.runtime.block_on(async {
        anyhow::Ok((
            enrolled("app-prod", "prod").await?,
            enrolled("app-staging", "staging").await?,
        ))
    })?;
    // The catalog a node is served when it reports `facts`, as canonical
    // JSON, or the refusal.
    let served = |identity: &Identity, facts: &str| {
        let (address, facts) = (address.clone(), facts.to_string());
        server.runtime.block_on(async move {
            let mut client = Connector::new(&address, identity)?.connect().await?;
            let answer = client
                .get_catalog(pb::CatalogRequest {
                    facts_json: facts,
                    ..Default::default()
                })
                .await;
            anyhow::Ok(match answer.map(|a| a.into_inner().result) {
                Ok(Some(pb::catalog_response::Result::Catalog(catalog))) => {
                    Ok(String::from_utf8_lossy(&catalog.canonical_json).into_owned())
                }
                other => Err(format!("{other:?}")),
            })
        })
    };
    let secret = content_sha256("production-secret\n");
    let none = content_sha256("none\n");
    // The staging node says it is app-prod.
    let forged = r#"{"instance_id": "app-prod", "hostname": "app-prod"}"#;
    if let Ok(catalog) = served(&staging, forged)? {
        ensure!(
            !catalog.contains(&secret),
            "the staging node was served app-prod's data: {catalog}"
        );
    }
    ensure!(
        !by_fact.accepted
            && by_fact.errors.iter().any(|e| e.file == "cms.toml"
                && e.message.contains("node/{{trusted.instance_id}}")),
        "a layer naming a fact is refused, saying what to write: {by_fact:?}"
    );

    // Data named by the node id the server bound at enrollment.
    git.commit(
        &[(
            "cms.toml",
            "[hierarchy]\nlayers = [\"node/{{trusted.id}}\", \"common\"]\n",
        )],
        "data by trusted node id",
    )?;
    let by_id = server.runtime.block_on(server.sync())?;
    ensure!(by_id.accepted, "{by_id:?}");
    let catalog = served(&staging, forged)?.map_err(anyhow::Error::msg)?;
    ensure!(
        catalog.contains(&none) && !catalog.contains(&secret),
        "the staging node gets its own data whatever it reports: {catalog}"
    );
    let catalog = served(&prod, "{}")?.map_err(anyhow::Error::msg)?;
    ensure!(
        catalog.contains(&secret),
        "app-prod gets its data: {catalog}"
    );
    server.stop()
}
