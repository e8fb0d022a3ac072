//! The fleet dashboard with 10,000 nodes: reading every node from the
//! store (what both the fleet page and a metrics scrape do) and rendering
//! the fleet page, whole and filtered by role.
//!
//! Each node has 3 tags, a last run, and about 50 facts (what a small
//! Debian instance reports), stored in a real `Store` (sled) in a temporary
//! folder. Run with `cargo bench -p cms-server --bench dashboard`.

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use cms_server::dashboard::{FleetFilter, FleetView, render_fleet};
use cms_server::store::{NodeRecord, NodeStatus, RunSummary, SledStore, Store as _};

const NODES: usize = 10_000;
const RUNS: usize = 15;

fn facts(i: usize) -> serde_json::Value {
    let mut facts = serde_json::Map::new();
    facts.insert(
        "hostname".into(),
        format!("ip-10-0-{}-{}", i / 250, i % 250).into(),
    );
    facts.insert(
        "os".into(),
        serde_json::json!({"id": "debian", "version_id": "12", "codename": "bookworm"}),
    );
    facts.insert("memory_total_bytes".into(), 4_294_967_296u64.into());
    facts.insert("processors".into(), 2.into());
    for n in 0..45 {
        facts.insert(format!("fact_{n}"), format!("value {n} of node {i}").into());
    }
    serde_json::Value::Object(facts)
}

fn node(i: usize) -> NodeRecord {
    let role = ["web", "api", "db", "worker", "cache"][i % 5];
    let env = ["prod", "staging"][i % 2];
    NodeRecord {
        id: format!("{role}-{i:05}"),
        tags: [
            ("role".to_string(), role.to_string()),
            ("env".to_string(), env.to_string()),
            (
                "az".to_string(),
                format!("eu-west-1{}", ["a", "b", "c"][i % 3]),
            ),
        ]
        .into(),
        facts: facts(i),
        certificate_serial: format!("{i:032x}"),
        first_seen_unix_ms: 1_764_000_000_000,
        last_seen_unix_ms: 1_764_000_000_000 + i as u64,
        last_run: (!i.is_multiple_of(50)).then(|| RunSummary {
            run_id: format!("run-{i}"),
            finished_unix_ms: 1_764_000_000_000 + i as u64,
            catalog_id: format!("{:064x}", i % 5),
            revision: if i.is_multiple_of(10) {
                "a".repeat(40)
            } else {
                "b".repeat(40)
            },
            changed: u32::from(i.is_multiple_of(7)),
            failed: u32::from(i.is_multiple_of(97)),
            skipped: 0,
            noop: false,
        }),
        status: NodeStatus::Active,
        gone_since_unix_ms: None,
        attested: Default::default(),
        environment: String::new(),
    }
}

fn time<T>(mut work: impl FnMut() -> T) -> (Vec<Duration>, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..RUNS {
        let started = Instant::now();
        last = Some(work());
        times.push(started.elapsed());
    }
    times.sort();
    (times, last.expect("ran"))
}

fn print(step: &str, times: &[Duration]) {
    println!(
        "| {step} | {:.1} ms | {:.1} ms |",
        times[times.len() / 2].as_secs_f64() * 1000.0,
        times[times.len() - 1].as_secs_f64() * 1000.0
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledStore::open(&dir.path().join("db")).expect("store");
    for i in 0..NODES {
        store.put_node(&node(i)).expect("put");
    }
    println!("{NODES} nodes, {RUNS} runs each\n");
    println!("| step | median | worst |");
    println!("| --- | --- | --- |");
    let (times, nodes) = time(|| store.nodes().expect("nodes"));
    assert_eq!(nodes.len(), NODES);
    print("read every node from the store", &times);
    let view = FleetView {
        nodes,
        current_revision: Some("b".repeat(40)),
        last_synced: None,
        triggers: Vec::new(),
        environments: Vec::new(),
        now_unix_ms: 1_764_000_100_000,
    };
    let (times, html) = time(|| render_fleet(&view, &FleetFilter::default()));
    print("render the fleet page (first 2,000 rows)", &times);
    let filter = FleetFilter {
        role: Some("api".into()),
        status: None,
    };
    let (times, filtered) = time(|| render_fleet(&view, &filter));
    print("render the fleet page for one role (2,000 nodes)", &times);
    println!(
        "\npage size: {:.0} KiB whole, {:.0} KiB for one role",
        html.len() as f64 / 1024.0,
        filtered.len() as f64 / 1024.0
    );
}
