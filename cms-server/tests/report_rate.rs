//! A node that sends reports faster than the server takes them: beyond its
//! burst, a report is refused with `ResourceExhausted` and a message that
//! says so, is not stored, and stays queued on the agent (the agent's own
//! queue and delivery, `cms_agent::remote::deliver_reports`), while other
//! nodes report as before. Against the real server.

// A test measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

mod support;

use cms_agent::client::Connectors;
use cms_agent::report::{RunReport, Summary};
use cms_agent::state::ReportQueue;
use cms_proto::v1 as pb;
use cms_server::reports::ReportRateLimit;
use support::{Server, report};

async fn stored_reports(server: &Server, node_id: &str) -> usize {
    server
        .admin()
        .await
        .unwrap()
        .get_reports(pb::GetReportsRequest {
            node_id: node_id.to_string(),
            limit: 100,
        })
        .await
        .unwrap()
        .into_inner()
        .reports
        .len()
}

/// A server taking 3 reports at once from a node, refilled at one an hour
/// (none during the test).
async fn strict() -> Server {
    Server::start(|config| {
        config.report_rate = ReportRateLimit {
            burst: 3,
            per_hour: 1,
        };
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_beyond_a_nodes_rate_are_refused_with_resource_exhausted_and_not_stored() {
    let server = strict().await;
    let noisy = server.enroll("web-1", &[("role", "web")]).await;
    let quiet = server.enroll("web-2", &[("role", "web")]).await;
    let mut client = noisy.connector.connect().await.unwrap();
    for i in 0..3 {
        client
            .report(report(&format!("run-{i}"), "c1"))
            .await
            .expect("a report within the burst");
    }
    let refused = client
        .report(report("run-3", "c1"))
        .await
        .expect_err("the report beyond the burst was taken");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("web-1"), "{}", refused.message());
    assert!(
        refused.message().contains("queued"),
        "{}",
        refused.message()
    );
    assert_eq!(stored_reports(&server, "web-1").await, 3);
    // The other node is not held up.
    quiet
        .connector
        .connect()
        .await
        .unwrap()
        .report(report("run-0", "c1"))
        .await
        .expect("another node's report");
    assert_eq!(stored_reports(&server, "web-2").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_keeps_the_reports_the_server_refused_queued() {
    let server = strict().await;
    let node = server.enroll("web-1", &[("role", "web")]).await;
    let state = tempfile::tempdir().unwrap();
    let queue = ReportQueue::new(state.path());
    for i in 0..5u64 {
        queue
            .enqueue(&RunReport {
                run_id: format!("run-{i}"),
                catalog_id: "c1".into(),
                roles: Vec::new(),
                noop: false,
                started_at_unix_ms: 1_000 + i,
                duration_ms: 1.0,
                summary: Summary::default(),
                resources: Vec::new(),
            })
            .unwrap();
    }
    let delivered = cms_agent::remote::deliver_reports(
        &Connectors::new(),
        &server.agent_address(None),
        &node.identity,
        &queue,
    )
    .await;
    let error = delivered.expect_err("every report was taken");
    assert!(format!("{error:#}").contains("queued"), "{error:#}");
    assert_eq!(stored_reports(&server, "web-1").await, 3);
    let left: Vec<String> = queue
        .pending()
        .unwrap()
        .into_iter()
        .map(|(_, queued)| queued.report.run_id)
        .collect();
    assert_eq!(left, ["run-3", "run-4"]);
}
