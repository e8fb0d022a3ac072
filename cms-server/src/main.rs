//! `cms-server`: parses flags and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

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
