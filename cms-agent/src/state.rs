//! The agent's state directory: the last run's report, written atomically so
//! a crash never leaves half a report.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::report::RunReport;

/// Writes `last_run.json` (owner-only) through a temporary file and rename.
pub fn save_report(state_dir: &Path, report: &RunReport) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(state_dir).with_context(|| {
        format!(
            "Failed to create the state directory {}",
            state_dir.display()
        )
    })?;
    let target = state_dir.join("last_run.json");
    let temporary = state_dir.join(format!(".last_run.json.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &target)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temporary);
        })
        .with_context(|| format!("Failed to write the run report {}", target.display()))
}
