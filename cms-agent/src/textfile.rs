//! The last run's figures for node_exporter's textfile collector, so the
//! fleet's runs show up in Prometheus beside each instance's other metrics
//! even when the server is away.
//!
//! After each run against the server (`converge`, and every run of the
//! daemon) the agent writes `cms_agent.prom` in the Prometheus text format
//! (version 0.0.4, what the collector reads): when the run started, how long
//! it took, its resources by status, its exit code, and the catalog it
//! applied. The file is replaced atomically (temporary file in the same
//! folder, rename), so the collector never reads half of it; it is fsynced
//! when the run changed something or failed, not after a run that found
//! nothing to do (`state::Durability`), and it
//! is world-readable (0644): node_exporter runs as its own user and the
//! figures hold no secret.
//!
//! Where: `textfile_collector` in `/etc/cms/agent.toml` names the file; by
//! default it is `/var/lib/prometheus/node-exporter/cms_agent.prom`, the
//! folder Debian's `prometheus-node-exporter` reads, and it is written only
//! when that folder exists. An empty `textfile_collector` turns it off. A
//! failure to write is a warning: it never fails the run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::report::RunReport;

/// The folder Debian's node-exporter reads `*.prom` files from.
pub const DEFAULT_DIR: &str = "/var/lib/prometheus/node-exporter";
/// The file the agent writes there.
pub const FILE_NAME: &str = "cms_agent.prom";

/// Where the figures go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Textfile {
    /// Not written.
    Off,
    /// The default file, written only when its folder exists (node-exporter
    /// is installed).
    Default(PathBuf),
    /// A file the configuration names: always written.
    Configured(PathBuf),
}

impl Textfile {
    /// From `textfile_collector` in the agent's configuration.
    pub fn from_setting(setting: Option<&str>) -> Textfile {
        match setting {
            None => Textfile::Default(Path::new(DEFAULT_DIR).join(FILE_NAME)),
            Some(path) if path.trim().is_empty() => Textfile::Off,
            Some(path) => Textfile::Configured(PathBuf::from(path)),
        }
    }

    /// The file to write now, if any.
    pub fn target(&self) -> Option<&Path> {
        match self {
            Textfile::Off => None,
            Textfile::Default(path) => path.parent().is_some_and(Path::is_dir).then_some(path),
            Textfile::Configured(path) => Some(path),
        }
    }
}

/// Writes the figures of `report` where `textfile` says; a failure is
/// printed as a warning, never returned: the run itself went fine.
pub fn record(textfile: &Textfile, report: &RunReport) {
    let Some(path) = textfile.target() else {
        return;
    };
    let durability = crate::state::Durability::of_report(report);
    if let Err(error) = write(path, &render(report), durability) {
        eprintln!(
            "warning: Failed to write the run's metrics to {}: {error}",
            path.display()
        );
    }
}

/// The figures of one run in the Prometheus text format.
pub fn render(report: &RunReport) -> String {
    let mut text = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(text, "# HELP {name} {help}");
        let _ = writeln!(text, "# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(text, "{name}{labels} {value}");
        }
    };
    gauge(
        "cms_agent_last_run_timestamp_seconds",
        "When the agent's last run started (Unix time).",
        &[(String::new(), report.started_at_unix_ms as f64 / 1000.0)],
    );
    gauge(
        "cms_agent_last_run_duration_seconds",
        "How long the agent's last run took.",
        &[(String::new(), report.duration_ms / 1000.0)],
    );
    let summary = &report.summary;
    gauge(
        "cms_agent_last_run_resources",
        "Resources of the agent's last run by status.",
        &[
            ("changed", summary.changed),
            ("failed", summary.failed),
            ("skipped", summary.skipped),
            ("unchanged", summary.unchanged),
        ]
        .map(|(status, count)| (format!("{{status=\"{status}\"}}"), count as f64)),
    );
    gauge(
        "cms_agent_last_run_success",
        "1 when no resource failed in the agent's last run, else 0.",
        &[(String::new(), f64::from(u8::from(summary.failed == 0)))],
    );
    gauge(
        "cms_agent_last_run_exit_code",
        "The exit code of the agent's last run: 0 unchanged, 2 changed, 4 failed, 6 changed and failed.",
        &[(String::new(), f64::from(report.exit_code()))],
    );
    gauge(
        "cms_agent_last_run_noop",
        "1 when the agent's last run was a noop run.",
        &[(String::new(), f64::from(u8::from(report.noop)))],
    );
    gauge(
        "cms_agent_last_run_info",
        "The catalog of the agent's last run, as a label; the value is 1.",
        &[(
            format!("{{catalog_id=\"{}\"}}", escape_label(&report.catalog_id)),
            1.0,
        )],
    );
    text
}

/// A label value as the text format wants it.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Replaces `path` with `text` atomically, world-readable; fsynced when
/// `durability` says so.
pub fn write(path: &Path, text: &str, durability: crate::state::Durability) -> std::io::Result<()> {
    let durable = durability == crate::state::Durability::Durable;
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let directory = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| FILE_NAME.into(), |n| n.to_string_lossy().into_owned());
    // node_exporter reads only `*.prom`: the temporary name does not end so.
    let temporary = directory.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&temporary)?;
        // Whatever the umask.
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        file.write_all(text.as_bytes())?;
        if durable {
            file.sync_all()?;
        }
        std::fs::rename(&temporary, path)?;
        if durable {
            std::fs::File::open(directory)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}
