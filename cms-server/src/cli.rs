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

/// The default gRPC address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7470";
/// The default HTTP address (webhook, health).
pub const DEFAULT_HTTP: &str = "0.0.0.0:7471";
/// Where admin commands find the server by default.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7470";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve roles to enrolled agents: sync the roles repository, enroll
    /// nodes, compile and serve their catalogs over mTLS, store reports.
    #[command(
        after_help = "Examples:\n  cms-server serve\n  cms-server serve --data /var/lib/cms-server --repo https://git.internal/ops/roles.git --branch main\n  cms-server serve --repo ./roles --listen 0.0.0.0:7470 --http 0.0.0.0:7471"
    )]
    Serve(ServeArgs),
    /// Enrollment tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// List nodes, with their tags, last run and status.
    Nodes(NodesArgs),
    /// Show a node's last runs, with their changes and failures.
    Reports(ReportsArgs),
    /// Manage one node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Sync the roles repository now.
    Sync(AdminArgs),
    /// Converge a selection of the fleet now: the canary first, then batch
    /// after batch, stopping when failures pass the limit; or show a
    /// trigger's progress with --status.
    #[command(
        after_help = "Examples:\n  cms-server trigger --select role=web --canary 1 --batch 50%\n  cms-server trigger --select role=api,env=prod --batch 25% --max-failures 2\n  cms-server trigger --select role=api --noop\n  cms-server trigger --status t1764108000000\n\nExit status: 0 every node converged (changed or unchanged), 4 a node failed or was unreachable, or the rollout stopped, 3 the trigger could not start (no node matches, the server cannot be reached)."
    )]
    Trigger(TriggerArgs),
    /// Check a roles repository: validate every role, or print the catalog
    /// that a node with the given tags would get.
    #[command(
        after_help = "Examples:\n  cms-server check --repo roles-repo\n  cms-server check --repo roles-repo --tags role=api,env=prod\n  cms-server check --repo roles-repo --tags role=web --facts facts.json --format json\n\nExit status: 0 valid, 1 invalid (errors on stderr), 3 the check could not run."
    )]
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The data directory (database, CA, admin credential, git mirror)
    /// [default: the current user's state directory, cms-server/].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The roles repository: a git URL (https, ssh, file) or a local path
    /// [default: the example roles repository].
    #[arg(long, value_name = "URL_OR_PATH")]
    pub repo: Option<String>,
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// The gRPC address agents and admin commands use.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// The HTTP address (git webhook at POST /hooks/git, GET /healthz).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_HTTP)]
    pub http: std::net::SocketAddr,
    /// How often to sync the roles repository.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub sync_interval: String,
    /// The git webhook's shared secret (GitHub secret or GitLab token).
    #[arg(long, value_name = "SECRET")]
    pub webhook_secret: Option<String>,
    /// How long run reports are kept.
    #[arg(long, value_name = "DURATION", default_value = "30d")]
    pub report_retention: String,
    /// A DNS name agents use to reach this server (repeatable); `localhost`
    /// and the listen address are always included.
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_names: Vec<String>,
    /// How long a node certificate is valid; agents renew theirs when two
    /// thirds of it have passed.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub certificate_lifetime: String,
    /// A node not seen for this long is marked gone and its name is free
    /// for a new instance.
    #[arg(long, value_name = "DURATION", default_value = "2h")]
    pub gone_after: String,
    /// A gone node is removed, and its certificates refused, this long
    /// after it was marked gone.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub remove_after: String,
}

#[derive(Debug, clap::Args)]
pub struct TriggerArgs {
    /// The nodes to converge: tags as name=value or glob, all must hold.
    #[arg(long, value_name = "K=V,...", required_unless_present = "status")]
    pub select: Option<String>,
    /// How many nodes converge at once after the canary: a count or a
    /// percentage of the selected nodes [default: all at once].
    #[arg(long, value_name = "N|P%")]
    pub batch: Option<String>,
    /// How many nodes converge first, alone; any failure among them stops
    /// the rollout.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub canary: u32,
    /// Ask the nodes what would change, change nothing.
    #[arg(long)]
    pub noop: bool,
    /// How many nodes may fail (or be unreachable) before the rollout stops.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_failures: u32,
    /// How long to wait for one node's report.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub timeout: String,
    /// Show the progress or result of a trigger instead of starting one.
    #[arg(long, value_name = "ID", conflicts_with_all = ["select", "batch", "canary", "noop", "max_failures"])]
    pub status: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Finding the running server and its admin credential.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The server's gRPC address.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// The server's data directory, where its admin credential is.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make an enrollment token; prints the token alone on stdout.
    #[command(
        after_help = "Examples:\n  cms-server token create --tags 'env=staging,role=*'\n  cms-server token create --tags 'env=prod,role=api' --ttl 1h --uses 50"
    )]
    Create(TokenCreateArgs),
}

#[derive(Debug, clap::Args)]
pub struct TokenCreateArgs {
    /// The tags a node may enroll with: name=value or glob.
    #[arg(long, value_name = "K=V,...")]
    pub tags: String,
    /// How long the token can be used.
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// How many enrollments it allows [default: unlimited].
    #[arg(long)]
    pub uses: Option<u32>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    /// Only nodes whose tags match, e.g. `role=api,env=prod` (globs allowed).
    #[arg(long, value_name = "K=V,...")]
    pub select: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReportsArgs {
    /// The node id.
    pub node: String,
    /// How many runs.
    #[arg(long, default_value_t = 5)]
    pub limit: u32,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Revoke a node's certificates; it is refused at once.
    Revoke(NodeRevokeArgs),
}

#[derive(Debug, clap::Args)]
pub struct NodeRevokeArgs {
    pub id: String,
    #[command(flatten)]
    pub admin: AdminArgs,
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
        other => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(crate::commands::run(other))
        }
    }
}

/// The default data directory: `$XDG_STATE_HOME/cms-server`, or
/// `~/.local/state/cms-server`.
pub fn default_data_dir(home: Option<PathBuf>, xdg_state_home: Option<PathBuf>) -> PathBuf {
    match (xdg_state_home, home) {
        (Some(state), _) if state.is_absolute() => state.join("cms-server"),
        (_, Some(home)) => home.join(".local/state/cms-server"),
        _ => PathBuf::from("/var/lib/cms-server"),
    }
}
