//! The command line of `cms-server`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code when the repository is invalid.
pub const EXIT_INVALID: u8 = 1;
/// Exit code when the command itself could not run (unreadable input).
pub const EXIT_ERROR: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "cms-server",
    version,
    about = "The cms server and its admin commands"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a roles repository: validate every role, or print the catalog
    /// that a node with the given tags would get.
    #[command(
        after_help = "Examples:\n  cms-server check --repo roles-repo\n  cms-server check --repo roles-repo --tags role=api,env=prod\n  cms-server check --repo roles-repo --tags role=web --facts facts.json --format json\n\nExit status: 0 valid, 1 invalid (errors on stderr), 3 the check could not run."
    )]
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The roles repository folder (the one holding cms.toml).
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// Compile for a node with these tags, e.g. `role=api,env=prod`.
    #[arg(long, value_name = "K=V,...")]
    pub tags: Option<String>,
    /// Facts of the node as a JSON object; example facts of a small Debian
    /// instance are used when not given.
    #[arg(long, value_name = "FILE.json")]
    pub facts: Option<PathBuf>,
    /// The node id to compile for.
    #[arg(long, value_name = "ID")]
    pub node: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => crate::check::run(&args),
    }
}
