//! The gRPC services: each method decodes the request, finds out who is
//! calling (`auth`), calls the domain (`enrollment`, `nodes`, `reports`,
//! `triggers`, `restart_budget`, the catalog cache) and encodes the answer; errors become a
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

use crate::audit::Audit;
use crate::auth::AuthError;
use crate::blocking::Blocking;
use crate::catalogs::Catalogs;
use crate::enrollment::{EnrollRequest, Enrolled, Enrollment};
use crate::metrics::{CatalogAnswer, Metrics};
use crate::node_state::NodeState;
use crate::nodes::Nodes;
use crate::operators::Operators;
use crate::pki::PeerIdentity;
use crate::reports::{ReportRate, Reports};
use crate::restart_budget::{Answer, Ask, RestartBudget, budgeted_groups, group_sizes};
use crate::revision::{CatalogError, SyncRequests, compiled};
use crate::store::SharedStore;
use crate::triggers::{TriggerRequest, Triggers};

pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Size of one `GetContent` chunk.
const CONTENT_CHUNK: usize = cms_proto::limits::CONTENT_CHUNK_BYTES;

/// Refuses to send a catalog an agent could not receive: one over the
/// catalog limits (`Catalog::size_problems`) or a response over
/// `MAX_AGENT_RESPONSE_BYTES`.
fn check_deliverable(
    catalog: &cms_roles::Catalog,
    response: &pb::CatalogResponse,
    node_id: &str,
    revision: &str,
) -> Result<(), CatalogError> {
    use prost::Message as _;
    let too_large = |problems: String| CatalogError::TooLarge {
        node_id: node_id.to_string(),
        revision: revision.to_string(),
        problems,
    };
    let oversized_content = catalog
        .contents
        .values()
        .any(|c| c.0.len() > cms_roles::MAX_CONTENT_BYTES);
    let encoded = response.encoded_len();
    if oversized_content || encoded > cms_roles::MAX_CATALOG_BYTES {
        let problems: Vec<String> = catalog
            .size_problems()
            .iter()
            .map(ToString::to_string)
            .collect();
        if !problems.is_empty() {
            return Err(too_large(problems.join("; ")));
        }
    }
    if encoded > cms_proto::limits::MAX_AGENT_RESPONSE_BYTES {
        return Err(too_large(format!(
            "the response is {}, over the limit of {}",
            cms_roles::human_size(encoded),
            cms_roles::human_size(cms_proto::limits::MAX_AGENT_RESPONSE_BYTES)
        )));
    }
    Ok(())
}

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
        // enrollment refused. An attested enrollment is named by its
        // verified instance id instead.
        if request.identity.is_none() {
            crate::pki::check_node_id(&request.node_name)
                .map_err(crate::enrollment::EnrollError::InvalidNodeName)?;
        }
        let presented_own_certificate =
            matches!(&presented, Some(PeerIdentity::Node(id)) if *id == request.node_name);
        let enroll = EnrollRequest {
            node_name: request.node_name,
            token: request.token,
            csr_pem: request.csr_pem,
            tags: request.tags.into_iter().collect(),
            presented_own_certificate,
            identity: request
                .identity
                .map(|identity| crate::enrollment::IdentityProof {
                    kind: identity.kind,
                    document: identity.document,
                    signature: identity.signature,
                }),
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
    /// Which revision each node is served.
    pub environments: Arc<crate::environments::Environments>,
    pub metrics: Arc<Metrics>,
    pub blocking: Blocking,
    /// How many reports each node may send.
    pub report_rate: Arc<ReportRate>,
    /// The restart places nodes hold.
    pub restart_budget: Arc<RestartBudget>,
    /// On a replica that does not lead, a triggered run waits for
    /// [`crate::rollouts::Rollouts::catch_up`]. None where no rollouts
    /// run (benches).
    pub rollouts: Option<crate::rollouts::Rollouts>,
}

impl AgentService {
    /// What `GetCatalog` answers `node_id`, once the caller is known:
    /// notes its facts, finds the revision it is served and its catalog
    /// (from the cache or compiled), and answers `NotModified` or the
    /// catalog's canonical bytes. `answer` counts the outcome.
    pub async fn catalog_for(
        &self,
        node_id: String,
        request: pb::CatalogRequest,
        answer: crate::metrics::CatalogRequest<'_>,
    ) -> Result<pb::CatalogResponse, Status> {
        let facts: BTreeMap<String, serde_json::Value> = if request.facts_json.trim().is_empty() {
            BTreeMap::new()
        } else {
            serde_json::from_str(&request.facts_json)
                .map_err(|e| crate::status::invalid_argument(format!("facts_json: {e}")))?
        };
        let facts_value = serde_json::to_value(&facts).unwrap_or_default();
        // A read, no fsync: the common case (same facts, node active) only
        // notes the time in memory; the lifecycle task writes it in batches.
        let node_record = self.nodes.enrolled(&node_id)?;
        if let Some(rollouts) = &self.rollouts
            && !request.trigger_id.is_empty()
        {
            let environment = self.environments.of_node(&node_record)?;
            rollouts.catch_up(environment).await?;
        }
        let revision = self.environments.revision_for(&node_record)?;
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
        let mut node = crate::catalogs::node(&node_id, &node_record.tags, facts);
        node.attested = node_record.attested.clone();
        let catalog = compiled(&self.catalogs, &revision, node).await?;
        self.catalogs.note_served(
            &node_id,
            &node_record.certificate_serial,
            &revision.commit,
            &catalog,
        );
        if request.have_catalog_id == catalog.catalog_id {
            answer.answered(CatalogAnswer::NotModified);
            return Ok(pb::CatalogResponse {
                result: Some(pb::catalog_response::Result::NotModified(pb::NotModified {
                    catalog_id: catalog.catalog_id.clone(),
                    revision: revision.commit.clone(),
                })),
            });
        }
        let response = pb::CatalogResponse {
            result: Some(pb::catalog_response::Result::Catalog(pb::Catalog {
                catalog_id: catalog.catalog_id.clone(),
                revision: revision.commit.clone(),
                canonical_json: catalog.canonical().to_vec(),
            })),
        };
        // Validation refuses a commit whose catalogs are too large; a node
        // whose own facts make its catalog larger than what validation saw
        // gets this error rather than a message the agent cannot decode,
        // and the catalog does not count as served.
        check_deliverable(&catalog, &response, &node_id, &revision.commit)?;
        answer.answered(CatalogAnswer::Catalog);
        Ok(response)
    }

    /// The chunks `GetContent` streams to `node_id`: the content of
    /// `hash` in the caller's current catalog: the one `GetCatalog` last
    /// served it at the revision it is served, while the cache holds it,
    /// else the catalog of its current facts.
    pub async fn content_for(
        &self,
        node_id: String,
        hash: String,
    ) -> Result<ResponseStream<pb::ContentChunk>, Status> {
        let node_record = self.nodes.enrolled(&node_id)?;
        let revision = self.environments.revision_for(&node_record)?;
        let served = self
            .catalogs
            .served(&node_id, &node_record.certificate_serial, &revision.commit)
            .filter(|catalog| catalog.contents.contains_key(&hash));
        let catalog = match served {
            Some(catalog) => catalog,
            None => {
                let now = self.nodes.clock.now_unix_ms();
                let node_record = self.nodes.fleet.current(node_record, now);
                let node = crate::catalogs::node_of_record(&node_record);
                compiled(&self.catalogs, &revision, node).await?
            }
        };
        if !catalog.contents.contains_key(&hash) {
            return Err(CatalogError::NoContent {
                hash,
                node_id,
                revision: revision.commit.clone(),
            }
            .into());
        }
        // Chunks are cut as the stream is sent, so a large content is never
        // copied whole: the catalog (shared with the cache) holds it.
        let size = catalog.contents[&hash].0.len();
        let chunks = (0..size.div_ceil(CONTENT_CHUNK)).map(move |index| {
            let bytes = &catalog.contents[&hash].0;
            let start = index * CONTENT_CHUNK;
            Ok(pb::ContentChunk {
                data: bytes[start..(start + CONTENT_CHUNK).min(bytes.len())].to_vec(),
            })
        });
        Ok(Box::pin(tokio_stream::iter(chunks)))
    }

    /// Stores the run report `node_id` sent and answers its
    /// acknowledgement, once the report is on disk.
    pub async fn report_from(
        &self,
        node_id: String,
        report: pb::RunReport,
    ) -> Result<pb::ReportAck, Status> {
        // Refused beyond its rate, before it is read: the agent keeps it.
        self.report_rate
            .admit(&node_id, self.reports.clock.now_unix_ms())?;
        crate::reports::check_report_size(&node_id, &report)?;
        let record = RunRecord::from(report);
        let run_id = record.run_id.clone();
        let reports = self.reports.clone();
        self.blocking
            .run(move || reports.record(&node_id, record))
            .await??;
        // Acknowledged only now that the report is on disk.
        Ok(pb::ReportAck { run_id })
    }
}

#[tonic::async_trait]
impl pb::agent_server::Agent for AgentService {
    async fn get_catalog(
        &self,
        request: Request<pb::CatalogRequest>,
    ) -> Result<Response<pb::CatalogResponse>, Status> {
        let answer = self.metrics.catalog_request();
        let node_id = node_caller(&self.store, &request)?;
        self.catalog_for(node_id, request.into_inner(), answer)
            .await
            .map(Response::new)
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
        self.content_for(node_id, hash).await.map(Response::new)
    }

    async fn report(
        &self,
        request: Request<pb::RunReport>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        let node_id = node_caller(&self.store, &request)?;
        self.report_from(node_id, request.into_inner())
            .await
            .map(Response::new)
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

    async fn acquire_restart(
        &self,
        request: Request<pb::AcquireRestartRequest>,
    ) -> Result<Response<pb::AcquireRestartResponse>, Status> {
        let node_id = node_caller(&self.store, &request)?;
        let request = request.into_inner();
        let record = self.nodes.enrolled(&node_id)?;
        let environment = self.environments.of_node(&record)?.name.clone();
        // The budget of the revision the node is served, over its
        // environment's nodes as that revision gives them roles.
        let revision = self.environments.revision_for(&record)?;
        let budget = self.restart_budget.clone();
        let store = self.store.clone();
        let environments = self.environments.clone();
        let ask_environment = environment.clone();
        let answer = self
            .blocking
            .run(move || {
                let groups = match &revision.repository.settings.restarts {
                    None => Vec::new(),
                    Some(budgets) => {
                        let count = || {
                            let config = environments.config();
                            let nodes: Vec<_> = store
                                .nodes()?
                                .into_iter()
                                .filter(|node| config.environment_of(node) == ask_environment)
                                .collect();
                            Ok::<_, crate::store::StoreError>(group_sizes(
                                &revision.repository,
                                &nodes,
                            ))
                        };
                        let sizes =
                            || budget.group_sizes(&ask_environment, &revision.commit, count);
                        budgeted_groups(&revision.repository, budgets, &record.tags, sizes)?
                    }
                };
                Ok::<_, crate::store::StoreError>(budget.acquire(&Ask {
                    node_id: record.id,
                    environment: ask_environment,
                    unit: request.unit,
                    hold_seconds: request.hold_seconds,
                    groups,
                }))
            })
            .await??;
        self.metrics.restart_acquisition(&environment, &answer);
        Ok(Response::new(match answer {
            Answer::Granted {
                lease_id,
                expires_unix_ms,
                reason,
            } => pb::AcquireRestartResponse {
                granted: true,
                lease_id,
                retry_after_ms: 0,
                reason,
                expires_unix_ms: i64::try_from(expires_unix_ms).unwrap_or(i64::MAX),
            },
            Answer::Refused {
                retry_after_ms,
                reason,
            } => pb::AcquireRestartResponse {
                granted: false,
                lease_id: String::new(),
                retry_after_ms,
                reason,
                expires_unix_ms: 0,
            },
        }))
    }

    async fn release_restart(
        &self,
        request: Request<pb::ReleaseRestartRequest>,
    ) -> Result<Response<pb::ReleaseRestartResponse>, Status> {
        let node_id = node_caller(&self.store, &request)?;
        let lease_id = request.into_inner().lease_id;
        // Idempotent: a lease released before, expired, or not the node's
        // own is answered OK and changes nothing. Off the runtime's
        // workers: replicas' leases are in the database.
        let budget = self.restart_budget.clone();
        self.blocking
            .run(move || budget.release(&node_id, &lease_id))
            .await?;
        Ok(Response::new(pb::ReleaseRestartResponse {}))
    }
}

/// The admin API: the operators' CLI, each with its own admin credential.
/// Every call names its operator and is recorded in the audit log.
#[derive(Debug, Clone)]
pub struct AdminService {
    pub store: SharedStore,
    pub operators: Operators,
    pub audit: Audit,
    pub nodes: Nodes,
    pub reports: Reports,
    pub enrollment: Enrollment,
    pub triggers: Triggers,
    pub sync: SyncRequests,
    pub blocking: Blocking,
    /// `Diff`: the revisions and nodes it compiles.
    pub differ: crate::fleet_diff::Differ,
    /// Environments, rollouts and pins.
    pub rollouts: crate::rollouts::Rollouts,
    /// The dashboard's login tokens.
    pub dashboard_tokens: crate::dashboard_tokens::DashboardTokens,
}

/// A dashboard token as the admin API shows it: its id, never its hash
/// in full nor (the store never has it) its secret.
fn dashboard_token_message(record: &crate::store::DashboardTokenRecord) -> pb::DashboardToken {
    pb::DashboardToken {
        id: record.id().to_owned(),
        created_unix_ms: record.created_unix_ms as i64,
        created_by: record.created_by.clone(),
        revoked_unix_ms: record.revoked_unix_ms.unwrap_or(0) as i64,
        revoked_by: record.revoked_by.clone().unwrap_or_default(),
    }
}

/// A gRPC code as the audit log writes it: `permission_denied`.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (index, character) in format!("{code:?}").chars().enumerate() {
        if character.is_ascii_uppercase() && index > 0 {
            name.push('_');
        }
        name.push(character.to_ascii_lowercase());
    }
    name
}

fn selector_text(selector: Option<&pb::Selector>) -> String {
    let tags: BTreeMap<&String, &String> = selector
        .map(|s| s.tags.iter().collect())
        .unwrap_or_default();
    tags.into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

impl AdminService {
    /// The operator making an admin call. The refusal of an operator's
    /// credential (revoked, or superseded by a renewal) is recorded in the
    /// audit log under that operator; a node certificate, or no
    /// certificate, is refused and only logged.
    async fn operator<T>(
        &self,
        request: &Request<T>,
        method: &'static str,
        target: &str,
    ) -> Result<String, Status> {
        let identity = caller(&self.store, request).and_then(crate::auth::admin);
        match identity {
            Ok(name) => Ok(name),
            Err(error) => {
                let refused_operator = match &error {
                    AuthError::OperatorRevoked { name, .. }
                    | AuthError::OperatorUnknown { name, .. } => Some(name.clone()),
                    _ => None,
                };
                let status = Status::from(error);
                match refused_operator {
                    Some(name) => {
                        self.audited::<()>(&name, method, target.to_owned(), Err(status))
                            .await
                    }
                    None => {
                        tracing::warn!(method, "refused an admin call: {}", status.message());
                        Err(status)
                    }
                }
                .map(|()| String::new())
            }
        }
    }

    /// Records a call and its outcome in the audit log, and passes the
    /// outcome on. A failure to record is logged; the call's answer stands.
    async fn audited<T>(
        &self,
        operator: &str,
        method: &'static str,
        target: String,
        result: Result<T, Status>,
    ) -> Result<T, Status> {
        let (outcome, message) = match &result {
            Ok(_) => (crate::audit::OK.to_owned(), String::new()),
            Err(status) => (code_name(status.code()), status.message().to_owned()),
        };
        let audit = self.audit.clone();
        let who = operator.to_owned();
        let what = target.clone();
        let recorded = self
            .blocking
            .run(move || audit.record(&who, method, &what, &outcome, &message))
            .await;
        match recorded {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::error!(
                    operator,
                    method,
                    target,
                    "Failed to write the audit record: {error}"
                )
            }
            Err(error) => {
                tracing::error!(
                    operator,
                    method,
                    target,
                    "Failed to write the audit record: {error}"
                )
            }
        }
        result
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        const METHOD: &str = "ListNodes";
        let target = selector_text(request.get_ref().selector.as_ref());
        let operator = self.operator(&request, METHOD, &target).await?;
        let selector: BTreeMap<String, String> = request
            .into_inner()
            .selector
            .map(|s| s.tags.into_iter().collect())
            .unwrap_or_default();
        let nodes = self.nodes.clone();
        let listed = self
            .blocking
            .run(move || nodes.list(&selector))
            .await
            .map_err(Status::from)
            .and_then(|listed| listed.map_err(Status::from));
        let response = listed.map(|listed| {
            Response::new(pb::ListNodesResponse {
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
                        last_run_unix_ms: n
                            .last_run
                            .as_ref()
                            .map_or(0, |r| r.finished_unix_ms as i64),
                        changed: n.last_run.as_ref().map_or(0, |r| r.changed),
                        failed: n.last_run.as_ref().map_or(0, |r| r.failed),
                        last_run_noop: n.last_run.as_ref().is_some_and(|r| r.noop),
                    })
                    .collect(),
            })
        });
        self.audited(&operator, METHOD, target, response).await
    }

    async fn get_reports(
        &self,
        request: Request<pb::GetReportsRequest>,
    ) -> Result<Response<pb::GetReportsResponse>, Status> {
        const METHOD: &str = "GetReports";
        let target = request.get_ref().node_id.clone();
        let operator = self.operator(&request, METHOD, &target).await?;
        let request = request.into_inner();
        let limit = if request.limit == 0 {
            10
        } else {
            request.limit as usize
        };
        let (reports, nodes) = (self.reports.clone(), self.nodes.clone());
        // A node without reports is looked up: one the server does not
        // know is an error (`NOT_FOUND`), not an empty history.
        let stored = self
            .blocking
            .run(move || {
                let stored = reports
                    .list(&request.node_id, limit)
                    .map_err(Status::from)?;
                if stored.is_empty() {
                    nodes.enrolled(&request.node_id).map_err(Status::from)?;
                }
                Ok::<_, Status>(stored)
            })
            .await
            .map_err(Status::from)
            .and_then(std::convert::identity);
        let response = stored.map(|stored| {
            Response::new(pb::GetReportsResponse {
                reports: stored
                    .iter()
                    .map(|r| pb::RunReport::from(&r.report))
                    .collect(),
            })
        });
        self.audited(&operator, METHOD, target, response).await
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        const METHOD: &str = "Explain";
        let target = request.get_ref().node_id.clone();
        let operator = self.operator(&request, METHOD, &target).await?;
        let (nodes, environments) = (self.nodes.clone(), self.differ.environments.clone());
        let node_id = target.clone();
        // Reading the node is a store call, and explaining renders the
        // hierarchy's layers: off the runtime's workers.
        let answer = self
            .blocking
            .run(move || crate::explain::explain_node(&nodes, &environments, &node_id))
            .await
            .map_err(Status::from)
            .and_then(std::convert::identity)
            .map(Response::new);
        self.audited(&operator, METHOD, target, answer).await
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        const METHOD: &str = "CreateToken";
        let asked = request.get_ref();
        let scope: BTreeMap<String, String> = asked.scope.clone().into_iter().collect();
        let (ttl_seconds, uses) = (asked.ttl_seconds, asked.uses);
        let mut target = crate::audit::token_target(&scope, uses, ttl_seconds, "");
        let operator = self.operator(&request, METHOD, &target).await?;
        let enrollment = self.enrollment.clone();
        let token = self
            .blocking
            .run(move || enrollment.create_token(scope, Duration::from_secs(ttl_seconds), uses))
            .await
            .map_err(Status::from)
            .and_then(|token| token.map_err(Status::from));
        if let Ok(token) = &token {
            target =
                crate::audit::token_target(&token.scope, token.uses, token.ttl_seconds, &token.id);
        }
        let response = token.map(|token| {
            Response::new(pb::CreateTokenResponse {
                token: token.token,
                expires_at_unix: token.expires_unix as i64,
            })
        });
        self.audited(&operator, METHOD, target, response).await
    }

    async fn revoke_node(
        &self,
        request: Request<pb::RevokeNodeRequest>,
    ) -> Result<Response<pb::RevokeNodeResponse>, Status> {
        const METHOD: &str = "RevokeNode";
        let target = request.get_ref().node_id.clone();
        let operator = self.operator(&request, METHOD, &target).await?;
        let node_id = request.into_inner().node_id;
        let nodes = self.nodes.clone();
        let serials = self
            .blocking
            .run(move || nodes.revoke(&node_id))
            .await
            .map_err(Status::from)
            .and_then(|serials| serials.map_err(Status::from));
        let response = serials.map(|serials| {
            Response::new(pb::RevokeNodeResponse {
                revoked_serials: serials,
            })
        });
        self.audited(&operator, METHOD, target, response).await
    }

    async fn sync(
        &self,
        request: Request<pb::SyncRequest>,
    ) -> Result<Response<pb::SyncResponse>, Status> {
        const METHOD: &str = "Sync";
        let operator = self.operator(&request, METHOD, "").await?;
        let outcome = self
            .sync
            .sync_now()
            .await
            .map(Response::new)
            .map_err(|e| crate::status::sync_failed(&e));
        let target = outcome
            .as_ref()
            .map(|answer| answer.get_ref().revision.clone())
            .unwrap_or_default();
        self.audited(&operator, METHOD, target, outcome).await
    }

    async fn diff(
        &self,
        request: Request<pb::DiffRequest>,
    ) -> Result<Response<pb::DiffResponse>, Status> {
        const METHOD: &str = "Diff";
        let asked = request.get_ref();
        let mut target = format!(
            "{}..{}",
            asked.from,
            if asked.to.is_empty() {
                "serving"
            } else {
                &asked.to
            }
        );
        let selector = selector_text(asked.selector.as_ref());
        if !selector.is_empty() {
            target = format!("{target} {selector}");
        }
        let operator = self.operator(&request, METHOD, &target).await?;
        let differ = self.differ.clone();
        let request = request.into_inner();
        // Compiles are CPU work that blocks; they run on threads of their
        // own (`fleet_diff::diff_fleet`), like validation's.
        let answer = tokio::task::spawn_blocking(move || differ.run(request))
            .await
            .map_err(|e| Status::internal(format!("the diff failed: {e}")))
            .and_then(|answer| answer.map_err(Status::from))
            .map(Response::new);
        self.audited(&operator, METHOD, target, answer).await
    }

    async fn list_environments(
        &self,
        request: Request<pb::ListEnvironmentsRequest>,
    ) -> Result<Response<pb::ListEnvironmentsResponse>, Status> {
        const METHOD: &str = "ListEnvironments";
        let operator = self.operator(&request, METHOD, "").await?;
        let environments = self.rollouts.environments().await;
        let answer = Ok(Response::new(pb::ListEnvironmentsResponse { environments }));
        self.audited(&operator, METHOD, String::new(), answer).await
    }

    async fn list_rollouts(
        &self,
        request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        const METHOD: &str = "ListRollouts";
        let target = request.get_ref().environment.clone();
        let operator = self.operator(&request, METHOD, &target).await?;
        let asked = request.into_inner();
        let limit = if asked.limit == 0 {
            20
        } else {
            asked.limit as usize
        };
        let answer = self
            .rollouts
            .list(&asked.environment, limit)
            .await
            .map(|rollouts| {
                Response::new(pb::ListRolloutsResponse {
                    rollouts: rollouts.iter().map(crate::rollouts::to_proto).collect(),
                })
            })
            .map_err(Status::from);
        self.audited(&operator, METHOD, target, answer).await
    }

    async fn rollout_status(
        &self,
        request: Request<pb::RolloutStatusRequest>,
    ) -> Result<Response<pb::RolloutProgress>, Status> {
        const METHOD: &str = "RolloutStatus";
        let asked = request.get_ref();
        let target = format!("{} {}", asked.environment, asked.rollout_id)
            .trim()
            .to_string();
        let operator = self.operator(&request, METHOD, &target).await?;
        let asked = request.into_inner();
        let answer = self
            .rollouts
            .status(&asked.environment, &asked.rollout_id)
            .await
            .map(|rollout| Response::new(crate::rollouts::to_proto(&rollout)))
            .map_err(Status::from);
        self.audited(&operator, METHOD, target, answer).await
    }

    async fn control_rollout(
        &self,
        request: Request<pb::ControlRolloutRequest>,
    ) -> Result<Response<pb::RolloutProgress>, Status> {
        const METHOD: &str = "ControlRollout";
        let asked = request.get_ref();
        let target = format!(
            "{} {} {}",
            asked.action, asked.environment, asked.rollout_id
        )
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
        let operator = self.operator(&request, METHOD, &target).await?;
        let asked = request.into_inner();
        let answer = self
            .rollouts
            .control(
                &asked.environment,
                &asked.rollout_id,
                &asked.action,
                &operator,
            )
            .await
            .map(|rollout| Response::new(crate::rollouts::to_proto(&rollout)))
            .map_err(Status::from);
        self.audited(&operator, METHOD, target, answer).await
    }

    async fn pin(
        &self,
        request: Request<pb::PinRequest>,
    ) -> Result<Response<pb::PinResponse>, Status> {
        const METHOD: &str = "Pin";
        let asked = request.get_ref();
        let target = format!(
            "{} {} {}",
            asked.environment,
            selector_text(asked.selector.as_ref()),
            asked.revision
        )
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
        let operator = self.operator(&request, METHOD, &target).await?;
        let asked = request.into_inner();
        let environment = asked.environment.clone();
        let selector: BTreeMap<String, String> = asked
            .selector
            .map(|s| s.tags.into_iter().collect())
            .unwrap_or_default();
        let answer = self
            .rollouts
            .pin(&environment, selector, &asked.revision, &operator)
            .await
            .map(|(revision, nodes)| {
                Response::new(pb::PinResponse {
                    environment: self
                        .rollouts
                        .environments
                        .named(&environment)
                        .map(|e| e.name.clone())
                        .unwrap_or(environment),
                    revision,
                    nodes,
                })
            })
            .map_err(Status::from);
        self.audited(&operator, METHOD, target, answer).await
    }

    async fn unpin(
        &self,
        request: Request<pb::UnpinRequest>,
    ) -> Result<Response<pb::UnpinResponse>, Status> {
        const METHOD: &str = "Unpin";
        let asked = request.get_ref();
        let target = format!(
            "{} {}",
            asked.environment,
            selector_text(asked.selector.as_ref())
        )
        .trim()
        .to_string();
        let operator = self.operator(&request, METHOD, &target).await?;
        let asked = request.into_inner();
        let selector: BTreeMap<String, String> = asked
            .selector
            .map(|s| s.tags.into_iter().collect())
            .unwrap_or_default();
        let answer = self
            .rollouts
            .unpin(&asked.environment, selector, &operator)
            .await
            .map(|nodes| Response::new(pb::UnpinResponse { nodes }))
            .map_err(Status::from);
        self.audited(&operator, METHOD, target, answer).await
    }

    type TriggerStream = ResponseStream<pb::TriggerProgress>;

    async fn trigger(
        &self,
        request: Request<pb::TriggerRequest>,
    ) -> Result<Response<Self::TriggerStream>, Status> {
        const METHOD: &str = "Trigger";
        let target = selector_text(request.get_ref().selector.as_ref());
        let operator = self.operator(&request, METHOD, &target).await?;
        let started = self.start_trigger(request.into_inner()).await;
        self.audited(&operator, METHOD, target, started).await
    }

    async fn trigger_status(
        &self,
        request: Request<pb::TriggerStatusRequest>,
    ) -> Result<Response<pb::TriggerProgress>, Status> {
        const METHOD: &str = "TriggerStatus";
        let target = request.get_ref().trigger_id.clone();
        let operator = self.operator(&request, METHOD, &target).await?;
        let id = request.into_inner().trigger_id;
        let triggers = self.triggers.clone();
        let progress = self
            .blocking
            .run(move || triggers.status(&id))
            .await
            .map_err(Status::from)
            .and_then(|progress| progress.map_err(Status::from))
            .map(Response::new);
        self.audited(&operator, METHOD, target, progress).await
    }

    async fn add_operator(
        &self,
        request: Request<pb::AddOperatorRequest>,
    ) -> Result<Response<pb::AddOperatorResponse>, Status> {
        let method = if request.get_ref().renew {
            "RenewOperator"
        } else {
            "AddOperator"
        };
        let target = request.get_ref().name.clone();
        let operator = self.operator(&request, method, &target).await?;
        let request = request.into_inner();
        let operators = self.operators.clone();
        let by = operator.clone();
        let signed = self
            .blocking
            .run(move || {
                let validity = Duration::from_secs(request.validity_seconds);
                if request.renew {
                    operators.renew(&by, &request.name, &request.csr_pem, validity)
                } else {
                    operators.add(&by, &request.name, &request.csr_pem, validity)
                }
            })
            .await
            .map_err(Status::from)
            .and_then(|signed| signed.map_err(Status::from))
            .map(|signed| {
                Response::new(pb::AddOperatorResponse {
                    certificate_pem: signed.certificate_pem,
                    ca_certificate_pem: signed.ca_certificate_pem,
                    not_after_unix: signed.not_after_unix,
                })
            });
        self.audited(&operator, method, target, signed).await
    }

    async fn revoke_operator(
        &self,
        request: Request<pb::RevokeOperatorRequest>,
    ) -> Result<Response<pb::RevokeOperatorResponse>, Status> {
        const METHOD: &str = "RevokeOperator";
        let target = request.get_ref().name.clone();
        let operator = self.operator(&request, METHOD, &target).await?;
        let operators = self.operators.clone();
        let name = target.clone();
        let revoked = self
            .blocking
            .run(move || operators.revoke(&name))
            .await
            .map_err(Status::from)
            .and_then(|revoked| revoked.map_err(Status::from))
            .map(|revoked| {
                Response::new(pb::RevokeOperatorResponse {
                    serial: revoked.serial,
                })
            });
        self.audited(&operator, METHOD, target, revoked).await
    }

    async fn list_operators(
        &self,
        request: Request<pb::ListOperatorsRequest>,
    ) -> Result<Response<pb::ListOperatorsResponse>, Status> {
        const METHOD: &str = "ListOperators";
        let operator = self.operator(&request, METHOD, "").await?;
        let operators = self.operators.clone();
        let listed = self
            .blocking
            .run(move || operators.list())
            .await
            .map_err(Status::from)
            .and_then(|listed| listed.map_err(Status::from))
            .map(|listed| {
                Response::new(pb::ListOperatorsResponse {
                    operators: listed
                        .into_iter()
                        .map(|o| pb::Operator {
                            name: o.name,
                            created_unix: o.created_unix as i64,
                            not_after_unix: o.not_after_unix as i64,
                            revoked_unix: o.revoked_unix.unwrap_or(0) as i64,
                            added_by: o.added_by,
                            serial: o.serial,
                        })
                        .collect(),
                })
            });
        self.audited(&operator, METHOD, String::new(), listed).await
    }

    /// The token is made only for an operator; the audit record names the
    /// new token's id (the start of its sha256), never the token.
    async fn create_dashboard_token(
        &self,
        request: Request<pb::CreateDashboardTokenRequest>,
    ) -> Result<Response<pb::CreateDashboardTokenResponse>, Status> {
        const METHOD: &str = "CreateDashboardToken";
        let operator = self.operator(&request, METHOD, "").await?;
        let (tokens, by) = (self.dashboard_tokens.clone(), operator.clone());
        let created = self
            .blocking
            .run(move || tokens.create(&by))
            .await
            .map_err(Status::from)
            .and_then(|created| created.map_err(Status::from));
        let target = created
            .as_ref()
            .map(|created| created.record.id().to_owned())
            .unwrap_or_default();
        let response = created.map(|created| {
            Response::new(pb::CreateDashboardTokenResponse {
                record: Some(dashboard_token_message(&created.record)),
                token: created.secret,
            })
        });
        self.audited(&operator, METHOD, target, response).await
    }

    async fn list_dashboard_tokens(
        &self,
        request: Request<pb::ListDashboardTokensRequest>,
    ) -> Result<Response<pb::ListDashboardTokensResponse>, Status> {
        const METHOD: &str = "ListDashboardTokens";
        let operator = self.operator(&request, METHOD, "").await?;
        let tokens = self.dashboard_tokens.clone();
        let listed = self
            .blocking
            .run(move || tokens.list())
            .await
            .map_err(Status::from)
            .and_then(|listed| listed.map_err(Status::from))
            .map(|listed| {
                Response::new(pb::ListDashboardTokensResponse {
                    tokens: listed.iter().map(dashboard_token_message).collect(),
                })
            });
        self.audited(&operator, METHOD, String::new(), listed).await
    }

    async fn revoke_dashboard_token(
        &self,
        request: Request<pb::RevokeDashboardTokenRequest>,
    ) -> Result<Response<pb::RevokeDashboardTokenResponse>, Status> {
        const METHOD: &str = "RevokeDashboardToken";
        let target = request.get_ref().id.clone();
        let operator = self.operator(&request, METHOD, &target).await?;
        let (tokens, by, id) = (
            self.dashboard_tokens.clone(),
            operator.clone(),
            target.clone(),
        );
        let revoked = self
            .blocking
            .run(move || tokens.revoke(&id, &by))
            .await
            .map_err(Status::from)
            .and_then(|revoked| revoked.map_err(Status::from))
            .map(|revoked| {
                Response::new(pb::RevokeDashboardTokenResponse {
                    token: Some(dashboard_token_message(&revoked.record)),
                    revoked_now: revoked.now,
                })
            });
        self.audited(&operator, METHOD, target, revoked).await
    }

    async fn get_audit(
        &self,
        request: Request<pb::GetAuditRequest>,
    ) -> Result<Response<pb::GetAuditResponse>, Status> {
        const METHOD: &str = "GetAudit";
        let operator = self.operator(&request, METHOD, "").await?;
        let limit = request.into_inner().limit as usize;
        // Recorded first, so that the answer shows this call too.
        let recorded = self.audited(&operator, METHOD, String::new(), Ok(())).await;
        recorded?;
        let audit = self.audit.clone();
        let records = self
            .blocking
            .run(move || audit.last(limit))
            .await
            .map_err(Status::from)?
            .map_err(Status::from)?;
        Ok(Response::new(pb::GetAuditResponse {
            entries: records
                .into_iter()
                .map(|r| pb::AuditEntry {
                    time_unix_ms: r.time_unix_ms as i64,
                    operator: r.operator,
                    method: r.method,
                    target: r.target,
                    outcome: r.outcome,
                    message: r.message,
                })
                .collect(),
        }))
    }
}

impl AdminService {
    /// Checks and plans a trigger and starts it; the stream carries every
    /// change of progress, the last one included, then ends.
    async fn start_trigger(
        &self,
        request: pb::TriggerRequest,
    ) -> Result<Response<ResponseStream<pb::TriggerProgress>>, Status> {
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
}
