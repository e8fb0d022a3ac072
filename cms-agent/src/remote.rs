//! One run of the agent with a server: enroll, pull the catalog and
//! converge, queue and deliver the report, renew the certificate. The
//! daemon (`daemon`) decides when; `cms-agent enroll` and `cms-agent
//! converge` call these once.
//!
//! The last good catalog is kept on disk; when the server cannot be reached
//! the agent converges from it and says so in its report. Reports are queued
//! on disk and leave the queue only when the server has acknowledged them;
//! the report of a run that found nothing to do is queued without fsync and
//! made durable only if its delivery fails (`state.rs`), so a periodic
//! check that changes nothing flushes nothing to disk.
//! Work that blocks (facts and the metadata service, key generation, the
//! state directory, the converge itself) runs on tokio's blocking threads,
//! never on a runtime worker.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cms_modules::{BackupStore, Host};
use cms_proto::v1 as pb;
use cms_roles::Catalog;

use crate::client::{
    Connectors, ServerAddress, enroll, fetch_contents, fetch_pinned_ca, split_token,
};
use crate::contents::ContentCache;
use crate::converge::{ConvergeOptions, converge};
use crate::identity::{Identity, generate_key_and_csr, load_identity, save_identity};
use crate::lock::RunLock;
use crate::report::RunReport;
use crate::restarts::{AgentRestarts, BudgetServer};
use crate::schedule::{backoff_delay, jitter_seed};
use crate::settings::RunSettings;
use crate::state::{
    CatalogCache, Durability, ReportQueue, record_run, remove_stale_temporary_files,
};

/// Runs blocking work on tokio's blocking threads and waits for it.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work).await?
}

/// How an agent proves it may enroll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollWith {
    /// A token from `cms-server token create` (`SECRET.CA_FINGERPRINT`).
    Token(String),
    /// The EC2 instance identity document, signed by AWS: no secret on the
    /// instance. The server's CA is pinned by its fingerprint (sha256 hex
    /// of its certificate), since there is no token to carry it.
    Attestation { ca_fingerprint: String },
}

/// Enrolls this instance: a new key and CSR, and the token with the tags
/// (or the signed identity document, from which the server takes the name
/// and reads the tags itself).
pub async fn enroll_instance(
    state_dir: &Path,
    server: &str,
    with: &EnrollWith,
    node_name: Option<String>,
    tags: Option<std::collections::BTreeMap<String, String>>,
    metadata_endpoint: Option<String>,
) -> anyhow::Result<pb::EnrollResponse> {
    let address = ServerAddress::parse(server)?;
    let (token, fingerprint, node_name, tags, identity) = match with {
        EnrollWith::Token(token) => {
            let (_, fingerprint) = split_token(token)?;
            let fingerprint = fingerprint.to_string();
            let observed =
                blocking(move || crate::node::observe(Path::new("/"), tags, metadata_endpoint))
                    .await?;
            let node_name = crate::node::node_id(node_name, &observed.facts);
            (
                token.trim().to_string(),
                fingerprint,
                node_name,
                observed.tags,
                None,
            )
        }
        EnrollWith::Attestation { ca_fingerprint } => {
            let identity =
                blocking(move || crate::node::instance_identity(Path::new("/"), metadata_endpoint))
                    .await?;
            // The server names the node by the document's instance id and
            // reads its tags from EC2: nothing else is sent.
            (
                String::new(),
                ca_fingerprint.trim().to_string(),
                identity.instance_id.clone(),
                std::collections::BTreeMap::new(),
                Some(pb::IdentityDocument {
                    kind: cms_proto::AWS_INSTANCE_IDENTITY.to_string(),
                    document: identity.document,
                    signature: identity.signature,
                }),
            )
        }
    };
    let address_for_ca = address.clone();
    let ca_pem = blocking(move || fetch_pinned_ca(&address_for_ca, &fingerprint)).await?;
    let name = node_name.clone();
    let key = blocking(move || Ok(generate_key_and_csr(&name)?)).await?;
    let response = enroll(
        &address,
        &ca_pem,
        pb::EnrollRequest {
            token,
            csr_pem: key.csr_pem.clone(),
            tags: tags.into_iter().collect(),
            node_name,
            identity,
        },
    )
    .await?;
    let dir = state_dir.to_path_buf();
    let server = server.to_string();
    let (certificate_pem, ca_certificate_pem) = (
        response.certificate_pem.clone(),
        response.ca_certificate_pem.clone(),
    );
    blocking(move || {
        save_identity(
            &dir,
            &key.private_key_pem,
            &certificate_pem,
            &ca_certificate_pem,
        )?;
        std::fs::write(dir.join("server"), server.as_bytes())
            .with_context(|| format!("Failed to record the server in {}", dir.display()))
    })
    .await?;
    Ok(response)
}

/// The server this agent enrolled with.
pub fn enrolled_server(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir.join("server"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The most file content a daemon keeps in memory with its last catalog
/// between runs; a catalog holding more is read again from the cache on
/// disk at each run instead (an idle daemon stays small).
pub const KEPT_CONTENTS_LIMIT: usize = 4 << 20;

/// What a daemon keeps from one run to the next: its connectors, so that
/// its runs, deliveries, renewals and watch channels resume each other's TLS
/// sessions, and the last catalog it converged, verified and with its
/// contents, so that a periodic check the server answers "not modified"
/// neither reads nor verifies the cache on disk again. The kept catalog is
/// one the run verified (from the server or from the cache) and saved; the
/// server is asked for a newer one by its id, as with the cache on disk.
/// A one-off run (`cms-agent converge`) starts from an empty one.
#[derive(Clone, Default)]
pub struct RunMemory {
    pub connectors: Connectors,
    catalog: std::sync::Arc<std::sync::Mutex<Option<Catalog>>>,
    /// What dpkg answered the last run, used while its database is
    /// unchanged.
    pub packages: std::sync::Arc<cms_modules::package::PackageMemory>,
}

impl std::fmt::Debug for RunMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunMemory").finish_non_exhaustive()
    }
}

impl RunMemory {
    /// The kept catalog, taken: a run owns it while it converges.
    fn take_catalog(&self) -> Option<Catalog> {
        self.catalog
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// Keeps `catalog` for the next run, unless its contents exceed
    /// [`KEPT_CONTENTS_LIMIT`].
    fn keep_catalog(&self, catalog: Catalog) {
        let contents: usize = catalog.contents.values().map(|c| c.0.len()).sum();
        if contents <= KEPT_CONTENTS_LIMIT {
            *self
                .catalog
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(catalog);
        }
    }

    /// Whether a catalog is kept (for tests).
    pub fn keeps_a_catalog(&self) -> bool {
        self.catalog
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_some()
    }
}

/// Where the catalog of a run came from.
pub struct Pulled {
    pub catalog: Catalog,
    pub revision: String,
    /// Set when the run could not use a fresh catalog.
    pub note: Option<String>,
}

/// One run (`cms-agent converge`): pull the catalog (or fall back to the
/// cached one), converge, queue the report and deliver every queued report
/// the server will take.
pub async fn converge_from_server(
    state_dir: &Path,
    server: &str,
    noop: bool,
    settings: &RunSettings,
) -> anyhow::Result<RunReport> {
    converge_for_trigger(state_dir, server, noop, settings, "", &RunMemory::default()).await
}

/// One run asked for by a fleet trigger (`trigger_id` empty for a run of
/// the agent's own schedule): the report names the trigger, so the server
/// can tell the trigger this node's outcome. Connections come from
/// `memory`'s connectors, so a daemon's runs resume each other's TLS
/// sessions, and the catalog it kept from its last run is used instead of
/// the cache on disk.
pub async fn converge_for_trigger(
    state_dir: &Path,
    server: &str,
    noop: bool,
    settings: &RunSettings,
    trigger_id: &str,
    memory: &RunMemory,
) -> anyhow::Result<RunReport> {
    let connectors = &memory.connectors;
    let lock_dir = state_dir.to_path_buf();
    let _lock = blocking(move || {
        RunLock::acquire(&lock_dir, |holder| {
            eprintln!("waiting: another cms-agent run (pid {holder}) holds the run lock")
        })
    })
    .await?;
    let dir = state_dir.to_path_buf();
    let identity = blocking(move || Ok(load_identity(&dir)?)).await?.context("Failed to find this agent's identity: it is not enrolled\nhint: run cms-agent enroll --server HOST:PORT --token TOKEN")?;
    let address = ServerAddress::parse(server)?;
    // The server compiles for the tags bound at enrollment; the node sends
    // its facts. Facts may wait on the metadata service.
    let metadata_endpoint = settings.metadata_endpoint.clone();
    let facts =
        blocking(move || Ok(crate::node::observe(Path::new("/"), None, metadata_endpoint)?.facts))
            .await?;
    let cache = CatalogCache::new(state_dir);
    let contents = ContentCache::new(state_dir);
    // A damaged cache is moved aside and the run pulls a fresh catalog; the
    // note goes into the report, so the operator learns the disk lied.
    let (cached, cache_note) = match memory.take_catalog() {
        Some(kept) => (Some(kept), None),
        None => {
            let (cache, contents) = (cache.clone(), contents.clone());
            blocking(move || {
                let (mut cached, note) = cache.load_or_set_aside()?;
                if let Some(catalog) = &mut cached {
                    contents.fill(catalog);
                }
                Ok((cached, note))
            })
            .await?
        }
    };
    let mut client = match connectors.for_identity(&address, &identity) {
        Ok(connector) => connector.connect().await,
        Err(error) => Err(error),
    };
    let pulled = match &mut client {
        Ok(client) => {
            let request = pb::CatalogRequest {
                facts_json: serde_json::to_string(&facts)?,
                have_catalog_id: cached
                    .as_ref()
                    .map(|c| c.catalog_id.clone())
                    .unwrap_or_default(),
                trigger_id: trigger_id.to_string(),
            };
            match get_catalog_with_retries(client, request).await {
                Ok(response) => match response.into_inner().result {
                    Some(pb::catalog_response::Result::Catalog(catalog)) => {
                        let json = catalog.canonical_json;
                        let mut decoded = blocking(move || {
                            Catalog::from_canonical_bytes(&json)
                                .context("Failed to verify the catalog from the server")
                        })
                        .await?;
                        // Saved only once every content it names is at hand.
                        match fetch_contents(client, &mut decoded, &contents).await {
                            Ok(()) => {
                                let (cache, contents) = (cache.clone(), contents.clone());
                                blocking(move || {
                                    cache.save(&decoded)?;
                                    contents.keep_only(&decoded)?;
                                    Ok(Pulled {
                                        catalog: decoded,
                                        revision: catalog.revision,
                                        note: cache_note,
                                    })
                                })
                                .await?
                            }
                            Err(error) => fallback(
                                cached,
                                format!("{error:#}: converged from the cached catalog"),
                                cache_note.as_deref(),
                            )?,
                        }
                    }
                    Some(pb::catalog_response::Result::NotModified(not_modified)) => {
                        let mut catalog = cached.context(
                            "the server says the catalog is unchanged, but none is cached",
                        )?;
                        let note = fetch_contents(client, &mut catalog, &contents)
                            .await
                            .err()
                            .map(|error| format!("{error:#}"));
                        Pulled {
                            catalog,
                            revision: not_modified.revision,
                            note,
                        }
                    }
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
                    cache_note.as_deref(),
                )?,
            }
        }
        Err(error) => fallback(
            cached,
            format!("server unreachable ({error:#}): converged from the cached catalog"),
            cache_note.as_deref(),
        )?,
    };
    // The pull's connection carries the report too when the converge is
    // quick (a periodic check that changes nothing: one connection a run),
    // and is closed once the converge has taken `REUSE_PULL_CONNECTION`:
    // a converge can take minutes (packages), and the server keeps few
    // gRPC connections open (`MAX_GRPC_CONNECTIONS`); the report then goes
    // over a new one.
    let mut held = client.ok();
    let options = ConvergeOptions {
        noop,
        run_id: format!(
            "{}-{}",
            crate::node::node_id(None, &facts),
            crate::clock::unix_ms()
        ),
        package_memory: Some(memory.packages.clone()),
    };
    let queue = ReportQueue::new(state_dir);
    let (report, queued, catalog) = {
        let dir: PathBuf = state_dir.to_path_buf();
        let queue = queue.clone();
        let trigger_id = trigger_id.to_string();
        let Pulled {
            catalog,
            revision,
            note,
        } = pulled;
        let restarts = AgentRestarts::new(
            Some(BudgetServer {
                runtime: tokio::runtime::Handle::current(),
                connectors: connectors.clone(),
                address: address.clone(),
                identity: identity.clone(),
            }),
            settings.restart_wait,
            settings.aws(),
            state_dir,
        );
        let settings = settings.clone();
        let converged = blocking(move || {
            // Temporary files of a killed run: ours only, in our own state
            // directory (the converge sweeps the managed directories).
            remove_stale_temporary_files(&dir);
            let backups = BackupStore::open(dir.join("backups"))?;
            let mut notes: Vec<String> = note.into_iter().collect();
            if !noop {
                notes.extend(restarts.restore_drained());
            }
            let report = converge(&catalog, &Host::system(), &backups, &options, &restarts);
            if let Some(lifecycle) = &settings.lifecycle {
                let aws = crate::aws::Aws::new(settings.aws());
                notes.extend(crate::lifecycle::after_run(&dir, lifecycle, &aws, &report));
            }
            if let Some(target) = &settings.converged_target {
                notes.extend(crate::lifecycle::reach_converged_target(
                    &dir, target, &report,
                ));
            }
            let note = (!notes.is_empty()).then(|| notes.join("; "));
            // The report is queued before anything else is written, so a
            // full disk or a broken last_run.json never loses it.
            let queued = record_run(
                &dir,
                &queue,
                &report,
                &revision,
                note.as_deref(),
                &trigger_id,
            )?;
            if let Some(note) = &note {
                eprintln!("warning: {note}");
            }
            Ok((report, queued, catalog))
        });
        tokio::pin!(converged);
        tokio::select! {
            result = &mut converged => result?,
            () = tokio::time::sleep(REUSE_PULL_CONNECTION) => {
                held = None;
                converged.await?
            }
        }
    };
    memory.keep_catalog(catalog);
    if let Err(error) = deliver_reports_over(held, connectors, &address, &identity, &queue).await {
        // Not delivered now: the report of a run that found nothing to do,
        // queued without fsync, must now survive a crash like the others.
        if let (path, Durability::Atomic) = queued {
            let queue = queue.clone();
            if let Err(error) = blocking(move || queue.make_durable(&path)).await {
                eprintln!("warning: {error:#}");
            }
        }
        eprintln!("warning: reports stay queued until the server takes them: {error:#}");
    }
    Ok(report)
}

fn fallback(
    cached: Option<Catalog>,
    note: String,
    cache_note: Option<&str>,
) -> anyhow::Result<Pulled> {
    let catalog = cached.with_context(|| match cache_note {
        Some(cache_note) => format!("{note}: but there is no usable cached catalog ({cache_note})"),
        None => format!("{note}: but there is no cached catalog yet"),
    })?;
    Ok(Pulled {
        catalog,
        revision: String::new(),
        note: Some(note),
    })
}

/// Sends every queued report, oldest first; stops at the first failure so
/// the rest keep their order for the next try.
pub async fn deliver_reports(
    connectors: &Connectors,
    address: &ServerAddress,
    identity: &Identity,
    queue: &ReportQueue,
) -> anyhow::Result<usize> {
    deliver_reports_over(None, connectors, address, identity, queue).await
}

/// [`deliver_reports`] over `client` when there is one (the run's pull
/// connection), else over a new connection.
async fn deliver_reports_over(
    client: Option<pb::agent_client::AgentClient<tonic::transport::Channel>>,
    connectors: &Connectors,
    address: &ServerAddress,
    identity: &Identity,
    queue: &ReportQueue,
) -> anyhow::Result<usize> {
    let pending = {
        let queue = queue.clone();
        blocking(move || queue.pending_proto()).await?
    };
    if pending.is_empty() {
        return Ok(0);
    }
    let mut client = match client {
        Some(client) => client,
        None => {
            connectors
                .for_identity(address, identity)?
                .connect()
                .await?
        }
    };
    let mut delivered = 0;
    for (path, report) in pending {
        let queue = queue.clone();
        match client.report(report).await {
            Ok(_) => {
                blocking(move || queue.acknowledge(&path)).await?;
                delivered += 1;
            }
            // Refused for what it is (too large, malformed), not for the
            // server's state: sending it again cannot succeed, and it must
            // not hold up the reports behind it.
            Err(status) if refused_for_good(status.code()) => {
                let why = status.message().to_string();
                blocking(move || queue.set_aside(&path, &why)).await?;
            }
            Err(status) => bail!("{}", status.message()),
        }
    }
    Ok(delivered)
}

/// Renews the node certificate with a new key: the server signs a CSR for
/// the node it knows by the current certificate. Returns the new end of
/// validity. Holds the run lock, so a run never sees half an identity.
pub async fn renew_certificate(
    state_dir: &Path,
    server: &str,
    connectors: &Connectors,
) -> anyhow::Result<i64> {
    let lock_dir = state_dir.to_path_buf();
    let _lock = blocking(move || RunLock::acquire(&lock_dir, |_| {})).await?;
    let dir = state_dir.to_path_buf();
    let identity = blocking(move || Ok(load_identity(&dir)?))
        .await?
        .context("Failed to renew: this agent is not enrolled")?;
    let address = ServerAddress::parse(server)?;
    let key = blocking(|| Ok(generate_key_and_csr("renewal")?)).await?;
    let mut client = connectors
        .for_identity(&address, &identity)?
        .connect()
        .await?;
    let response = client
        .renew(pb::RenewRequest {
            csr_pem: key.csr_pem.clone(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("Failed to renew: {}", status.message()))?
        .into_inner();
    let dir = state_dir.to_path_buf();
    let not_after = response.not_after;
    blocking(move || {
        Ok(save_identity(
            &dir,
            &key.private_key_pem,
            &response.certificate_pem,
            &response.ca_certificate_pem,
        )?)
    })
    .await?;
    Ok(not_after)
}

/// How long a run's converge may take for the report to go over the pull's
/// connection; a longer one closes it when this has passed.
pub const REUSE_PULL_CONNECTION: std::time::Duration = std::time::Duration::from_secs(2);

/// Status codes that mean "busy, try again": a server shedding load in a
/// boot storm, or restarting.
fn worth_retrying(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::DeadlineExceeded
    )
}

/// Status codes with which the server refuses a report for good.
fn refused_for_good(code: tonic::Code) -> bool {
    matches!(code, tonic::Code::InvalidArgument | tonic::Code::OutOfRange)
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
