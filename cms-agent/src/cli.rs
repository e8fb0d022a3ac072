//! The command line of `cms-agent`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cms_modules::{BackupStore, Host};
use cms_roles::{Node, Repository, compile};

use crate::converge::{ConvergeOptions, converge};
use crate::lock::RunLock;
pub use crate::output::{Format, Terminal, print_report};
use crate::restarts::AgentRestarts;

/// Exit code when the run could not start (bad repository, bad flags).
pub const EXIT_ERROR: u8 = 1;

/// The state directory on an instance.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/cms/agent";

#[derive(Debug, Parser)]
#[command(
    name = "cms-agent",
    version,
    about = "The cms agent: converges this instance to the catalog for its tags",
    after_help = "Examples:\n  cms-agent enroll --server cms.internal:7470 --token TOKEN\n  cms-agent converge --noop\n  cms-agent facts --format json\n  cms-agent apply --repo roles-repo --tags role=web --noop\n  cms-agent completions bash > /etc/bash_completion.d/cms-agent\n\nOn an instance, the cms-agent.service unit runs `cms-agent run` with /etc/cms/agent.toml."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compile a roles repository locally and converge this machine (or a
    /// folder, with --root) to it: masterless mode, and how to try a role
    /// before committing it.
    #[command(
        after_help = "Examples:\n  cms-agent apply --repo roles-repo --noop\n  cms-agent apply --repo roles-repo --tags role=web,env=staging\n  cms-agent apply --repo roles-repo --tags role=web --root /tmp/try --format json\n\nExit status: 0 nothing changed, 2 changes made (with --noop: would be made), 4 failures, 6 changes and failures, 1 the run could not start."
    )]
    Apply(ApplyArgs),
    /// Print the facts and tags this agent sees.
    #[command(
        after_help = "Examples:\n  cms-agent facts\n  cms-agent facts --format json | jq .tags\n  cms-agent facts --metadata-endpoint 169.254.169.254:80"
    )]
    Facts(FactsArgs),
    /// Enroll this instance with a server: a new key (it never leaves the
    /// instance) and a certificate for the tags the token allows.
    #[command(
        after_help = "Examples:\n  cms-agent enroll --server cms.internal:7470 --token \"$(cat /run/cms-token)\"\n  cms-agent enroll --server 10.0.0.5:7470 --token TOKEN --tags role=api,env=prod\n  cms-agent enroll --server cms.internal:7470 --ca-fingerprint SHA256   (on EC2, by attestation)"
    )]
    Enroll(EnrollArgs),
    /// Pull this instance's catalog from the server and converge it now.
    #[command(
        after_help = "Examples:\n  cms-agent converge\n  cms-agent converge --noop --format json\n\nExit status: 0 nothing changed, 2 changes made (with --noop: would be made), 4 failures, 6 changes and failures, 1 the run could not start."
    )]
    Converge(ConvergeArgs),
    /// The daemon: enroll if needed, converge at once, then every interval
    /// (with a per-node splay), until stopped.
    #[command(
        after_help = "Examples:\n  cms-agent run\n  cms-agent run --config /etc/cms/agent.toml --log-format json\n\nUsually started by systemd (cms-agent.service); its logs are in `journalctl -u cms-agent`."
    )]
    Run(RunArgs),
    /// Put back a file's content from the local backup store.
    #[command(
        after_help = "Examples:\n  cms-agent restore /etc/nginx/nginx.conf --list\n  cms-agent restore /etc/nginx/nginx.conf\n  cms-agent restore /etc/nginx/nginx.conf --at 2026-11-25T10:00:00Z"
    )]
    Restore(RestoreArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  cms-agent completions bash > /etc/bash_completion.d/cms-agent\n  cms-agent completions zsh > \"${fpath[1]}/_cms-agent\"\n  cms-agent completions fish > ~/.config/fish/completions/cms-agent.fish\n\nThe Debian package installs all three."
    )]
    Completions(CompletionsArgs),
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// Converge the files under this folder instead of `/`; packages,
    /// services and commands are then skipped, since they would act on the
    /// real machine.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Where the agent keeps its lock, backups and last report [default:
    /// /var/lib/cms/agent, or ROOT/var/lib/cms/agent with --root].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl TargetArgs {
    fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| {
            if self.root == Path::new("/") {
                PathBuf::from(DEFAULT_STATE_DIR)
            } else {
                self.root.join(DEFAULT_STATE_DIR.trim_start_matches('/'))
            }
        })
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct DiscoveryArgs {
    /// Use these tags instead of discovering them, e.g. `role=api,env=prod`.
    #[arg(long, value_name = "K=V,...")]
    pub tags: Option<String>,
    /// `host:port` of an instance metadata service (IMDSv2); by default
    /// EC2's, asked only on an EC2 instance.
    #[arg(long, value_name = "HOST:PORT")]
    pub metadata_endpoint: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The roles repository folder (the one holding cms.toml).
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// Show what would change, change nothing.
    #[arg(long)]
    pub noop: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// The node id to compile for [default: the instance id].
    #[arg(long, value_name = "ID")]
    pub node: Option<String>,
    /// The agent configuration, for its `[aws]` settings (a resource that
    /// drains its load balancers); a missing file means the defaults.
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG_FILE)]
    pub config: PathBuf,
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    /// The server's gRPC address, `host:port`.
    #[arg(long, value_name = "HOST:PORT")]
    pub server: String,
    /// The enrollment token `cms-server token create` printed.
    #[arg(
        long,
        value_name = "TOKEN",
        required_unless_present_any = ["token_file", "ca_fingerprint"],
        conflicts_with = "ca_fingerprint"
    )]
    pub token: Option<String>,
    /// A file holding the token instead; deleted once enrolled.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["token", "ca_fingerprint"])]
    pub token_file: Option<PathBuf>,
    /// Enroll by attestation on EC2 instead of a token: the instance
    /// identity document, signed by AWS, proves the instance, and the
    /// server reads its tags from EC2. The value pins the server's CA
    /// (sha256 hex of its certificate, the part of a token after the dot).
    /// The server names the node by its instance id and reads its tags
    /// from EC2, so `--node` and `--tags` do not go with it.
    #[arg(long, value_name = "SHA256", conflicts_with_all = ["node", "tags"])]
    pub ca_fingerprint: Option<String>,
    /// The node's name [default: the instance id, else the hostname].
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

#[derive(Debug, clap::Args)]
pub struct ConvergeArgs {
    /// Show what would change, change nothing.
    #[arg(long)]
    pub noop: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The server [default: from the configuration, else the one enrolled with].
    #[arg(long, value_name = "HOST:PORT")]
    pub server: Option<String>,
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG_FILE)]
    pub config: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    #[arg(long, value_name = "FILE", default_value = crate::config::DEFAULT_CONFIG_FILE)]
    pub config: PathBuf,
    /// Logs as text lines (for journald or a terminal) or JSON objects.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = cms_logging::LogFormat::Text, env = "CMS_LOG_FORMAT")]
    pub log_format: cms_logging::LogFormat,
}

#[derive(Debug, clap::Args)]
pub struct FactsArgs {
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Read facts from the files under this folder instead of `/`.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The file to restore, as the catalog names it (absolute).
    pub path: String,
    /// Put back the content the file had at this time: Unix seconds or
    /// `YYYY-MM-DDTHH:MM:SSZ` [default: undo the last change].
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// List the backups of the file instead.
    #[arg(long)]
    pub list: bool,
    /// Output of --list: a table for people, or JSON for programs.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    #[command(flatten)]
    pub target: TargetArgs,
}

pub fn run(cli: Cli, terminal: Terminal) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Apply(args) => apply_on_compile_thread(args, terminal),
        Command::Facts(args) => facts(&args),
        Command::Restore(args) => restore(&args),
        Command::Completions(args) => {
            use std::io::Write;
            std::io::stdout().write_all(&completion_script(args.shell))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Enroll(args) => {
            let tags = args.discovery.tags.as_deref().map(parse_tags).transpose()?;
            let runtime = tokio::runtime::Runtime::new()?;
            let response = runtime.block_on(crate::remote::enroll_instance(
                &args.state_dir,
                &args.server,
                &match (&args.token, &args.token_file, &args.ca_fingerprint) {
                    (Some(token), _, _) => crate::remote::EnrollWith::Token(token.clone()),
                    (None, Some(file), _) => crate::remote::EnrollWith::Token(
                        std::fs::read_to_string(file)
                            .with_context(|| {
                                format!("Failed to read the token file {}", file.display())
                            })?
                            .trim()
                            .to_string(),
                    ),
                    (None, None, Some(ca_fingerprint)) => crate::remote::EnrollWith::Attestation {
                        ca_fingerprint: ca_fingerprint.clone(),
                    },
                    (None, None, None) => anyhow::bail!(
                        "Failed to enroll: pass --token, --token-file or --ca-fingerprint"
                    ),
                },
                args.node.clone(),
                tags,
                args.discovery.metadata_endpoint.clone(),
            ))?;
            let tags: Vec<String> = response
                .bound_tags
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!(
                "enrolled as {} with tags {}",
                response.node_id,
                tags.join(",")
            );
            if let Some(file) = &args.token_file {
                crate::config::forget_token_file(file)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Converge(args) => {
            let config = crate::config::AgentConfig::load(&args.config)?;
            let server = args
                .server
                .clone()
                .or(config.server.clone())
                .or_else(|| crate::remote::enrolled_server(&args.state_dir))
                .context("Failed to find the server: pass --server, set `server` in the agent configuration, or enroll first")?;
            // One run, one connection at a time: the runtime's own thread is
            // enough (blocking work still goes to its blocking threads), and
            // no worker threads (each with its own allocator arena) start.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = runtime.block_on(crate::remote::converge_from_server(
                &args.state_dir,
                &server,
                args.noop,
                &config.run,
            ))?;
            crate::textfile::record(&config.textfile, &report);
            print_report(&report, args.format, terminal)?;
            Ok(ExitCode::from(report.exit_code()))
        }
        Command::Run(args) => {
            cms_logging::init(args.log_format);
            let config = crate::config::AgentConfig::load(&args.config)?;
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(crate::daemon::run_daemon(&args.state_dir, config, terminal))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Tags and facts, as the agent sees them.
fn observe_node(root: &Path, discovery: &DiscoveryArgs) -> anyhow::Result<crate::node::Observed> {
    let given = discovery.tags.as_deref().map(parse_tags).transpose()?;
    crate::node::observe(root, given, discovery.metadata_endpoint.clone())
}

/// The AWS settings of `apply`: `[aws]` and `metadata_endpoint` of the
/// agent configuration, when it can be read (`--metadata-endpoint` wins).
fn apply_aws_settings(config: &Path, discovery: &DiscoveryArgs) -> crate::aws::AwsSettings {
    let run = match crate::config::AgentConfig::load(config) {
        Ok(config) => config.run,
        Err(error) => {
            eprintln!("warning: {error:#}; AWS calls use the defaults");
            crate::settings::RunSettings::default()
        }
    };
    let mut settings = run.aws();
    if discovery.metadata_endpoint.is_some() {
        settings.metadata_endpoint = discovery.metadata_endpoint.clone();
    }
    settings
}

/// Runs `apply` whole on one thread with the compile stack
/// (`cms_roles::bounded`), so reading the repository and compiling run in
/// place there instead of each starting a thread of its own while this
/// one waits: one thread for the run, and one allocator arena.
fn apply_on_compile_thread(args: ApplyArgs, terminal: Terminal) -> anyhow::Result<ExitCode> {
    let (sender, receiver) = std::sync::mpsc::sync_channel(1);
    let thread = cms_roles::bounded::spawn_compile_thread("cms-apply".to_string(), move || {
        let _ = sender.send(apply(&args, terminal));
    })
    .context("Failed to start the thread of the run")?;
    let outcome = receiver.recv();
    let _ = thread.join();
    // No answer means the thread panicked, and the panic has been printed.
    outcome.unwrap_or_else(|_| {
        Err(anyhow::anyhow!(
            "Failed to apply: the run's thread panicked"
        ))
    })
}

fn apply(args: &ApplyArgs, terminal: Terminal) -> anyhow::Result<ExitCode> {
    let state_dir = args.target.state_dir();
    let _lock = RunLock::acquire(&state_dir, |holder| {
        eprintln!(
            "waiting: another cms-agent run (pid {holder}) holds {}/run.lock",
            state_dir.display()
        );
    })?;
    // Facts describe the machine the agent runs on, also when it
    // converges a folder with --root.
    let observed = observe_node(Path::new("/"), &args.discovery)?;
    let repository = match Repository::read_dir(&args.repo) {
        Ok(repository) => repository,
        Err(diagnostics) => {
            eprint!(
                "{}",
                cms_roles::render_with_sources(&diagnostics, &args.repo)
            );
            bail!(
                "Failed to read the roles repository {}: {}",
                args.repo.display(),
                problems(diagnostics.len())
            );
        }
    };
    // No server vouches for anything here: the machine is its own
    // authority, and `trusted.*` is its local view (docs/roles.md): the id
    // given or found, the tags given or discovered, and the instance id its
    // own metadata service answered.
    let attested = observed
        .facts
        .get("instance_id")
        .and_then(serde_json::Value::as_str)
        .map(|id| [("instance_id".to_string(), id.to_string())].into())
        .unwrap_or_default();
    let observed_source = observed.tags_source.clone();
    let node = Node {
        id: crate::node::node_id(args.node.clone(), &observed.facts),
        tags: observed.tags,
        facts: observed.facts,
        attested,
    };
    if cms_roles::select_roles(&repository, &node.tags).is_empty() {
        bail!("{}", no_role_matches(&repository, &node, &observed_source));
    }
    let catalog = match compile(&repository, &node) {
        Ok(catalog) => catalog,
        Err(diagnostics) => {
            eprint!(
                "{}",
                cms_roles::render_with_sources(&diagnostics, &args.repo)
            );
            bail!(
                "Failed to compile the catalog of node {}: {}",
                node.id,
                problems(diagnostics.len())
            );
        }
    };
    let host = Host::new(&args.target.root);
    let backups = BackupStore::open(state_dir.join("backups"))
        .with_context(|| format!("Failed to open the backup store in {}", state_dir.display()))?;
    let report = converge(
        &catalog,
        &host,
        &backups,
        &ConvergeOptions {
            noop: args.noop,
            run_id: format!("{}-{}", node.id, std::process::id()),
            package_memory: None,
        },
        // No server, so no restart budget; a resource that says `drain`
        // drains through the AWS API that agent.toml describes.
        &AgentRestarts::new(
            None,
            std::time::Duration::ZERO,
            apply_aws_settings(&args.config, &args.discovery),
            &state_dir,
        ),
    );
    crate::state::save_report(&state_dir, &report)?;
    print_report(&report, args.format, terminal)?;
    Ok(ExitCode::from(report.exit_code()))
}

/// Why `apply` converges nothing: the node has no tags, or no role's
/// `[match]` holds for them; with each role's `[match]`, so the user sees
/// which tag to give or which glob to fix.
fn no_role_matches(repository: &Repository, node: &Node, tags_source: &str) -> String {
    let roles: Vec<String> = repository
        .roles
        .values()
        .map(|role| {
            let matches: Vec<String> = role
                .matchers
                .iter()
                .map(|(name, pattern)| format!("{name}={pattern}"))
                .collect();
            format!("  {} matches {}", role.name, matches.join(", "))
        })
        .collect();
    let roles = if roles.is_empty() {
        "  (the repository has no roles)".to_string()
    } else {
        roles.join("\n")
    };
    if node.tags.is_empty() {
        format!(
            "No role matches node {}: it has no tags (looked in {tags_source})\nhint: give them with --tags role=web,env=prod or write /etc/cms/tags.toml; the roles are:\n{roles}",
            node.id
        )
    } else {
        let tags: Vec<String> = node.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "No role matches node {} with tags {} (from {tags_source})\nhint: every entry of a role's [match] must hold; the roles are:\n{roles}",
            node.id,
            tags.join(",")
        )
    }
}

fn facts(args: &FactsArgs) -> anyhow::Result<ExitCode> {
    let crate::node::Observed {
        tags,
        facts,
        tags_source: source,
    } = observe_node(&args.root, &args.discovery)?;
    match args.format {
        Format::Json => {
            let json = serde_json::json!({ "tags": tags, "tags_source": source, "facts": facts });
            println!("{json:#}");
        }
        Format::Text => {
            println!("tags (from {source}):");
            for (name, value) in &tags {
                println!("  {name} = {value}");
            }
            println!("facts:");
            for (name, value) in &facts {
                println!("  {name} = {value}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn restore(args: &RestoreArgs) -> anyhow::Result<ExitCode> {
    let state_dir = args.target.state_dir();
    let backups = BackupStore::open(state_dir.join("backups"))
        .with_context(|| format!("Failed to open the backup store in {}", state_dir.display()))?;
    if args.list {
        let entries = backups.entries(&args.path)?;
        if args.format == Format::Json {
            let json: Vec<serde_json::Value> = entries
                .iter()
                .map(|entry| {
                    serde_json::json!({
                        "time": format_time(entry.time),
                        "time_unix": entry.time,
                        "path": entry.path,
                        "size": entry.size,
                        "sha256": entry.sha256,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&json)?);
            return Ok(ExitCode::SUCCESS);
        }
        if entries.is_empty() {
            eprintln!("no backups of {}", args.path);
            return Ok(ExitCode::SUCCESS);
        }
        println!("{:<20}  {:>10}  SHA256", "TIME", "BYTES");
        for entry in entries {
            println!(
                "{:<20}  {:>10}  {}",
                format_time(entry.time),
                entry.size,
                entry.sha256
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let at = args.at.as_deref().map(parse_time).transpose()?;
    let _lock = RunLock::acquire(&state_dir, |holder| {
        eprintln!(
            "waiting: another cms-agent run (pid {holder}) holds {}/run.lock",
            state_dir.display()
        );
    })?;
    let host = Host::new(&args.target.root);
    let restored = backups.restore(&host, &args.path, at)?;
    let entry = restored.restored;
    println!(
        "restored {} to its content of {} (sha256:{})",
        args.path,
        format_time(entry.time),
        entry.sha256
    );
    if let Some(replaced) = restored.replaced {
        println!(
            "the content it replaced is kept in the backup store as sha256:{}",
            replaced.sha256
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn problems(count: usize) -> String {
    format!("{count} problem{}", if count == 1 { "" } else { "s" })
}

/// `role=api,env=prod` → tags.
pub fn parse_tags(text: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    cms_roles::parse_tag_list(text).map_err(anyhow::Error::msg)
}

/// Unix seconds, or `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn parse_time(text: &str) -> anyhow::Result<u64> {
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(seconds);
    }
    let parse = || -> Option<u64> {
        let text = text.strip_suffix('Z').unwrap_or(text);
        let (date, time) = text.split_once(['T', ' ']).unwrap_or((text, "00:00:00"));
        let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
        let (year, month, day) = (d.next()??, d.next()??, d.next()??);
        let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
        let (hour, minute) = (t.next()??, t.next()??);
        let second = t.next().flatten().unwrap_or(0);
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return None;
        }
        let days = days_from_civil(year, month, day);
        u64::try_from(days * 86400 + hour * 3600 + minute * 60 + second).ok()
    };
    parse().with_context(|| {
        format!("Failed to parse time `{text}`: expected Unix seconds or YYYY-MM-DDTHH:MM:SSZ")
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146097 + day_of_era - 719468
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_time(unix: u64) -> String {
    let days = (unix / 86400) as i64;
    let rest = unix % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let day_of_era = z - era * 146097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// The completion script for `shell`. clap_complete 4.6 names the bash
/// functions of subcommands after the binary with its `-` replaced twice
/// over (`cms__subcmd__agent`, where the dispatcher uses `cms__agent`), so
/// subcommand flags would not complete; the names are put back in line.
pub fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "cms-agent", &mut script);
    if shell == clap_complete::Shell::Bash {
        let text = String::from_utf8_lossy(&script).replace("cms__subcmd__agent", "cms__agent");
        return text.into_bytes();
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_unix_seconds_or_utc_dates_and_print_back() {
        assert_eq!(parse_time("1764100800").expect("seconds"), 1764100800);
        assert_eq!(
            parse_time("2025-11-25T20:00:00Z").expect("date"),
            1764100800
        );
        assert_eq!(format_time(1764100800), "2025-11-25T20:00:00Z");
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2025-13-01T00:00:00Z").is_err());
    }
}
