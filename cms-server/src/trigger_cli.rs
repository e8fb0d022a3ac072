//! `cms-server trigger`: start a fleet trigger and follow it with a
//! progress bar, or show a stored trigger with `--status ID`.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use cms_proto::v1 as pb;

use crate::admin::status_error;
use crate::cli::{Format, TriggerArgs, parse_tags};
use crate::resolve::AdminTarget;

/// The trigger request the flags ask for, or what is wrong with them.
fn validated_request(args: &TriggerArgs) -> anyhow::Result<pb::TriggerRequest> {
    let selector: BTreeMap<String, String> = parse_tags(args.select.as_deref().unwrap_or(""))
        .map_err(|e| anyhow::anyhow!("--select: {e}"))?;
    anyhow::ensure!(
        !selector.is_empty(),
        "--select: name at least one tag, e.g. --select role=web"
    );
    let batch = args.batch.clone().unwrap_or_default();
    crate::fleet::parse_batch(&batch).map_err(|e| anyhow::anyhow!("--batch: {e}"))?;
    let timeout =
        cms_roles::parse_duration(&args.timeout).map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    Ok(pb::TriggerRequest {
        selector: Some(pb::Selector {
            tags: selector.into_iter().collect(),
        }),
        batch,
        canary: args.canary,
        noop: args.noop,
        max_failures: args.max_failures,
        timeout_seconds: u32::try_from(timeout).unwrap_or(u32::MAX),
    })
}

/// Exit status when a node failed or the rollout stopped.
pub const EXIT_FAILED: u8 = 4;

pub async fn run(args: TriggerArgs, admin: &AdminTarget) -> anyhow::Result<ExitCode> {
    // Bad flags are refused here, before the server is asked anything.
    let start = match &args.status {
        Some(_) => None,
        None => Some(validated_request(&args)?),
    };
    let mut client = crate::admin::connect_as(admin).await?;
    if let Some(id) = &args.status {
        let progress = client
            .trigger_status(pb::TriggerStatusRequest {
                trigger_id: id.clone(),
            })
            .await
            .map_err(status_error)?
            .into_inner();
        print_summary(&progress, admin.format);
        return Ok(exit_code(&progress));
    }
    let request = start.expect("a trigger without --status has a validated request");
    let mut stream = client
        .trigger(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut bar = ProgressBar::new(std::io::stderr().is_terminal());
    let mut last = None;
    loop {
        match stream.message().await {
            Ok(Some(progress)) => {
                if last.is_none() {
                    eprintln!(
                        "trigger {}: {} nodes in {} batches{}{}",
                        progress.trigger_id,
                        progress.total,
                        progress.batches,
                        if args.canary > 0 {
                            format!(" (the first is the canary of {})", args.canary)
                        } else {
                            String::new()
                        },
                        if args.noop { ", noop" } else { "" }
                    );
                }
                bar.draw(vec![progress_line(&progress)]);
                last = Some(progress);
            }
            Ok(None) => break,
            Err(status) => {
                bar.finish();
                if let Some(progress) = &last {
                    eprintln!(
                        "warning: lost the server's progress stream ({}); the trigger goes on: cms-server trigger --status {}",
                        status.message(),
                        progress.trigger_id
                    );
                    return Ok(ExitCode::from(EXIT_FAILED));
                }
                return Err(status_error(status));
            }
        }
    }
    bar.finish();
    let progress = last.ok_or_else(|| anyhow::anyhow!("the server sent no progress"))?;
    print_summary(&progress, admin.format);
    Ok(exit_code(&progress))
}

fn exit_code(progress: &pb::TriggerProgress) -> ExitCode {
    let all_converged =
        progress.state == "done" && progress.failed == 0 && progress.unreachable == 0;
    // A trigger still running (seen with --status) is not a failure yet.
    if all_converged || progress.state == "running" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

/// The width of a progress bar, in characters between its brackets.
const BAR_WIDTH: usize = 30;

/// A progress bar of `done` out of `total`: `[#########---------------------]`.
pub(crate) fn bar(done: u64, total: u64) -> String {
    let filled = (BAR_WIDTH as u64 * done.min(total) / total.max(1)) as usize;
    format!("[{}{}]", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled))
}

/// A trigger's progress as its bar's one line.
fn progress_line(progress: &pb::TriggerProgress) -> String {
    format!(
        "{} {}/{} batch {}/{}: {} changed, {} unchanged, {} failed, {} unreachable",
        bar(u64::from(progress.done), u64::from(progress.total)),
        progress.done,
        progress.total,
        progress.batch,
        progress.batches,
        progress.changed,
        progress.unchanged,
        progress.failed,
        progress.unreachable
    )
}

/// Progress lines on stderr: on a terminal, redrawn in place; elsewhere
/// (a log, CI) only the lines that changed, each time one does.
pub(crate) struct ProgressBar {
    terminal: bool,
    last_lines: Vec<String>,
}

impl ProgressBar {
    pub(crate) fn new(terminal: bool) -> ProgressBar {
        ProgressBar {
            terminal,
            last_lines: Vec::new(),
        }
    }

    /// Draws `lines` in place of the last ones.
    pub(crate) fn draw(&mut self, lines: Vec<String>) {
        let frame = self.frame(&lines);
        if !frame.is_empty() {
            let mut stderr = std::io::stderr();
            let _ = stderr.write_all(frame.as_bytes());
            let _ = stderr.flush();
        }
        self.last_lines = lines;
    }

    /// What `draw` writes: nothing when no line changed; on a terminal, the
    /// cursor moved back to the first line drawn, the screen below cleared
    /// and every line written again (the last without its newline, so the
    /// cursor stays on it); elsewhere the lines that are new, one each.
    fn frame(&self, lines: &[String]) -> String {
        if lines == self.last_lines.as_slice() {
            return String::new();
        }
        if !self.terminal {
            return lines
                .iter()
                .filter(|line| !self.last_lines.contains(line))
                .map(|line| format!("{line}\n"))
                .collect();
        }
        let mut frame = self.erase_frame();
        if frame.is_empty() {
            frame.push_str("\r\x1b[J");
        }
        frame.push_str(&lines.join("\n"));
        frame
    }

    /// Ends the drawing: on a terminal, the cursor moves past the last line.
    pub(crate) fn finish(&mut self) {
        if self.terminal && !self.last_lines.is_empty() {
            eprintln!();
        }
    }

    /// Ends the drawing by taking it away, for a command that prints the
    /// same at length next: on a terminal the lines are cleared; elsewhere
    /// what was printed stays.
    pub(crate) fn erase(&mut self) {
        let frame = self.erase_frame();
        if !frame.is_empty() {
            let mut stderr = std::io::stderr();
            let _ = stderr.write_all(frame.as_bytes());
            let _ = stderr.flush();
        }
        self.last_lines.clear();
    }

    fn erase_frame(&self) -> String {
        if !self.terminal || self.last_lines.is_empty() {
            return String::new();
        }
        let mut frame = String::new();
        if self.last_lines.len() > 1 {
            frame.push_str(&format!("\x1b[{}A", self.last_lines.len() - 1));
        }
        frame.push_str("\r\x1b[J");
        frame
    }
}

/// A node's outcome in a trigger or a rollout wave, as JSON.
pub(crate) fn node_outcome_json(node: &pb::TriggerNodeOutcome) -> serde_json::Value {
    serde_json::json!({
        "node": node.node_id, "batch": node.batch, "result": node.result, "run_id": node.run_id,
        "reason": node.reason,
    })
}

fn print_summary(progress: &pb::TriggerProgress, format: Format) {
    match format {
        Format::Json => {
            let json = serde_json::json!({
                "trigger_id": progress.trigger_id,
                "state": progress.state,
                "message": progress.message,
                "total": progress.total,
                "done": progress.done,
                "changed": progress.changed,
                "unchanged": progress.unchanged,
                "failed": progress.failed,
                "unreachable": progress.unreachable,
                "batches": progress.batches,
                "batches_started": progress.batch,
                "failed_resources": progress.failed_resources,
                "started_unix_ms": progress.started_unix_ms,
                "finished_unix_ms": progress.finished_unix_ms,
                "nodes": progress.nodes.iter().map(node_outcome_json).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&json).expect("JSON"));
        }
        Format::Text => {
            println!("trigger {}: {}", progress.trigger_id, progress.state);
            if !progress.message.is_empty() {
                println!("  {}", progress.message);
            }
            let took = if progress.finished_unix_ms > 0 {
                let ms = (progress.finished_unix_ms - progress.started_unix_ms).max(0) as u64;
                format!(" in {:.1} s", Duration::from_millis(ms).as_secs_f64())
            } else {
                String::new()
            };
            println!(
                "  {} nodes{took}: {} changed, {} unchanged, {} failed, {} unreachable, {} not run",
                progress.total,
                progress.changed,
                progress.unchanged,
                progress.failed,
                progress.unreachable,
                progress.total - progress.done
            );
            if !progress.failed_resources.is_empty() {
                println!("  failed resources:");
                for failed in &progress.failed_resources {
                    println!("    {failed}");
                }
            }
            println!("  {:<24} {:<6} RESULT", "NODE", "BATCH");
            for node in &progress.nodes {
                println!("  {:<24} {:<6} {}", node.node_id, node.batch, node.result);
                if !node.reason.is_empty() {
                    println!("  {:<24} {:<6}   {}", "", "", node.reason);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_fills_in_proportion_and_never_overflows() {
        assert_eq!(bar(0, 4), format!("[{}]", "-".repeat(30)));
        assert_eq!(bar(1, 4), format!("[{}{}]", "#".repeat(7), "-".repeat(23)));
        assert_eq!(bar(4, 4), format!("[{}]", "#".repeat(30)));
        assert_eq!(bar(5, 4), format!("[{}]", "#".repeat(30)));
        assert_eq!(bar(0, 0), format!("[{}]", "-".repeat(30)));
    }

    fn drawn(terminal: bool, before: &[&str], now: &[&str]) -> String {
        let mut bar = ProgressBar::new(terminal);
        bar.last_lines = before.iter().map(|l| l.to_string()).collect();
        bar.frame(&now.iter().map(|l| l.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn on_a_terminal_every_line_is_redrawn_from_the_first() {
        assert_eq!(drawn(true, &[], &["a", "b"]), "\r\x1b[Ja\nb");
        assert_eq!(drawn(true, &["a"], &["c"]), "\r\x1b[Jc");
        assert_eq!(
            drawn(true, &["a", "b", "c"], &["a", "d"]),
            "\x1b[2A\r\x1b[Ja\nd"
        );
        assert_eq!(drawn(true, &["a", "b"], &["a", "b"]), "");
    }

    #[test]
    fn erasing_clears_the_lines_on_a_terminal_only() {
        let lines = |l: &[&str]| l.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let mut bar = ProgressBar::new(true);
        bar.last_lines = lines(&["a", "b", "c"]);
        assert_eq!(bar.erase_frame(), "\x1b[2A\r\x1b[J");
        let mut bar = ProgressBar::new(false);
        bar.last_lines = lines(&["a", "b", "c"]);
        assert_eq!(bar.erase_frame(), "");
    }

    #[test]
    fn elsewhere_only_the_lines_that_changed_are_printed() {
        assert_eq!(drawn(false, &[], &["a", "b"]), "a\nb\n");
        assert_eq!(drawn(false, &["a", "b"], &["a", "c"]), "c\n");
        assert_eq!(drawn(false, &["a", "b"], &["a", "b"]), "");
    }
}
