//! The mTLS setup the server relies on, end to end over 127.0.0.1: tonic
//! with rustls, our CA, a server certificate for `localhost`/`127.0.0.1`,
//! and client certificates required and verified against the CA. Enrolled
//! nodes and the admin are served and told apart by their certificates;
//! everyone else is served nothing.
//!
//! Under TLS 1.3 a refused client only sees its connection close at its
//! first call, so these tests never look at error text: they assert that no
//! answer came back and that the service was never reached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cms_proto::v1::enrollment_client::EnrollmentClient;
use cms_proto::v1::enrollment_server::{Enrollment, EnrollmentServer};
use cms_proto::v1::{EnrollRequest, EnrollResponse};
use cms_server::pki::{CertificateAuthority, PeerIdentity, peer_identity};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// A client certificate and its key, as PEM.
struct ClientCredential {
    certificate_pem: String,
    private_key_pem: String,
}

#[tokio::test]
async fn a_node_enrolled_from_its_own_csr_is_served_as_that_node() {
    let server = TestServer::start().await;
    let node = node_credential(&server.ca, "i-0abc123");
    assert_eq!(
        server.who_am_i(Some(&node)).await,
        Some("node i-0abc123".to_owned())
    );
    assert_eq!(server.served(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_admin_credential_is_served_as_the_admin() {
    let server = TestServer::start().await;
    let admin = server.ca.issue_admin_certificate().unwrap();
    let admin = ClientCredential {
        certificate_pem: admin.certificate_pem,
        private_key_pem: admin.private_key_pem,
    };
    assert_eq!(
        server.who_am_i(Some(&admin)).await,
        Some("admin".to_owned())
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_served_nothing() {
    let server = TestServer::start().await;
    assert_eq!(server.who_am_i(None).await, None);
    assert_eq!(server.served(), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_served_nothing() {
    let server = TestServer::start().await;
    let other_ca = CertificateAuthority::create("other").unwrap();
    let stranger = node_credential(&other_ca, "i-0abc123");
    assert_eq!(server.who_am_i(Some(&stranger)).await, None);
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
    assert_eq!(server.who_am_i(Some(&impostor)).await, None);
    assert_eq!(server.served(), 0);
    server.stop().await;
}

#[tokio::test]
async fn an_agent_trusting_another_ca_does_not_talk_to_the_server() {
    let server = TestServer::start().await;
    let node = node_credential(&server.ca, "i-0abc123");
    let other_ca = CertificateAuthority::create("other").unwrap();
    assert_eq!(
        call(server.address, other_ca.certificate_pem(), Some(&node)).await,
        None
    );
    assert_eq!(server.served(), 0);
    server.stop().await;
}

/// Enrolls a node as the agent does: a fresh P-256 key and a CSR made on
/// the "instance" (with rcgen directly, as cms-agent's
/// `generate_key_and_csr` does; cms-server does not depend on cms-agent),
/// signed by `ca`. The CSR asks to be the admin; the CA ignores that.
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

/// A tonic server with the production TLS settings and one service that
/// answers with who the caller's certificate says it is.
struct TestServer {
    ca: CertificateAuthority,
    address: SocketAddr,
    served: Arc<AtomicUsize>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start() -> Self {
        install_crypto_provider();
        let ca = CertificateAuthority::create("test").unwrap();
        let server_certificate = ca
            .issue_server_certificate(&["localhost".to_owned()], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(
                &server_certificate.certificate_pem,
                &server_certificate.private_key_pem,
            ))
            .client_ca_root(Certificate::from_pem(ca.certificate_pem()))
            .client_auth_optional(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let served = Arc::new(AtomicUsize::new(0));
        let service = EnrollmentServer::new(WhoAmI {
            served: served.clone(),
        });
        let (shutdown, stopped) = oneshot::channel::<()>();
        let router = Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(service);
        let task = tokio::spawn(router.serve_with_incoming_shutdown(
            TcpListenerStream::new(listener),
            async {
                let _ = stopped.await;
            },
        ));
        TestServer {
            ca,
            address,
            served,
            shutdown,
            task,
        }
    }

    /// Calls the server as the holder of `credential` (or with no client
    /// certificate), trusting our CA.
    async fn who_am_i(&self, credential: Option<&ClientCredential>) -> Option<String> {
        call(self.address, self.ca.certificate_pem(), credential).await
    }

    /// How many calls reached the service.
    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// One Enroll call to `address`, trusting `ca_pem` for the server; the
/// identity the service saw, or `None` if nothing was served (the
/// connection or the call failed, whatever the message).
async fn call(
    address: SocketAddr,
    ca_pem: &str,
    credential: Option<&ClientCredential>,
) -> Option<String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(credential) = credential {
        tls = tls.identity(Identity::from_pem(
            &credential.certificate_pem,
            &credential.private_key_pem,
        ));
    }
    // Deadlines, so that a refusal can never hang the test.
    let endpoint = Endpoint::from_shared(format!("https://{address}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(10));
    let channel = endpoint.connect().await.ok()?;
    let response = EnrollmentClient::new(channel)
        .enroll(EnrollRequest::default())
        .await
        .ok()?;
    Some(response.into_inner().node_id)
}

struct WhoAmI {
    served: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl Enrollment for WhoAmI {
    async fn enroll(
        &self,
        request: Request<EnrollRequest>,
    ) -> Result<Response<EnrollResponse>, Status> {
        self.served.fetch_add(1, Ordering::SeqCst);
        let certificates = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certificates
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let (identity, _serial) =
            peer_identity(leaf).map_err(|error| Status::permission_denied(error.to_string()))?;
        let node_id = match identity {
            PeerIdentity::Node(node_id) => format!("node {node_id}"),
            PeerIdentity::Admin => "admin".to_owned(),
        };
        Ok(Response::new(EnrollResponse {
            node_id,
            ..EnrollResponse::default()
        }))
    }
}

/// rustls needs one process-wide crypto provider; see STACK.md, pitfall 1.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
