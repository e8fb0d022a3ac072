//! Unauthenticated clients cannot stall the server: the attacks on the gRPC
//! port's connections, performed against the real server
//! (`server::prepare` and `server::run_prepared`, its default limits), with
//! enrolled agents and the admin CLI's client as the victims.
//!
//! The bounds asserted are generous (seconds where the answers take
//! milliseconds) so that a loaded machine cannot make them flake: without
//! the defences the same calls wait for the five-minute connection age.

// A test measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant};

use cms_proto::v1 as pb;
use support::{Server, anonymous_tls, connect_from, converge, loopback};
use tokio::io::AsyncWriteExt as _;

/// Within this, the victims' calls must have answered: far above what they
/// take (milliseconds), far below what the attacks cause undefended (the
/// five-minute connection age; tens of seconds for the slow sender alone).
const ANSWER_BOUND: Duration = Duration::from_secs(5);

/// `count` TLS connections without a client certificate, each from its own
/// loopback address in 127.0.`block`.x, that finish their handshake and
/// then never send a byte (not even HTTP/2's preface); held until dropped.
async fn idle_unauthenticated(
    server: &Server,
    block: u8,
    count: usize,
) -> Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = anonymous_tls(&server.ca_pem);
    let mut handshakes = tokio::task::JoinSet::new();
    for i in 0..count {
        let (config, address) = (config.clone(), server.address);
        handshakes.spawn(async move {
            let tcp = connect_from(loopback(block, i), address).await.ok()?;
            tokio_rustls::TlsConnector::from(config)
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .ok()
        });
    }
    let mut held = Vec::new();
    while let Some(done) = handshakes.join_next().await {
        if let Some(stream) = done.unwrap() {
            held.push(stream);
        }
    }
    held
}

/// The start of a ClientHello that says it is 16 KB long: the record and
/// handshake headers, the fixed fields, and the first bytes of one large
/// padding extension. The server's first look (8 KB) sees an incomplete
/// ClientHello.
fn large_client_hello_start() -> Vec<u8> {
    const RECORD: usize = 16_384;
    let body = RECORD - 4;
    let extensions = body - (2 + 32 + 1 + 4 + 2 + 2);
    let mut hello = vec![0x16, 0x03, 0x01, (RECORD >> 8) as u8, RECORD as u8];
    hello.extend([0x01, (body >> 16) as u8, (body >> 8) as u8, body as u8]);
    hello.extend([0x03, 0x03]);
    hello.extend([7u8; 32]);
    hello.push(0);
    hello.extend([0x00, 0x02, 0x13, 0x01]);
    hello.extend([0x01, 0x00]);
    hello.extend([(extensions >> 8) as u8, extensions as u8]);
    let padding = extensions - 4;
    hello.extend([0x00, 0x15, (padding >> 8) as u8, padding as u8]);
    hello.resize(9_000, 0);
    hello
}

/// A sender of slow ClientHellos from one address: `connections` at a time,
/// each sending the start of a large ClientHello, then one byte every half
/// second; a connection the server closes is opened again at once. Runs
/// until aborted.
fn slow_client_hellos(
    server: std::net::SocketAddr,
    from: std::net::IpAddr,
    connections: usize,
) -> tokio::task::JoinSet<()> {
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..connections {
        senders.spawn(async move {
            loop {
                let Ok(mut tcp) = connect_from(from, server).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if tcp.write_all(&large_client_hello_start()).await.is_ok() {
                    while tcp.write_all(&[0]).await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    senders
}

/// Times `call`, failing the test when it does not answer within
/// `ANSWER_BOUND`.
async fn answered_within_bound<T>(
    what: &str,
    call: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Duration {
    let started = Instant::now();
    match tokio::time::timeout(ANSWER_BOUND, call).await {
        Ok(Ok(_)) => {
            let took = started.elapsed();
            eprintln!("{what} answered in {took:?} under attack");
            took
        }
        Ok(Err(error)) => panic!("{what} failed under attack: {error:#}"),
        Err(_) => panic!("{what} did not answer within {ANSWER_BOUND:?} under attack"),
    }
}

async fn admin_lists_nodes(server: &Server) -> anyhow::Result<usize> {
    let mut admin = server.admin().await?;
    let listed = admin
        .list_nodes(pb::ListNodesRequest::default())
        .await?
        .into_inner();
    Ok(listed.nodes.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_unauthenticated_connections_and_slow_client_hellos_leave_agents_and_admin_served() {
    let server = Server::start(|_| {}).await;
    let node = server.enroll("web-1", &[("role", "web")]).await;
    converge(&node, "before")
        .await
        .expect("a run before the attack");

    // 256 silent TLS connections without a certificate, each from its own
    // address, as many as there are gRPC places.
    let idle = idle_unauthenticated(&server, 2, 256).await;
    eprintln!("{} idle connections finished their handshake", idle.len());
    // And a sender of slow ClientHellos, 200 connections at a time.
    let slow = slow_client_hellos(server.address, loopback(9, 0), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut took = Vec::new();
    for round in 0..3 {
        took.push(
            answered_within_bound("an admin command (connect, list nodes)", async {
                admin_lists_nodes(&server).await
            })
            .await,
        );
        took.push(
            answered_within_bound(
                "an enrolled agent's run (connect, catalog, report)",
                converge(&node, &format!("during-{round}")),
            )
            .await,
        );
    }
    eprintln!("slowest answer under attack: {:?}", took.iter().max());
    drop(slow);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_hello_sender_leaves_agents_and_admin_served() {
    let server = Server::start(|_| {}).await;
    let node = server.enroll("web-1", &[("role", "web")]).await;
    let slow = slow_client_hellos(server.address, loopback(9, 0), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for round in 0..3 {
        answered_within_bound("an admin command (connect, list nodes)", async {
            admin_lists_nodes(&server).await
        })
        .await;
        answered_within_bound(
            "an enrolled agent's run (connect, catalog, report)",
            converge(&node, &format!("during-{round}")),
        )
        .await;
    }
    drop(slow);
}
