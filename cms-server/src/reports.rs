//! Run reports: an agent's report is stored (once per run id, durable
//! before it is acknowledged), summarised on its node, counted in the
//! metrics, and handed to the trigger waiting for it.

use std::sync::Arc;

use cms_proto::report::{ResourceStatus, RunRecord};

use crate::clock::SharedClock;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::store::{ReportWrite, RunSummary, SharedStore, StoreError, StoredReport};

/// What the report operations need.
#[derive(Debug, Clone)]
pub struct Reports {
    pub store: SharedStore,
    pub fleet: Arc<Fleet>,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the report of run {run_id} from {node_id} is {size} bytes, over the limit of {limit} bytes: it is not stored (cms-agent trims its reports to fit; upgrade it)"
    )]
    TooLarge {
        node_id: String,
        run_id: String,
        size: usize,
        limit: usize,
    },
}

/// Refuses a report over `MAX_REPORT_BYTES` (encoded), before anything is
/// stored. Requests over `MAX_REQUEST_BYTES` never get here: the gRPC layer
/// refuses them with OUT_OF_RANGE.
pub fn check_report_size(
    node_id: &str,
    report: &cms_proto::v1::RunReport,
) -> Result<(), ReportError> {
    use prost::Message as _;
    let size = report.encoded_len();
    let limit = cms_proto::limits::MAX_REPORT_BYTES;
    if size > limit {
        return Err(ReportError::TooLarge {
            node_id: node_id.to_string(),
            run_id: report.run_id.clone(),
            size,
            limit,
        });
    }
    Ok(())
}

impl Reports {
    /// Stores `report` of `node_id` and notes it as the node's last run.
    /// When this returns, the report is on disk and may be acknowledged.
    /// Blocks.
    pub fn record(&self, node_id: &str, report: RunRecord) -> Result<ReportWrite, ReportError> {
        let now = self.clock.now_unix_ms();
        let summary = RunSummary {
            run_id: report.run_id.clone(),
            finished_unix_ms: report.finished_unix_ms(),
            catalog_id: report.catalog_id.clone(),
            revision: report.revision.clone(),
            changed: report.count(ResourceStatus::Changed) as u32,
            failed: report.count(ResourceStatus::Failed) as u32,
            skipped: report.count(ResourceStatus::Skipped) as u32,
            noop: report.noop,
        };
        let trigger = (!report.trigger_id.is_empty())
            .then(|| (report.trigger_id.clone(), crate::fleet::outcome_of(&report)));
        let stored = StoredReport {
            node_id: node_id.to_string(),
            run_id: report.run_id.clone(),
            received_unix_ms: now,
            report,
        };
        let write = self.store.put_report(&stored)?;
        if write == ReportWrite::Stored {
            self.metrics.run_reported(&stored.report);
        }
        self.store.update_node(node_id, |node| {
            node.last_seen_unix_ms = now;
            node.last_run = Some(summary.clone());
        })?;
        if let Some((trigger_id, outcome)) = trigger {
            self.fleet.report_arrived(&trigger_id, node_id, outcome);
        }
        Ok(write)
    }

    /// A node's last `limit` reports, newest first. Blocks.
    pub fn list(&self, node_id: &str, limit: usize) -> Result<Vec<StoredReport>, ReportError> {
        Ok(self.store.reports(node_id, limit)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::{MemoryStore, NodeRecord, NodeStatus};
    use cms_proto::report::{RUN_RECORD_VERSION, ResourceRecord};

    fn run(run_id: &str, trigger_id: &str, status: ResourceStatus) -> RunRecord {
        RunRecord {
            version: RUN_RECORD_VERSION,
            run_id: run_id.into(),
            catalog_id: "c1".into(),
            revision: "abc".into(),
            started_at_unix_ms: 1_000,
            duration_ms: 500,
            noop: false,
            note: String::new(),
            trigger_id: trigger_id.into(),
            resources: vec![ResourceRecord {
                reference: "service:nginx".into(),
                status,
                diff: String::new(),
                error: String::new(),
                duration_ms: 1,
            }],
        }
    }

    #[tokio::test]
    async fn a_report_is_stored_once_summarised_on_its_node_and_handed_to_its_trigger() {
        let store: SharedStore = Arc::new(MemoryStore::default());
        store
            .put_node(&NodeRecord {
                id: "web-1".into(),
                tags: Default::default(),
                facts: serde_json::Value::Null,
                certificate_serial: "s1".into(),
                first_seen_unix_ms: 1,
                last_seen_unix_ms: 1,
                last_run: None,
                status: NodeStatus::Active,
                gone_since_unix_ms: None,
                attested: Default::default(),
            })
            .unwrap();
        let reports = Reports {
            store: store.clone(),
            fleet: Arc::new(Fleet::default()),
            metrics: Arc::new(Metrics::new()),
            clock: Arc::new(ManualClock::at(9_000)),
        };
        let waiting = reports.fleet.wait_for_report("t1", "web-1");
        let report = run("r1", "t1", ResourceStatus::Failed);
        assert_eq!(
            reports.record("web-1", report.clone()).unwrap(),
            ReportWrite::Stored
        );
        assert_eq!(
            reports.record("web-1", report.clone()).unwrap(),
            ReportWrite::AlreadyStored
        );
        let outcome = waiting.await.expect("the trigger heard of the report");
        assert_eq!(outcome.result, "failed");
        assert_eq!(outcome.failed_resources, ["service:nginx"]);
        let node = store.node("web-1").unwrap().unwrap();
        assert_eq!(node.last_seen_unix_ms, 9_000);
        let summary = node.last_run.expect("a last run");
        assert_eq!((summary.failed, summary.changed), (1, 0));
        assert_eq!(summary.finished_unix_ms, 1_500);
        let stored = reports.list("web-1", 10).unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].report, report);
        assert_eq!(stored[0].received_unix_ms, 9_000);
    }
}
