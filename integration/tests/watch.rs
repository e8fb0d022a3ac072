//! The watch channel between the real server and the agent's own client,
//! on loopback (no testbed instance needed): heartbeats, a trigger's
//! converge-now, a refused certificate and the retired `Watch` call.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use cms_agent::client::{Connector, ServerAddress, WatchChannel, enroll};
use cms_agent::identity::{Identity, generate_key_and_csr};
use cms_integration::{GitRepo, TestServer};
use cms_proto::v1 as pb;
use pb::watch_event::Event;

const ROLE: &str = "[match]\nrole = \"web\"\n\n[[directory]]\npath = \"/srv/watch-test\"\n";

async fn next(channel: &mut WatchChannel) -> Result<Event> {
    tokio::time::timeout(Duration::from_secs(10), channel.next_event())
        .await
        .context("no watch event within 10 s")??
        .event
        .context("an empty watch event")
}

async fn enrolled(server: &TestServer, token: &str, name: &str) -> Result<Identity> {
    let address = ServerAddress::parse(&server.address)?;
    let ca_pem = std::fs::read_to_string(server.data.join("admin/ca.pem"))?;
    let key = generate_key_and_csr(name)?;
    let response = enroll(
        &address,
        &ca_pem,
        pb::EnrollRequest {
            token: token.to_string(),
            csr_pem: key.csr_pem,
            tags: [("role".to_string(), "web".to_string())].into(),
            node_name: name.to_string(),
            identity: None,
        },
    )
    .await?;
    Ok(Identity {
        private_key_pem: key.private_key_pem,
        certificate_pem: response.certificate_pem,
        ca_certificate_pem: response.ca_certificate_pem,
    })
}

#[test]
fn a_watch_channel_hears_heartbeats_and_converge_now_resumes_its_session_and_a_revoked_node_hears_why()
-> Result<()> {
    let dir = tempfile::tempdir()?;
    let git = GitRepo::init(&dir.path().join("roles"))?;
    git.commit(
        &[
            ("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n"),
            ("roles/web.toml", ROLE),
        ],
        "web",
    )?;
    let server = TestServer::start_with(
        &dir.path().join("server"),
        git.path(),
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        |config| config.watch_heartbeat = Duration::from_secs(1),
    )?;
    ensure!(server.runtime.block_on(server.sync())?.accepted);
    let token = server.token(&[("role", "web")])?;
    server.runtime.block_on(async {
        let address = ServerAddress::parse(&server.address)?;
        let identity = enrolled(&server, &token, "web-1").await?;
        // One connector for the node, as the daemon has: its connections
        // share one store of TLS sessions.
        let connector = Connector::new(&address, &identity)?;
        let mut channel = connector.open_watch().await?;
        assert!(
            !channel.resumed(),
            "the first connection has no session to resume"
        );
        // A heartbeat at once, announcing the interval, then one per
        // interval.
        assert_eq!(
            next(&mut channel).await?,
            Event::Heartbeat(pb::Heartbeat {
                interval_seconds: 1
            })
        );
        assert!(matches!(next(&mut channel).await?, Event::Heartbeat(_)));

        // A trigger selecting the node reaches it over the channel.
        let mut admin = server.admin().await?;
        let mut progress = admin
            .trigger(pb::TriggerRequest {
                selector: Some(pb::Selector {
                    tags: [("role".to_string(), "web".to_string())].into(),
                }),
                timeout_seconds: 5,
                noop: true,
                ..Default::default()
            })
            .await?
            .into_inner();
        let first = progress.message().await?.context("no trigger progress")?;
        let command = loop {
            match next(&mut channel).await? {
                Event::ConvergeNow(command) => break command,
                Event::Heartbeat(_) => continue,
                other => anyhow::bail!("expected converge-now, got {other:?}"),
            }
        };
        assert_eq!(command.trigger_id, first.trigger_id);
        assert!(command.noop);

        // The retired gRPC call tells an old agent what to do.
        #[allow(deprecated)]
        let status = connector
            .connect()
            .await?
            .watch(pb::WatchRequest {})
            .await
            .expect_err("the Watch call is retired");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("upgrade cms-agent"), "{status:?}");

        // A later connection of the same node resumes its TLS session and
        // is still checked and served as that node.
        let mut again = connector.open_watch().await?;
        assert!(again.resumed(), "the second connection resumed its session");
        assert!(matches!(next(&mut again).await?, Event::Heartbeat(_)));
        drop(again);

        // A revoked node's next channel is refused, with the reason, also
        // when its session resumes.
        admin
            .revoke_node(pb::RevokeNodeRequest {
                node_id: "web-1".into(),
            })
            .await?;
        let mut refused = connector.open_watch().await?;
        assert!(refused.resumed());
        match next(&mut refused).await? {
            Event::Refused(refused) => {
                assert!(refused.message.contains("revoked"), "{refused:?}")
            }
            other => anyhow::bail!("expected a refusal, got {other:?}"),
        }
        let end = tokio::time::timeout(Duration::from_secs(10), refused.next_event()).await?;
        assert!(end.is_err(), "the server closes a refused channel");
        Ok::<_, anyhow::Error>(())
    })?;
    server.stop()
}
