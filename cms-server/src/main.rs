//! `cms-server`: parses flags and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

/// jemalloc, for its per-thread caches: a fresh compile, its contents and
/// its report spent a quarter of their CPU in glibc's malloc, and jemalloc
/// took about 12 % off the server's CPU per fresh catalog (mimalloc less);
/// docs/BENCHMARKS.md, issue 18. The agent keeps the system allocator.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = cms_server::cli::Cli::parse();
    let invocation =
        cms_server::resolve::resolve(cli.command, &cms_server::resolve::Environment::of_process());
    match cms_server::commands::run(invocation) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(cms_server::cli::EXIT_ERROR)
        }
    }
}
