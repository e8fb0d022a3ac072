//! The gRPC services: thin trait impls that decode the request, find out who
//! is calling from the verified client certificate, call the domain (store,
//! pki, catalogs) and map errors to a `Status`.
//!
//! Who calls is never taken from a request field: an agent's node id comes
//! from its certificate (`PeerIdentity::Node`), the operator's from the
//! admin certificate (`PeerIdentity::Admin`). The TLS layer lets clients
//! without a certificate through only so that `Enroll` can be reached; every
//! other call requires one, and a revoked serial is refused on every call.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cms_proto::report::{ResourceStatus, RunRecord};
use cms_proto::v1 as pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::pki::{PeerIdentity, check_node_id, check_scope, peer_identity};
use crate::server::ServerState;
use crate::store::{NodeRecord, NodeStatus, RunSummary, StoreError, StoredReport, TokenRecord};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Size of one `GetContent` chunk.
const CONTENT_CHUNK: usize = 64 * 1024;

/// Who is calling, from the verified client certificate; refused when there
/// is none, it is revoked, or (for a node) the server no longer knows it:
/// the node was removed, or its name was enrolled again by a new instance.
fn caller<T>(state: &ServerState, request: &Request<T>) -> Result<PeerIdentity, Status> {
    let certificates = request
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required: enroll first"))?;
    let leaf = certificates
        .first()
        .ok_or_else(|| Status::unauthenticated("a client certificate is required: enroll first"))?;
    identify(state, leaf.as_ref())
}

/// Who a verified client certificate names, checked against the store as
/// `caller` says; the watch channel checks its certificate the same way.
pub(crate) fn identify(state: &ServerState, leaf_der: &[u8]) -> Result<PeerIdentity, Status> {
    let (identity, serial) =
        peer_identity(leaf_der).map_err(|e| Status::unauthenticated(format!("{e}")))?;
    match &identity {
        PeerIdentity::Admin => {
            if state.store.is_revoked(&serial).map_err(internal)? {
                return Err(Status::permission_denied(format!(
                    "certificate {serial} is revoked"
                )));
            }
        }
        PeerIdentity::Node(id) => match state.store.certificate(&serial).map_err(internal)? {
            Some(record) if record.revoked => {
                return Err(Status::permission_denied(format!(
                    "certificate {serial} of node {id} is revoked"
                )));
            }
            Some(record) if record.node_id == *id => {}
            _ => {
                return Err(Status::permission_denied(format!(
                    "certificate {serial} of node {id} is no longer valid: the node was removed or its name enrolled again; enroll again"
                )));
            }
        },
    }
    Ok(identity)
}

fn node_caller<T>(state: &ServerState, request: &Request<T>) -> Result<String, Status> {
    match caller(state, request)? {
        PeerIdentity::Node(id) => Ok(id),
        PeerIdentity::Admin => Err(Status::permission_denied(
            "this call is for nodes, not the admin credential",
        )),
    }
}

fn admin_caller<T>(state: &ServerState, request: &Request<T>) -> Result<(), Status> {
    match caller(state, request)? {
        PeerIdentity::Admin => Ok(()),
        PeerIdentity::Node(id) => Err(Status::permission_denied(format!(
            "node {id} may not call admin functions"
        ))),
    }
}

fn internal(error: impl std::fmt::Display) -> Status {
    Status::internal(format!("{error}"))
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// How many requests run blocking store work (a signature, a sled
/// transaction) at once. Others wait their turn in order: a boot storm of
/// 10,000 enrollments would otherwise start up to 512 blocking threads,
/// each with its own stack and allocator cache, and the server grew past a
/// gigabyte.
pub const MAX_BLOCKING_WORK: usize = 16;

static BLOCKING_PERMITS: tokio::sync::Semaphore =
    tokio::sync::Semaphore::const_new(MAX_BLOCKING_WORK);

/// Runs blocking store work off the async workers, at most
/// `MAX_BLOCKING_WORK` at once; the rest queue.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    let _permit = BLOCKING_PERMITS.acquire().await.map_err(internal)?;
    tokio::task::spawn_blocking(work).await.map_err(internal)?
}

/// Signs a node's CSR; the caller records the certificate.
fn sign_certificate(
    state: &ServerState,
    csr_pem: &str,
    node_id: &str,
) -> Result<
    (
        crate::pki::IssuedCertificate,
        crate::store::CertificateRecord,
    ),
    Status,
> {
    let issued = state
        .ca
        .sign_node_csr(csr_pem, node_id, state.config.certificate_validity)
        .map_err(|e| Status::invalid_argument(format!("{e}")))?;
    let record = crate::store::CertificateRecord {
        serial: issued.serial_hex.clone(),
        node_id: node_id.to_string(),
        not_after_unix: issued.not_after_unix.max(0) as u64,
        revoked: false,
    };
    Ok((issued, record))
}

/// Signs a node's CSR and records the certificate, so it can be revoked.
fn issue_certificate(
    state: &ServerState,
    csr_pem: &str,
    node_id: &str,
) -> Result<crate::pki::IssuedCertificate, Status> {
    let issued = state
        .ca
        .sign_node_csr(csr_pem, node_id, state.config.certificate_validity)
        .map_err(|e| Status::invalid_argument(format!("{e}")))?;
    state
        .store
        .put_certificate(&crate::store::CertificateRecord {
            serial: issued.serial_hex.clone(),
            node_id: node_id.to_string(),
            not_after_unix: issued.not_after_unix.max(0) as u64,
            revoked: false,
        })
        .map_err(internal)?;
    Ok(issued)
}

#[derive(Debug, Clone)]
pub struct EnrollmentService(pub Arc<ServerState>);

#[tonic::async_trait]
impl pb::enrollment_server::Enrollment for EnrollmentService {
    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let state = self.0.clone();
        // An agent may present its current certificate to enroll again
        // under its own live name (new tags, new key).
        let presented = caller(&state, &request).ok();
        let request = request.into_inner();
        let node_id = request.node_name.clone();
        check_node_id(&node_id).map_err(|e| Status::invalid_argument(format!("{e}")))?;
        let presented_own_certificate =
            matches!(&presented, Some(PeerIdentity::Node(id)) if *id == node_id);
        let secret = request
            .token
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let tags: BTreeMap<String, String> = request.tags.into_iter().collect();
        let metrics_state = state.clone();
        let enrolled = blocking(move || {
            let token_id = TokenRecord::id_for_secret(&secret);
            // Check the scope before using the token up.
            let token = state
                .store
                .tokens()
                .map_err(internal)?
                .into_iter()
                .find(|t| t.id == token_id)
                .ok_or_else(|| Status::unauthenticated("Failed to enroll: the token is unknown"))?;
            check_scope(&token.scope, &tags)
                .map_err(|e| Status::permission_denied(format!("Failed to enroll: {e}")))?;
            let now = now_unix_ms();
            let previous = state.store.node(&node_id).map_err(internal)?;
            let revoked = match &previous {
                Some(node) => state
                    .store
                    .is_revoked(&node.certificate_serial)
                    .map_err(internal)?,
                None => false,
            };
            let last_seen = previous.as_ref().map_or(0, |n| {
                state.fleet.last_seen(&n.id, n.last_seen_unix_ms, now)
            });
            if !crate::fleet::name_is_free(
                previous.as_ref(),
                last_seen,
                now,
                state.config.gone_after,
                revoked,
                presented_own_certificate,
            ) {
                return Err(Status::already_exists(format!(
                    "Failed to enroll: node {node_id} is live (last seen {} s ago); its name becomes free when it has not been seen for {} s, or when an operator runs `cms-server node revoke {node_id}`",
                    now.saturating_sub(last_seen) / 1000,
                    state.config.gone_after.as_secs()
                )));
            }
            state
                .store
                .consume_token(&token_id, now / 1000)
                .map_err(|e| match e {
                    StoreError::TokenUnknown
                    | StoreError::TokenExpired { .. }
                    | StoreError::TokenUsedUp => Status::unauthenticated(format!("{e}")),
                    other => internal(other),
                })?;
            // The same instance enrolling again keeps its history; a new
            // instance taking a free name starts clean, and the old one's
            // certificates are refused from now on.
            let same_instance = presented_own_certificate;
            if previous.is_some() && !same_instance {
                state.store.revoke_node(&node_id).map_err(internal)?;
                state.store.remove_node(&node_id).map_err(internal)?;
            }
            let (issued, certificate) = sign_certificate(&state, &request.csr_pem, &node_id)?;
            let kept = previous.filter(|_| same_instance);
            state
                .store
                .record_enrollment(&certificate, &NodeRecord {
                    id: node_id.clone(),
                    tags: tags.clone(),
                    facts: kept
                        .as_ref()
                        .map_or(serde_json::Value::Null, |n| n.facts.clone()),
                    certificate_serial: issued.serial_hex.clone(),
                    first_seen_unix_ms: kept.as_ref().map_or(now, |n| n.first_seen_unix_ms),
                    last_seen_unix_ms: now,
                    last_run: kept.and_then(|n| n.last_run),
                    status: NodeStatus::Active,
                    gone_since_unix_ms: None,
                })
                .map_err(internal)?;
            Ok(pb::EnrollResponse {
                node_id,
                certificate_pem: issued.certificate_pem,
                ca_certificate_pem: state.ca.certificate_pem().to_string(),
                bound_tags: tags.into_iter().collect(),
                not_after: issued.not_after_unix,
            })
        })
        .await;
        metrics_state.metrics.enrollment(&enrolled);
        enrolled.map(Response::new)
    }
}

#[derive(Debug, Clone)]
pub struct AgentService(pub Arc<ServerState>);

/// The revision catalogs are compiled from; unavailable until one validates.
fn serving_revision(state: &ServerState) -> Result<crate::git_sync::Revision, Status> {
    state.current_revision().ok_or_else(|| {
        Status::unavailable(
            "no valid roles revision yet: the server has not synced a commit that validates",
        )
    })
}

/// `node`'s catalog of `revision`, from the cache or compiled.
async fn compiled(
    state: &ServerState,
    revision: &crate::git_sync::Revision,
    node: cms_roles::Node,
) -> Result<Arc<cms_roles::Catalog>, Status> {
    let node_id = node.id.clone();
    state
        .catalogs
        .get(&revision.commit, revision.repository.clone(), node)
        .await
        .map_err(|diagnostics| {
            Status::failed_precondition(format!(
                "Failed to compile the catalog of {node_id}:\n{diagnostics}"
            ))
        })
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn get_catalog(
        &self,
        request: Request<pb::CatalogRequest>,
    ) -> Result<Response<pb::CatalogResponse>, Status> {
        let state = self.0.clone();
        let answer = state.metrics.catalog_request();
        let node_id = node_caller(&state, &request)?;
        let request = request.into_inner();
        let facts: BTreeMap<String, serde_json::Value> = if request.facts_json.trim().is_empty() {
            BTreeMap::new()
        } else {
            serde_json::from_str(&request.facts_json)
                .map_err(|e| Status::invalid_argument(format!("facts_json: {e}")))?
        };
        let revision = serving_revision(&state)?;
        let facts_value = serde_json::to_value(&facts).unwrap_or_default();
        // A read, no fsync: the common case (same facts, node active) only
        // notes the time in memory; the lifecycle task writes it in batches.
        let node_record = state
            .store
            .node(&node_id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("node {node_id} is not enrolled")))?;
        let now = now_unix_ms();
        if node_record.status != NodeStatus::Active {
            let store_state = state.clone();
            let id_for_store = node_id.clone();
            blocking(move || {
                store_state
                    .store
                    .update_node(&id_for_store, |node| {
                        node.facts = facts_value.clone();
                        node.last_seen_unix_ms = now;
                        node.status = NodeStatus::Active;
                        node.gone_since_unix_ms = None;
                    })
                    .map_err(internal)
            })
            .await?;
        } else if node_record.facts != facts_value {
            state.fleet.note_facts(&node_id, now, facts_value);
        } else {
            state.fleet.note_seen(&node_id, now);
        }
        let node = crate::catalogs::node(&node_id, &node_record.tags, facts);
        let catalog = compiled(&state, &revision, node).await?;
        if request.have_catalog_id == catalog.catalog_id {
            answer.answered(crate::metrics::CatalogAnswer::NotModified);
            return Ok(Response::new(pb::CatalogResponse {
                result: Some(pb::catalog_response::Result::NotModified(pb::NotModified {
                    catalog_id: catalog.catalog_id.clone(),
                    revision: revision.commit.clone(),
                })),
            }));
        }
        answer.answered(crate::metrics::CatalogAnswer::Catalog);
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
        let state = self.0.clone();
        let node_id = node_caller(&state, &request)?;
        let hash = request.into_inner().sha256;
        let revision = serving_revision(&state)?;
        let node_record = state
            .store
            .node(&node_id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("node {node_id} is not enrolled")))?;
        let node_record = state.fleet.current(node_record, now_unix_ms());
        let facts: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(node_record.facts.clone()).unwrap_or_default();
        let node = crate::catalogs::node(&node_id, &node_record.tags, facts);
        let catalog = compiled(&state, &revision, node).await?;
        let content = catalog.contents.get(&hash).ok_or_else(|| {
            Status::not_found(format!(
                "no content {hash} in the current catalog of {node_id} (revision {}): fetch the catalog again",
                revision.commit
            ))
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
        let state = self.0.clone();
        let node_id = node_caller(&state, &request)?;
        let report = request.into_inner();
        let run_id = report.run_id.clone();
        let trigger = (!report.trigger_id.is_empty())
            .then(|| (report.trigger_id.clone(), crate::fleet::outcome_of(&report)));
        let fleet = state.fleet.clone();
        let reporter = node_id.clone();
        blocking(move || {
            let record = RunRecord::from(&report);
            let changed = record.count(ResourceStatus::Changed) as u32;
            let failed = record.count(ResourceStatus::Failed) as u32;
            let skipped = record.count(ResourceStatus::Skipped) as u32;
            let finished_unix_ms = record.finished_unix_ms();
            let now = now_unix_ms();
            let write = state
                .store
                .put_report(&StoredReport {
                    node_id: node_id.clone(),
                    run_id: report.run_id.clone(),
                    received_unix_ms: now,
                    report: record,
                })
                .map_err(internal)?;
            if write == crate::store::ReportWrite::Stored {
                state.metrics.run_reported(&report);
            }
            state
                .store
                .update_node(&node_id, |node| {
                    node.last_seen_unix_ms = now;
                    node.last_run = Some(RunSummary {
                        run_id: report.run_id.clone(),
                        finished_unix_ms,
                        catalog_id: report.catalog_id.clone(),
                        revision: report.revision.clone(),
                        changed,
                        failed,
                        skipped,
                        noop: report.noop,
                    });
                })
                .map_err(internal)?;
            Ok(())
        })
        .await?;
        if let Some((trigger_id, outcome)) = trigger {
            fleet.report_arrived(&trigger_id, &reporter, outcome);
        }
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
        let state = self.0.clone();
        let node_id = node_caller(&state, &request)?;
        let csr = request.into_inner().csr_pem;
        blocking(move || {
            let node = state
                .store
                .node(&node_id)
                .map_err(internal)?
                .ok_or_else(|| Status::not_found(format!("node {node_id} is not enrolled")))?;
            let issued = issue_certificate(&state, &csr, &node_id)?;
            let now = now_unix_ms();
            state
                .store
                .update_node(&node_id, |n| {
                    n.certificate_serial = issued.serial_hex.clone();
                    n.last_seen_unix_ms = n.last_seen_unix_ms.max(now);
                    n.status = NodeStatus::Active;
                    n.gone_since_unix_ms = None;
                })
                .map_err(internal)?;
            state.fleet.counters.renewals.inc();
            Ok(pb::EnrollResponse {
                node_id,
                certificate_pem: issued.certificate_pem,
                ca_certificate_pem: state.ca.certificate_pem().to_string(),
                bound_tags: node.tags.into_iter().collect(),
                not_after: issued.not_after_unix,
            })
        })
        .await
        .map(Response::new)
    }
}

#[derive(Debug, Clone)]
pub struct AdminService(pub Arc<ServerState>);

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let state = self.0.clone();
        admin_caller(&state, &request)?;
        let selector: BTreeMap<String, String> = request
            .into_inner()
            .selector
            .map(|s| s.tags.into_iter().collect())
            .unwrap_or_default();
        blocking(move || {
            let nodes = state.store.nodes().map_err(internal)?;
            let now = now_unix_ms();
            Ok(pb::ListNodesResponse {
                nodes: nodes
                    .into_iter()
                    .filter(|n| {
                        selector.iter().all(|(k, pattern)| {
                            n.tags
                                .get(k)
                                .is_some_and(|v| cms_roles::glob_match(pattern, v))
                        })
                    })
                    .map(|n| pb::NodeSummary {
                        last_seen_unix_ms: state.fleet.last_seen(&n.id, n.last_seen_unix_ms, now)
                            as i64,
                        status: crate::metrics::NodeState::of(&n).as_str().into(),
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
                        last_run_unix_ms: n
                            .last_run
                            .as_ref()
                            .map_or(0, |r| r.finished_unix_ms as i64),
                        changed: n.last_run.as_ref().map_or(0, |r| r.changed),
                        failed: n.last_run.as_ref().map_or(0, |r| r.failed),
                    })
                    .collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn get_reports(
        &self,
        request: Request<pb::GetReportsRequest>,
    ) -> Result<Response<pb::GetReportsResponse>, Status> {
        let state = self.0.clone();
        admin_caller(&state, &request)?;
        let request = request.into_inner();
        blocking(move || {
            let limit = if request.limit == 0 {
                10
            } else {
                request.limit as usize
            };
            let reports = state
                .store
                .reports(&request.node_id, limit)
                .map_err(internal)?;
            Ok(pb::GetReportsResponse {
                reports: reports
                    .iter()
                    .map(|r| pb::RunReport::from(&r.report))
                    .collect(),
            })
        })
        .await
        .map(Response::new)
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let state = self.0.clone();
        admin_caller(&state, &request)?;
        let request = request.into_inner();
        if request.scope.is_empty() {
            return Err(Status::invalid_argument(
                "a token needs a scope, e.g. env=staging,role=*",
            ));
        }
        blocking(move || {
            let token = crate::pki::new_token().map_err(internal)?;
            let now = now_unix_ms() / 1000;
            let ttl = if request.ttl_seconds == 0 {
                24 * 3600
            } else {
                request.ttl_seconds
            };
            state
                .store
                .put_token(&TokenRecord {
                    id: token.id.clone(),
                    scope: request.scope.into_iter().collect(),
                    expires_unix: now + ttl,
                    uses_left: (request.uses > 0).then_some(request.uses),
                    created_unix: now,
                })
                .map_err(internal)?;
            // The secret, then the CA's fingerprint: the agent checks the
            // server it enrolls with against it before trusting it.
            Ok(pb::CreateTokenResponse {
                token: format!("{}.{}", token.secret, state.ca_fingerprint),
                expires_at_unix: (now + ttl) as i64,
            })
        })
        .await
        .map(Response::new)
    }

    async fn revoke_node(
        &self,
        request: Request<pb::RevokeNodeRequest>,
    ) -> Result<Response<pb::RevokeNodeResponse>, Status> {
        let state = self.0.clone();
        admin_caller(&state, &request)?;
        let node_id = request.into_inner().node_id;
        blocking(move || {
            let serials = state.store.revoke_node(&node_id).map_err(internal)?;
            if serials.is_empty() {
                return Err(Status::not_found(format!(
                    "node {node_id} has no certificates"
                )));
            }
            Ok(pb::RevokeNodeResponse {
                revoked_serials: serials,
            })
        })
        .await
        .map(Response::new)
    }

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        admin_caller(&self.0, &request)?;
        let outcome = self
            .0
            .sync_now()
            .await
            .map_err(|e| Status::unavailable(format!("{e:#}")))?;
        Ok(Response::new(outcome))
    }

    type TriggerStream = ResponseStream<pb::TriggerProgress>;

    async fn trigger(
        &self,
        request: Request<pb::TriggerRequest>,
    ) -> Result<Response<Self::TriggerStream>, Status> {
        let state = self.0.clone();
        admin_caller(&state, &request)?;
        let request = request.into_inner();
        let selector: BTreeMap<String, String> = request
            .selector
            .map(|s| s.tags.into_iter().collect())
            .unwrap_or_default();
        if selector.is_empty() {
            return Err(Status::invalid_argument(
                "a trigger needs a selection, e.g. --select role=web",
            ));
        }
        let batch = crate::fleet::parse_batch(&request.batch).map_err(Status::invalid_argument)?;
        let timeout = if request.timeout_seconds == 0 {
            state.config.trigger_timeout
        } else {
            Duration::from_secs(u64::from(request.timeout_seconds))
        };
        let for_plan = state.clone();
        let record = blocking(move || {
            let nodes = crate::fleet::select(for_plan.store.nodes().map_err(internal)?, &selector);
            if nodes.is_empty() {
                return Err(Status::not_found(format!(
                    "no live node matches {}",
                    selector
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                )));
            }
            let record = crate::store::TriggerRecord {
                id: crate::fleet::new_trigger_id(&for_plan).map_err(internal)?,
                batches: crate::fleet::plan(&nodes, request.canary as usize, batch),
                selector,
                batch: request.batch.clone(),
                canary: request.canary,
                noop: request.noop,
                max_failures: request.max_failures,
                state: "running".into(),
                message: String::new(),
                started_unix_ms: now_unix_ms(),
                finished_unix_ms: None,
                batches_started: 0,
                outcomes: BTreeMap::new(),
            };
            for_plan.store.put_trigger(&record).map_err(internal)?;
            Ok(record)
        })
        .await?;
        let progress = crate::fleet::start_trigger(state, record, timeout);
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
        let state = self.0.clone();
        admin_caller(&state, &request)?;
        let id = request.into_inner().trigger_id;
        if let Some(live) = state.fleet.progress(&id) {
            return Ok(Response::new(live.borrow().clone()));
        }
        blocking(move || {
            let record = state
                .store
                .trigger(&id)
                .map_err(internal)?
                .ok_or_else(|| Status::not_found(format!("no trigger {id}")))?;
            Ok(crate::fleet::progress_of(&record))
        })
        .await
        .map(Response::new)
    }
}
