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
