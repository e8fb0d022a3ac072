//! The run reports a test server holds, and the one way tests wait for the
//! first report of an instance whose baked agent enrolls and converges at
//! boot: a condition with a deadline, failing with the agent's journal.

use std::time::Duration;

use anyhow::Result;
use cms_proto::v1 as pb;

use crate::instance::Instance;
use crate::test_server::TestServer;
use crate::wait::wait_until_polling_every;

/// How long an instance's agent may take from a finished boot to its first
/// report: enrolling, installing packages from the internal repository and
/// converging. Usually a few seconds; the margin is for a loaded machine.
pub const FIRST_REPORT_TIMEOUT: Duration = Duration::from_secs(180);

/// Each check is a gRPC call on a new TLS connection: a few per second.
const REPORT_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The newest `limit` reports of `node`, newest first; none while the
/// server does not know the node (it answers NotFound until the agent
/// enrolls, which a test that waits for a report waits through).
pub fn node_reports(server: &TestServer, node: &str, limit: u32) -> Result<Vec<pb::RunReport>> {
    server.runtime.block_on(async {
        let mut admin = server.admin().await?;
        let answer = admin
            .get_reports(pb::GetReportsRequest {
                node_id: node.into(),
                limit,
            })
            .await;
        match answer {
            Ok(answer) => anyhow::Ok(answer.into_inner().reports),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(Vec::new()),
            Err(status) => Err(status.into()),
        }
    })
}

/// Waits until the server holds a report from `instance` (its node id is
/// its name) and returns the first one the server lists. On timeout the
/// error carries the agent's journal, which says why.
pub fn wait_for_first_report(server: &TestServer, instance: &Instance) -> Result<pb::RunReport> {
    let node = instance.name();
    wait_until_polling_every(
        REPORT_POLL_INTERVAL,
        FIRST_REPORT_TIMEOUT,
        &format!("the first report of {node}"),
        || Ok(node_reports(server, node, 1)?.into_iter().next()),
    )
    .or_else(|error| {
        let journal = instance.run(&["journalctl", "-u", "cms-agent", "--no-pager", "-n", "60"])?;
        Err(error.context(format!(
            "the agent's journal on {node}:\n{}",
            journal.stdout
        )))
    })
}
