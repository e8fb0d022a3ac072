//! `cms-demo`: the example roles repository converging a real instance
//! (see `cms_integration::example`). Needs root, like the testbed.

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
    step("first run: cms-agent apply --repo /srv/roles (tags from /etc/cms/tags.toml)");
    print!("{}", indent(&run.first_apply.stdout));
    eprint!("{}", indent(&run.first_apply.stderr));
    step("second run: nothing left to change");
    print!("{}", indent(&run.second_apply.stdout));
    eprint!("{}", indent(&run.second_apply.stderr));
    step(
        "nginx answering with the role's configuration (502: the orders application it proxies to is not deployed in this demo)",
    );
    println!("  {}", run.http_answer);
    step("/etc/motd, rendered from the example's template");
    print!("{}", indent(&run.motd));
    step(&format!(
        "done in {:.1} s; the instance and its network are gone",
        started.elapsed().as_secs_f64()
    ));
    match (run.first_apply.exit_code, run.second_apply.exit_code) {
        (Some(2), Some(0)) => Ok(()),
        (first, second) => bail!(
            "expected the first run to change things (exit 2) and the second to change nothing (exit 0), got {first:?} and {second:?}"
        ),
    }
}

fn step(text: &str) {
    println!("\n==> {text}");
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}
