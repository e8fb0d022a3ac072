//! The sync task: follows the roles repository (each environment's git
//! branch, or a plain folder), at start, on every interval and on request
//! (`SyncRequests`); validates each new commit, hands an accepted one to
//! `Rollouts::commit_accepted` (which makes it stable or rolls it out) and
//! records every one (refused ones with their errors). It also prunes run
//! reports past their retention.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use cms_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::clock::SharedClock;
use crate::environments::Environment;
use crate::git_sync::{GitSource, Revision, SyncOutcome, Syncer};
use crate::metrics::Metrics;
use crate::revision::SyncReply;
use crate::rollouts::Rollouts;
use crate::secrets::ServerSecrets;
use crate::store::{RevisionError, RevisionRecord, SharedStore};

/// Where roles come from: a git repository (the normal case), or a plain
/// folder, for trying the server on a roles repository that is not under
/// git yet (its revision is the sha256 of its files).
pub enum RolesSource {
    Git(Syncer),
    Directory {
        path: PathBuf,
        current: Option<String>,
        secrets: Arc<ServerSecrets>,
    },
}

/// Whether `--repo` names a plain folder (served as it is, without
/// history) rather than a git repository (a URL, or a local folder holding
/// `.git` or a bare repository's `HEAD`).
pub fn is_plain_folder(repo: &str) -> bool {
    let path = Path::new(repo);
    path.is_dir() && !path.join(".git").exists() && !path.join("HEAD").exists()
}

impl RolesSource {
    /// The source for `repo` (a local path or a git URL) and `branch`;
    /// a git mirror lives in `data_dir/git`. Its commits' secrets are read
    /// with `secrets`.
    pub fn for_repo(
        repo: &str,
        branch: &str,
        data_dir: &Path,
        secrets: Arc<ServerSecrets>,
    ) -> RolesSource {
        let path = Path::new(repo);
        if is_plain_folder(repo) {
            RolesSource::Directory {
                path: path.to_path_buf(),
                current: None,
                secrets,
            }
        } else {
            RolesSource::Git(
                Syncer::new(GitSource {
                    url: repo.to_string(),
                    branch: branch.to_string(),
                    mirror_dir: data_dir.join("git"),
                })
                .with_secrets(secrets),
            )
        }
    }

    /// What the source's commits' secrets are read with.
    pub fn secrets(&self) -> &Arc<ServerSecrets> {
        match self {
            RolesSource::Git(syncer) => syncer.secrets(),
            RolesSource::Directory { secrets, .. } => secrets,
        }
    }

    fn sync_once(&mut self) -> anyhow::Result<SyncOutcome> {
        match self {
            RolesSource::Git(syncer) => Ok(syncer.sync_once()?),
            RolesSource::Directory {
                path,
                current,
                secrets,
            } => {
                let files = cms_roles::RepoFiles::read_dir(path)?;
                let mut digest = Vec::new();
                for (name, entry) in files.under("") {
                    digest.extend_from_slice(name.as_bytes());
                    digest.push(0);
                    if let cms_roles::Entry::File(bytes) = entry {
                        digest.extend_from_slice(cms_roles::digest::sha256_hex(bytes).as_bytes());
                    }
                    digest.push(0);
                }
                let commit = format!("dir-{}", cms_roles::digest::sha256_hex(&digest));
                if current.as_deref() == Some(commit.as_str()) {
                    return Ok(SyncOutcome::Unchanged { commit });
                }
                let (repository, secrets, diagnostics) =
                    crate::git_sync::validate_files(files, secrets);
                if !diagnostics.is_empty() {
                    return Ok(SyncOutcome::Refused {
                        commit,
                        diagnostics,
                    });
                }
                *current = Some(commit.clone());
                Ok(SyncOutcome::Accepted(Revision {
                    commit,
                    repository: Arc::new(repository),
                    secrets,
                }))
            }
        }
    }
}

/// What the sync task needs.
#[derive(Debug, Clone)]
pub struct Syncing {
    pub store: SharedStore,
    /// Where an accepted commit goes.
    pub rollouts: Rollouts,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
    pub interval: Duration,
    /// How long run reports are kept.
    pub report_retention: Duration,
}

/// Syncs at start, on every interval and on request, until shutdown. git
/// work blocks, so it runs in `spawn_blocking`.
pub async fn sync_loop(
    state: Syncing,
    sources: Vec<(Arc<Environment>, RolesSource)>,
    mut requests: mpsc::Receiver<SyncReply>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let sources: Vec<(Arc<Environment>, Arc<Mutex<RolesSource>>)> = sources
        .into_iter()
        .map(|(environment, source)| (environment, Arc::new(Mutex::new(source))))
        .collect();
    let mut interval = tokio::time::interval(state.interval);
    // Pruning scans every report key: hourly is plenty for a retention
    // counted in days.
    let mut last_prune: Option<tokio::time::Instant> = None;
    loop {
        let reply = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
            _ = interval.tick() => None,
            request = requests.recv() => match request {
                Some(reply) => Some(reply),
                None => return Ok(()),
            },
        };
        let outcome = sync_all(&state, &sources).await;
        state.metrics.sync_finished(&outcome);
        if let Err(error) = &outcome {
            tracing::warn!("{error:#}");
        }
        if last_prune.is_none_or(|at| at.elapsed() >= Duration::from_secs(3600)) {
            prune_reports(&state).await;
            last_prune = Some(tokio::time::Instant::now());
        }
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }
}

/// Drops reports older than the retention, on the sync interval.
async fn prune_reports(state: &Syncing) {
    let cutoff = state
        .clock
        .now_unix_ms()
        .saturating_sub(state.report_retention.as_millis() as u64);
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.prune_reports(cutoff)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(pruned)) => tracing::info!(pruned, "pruned run reports past their retention"),
        Ok(Err(error)) => tracing::warn!("Failed to prune run reports: {error}"),
        Err(error) => tracing::warn!("Failed to prune run reports: {error}"),
    }
}

/// Syncs every environment, one after the other (they share the git
/// mirror). The answer is the default environment's, with the problems of
/// the others, each prefixed with its environment; accepted only when
/// every environment's is.
async fn sync_all(
    state: &Syncing,
    sources: &[(Arc<Environment>, Arc<Mutex<RolesSource>>)],
) -> anyhow::Result<pb::SyncResponse> {
    let default = state
        .rollouts
        .environments
        .config()
        .default_name()
        .to_string();
    // Every environment is synced, whatever another's outcome.
    let mut answer: Option<pb::SyncResponse> = None;
    let mut others: Vec<(String, pb::SyncResponse)> = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    for (environment, syncer) in sources {
        match sync_once(state, environment, syncer.clone()).await {
            Ok(response) if environment.name == default => answer = Some(response),
            Ok(response) => others.push((environment.name.clone(), response)),
            Err(error) => {
                let error =
                    error.context(format!("Failed to sync environment {}", environment.name));
                if failure.is_some() {
                    tracing::warn!("{error:#}");
                } else {
                    failure = Some(error);
                }
            }
        }
    }
    if let Some(error) = failure {
        return Err(error);
    }
    let mut answer = answer.unwrap_or_default();
    for (environment, response) in others {
        answer.accepted &= response.accepted;
        answer
            .errors
            .extend(response.errors.into_iter().map(|mut error| {
                error.message = format!("[environment {environment}] {}", error.message);
                error
            }));
    }
    Ok(answer)
}

async fn sync_once(
    state: &Syncing,
    environment: &Arc<Environment>,
    syncer: Arc<Mutex<RolesSource>>,
) -> anyhow::Result<pb::SyncResponse> {
    let outcome =
        tokio::task::spawn_blocking(move || syncer.lock().expect("syncer lock").sync_once())
            .await
            .context("The sync task panicked")??;
    let store = state.store.clone();
    let response = match outcome {
        SyncOutcome::Unchanged { commit } => {
            // A replica that does not lead serves what the leader stored;
            // a commit its mirror lacked at the leader's change is loaded
            // now.
            if !state.rollouts.decides() {
                state.rollouts.follow_store(environment).await;
            } else if !state.rollouts.locks.is_local() {
                // A replica that now leads may have fetched this commit
                // while another led, which died before deciding.
                state.rollouts.decide_undecided(environment, &commit).await;
            }
            pb::SyncResponse {
                revision: commit,
                accepted: true,
                errors: Vec::new(),
            }
        }
        SyncOutcome::Accepted(revision) => {
            let commit = revision.commit.clone();
            let record = RevisionRecord {
                commit: commit.clone(),
                accepted: true,
                errors: Vec::new(),
                synced_unix_ms: state.clock.now_unix_ms(),
            };
            tokio::task::spawn_blocking(move || store.put_revision(&record)).await??;
            tracing::info!(environment = %environment.name, commit = %commit, "accepted a new commit");
            state.rollouts.commit_accepted(environment, revision).await;
            pb::SyncResponse {
                revision: commit,
                accepted: true,
                errors: Vec::new(),
            }
        }
        SyncOutcome::Refused {
            commit,
            diagnostics,
        } => {
            let errors: Vec<RevisionError> = diagnostics
                .iter()
                .map(|d| RevisionError {
                    file: d.file.clone(),
                    line: d.line,
                    column: d.column,
                    message: d.message.clone(),
                })
                .collect();
            let record = RevisionRecord {
                commit: commit.clone(),
                accepted: false,
                errors: errors.clone(),
                synced_unix_ms: state.clock.now_unix_ms(),
            };
            tokio::task::spawn_blocking(move || store.put_revision(&record)).await??;
            tracing::warn!(environment = %environment.name, commit = %commit, problems = errors.len(), "refused a commit that does not validate; the last good revision stays");
            pb::SyncResponse {
                revision: commit,
                accepted: false,
                errors: errors
                    .into_iter()
                    .map(|e| pb::ValidationError {
                        file: e.file,
                        line: e.line,
                        column: e.column,
                        message: e.message,
                    })
                    .collect(),
            }
        }
    };
    Ok(response)
}
