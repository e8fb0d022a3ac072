//! The mTLS setup production uses, end to end over 127.0.0.1: the server's
//! own acceptor (`listener::grpc_tls_from_ca` and `accept_connections`,
//! as `server::run` builds them) in front of a gRPC service that checks
//! callers with the server's own rule (`auth::identify` against the
//! store), and the agent's own `Connector` as the client. Enrolled nodes
//! and the admin are served and told apart by their certificates; everyone
//! else is served nothing.
//!
//! The acceptor lets a client without a certificate finish its handshake
//! (enrollment is the one call without one), so such a client is refused
//! by the call's check; a certificate from another CA, or one that is not
//! a client certificate, is refused by the handshake. Under TLS 1.3 a
//! refused client only sees its connection close at its first call, so
//! these tests never look at error text: they assert that no answer came
//! back and that no call was served.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cms_agent::client::{Connector, ServerAddress};
use cms_agent::identity::Identity;
use cms_proto::v1 as pb;
use cms_proto::v1::agent_server::{Agent, AgentServer};
use cms_server::listener::{Accepted, accept_connections, grpc_tls_from_ca};
use cms_server::pki::{CertificateAuthority, PeerIdentity};
use cms_server::store::{CertificateRecord, MemoryStore, SharedStore};
use rustls::pki_types::pem::PemObject as _;
use tokio::task::JoinSet;
use tokio_stream::StreamExt as _;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Server};
use tonic::{Request, Response, Status};

/// A client certificate and its key, as PEM.
struct ClientCredential {
    certificate_pem: String,
    private_key_pem: String,
}

#[tokio::test]
async fn a_node_enrolled_from_its_own_csr_is_served_as_that_node() {
    let server = TestServer::start().await;
    let node = server.enroll("i-0abc123");
    assert_eq!(
        server.who_am_i(&node).await,
        Some("node i-0abc123".to_owned())
    );
    assert_eq!(server.served(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_admin_credential_is_served_as_the_admin() {
    let server = TestServer::start().await;
    let admin = server.ca.issue_admin_certificate().unwrap();
    // An admin certificate is accepted only as its operator's current one.
    let info = cms_server::pki::read_certificate(&admin.certificate_pem).unwrap();
    let operator = cms_server::store::OperatorRecord {
        name: "admin".to_owned(),
        serial: info.serial_hex,
        created_unix: 0,
        not_after_unix: info.not_after_unix as u64,
        revoked_unix: None,
        added_by: "server".to_owned(),
    };
    assert!(server.store.swap_operator(None, &operator).unwrap());
    let admin = ClientCredential {
        certificate_pem: admin.certificate_pem,
        private_key_pem: admin.private_key_pem,
    };
    assert_eq!(server.who_am_i(&admin).await, Some("admin".to_owned()));
    server.stop().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_served_nothing() {
    let server = TestServer::start().await;
    assert_eq!(server.call_without_certificate().await, None);
    assert_eq!(server.served(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_served_nothing() {
    let server = TestServer::start().await;
    let other_ca = CertificateAuthority::create("other").unwrap();
    let stranger = node_credential(&other_ca, "i-0abc123");
    assert_eq!(server.who_am_i(&stranger).await, None);
    assert_eq!(server.served(), 0);
    server.stop().await;
}

#[tokio::test]
async fn the_server_certificate_cannot_be_used_as_a_client_certificate() {
    let server = TestServer::start().await;
    let server_certificate = server
        .ca
        .issue_server_certificate(&["localhost".to_owned()], &[])
        .unwrap();
    let impostor = ClientCredential {
        certificate_pem: server_certificate.certificate_pem,
        private_key_pem: server_certificate.private_key_pem,
    };
    assert_eq!(server.who_am_i(&impostor).await, None);
    assert_eq!(server.served(), 0);
    server.stop().await;
}

#[tokio::test]
async fn an_agent_trusting_another_ca_does_not_talk_to_the_server() {
    let server = TestServer::start().await;
    let node = server.enroll("i-0abc123");
    let other_ca = CertificateAuthority::create("other").unwrap();
    assert_eq!(
        call(server.address, other_ca.certificate_pem(), &node).await,
        None
    );
    assert_eq!(server.served(), 0);
    server.stop().await;
}

/// Makes a node's credential as the agent does: a fresh P-256 key and a
/// CSR made on the "instance" (with rcgen directly, as cms-agent's
/// `generate_key_and_csr` does), signed by `ca`. The CSR asks to be the
/// admin; the CA ignores that.
fn node_credential(ca: &CertificateAuthority, node_id: &str) -> ClientCredential {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, node_id);
    params.subject_alt_names = vec![rcgen::SanType::URI("cms://admin".try_into().unwrap())];
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();
    let issued = ca
        .sign_node_csr(&csr_pem, node_id, Duration::from_secs(3600))
        .unwrap();
    ClientCredential {
        certificate_pem: issued.certificate_pem,
        private_key_pem: key.serialize_pem(),
    }
}

/// The production acceptor and a service that answers with who the
/// caller's certificate says it is, checked as every server call is.
struct TestServer {
    ca: CertificateAuthority,
    store: SharedStore,
    address: SocketAddr,
    served: Arc<AtomicUsize>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl TestServer {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = CertificateAuthority::create("test").unwrap();
        let server_certificate = ca
            .issue_server_certificate(&["localhost".to_owned()], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        let tls = grpc_tls_from_ca(&ca, &server_certificate).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let store: SharedStore = Arc::new(MemoryStore::default());
        let served = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (grpc, connections) = tokio::sync::mpsc::channel(8);
        let (watch, _watches) = tokio::sync::mpsc::channel(8);
        let mut tasks = JoinSet::new();
        tasks.spawn(accept_connections(
            listener,
            tls,
            Accepted { grpc, watch },
            stopped.clone(),
        ));
        let service = AgentServer::new(WhoAmI {
            store: store.clone(),
            served: served.clone(),
        });
        let mut grpc_stop = stopped;
        tasks.spawn(async move {
            Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::ReceiverStream::new(connections)
                        .map(Ok::<_, std::io::Error>),
                    async move {
                        let _ = grpc_stop.wait_for(|stopped| *stopped).await;
                    },
                )
                .await?;
            Ok(())
        });
        TestServer {
            ca,
            store,
            address,
            served,
            stop,
            tasks,
        }
    }

    /// A node credential from this server's CA, recorded in its store as
    /// enrollment records it.
    fn enroll(&self, node_id: &str) -> ClientCredential {
        let credential = node_credential(&self.ca, node_id);
        let (_, serial) = cms_server::pki::peer_identity(
            &rustls::pki_types::CertificateDer::from_pem_slice(
                credential.certificate_pem.as_bytes(),
            )
            .unwrap(),
        )
        .unwrap();
        self.store
            .put_certificate(&CertificateRecord {
                serial,
                node_id: node_id.to_owned(),
                not_after_unix: u64::MAX,
                revoked: false,
            })
            .unwrap();
        credential
    }

    /// Calls the server through the agent's connector as the holder of
    /// `credential`, trusting our CA.
    async fn who_am_i(&self, credential: &ClientCredential) -> Option<String> {
        call(self.address, self.ca.certificate_pem(), credential).await
    }

    /// Calls the server with no client certificate, trusting our CA.
    async fn call_without_certificate(&self) -> Option<String> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(self.ca.certificate_pem()))
            .domain_name("localhost");
        let endpoint = Endpoint::from_shared(format!("https://{}", self.address))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(10));
        let channel = endpoint.connect().await.ok()?;
        let response = pb::agent_client::AgentClient::new(channel)
            .get_catalog(pb::CatalogRequest::default())
            .await
            .ok()?;
        identity_of(response.into_inner())
    }

    /// How many calls were served an answer.
    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        while let Some(result) = self.tasks.join_next().await {
            result.unwrap().unwrap();
        }
    }
}

/// One `GetCatalog` call to `address` through the agent's `Connector`,
/// trusting `ca_pem` for the server; the identity the service saw, or
/// `None` if nothing was served (the connection or the call failed,
/// whatever the message).
async fn call(address: SocketAddr, ca_pem: &str, credential: &ClientCredential) -> Option<String> {
    let server = ServerAddress::parse(&format!("https://localhost:{}", address.port())).unwrap();
    let identity = Identity {
        private_key_pem: credential.private_key_pem.clone(),
        certificate_pem: credential.certificate_pem.clone(),
        ca_certificate_pem: ca_pem.to_owned(),
    };
    let connector = Connector::new(&server, &identity).ok()?;
    let mut client = tokio::time::timeout(Duration::from_secs(10), connector.connect())
        .await
        .ok()?
        .ok()?;
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_catalog(pb::CatalogRequest::default()),
    )
    .await
    .ok()?
    .ok()?;
    identity_of(response.into_inner())
}

/// The identity `WhoAmI` put in its answer.
fn identity_of(response: pb::CatalogResponse) -> Option<String> {
    match response.result? {
        pb::catalog_response::Result::NotModified(answer) => Some(answer.catalog_id),
        pb::catalog_response::Result::Catalog(_) => None,
    }
}

struct WhoAmI {
    store: SharedStore,
    served: Arc<AtomicUsize>,
}

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Agent for WhoAmI {
    async fn get_catalog(
        &self,
        request: Request<pb::CatalogRequest>,
    ) -> Result<Response<pb::CatalogResponse>, Status> {
        let leaf = request
            .peer_certs()
            .and_then(|certificates| certificates.first().cloned())
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let identity = cms_server::auth::identify(&*self.store, leaf.as_ref())?;
        self.served.fetch_add(1, Ordering::SeqCst);
        let name = match identity {
            PeerIdentity::Node(node_id) => format!("node {node_id}"),
            PeerIdentity::Operator(name) => name,
        };
        Ok(Response::new(pb::CatalogResponse {
            result: Some(pb::catalog_response::Result::NotModified(pb::NotModified {
                catalog_id: name,
                revision: String::new(),
            })),
        }))
    }

    type GetContentStream = Stream<pb::ContentChunk>;

    async fn get_content(
        &self,
        _request: Request<pb::ContentRequest>,
    ) -> Result<Response<Self::GetContentStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn report(
        &self,
        _request: Request<pb::RunReport>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    type WatchStream = Stream<pb::WatchEvent>;

    async fn watch(
        &self,
        _request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn renew(
        &self,
        _request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}
