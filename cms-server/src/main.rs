//! `cms-server`: parses flags and hands over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cms_server::cli::Cli::parse();
    match cms_server::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(cms_server::cli::EXIT_ERROR)
        }
    }
}
