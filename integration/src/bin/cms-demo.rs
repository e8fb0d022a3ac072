//! `cms-demo`: the main job for a new user. A server and an agent
//! converging the example roles repository in a real instance (see
//! `cms_integration::example`). Needs root, like the testbed.

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use cms_integration::{begin_end_to_end_test, converge_example_web_role};

fn main() -> ExitCode {
    match demo() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> Result<()> {
    let started = Instant::now();
    let (_alone, settings) = begin_end_to_end_test()?;
    let run = converge_example_web_role(&settings, step)?;
    step(&format!(
        "the agent's first run at boot (journal of cms-agent.service; report stored by the server {:.1} s after boot)",
        run.boot_to_report.as_secs_f64()
    ));
    print!("{}", indent(&run.boot_journal));
    step("cms-agent converge on the instance: nothing left to change");
    print!("{}", indent(&run.second_converge.stdout));
    eprint!("{}", indent(&run.second_converge.stderr));
    step("cms-server nodes");
    for node in &run.nodes {
        let mut tags: Vec<String> = node.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tags.sort();
        println!(
            "  {:<10} {:<10} {}  {}",
            node.node_id,
            node.status,
            &node.revision.chars().take(16).collect::<String>(),
            tags.join(",")
        );
    }
    step(
        "nginx answering with the role's configuration (502: the orders application it proxies to is not deployed in this demo)",
    );
    println!("  {}", run.http_answer);
    step("/etc/motd, rendered by the server from the example's template");
    print!("{}", indent(&run.motd));
    step(&format!(
        "done in {:.1} s; the instance, its network and the server's data are gone",
        started.elapsed().as_secs_f64()
    ));
    let failed = run
        .first_report
        .resources
        .iter()
        .filter(|r| r.status == cms_proto::v1::ResourceStatus::Failed as i32)
        .count();
    match (failed, run.second_converge.exit_code) {
        (0, Some(0)) => Ok(()),
        (failed, second) => bail!(
            "expected no failure at boot and nothing to change afterwards, got {failed} failed resources and exit {second:?}"
        ),
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}
