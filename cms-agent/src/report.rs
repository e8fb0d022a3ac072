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
    /// What it changed (with `--noop`, would change). For a failed
    /// resource: what it changed before it failed, as a check after the
    /// failure shows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
    /// For a failed resource: the changes still to be made after it failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_done: Vec<Change>,
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
    /// Failed resources that changed something before they failed
    /// (counted in `failed`, not in `changed`).
    #[serde(default)]
    pub failed_after_changes: usize,
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
                Status::Failed => {
                    summary.failed += 1;
                    if !resource.changes.is_empty() {
                        summary.failed_after_changes += 1;
                    }
                }
                Status::Skipped => summary.skipped += 1,
            }
        }
        summary
    }

    /// Whether the run found the machine as its catalog says: nothing
    /// changed (or, under `--noop`, would change) and nothing failed. The
    /// state such a run leaves is written without fsync (`state.rs`).
    pub fn found_nothing_to_do(&self) -> bool {
        self.exit_code() == EXIT_UNCHANGED
    }

    /// 0 nothing changed, 2 changes, 4 failures, 6 changes and failures.
    /// A resource skipped because a dependency failed counts with the
    /// failure that caused it.
    pub fn exit_code(&self) -> u8 {
        let changed = self.summary.changed > 0 || self.summary.failed_after_changes > 0;
        match (changed, self.summary.failed > 0) {
            (false, false) => EXIT_UNCHANGED,
            (true, false) => EXIT_CHANGED,
            (false, true) => EXIT_FAILED,
            (true, true) => EXIT_CHANGED_AND_FAILED,
        }
    }
}

/// A report as the contract carries it, trimmed to fit
/// `MAX_REPORT_BYTES` (see [`trim_to_fit`]).
pub fn to_proto(
    report: &RunReport,
    revision: &str,
    note: Option<&str>,
) -> cms_proto::v1::RunReport {
    use cms_proto::v1 as pb;
    let mut proto = pb::RunReport {
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
                        Some(diff) => format!("{c}\n{diff}"),
                        None => c.to_string(),
                    })
                    .chain(r.not_done.iter().map(|c| format!("not done: {c}")))
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
    };
    trim_to_fit(&mut proto, REPORT_BUDGET);
    proto
}

/// What a report may take once encoded: the server's limit less room for
/// what is set after [`to_proto`] (the trigger id).
pub const REPORT_BUDGET: usize = cms_proto::limits::MAX_REPORT_BYTES - 4096;

/// Shrinks a report over `budget` bytes (encoded) until it fits: first the
/// diffs and errors, each cut to a shorter and shorter length with a line
/// that says how much was cut; then, if it still does not fit (tens of
/// thousands of resources), the unchanged resources are left out and the
/// report's note says how many. Counts of changed and failed resources
/// are never changed. A report that fits is left as it is.
pub fn trim_to_fit(report: &mut cms_proto::v1::RunReport, budget: usize) {
    use prost::Message as _;
    if report.encoded_len() <= budget {
        return;
    }
    let originals: Vec<(String, String)> = report
        .resources
        .iter()
        .map(|r| (r.diff.clone(), r.error.clone()))
        .collect();
    let mut cap = 64 * 1024;
    loop {
        for (resource, (diff, error)) in report.resources.iter_mut().zip(&originals) {
            resource.diff = truncated(diff, cap, "diff", budget);
            resource.error = truncated(error, cap, "error", budget);
        }
        if report.encoded_len() <= budget || cap == 0 {
            break;
        }
        cap = if cap > 256 { cap / 4 } else { 0 };
    }
    if report.encoded_len() <= budget {
        return;
    }
    let before = report.resources.len();
    report
        .resources
        .retain(|r| r.status != cms_proto::v1::ResourceStatus::Unchanged as i32);
    let left_out = before - report.resources.len();
    if left_out > 0 {
        let line = format!(
            "{left_out} unchanged resources not listed: the report was over {budget} bytes"
        );
        report.note = if report.note.is_empty() {
            line
        } else {
            format!("{}; {line}", report.note)
        };
    }
}

/// `text` cut to at most `cap` bytes (on a character boundary), with a line
/// saying what was cut; `text` itself when it fits.
fn truncated(text: &str, cap: usize, what: &str, budget: usize) -> String {
    // Never cut below the length of the line that says so.
    let cap = cap.max(128);
    if text.len() <= cap {
        return text.to_string();
    }
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[{what} truncated: {end} of {} bytes shown; the report was over {budget} bytes]",
        &text[..end],
        text.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use cms_proto::v1 as pb;
    use prost::Message as _;

    fn resource(reference: &str, status: pb::ResourceStatus, diff: String) -> pb::ResourceResult {
        pb::ResourceResult {
            reference: reference.into(),
            status: status as i32,
            diff,
            error: String::new(),
            duration_ms: 1,
        }
    }

    #[test]
    fn a_five_megabyte_report_is_trimmed_below_the_limit_with_its_diffs_marked_truncated() {
        let mut report = pb::RunReport {
            run_id: "r1".into(),
            resources: (0..5)
                .map(|i| {
                    resource(
                        &format!("file:/big/{i}"),
                        pb::ResourceStatus::Changed,
                        "+é line of a large file\n".repeat(40_000),
                    )
                })
                .chain([resource(
                    "file:/small",
                    pb::ResourceStatus::Changed,
                    "content: a -> b".into(),
                )])
                .collect(),
            ..Default::default()
        };
        assert!(report.encoded_len() > 5_000_000);
        trim_to_fit(&mut report, REPORT_BUDGET);
        assert!(
            report.encoded_len() <= REPORT_BUDGET,
            "{}",
            report.encoded_len()
        );
        assert_eq!(report.resources.len(), 6, "every changed resource is kept");
        for big in &report.resources[..5] {
            assert!(big.diff.starts_with("+é line"));
            assert!(
                big.diff.contains("[diff truncated: ")
                    && big.diff.contains(" of 1000000 bytes shown"),
                "a diff of {} bytes",
                big.diff.len()
            );
        }
        assert_eq!(report.resources[5].diff, "content: a -> b");
    }

    #[test]
    fn a_report_that_fits_is_sent_as_it_is() {
        let mut report = pb::RunReport {
            resources: vec![resource(
                "file:/a",
                pb::ResourceStatus::Changed,
                "x".repeat(100_000),
            )],
            ..Default::default()
        };
        let before = report.clone();
        trim_to_fit(&mut report, REPORT_BUDGET);
        assert_eq!(report, before);
    }

    #[test]
    fn a_report_of_too_many_resources_leaves_out_the_unchanged_ones_and_says_so() {
        let mut report = pb::RunReport {
            note: "from cache".into(),
            resources: (0..50_000)
                .map(|i| {
                    resource(
                        &format!("file:/etc/many/a-rather-long-path-name-{i}"),
                        if i % 1000 == 0 {
                            pb::ResourceStatus::Failed
                        } else {
                            pb::ResourceStatus::Unchanged
                        },
                        String::new(),
                    )
                })
                .collect(),
            ..Default::default()
        };
        trim_to_fit(&mut report, 1024 * 1024);
        assert!(report.encoded_len() <= 1024 * 1024);
        assert_eq!(report.resources.len(), 50, "failures are kept");
        assert_eq!(
            report.note,
            "from cache; 49950 unchanged resources not listed: the report was over 1048576 bytes"
        );
    }
}
