//! The agent with a server: enroll, pull the catalog and converge, report,
//! and the daemon that does it at boot and then on an interval.
//!
//! The last good catalog is kept on disk; when the server cannot be reached
//! the agent converges from it and says so in its report. Reports are queued
//! on disk and leave the queue only when the server has acknowledged them.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use cms_modules::{BackupStore, Host};
use cms_proto::v1 as pb;
use cms_roles::Catalog;

use crate::client::{ServerAddress, connect, enroll, fetch_pinned_ca, split_token};
use crate::converge::{ConvergeOptions, converge};
use crate::identity::{generate_key_and_csr, load_identity, save_identity};
use crate::lock::RunLock;
use crate::report::{RunReport, Status};
use crate::state::{CatalogCache, ReportQueue, save_report};

/// Enrolls this instance: a new key and CSR, the token, the tags.
pub async fn enroll_instance(
    state_dir: &Path,
    server: &str,
    token: &str,
    node_name: Option<String>,
    tags: Option<std::collections::BTreeMap<String, String>>,
    metadata_endpoint: Option<String>,
) -> anyhow::Result<pb::EnrollResponse> {
    let address = ServerAddress::parse(server)?;
    let (_, fingerprint) = split_token(token)?;
    let observed = crate::node::observe(Path::new("/"), tags, metadata_endpoint)?;
    let node_name = crate::node::node_id(node_name, &observed.facts);
    let tags = observed.tags;
    let address_for_ca = address.clone();
    let fingerprint = fingerprint.to_string();
    let ca_pem =
        tokio::task::spawn_blocking(move || fetch_pinned_ca(&address_for_ca, &fingerprint))
            .await??;
    let key = generate_key_and_csr(&node_name)?;
    let response = enroll(
        &address,
        &ca_pem,
        pb::EnrollRequest {
            token: token.trim().to_string(),
            csr_pem: key.csr_pem.clone(),
            tags: tags.into_iter().collect(),
            node_name,
            identity: None,
        },
    )
    .await?;
    save_identity(
        state_dir,
        &key.private_key_pem,
        &response.certificate_pem,
        &response.ca_certificate_pem,
    )?;
    std::fs::write(state_dir.join("server"), server.as_bytes())
        .with_context(|| format!("Failed to record the server in {}", state_dir.display()))?;
    Ok(response)
}

/// The server this agent enrolled with.
pub fn enrolled_server(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir.join("server"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Where the catalog of a run came from.
pub struct Pulled {
    pub catalog: Catalog,
    pub revision: String,
    /// Set when the run could not use a fresh catalog.
    pub note: Option<String>,
}

/// One run: pull the catalog (or fall back to the cached one), converge,
/// queue the report and deliver every queued report the server will take.
pub async fn converge_from_server(
    state_dir: &Path,
    server: &str,
    noop: bool,
    metadata_endpoint: Option<String>,
) -> anyhow::Result<RunReport> {
    converge_for_trigger(state_dir, server, noop, metadata_endpoint, "").await
}

/// One run asked for by a fleet trigger (`trigger_id` empty for a run of
/// the agent's own schedule): the report names the trigger, so the server
/// can tell the trigger this node's outcome.
pub async fn converge_for_trigger(
    state_dir: &Path,
    server: &str,
    noop: bool,
    metadata_endpoint: Option<String>,
    trigger_id: &str,
) -> anyhow::Result<RunReport> {
    let lock_dir = state_dir.to_path_buf();
    let _lock = tokio::task::spawn_blocking(move || {
        RunLock::acquire(&lock_dir, |holder| {
            eprintln!("waiting: another cms-agent run (pid {holder}) holds the run lock")
        })
    })
    .await??;
    let identity = load_identity(state_dir)?.context("Failed to find this agent's identity: it is not enrolled\nhint: run cms-agent enroll --server HOST:PORT --token TOKEN")?;
    let address = ServerAddress::parse(server)?;
    // The server compiles for the tags bound at enrollment; the node sends
    // its facts.
    let facts = crate::node::observe(Path::new("/"), None, metadata_endpoint)?.facts;
    let cache = CatalogCache::new(state_dir);
    let cached = cache.load()?;
    let client = connect(&address, &identity).await;
    // The pull's connection closes before the converge, which can take
    // minutes (packages): the server keeps few gRPC connections open
    // (`MAX_GRPC_CONNECTIONS`), and the report goes over a new one.
    let pulled = match client {
        Ok(mut client) => {
            let request = pb::CatalogRequest {
                facts_json: serde_json::to_string(&facts)?,
                have_catalog_id: cached
                    .as_ref()
                    .map(|c| c.catalog_id.clone())
                    .unwrap_or_default(),
            };
            match get_catalog_with_retries(&mut client, request).await {
                Ok(response) => match response.into_inner().result {
                    Some(pb::catalog_response::Result::Catalog(catalog)) => {
                        let decoded = Catalog::from_canonical_bytes(&catalog.canonical_json)
                            .context("Failed to verify the catalog from the server")?;
                        cache.save(&decoded)?;
                        Pulled {
                            catalog: decoded,
                            revision: catalog.revision,
                            note: None,
                        }
                    }
                    Some(pb::catalog_response::Result::NotModified(not_modified)) => Pulled {
                        catalog: cached.clone().context(
                            "the server says the catalog is unchanged, but none is cached",
                        )?,
                        revision: not_modified.revision,
                        note: None,
                    },
                    None => bail!("Failed to read the server's answer: no catalog"),
                },
                Err(status)
                    if status.code() == tonic::Code::PermissionDenied
                        || status.code() == tonic::Code::Unauthenticated =>
                {
                    bail!(
                        "Failed to get the catalog: the server refused this node: {}",
                        status.message()
                    )
                }
                Err(status) => fallback(
                    cached,
                    format!(
                        "the server could not give a catalog ({}): converged from the cached catalog",
                        status.message()
                    ),
                )?,
            }
        }
        Err(error) => fallback(
            cached,
            format!("server unreachable ({error:#}): converged from the cached catalog"),
        )?,
    };
    let backups = BackupStore::open(state_dir.join("backups"))?;
    let catalog = pulled.catalog;
    let options = ConvergeOptions {
        noop,
        run_id: format!(
            "{}-{}",
            crate::node::node_id(None, &facts),
            crate::converge::now_unix_ms()
        ),
    };
    let report = tokio::task::spawn_blocking(move || {
        converge(&catalog, &Host::system(), &backups, &options)
    })
    .await?;
    save_report(state_dir, &report)?;
    let queue = ReportQueue::new(state_dir);
    queue.enqueue_for_trigger(
        &report,
        &pulled.revision,
        pulled.note.as_deref(),
        trigger_id,
    )?;
    if let Some(note) = &pulled.note {
        eprintln!("warning: {note}");
    }
    if let Err(error) = deliver_reports(&address, &identity, &queue).await {
        eprintln!("warning: reports stay queued until the server takes them: {error:#}");
    }
    Ok(report)
}

fn fallback(cached: Option<Catalog>, note: String) -> anyhow::Result<Pulled> {
    let catalog = cached.with_context(|| format!("{note}: but there is no cached catalog yet"))?;
    Ok(Pulled {
        catalog,
        revision: String::new(),
        note: Some(note),
    })
}

/// Sends every queued report, oldest first; stops at the first failure so
/// the rest keep their order for the next try.
pub async fn deliver_reports(
    address: &ServerAddress,
    identity: &crate::identity::Identity,
    queue: &ReportQueue,
) -> anyhow::Result<usize> {
    let pending = queue.pending_proto()?;
    if pending.is_empty() {
        return Ok(0);
    }
    let mut client = connect(address, identity).await?;
    deliver_with(&mut client, queue).await
}

/// Sends every queued report over an open connection, oldest first.
async fn deliver_with(
    client: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
    queue: &ReportQueue,
) -> anyhow::Result<usize> {
    let pending = queue.pending_proto()?;
    let mut delivered = 0;
    for (path, report) in pending {
        client
            .report(report)
            .await
            .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
        queue.acknowledge(&path)?;
        delivered += 1;
    }
    Ok(delivered)
}

/// A report as the contract carries it.
pub fn to_proto(report: &RunReport, revision: &str, note: Option<&str>) -> pb::RunReport {
    pb::RunReport {
        run_id: report.run_id.clone(),
        catalog_id: report.catalog_id.clone(),
        revision: revision.to_string(),
        started_at_unix_ms: report.started_at_unix_ms as i64,
        duration_ms: report.duration_ms as u64,
        noop: report.noop,
        trigger_id: String::new(),
        note: note.unwrap_or_default().to_string(),
        resources: report
            .resources
            .iter()
            .map(|r| pb::ResourceResult {
                reference: r.reference.clone(),
                status: match r.status {
                    Status::Unchanged => pb::ResourceStatus::Unchanged,
                    Status::Changed => pb::ResourceStatus::Changed,
                    Status::Failed => pb::ResourceStatus::Failed,
                    Status::Skipped => pb::ResourceStatus::Skipped,
                } as i32,
                diff: r
                    .changes
                    .iter()
                    .map(|c| match &c.diff {
                        Some(diff) => format!("{}: {} -> {}\n{diff}", c.attribute, c.from, c.to),
                        None => format!("{}: {} -> {}", c.attribute, c.from, c.to),
                    })
                    .chain(
                        r.refresh
                            .iter()
                            .map(|refresh| format!("refresh: {refresh}")),
                    )
                    .collect::<Vec<_>>()
                    .join("\n"),
                error: r
                    .error
                    .clone()
                    .or_else(|| r.reason.clone())
                    .unwrap_or_default(),
                duration_ms: r.duration_ms as u64,
            })
            .collect(),
    }
}

/// A converge the server asked for over the `Watch` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvergeRequest {
    pub trigger_id: String,
    pub noop: bool,
}

/// The daemon: converge at boot (enrolling first when there is a token and
/// no identity), then every interval plus this node's splay, until SIGTERM
/// or Ctrl-C. A failed run is reported and the next one comes on schedule.
/// Meanwhile it holds a `Watch` stream open (reconnecting with backoff and
/// jitter): a converge-now from the server runs at once, or right after the
/// run in progress. The certificate is renewed when two thirds of its
/// lifetime have passed.
pub async fn run_daemon(
    state_dir: &Path,
    config: crate::config::AgentConfig,
    terminal: crate::cli::Terminal,
) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut backoff = Duration::from_secs(5);
    let seed = jitter_seed();
    let mut enroll_attempt = 0u32;
    let (requests_sender, mut requests) = tokio::sync::mpsc::channel::<ConvergeRequest>(16);
    let mut watcher: Option<tokio::task::JoinHandle<()>> = None;
    let mut next: Option<ConvergeRequest> = None;
    loop {
        if let Some(identity) = load_identity(state_dir)?
            && certificate_expired(&identity)
            && config.token.is_some()
        {
            eprintln!(
                "the node certificate has expired (the agent was away too long): enrolling again"
            );
            crate::identity::retire_identity(state_dir)?;
            if let Some(watcher) = watcher.take() {
                watcher.abort();
            }
        }
        if load_identity(state_dir)?.is_none() {
            let (Some(server), Some(token)) = (config.server.clone(), config.token.clone()) else {
                bail!(
                    "Failed to start: this agent is not enrolled and its configuration has no server and token\nhint: set server and token (or token_file) in /etc/cms/agent.toml, or run cms-agent enroll"
                );
            };
            match enroll_instance(
                state_dir,
                &server,
                &token,
                None,
                None,
                config.metadata_endpoint.clone(),
            )
            .await
            {
                Ok(response) => tracing::info!("enrolled as {}", response.node_id),
                Err(error) => {
                    // Jittered, so a fleet refused at once does not come
                    // back at once.
                    let wait = backoff / 2 + backoff_delay(enroll_attempt, seed).min(backoff / 2);
                    tracing::error!("{error:#}; retrying in {} s", wait.as_secs());
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = terminate.recv() => return Ok(()),
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                    enroll_attempt += 1;
                    continue;
                }
            }
        }
        let server = config
            .server
            .clone()
            .or_else(|| enrolled_server(state_dir))
            .context("Failed to find the server: set `server` in /etc/cms/agent.toml")?;
        if watcher.as_ref().is_none_or(|w| w.is_finished()) {
            watcher = Some(tokio::spawn(watch_loop(
                state_dir.to_path_buf(),
                server.clone(),
                requests_sender.clone(),
            )));
        }
        let request = next.take();
        let (noop, trigger_id) = request
            .as_ref()
            .map_or((false, ""), |r| (r.noop, r.trigger_id.as_str()));
        if !trigger_id.is_empty() {
            tracing::info!(
                "converging now for trigger {trigger_id}{}",
                if noop { " (noop)" } else { "" }
            );
        }
        match converge_for_trigger(
            state_dir,
            &server,
            noop,
            config.metadata_endpoint.clone(),
            trigger_id,
        )
        .await
        {
            Ok(report) => {
                crate::textfile::record(&config.textfile, &report);
                let _ = crate::cli::print_report(&report, crate::cli::Format::Text, terminal);
            }
            Err(error) => tracing::error!("{error:#}"),
        }
        // The first run at boot is never delayed; later ones come every
        // interval plus this node's splay, or at once when asked.
        let next_run =
            tokio::time::Instant::now() + config.interval + splay_for(state_dir, config.splay);
        let mut delivery_attempt = 0u32;
        loop {
            let renew_at = renewal_instant(state_dir);
            // Reports the server did not take are offered again soon, with
            // backoff and jitter, not only at the next run.
            let queued = ReportQueue::new(state_dir)
                .pending()
                .map(|p| !p.is_empty())
                .unwrap_or(false);
            let deliver_at = if queued {
                tokio::time::Instant::now()
                    + Duration::from_secs(1)
                    + backoff_delay(delivery_attempt, seed)
            } else {
                next_run + Duration::from_secs(3600)
            };
            tokio::select! {
                _ = tokio::time::sleep_until(next_run) => break,
                _ = tokio::time::sleep_until(deliver_at) => {
                    let address = ServerAddress::parse(&server)?;
                    let delivered = match load_identity(state_dir)? {
                        Some(identity) => deliver_reports(&address, &identity, &ReportQueue::new(state_dir)).await,
                        None => Ok(0),
                    };
                    match delivered {
                        Ok(count) => {
                            tracing::info!("delivered {count} queued report(s)");
                            delivery_attempt = 0;
                        }
                        Err(_) => delivery_attempt = (delivery_attempt + 1).min(16),
                    }
                }
                request = requests.recv() => {
                    next = request;
                    break;
                }
                _ = tokio::time::sleep_until(renew_at) => {
                    match renew_certificate(state_dir, &server).await {
                        Ok(not_after) => tracing::info!("renewed the node certificate; it is valid until {not_after} (Unix time)"),
                        Err(error) => {
                            tracing::warn!("Failed to renew the node certificate: {error:#}; trying again soon");
                            tokio::select! {
                                _ = tokio::time::sleep(backoff_delay(3, jitter_seed()) + Duration::from_secs(1)) => {}
                                _ = terminate.recv() => return Ok(()),
                            }
                        }
                    }
                }
                _ = terminate.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
        }
    }
}

/// Whether the node certificate is past its end.
fn certificate_expired(identity: &crate::identity::Identity) -> bool {
    crate::identity::certificate_validity(&identity.certificate_pem)
        .is_ok_and(|(_, not_after)| not_after <= now_unix())
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// When to renew the certificate, as a tokio instant; far away when the
/// agent has no identity.
fn renewal_instant(state_dir: &Path) -> tokio::time::Instant {
    let far = tokio::time::Instant::now() + Duration::from_secs(24 * 3600);
    let Ok(Some(identity)) = load_identity(state_dir) else {
        return far;
    };
    let received = crate::identity::certificate_received_unix(state_dir).unwrap_or(0);
    match crate::identity::renewal_due_unix(&identity.certificate_pem, received) {
        Ok(due) => {
            let wait = (due - now_unix()).max(0) as u64;
            tokio::time::Instant::now() + Duration::from_secs(wait)
        }
        Err(_) => far,
    }
}

/// Renews the node certificate with a new key: the server signs a CSR for
/// the node it knows by the current certificate. Returns the new end of
/// validity. Holds the run lock, so a run never sees half an identity.
pub async fn renew_certificate(state_dir: &Path, server: &str) -> anyhow::Result<i64> {
    let lock_dir = state_dir.to_path_buf();
    let _lock = tokio::task::spawn_blocking(move || RunLock::acquire(&lock_dir, |_| {})).await??;
    let identity =
        load_identity(state_dir)?.context("Failed to renew: this agent is not enrolled")?;
    let address = ServerAddress::parse(server)?;
    let key = generate_key_and_csr("renewal")?;
    let mut client = connect(&address, &identity).await?;
    let response = client
        .renew(pb::RenewRequest {
            csr_pem: key.csr_pem.clone(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("Failed to renew: {}", status.message()))?
        .into_inner();
    save_identity(
        state_dir,
        &key.private_key_pem,
        &response.certificate_pem,
        &response.ca_certificate_pem,
    )?;
    Ok(response.not_after)
}

/// Holds a `Watch` stream open and passes converge-now commands on;
/// reconnects with exponential backoff and full jitter when the stream
/// breaks, so a restarted server is not hit by the whole fleet at once.
async fn watch_loop(
    state_dir: std::path::PathBuf,
    server: String,
    requests: tokio::sync::mpsc::Sender<ConvergeRequest>,
) {
    let seed = jitter_seed();
    let mut attempt = 0u32;
    loop {
        match watch_once(&state_dir, &server, &requests, &mut attempt).await {
            Ok(()) => {}
            Err(error) if attempt == 0 => {
                tracing::warn!("the watch stream ended: {error:#}; reconnecting");
            }
            Err(_) => {}
        }
        if requests.is_closed() {
            return;
        }
        tokio::time::sleep(backoff_delay(attempt, seed)).await;
        attempt = (attempt + 1).min(16);
    }
}

/// How long the agent waits for a first heartbeat before it gives up on a
/// silent server; afterwards three of the server's announced intervals.
const FIRST_HEARTBEAT_WAIT: Duration = Duration::from_secs(90);

async fn watch_once(
    state_dir: &Path,
    server: &str,
    requests: &tokio::sync::mpsc::Sender<ConvergeRequest>,
    attempt: &mut u32,
) -> anyhow::Result<()> {
    let identity = load_identity(state_dir)?.context("not enrolled")?;
    let address = ServerAddress::parse(server)?;
    let mut channel = crate::client::open_watch(&address, &identity).await?;
    let mut patience = FIRST_HEARTBEAT_WAIT;
    loop {
        let event = tokio::time::timeout(patience, channel.next_event())
            .await
            .map_err(|_| anyhow::anyhow!("the server sent nothing for {patience:?}"))??;
        match event.event {
            Some(pb::watch_event::Event::Heartbeat(beat)) => {
                // The server answered: the next break starts the backoff
                // afresh.
                *attempt = 0;
                if beat.interval_seconds > 0 {
                    patience = Duration::from_secs(3 * u64::from(beat.interval_seconds));
                }
            }
            Some(pb::watch_event::Event::ConvergeNow(command)) => {
                *attempt = 0;
                let _ = requests
                    .send(ConvergeRequest {
                        trigger_id: command.trigger_id,
                        noop: command.noop,
                    })
                    .await;
            }
            Some(pb::watch_event::Event::Refused(refused)) => {
                bail!("the server refused the watch channel: {}", refused.message)
            }
            None => {}
        }
    }
}

/// The same delay for a node on every run, different across nodes, so a
/// fleet spreads its runs over the splay without any coordination.
fn splay_for(state_dir: &Path, splay: Duration) -> Duration {
    if splay.is_zero() {
        return Duration::ZERO;
    }
    let identity = load_identity(state_dir)
        .ok()
        .flatten()
        .map(|i| i.certificate_pem)
        .unwrap_or_default();
    let digest = crate::client::sha256_digest(identity.as_bytes());
    let number = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    Duration::from_millis(number % splay.as_millis().max(1) as u64)
}

/// Status codes that mean "busy, try again": a server shedding load in a
/// boot storm, or restarting.
fn worth_retrying(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::DeadlineExceeded
    )
}

/// How many times a busy server is asked again before the agent falls back
/// to its cached catalog.
const CATALOG_RETRIES: u32 = 4;

/// `GetCatalog`, asked again with exponential backoff and full jitter while
/// the server says it is busy, so a fleet booting at once spreads its
/// retries instead of hammering the server in step.
async fn get_catalog_with_retries(
    client: &mut pb::agent_client::AgentClient<tonic::transport::Channel>,
    request: pb::CatalogRequest,
) -> Result<tonic::Response<pb::CatalogResponse>, tonic::Status> {
    let seed = jitter_seed();
    let mut attempt = 0;
    loop {
        match client.get_catalog(request.clone()).await {
            Err(status) if worth_retrying(status.code()) && attempt < CATALOG_RETRIES => {
                tokio::time::sleep(backoff_delay(attempt, seed)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// The delay before retry `attempt` (0-based): a random point in
/// `[0, min(cap, base * 2^attempt)]` ("full jitter"), drawn from `seed`.
pub fn backoff_delay(attempt: u32, seed: u64) -> Duration {
    const BASE_MS: u64 = 500;
    const CAP_MS: u64 = 15_000;
    let ceiling = BASE_MS.saturating_mul(1u64 << attempt.min(16)).min(CAP_MS);
    // SplitMix64 of (seed, attempt): cheap, and different per attempt.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15u64.wrapping_mul(u64::from(attempt) + 1));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Duration::from_millis(z % (ceiling + 1))
}

/// Different on every node and every run, without a random number crate.
fn jitter_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    nanos ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_and_jitter_spreads_nodes() {
        for attempt in 0..10 {
            let ceiling = (500u64 << attempt).min(15_000);
            for seed in 0..200u64 {
                assert!(
                    backoff_delay(attempt, seed.wrapping_mul(7919))
                        <= Duration::from_millis(ceiling)
                );
            }
        }
        // Many nodes retrying at once do not pick the same moment.
        let delays: std::collections::BTreeSet<Duration> = (0..100u64)
            .map(|node| backoff_delay(3, node * 104_729))
            .collect();
        assert!(delays.len() > 90, "{} distinct delays of 100", delays.len());
        // The same node and attempt always get the same delay.
        assert_eq!(backoff_delay(2, 42), backoff_delay(2, 42));
    }
}
