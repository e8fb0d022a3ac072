//! The run report: every resource of a run with its status, its changes
//! (the diff), its error and how long it took, and the exit code that sums
//! it up.

use cms_modules::Change;
use serde::{Deserialize, Serialize};

/// No changes.
pub const EXIT_UNCHANGED: u8 = 0;
/// Changes made (or, with `--noop`, changes that would be made).
pub const EXIT_CHANGED: u8 = 2;
/// Failures.
pub const EXIT_FAILED: u8 = 4;
/// Changes and failures.
pub const EXIT_CHANGED_AND_FAILED: u8 = 6;

/// What happened to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Unchanged,
    /// Changed, or in a `--noop` run, would change.
    Changed,
    Failed,
    /// Not attempted: something it depends on failed, or it cannot be
    /// applied where the agent runs.
    Skipped,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResourceResult {
    pub reference: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// What a notification made it do (`restarted`), or would make it do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub duration_ms: f64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub total: usize,
    pub unchanged: usize,
    pub changed: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// One converge run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub run_id: String,
    pub catalog_id: String,
    pub roles: Vec<String>,
    pub noop: bool,
    pub started_at_unix_ms: u64,
    pub duration_ms: f64,
    pub summary: Summary,
    pub resources: Vec<ResourceResult>,
}

impl RunReport {
    pub fn summarize(resources: &[ResourceResult]) -> Summary {
        let mut summary = Summary {
            total: resources.len(),
            ..Summary::default()
        };
        for resource in resources {
            match resource.status {
                Status::Unchanged => summary.unchanged += 1,
                Status::Changed => summary.changed += 1,
                Status::Failed => summary.failed += 1,
                Status::Skipped => summary.skipped += 1,
            }
        }
        summary
    }

    /// 0 nothing changed, 2 changes, 4 failures, 6 changes and failures.
    /// A resource skipped because a dependency failed counts with the
    /// failure that caused it.
    pub fn exit_code(&self) -> u8 {
        match (self.summary.changed > 0, self.summary.failed > 0) {
            (false, false) => EXIT_UNCHANGED,
            (true, false) => EXIT_CHANGED,
            (false, true) => EXIT_FAILED,
            (true, true) => EXIT_CHANGED_AND_FAILED,
        }
    }
}

/// A report as the contract carries it.
pub fn to_proto(
    report: &RunReport,
    revision: &str,
    note: Option<&str>,
) -> cms_proto::v1::RunReport {
    use cms_proto::v1 as pb;
    pb::RunReport {
        run_id: report.run_id.clone(),
        catalog_id: report.catalog_id.clone(),
        revision: revision.to_string(),
        started_at_unix_ms: report.started_at_unix_ms as i64,
        duration_ms: report.duration_ms as u64,
        noop: report.noop,
        trigger_id: String::new(),
        note: note.unwrap_or_default().to_string(),
        resources: report
            .resources
            .iter()
            .map(|r| pb::ResourceResult {
                reference: r.reference.clone(),
                status: match r.status {
                    Status::Unchanged => pb::ResourceStatus::Unchanged,
                    Status::Changed => pb::ResourceStatus::Changed,
                    Status::Failed => pb::ResourceStatus::Failed,
                    Status::Skipped => pb::ResourceStatus::Skipped,
                } as i32,
                diff: r
                    .changes
                    .iter()
                    .map(|c| match &c.diff {
                        Some(diff) => format!("{}: {} -> {}\n{diff}", c.attribute, c.from, c.to),
                        None => format!("{}: {} -> {}", c.attribute, c.from, c.to),
                    })
                    .chain(
                        r.refresh
                            .iter()
                            .map(|refresh| format!("refresh: {refresh}")),
                    )
                    .collect::<Vec<_>>()
                    .join("\n"),
                error: r
                    .error
                    .clone()
                    .or_else(|| r.reason.clone())
                    .unwrap_or_default(),
                duration_ms: r.duration_ms as u64,
            })
            .collect(),
    }
}
