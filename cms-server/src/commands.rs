//! Runs each resolved command of `cms-server` (`resolve::Invocation`):
//! `serve` builds the server's configuration and starts it, the admin
//! commands call the admin API and print what it answers, `check`,
//! `trigger`, `diff`, `rollout`, `pin`, `unpin` and `environments` hand
//! over to their own modules.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use cms_proto::v1 as pb;

use crate::admin::status_error;
use crate::cli::{CompletionsArgs, Format, ServeArgs, parse_tags};
use crate::resolve::{AdminTarget, Invocation};
use crate::server::ServeConfig;

/// The example roles repository of this source tree: what `serve` serves
/// when no `--repo` is given.
pub const EXAMPLE_REPOSITORY: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/../roles/examples/roles-repo");

/// Runs a resolved command. `check` and `completions` need no server, but
/// run under the same runtime so that this is one `match` over every
/// command; `check` compiles on this (the main) thread, in `block_on`.
pub fn run(invocation: Invocation) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run_async(invocation))
}

async fn run_async(invocation: Invocation) -> anyhow::Result<ExitCode> {
    match invocation {
        Invocation::Check(args) => crate::check::run(&args),
        Invocation::ExplainRepo(args) => crate::explain::run_repo(&args),
        Invocation::ExplainNode { args, admin } => crate::explain::run_node(&args, &admin).await,
        Invocation::Completions(CompletionsArgs { shell }) => {
            use std::io::Write;
            std::io::stdout().write_all(&crate::cli::completion_script(shell))?;
            Ok(ExitCode::SUCCESS)
        }
        Invocation::Serve { args, data_dir } => serve(*args, data_dir).await,
        Invocation::StoreKeygen => {
            println!("{}", crate::store::StoreKey::generate_text());
            Ok(ExitCode::SUCCESS)
        }
        Invocation::StoreMigrate(args) => {
            // The stores block (the PostgreSQL one on its own runtime):
            // off this runtime's workers.
            tokio::task::spawn_blocking(move || store_migrate(&args)).await?
        }
        Invocation::TokenCreate { args, admin } => {
            let scope = crate::pki::parse_scope(&args.tags)?;
            // Not given: 0, the server's default (an hour).
            let ttl = match &args.ttl {
                Some(ttl) => cms_roles::parse_duration(ttl)
                    .map_err(|e| anyhow::anyhow!("--ttl: {e}"))?
                    .max(1),
                None => 0,
            };
            let mut client = crate::admin::connect_as(&admin).await?;
            let response = client
                .create_token(pb::CreateTokenRequest {
                    scope: scope.into_iter().collect(),
                    ttl_seconds: ttl,
                    uses: args.uses.unwrap_or(1),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            match admin.format {
                Format::Json => println!("{}", serde_json::json!({ "token": response.token })),
                Format::Text => println!("{}", response.token),
            }
            Ok(ExitCode::SUCCESS)
        }
        Invocation::Nodes { args, admin } => {
            let selector: BTreeMap<String, String> = args
                .select
                .as_deref()
                .map(parse_tags)
                .transpose()?
                .unwrap_or_default();
            let mut client = crate::admin::connect_as(&admin).await?;
            let nodes = client
                .list_nodes(pb::ListNodesRequest {
                    selector: Some(pb::Selector {
                        tags: selector.into_iter().collect(),
                    }),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .nodes;
            print_nodes(&nodes, admin.format);
            Ok(ExitCode::SUCCESS)
        }
        Invocation::Reports { args, admin } => {
            let mut client = crate::admin::connect_as(&admin).await?;
            let answer = client
                .get_reports(pb::GetReportsRequest {
                    node_id: args.node.clone(),
                    limit: args.limit,
                })
                .await;
            let reports = match answer {
                Ok(answer) => answer.into_inner().reports,
                Err(status) if status.code() == tonic::Code::NotFound => {
                    return Ok(no_such_node(&args.node));
                }
                Err(status) => return Err(status_error(status)),
            };
            print_reports(&args.node, &reports, admin.format);
            Ok(ExitCode::SUCCESS)
        }
        Invocation::NodeRevoke { args, admin } => {
            let mut client = crate::admin::connect_as(&admin).await?;
            let revoked = client
                .revoke_node(pb::RevokeNodeRequest {
                    node_id: args.id.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            match admin.format {
                Format::Json => println!(
                    "{}",
                    serde_json::json!({ "node": args.id, "revoked_serials": revoked.revoked_serials })
                ),
                Format::Text => println!(
                    "revoked {} certificate(s) of {}",
                    revoked.revoked_serials.len(),
                    args.id
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        Invocation::Sync(admin) => sync(&admin).await,
        Invocation::OperatorAdd { args, admin } => {
            crate::admin::add_operator(&args, &admin, false).await
        }
        Invocation::OperatorRenew { args, admin } => {
            crate::admin::add_operator(&args, &admin, true).await
        }
        Invocation::OperatorRevoke { args, admin } => {
            crate::admin::revoke_operator(&args.name, &admin).await
        }
        Invocation::OperatorList(admin) => crate::admin::list_operators(&admin).await,
        Invocation::Audit { args, admin } => crate::admin::audit(args.limit, &admin).await,
        Invocation::DashboardToken { action, admin } => {
            crate::admin::dashboard_token(&action, &admin).await
        }
        Invocation::Trigger { args, admin } => crate::trigger_cli::run(args, &admin).await,
        Invocation::Diff { args, admin } => crate::diff_cli::run(args, &admin).await,
        Invocation::RolloutList { args, admin } => crate::rollout_cli::list(args, &admin).await,
        Invocation::RolloutStatus { args, admin } => crate::rollout_cli::status(args, &admin).await,
        Invocation::RolloutControl {
            action,
            args,
            admin,
        } => crate::rollout_cli::control(action, args, &admin).await,
        Invocation::Pin { args, admin } => crate::pin_cli::pin(args, &admin).await,
        Invocation::Unpin { args, admin } => crate::pin_cli::unpin(args, &admin).await,
        Invocation::Environments(admin) => crate::pin_cli::environments(&admin).await,
        Invocation::SecretsRecipient { data_dir } => {
            let path = crate::secrets::identity::identity_path(&data_dir);
            if !path.exists() {
                bail!(
                    "Failed to find the server's secrets identity {}\nhint: it is made on the server's first start; pass --data with the server's data directory",
                    path.display()
                );
            }
            let identity = crate::secrets::identity::read_identity_file(&path)?;
            println!("{}", identity.to_public());
            Ok(ExitCode::SUCCESS)
        }
        Invocation::SecretsEncrypt(args) => {
            let value = read_secret_from_stdin(args.allow_empty)?;
            let scope = args
                .scope
                .as_deref()
                .map(crate::secrets::repo_files::parse_scope)
                .transpose()?;
            let path = crate::secrets::repo_files::encrypt_into(
                &args.repo,
                &args.layer,
                &args.key,
                &value,
                scope.as_ref(),
            )?;
            eprintln!("encrypted `{}` into {}", args.key, path.display());
            Ok(ExitCode::SUCCESS)
        }
        Invocation::SecretsReencrypt { repo, identity } => {
            let identity = crate::secrets::identity::read_identity_file(&identity)?;
            let done = crate::secrets::repo_files::reencrypt(&repo, &identity)?;
            eprintln!(
                "re-encrypted {} secret(s) in {} file(s)",
                done.secrets, done.files
            );
            Ok(ExitCode::SUCCESS)
        }
        Invocation::SecretsNewIdentity(args) => {
            let identity = age::x25519::Identity::generate();
            crate::secrets::identity::write_new_identity(&args.out, &identity)?;
            println!("{}", identity.to_public());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A secret's value: all of standard input, as bytes. A terminal is
/// refused (the value would be echoed and kept in the scrollback), and so
/// is an empty value unless allowed.
fn read_secret_from_stdin(allow_empty: bool) -> anyhow::Result<Vec<u8>> {
    use std::io::{IsTerminal as _, Read as _};
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!(
            "Refusing to read a secret from a terminal\nhint: pipe it in (`printf %s \"$VALUE\" | cms-server secrets encrypt ...`) or redirect a file (`< value.txt`)"
        );
    }
    let mut value = Vec::new();
    stdin
        .read_to_end(&mut value)
        .context("Failed to read the value from standard input")?;
    if value.is_empty() && !allow_empty {
        bail!(
            "the value on standard input is empty\nhint: pass --allow-empty to store an empty secret"
        );
    }
    Ok(value)
}

async fn serve(args: ServeArgs, data_dir: PathBuf) -> anyhow::Result<ExitCode> {
    cms_logging::init(args.log_format);
    let connections = connection_limits(&args)?;
    let repo = match args.repo {
        Some(repo) => repo,
        None if std::path::Path::new(EXAMPLE_REPOSITORY).is_dir() => EXAMPLE_REPOSITORY.to_string(),
        None => bail!(
            "Failed to find a roles repository to serve\nhint: pass --repo with a git URL or a folder"
        ),
    };
    let duration = |text: &str, flag: &str| -> anyhow::Result<Duration> {
        Ok(Duration::from_secs(
            cms_roles::parse_duration(text).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?,
        ))
    };
    let mut config = ServeConfig::new(data_dir, repo);
    config.store = crate::store::StoreConfig {
        location: args
            .store
            .as_deref()
            .map(crate::store::StoreLocation::parse)
            .transpose()?,
        key_file: args.store_key_file.clone(),
        pool_size: Some(args.store_pool_size),
    };
    config.connections = connections;
    config.branch = args.branch;
    if args.environments.is_empty() {
        if args.default_environment.is_some() {
            bail!("--default-environment needs --environment NAME=BRANCH for each environment");
        }
    } else {
        let specs = args
            .environments
            .iter()
            .map(|text| crate::environments::EnvironmentSpec::parse(text))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--environment: {e}"))?;
        config.environments = Some(
            crate::environments::EnvironmentsConfig::new(
                specs,
                args.default_environment,
                args.environment_tag,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
    }
    config.sync_interval =
        duration(&args.sync_interval, "sync-interval")?.max(Duration::from_secs(1));
    config.certificate_validity =
        duration(&args.certificate_lifetime, "certificate-lifetime")?.max(Duration::from_secs(60));
    config.gone_after = duration(&args.gone_after, "gone-after")?.max(Duration::from_secs(1));
    config.remove_after = duration(&args.remove_after, "remove-after")?;
    config.server_names = args.server_names;
    config.webhook_secret = args.webhook_secret;
    config.http_tls = args.http_tls;
    config.metrics_token = match &args.metrics_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("Failed to read {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    config.report_retention = duration(&args.report_retention, "report-retention")?;
    if let Some(path) = &args.enrollment_config {
        // The server's own AWS credentials, when given in the environment.
        let environment: BTreeMap<String, String> = std::env::vars()
            .filter(|(name, _)| name.starts_with("AWS_"))
            .collect();
        config.aws = crate::aws::load_config(path, &environment, crate::clock::system())?
            .map(std::sync::Arc::new);
    }
    config.secrets = crate::secrets::SecretsConfig {
        endpoints: crate::aws::SecretsEndpoints {
            region: args
                .aws_region
                .clone()
                .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty())),
            ssm: args.ssm_endpoint.clone(),
            secretsmanager: args.secretsmanager_endpoint.clone(),
        },
        refresh: duration(&args.secrets_refresh, "secrets-refresh")?.max(Duration::from_secs(1)),
        environment: std::env::vars()
            .filter(|(name, _)| name.starts_with("AWS_"))
            .collect(),
    };
    config.report_rate = crate::reports::ReportRateLimit {
        burst: args.report_burst,
        per_hour: args.report_rate,
    };
    // The store, the CA and the admin credential exist before the ports
    // are bound: a script that waits for the port and then runs
    // `cms-server token create` finds the credential.
    let prepared = crate::server::prepare(&config)?;
    // The HTTP port listens and the address is recorded before the gRPC
    // port listens: whoever waits for the gRPC port to answer (a script,
    // a unit's readiness check) then finds both.
    let http = tokio::net::TcpListener::bind(args.http)
        .await
        .with_context(|| format!("Failed to listen on {}", args.http))?;
    let grpc = bind(args.listen).with_context(|| format!("Failed to listen on {}", args.listen))?;
    crate::startup::record_server_address(&config.data_dir, grpc.local_addr()?)?;
    let grpc = grpc
        .listen(GRPC_ACCEPT_QUEUE)
        .with_context(|| format!("Failed to listen on {}", args.listen))?;
    let descriptors = raise_descriptor_limit();
    tracing::info!(grpc = %args.listen, http = %args.http, data = %config.data_dir.display(), repo = %config.repo, descriptors, "serving");
    crate::server::run_prepared(prepared, grpc, Some(http), config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `cms-server store migrate`: opens both stores, copies, prints the
/// counts of each kind; exits 1 when a count differs.
fn store_migrate(args: &crate::cli::StoreMigrateArgs) -> anyhow::Result<ExitCode> {
    use crate::store::{StoreConfig, StoreLocation};
    let open = |text: &str, flag: &str| -> anyhow::Result<crate::store::SharedStore> {
        let location = StoreLocation::parse(text).with_context(|| format!("--{flag}"))?;
        if let StoreLocation::Sled(dir) = &location
            && flag == "from"
            && !dir.is_dir()
        {
            bail!(
                "--from: {} holds no store (no {})",
                location.describe(),
                dir.display()
            );
        }
        let config = StoreConfig {
            location: Some(location.clone()),
            key_file: args.store_key_file.clone(),
            pool_size: Some(4),
        };
        crate::store::open_configured(std::path::Path::new(""), &config)
            .with_context(|| format!("--{flag} {}", location.describe()))
    };
    let source = open(&args.from, "from")?;
    let target = open(&args.to, "to")?;
    let outcome = crate::store::migrate::migrate(&*source, &*target)?;
    print!("{outcome}");
    if outcome.matches() {
        println!(
            "copied {} records; every count matches",
            outcome.target.total()
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: the counts of the target differ from the source's (MISMATCH above)");
        Ok(ExitCode::from(1))
    }
}

/// The bounds of the gRPC port's connections from `serve`'s flags.
fn connection_limits(args: &ServeArgs) -> anyhow::Result<crate::listener::ConnectionLimits> {
    let duration = |text: &str, flag: &str| -> anyhow::Result<Duration> {
        Ok(Duration::from_secs(
            cms_roles::parse_duration(text).map_err(|e| anyhow::anyhow!("--{flag}: {e}"))?,
        ))
    };
    let limits = crate::listener::ConnectionLimits {
        max_connections: args.max_connections,
        max_handshakes: args.max_handshakes,
        max_unauthenticated: args.max_unauthenticated,
        per_source_pending: args.per_source_pending,
        per_source_unauthenticated: args.per_source_unauthenticated,
        client_hello_timeout: duration(&args.client_hello_timeout, "client-hello-timeout")?,
        handshake_timeout: duration(&args.handshake_timeout, "handshake-timeout")?,
        place_wait: duration(&args.place_wait, "place-wait")?,
        unauthenticated_first_request: duration(
            &args.unauthenticated_first_request,
            "unauthenticated-first-request",
        )?,
        unauthenticated_lifetime: duration(
            &args.unauthenticated_lifetime,
            "unauthenticated-lifetime",
        )?,
        max_connection_age: duration(&args.connection_age, "connection-age")?,
        connection_age_grace: duration(&args.connection_age_grace, "connection-age-grace")?,
        ..crate::listener::ConnectionLimits::default()
    };
    limits
        .check()
        .map_err(|error| anyhow::anyhow!("Invalid connection limits: {error}"))?;
    Ok(limits)
}

/// Every agent holds a watch channel, one descriptor each: the soft limit
/// (often 1,024) is raised to the hard one, as far as the process may.
/// Returns the limit in force.
fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// The gRPC port's accept queue: in a boot storm thousands of agents
/// connect at once, and a short queue (tokio's default is 1024) drops
/// their SYNs, which costs each a second or more.
const GRPC_ACCEPT_QUEUE: u32 = 8192;

/// Binds the gRPC address, not yet listening, so that its address can be
/// recorded before a client can connect.
fn bind(address: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    Ok(socket)
}

/// Ctrl-C or SIGTERM (systemd's stop).
async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match terminate.as_mut() {
                Some(signal) => { signal.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// An admin command's answer for a node the server does not know: what
/// is missing, how to find the right name, and exit status 1.
fn no_such_node(node: &str) -> ExitCode {
    eprintln!("error: no node {node}\nhint: `cms-server nodes` lists the nodes the server knows");
    ExitCode::from(crate::cli::EXIT_INVALID)
}

async fn sync(admin: &AdminTarget) -> anyhow::Result<ExitCode> {
    let mut client = crate::admin::connect_as(admin).await?;
    let response = client
        .sync(pb::SyncRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if admin.format == Format::Json {
        let errors: Vec<serde_json::Value> = response
            .errors
            .iter()
            .map(|error| {
                serde_json::json!({
                    "file": error.file, "line": error.line,
                    "column": error.column, "message": error.message,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "accepted": response.accepted, "revision": response.revision, "errors": errors,
            })
        );
        return Ok(ExitCode::from(if response.accepted {
            0
        } else {
            crate::cli::EXIT_INVALID
        }));
    }
    if response.accepted {
        println!("serving {}", response.revision);
        return Ok(ExitCode::SUCCESS);
    }
    for error in &response.errors {
        eprintln!(
            "error: {}:{}:{}: {}",
            error.file, error.line, error.column, error.message
        );
    }
    eprintln!(
        "error: Refused commit {}: the last good revision stays",
        response.revision
    );
    Ok(ExitCode::from(crate::cli::EXIT_INVALID))
}

fn print_nodes(nodes: &[pb::NodeSummary], format: Format) {
    match format {
        Format::Json => {
            let json: Vec<serde_json::Value> = nodes
                .iter()
                .map(|n| {
                    serde_json::json!({
                        "id": n.node_id,
                        "tags": n.tags.iter().collect::<BTreeMap<_, _>>(),
                        "status": n.status,
                        "revision": n.revision,
                        "catalog_id": n.catalog_id,
                        "last_seen_unix_ms": n.last_seen_unix_ms,
                        "last_run_unix_ms": n.last_run_unix_ms,
                        "changed": n.changed,
                        "failed": n.failed,
                        "last_run_noop": n.last_run_noop,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&json).expect("JSON"));
        }
        Format::Text => {
            println!(
                "{:<24} {:<10} {:<24} {:<12} TAGS",
                "NODE", "STATUS", "LAST RUN (UTC)", "REVISION"
            );
            for node in nodes {
                let tags: Vec<String> = node
                    .tags
                    .iter()
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let last_run = match node.last_run_unix_ms {
                    0 => "never".to_string(),
                    at => format!(
                        "{}{}",
                        run_time(at as u64),
                        if node.last_run_noop { " noop" } else { "" }
                    ),
                };
                println!(
                    "{:<24} {:<10} {:<24} {:<12} {}",
                    node.node_id,
                    node.status,
                    last_run,
                    node.revision.chars().take(12).collect::<String>(),
                    tags.join(",")
                );
            }
        }
    }
}

/// A run's time for listings: `2026-12-03 11:50:12`, UTC.
fn run_time(unix_ms: u64) -> String {
    crate::dashboard::format_time(unix_ms)
        .trim_end_matches(" UTC")
        .to_string()
}

fn print_reports(node: &str, reports: &[pb::RunReport], format: Format) {
    let status = |s: i32| match pb::ResourceStatus::try_from(s) {
        Ok(pb::ResourceStatus::Changed) => "changed",
        Ok(pb::ResourceStatus::Failed) => "failed",
        Ok(pb::ResourceStatus::Skipped) => "skipped",
        _ => "unchanged",
    };
    match format {
        Format::Json => {
            let json: Vec<serde_json::Value> = reports
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "run_id": r.run_id, "catalog_id": r.catalog_id, "revision": r.revision,
                        "started_at_unix_ms": r.started_at_unix_ms, "duration_ms": r.duration_ms, "noop": r.noop, "note": r.note,
                        "resources": r.resources.iter().map(|x| serde_json::json!({"reference": x.reference, "status": status(x.status), "diff": x.diff, "error": x.error})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&json).expect("JSON"));
        }
        Format::Text => {
            if reports.is_empty() {
                println!("no reports from {node}");
            }
            for report in reports {
                let count = |s: &str| {
                    report
                        .resources
                        .iter()
                        .filter(|r| status(r.status) == s)
                        .count()
                };
                let finished =
                    (report.started_at_unix_ms.max(0) as u64).saturating_add(report.duration_ms);
                println!(
                    "{} run {} ({}){}: {} {}, {} failed, {} skipped",
                    run_time(finished),
                    report.run_id,
                    report.revision.chars().take(12).collect::<String>(),
                    if report.noop { " noop" } else { "" },
                    count("changed"),
                    if report.noop {
                        "would change"
                    } else {
                        "changed"
                    },
                    count("failed"),
                    count("skipped"),
                );
                for resource in report
                    .resources
                    .iter()
                    .filter(|r| status(r.status) != "unchanged")
                {
                    let said = match status(resource.status) {
                        "changed" if report.noop => "would change",
                        other => other,
                    };
                    println!("  {said} {}", resource.reference);
                    for line in resource.diff.lines().chain(resource.error.lines()) {
                        println!("    {line}");
                    }
                }
            }
        }
    }
}
