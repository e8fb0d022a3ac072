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
                bar.draw(&progress);
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

/// A one-line bar on a terminal, redrawn in place; elsewhere (a log, CI)
/// one line each time a node finishes.
struct ProgressBar {
    terminal: bool,
    last_line: String,
}

impl ProgressBar {
    fn new(terminal: bool) -> ProgressBar {
        ProgressBar {
            terminal,
            last_line: String::new(),
        }
    }

    fn draw(&mut self, progress: &pb::TriggerProgress) {
        const WIDTH: usize = 30;
        let total = progress.total.max(1) as usize;
        let filled = WIDTH * progress.done as usize / total;
        let line = format!(
            "[{}{}] {}/{} batch {}/{}: {} changed, {} unchanged, {} failed, {} unreachable",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            progress.done,
            progress.total,
            progress.batch,
            progress.batches,
            progress.changed,
            progress.unchanged,
            progress.failed,
            progress.unreachable
        );
        if line == self.last_line {
            return;
        }
        let mut stderr = std::io::stderr();
        if self.terminal {
            let _ = write!(stderr, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(stderr, "{line}");
        }
        let _ = stderr.flush();
        self.last_line = line;
    }

    fn finish(&mut self) {
        if self.terminal && !self.last_line.is_empty() {
            eprintln!();
        }
    }
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
                "nodes": progress.nodes.iter().map(|n| serde_json::json!({
                    "node": n.node_id, "batch": n.batch, "result": n.result, "run_id": n.run_id,
                })).collect::<Vec<_>>(),
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
            }
        }
    }
}
