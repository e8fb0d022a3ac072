//! `cms-agent`: the agent baked into every instance image.
//!
//! Its commands (`apply`, `run`, `converge`, `facts`, `enroll`) arrive with
//! the agent and server issues. Today the binary exists so that the testbed
//! can bake it into an image exactly as a user would.

#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "cms-agent",
    version,
    about = "The cms agent: pulls the catalog for this instance's tags and converges it"
)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!("cms-agent {}", env!("CARGO_PKG_VERSION"));
}
