//! The roles revision the server serves and the catalogs compiled from it:
//! [`ServingRevision`] holds the last commit that validated (the sync task
//! replaces it), [`SyncRequests`] asks the sync task to sync now (the admin
//! API and the webhook), and [`compiled`] gets a node's catalog of a
//! revision from the cache.

use std::sync::{Arc, RwLock};

use cms_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};

use crate::catalogs::Catalogs;
use crate::git_sync::Revision;

/// The revision catalogs are compiled from: the last commit that validated.
#[derive(Debug, Default)]
pub struct ServingRevision(RwLock<Option<Revision>>);

impl ServingRevision {
    pub fn new(revision: Option<Revision>) -> ServingRevision {
        ServingRevision(RwLock::new(revision))
    }

    pub fn current(&self) -> Option<Revision> {
        self.0.read().expect("revision lock").clone()
    }

    /// The current revision; unavailable until one validates.
    pub fn serving(&self) -> Result<Revision, CatalogError> {
        self.current().ok_or(CatalogError::NoRevision)
    }

    pub(crate) fn replace(&self, revision: Revision) {
        *self.0.write().expect("revision lock") = Some(revision);
    }
}

/// One request to sync now, with where its outcome goes.
pub type SyncReply = oneshot::Sender<anyhow::Result<pb::SyncResponse>>;

/// Asks the sync task to sync now.
#[derive(Debug, Clone)]
pub struct SyncRequests(mpsc::Sender<SyncReply>);

impl SyncRequests {
    /// A handle and the receiving end the sync task reads.
    pub fn channel() -> (SyncRequests, mpsc::Receiver<SyncReply>) {
        let (sender, receiver) = mpsc::channel(16);
        (SyncRequests(sender), receiver)
    }

    /// Syncs now and says what happened.
    pub async fn sync_now(&self) -> anyhow::Result<pb::SyncResponse> {
        use anyhow::Context as _;
        let (reply, answer) = oneshot::channel();
        self.0
            .send(reply)
            .await
            .context("Failed to reach the sync task")?;
        answer.await.context("The sync task stopped")?
    }

    /// Asks for a sync without waiting for it; a request while the queue
    /// is full is dropped (a sync is coming anyway).
    pub fn ask_soon(&self) {
        let (reply, _) = oneshot::channel();
        let _ = self.0.try_send(reply);
    }
}

/// Why a node gets no catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("no valid roles revision yet: the server has not synced a commit that validates")]
    NoRevision,
    #[error(
        "{node_id} belongs to environment {environment}, which this server no longer follows: enroll it again or give the server --environment {environment}=BRANCH"
    )]
    EnvironmentNotServed {
        node_id: String,
        environment: String,
    },
    #[error("Failed to compile the catalog of {node_id}:\n{diagnostics}")]
    Compile {
        node_id: String,
        diagnostics: String,
    },
    #[error(
        "no content {hash} in the current catalog of {node_id} (revision {revision}): fetch the catalog again"
    )]
    NoContent {
        hash: String,
        node_id: String,
        revision: String,
    },
    #[error("the catalog of {node_id} (revision {revision}) is too large to send: {problems}")]
    TooLarge {
        node_id: String,
        revision: String,
        problems: String,
    },
}

/// `node`'s catalog of `revision`, from the cache or compiled.
pub async fn compiled(
    catalogs: &Catalogs,
    revision: &Revision,
    node: cms_roles::Node,
) -> Result<Arc<crate::catalogs::Compiled>, CatalogError> {
    let node_id = node.id.clone();
    let (secrets, generation) = revision.secrets.values();
    catalogs
        .get_with_secrets(
            &revision.commit,
            revision.repository.clone(),
            node,
            secrets,
            generation,
        )
        .await
        .map_err(|diagnostics| CatalogError::Compile {
            node_id,
            diagnostics: diagnostics.to_string(),
        })
}
