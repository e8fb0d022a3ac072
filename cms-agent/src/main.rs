//! `cms-agent`: parses flags, reads the environment once, runs the command.

use std::process::ExitCode;

use clap::Parser;
use cms_agent::cli::{Cli, EXIT_ERROR, Terminal, run};

fn main() -> ExitCode {
    // A usage error exits 1, not clap's 2: 2 means "changes made".
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let code = if error.use_stderr() { EXIT_ERROR } else { 0 };
            let _ = error.print();
            return ExitCode::from(code);
        }
    };
    let terminal = Terminal {
        no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
    };
    match run(cli, terminal) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
