//! The running server, wired together: [`prepare`] does everything before
//! listening (`startup`: the store, the CA, the admin credential, the last
//! good revision), [`run_prepared`] builds each API's handle from the
//! resolved [`ServeConfig`] and serves gRPC (`listener`, `service`,
//! `watch`) and HTTP (`http`, `dashboard`) with the sync task (`sync`) and
//! the node lifecycle task (`nodes`) until shutdown. [`run`] does both.
//!
//! The listeners are bound by the caller, so tests pass `127.0.0.1:0`;
//! `cms-server serve` binds them only after `prepare`, so the port answers
//! only once the admin credential exists. Every task `run_prepared` spawns
//! is owned by a `JoinSet` and ends on shutdown.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cms_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tonic::transport::Server;

use crate::blocking::Blocking;
use crate::catalogs::Catalogs;
use crate::clock::SharedClock;
use crate::dashboard::DashboardApi;
use crate::enrollment::Enrollment;
use crate::fleet::Fleet;
use crate::http::{MetricsApi, WebhookApi};
use crate::leader::Locks;
use crate::listener::{
    Accepted, ConnectionLimits, Identify, accept_connections, grpc_tls_from_ca, http_tls_config,
};
use crate::metrics::{FleetCounters, Metrics};
use crate::nodes::{LifecycleConfig, Nodes};
use crate::reports::{ReportRate, ReportRateLimit, Reports};
use crate::revision::SyncRequests;
use crate::rollouts::Rollouts;
use crate::service::{AdminService, AgentService, EnrollmentService};
use crate::sync::{RolesSource, Syncing};
use crate::triggers::Triggers;
use crate::watch::WatchApi;

pub use crate::startup::{Prepared, admin_dir};

/// What `serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    /// Which store (`--store`, `--store-key-file`): by default sled in
    /// `data_dir`.
    pub store: crate::store::StoreConfig,
    /// A local path or a git URL.
    pub repo: String,
    /// The branch of the one environment of a server given no
    /// `environments`.
    pub branch: String,
    /// The environments and the branch each follows (`--environment`);
    /// `None` is one environment, `production`, following `branch`.
    pub environments: Option<crate::environments::EnvironmentsConfig>,
    pub sync_interval: Duration,
    /// How long a node certificate is valid.
    pub certificate_validity: Duration,
    /// Names and addresses the server's certificate is valid for, besides
    /// `localhost` and `127.0.0.1`.
    pub server_names: Vec<String>,
    pub server_addresses: Vec<IpAddr>,
    /// The shared secret of the git webhook; `None` refuses every webhook.
    pub webhook_secret: Option<String>,
    /// How long run reports are kept.
    pub report_retention: Duration,
    /// Serve the HTTP port over TLS with the server's certificate (needed
    /// by the dashboard).
    pub http_tls: bool,
    /// When set, `GET /metrics` needs `Authorization: Bearer <token>`;
    /// otherwise it is open, as Prometheus scrapes usually are.
    pub metrics_token: Option<String>,
    /// A node not seen for this long is marked gone; its name is free.
    pub gone_after: Duration,
    /// A gone node is removed, with its certificates, this long after.
    pub remove_after: Duration,
    /// How often last-seen times noted in memory are written to the store.
    pub presence_flush: Duration,
    /// How long a trigger waits for one node's report by default.
    pub trigger_timeout: Duration,
    /// How often the server sends a heartbeat on a watch channel.
    pub watch_heartbeat: Duration,
    /// Attested enrollment on AWS (`[aws]` of `--enrollment-config`);
    /// `None` accepts tokens only.
    pub aws: Option<Arc<crate::aws::Attestor>>,
    /// The bounds of the gRPC port's connections.
    pub connections: ConnectionLimits,
    /// How many reports one node may send.
    pub report_rate: ReportRateLimit,
    /// How AWS secrets are reached and how often fetched again.
    pub secrets: crate::secrets::SecretsConfig,
}

impl ServeConfig {
    /// The environments served: as configured, else one following
    /// `branch`.
    pub fn environments_config(&self) -> crate::environments::EnvironmentsConfig {
        self.environments
            .clone()
            .unwrap_or_else(|| crate::environments::EnvironmentsConfig::single(&self.branch))
    }

    /// The defaults of `cms-server serve` for a data directory and a roles
    /// repository.
    pub fn new(data_dir: PathBuf, repo: String) -> ServeConfig {
        ServeConfig {
            data_dir,
            store: crate::store::StoreConfig::default(),
            repo,
            branch: "main".into(),
            environments: None,
            sync_interval: Duration::from_secs(60),
            certificate_validity: DEFAULT_CERTIFICATE_LIFETIME,
            server_names: Vec::new(),
            server_addresses: Vec::new(),
            webhook_secret: None,
            http_tls: false,
            metrics_token: None,
            report_retention: Duration::from_secs(30 * 24 * 3600),
            gone_after: DEFAULT_GONE_AFTER,
            remove_after: DEFAULT_REMOVE_AFTER,
            presence_flush: Duration::from_secs(5),
            trigger_timeout: Duration::from_secs(600),
            watch_heartbeat: Duration::from_secs(30),
            aws: None,
            connections: ConnectionLimits::default(),
            report_rate: ReportRateLimit::default(),
            secrets: crate::secrets::SecretsConfig::default(),
        }
    }

    /// The PostgreSQL URL the replicas share, if the store is one: this
    /// server is then one replica among others sharing that database
    /// (fleet messages over LISTEN/NOTIFY, the lifecycle work on the
    /// leader only); otherwise a server alone.
    pub fn shared_database(&self) -> Option<&str> {
        match &self.store.location {
            Some(crate::store::StoreLocation::Postgres(url)) => Some(url),
            _ => None,
        }
    }
}

/// Node certificates live a day; agents renew them when two thirds of
/// that has passed.
pub const DEFAULT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Agents call at least every interval (30 minutes by default) and hold a
/// watch channel open; two hours without a sign of life means gone.
pub const DEFAULT_GONE_AFTER: Duration = Duration::from_secs(2 * 3600);
/// A gone node is removed a day later.
pub const DEFAULT_REMOVE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Everything before listening: see `startup::prepare`.
pub fn prepare(config: &ServeConfig) -> anyhow::Result<Prepared> {
    if config.shared_database().is_some() && crate::sync::is_plain_folder(&config.repo) {
        // A replica that does not lead serves the commit the leader chose,
        // loaded from its own mirror: a folder has no commits to load.
        anyhow::bail!(
            "--repo {} is a plain folder, not a git repository: replicas sharing a PostgreSQL store serve the commit the leading replica chose, each loading it from its own git mirror, so a plain folder would never serve there. Make it a repository (`git init` in it, then commit) or give the repository's URL; a plain folder serves a server alone, on the sled store",
            config.repo
        );
    }
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "Failed to create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let secrets = crate::secrets::ServerSecrets::open(
        &config.data_dir,
        &config.secrets,
        crate::clock::system(),
    )?;
    let environments = config.environments_config();
    let sources = environments
        .environments()
        .iter()
        .map(|spec| {
            let source = RolesSource::for_repo(
                &config.repo,
                &spec.branch,
                &config.data_dir,
                secrets.clone(),
            );
            (spec.name.clone(), source)
        })
        .collect::<Vec<_>>();
    if sources.len() > 1
        && sources
            .iter()
            .any(|(_, source)| matches!(source, RolesSource::Directory { .. }))
    {
        anyhow::bail!(
            "{} is a plain folder, not a git repository: it has no branches, so it serves one environment only",
            config.repo
        );
    }
    crate::startup::prepare_environments(
        &config.data_dir,
        &config.store,
        environments,
        sources,
        &crate::clock::SystemClock,
    )
}

/// Prepares, then runs the server until `shutdown` completes.
pub async fn run(
    grpc_listener: TcpListener,
    http_listener: Option<TcpListener>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let prepared = prepare(&config)?;
    run_prepared(prepared, grpc_listener, http_listener, config, shutdown).await
}

/// Runs a prepared server on bound listeners until `shutdown` completes.
pub async fn run_prepared(
    prepared: Prepared,
    grpc_listener: TcpListener,
    http_listener: Option<TcpListener>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Prepared {
        store,
        ca,
        ca_fingerprint,
        sources,
        environments,
    } = prepared;
    let clock: SharedClock = crate::clock::system();
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    // Replicas sharing a database reach each other over it; a server alone
    // leads and tells no one.
    let (bus, incoming, locks) = match config.shared_database() {
        Some(url) => {
            let (bus, incoming) = crate::bus::Bus::postgres(url, stop.clone());
            (bus, Some(incoming), Locks::postgres(url, stop.clone()))
        }
        None => {
            crate::triggers::interrupt_running(&*store, &*clock)?;
            (crate::bus::Bus::local(), None, Locks::local())
        }
    };
    let fleet_counters = FleetCounters::default();
    let mut metrics = Metrics::new();
    metrics.register_fleet(&fleet_counters);
    let fleet = Arc::new(Fleet::with_bus(fleet_counters, bus));
    // The dashboard's login checks them, the admin API makes, lists and
    // revokes them: both through the store, which every replica shares.
    let dashboard_tokens = crate::dashboard_tokens::DashboardTokens {
        store: store.clone(),
        clock: clock.clone(),
    };
    let catalogs = Arc::new(
        Catalogs::new(
            10_000,
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        )
        .observe_compiles(metrics.compile_duration()),
    );
    let metrics = Arc::new(metrics);
    // Replicas share their restart places through the database.
    let restart_budget = Arc::new(match config.shared_database() {
        Some(url) => crate::restart_budget::RestartBudget::shared(clock.clone(), url)?,
        None => crate::restart_budget::RestartBudget::new(clock.clone()),
    });
    // The default environment's stable revision: what the dashboard and
    // the metrics show as served.
    let revision = environments.default_environment().stable.clone();
    let (sync_requests, sync_receiver) = SyncRequests::channel();
    // The server's own permits for blocking work, shared by its APIs.
    let blocking = Blocking::default();

    let nodes = Nodes {
        store: store.clone(),
        fleet: fleet.clone(),
        clock: clock.clone(),
    };
    let reports = Reports {
        store: store.clone(),
        fleet: fleet.clone(),
        metrics: metrics.clone(),
        clock: clock.clone(),
    };
    let enrollment = Enrollment {
        store: store.clone(),
        ca: ca.clone(),
        ca_fingerprint,
        fleet: fleet.clone(),
        clock: clock.clone(),
        certificate_validity: config.certificate_validity,
        gone_after: config.gone_after,
        aws: config.aws.clone(),
        environments: environments.config().clone(),
    };
    let (fleet_for_bus, store_for_bus) = (fleet.clone(), store.clone());
    let triggers = Triggers {
        store: store.clone(),
        fleet: fleet.clone(),
        clock: clock.clone(),
        default_timeout: config.trigger_timeout,
        locks: locks.clone(),
    };

    let mut names = vec!["localhost".to_string()];
    names.extend(config.server_names.iter().cloned());
    let mut addresses: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    addresses.extend(config.server_addresses.iter().copied());
    if let Ok(local) = grpc_listener.local_addr()
        && !local.ip().is_unspecified()
    {
        addresses.push(local.ip());
    }
    let server_credential = ca.issue_server_certificate(&names, &addresses)?;
    let tls = grpc_tls_from_ca(&ca, &server_credential)?;

    let mut tasks = tokio::task::JoinSet::new();
    // Every environment's branch is in the one mirror, read with the one
    // identity: the first source gives both.
    let (mirror, secrets) = match sources.first() {
        Some((_, RolesSource::Git(syncer))) => {
            (Some(syncer.source().clone()), syncer.secrets().clone())
        }
        Some((_, source)) => (None, source.secrets().clone()),
        None => (None, crate::secrets::ServerSecrets::none()),
    };
    let differ = crate::fleet_diff::Differ {
        roles: mirror.clone(),
        environments: environments.clone(),
        secrets: secrets.clone(),
        nodes: nodes.clone(),
    };
    // The gauges of rollouts and pins start from what was restored.
    for environment in environments.iter() {
        if let Ok(record) = environment.record.try_lock() {
            let active = record.active();
            metrics.rollout_restored(
                &environment.name,
                active.is_some(),
                active.map_or(0, |rollout| rollout.waves_started),
            );
            metrics.pins(&environment.name, record.pins.len());
        }
    }
    let rollouts = Rollouts {
        store: store.clone(),
        fleet: fleet.clone(),
        clock: clock.clone(),
        nodes: nodes.clone(),
        environments: environments.clone(),
        metrics: metrics.clone(),
        mirror,
        secrets: secrets.clone(),
        drivers: Default::default(),
        locks: locks.clone(),
        forwarded: Default::default(),
        sync: Some(sync_requests.clone()),
        caught_up: Default::default(),
    };
    tasks.spawn(refresh_secrets_loop(
        secrets,
        environments.clone(),
        stop.clone(),
    ));
    // The first sync decides what a new commit becomes only on the
    // leader: who leads is known first.
    locks.settled(Duration::from_secs(5)).await;
    tasks.spawn(crate::sync::sync_loop(
        Syncing {
            store: store.clone(),
            rollouts: rollouts.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
            interval: config.sync_interval,
            report_retention: config.report_retention,
        },
        sources,
        sync_receiver,
        stop.clone(),
    ));
    tasks.spawn(crate::nodes::lifecycle_loop(
        nodes.clone(),
        LifecycleConfig {
            gone_after: config.gone_after,
            remove_after: config.remove_after,
            presence_flush: config.presence_flush,
        },
        locks.clone(),
        stop.clone(),
    ));
    if let Some(incoming) = incoming {
        let reload = rollouts.clone();
        tasks.spawn(async move {
            crate::fleet::serve_bus(fleet_for_bus, store_for_bus, incoming, move |message| {
                reload.bus_message(message)
            })
            .await;
            Ok(())
        });
        tasks.spawn(orphan_triggers_loop(triggers.clone(), stop.clone()));
        tasks.spawn(take_over_on_leading(
            rollouts.clone(),
            sync_requests.clone(),
            locks.leader(),
            stop.clone(),
        ));
    }
    if let Some(http_listener) = http_listener {
        let http_tls = if config.http_tls {
            Some(http_tls_config(
                &server_credential.certificate_pem,
                ca.certificate_pem(),
                &server_credential.private_key_pem,
            )?)
        } else {
            None
        };
        tasks.spawn(crate::http::serve(
            http_listener,
            MetricsApi {
                metrics: metrics.clone(),
                store: store.clone(),
                fleet: fleet.clone(),
                catalogs: catalogs.clone(),
                revision: revision.clone(),
                restart_budget: restart_budget.clone(),
                token: config.metrics_token.clone(),
            },
            WebhookApi {
                sync: sync_requests.clone(),
                secret: config.webhook_secret.clone(),
                branches: environments
                    .iter()
                    .map(|environment| environment.branch.clone())
                    .collect(),
            },
            DashboardApi {
                store: store.clone(),
                fleet: fleet.clone(),
                revision: revision.clone(),
                environments: environments.clone(),
                clock: clock.clone(),
                tokens: dashboard_tokens.clone(),
            },
            http_tls,
            stop.clone(),
        ));
    }
    let mut grpc_stop = stop.clone();
    // TLS is done by the listener rather than by tonic, so that the
    // handshakes in progress and the gRPC connections open are bounded,
    // and so that the watch channel can share the port.
    let (connection_sender, connections) = mpsc::channel(config.connections.max_handshakes);
    let (watch_sender, mut watches) = mpsc::channel(config.connections.max_handshakes);
    // A certificate the store refuses (revoked, a removed node's) is placed
    // as no certificate: it holds no place of the agents and the admin.
    let identify: Identify = {
        let store = store.clone();
        Arc::new(move |leaf: &[u8]| crate::auth::identify(&*store, leaf).ok())
    };
    tasks.spawn(accept_connections(
        grpc_listener,
        tls,
        config.connections.clone(),
        identify,
        Accepted {
            grpc: connection_sender,
            watch: watch_sender,
        },
        stop.clone(),
    ));
    let watch_api = WatchApi {
        store: store.clone(),
        fleet: fleet.clone(),
        heartbeat: config.watch_heartbeat,
    };
    let watch_stop = stop.clone();
    tasks.spawn(async move {
        // Each channel's task ends on its own when the server stops.
        while let Some(connection) = watches.recv().await {
            crate::watch::start(&watch_api, *connection, &watch_stop);
        }
        Ok(())
    });
    // Pings find clients that vanished in the middle of a call. A
    // connection lives at most `max_connection_age` (then it is closed
    // gracefully: calls in progress finish, the client reconnects; the
    // listener closes it `connection_age_grace` later whatever is in
    // progress), so an idle client cannot hold a place for long.
    let keepalive = (config.gone_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    // Message sizes are set, not left to tonic's 4 MiB default, so that
    // the limits are the ones the agent and validation are built around.
    use cms_proto::limits;
    let grpc = Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive.max(Duration::from_secs(10))))
        .max_connection_age(config.connections.max_connection_age)
        .add_service(
            pb::enrollment_server::EnrollmentServer::new(EnrollmentService {
                enrollment: enrollment.clone(),
                metrics: metrics.clone(),
                blocking: blocking.clone(),
            })
            .max_decoding_message_size(limits::MAX_REQUEST_BYTES),
        )
        .add_service(
            pb::agent_server::AgentServer::new(AgentService {
                store: store.clone(),
                nodes: nodes.clone(),
                reports: reports.clone(),
                enrollment: enrollment.clone(),
                catalogs: catalogs.clone(),
                environments: environments.clone(),
                metrics: metrics.clone(),
                blocking: blocking.clone(),
                report_rate: Arc::new(ReportRate::new(config.report_rate)),
                restart_budget: restart_budget.clone(),
                rollouts: Some(rollouts.clone()),
            })
            .max_decoding_message_size(limits::MAX_REQUEST_BYTES)
            .max_encoding_message_size(limits::MAX_AGENT_RESPONSE_BYTES),
        )
        .add_service(
            pb::admin_server::AdminServer::new(AdminService {
                store: store.clone(),
                operators: crate::operators::Operators {
                    store: store.clone(),
                    ca: ca.clone(),
                    clock: clock.clone(),
                },
                audit: crate::audit::Audit {
                    store: store.clone(),
                    clock: clock.clone(),
                },
                nodes,
                reports,
                enrollment,
                triggers,
                sync: sync_requests,
                blocking,
                differ,
                rollouts,
                dashboard_tokens,
            })
            .max_decoding_message_size(limits::MAX_REQUEST_BYTES)
            .max_encoding_message_size(limits::MAX_ADMIN_RESPONSE_BYTES),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(connections).map(Ok::<_, std::io::Error>),
            async move {
                let _ = grpc_stop.wait_for(|stopped| *stopped).await;
            },
        );
    tasks.spawn(async move { grpc.await.context("The gRPC server failed") });
    shutdown.await;
    let _ = stop_sender.send(true);
    while let Some(result) = tasks.join_next().await {
        result.context("A server task panicked")??;
    }
    Ok(())
}

/// Each time this replica becomes the leader, takes over what the leader
/// before left (`Rollouts::take_over_rollouts`), and syncs at once: a
/// commit every replica fetched while none led (replicas starting
/// together) is decided then (`Rollouts::decide_undecided`), not at the
/// next sync interval, so followers are not left without a revision.
async fn take_over_on_leading(
    rollouts: Rollouts,
    sync: crate::revision::SyncRequests,
    mut leader: tokio::sync::watch::Receiver<bool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
            changed = leader.wait_for(|leads| *leads) => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
        rollouts.take_over_rollouts().await;
        if let Err(error) = sync.sync_now().await {
            tracing::warn!("Failed to sync on becoming the leader: {error:#}");
        }
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
            changed = leader.wait_for(|leads| !*leads) => {
                if changed.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// On the leading replica, marks interrupted the triggers whose replica
/// died (`Triggers::interrupt_orphans`), every half `ORPHAN_GRACE`.
async fn orphan_triggers_loop(
    triggers: Triggers,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut interval = tokio::time::interval(crate::triggers::ORPHAN_GRACE / 2);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
            _ = interval.tick() => {}
        }
        if !triggers.locks.is_leader() {
            continue;
        }
        if let Err(error) = triggers.interrupt_orphans().await {
            tracing::warn!("Failed to look for triggers left by a stopped replica: {error:#}");
        }
    }
}

/// Fetches the serving revision's AWS secrets again when they are older
/// than the refresh period, until shutdown. A changed value changes the
/// catalog cache's key (`RevisionSecrets::values`): the agents' next pull
/// gets the new catalog.
async fn refresh_secrets_loop(
    secrets: Arc<crate::secrets::ServerSecrets>,
    environments: Arc<crate::environments::Environments>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // Checked more often than the period, so a value is at most a little
    // older than it; each value is fetched only once it is due.
    let period = (secrets.refresh_period() / 4).max(Duration::from_millis(100));
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
            _ = interval.tick() => {}
        }
        // Every revision some node may be served: each environment's
        // stable one, its rollout's and its pins'.
        let references: std::collections::BTreeSet<String> = environments
            .iter()
            .flat_map(|environment| environment.revisions_in_use())
            .flat_map(|revision| revision.secrets.references().clone())
            .collect();
        if references.is_empty() {
            continue;
        }
        let secrets = secrets.clone();
        let _ = tokio::task::spawn_blocking(move || secrets.refresh(&references)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_folder_as_the_roles_source_of_a_shared_store_is_refused_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let roles = dir.path().join("roles");
        std::fs::create_dir_all(&roles).expect("roles folder");
        std::fs::write(
            roles.join("cms.toml"),
            "[hierarchy]\nlayers = [\"common\"]\n",
        )
        .expect("cms.toml");
        let mut config = ServeConfig::new(
            dir.path().join("data"),
            roles.to_str().expect("utf-8").to_string(),
        );
        config.store.location = Some(crate::store::StoreLocation::Postgres(
            "postgres://cms@127.0.0.1:1/cms".into(),
        ));
        let Err(error) = prepare(&config) else {
            panic!("a plain folder on a shared store is refused");
        };
        let text = format!("{error:#}");
        assert!(
            text.contains(&format!("--repo {} is a plain folder", roles.display()))
                && text.contains("git init"),
            "{text}"
        );
    }
}
