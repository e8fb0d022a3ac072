//! Test-only helper for `cms-server/tests/store_crash.rs`; not part of the
//! server and not meant to be installed or run by hand.
//!
//! `store-crash-writer DB_DIR ROUND` opens the store in `DB_DIR`, prints
//! `opened`, then writes node updates and run reports from three threads in
//! tight loops until it is killed. After each write has returned, and only
//! then, it prints what was acknowledged, so every printed line is a
//! promise the store must keep across the SIGKILL that the test sends at a
//! random moment:
//!
//! - `node NODE_ID LAST_SEEN_UNIX_MS` after `put_node`;
//! - `ack NODE_ID RUN_ID PAYLOAD_LEN` after `put_report`.
//!
//! The report's run id is RUN_ID and its note P, where P is the run id
//! repeated up to PAYLOAD_LEN characters, so the test can check the bytes
//! it reads back. Some payloads are large (300 KB), which sled keeps
//! in separate blob files, a second path for a crash to damage.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;

use cms_proto::report::RunRecord;
use cms_server::store::{NodeRecord, NodeStatus, RunSummary, SledStore, Store as _, StoredReport};

/// Threads writing at the same time.
const WRITERS: u64 = 3;
/// Nodes each writer spreads its reports over.
const NODES_PER_WRITER: u64 = 2;
/// Every this many reports, one carries a large payload.
const LARGE_EVERY: u64 = 50;
const LARGE_PAYLOAD_LEN: usize = 300_000;
/// Keeps time values of different rounds apart and in order.
const ROUND_SPAN_MS: u64 = 10_000_000;
const BASE_UNIX_MS: u64 = 1_700_000_000_000;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(db_dir), Some(round)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: store-crash-writer DB_DIR ROUND");
    };
    let db_dir = PathBuf::from(db_dir);
    let round: u64 = round
        .to_str()
        .and_then(|round| round.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("ROUND must be a number"))?;

    let store = SledStore::open(&db_dir)?;
    acknowledge(format_args!("opened"))?;

    // Several writers at once, as when several agents report together; the
    // first one to fail ends the process.
    let (failed, first_failure) = mpsc::channel();
    for writer in 0..WRITERS {
        let store = store.clone();
        let failed = failed.clone();
        std::thread::spawn(move || {
            if let Err(error) = write_forever(&store, round, writer) {
                let _ = failed.send(error);
            }
        });
    }
    drop(failed);
    Err(first_failure.recv()?)
}

/// One writer's loop: each iteration updates a node, then stores a report.
fn write_forever(store: &SledStore, round: u64, writer: u64) -> anyhow::Result<()> {
    for i in 0u64.. {
        let now_unix_ms = BASE_UNIX_MS + round * ROUND_SPAN_MS + i;
        // Each writer has its own nodes, so a node's times only grow.
        let node_id = format!("node-{writer}-{}", i % NODES_PER_WRITER);
        let run_id = format!("round{round}-writer{writer}-run{i}");

        let node = NodeRecord {
            id: node_id.clone(),
            tags: BTreeMap::from([("role".to_string(), "api".to_string())]),
            facts: serde_json::json!({ "iteration": i }),
            certificate_serial: format!("serial-{node_id}"),
            first_seen_unix_ms: BASE_UNIX_MS,
            last_seen_unix_ms: now_unix_ms,
            last_run: Some(RunSummary {
                run_id: run_id.clone(),
                finished_unix_ms: now_unix_ms,
                catalog_id: "catalog".to_string(),
                revision: "commit".to_string(),
                changed: 1,
                failed: 0,
                skipped: 0,
                noop: false,
            }),
            status: NodeStatus::Active,
            gone_since_unix_ms: None,
            attested: Default::default(),
            environment: String::new(),
        };
        store.put_node(&node)?;
        acknowledge(format_args!("node {node_id} {now_unix_ms}"))?;

        let payload_len = if i % LARGE_EVERY == LARGE_EVERY - 1 {
            LARGE_PAYLOAD_LEN
        } else {
            // Varied sizes, so records straddle sled's buffer boundaries.
            usize::try_from((i * 7_919 + round * 104_729 + writer * 31) % 16_384 + 1)?
        };
        let report = StoredReport {
            node_id: node_id.clone(),
            run_id: run_id.clone(),
            received_unix_ms: now_unix_ms,
            report: RunRecord {
                version: cms_proto::report::RUN_RECORD_VERSION,
                run_id: run_id.clone(),
                catalog_id: String::new(),
                revision: String::new(),
                started_at_unix_ms: now_unix_ms as i64,
                duration_ms: 0,
                noop: false,
                note: payload(&run_id, payload_len),
                trigger_id: String::new(),
                resources: Vec::new(),
            },
        };
        store.put_report(&report)?;
        acknowledge(format_args!("ack {node_id} {run_id} {payload_len}"))?;
    }
    Ok(())
}

/// The run id repeated up to `len` characters (run ids are ASCII).
fn payload(run_id: &str, len: usize) -> String {
    run_id.chars().cycle().take(len).collect()
}

/// Prints one whole line and flushes it, so the test sees it before this
/// writer starts its next write. A closed pipe (the test went away) ends
/// the writer.
fn acknowledge(line: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}
