//! The periodic check of an instance in server mode, as the daemon runs
//! it: `cms-agent run` (release build) enrolled with a server (this
//! process, release build, loopback TLS), on the benchmark role of
//! `cms-agent`'s own benchmark (289 resources: 200 rendered files, 50
//! static files, 20 symlinks, 5 directories, 5 installed packages checked
//! with `dpkg-query`). The agent runs every second; after its first run
//! converged the role, every run finds nothing to change.
//!
//! Each run's wall time is the daemon's own figure ("run finished in X
//! ms": from the pull to the report acknowledged, the watch channel held
//! meanwhile); its CPU is the daemon's user + system time over the measured
//! runs (from /proc), divided by their number; its memory the daemon's
//! peak and current resident set.
//!
//! Run with `cargo bench -p cms-integration --bench periodic_run [RUNS]`
//! (default 31); `CMS_BENCH_AGENT=PATH` measures another `cms-agent`
//! binary (an earlier commit's) against the same server. Nothing leaves a
//! temporary folder; nothing is installed.

// A benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cms_integration::{GitRepo, HostAgent, TestServer, build_workspace_binary_with_profile};

#[path = "../../cms-agent/benches/support/bench_role.rs"]
mod bench_role;

/// Names the `cms-agent` binary to measure instead of this workspace's.
const AGENT_VARIABLE: &str = "CMS_BENCH_AGENT";

/// Runs before the measured ones: the first converges the role, the
/// second is the first with everything in place (caches warm).
const WARM_UP_RUNS: usize = 2;

fn main() -> Result<()> {
    let runs: usize = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .map(|arg| arg.parse().context("RUNS must be a number"))
        .transpose()?
        .unwrap_or(31);
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Another build of the agent (an earlier commit's, for a before and
    // after) can be named; else this workspace's release build.
    let agent_binary = match std::env::var_os(AGENT_VARIABLE) {
        Some(path) => std::path::PathBuf::from(path),
        None => build_workspace_binary_with_profile("cms-agent", "cms-agent", "release")?,
    };
    let scratch = tempfile::tempdir()?;
    let repo = GitRepo::init(&scratch.path().join("roles"))?;
    let target = scratch.path().join("target");
    std::fs::create_dir_all(&target)?;
    bench_role::build_repository(repo.path(), &target);
    repo.commit(&[], "the benchmark role")?;
    let server = TestServer::start_with(
        &scratch.path().join("server"),
        repo.path(),
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        |config| {
            // One report a second for a minute is beyond what the server
            // lets one node send by default (a run every 30 minutes).
            config.report_rate.burst = 1_000_000;
            config.report_rate.per_hour = 1_000_000_000;
        },
    )?;
    let token = server.token(&[("role", "bench")])?;
    let agent = HostAgent::in_directory(&agent_binary, scratch.path(), "bench")?;
    agent.write_config("interval = \"1s\"\nsplay = \"0s\"\n")?;
    let enrolled = agent.enroll(&server.address, &token, "bench-node", "role=bench")?;
    if !enrolled.status.success() {
        bail!(
            "cms-agent enroll failed: {}",
            String::from_utf8_lossy(&enrolled.stderr)
        );
    }
    let log = scratch.path().join("agent.log");
    let daemon = agent.start_daemon(&log)?;
    let stat = format!("/proc/{}/stat", daemon.pid());
    let status = format!("/proc/{}/status", daemon.pid());

    // The CPU counted from here covers the runs after those logged now.
    let warm = wait_for_runs(&log, WARM_UP_RUNS)?.len();
    let cpu_before = cpu_seconds(&stat)?;
    let wall = wait_for_runs(&log, warm + runs)?[warm..warm + runs].to_vec();
    let cpu = (cpu_seconds(&stat)? - cpu_before) / runs as f64;
    let text = std::fs::read_to_string(&log)?;
    if text.contains("ERROR") {
        bail!("the daemon reported a failure:\n{text}");
    }
    let mut sorted = wall.clone();
    sorted.sort_by(f64::total_cmp);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "server-mode periodic run, 289 resources, nothing to change ({runs} runs, load average {})",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "wall  median {:6.1} ms   min {:6.1} ms   p90 {:6.1} ms   max {:6.1} ms",
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() * 9 / 10],
        sorted[sorted.len() - 1]
    );
    println!("CPU of the daemon per run {:6.1} ms", cpu * 1000.0);
    println!(
        "daemon resident set: peak {:.1} MB, now {:.1} MB",
        status_kb(&status, "VmHWM:")? as f64 / 1024.0,
        status_kb(&status, "VmRSS:")? as f64 / 1024.0
    );
    drop(daemon);
    server.stop()?;
    Ok(())
}

/// The wall times of the daemon's first `count` runs, once it has made
/// them (each run every second: a minute covers any count asked).
fn wait_for_runs(log: &Path, count: usize) -> Result<Vec<f64>> {
    let deadline = Instant::now() + Duration::from_secs(30 + 2 * count as u64);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let runs: Vec<f64> = text
            .lines()
            .filter_map(|line| line.split_once("run finished in ").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        if runs.len() >= count {
            return Ok(runs);
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon made {} of {count} runs in time; its log:\n{text}",
                runs.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// User + system CPU seconds of a process, from its /proc stat line.
fn cpu_seconds(stat: &str) -> Result<f64> {
    let text = std::fs::read_to_string(stat)?;
    // The command may hold spaces: the fields after its closing parenthesis.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .context("a stat line")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
    Ok(ticks as f64 / per_second)
}

fn status_kb(status: &str, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(status)?;
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in {status}"))
}
