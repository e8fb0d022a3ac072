//! A run report as it is kept: one typed record, [`RunRecord`], with a
//! schema version, that the server stores and reads back, the dashboard
//! shows and the CLI prints, and the one place where it is converted to and
//! from the wire's [`pb::RunReport`](crate::v1::RunReport).
//!
//! The JSON form is the one the server has stored since its first version
//! (statuses in words, `"changed"`), so reports stored before this type
//! existed still read. Fields added since have serde defaults, and only
//! they: `version` (records without one are version 1) and `trigger_id`
//! (added with fleet triggers).

use serde::{Deserialize, Serialize};

use crate::v1 as pb;

/// The version of [`RunRecord`] this code writes.
pub const RUN_RECORD_VERSION: u32 = 1;

/// One run of an agent over its catalog, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The schema version; absent in records written before it existed,
    /// which are version 1.
    #[serde(default = "first_version")]
    pub version: u32,
    pub run_id: String,
    pub catalog_id: String,
    /// The commit the catalog was compiled from.
    pub revision: String,
    pub started_at_unix_ms: i64,
    pub duration_ms: u64,
    pub noop: bool,
    /// A note from the agent, e.g. that it ran the last catalog it had
    /// because the server could not be reached.
    pub note: String,
    /// The trigger that asked for this run; empty for a scheduled run.
    #[serde(default)]
    pub trigger_id: String,
    pub resources: Vec<ResourceRecord>,
}

/// What one resource did in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRecord {
    /// `kind:name`, e.g. `file:/etc/motd`.
    pub reference: String,
    pub status: ResourceStatus,
    pub diff: String,
    pub error: String,
    pub duration_ms: u64,
}

/// A resource's outcome, in the words stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceStatus {
    Unchanged,
    Changed,
    Failed,
    Skipped,
    /// A status this code does not know (a newer agent's), or none.
    #[serde(other)]
    Unknown,
}

fn first_version() -> u32 {
    1
}

impl ResourceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceStatus::Unchanged => "unchanged",
            ResourceStatus::Changed => "changed",
            ResourceStatus::Failed => "failed",
            ResourceStatus::Skipped => "skipped",
            ResourceStatus::Unknown => "unknown",
        }
    }
}

impl From<i32> for ResourceStatus {
    /// The wire's enum value; an unknown one is `Unknown`.
    fn from(status: i32) -> ResourceStatus {
        match pb::ResourceStatus::try_from(status) {
            Ok(pb::ResourceStatus::Unchanged) => ResourceStatus::Unchanged,
            Ok(pb::ResourceStatus::Changed) => ResourceStatus::Changed,
            Ok(pb::ResourceStatus::Failed) => ResourceStatus::Failed,
            Ok(pb::ResourceStatus::Skipped) => ResourceStatus::Skipped,
            Ok(pb::ResourceStatus::Unspecified) | Err(_) => ResourceStatus::Unknown,
        }
    }
}

impl From<ResourceStatus> for pb::ResourceStatus {
    fn from(status: ResourceStatus) -> pb::ResourceStatus {
        match status {
            ResourceStatus::Unchanged => pb::ResourceStatus::Unchanged,
            ResourceStatus::Changed => pb::ResourceStatus::Changed,
            ResourceStatus::Failed => pb::ResourceStatus::Failed,
            ResourceStatus::Skipped => pb::ResourceStatus::Skipped,
            ResourceStatus::Unknown => pb::ResourceStatus::Unspecified,
        }
    }
}

impl RunRecord {
    /// How many resources ended with `status`.
    pub fn count(&self, status: ResourceStatus) -> usize {
        self.resources.iter().filter(|r| r.status == status).count()
    }

    /// When the run ended, in unix milliseconds.
    pub fn finished_unix_ms(&self) -> u64 {
        self.started_at_unix_ms.max(0) as u64 + self.duration_ms
    }
}

impl From<&pb::RunReport> for RunRecord {
    fn from(report: &pb::RunReport) -> RunRecord {
        RunRecord::from(report.clone())
    }
}

impl From<pb::RunReport> for RunRecord {
    /// The wire's report as kept, its strings moved rather than copied.
    fn from(report: pb::RunReport) -> RunRecord {
        RunRecord {
            version: RUN_RECORD_VERSION,
            run_id: report.run_id,
            catalog_id: report.catalog_id,
            revision: report.revision,
            started_at_unix_ms: report.started_at_unix_ms,
            duration_ms: report.duration_ms,
            noop: report.noop,
            note: report.note,
            trigger_id: report.trigger_id,
            resources: report
                .resources
                .into_iter()
                .map(|r| ResourceRecord {
                    reference: r.reference,
                    status: ResourceStatus::from(r.status),
                    diff: r.diff,
                    error: r.error,
                    duration_ms: r.duration_ms,
                })
                .collect(),
        }
    }
}

impl From<&RunRecord> for pb::RunReport {
    fn from(record: &RunRecord) -> pb::RunReport {
        pb::RunReport {
            run_id: record.run_id.clone(),
            catalog_id: record.catalog_id.clone(),
            revision: record.revision.clone(),
            started_at_unix_ms: record.started_at_unix_ms,
            duration_ms: record.duration_ms,
            noop: record.noop,
            note: record.note.clone(),
            trigger_id: record.trigger_id.clone(),
            resources: record
                .resources
                .iter()
                .map(|r| pb::ResourceResult {
                    reference: r.reference.clone(),
                    status: pb::ResourceStatus::from(r.status) as i32,
                    diff: r.diff.clone(),
                    error: r.error.clone(),
                    duration_ms: r.duration_ms,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_report() -> pb::RunReport {
        pb::RunReport {
            run_id: "run-1".into(),
            catalog_id: "c1".into(),
            revision: "abc".into(),
            started_at_unix_ms: 1_700_000_000_000,
            duration_ms: 1_234,
            noop: true,
            note: "offline".into(),
            trigger_id: "t1".into(),
            resources: vec![
                pb::ResourceResult {
                    reference: "file:/etc/motd".into(),
                    status: pb::ResourceStatus::Changed as i32,
                    diff: "+hello".into(),
                    error: String::new(),
                    duration_ms: 3,
                },
                pb::ResourceResult {
                    reference: "service:nginx".into(),
                    status: pb::ResourceStatus::Failed as i32,
                    diff: String::new(),
                    error: "Failed to restart".into(),
                    duration_ms: 40,
                },
            ],
        }
    }

    #[test]
    fn a_report_survives_the_trip_to_the_record_and_back() {
        let report = wire_report();
        let record = RunRecord::from(&report);
        assert_eq!(record.version, RUN_RECORD_VERSION);
        assert_eq!(record.count(ResourceStatus::Failed), 1);
        assert_eq!(record.finished_unix_ms(), 1_700_000_001_234);
        let json = serde_json::to_string(&record).unwrap();
        let read: RunRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(pb::RunReport::from(&read), report);
    }

    /// A report as the server stored it before this type existed (from
    /// `report_json`, before fleet triggers): no version, no trigger id.
    #[test]
    fn a_record_in_the_first_stored_format_still_reads() {
        let old = r#"{"run_id":"r1","catalog_id":"c1","revision":"abc","started_at_unix_ms":5,"duration_ms":7,"noop":false,"note":"","resources":[{"reference":"file:/x","status":"changed","diff":"+a","error":"","duration_ms":1},{"reference":"pkg:y","status":"unknown","diff":"","error":"","duration_ms":0}]}"#;
        let record: RunRecord = serde_json::from_str(old).unwrap();
        assert_eq!(
            record,
            RunRecord {
                version: 1,
                run_id: "r1".into(),
                catalog_id: "c1".into(),
                revision: "abc".into(),
                started_at_unix_ms: 5,
                duration_ms: 7,
                noop: false,
                note: String::new(),
                trigger_id: String::new(),
                resources: vec![
                    ResourceRecord {
                        reference: "file:/x".into(),
                        status: ResourceStatus::Changed,
                        diff: "+a".into(),
                        error: String::new(),
                        duration_ms: 1,
                    },
                    ResourceRecord {
                        reference: "pkg:y".into(),
                        status: ResourceStatus::Unknown,
                        diff: String::new(),
                        error: String::new(),
                        duration_ms: 0,
                    },
                ],
            }
        );
    }

    #[test]
    fn statuses_are_stored_in_words_and_an_unknown_one_reads_as_unknown() {
        assert_eq!(
            serde_json::to_string(&ResourceStatus::Changed).unwrap(),
            "\"changed\""
        );
        let future: ResourceStatus = serde_json::from_str("\"drifted\"").unwrap();
        assert_eq!(future, ResourceStatus::Unknown);
        assert_eq!(ResourceStatus::from(99), ResourceStatus::Unknown);
        assert_eq!(
            pb::ResourceStatus::from(ResourceStatus::Unknown),
            pb::ResourceStatus::Unspecified
        );
    }
}
