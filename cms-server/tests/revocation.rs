//! A revoked node's watch channel: the server checks the channel's
//! certificate again on every heartbeat and at once on revocation, ends the
//! channel with a `Refused` event that says why, and stops counting the
//! node as seen. Against the real server, with the agent's own client.

// A test measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use cms_agent::client::WatchChannel;
use cms_proto::v1 as pb;
use support::Server;

/// Generous: heartbeats come every 300 ms here.
const BOUND: Duration = Duration::from_secs(10);

async fn heartbeat_fast() -> Server {
    Server::start(|config| {
        config.watch_heartbeat = Duration::from_millis(300);
        config.presence_flush = Duration::from_millis(100);
    })
    .await
}

/// Reads events until the channel says it is refused; its message. Fails
/// when the channel ends without saying why or goes on past `BOUND`.
async fn refusal(watch: &mut WatchChannel) -> String {
    let read = async {
        loop {
            match watch.next_event().await {
                Ok(pb::WatchEvent {
                    event: Some(pb::watch_event::Event::Refused(refused)),
                }) => return refused.message,
                Ok(_) => continue,
                Err(error) => panic!("the channel ended without a refusal: {error:#}"),
            }
        }
    };
    tokio::time::timeout(BOUND, read)
        .await
        .expect("the revoked node's watch channel stayed open")
}

/// The node's last-seen time as `cms-server nodes` lists it.
async fn last_seen(server: &Server, node_id: &str) -> i64 {
    let listed = server
        .admin()
        .await
        .unwrap()
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner();
    listed
        .nodes
        .iter()
        .find(|node| node.node_id == node_id)
        .expect("the node is listed")
        .last_seen_unix_ms
}

async fn assert_no_longer_seen(server: &Server, node_id: &str) {
    let first = last_seen(server, node_id).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = last_seen(server, node_id).await;
    assert_eq!(
        first, later,
        "the revoked node still counts as seen (its last-seen time moves)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_node_closes_its_watch_channel_and_it_is_no_longer_seen() {
    let server = heartbeat_fast().await;
    let node = server.enroll("web-1", &[("role", "web")]).await;
    let mut watch = node.connector.open_watch().await.unwrap();
    tokio::time::timeout(BOUND, watch.next_event())
        .await
        .expect("a first heartbeat")
        .expect("an event");
    server
        .admin()
        .await
        .unwrap()
        .revoke_node(pb::RevokeNodeRequest {
            node_id: node.id.clone(),
        })
        .await
        .unwrap();
    let message = refusal(&mut watch).await;
    assert!(message.contains("revoked"), "{message}");
    assert!(message.contains(&node.id), "{message}");
    assert_no_longer_seen(&server, &node.id).await;
    // Opening it again is refused from the start.
    let mut again = node.connector.open_watch().await.unwrap();
    assert!(refusal(&mut again).await.contains("revoked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_behind_the_servers_back_ends_the_channel_at_the_next_heartbeat() {
    let server = heartbeat_fast().await;
    let node = server.enroll("web-1", &[("role", "web")]).await;
    let mut watch = node.connector.open_watch().await.unwrap();
    tokio::time::timeout(BOUND, watch.next_event())
        .await
        .expect("a first heartbeat")
        .expect("an event");
    // Written to the store as another server sharing it would: this
    // server's fleet registry hears nothing of it.
    let revoked = server.store.revoke_node(&node.id).unwrap();
    assert_eq!(revoked.len(), 1);
    let message = refusal(&mut watch).await;
    assert!(message.contains("revoked"), "{message}");
    assert_no_longer_seen(&server, &node.id).await;
}
