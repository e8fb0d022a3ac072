//! A boot storm against three replicas on a real PostgreSQL, behind a TCP
//! load balancer, with one replica SIGKILLed half-way through the first
//! runs: every agent's run succeeds after retries through the balancer,
//! and every report a replica acknowledged is in the database.
//! (`cms-storm` does the work; docs/BENCHMARKS.md has its figures.)

use std::process::Command;

#[test]
fn a_storm_of_2000_agents_loses_no_run_and_no_report_when_a_replica_is_killed() {
    let output = Command::new(env!("CARGO_BIN_EXE_cms-storm"))
        .args(["--agents", "2000", "--contents", "1", "--first-runs-only"])
        .args(["--store", "postgres", "--replicas", "3", "--kill-one"])
        .output()
        .expect("run cms-storm");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "cms-storm failed: {}\n{stdout}\n{stderr}",
        output.status
    );
    let summary: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| panic!("no JSON summary in:\n{stdout}"));
    assert_eq!(summary["killed_replica"], true, "{stdout}");
    assert_eq!(
        summary["failures"], 0,
        "no agent run failed after retries:\n{stdout}"
    );
    assert_eq!(summary["acknowledged_reports"], 2000, "{stdout}");
    assert_eq!(summary["lost_reports"], 0, "{stdout}");
    assert!(
        summary["retries"].as_u64().is_some_and(|r| r > 0),
        "the kill made some agent try again, else the test tested nothing:\n{stdout}"
    );
}
