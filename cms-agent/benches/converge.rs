//! The check that runs every 30 minutes on every instance must be nearly
//! free. This benchmark builds a role of 200 template-rendered files, 50
//! static files, 20 symlinks, 5 directories and 5 packages that are already
//! installed, applies it once with the real `cms-agent apply` binary, then
//! times whole-process runs:
//!
//! - the no-op run (nothing changed on the machine), and
//! - a drift-repair run (10 files deleted, 10 edited),
//!
//! and reports each run's peak memory (max RSS of the child process).
//!
//! Run with `cargo bench -p cms-agent --bench converge`. Everything it
//! writes stays under a temporary directory; the packages are ones every
//! Debian system has, so nothing is installed.

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 21;

#[path = "support/bench_role.rs"]
mod bench_role;
use bench_role::build_repository;

struct Run {
    elapsed: Duration,
    max_rss_kb: i64,
    code: Option<i32>,
}

fn apply(repo: &Path, state: &Path) -> Run {
    let before = children_max_rss();
    let start = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_cms-agent"))
        .args(["apply", "--repo"])
        .arg(repo)
        .args(["--tags", "role=bench", "--state-dir"])
        .arg(state)
        .output()
        .expect("cms-agent runs");
    let elapsed = start.elapsed();
    let code = output.status.code();
    if !matches!(code, Some(0) | Some(2)) {
        panic!(
            "cms-agent apply failed ({code:?}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // ru_maxrss of children is the largest of any child so far; every run
    // is the same program on the same role, so the figure is that of a run.
    Run {
        elapsed,
        max_rss_kb: children_max_rss().max(before),
        code,
    }
}

fn children_max_rss() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|usage| usage.max_rss())
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report(name: &str, mut runs: Vec<Run>) {
    runs.sort_by_key(|r| r.elapsed);
    let median = &runs[runs.len() / 2];
    let max_rss = runs.iter().map(|r| r.max_rss_kb).max().unwrap_or(0);
    println!(
        "{name:<28} median {:7.1} ms   min {:7.1} ms   max {:7.1} ms   peak RSS {:5.1} MB   exit {:?}",
        ms(median.elapsed),
        ms(runs[0].elapsed),
        ms(runs[runs.len() - 1].elapsed),
        max_rss as f64 / 1024.0,
        median.code
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let target = dir.path().join("target");
    let state = dir.path().join("state");
    build_repository(&repo, &target);
    // The role manages what is inside `target`, as a role manages what is
    // inside `/etc`.
    std::fs::create_dir_all(&target).expect("mkdir");

    let first = apply(&repo, &state);
    assert_eq!(first.code, Some(2), "the first run converges");
    println!(
        "role: 200 template files, 50 static files, 20 symlinks, 5 directories, 5 installed packages"
    );
    println!(
        "first converge                  {:7.1} ms",
        ms(first.elapsed)
    );

    let noop: Vec<Run> = (0..RUNS).map(|_| apply(&repo, &state)).collect();
    assert!(
        noop.iter().all(|r| r.code == Some(0)),
        "an unchanged system needs no change"
    );
    report("no-op run", noop);

    let mut repairs = Vec::new();
    for _ in 0..RUNS.min(11) {
        for i in 0..10 {
            let _ = std::fs::remove_file(target.join(format!("d{}/app-{i}.conf", i % 5)));
            let edited = target.join(format!("d{}/app-{}.conf", (i + 10) % 5, i + 10));
            std::fs::write(&edited, "edited by hand\n").expect("edit");
        }
        let run = apply(&repo, &state);
        assert_eq!(run.code, Some(2), "drift is repaired");
        repairs.push(run);
    }
    report("drift repair (10 del, 10 ed)", repairs);
}
