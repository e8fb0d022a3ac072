//! A SIGKILL of the server under write load loses nothing it acknowledged
//! (issue 5, "Storage in sled"; sled 0.34 has open reports of corruption
//! after unclean shutdown, see STACK.md pitfall 8).
//!
//! A child process, `store-crash-writer`, writes node updates and reports
//! into a store in a tight loop and prints each write after the store has
//! returned from it. The test kills it with SIGKILL at a random moment
//! (during open, right after open, or after a random number of
//! acknowledged reports), reopens the store, and checks that every write
//! acknowledged in this round and all earlier ones is there and reads back
//! intact. All rounds use the same directory, so damage would accumulate.
//!
//! The kill moment is random; the seed is printed, and
//! `CMS_STORE_CRASH_SEED=N` replays a run. `CMS_STORE_CRASH_ROUNDS=N` runs
//! more rounds than the default 16, for a longer soak.
//!
//! What this proves: the store's writes reach the file before it
//! acknowledges them, and sled recovers from a log cut at any point. It
//! does not simulate a power cut (the kernel keeps what a killed process
//! wrote), which would need a VM or a fault-injecting block device.

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cms_server::store::{SledStore, Store as _, StoredReport};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const DEFAULT_ROUNDS: u64 = 16;
const MAX_ACKNOWLEDGED_PER_ROUND: u64 = 250;
/// A bound for each round, so a hung writer fails the test instead of
/// hanging CI. A round normally takes well under a second.
const ROUND_DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn a_sigkill_under_write_load_loses_no_acknowledged_write() {
    let seed = seed();
    let rounds = rounds();
    eprintln!("store_crash: seed {seed} (CMS_STORE_CRASH_SEED={seed} replays it)");
    let mut random = XorShift(seed.max(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("db");

    let mut acknowledged = Acknowledged::default();
    let mut log = String::new();
    for round in 0..rounds {
        let kill_at = match random.below(8) {
            0 => KillAt::Spawned,
            1 => KillAt::Opened,
            2 => KillAt::Acknowledged(1 + random.below(3)),
            _ => KillAt::Acknowledged(1 + random.below(MAX_ACKNOWLEDGED_PER_ROUND)),
        };
        let outcome = run_writer_and_kill(&db, round, kill_at, Instant::now() + ROUND_DEADLINE);
        let new_reports = outcome
            .lines
            .iter()
            .filter(|l| l.starts_with("ack "))
            .count();
        acknowledged.record(round, &outcome.lines);
        writeln!(
            log,
            "round {round}: kill at {kill_at:?}, {new_reports} reports acknowledged, {}",
            outcome.how_it_ended
        )
        .unwrap();
        if let Some(failure) = outcome.failure {
            panic!("seed {seed}\n{log}round {round}: {failure}");
        }

        let problems = check_store(&db, &acknowledged);
        if !problems.is_empty() {
            panic!(
                "seed {seed}\n{log}after round {round}, with {} reports acknowledged so far, \
                 the store has lost or damaged data:\n  {}",
                acknowledged.reports.len(),
                problems.join("\n  ")
            );
        }
    }
    eprintln!(
        "store_crash: {rounds} rounds, {} reports and {} node updates acknowledged, all present\n{log}",
        acknowledged.reports.len(),
        acknowledged.node_updates
    );
    assert!(
        acknowledged.reports.len() as u64 >= rounds,
        "the writer acknowledged too few reports to test anything\n{log}"
    );
}

#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// At once, most likely while sled opens and recovers the database.
    Spawned,
    /// As soon as the store is open, before the first write returns.
    Opened,
    /// After this many acknowledged reports, in the middle of later writes.
    Acknowledged(u64),
}

struct Outcome {
    /// Complete lines the writer printed before it died.
    lines: Vec<String>,
    how_it_ended: String,
    failure: Option<String>,
}

fn run_writer_and_kill(db: &Path, round: u64, kill_at: KillAt, deadline: Instant) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_store-crash-writer"))
        .arg(db)
        .arg(round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the writer starts");
    let (sender, receiver) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || read_complete_lines(stdout, sender));

    let mut lines = Vec::new();
    let mut reports = 0;
    let mut waiting_failure = None;
    let wanted = |lines: &[String], reports: u64| match kill_at {
        KillAt::Spawned => true,
        KillAt::Opened => lines.iter().any(|l| l == "opened"),
        KillAt::Acknowledged(n) => reports >= n,
    };
    while !wanted(&lines, reports) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(remaining) {
            Ok(line) => {
                reports += u64::from(line.starts_with("ack "));
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                waiting_failure = Some(format!(
                    "the writer did not reach {kill_at:?} before the test's deadline"
                ));
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                waiting_failure = Some(format!("the writer stopped by itself before {kill_at:?}"));
                break;
            }
        }
    }

    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
    // The child may already have exited; then kill fails and wait tells why.
    let _ = kill(pid, Signal::SIGKILL);
    let status = child.wait().expect("wait for the writer");
    // The writer is dead, so its pipe reaches end of file: the lines it
    // printed before dying were acknowledged too.
    lines.extend(receiver.iter());
    reader.join().expect("reader thread");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }

    use std::os::unix::process::ExitStatusExt;
    let how_it_ended = match status.signal() {
        Some(signal) => format!("ended by signal {signal}"),
        None => format!("exited with {status}"),
    };
    let failure = waiting_failure
        .map(|failure| format!("{failure} ({how_it_ended}); writer's stderr:\n{stderr}"));
    Outcome {
        lines,
        how_it_ended,
        failure,
    }
}

/// Sends each newline-terminated line; a last line cut off by the kill was
/// never acknowledged and is dropped.
fn read_complete_lines(stdout: impl Read, sender: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let Some(complete) = line.strip_suffix('\n') else {
                    return;
                };
                if sender.send(complete.to_string()).is_err() {
                    return;
                }
            }
        }
    }
}

#[derive(Default)]
struct Acknowledged {
    reports: Vec<AcknowledgedReport>,
    /// The newest acknowledged `last_seen_unix_ms` of each node.
    node_last_seen: BTreeMap<String, u64>,
    node_updates: u64,
}

struct AcknowledgedReport {
    round: u64,
    node_id: String,
    run_id: String,
    payload_len: usize,
}

impl Acknowledged {
    fn record(&mut self, round: u64, lines: &[String]) {
        for line in lines {
            let fields: Vec<&str> = line.split(' ').collect();
            match fields.as_slice() {
                ["opened"] => {}
                ["node", node_id, last_seen] => {
                    let last_seen: u64 = last_seen.parse().expect("a time");
                    let newest = self.node_last_seen.entry(node_id.to_string()).or_default();
                    *newest = (*newest).max(last_seen);
                    self.node_updates += 1;
                }
                ["ack", node_id, run_id, payload_len] => {
                    self.reports.push(AcknowledgedReport {
                        round,
                        node_id: node_id.to_string(),
                        run_id: run_id.to_string(),
                        payload_len: payload_len.parse().expect("a length"),
                    });
                }
                _ => panic!("unexpected line from the writer: {line:?}"),
            }
        }
    }
}

/// Opens the store and lists every way it differs from what was
/// acknowledged: an empty list means nothing was lost.
fn check_store(db: &Path, acknowledged: &Acknowledged) -> Vec<String> {
    let store = match SledStore::open(db) {
        Ok(store) => store,
        Err(error) => return vec![format!("the store does not open: {}", chain(&error))],
    };
    let mut problems = Vec::new();
    for expected in &acknowledged.reports {
        let what = format!(
            "report {} of {} (acknowledged in round {})",
            expected.run_id, expected.node_id, expected.round
        );
        match store.report(&expected.node_id, &expected.run_id) {
            Ok(Some(report)) => {
                if let Err(damage) = check_report(&report, expected) {
                    problems.push(format!("{what} is damaged: {damage}"));
                }
            }
            Ok(None) => problems.push(format!("{what} is missing")),
            Err(error) => problems.push(format!("{what} cannot be read: {}", chain(&error))),
        }
    }
    for (node_id, last_seen) in &acknowledged.node_last_seen {
        match store.node(node_id) {
            Ok(Some(node)) if node.last_seen_unix_ms >= *last_seen => {}
            Ok(Some(node)) => problems.push(format!(
                "node {node_id} went back in time: last seen {} after {last_seen} was acknowledged",
                node.last_seen_unix_ms
            )),
            Ok(None) => problems.push(format!("node {node_id} is missing")),
            Err(error) => {
                problems.push(format!("node {node_id} cannot be read: {}", chain(&error)))
            }
        }
    }
    // Everything stored must decode, including writes that were cut off
    // before they were acknowledged.
    match store.nodes() {
        Ok(nodes) => {
            for node in nodes {
                if let Err(error) = store.reports(&node.id, usize::MAX) {
                    problems.push(format!(
                        "the reports of node {} cannot be listed: {}",
                        node.id,
                        chain(&error)
                    ));
                }
            }
        }
        Err(error) => problems.push(format!("the nodes cannot be listed: {}", chain(&error))),
    }
    problems
}

fn check_report(report: &StoredReport, expected: &AcknowledgedReport) -> Result<(), String> {
    let run_id = report.report.run_id.as_str();
    if run_id != expected.run_id.as_str() {
        return Err(format!("its record has run_id {run_id:?}"));
    }
    let payload = report.report.note.as_str();
    let wanted: String = expected
        .run_id
        .chars()
        .cycle()
        .take(expected.payload_len)
        .collect();
    if payload != wanted {
        return Err(format!(
            "its payload has {} bytes, {} were written",
            payload.len(),
            expected.payload_len
        ));
    }
    Ok(())
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        write!(text, ": {cause}").unwrap();
        source = cause.source();
    }
    text
}

fn seed() -> u64 {
    if let Ok(seed) = std::env::var("CMS_STORE_CRASH_SEED") {
        return seed.parse().expect("CMS_STORE_CRASH_SEED is a number");
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    (u64::from(nanos) << 16) ^ u64::from(std::process::id()) | 1
}

fn rounds() -> u64 {
    match std::env::var("CMS_STORE_CRASH_ROUNDS") {
        Ok(rounds) => rounds.parse().expect("CMS_STORE_CRASH_ROUNDS is a number"),
        Err(_) => DEFAULT_ROUNDS,
    }
}

/// A small deterministic generator (xorshift64), enough to pick kill moments.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}
