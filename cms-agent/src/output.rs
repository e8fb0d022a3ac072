//! Printing a run report for people: one line per change, unified diffs for
//! files (coloured on a terminal), failures with their error, and a summary
//! line. `--format json` prints the report itself instead. The command line
//! and the daemon both print through [`print_report`].

use std::io::{IsTerminal, Write};

use clap::ValueEnum;

use crate::report::{RunReport, Status};

/// How a command prints what it found: for people or for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// What the environment says about output; read once in `main`.
#[derive(Debug, Clone, Copy)]
pub struct Terminal {
    /// `NO_COLOR` is set (https://no-color.org).
    pub no_color: bool,
}

/// Prints a run report for people or machines.
pub fn print_report(report: &RunReport, format: Format, terminal: Terminal) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, report)?;
            writeln!(out)?;
        }
        Format::Text => {
            let colour = if std::io::stdout().is_terminal() && !terminal.no_color {
                Colour::Always
            } else {
                Colour::Never
            };
            write_text(&mut out, report, colour)?;
        }
    }
    Ok(())
}

/// Whether to use ANSI colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Always,
    Never,
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

pub fn write_text(out: &mut impl Write, report: &RunReport, colour: Colour) -> std::io::Result<()> {
    let paint = |code: &str, text: &str| match colour {
        Colour::Always => format!("{code}{text}{RESET}"),
        Colour::Never => text.to_string(),
    };
    let would = if report.noop {
        "would change"
    } else {
        "changed"
    };
    for resource in &report.resources {
        match resource.status {
            Status::Unchanged => continue,
            Status::Changed => {
                writeln!(
                    out,
                    "{} {}",
                    paint(GREEN, would),
                    paint(BOLD, &resource.reference)
                )?;
            }
            Status::Failed => {
                writeln!(
                    out,
                    "{} {}",
                    paint(RED, "failed"),
                    paint(BOLD, &resource.reference)
                )?;
            }
            Status::Skipped => {
                writeln!(
                    out,
                    "{} {}",
                    paint(YELLOW, "skipped"),
                    paint(BOLD, &resource.reference)
                )?;
            }
        }
        let failed = resource.status == Status::Failed;
        for change in &resource.changes {
            // `content changed (sensitive)` for a sensitive resource.
            if failed {
                writeln!(out, "    done: {change}")?;
            } else {
                writeln!(out, "    {change}")?;
            }
            if let Some(diff) = &change.diff {
                for line in diff.lines() {
                    let painted = if line.starts_with("+++") || line.starts_with("---") {
                        paint(BOLD, line)
                    } else if line.starts_with('+') {
                        paint(GREEN, line)
                    } else if line.starts_with('-') {
                        paint(RED, line)
                    } else if line.starts_with("@@") {
                        paint(CYAN, line)
                    } else {
                        line.to_string()
                    };
                    writeln!(out, "    {painted}")?;
                }
            }
        }
        for change in &resource.not_done {
            writeln!(out, "    not done: {change}")?;
        }
        if let Some(refresh) = &resource.refresh {
            writeln!(out, "    refresh: {refresh}")?;
        }
        if let Some(reason) = &resource.reason {
            writeln!(out, "    {reason}")?;
        }
        if let Some(error) = &resource.error {
            for line in error.lines() {
                writeln!(out, "    {}", paint(RED, line))?;
            }
        }
    }
    let summary = report.summary;
    writeln!(
        out,
        "{}: {} resources, {} {}, {} unchanged, {} failed{}, {} skipped in {:.0} ms{}",
        if report.noop { "noop" } else { "summary" },
        summary.total,
        summary.changed,
        would,
        summary.unchanged,
        summary.failed,
        match summary.failed_after_changes {
            0 => String::new(),
            n => format!(" ({n} after changing something)"),
        },
        summary.skipped,
        report.duration_ms,
        if report.noop {
            " (nothing was changed)"
        } else {
            ""
        }
    )
}
