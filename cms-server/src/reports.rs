//! Run reports: an agent's report is stored (once per run id, durable
//! before it is acknowledged), summarised on its node, counted in the
//! metrics, and handed to the trigger waiting for it. How many reports one
//! node may send is bounded ([`ReportRate`]): beyond, a report is refused
//! and stays queued on its agent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
        // The report and the node's summary in one durable write.
        let write = self.store.record_run(&stored, &summary)?;
        if write == ReportWrite::Stored {
            self.metrics.run_reported(&stored.report);
        }
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

/// How many reports one node may send: `burst` at once, refilled at
/// `per_hour` (`serve --report-burst`, `--report-rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportRateLimit {
    pub burst: u32,
    pub per_hour: u32,
}

impl Default for ReportRateLimit {
    /// An agent reports once a run (every 30 minutes, and on triggers), and
    /// after an outage sends what it queued: a day offline is 48 reports.
    fn default() -> ReportRateLimit {
        ReportRateLimit {
            burst: 60,
            per_hour: 120,
        }
    }
}

/// A report refused because its node sent too many.
#[derive(Debug, thiserror::Error)]
#[error(
    "node {node_id} sent more reports than the server takes ({burst} at once, then {per_hour} an hour): this one was not stored; the agent keeps it queued and sends it again (in about {retry_after_s} s there is room)"
)]
pub struct RateExceeded {
    pub node_id: String,
    pub burst: u32,
    pub per_hour: u32,
    pub retry_after_s: u64,
}

/// The report buckets of the nodes, in memory (a restart refills them).
#[derive(Debug)]
pub struct ReportRate {
    limit: ReportRateLimit,
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    /// Reports each node may still send, and when that was counted.
    nodes: HashMap<String, (f64, u64)>,
    /// Full buckets are forgotten when there are this many.
    prune_at: usize,
}

impl ReportRate {
    pub fn new(limit: ReportRateLimit) -> ReportRate {
        ReportRate {
            limit,
            buckets: Mutex::new(Buckets {
                nodes: HashMap::new(),
                prune_at: 4096,
            }),
        }
    }

    /// Takes one report of `node_id` at `now_unix_ms` from its bucket, or
    /// refuses it when the bucket is empty.
    pub fn admit(&self, node_id: &str, now_unix_ms: u64) -> Result<(), RateExceeded> {
        let ReportRateLimit { burst, per_hour } = self.limit;
        let per_ms = f64::from(per_hour) / 3_600_000.0;
        let refilled = |(left, at): (f64, u64)| {
            (left + now_unix_ms.saturating_sub(at) as f64 * per_ms).min(f64::from(burst))
        };
        let mut buckets = self.buckets.lock().expect("report buckets lock");
        if buckets.nodes.len() >= buckets.prune_at {
            buckets
                .nodes
                .retain(|_, bucket| refilled(*bucket) < f64::from(burst));
            buckets.prune_at = (buckets.nodes.len() * 2).max(4096);
        }
        let bucket = buckets
            .nodes
            .entry(node_id.to_string())
            .or_insert((f64::from(burst), now_unix_ms));
        let left = refilled(*bucket);
        if left >= 1.0 {
            *bucket = (left - 1.0, now_unix_ms);
            return Ok(());
        }
        *bucket = (left, now_unix_ms);
        let retry_after_s = if per_hour == 0 {
            u64::MAX
        } else {
            ((1.0 - left) / per_ms / 1000.0).ceil() as u64
        };
        Err(RateExceeded {
            node_id: node_id.to_string(),
            burst,
            per_hour,
            retry_after_s,
        })
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
                environment: String::new(),
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

    #[test]
    fn a_node_gets_its_burst_then_reports_at_the_refill_rate_and_others_are_not_held_up() {
        let rate = ReportRate::new(ReportRateLimit {
            burst: 3,
            per_hour: 60,
        });
        for _ in 0..3 {
            rate.admit("web-1", 1_000).unwrap();
        }
        let refused = rate.admit("web-1", 1_000).unwrap_err();
        assert_eq!(refused.retry_after_s, 60);
        let message = refused.to_string();
        assert!(message.contains("web-1"), "{message}");
        assert!(message.contains("queued"), "{message}");
        // Another node has its own bucket.
        rate.admit("web-2", 1_000).unwrap();
        // One a minute comes back; not two.
        rate.admit("web-1", 61_000).unwrap();
        assert!(rate.admit("web-1", 61_000).is_err());
        // A long pause refills to the burst, no more.
        for _ in 0..3 {
            rate.admit("web-1", 100_000_000).unwrap();
        }
        assert!(rate.admit("web-1", 100_000_000).is_err());
    }

    #[test]
    fn full_buckets_are_forgotten_when_many_nodes_have_reported() {
        let rate = ReportRate::new(ReportRateLimit {
            burst: 2,
            per_hour: 3600,
        });
        for i in 0..4096 {
            rate.admit(&format!("node-{i}"), 0).unwrap();
        }
        // An hour later every bucket is full again: the next report
        // forgets them.
        rate.admit("late", 3_600_000).unwrap();
        assert_eq!(rate.buckets.lock().unwrap().nodes.len(), 1);
    }
}
