//! The real server in this process, for the tests that attack it: built by
//! `server::prepare` and `server::run_prepared` as `cms-server serve` builds
//! it, on its own runtime and thread (so that a test's attackers do not share
//! its workers), on loopback, with the example roles repository. Nodes are
//! enrolled through the agent's own client code.

// A test measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cms_agent::client::{Connector, ServerAddress};
use cms_agent::identity::{Identity, generate_key_and_csr};
use cms_proto::v1 as pb;
use cms_server::server::ServeConfig;
use tonic::transport::Channel;

/// The server, stopped on drop.
pub struct Server {
    pub address: SocketAddr,
    pub data: PathBuf,
    pub ca_pem: String,
    /// The server's store, shared with it, as a second server sharing the
    /// store would hold it.
    pub store: cms_server::store::SharedStore,
    /// The server's CA, to issue certificates the server never would hand
    /// out the way a test needs them.
    pub ca: Arc<cms_server::pki::CertificateAuthority>,
    _scratch: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

/// An enrolled node: its name, identity and the agent's connector.
pub struct Node {
    pub id: String,
    pub identity: Identity,
    pub connector: Connector,
}

impl Server {
    /// Starts the server with its defaults changed by `configure`, and
    /// waits until it serves the example repository.
    pub async fn start(configure: impl FnOnce(&mut ServeConfig)) -> Server {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let scratch = tempfile::tempdir().unwrap();
        let data = scratch.path().join("server");
        let mut config = ServeConfig::new(
            data.clone(),
            cms_server::commands::EXAMPLE_REPOSITORY.to_string(),
        );
        config.sync_interval = Duration::from_secs(3600);
        configure(&mut config);
        let prepared = cms_server::server::prepare(&config).unwrap();
        let store = prepared.store.clone();
        let ca = prepared.ca.clone();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let address = std_listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener)?;
                cms_server::server::run_prepared(prepared, listener, None, config, async move {
                    let _ = stopped.await;
                })
                .await
            })
        });
        let ca_pem = std::fs::read_to_string(data.join("admin/ca.pem")).unwrap();
        let server = Server {
            address,
            data,
            ca_pem,
            store,
            ca,
            _scratch: scratch,
            stop: Some(stop),
            thread: Some(thread),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let synced = match server.admin().await {
                Ok(mut admin) => admin.sync(pb::SyncRequest {}).await.is_ok(),
                Err(_) => false,
            };
            if synced {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not serve within a minute"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// A new admin connection with the admin credential.
    pub async fn admin(&self) -> anyhow::Result<pb::admin_client::AdminClient<Channel>> {
        cms_server::admin::connect(&self.address.to_string(), &self.data).await
    }

    /// The server's address as the agent's client takes it, connecting
    /// from `local` (a loopback address of its own) when given.
    pub fn agent_address(&self, local: Option<std::net::IpAddr>) -> ServerAddress {
        let mut address =
            ServerAddress::parse(&format!("https://localhost:{}", self.address.port())).unwrap();
        address.local_address = local;
        address
    }

    /// Enrolls `name` with `tags` as the agent does (a token from the
    /// admin API, a fresh key and CSR), from `local` when given.
    pub async fn enroll_from(
        &self,
        name: &str,
        tags: &[(&str, &str)],
        local: Option<std::net::IpAddr>,
    ) -> Node {
        let token = self
            .admin()
            .await
            .unwrap()
            .create_token(pb::CreateTokenRequest {
                scope: tags
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ttl_seconds: 600,
                uses: 1,
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let key = generate_key_and_csr(name).unwrap();
        let address = self.agent_address(local);
        let response = cms_agent::client::enroll(
            &address,
            &self.ca_pem,
            pb::EnrollRequest {
                token,
                csr_pem: key.csr_pem.clone(),
                tags: tags
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                node_name: name.to_string(),
                identity: None,
            },
        )
        .await
        .unwrap();
        let identity = Identity {
            private_key_pem: key.private_key_pem,
            certificate_pem: response.certificate_pem,
            ca_certificate_pem: response.ca_certificate_pem,
        };
        let connector = Connector::new(&address, &identity).unwrap();
        Node {
            id: response.node_id,
            identity,
            connector,
        }
    }

    pub async fn enroll(&self, name: &str, tags: &[(&str, &str)]) -> Node {
        self.enroll_from(name, tags, None).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A channel to the server presenting `certificate_pem` and its key as
/// the client certificate (none when `None`), trusting `ca_pem`.
pub async fn channel_with(
    server: &Server,
    ca_pem: &str,
    client: Option<(&str, &str)>,
) -> anyhow::Result<Channel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity as TlsIdentity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((certificate_pem, key_pem)) = client {
        tls = tls.identity(TlsIdentity::from_pem(certificate_pem, key_pem));
    }
    let channel = Endpoint::from_shared(format!("https://{}", server.address))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(10))
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(channel)
}

/// A report of one run of `catalog_id` that changed nothing.
pub fn report(run_id: &str, catalog_id: &str) -> pb::RunReport {
    pb::RunReport {
        run_id: run_id.to_string(),
        catalog_id: catalog_id.to_string(),
        revision: String::new(),
        started_at_unix_ms: 1_000,
        duration_ms: 10,
        noop: false,
        resources: Vec::new(),
        trigger_id: String::new(),
        note: String::new(),
    }
}

/// The facts an agent reports, enough for the example repository.
pub fn facts(hostname: &str) -> String {
    serde_json::json!({
        "hostname": hostname,
        "os": "debian",
        "os_family": "debian",
        "architecture": "x86_64",
        "cpus": 2,
        "memory_mb": 2048,
    })
    .to_string()
}

/// `node`'s catalog request, with its facts.
pub fn catalog_request(node: &Node) -> pb::CatalogRequest {
    pb::CatalogRequest {
        facts_json: facts(&node.id),
        have_catalog_id: String::new(),
        trigger_id: String::new(),
    }
}

/// One run of `node` as the agent makes it: a new connection, its catalog,
/// and its report; the catalog id.
pub async fn converge(node: &Node, run_id: &str) -> anyhow::Result<String> {
    let mut client = node.connector.connect().await?;
    let answer = client
        .get_catalog(catalog_request(node))
        .await?
        .into_inner();
    let catalog_id = match answer.result {
        Some(pb::catalog_response::Result::Catalog(catalog)) => catalog.catalog_id,
        Some(pb::catalog_response::Result::NotModified(same)) => same.catalog_id,
        None => anyhow::bail!("an empty catalog answer"),
    };
    client.report(report(run_id, &catalog_id)).await?;
    Ok(catalog_id)
}

/// A client TLS configuration trusting `ca_pem`, offering `h2`, with no
/// client certificate: what an enrolling agent (or anyone) presents.
pub fn anonymous_tls(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// A TCP connection to `server` from the loopback address `local`.
pub async fn connect_from(
    local: std::net::IpAddr,
    server: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    socket.connect(server).await
}

/// The `i`th of a range of loopback addresses starting at 127.0.`block`.1,
/// so that each attacker or agent of a test has its own source address.
pub fn loopback(block: u8, i: usize) -> std::net::IpAddr {
    let host = i % 250 + 1;
    std::net::IpAddr::from([127, 0, block + (i / 250) as u8, host as u8])
}
