//! The gRPC services: each method decodes the request, finds out who is
//! calling (`auth`), calls the domain (`enrollment`, `nodes`, `reports`,
//! `triggers`, the catalog cache) and encodes the answer; errors become a
//! `Status` in one place (`status`).
//!
//! Each service holds only the handles it uses. The TLS layer lets clients
//! without a certificate through only so that `Enroll` can be reached;
//! every other call requires one, checked against the store on every call.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cms_proto::report::RunRecord;
use cms_proto::v1 as pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::AuthError;
use crate::blocking::Blocking;
use crate::catalogs::Catalogs;
use crate::enrollment::{EnrollRequest, Enrolled, Enrollment};
use crate::metrics::{CatalogAnswer, Metrics};
use crate::node_state::NodeState;
use crate::nodes::Nodes;
use crate::pki::PeerIdentity;
use crate::reports::{ReportRate, Reports};
use crate::revision::{CatalogError, ServingRevision, SyncRequests, compiled};
use crate::store::SharedStore;
use crate::triggers::{TriggerRequest, Triggers};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Size of one `GetContent` chunk.
const CONTENT_CHUNK: usize = 64 * 1024;

/// Who is calling, from the verified client certificate.
fn caller<T>(store: &SharedStore, request: &Request<T>) -> Result<PeerIdentity, AuthError> {
    let leaf = request
        .peer_certs()
        .and_then(|certificates| certificates.first().cloned())
        .ok_or(AuthError::NoCertificate)?;
    crate::auth::identify(&**store, leaf.as_ref())
}

fn node_caller<T>(store: &SharedStore, request: &Request<T>) -> Result<String, Status> {
    Ok(crate::auth::node(caller(store, request)?)?)
}

fn admin_caller<T>(store: &SharedStore, request: &Request<T>) -> Result<(), Status> {
    Ok(crate::auth::admin(caller(store, request)?)?)
}

fn enroll_response(enrolled: Enrolled) -> pb::EnrollResponse {
    pb::EnrollResponse {
        node_id: enrolled.node_id,
        certificate_pem: enrolled.certificate_pem,
        ca_certificate_pem: enrolled.ca_certificate_pem,
        bound_tags: enrolled.bound_tags.into_iter().collect(),
        not_after: enrolled.not_after_unix,
    }
}

/// The enrollment API: the one call without a client certificate.
#[derive(Debug, Clone)]
pub struct EnrollmentService {
    pub enrollment: Enrollment,
    pub metrics: Arc<Metrics>,
    pub blocking: Blocking,
}

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        // An agent may present its current certificate to enroll again
        // under its own live name (new tags, new key).
        let presented = caller(&self.enrollment.store, &request).ok();
        let request = request.into_inner();
        // Checked before counting: a name that is not one is not an
        // enrollment refused.
        crate::pki::check_node_id(&request.node_name)
            .map_err(crate::enrollment::EnrollError::InvalidNodeName)?;
        let presented_own_certificate =
            matches!(&presented, Some(PeerIdentity::Node(id)) if *id == request.node_name);
        let enroll = EnrollRequest {
            node_name: request.node_name,
            token: request.token,
            csr_pem: request.csr_pem,
            tags: request.tags.into_iter().collect(),
            presented_own_certificate,
        };
        let enrollment = self.enrollment.clone();
        let enrolled: Result<pb::EnrollResponse, Status> =
            match self.blocking.run(move || enrollment.enroll(enroll)).await {
                Ok(Ok(enrolled)) => Ok(enroll_response(enrolled)),
                Ok(Err(error)) => Err(error.into()),
                Err(error) => Err(error.into()),
            };
        self.metrics.enrollment(&enrolled);
        enrolled.map(Response::new)
    }
}

/// The agent API: catalogs, contents, reports and renewal.
#[derive(Debug, Clone)]
pub struct AgentService {
    pub store: SharedStore,
    pub nodes: Nodes,
    pub reports: Reports,
    pub enrollment: Enrollment,
    pub catalogs: Arc<Catalogs>,
    pub revision: Arc<ServingRevision>,
    pub metrics: Arc<Metrics>,
    pub blocking: Blocking,
    /// How many reports each node may send.
    pub report_rate: Arc<ReportRate>,
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn get_catalog(
        &self,
        request: Request<pb::CatalogRequest>,
    ) -> Result<Response<pb::CatalogResponse>, Status> {
        let answer = self.metrics.catalog_request();
        let node_id = node_caller(&self.store, &request)?;
        let request = request.into_inner();
        let facts: BTreeMap<String, serde_json::Value> = if request.facts_json.trim().is_empty() {
            BTreeMap::new()
        } else {
            serde_json::from_str(&request.facts_json)
                .map_err(|e| crate::status::invalid_argument(format!("facts_json: {e}")))?
        };
        let revision = self.revision.serving()?;
        let facts_value = serde_json::to_value(&facts).unwrap_or_default();
        // A read, no fsync: the common case (same facts, node active) only
        // notes the time in memory; the lifecycle task writes it in batches.
        let node_record = self.nodes.enrolled(&node_id)?;
        if !self
            .nodes
            .note_catalog_request(&node_record, facts_value.clone())
        {
            let nodes = self.nodes.clone();
            let id = node_id.clone();
            self.blocking
                .run(move || nodes.reactivate(&id, facts_value))
                .await??;
        }
        let node = crate::catalogs::node(&node_id, &node_record.tags, facts);
        let catalog = compiled(&self.catalogs, &revision, node).await?;
        if request.have_catalog_id == catalog.catalog_id {
            answer.answered(CatalogAnswer::NotModified);
            return Ok(Response::new(pb::CatalogResponse {
                result: Some(pb::catalog_response::Result::NotModified(pb::NotModified {
                    catalog_id: catalog.catalog_id.clone(),
                    revision: revision.commit.clone(),
                })),
            }));
        }
        answer.answered(CatalogAnswer::Catalog);
        Ok(Response::new(pb::CatalogResponse {
            result: Some(pb::catalog_response::Result::Catalog(pb::Catalog {
                catalog_id: catalog.catalog_id.clone(),
                revision: revision.commit.clone(),
                canonical_json: catalog.canonical_bytes(),
            })),
        }))
    }

    type GetContentStream = ResponseStream<pb::ContentChunk>;

    /// A content of the caller's current catalog, by hash. Contents are
    /// derived from the revision, so the server does not store them: they
    /// live with the compiled catalogs (one compile serves every identical
    /// instance), and a catalog no longer cached is compiled again from
    /// the node's tags and last facts. A hash that is not in the caller's
    /// catalog is not found, whoever else's it is.
    async fn get_content(
        &self,
        request: Request<pb::ContentRequest>,
    ) -> Result<Response<Self::GetContentStream>, Status> {
        let node_id = node_caller(&self.store, &request)?;
        let hash = request.into_inner().sha256;
        let revision = self.revision.serving()?;
        let node_record = self.nodes.current(&node_id)?;
        let facts: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(node_record.facts.clone()).unwrap_or_default();
        let node = crate::catalogs::node(&node_id, &node_record.tags, facts);
        let catalog = compiled(&self.catalogs, &revision, node).await?;
        let content = catalog
            .contents
            .get(&hash)
            .ok_or_else(|| CatalogError::NoContent {
                hash: hash.clone(),
                node_id: node_id.clone(),
                revision: revision.commit.clone(),
            })?;
        let chunks: Vec<Result<pb::ContentChunk, Status>> = content
            .0
            .chunks(CONTENT_CHUNK)
            .map(|chunk| {
                Ok(pb::ContentChunk {
                    data: chunk.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn report(
        &self,
        request: Request<pb::RunReport>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        let node_id = node_caller(&self.store, &request)?;
        // Refused beyond its rate, before it is read: the agent keeps it.
        self.report_rate
            .admit(&node_id, self.reports.clock.now_unix_ms())?;
        let record = RunRecord::from(&request.into_inner());
        let run_id = record.run_id.clone();
        let reports = self.reports.clone();
        self.blocking
            .run(move || reports.record(&node_id, record))
            .await??;
        // Acknowledged only now that the report is on disk.
        Ok(Response::new(pb::ReportAck { run_id }))
    }

    type WatchStream = ResponseStream<pb::WatchEvent>;

    async fn watch(
        &self,
        _request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::failed_precondition(
            "the Watch stream is replaced by the watch channel (ALPN cms-watch/1 on this port): upgrade cms-agent",
        ))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let node_id = node_caller(&self.store, &request)?;
        let csr = request.into_inner().csr_pem;
        let enrollment = self.enrollment.clone();
        let enrolled = self
            .blocking
            .run(move || enrollment.renew(&node_id, &csr))
            .await??;
        Ok(Response::new(enroll_response(enrolled)))
    }
}

/// The admin API: the operator's CLI, with the admin credential.
#[derive(Debug, Clone)]
pub struct AdminService {
    pub store: SharedStore,
    pub nodes: Nodes,
    pub reports: Reports,
    pub enrollment: Enrollment,
    pub triggers: Triggers,
    pub sync: SyncRequests,
    pub blocking: Blocking,
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        admin_caller(&self.store, &request)?;
        let selector: BTreeMap<String, String> = request
            .into_inner()
            .selector
            .map(|s| s.tags.into_iter().collect())
            .unwrap_or_default();
        let nodes = self.nodes.clone();
        let listed = self.blocking.run(move || nodes.list(&selector)).await??;
        Ok(Response::new(pb::ListNodesResponse {
            nodes: listed
                .into_iter()
                .map(|(n, last_seen_unix_ms)| pb::NodeSummary {
                    last_seen_unix_ms: last_seen_unix_ms as i64,
                    status: NodeState::of(&n).as_str().into(),
                    node_id: n.id,
                    tags: n.tags.into_iter().collect(),
                    revision: n
                        .last_run
                        .as_ref()
                        .map(|r| r.revision.clone())
                        .unwrap_or_default(),
                    catalog_id: n
                        .last_run
                        .as_ref()
                        .map(|r| r.catalog_id.clone())
                        .unwrap_or_default(),
                    last_run_unix_ms: n.last_run.as_ref().map_or(0, |r| r.finished_unix_ms as i64),
                    changed: n.last_run.as_ref().map_or(0, |r| r.changed),
                    failed: n.last_run.as_ref().map_or(0, |r| r.failed),
                })
                .collect(),
        }))
    }

    async fn get_reports(
        &self,
        request: Request<pb::GetReportsRequest>,
    ) -> Result<Response<pb::GetReportsResponse>, Status> {
        admin_caller(&self.store, &request)?;
        let request = request.into_inner();
        let limit = if request.limit == 0 {
            10
        } else {
            request.limit as usize
        };
        let reports = self.reports.clone();
        let stored = self
            .blocking
            .run(move || reports.list(&request.node_id, limit))
            .await??;
        Ok(Response::new(pb::GetReportsResponse {
            reports: stored
                .iter()
                .map(|r| pb::RunReport::from(&r.report))
                .collect(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        admin_caller(&self.store, &request)?;
        let request = request.into_inner();
        let scope: BTreeMap<String, String> = request.scope.into_iter().collect();
        let enrollment = self.enrollment.clone();
        let token = self
            .blocking
            .run(move || {
                enrollment.create_token(
                    scope,
                    Duration::from_secs(request.ttl_seconds),
                    request.uses,
                )
            })
            .await??;
        Ok(Response::new(pb::CreateTokenResponse {
            token: token.token,
            expires_at_unix: token.expires_unix as i64,
        }))
    }

    async fn revoke_node(
        &self,
        request: Request<pb::RevokeNodeRequest>,
    ) -> Result<Response<pb::RevokeNodeResponse>, Status> {
        admin_caller(&self.store, &request)?;
        let node_id = request.into_inner().node_id;
        let nodes = self.nodes.clone();
        let serials = self.blocking.run(move || nodes.revoke(&node_id)).await??;
        Ok(Response::new(pb::RevokeNodeResponse {
            revoked_serials: serials,
        }))
    }

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        admin_caller(&self.store, &request)?;
        let outcome = self
            .sync
            .sync_now()
            .await
            .map_err(|e| crate::status::sync_failed(&e))?;
        Ok(Response::new(outcome))
    }

    type TriggerStream = ResponseStream<pb::TriggerProgress>;

    async fn trigger(
        &self,
        request: Request<pb::TriggerRequest>,
    ) -> Result<Response<Self::TriggerStream>, Status> {
        admin_caller(&self.store, &request)?;
        let request = request.into_inner();
        let checked = self.triggers.check(TriggerRequest {
            selector: request
                .selector
                .map(|s| s.tags.into_iter().collect())
                .unwrap_or_default(),
            batch: request.batch,
            canary: request.canary,
            noop: request.noop,
            max_failures: request.max_failures,
            timeout: Duration::from_secs(u64::from(request.timeout_seconds)),
        })?;
        let triggers = self.triggers.clone();
        let timeout = checked.timeout();
        let record = self.blocking.run(move || triggers.plan(&checked)).await??;
        let progress = self.triggers.start(record, timeout);
        // Every change of progress, the last one included, then the end.
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut progress = progress;
            loop {
                let current = progress.borrow_and_update().clone();
                let finished = current.state != "running";
                if sender.send(Ok(current)).await.is_err() || finished {
                    return;
                }
                if progress.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn trigger_status(
        &self,
        request: Request<pb::TriggerStatusRequest>,
    ) -> Result<Response<pb::TriggerProgress>, Status> {
        admin_caller(&self.store, &request)?;
        let id = request.into_inner().trigger_id;
        let triggers = self.triggers.clone();
        let progress = self.blocking.run(move || triggers.status(&id)).await??;
        Ok(Response::new(progress))
    }
}
