//! `cms-server rollout list|status|pause|resume|abort|promote`: the
//! rollouts of each environment's commits through its nodes, asked of the
//! admin API (`ListRollouts`, `RolloutStatus`, `ControlRollout`). What is
//! printed is made by pure functions of the answers (`status_text`,
//! `status_json`, `progress_lines`, `list_text`); the commands only ask
//! and print.
//!
//! Exit status: 0 ok; 1 the server refused the request (an unknown
//! environment or rollout, an action the rollout's state does not allow);
//! 3 the server cannot be reached; `rollout status` exits 4 when the
//! rollout was rolled back or aborted, as a stopped trigger does.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use cms_proto::v1 as pb;

use crate::admin::refusal;
use crate::cli::{Format, RolloutControlArgs, RolloutListArgs, RolloutStatusArgs};
use crate::dashboard::format_time;
use crate::resolve::{AdminTarget, RolloutAction};
use crate::trigger_cli::{EXIT_FAILED, ProgressBar, bar, node_outcome_json};

/// How often `rollout status --follow` asks again.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// `rollout list`: the rollouts, newest first, as a table or JSON.
pub async fn list(args: RolloutListArgs, admin: &AdminTarget) -> anyhow::Result<ExitCode> {
    let mut client = crate::admin::connect_as(admin).await?;
    let request = pb::ListRolloutsRequest {
        environment: args.environment.unwrap_or_default(),
        limit: 0,
    };
    let rollouts = match client.list_rollouts(request).await {
        Ok(response) => response.into_inner().rollouts,
        Err(status) => return refusal(status),
    };
    match admin.format {
        Format::Json => println!("{}", pretty(&list_json(&rollouts))),
        Format::Text => print!("{}", list_text(&rollouts)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `rollout status`: one rollout at length; with `--follow`, its progress
/// on stderr every second until it ends, then the same at length.
pub async fn status(args: RolloutStatusArgs, admin: &AdminTarget) -> anyhow::Result<ExitCode> {
    let mut client = crate::admin::connect_as(admin).await?;
    let mut request = pb::RolloutStatusRequest {
        environment: args.environment.unwrap_or_default(),
        rollout_id: args.rollout_id.unwrap_or_default(),
    };
    let mut progress = match client.rollout_status(request.clone()).await {
        Ok(response) => response.into_inner(),
        Err(status) => return refusal(status),
    };
    if args.follow {
        // The rollout followed is the one first answered, even when a
        // waiting commit starts the next one as soon as it ends.
        request.environment = progress.environment.clone();
        request.rollout_id = progress.rollout_id.clone();
        let mut bar = ProgressBar::new(std::io::stderr().is_terminal());
        loop {
            bar.draw(progress_lines(&progress));
            if !is_in_progress(&progress.state) {
                break;
            }
            tokio::time::sleep(FOLLOW_INTERVAL).await;
            progress = match client.rollout_status(request.clone()).await {
                Ok(response) => response.into_inner(),
                Err(status) => {
                    bar.finish();
                    eprintln!(
                        "warning: stopped following; the rollout goes on in the server: cms-server rollout status --env {} {}",
                        request.environment, request.rollout_id
                    );
                    return refusal(status);
                }
            };
        }
        bar.erase();
    }
    match admin.format {
        Format::Json => println!("{}", pretty(&status_json(&progress))),
        Format::Text => print!("{}", status_text(&progress)),
    }
    Ok(ExitCode::from(status_exit_code(&progress.state)))
}

/// `rollout pause|resume|abort|promote`: the rollout as the action left it.
pub async fn control(
    action: RolloutAction,
    args: RolloutControlArgs,
    admin: &AdminTarget,
) -> anyhow::Result<ExitCode> {
    let mut client = crate::admin::connect_as(admin).await?;
    let request = pb::ControlRolloutRequest {
        environment: args.environment.unwrap_or_default(),
        rollout_id: args.rollout_id.unwrap_or_default(),
        action: action.as_str().to_owned(),
    };
    let progress = match client.control_rollout(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return refusal(status),
    };
    match admin.format {
        Format::Json => println!("{}", pretty(&status_json(&progress))),
        Format::Text => print!("{}", control_text(action, &progress)),
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `rollout status --follow` keeps asking: the rollout may still
/// move (a paused one is resumed by an operator).
fn is_in_progress(state: &str) -> bool {
    matches!(state, "running" | "baking" | "paused")
}

/// `rollout status`'s exit status for a rollout in `state`.
fn status_exit_code(state: &str) -> u8 {
    match state {
        "rolled_back" | "aborted" => EXIT_FAILED,
        _ => 0,
    }
}

/// A commit id as the tables show it: its first 12 digits, `-` for none.
pub(crate) fn short_revision(revision: &str) -> String {
    if revision.is_empty() {
        return "-".to_owned();
    }
    revision.chars().take(12).collect()
}

/// A time of the API (unix ms) for people, `-` for none.
pub(crate) fn time_text(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".to_owned();
    }
    format_time(unix_ms as u64)
}

/// Seconds as `cms.toml` writes durations: `45s`, `2m`, `1h30m`.
fn duration_text(seconds: u64) -> String {
    let (hours, minutes, seconds) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    let mut text = String::new();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 || text.is_empty() {
        text.push_str(&format!("{seconds}s"));
    }
    text
}

/// The rollout's first line: id, environment, revisions and state.
fn header(progress: &pb::RolloutProgress) -> String {
    let mut state = progress.state.clone();
    if progress.state == "baking" && progress.bake_until_unix_ms > 0 {
        state.push_str(&format!(
            " until {}",
            time_text(progress.bake_until_unix_ms)
        ));
    }
    format!(
        "rollout {} ({}): {} → {}, {state}",
        progress.rollout_id,
        progress.environment,
        short_revision(&progress.from_revision),
        short_revision(&progress.to_revision),
    )
}

/// How a wave's nodes stand.
#[derive(Debug, Default, PartialEq, Eq)]
struct WaveCounts {
    total: u64,
    changed: u64,
    unchanged: u64,
    failed: u64,
    unreachable: u64,
}

impl WaveCounts {
    fn of(nodes: &[pb::TriggerNodeOutcome]) -> WaveCounts {
        let mut counts = WaveCounts {
            total: nodes.len() as u64,
            ..WaveCounts::default()
        };
        for node in nodes {
            match node.result.as_str() {
                "changed" => counts.changed += 1,
                "unchanged" => counts.unchanged += 1,
                "failed" => counts.failed += 1,
                "unreachable" => counts.unreachable += 1,
                _ => {}
            }
        }
        counts
    }

    fn done(&self) -> u64 {
        self.changed + self.unchanged + self.failed + self.unreachable
    }
}

/// One wave as its progress bar's line, its name padded to `name_width`.
fn wave_line(wave: &pb::RolloutWave, name_width: usize) -> String {
    let counts = WaveCounts::of(&wave.nodes);
    let done = counts.done();
    format!(
        "{:<name_width$} {} {done}/{}: {} changed, {} unchanged, {} failed, {} unreachable{}",
        wave.name,
        bar(done, counts.total),
        counts.total,
        counts.changed,
        counts.unchanged,
        counts.failed,
        counts.unreachable,
        if wave.started_unix_ms <= 0 {
            " (not started)"
        } else {
            ""
        }
    )
}

/// What `--follow` draws: the header, the message, a bar per wave.
fn progress_lines(progress: &pb::RolloutProgress) -> Vec<String> {
    let mut lines = vec![header(progress)];
    if !progress.message.is_empty() {
        lines.push(format!("  {}", progress.message));
    }
    let name_width = progress
        .waves
        .iter()
        .map(|wave| wave.name.chars().count())
        .max()
        .unwrap_or(0);
    lines.extend(
        progress
            .waves
            .iter()
            .map(|wave| format!("  {}", wave_line(wave, name_width))),
    );
    lines
}

/// The policy the rollout follows, for people.
fn policy_text(policy: Option<&pb::RolloutPolicy>) -> String {
    let Some(policy) = policy else {
        return "none (every node at once)".to_owned();
    };
    let batch = if policy.batch.is_empty() || policy.batch == "100%" {
        "the rest at once".to_owned()
    } else {
        policy.batch.clone()
    };
    format!(
        "canary {}, batch {batch}, bake {}, max failures {}, timeout {}",
        policy.canary,
        duration_text(policy.bake_seconds),
        policy.max_failures,
        duration_text(policy.timeout_seconds)
    )
}

/// `rollout status` at length.
fn status_text(progress: &pb::RolloutProgress) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(header(progress));
    if !progress.message.is_empty() {
        line(format!("  {}", progress.message));
    }
    line(format!(
        "  policy: {}",
        policy_text(progress.policy.as_ref())
    ));
    line(format!(
        "  started {}, finished {}",
        time_text(progress.started_unix_ms),
        time_text(progress.finished_unix_ms)
    ));
    line(format!(
        "  wave {}/{}, {} node(s) unchanged (moved at once), {} failure(s)",
        progress.current_wave,
        progress.waves.len(),
        progress.unchanged_nodes,
        progress.failures
    ));
    let name_width = progress
        .waves
        .iter()
        .map(|wave| wave.name.chars().count())
        .max()
        .unwrap_or(0);
    for wave in &progress.waves {
        line(format!("  {}", wave_line(wave, name_width)));
    }
    let failures: Vec<(&str, &pb::TriggerNodeOutcome)> = progress
        .waves
        .iter()
        .flat_map(|wave| {
            wave.nodes
                .iter()
                .map(move |node| (wave.name.as_str(), node))
        })
        .filter(|(_, node)| matches!(node.result.as_str(), "failed" | "unreachable"))
        .collect();
    if !failures.is_empty() {
        line("  failures:".to_owned());
        for (wave, node) in failures {
            line(format!(
                "    {:<24} {:<12} {:<12} {}",
                node.node_id, wave, node.result, node.run_id
            ));
        }
    }
    if !progress.rollback.is_empty() {
        line(format!(
            "  rolled back to {}:",
            short_revision(&progress.from_revision)
        ));
        for node in &progress.rollback {
            line(format!(
                "    {:<24} {:<12} {}",
                node.node_id, node.result, node.run_id
            ));
        }
    }
    if !progress.pinned_nodes.is_empty() {
        line(format!(
            "  pinned (passed by): {}",
            progress.pinned_nodes.join(", ")
        ));
    }
    if !progress.actions.is_empty() {
        line("  actions:".to_owned());
        for action in &progress.actions {
            line(format!("    {action}"));
        }
    }
    line("Diff:".to_owned());
    if progress.diff_summary.trim().is_empty() {
        line("  (none stored)".to_owned());
    }
    for diff_line in progress.diff_summary.lines() {
        if diff_line.is_empty() {
            line(String::new());
        } else {
            line(format!("  {diff_line}"));
        }
    }
    out
}

/// What `rollout pause|resume|abort|promote` prints.
fn control_text(action: RolloutAction, progress: &pb::RolloutProgress) -> String {
    let done = match action {
        RolloutAction::Pause => "paused",
        RolloutAction::Resume => "resumed",
        RolloutAction::Abort => "aborted",
        RolloutAction::Promote => "promoted",
    };
    let mut out = format!("{done}: {}\n", header(progress));
    if !progress.message.is_empty() {
        out.push_str(&format!("  {}\n", progress.message));
    }
    out
}

/// A rollout with every field, as JSON.
fn status_json(progress: &pb::RolloutProgress) -> serde_json::Value {
    let nodes =
        |nodes: &[pb::TriggerNodeOutcome]| nodes.iter().map(node_outcome_json).collect::<Vec<_>>();
    serde_json::json!({
        "rollout_id": progress.rollout_id,
        "environment": progress.environment,
        "from_revision": progress.from_revision,
        "to_revision": progress.to_revision,
        "state": progress.state,
        "message": progress.message,
        "policy": progress.policy.as_ref().map(|policy| serde_json::json!({
            "canary": policy.canary,
            "batch": policy.batch,
            "bake_seconds": policy.bake_seconds,
            "max_failures": policy.max_failures,
            "timeout_seconds": policy.timeout_seconds,
        })),
        "current_wave": progress.current_wave,
        "waves": progress.waves.iter().map(|wave| serde_json::json!({
            "name": wave.name,
            "started_unix_ms": wave.started_unix_ms,
            "finished_unix_ms": wave.finished_unix_ms,
            "nodes": nodes(&wave.nodes),
        })).collect::<Vec<_>>(),
        "unchanged_nodes": progress.unchanged_nodes,
        "failures": progress.failures,
        "rollback": nodes(&progress.rollback),
        "pinned_nodes": progress.pinned_nodes,
        "actions": progress.actions,
        "diff_summary": progress.diff_summary,
        "started_unix_ms": progress.started_unix_ms,
        "finished_unix_ms": progress.finished_unix_ms,
        "bake_until_unix_ms": progress.bake_until_unix_ms,
    })
}

fn list_json(rollouts: &[pb::RolloutProgress]) -> serde_json::Value {
    serde_json::Value::Array(rollouts.iter().map(status_json).collect())
}

/// `rollout list` as a table, newest first as the server sends them.
fn list_text(rollouts: &[pb::RolloutProgress]) -> String {
    let mut out = format!(
        "{:<16} {:<16} {:<12} {:<6} {:<27} STARTED\n",
        "ROLLOUT", "ENVIRONMENT", "STATE", "WAVE", "FROM → TO"
    );
    for rollout in rollouts {
        out.push_str(&format!(
            "{:<16} {:<16} {:<12} {:<6} {:<27} {}\n",
            rollout.rollout_id,
            rollout.environment,
            rollout.state,
            format!("{}/{}", rollout.current_wave, rollout.waves.len()),
            format!(
                "{} → {}",
                short_revision(&rollout.from_revision),
                short_revision(&rollout.to_revision)
            ),
            time_text(rollout.started_unix_ms)
        ));
    }
    out
}

pub(crate) fn pretty(json: &serde_json::Value) -> String {
    serde_json::to_string_pretty(json).expect("JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    const FROM: &str = "3f2a9c1e0b7d55aa00112233445566778899aabb";
    const TO: &str = "8be04d2a91c3ffee00112233445566778899aabb";

    fn node(id: &str, batch: u32, result: &str) -> pb::TriggerNodeOutcome {
        pb::TriggerNodeOutcome {
            node_id: id.to_owned(),
            result: result.to_owned(),
            batch,
            run_id: format!("run-{id}"),
            reason: String::new(),
        }
    }

    /// A rollout of 5 nodes: its canary converged, its second wave has a
    /// failed node and one still running, its third not started.
    fn rollout(state: &str) -> pb::RolloutProgress {
        pb::RolloutProgress {
            rollout_id: "r1764108000000".to_owned(),
            environment: "staging".to_owned(),
            from_revision: FROM.to_owned(),
            to_revision: TO.to_owned(),
            state: state.to_owned(),
            message: "waiting for web-3".to_owned(),
            waves: vec![
                pb::RolloutWave {
                    name: "canary".to_owned(),
                    nodes: vec![node("web-1", 1, "changed")],
                    started_unix_ms: 1_764_108_000_000,
                    finished_unix_ms: 1_764_108_010_000,
                },
                pb::RolloutWave {
                    name: "wave 2".to_owned(),
                    nodes: vec![node("web-2", 2, "failed"), node("web-3", 2, "running")],
                    started_unix_ms: 1_764_108_130_000,
                    finished_unix_ms: 0,
                },
                pb::RolloutWave {
                    name: "wave 3".to_owned(),
                    nodes: vec![node("web-4", 3, "pending"), node("web-5", 3, "pending")],
                    started_unix_ms: 0,
                    finished_unix_ms: 0,
                },
            ],
            current_wave: 2,
            unchanged_nodes: 7,
            failures: 1,
            policy: Some(pb::RolloutPolicy {
                canary: 1,
                batch: "40%".to_owned(),
                bake_seconds: 120,
                max_failures: 1,
                timeout_seconds: 600,
            }),
            diff_summary: "diff 3f2a9c1e0b7d..8be04d2a91c3: 5 nodes\n\n5 nodes (role=web) change: web-1, web-2, web-3, web-4, web-5\n  package:nginx changed\n".to_owned(),
            started_unix_ms: 1_764_108_000_000,
            finished_unix_ms: 0,
            bake_until_unix_ms: 0,
            rollback: vec![node("web-1", 1, "changed")],
            pinned_nodes: vec!["db-1".to_owned(), "db-2".to_owned()],
            actions: vec!["pause by alice at 2025-11-25 22:05:00 UTC".to_owned()],
        }
    }

    #[test]
    fn each_wave_is_a_bar_of_its_finished_nodes() {
        let lines = progress_lines(&rollout("running"));
        assert_eq!(
            lines,
            [
                "rollout r1764108000000 (staging): 3f2a9c1e0b7d → 8be04d2a91c3, running".to_owned(),
                "  waiting for web-3".to_owned(),
                format!(
                    "  canary {} 1/1: 1 changed, 0 unchanged, 0 failed, 0 unreachable",
                    bar(1, 1)
                ),
                format!(
                    "  wave 2 {} 1/2: 0 changed, 0 unchanged, 1 failed, 0 unreachable",
                    bar(1, 2)
                ),
                format!(
                    "  wave 3 {} 0/2: 0 changed, 0 unchanged, 0 failed, 0 unreachable (not started)",
                    bar(0, 2)
                ),
            ]
        );
    }

    #[test]
    fn a_baking_rollout_says_until_when() {
        let mut progress = rollout("baking");
        progress.bake_until_unix_ms = 1_764_108_120_000;
        assert!(
            header(&progress).ends_with(", baking until 2025-11-25 22:02:00 UTC"),
            "{}",
            header(&progress)
        );
    }

    #[test]
    fn the_status_shows_policy_failures_rollback_pins_actions_and_the_diff_last() {
        let text = status_text(&rollout("rolled_back"));
        let expected_in_order = [
            "rollout r1764108000000 (staging): 3f2a9c1e0b7d → 8be04d2a91c3, rolled_back\n",
            "  policy: canary 1, batch 40%, bake 2m, max failures 1, timeout 10m\n",
            "  started 2025-11-25 22:00:00 UTC, finished -\n",
            "  wave 2/3, 7 node(s) unchanged (moved at once), 1 failure(s)\n",
            "  canary [",
            "  wave 2 [",
            "  wave 3 [",
            "  failures:\n    web-2",
            "  rolled back to 3f2a9c1e0b7d:\n    web-1",
            "  pinned (passed by): db-1, db-2\n",
            "  actions:\n    pause by alice at 2025-11-25 22:05:00 UTC\n",
            "Diff:\n  diff 3f2a9c1e0b7d..8be04d2a91c3: 5 nodes\n\n  5 nodes (role=web) change",
        ];
        let mut from = 0;
        for expected in expected_in_order {
            let at = text[from..]
                .find(expected)
                .unwrap_or_else(|| panic!("{expected:?} after byte {from} of:\n{text}"));
            from += at + expected.len();
        }
        assert!(
            !text.contains("web-3    "),
            "a running node is no failure:\n{text}"
        );
    }

    #[test]
    fn a_rollout_without_a_policy_table_says_every_node_at_once() {
        let mut progress = rollout("done");
        progress.policy = None;
        assert!(
            status_text(&progress).contains("  policy: none (every node at once)\n"),
            "{}",
            status_text(&progress)
        );
        progress.policy = Some(pb::RolloutPolicy {
            canary: 0,
            batch: String::new(),
            bake_seconds: 5400,
            max_failures: 0,
            timeout_seconds: 60,
        });
        assert_eq!(
            policy_text(progress.policy.as_ref()),
            "canary 0, batch the rest at once, bake 1h30m, max failures 0, timeout 1m"
        );
    }

    #[test]
    fn the_json_has_every_field_of_the_rollout() {
        let json = status_json(&rollout("running"));
        let keys: Vec<&str> = json
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "actions",
            "bake_until_unix_ms",
            "current_wave",
            "diff_summary",
            "environment",
            "failures",
            "finished_unix_ms",
            "from_revision",
            "message",
            "pinned_nodes",
            "policy",
            "rollback",
            "rollout_id",
            "started_unix_ms",
            "state",
            "to_revision",
            "unchanged_nodes",
            "waves",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(json["from_revision"], FROM);
        assert_eq!(json["policy"]["batch"], "40%");
        assert_eq!(json["policy"]["bake_seconds"], 120);
        assert_eq!(json["waves"][1]["name"], "wave 2");
        assert_eq!(
            json["waves"][1]["nodes"][0],
            serde_json::json!({"node": "web-2", "batch": 2, "result": "failed", "run_id": "run-web-2", "reason": ""})
        );
        assert_eq!(json["rollback"][0]["node"], "web-1");
        assert_eq!(json["pinned_nodes"], serde_json::json!(["db-1", "db-2"]));
        let mut no_policy = rollout("done");
        no_policy.policy = None;
        assert_eq!(status_json(&no_policy)["policy"], serde_json::Value::Null);
    }

    #[test]
    fn status_exits_4_only_for_a_rolled_back_or_aborted_rollout() {
        for (state, code) in [
            ("running", 0),
            ("baking", 0),
            ("paused", 0),
            ("done", 0),
            ("promoted", 0),
            ("rolled_back", 4),
            ("aborted", 4),
        ] {
            assert_eq!(status_exit_code(state), code, "{state}");
        }
    }

    #[test]
    fn follow_goes_on_through_a_pause_and_stops_when_the_rollout_ends() {
        for state in ["running", "baking", "paused"] {
            assert!(is_in_progress(state), "{state}");
        }
        for state in ["done", "promoted", "rolled_back", "aborted", "interrupted"] {
            assert!(!is_in_progress(state), "{state}");
        }
    }

    #[test]
    fn the_list_is_a_table_with_wave_revisions_and_start() {
        let mut second = rollout("done");
        second.rollout_id = "r1764100000000".to_owned();
        second.environment = "production".to_owned();
        second.current_wave = 3;
        let text = list_text(&[rollout("running"), second]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ROLLOUT "), "{text}");
        for (line, expected) in lines[1..].iter().zip([
            ["r1764108000000", "staging", "running", "2/3"],
            ["r1764100000000", "production", "done", "3/3"],
        ]) {
            let columns: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(columns[..4], expected, "{line}");
            assert!(line.contains("3f2a9c1e0b7d → 8be04d2a91c3"), "{line}");
            assert!(line.ends_with("2025-11-25 22:00:00 UTC"), "{line}");
        }
        assert_eq!(list_json(&[rollout("done")])[0]["state"], "done");
    }

    #[test]
    fn an_action_names_what_it_did() {
        assert_eq!(
            control_text(RolloutAction::Abort, &rollout("aborted")),
            "aborted: rollout r1764108000000 (staging): 3f2a9c1e0b7d → 8be04d2a91c3, aborted\n  waiting for web-3\n"
        );
    }

    fn parsed(line: &[&str]) -> Result<crate::cli::Command, clap::Error> {
        use clap::Parser as _;
        crate::cli::Cli::try_parse_from(std::iter::once("cms-server").chain(line.iter().copied()))
            .map(|cli| cli.command)
    }

    #[test]
    fn status_takes_an_environment_a_rollout_id_and_a_format_in_any_order() {
        use crate::cli::{Command, RolloutCommand};
        let command = parsed(&[
            "rollout", "status", "--env", "staging", "r123", "--format", "json",
        ])
        .expect("parses");
        let Command::Rollout(RolloutCommand::Status(args)) = command else {
            panic!("{command:?}")
        };
        assert_eq!(args.environment.as_deref(), Some("staging"));
        assert_eq!(args.rollout_id.as_deref(), Some("r123"));
        assert!(!args.follow);
        assert_eq!(args.admin.format, Format::Json);
        let command = parsed(&["rollout", "status", "--follow"]).expect("parses");
        let Command::Rollout(RolloutCommand::Status(args)) = command else {
            panic!("{command:?}")
        };
        assert!(args.follow);
        assert_eq!((args.environment, args.rollout_id), (None, None));
    }

    #[test]
    fn each_action_is_a_subcommand_and_resolves_to_its_name() {
        use crate::resolve::{Environment, Invocation, resolve};
        let env = Environment {
            home: Some("/nonexistent-home".into()),
            xdg_state_home: None,
            packaged_data_dir: "/nonexistent-packaged".into(),
        };
        for action in ["pause", "resume", "abort", "promote"] {
            let command = parsed(&["rollout", action, "--env", "production", "r9"])
                .unwrap_or_else(|e| panic!("{action}: {e}"));
            let Invocation::RolloutControl {
                action: resolved,
                args,
                ..
            } = resolve(command, &env)
            else {
                panic!("{action}")
            };
            assert_eq!(resolved.as_str(), action);
            assert_eq!(args.environment.as_deref(), Some("production"));
            assert_eq!(args.rollout_id.as_deref(), Some("r9"));
        }
    }

    #[test]
    fn an_unknown_action_or_a_stray_flag_is_refused_by_the_parser() {
        let error = parsed(&["rollout", "restart"]).expect_err("no such action");
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidSubcommand);
        let error = parsed(&["rollout", "pause", "--follow"]).expect_err("status only");
        assert_eq!(error.kind(), clap::error::ErrorKind::UnknownArgument);
        assert!(
            parsed(&["rollout", "list", "r1"]).is_err(),
            "list takes no id"
        );
    }

    #[test]
    fn diff_and_environments_take_their_flags() {
        use crate::cli::Command;
        let command = parsed(&["diff", "--env", "staging", "--from", "3f2a9c1"]).expect("parses");
        let Command::Diff(args) = command else {
            panic!("{command:?}")
        };
        assert_eq!(args.environment.as_deref(), Some("staging"));
        let command = parsed(&["environments", "--format", "json"]).expect("parses");
        let Command::Environments(admin) = command else {
            panic!("{command:?}")
        };
        assert_eq!(admin.format, Format::Json);
    }

    #[test]
    fn durations_read_as_cms_toml_writes_them() {
        assert_eq!(duration_text(0), "0s");
        assert_eq!(duration_text(45), "45s");
        assert_eq!(duration_text(120), "2m");
        assert_eq!(duration_text(3600), "1h");
        assert_eq!(duration_text(3725), "1h2m5s");
    }
}
