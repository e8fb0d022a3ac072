//! Restart budgets over real mTLS gRPC: a server in this process with a
//! roles repository whose `cms.toml` gives role web one restart place,
//! nodes enrolled with tokens, each calling `AcquireRestart` and
//! `ReleaseRestart` with its own certificate, as an agent does before and
//! after a restart. No agent binary: the nodes' keys and CSRs are made here.

use anyhow::{Context, Result, ensure};
use cms_integration::{GitRepo, TestServer};
use cms_proto::v1 as pb;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

type AgentClient = pb::agent_client::AgentClient<Channel>;

/// A TLS channel to the server, presenting `identity` when given.
async fn channel(server: &TestServer, identity: Option<Identity>) -> Result<Channel> {
    let ca = std::fs::read_to_string(server.data.join("admin/ca.pem"))?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    Ok(
        Endpoint::from_shared(format!("https://{}", server.address))?
            .tls_config(tls)?
            .connect()
            .await?,
    )
}

/// Enrolls `node` with `tags` through the Enrollment API and returns an
/// Agent client holding the node's new certificate.
async fn enrolled_node(
    server: &TestServer,
    token: &str,
    node: &str,
    tags: &[(&str, &str)],
) -> Result<AgentClient> {
    let key = cms_agent::identity::generate_key_and_csr(node)?;
    let enrolled = pb::enrollment_client::EnrollmentClient::new(channel(server, None).await?)
        .enroll(pb::EnrollRequest {
            token: token.to_string(),
            csr_pem: key.csr_pem.clone(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node_name: node.to_string(),
            identity: None,
        })
        .await
        .with_context(|| format!("enroll {node}"))?
        .into_inner();
    let identity = Identity::from_pem(enrolled.certificate_pem, key.private_key_pem);
    Ok(pb::agent_client::AgentClient::new(
        channel(server, Some(identity)).await?,
    ))
}

async fn acquire(client: &mut AgentClient) -> Result<pb::AcquireRestartResponse> {
    Ok(client
        .acquire_restart(pb::AcquireRestartRequest {
            unit: "nginx.service".into(),
            hold_seconds: 300,
        })
        .await?
        .into_inner())
}

async fn release(client: &mut AgentClient, lease_id: &str) -> Result<()> {
    client
        .release_restart(pb::ReleaseRestartRequest {
            lease_id: lease_id.to_string(),
        })
        .await?;
    Ok(())
}

#[test]
fn a_role_budget_of_one_place_holds_the_second_node_until_the_first_releases() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir()?;
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[
            (
                "cms.toml",
                "[hierarchy]\nlayers = [\"common\"]\n\n[restarts.role.web]\nmax_restarting = 1\n",
            ),
            (
                "roles/web.toml",
                "[match]\nrole = \"web\"\n\n[[directory]]\npath = \"/tmp/never-converged\"\n",
            ),
            (
                "roles/db.toml",
                "[match]\nrole = \"db\"\n\n[[directory]]\npath = \"/tmp/never-converged\"\n",
            ),
        ],
        "roles with a restart budget for web",
    )?;
    let server = TestServer::start(&dir.path().join("server"), git.path(), 0)?;
    let web_token = server.token(&[("role", "web")])?;
    let db_token = server.token(&[("role", "db")])?;

    server.runtime.block_on(async {
        let mut web = Vec::new();
        for node in ["web-1", "web-2", "web-3"] {
            web.push(enrolled_node(&server, &web_token, node, &[("role", "web")]).await?);
        }
        let mut db = enrolled_node(&server, &db_token, "db-1", &[("role", "db")]).await?;

        // web-1 takes the one place.
        let first = acquire(&mut web[0]).await?;
        ensure!(first.granted && !first.lease_id.is_empty(), "{first:?}");
        ensure!(
            first.reason == "role web: 1 of 1 places held (max_restarting = 1 of 3 nodes)",
            "{first:?}"
        );
        ensure!(first.expires_unix_ms > 0, "{first:?}");

        // web-2 waits, told why and for how long.
        let second = acquire(&mut web[1]).await?;
        ensure!(!second.granted && second.lease_id.is_empty(), "{second:?}");
        ensure!(
            second.reason == "role web: 1 of 1 places taken (max_restarting = 1 of 3 nodes)",
            "{second:?}"
        );
        ensure!((1500..=2500).contains(&second.retry_after_ms), "{second:?}");

        // web-2 cannot free web-1's place with its lease id.
        release(&mut web[1], &first.lease_id).await?;
        ensure!(
            !acquire(&mut web[2]).await?.granted,
            "the place is still held"
        );

        // Asking again renews web-1's one place.
        let renewed = acquire(&mut web[0]).await?;
        ensure!(
            renewed.granted && renewed.lease_id == first.lease_id,
            "{renewed:?}"
        );

        // Once web-1 gives it back, web-2 gets it; a second release is OK.
        release(&mut web[0], &first.lease_id).await?;
        release(&mut web[0], &first.lease_id).await?;
        let after = acquire(&mut web[1]).await?;
        ensure!(
            after.granted && after.lease_id != first.lease_id,
            "{after:?}"
        );

        // db has no budget: granted at once, nothing to give back.
        let unbudgeted = acquire(&mut db).await?;
        ensure!(
            unbudgeted.granted && unbudgeted.lease_id.is_empty() && unbudgeted.reason.is_empty(),
            "{unbudgeted:?}"
        );

        // A client without a certificate gets nothing but a refusal.
        let mut anonymous = pb::agent_client::AgentClient::new(channel(&server, None).await?);
        let refused = anonymous
            .acquire_restart(pb::AcquireRestartRequest::default())
            .await;
        ensure!(
            matches!(&refused, Err(status) if status.code() == tonic::Code::Unauthenticated),
            "a call without a certificate is refused: {refused:?}"
        );
        // Nor does an operator's credential hold a node's place.
        let admin_dir = server.data.join("admin");
        let operator = Identity::from_pem(
            std::fs::read_to_string(admin_dir.join("admin.pem"))?,
            std::fs::read_to_string(admin_dir.join("admin.key"))?,
        );
        let mut operator =
            pb::agent_client::AgentClient::new(channel(&server, Some(operator)).await?);
        let refused = operator
            .acquire_restart(pb::AcquireRestartRequest::default())
            .await;
        ensure!(
            matches!(&refused, Err(status) if status.code() == tonic::Code::PermissionDenied),
            "an operator is not a node: {refused:?}"
        );
        anyhow::Ok(())
    })?;
    server.stop()
}
