//! The running server: opens the store, loads or creates the CA and the
//! admin credential, restores the last good revision, follows the roles
//! repository, and serves gRPC (mTLS) and HTTP until shutdown.
//!
//! `run` takes listeners that are already bound, so tests pass
//! `127.0.0.1:0`, and a shutdown future, so tests stop it cleanly. Every
//! task it spawns is owned by a `JoinSet` and ends on shutdown.

use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use cms_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt as _;
use tonic::transport::Server;

use crate::catalogs::Catalogs;
use crate::git_sync::{GitSource, Revision, SyncOutcome, Syncer};
use crate::pki::CertificateAuthority;
use crate::service::{AdminService, AgentService, EnrollmentService, now_unix_ms};
use crate::store::{CaRecord, RevisionError, RevisionRecord, SharedStore, Store};

/// What `serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    /// A local path or a git URL.
    pub repo: String,
    pub branch: String,
    pub sync_interval: Duration,
    /// How long a node certificate is valid.
    pub certificate_validity: Duration,
    /// Names and addresses the server's certificate is valid for, besides
    /// `localhost` and `127.0.0.1`.
    pub server_names: Vec<String>,
    pub server_addresses: Vec<IpAddr>,
    /// The shared secret of the git webhook; `None` refuses every webhook.
    pub webhook_secret: Option<String>,
    /// How long run reports are kept.
    pub report_retention: Duration,
    /// Serve the HTTP port over TLS with the server's certificate (needed
    /// by the dashboard).
    pub http_tls: bool,
    /// When set, `GET /metrics` needs `Authorization: Bearer <token>`;
    /// otherwise it is open, as Prometheus scrapes usually are.
    pub metrics_token: Option<String>,
    /// A node not seen for this long is marked gone; its name is free.
    pub gone_after: Duration,
    /// A gone node is removed, with its certificates, this long after.
    pub remove_after: Duration,
    /// How often last-seen times noted in memory are written to the store.
    pub presence_flush: Duration,
    /// How long a trigger waits for one node's report by default.
    pub trigger_timeout: Duration,
    /// How often the server sends a heartbeat on a watch channel.
    pub watch_heartbeat: Duration,
}

impl ServeConfig {
    /// The defaults of `cms-server serve` for a data directory and a roles
    /// repository.
    pub fn new(data_dir: PathBuf, repo: String) -> ServeConfig {
        ServeConfig {
            data_dir,
            repo,
            branch: "main".into(),
            sync_interval: Duration::from_secs(60),
            certificate_validity: DEFAULT_CERTIFICATE_LIFETIME,
            server_names: Vec::new(),
            server_addresses: Vec::new(),
            webhook_secret: None,
            http_tls: false,
            metrics_token: None,
            report_retention: Duration::from_secs(30 * 24 * 3600),
            gone_after: DEFAULT_GONE_AFTER,
            remove_after: DEFAULT_REMOVE_AFTER,
            presence_flush: Duration::from_secs(5),
            trigger_timeout: Duration::from_secs(600),
            watch_heartbeat: Duration::from_secs(30),
        }
    }
}

/// Node certificates live a day; agents renew them when two thirds of
/// that has passed.
pub const DEFAULT_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Agents call at least every interval (30 minutes by default) and hold a
/// watch channel open; two hours without a sign of life means gone.
pub const DEFAULT_GONE_AFTER: Duration = Duration::from_secs(2 * 3600);
/// A gone node is removed a day later.
pub const DEFAULT_REMOVE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Where the admin credential lives in the data directory.
pub fn admin_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("admin")
}

/// Shared by every request.
pub struct ServerState {
    pub store: SharedStore,
    pub ca: CertificateAuthority,
    /// sha256 (hex) of the CA certificate (DER): part of every enrollment
    /// token, so an agent can check the server before trusting it.
    pub ca_fingerprint: String,
    pub config: ServeConfig,
    pub catalogs: Catalogs,
    pub metrics: crate::metrics::Metrics,
    pub fleet: Arc<crate::fleet::Fleet>,
    revision: RwLock<Option<Revision>>,
    sync_requests: mpsc::Sender<oneshot::Sender<anyhow::Result<pb::SyncResponse>>>,
}

impl std::fmt::Debug for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ServerState {
    /// The revision catalogs are compiled from: the last commit that
    /// validated.
    pub fn current_revision(&self) -> Option<Revision> {
        self.revision.read().expect("revision lock").clone()
    }

    /// Syncs now and says what happened.
    pub async fn sync_now(&self) -> anyhow::Result<pb::SyncResponse> {
        let (reply, answer) = oneshot::channel();
        self.sync_requests
            .send(reply)
            .await
            .context("Failed to reach the sync task")?;
        answer.await.context("The sync task stopped")?
    }
}

/// The sha256 hex of the DER of the first certificate in `pem`.
pub fn certificate_fingerprint(pem: &str) -> anyhow::Result<String> {
    let der = pem_to_der(pem).context("Failed to read the CA certificate")?;
    Ok(crate::store::sha256_hex(&der))
}

fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

/// Runs the server until `shutdown` completes.
pub async fn run(
    grpc_listener: TcpListener,
    http_listener: Option<TcpListener>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "Failed to create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let store = crate::store::open(&config.data_dir.join("db"))?;
    interrupt_running_triggers(&*store)?;
    let ca = load_or_create_ca(&*store)?;
    write_admin_credential(&ca, &config.data_dir)?;
    let ca_fingerprint = certificate_fingerprint(ca.certificate_pem())?;

    let source = RolesSource::for_repo(&config);
    let restored = restore_revision(&*store, &source);
    let (sync_requests, sync_receiver) = mpsc::channel(16);
    let fleet = Arc::new(crate::fleet::Fleet::default());
    let mut metrics = crate::metrics::Metrics::new();
    metrics.register_fleet(&fleet.counters);
    let state = Arc::new(ServerState {
        store,
        ca,
        ca_fingerprint,
        catalogs: Catalogs::new(
            10_000,
            std::thread::available_parallelism().map_or(2, |n| n.get()),
        )
        .observe_compiles(metrics.compile_duration()),
        metrics,
        fleet,
        revision: RwLock::new(restored),
        sync_requests,
        config: config.clone(),
    });

    let mut names = vec!["localhost".to_string()];
    names.extend(config.server_names.iter().cloned());
    let mut addresses: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    addresses.extend(config.server_addresses.iter().copied());
    if let Ok(local) = grpc_listener.local_addr()
        && !local.ip().is_unspecified()
    {
        addresses.push(local.ip());
    }
    let server_credential = state.ca.issue_server_certificate(&names, &addresses)?;
    // The chain ends with the CA, so an enrolling agent sees the CA and can
    // check its fingerprint against its token.
    let chain = format!(
        "{}{}",
        server_credential.certificate_pem,
        state.ca.certificate_pem()
    );
    let tls = grpc_tls_config(
        &chain,
        &server_credential.private_key_pem,
        state.ca.certificate_pem(),
    )?;

    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(sync_loop(
        state.clone(),
        source,
        sync_receiver,
        stop.clone(),
    ));
    tasks.spawn(crate::fleet::lifecycle_loop(state.clone(), stop.clone()));
    if let Some(http_listener) = http_listener {
        let http_tls = if config.http_tls {
            Some(http_tls_config(
                &server_credential.certificate_pem,
                state.ca.certificate_pem(),
                &server_credential.private_key_pem,
            )?)
        } else {
            None
        };
        tasks.spawn(crate::http::serve(
            http_listener,
            state.clone(),
            http_tls,
            stop.clone(),
        ));
    }
    let mut grpc_stop = stop.clone();
    // TLS is done here rather than by tonic, so that the handshakes in
    // progress and the gRPC connections open are bounded, and so that the
    // watch channel can share the port (see `accept_connections`).
    let (connection_sender, connections) = mpsc::channel(MAX_CONCURRENT_HANDSHAKES);
    let (watch_sender, mut watches) = mpsc::channel(MAX_CONCURRENT_HANDSHAKES);
    tasks.spawn(accept_connections(
        grpc_listener,
        tls,
        Accepted {
            grpc: connection_sender,
            watch: watch_sender,
        },
        stop.clone(),
    ));
    let watch_state = state.clone();
    let watch_stop = stop.clone();
    tasks.spawn(async move {
        // Each channel's task ends on its own when the server stops.
        while let Some(connection) = watches.recv().await {
            crate::watch::start(&watch_state, *connection, &watch_stop);
        }
        Ok(())
    });
    // Pings find clients that vanished in the middle of a call. A
    // connection lives at most `MAX_CONNECTION_AGE` (then it is closed
    // gracefully: calls in progress finish, the client reconnects), so an
    // idle client cannot hold one of the `MAX_GRPC_CONNECTIONS` for long.
    let keepalive = (config.gone_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let grpc = Server::builder()
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive.max(Duration::from_secs(10))))
        .max_connection_age(MAX_CONNECTION_AGE)
        .add_service(pb::enrollment_server::EnrollmentServer::new(
            EnrollmentService(state.clone()),
        ))
        .add_service(pb::agent_server::AgentServer::new(AgentService(
            state.clone(),
        )))
        .add_service(pb::admin_server::AdminServer::new(AdminService(
            state.clone(),
        )))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::ReceiverStream::new(connections).map(Ok::<_, std::io::Error>),
            async move {
                let _ = grpc_stop.wait_for(|stopped| *stopped).await;
            },
        );
    tasks.spawn(async move { grpc.await.context("The gRPC server failed") });
    shutdown.await;
    let _ = stop_sender.send(true);
    while let Some(result) = tasks.join_next().await {
        result.context("A server task panicked")??;
    }
    Ok(())
}

/// At most this many TLS handshakes on the gRPC port are in progress at
/// once. Every connection is accepted at once (a queued socket costs a file
/// descriptor and a few hundred bytes), and waits its turn, in order of
/// arrival, for a handshake, which holds buffers and costs a signature.
/// When 10,000 instances boot in the same second, they are served one
/// after another at the rate the CPU allows instead of all at once, each
/// slower than the last, with 10,000 handshakes' buffers held meanwhile.
pub const MAX_CONCURRENT_HANDSHAKES: usize = 64;

/// At most this many gRPC connections are open at once; a connection
/// beyond it waits, before its handshake, until one closes. An idle HTTP/2
/// connection costs about 25 KB (h2's fixed write and read buffers and
/// rustls'), so a fleet that held one each would grow the server by 250 MB
/// per 10,000 agents: agents hold only their watch channel (a socket and a
/// key) between runs, and a run's calls take a connection for seconds.
/// 256 keep both cores busy with room to spare.
pub const MAX_GRPC_CONNECTIONS: usize = 256;

/// The longest a gRPC connection stays open; then it is closed gracefully
/// (the calls in progress finish) and the client reconnects if it has more
/// to say. Runs take seconds; this only bounds a client that stays idle.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// How long one handshake may take once started (not counting the wait for
/// its turn): a client that stalls mid-handshake gives its place up. A
/// connection waits for its turn only once it has sent something (its
/// ClientHello), and is closed if it sends nothing for this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC port's TLS: the server's chain (ending with the CA, so an
/// enrolling agent sees the CA and can check its fingerprint against its
/// token), client certificates signed by the CA, optional because
/// enrollment is the one call without one (every other call checks for one:
/// service::caller), and HTTP/2 or the watch channel (`watch`), which takes
/// the connection's keys over after the handshake.
fn grpc_tls_config(
    chain_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("Failed to read the server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("Failed to read the server key")?;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(certificate.context("Failed to read the CA certificate")?)
            .context("Failed to trust the CA certificate")?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
        .allow_unauthenticated()
        .build()
        .context("Failed to set up client certificate checks")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(grpc_crypto()))
        .with_safe_default_protocol_versions()
        .context("Failed to set up TLS on the gRPC port")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .context("Failed to set up TLS on the gRPC port")?;
    // The server's order of cipher suites, not the client's (`grpc_crypto`).
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), cms_proto::watch::ALPN.to_vec()];
    config.enable_secret_extraction = true;
    // Stateless TLS 1.3 tickets (keys rotated every 6 hours, held in memory
    // only): an agent's later connections resume without a certificate
    // signature or verification. A resumed session still names its client
    // certificate, which `service::identify` checks on every call as on a
    // full handshake, its validity period included.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().context("Failed to set up TLS session tickets")?;
    Ok(Arc::new(config))
}

/// ring, with AES-128-GCM-SHA256 first (the suite every TLS 1.3 peer must
/// offer): its key schedule runs on SHA-256, which ring computes with the
/// CPU's SHA instructions, where the default first choice, AES-256-GCM-
/// SHA384, runs SHA-384 in software. A connection, especially a resumed
/// one, is mostly key schedule: this made the storm's reconnects cheaper.
fn grpc_crypto() -> rustls::crypto::CryptoProvider {
    use rustls::crypto::ring::cipher_suite as suite;
    let mut provider = rustls::crypto::ring::default_provider();
    let first = [
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    provider
        .cipher_suites
        .retain(|candidate| !first.iter().any(|s| s.suite() == candidate.suite()));
    provider.cipher_suites.splice(0..0, first);
    provider
}

/// Where `accept_connections` hands connections whose handshake is done.
struct Accepted {
    grpc: mpsc::Sender<GrpcConnection>,
    watch: mpsc::Sender<Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>,
}

/// Accepts connections on the gRPC port until shutdown. Each waits (without
/// a permit) for its ClientHello, which says whether it asks for the watch
/// channel or gRPC; a gRPC connection then waits for one of the
/// `MAX_GRPC_CONNECTIONS`, which it holds until it closes. Then it waits
/// for one of the `MAX_CONCURRENT_HANDSHAKES`, in order of arrival, and is
/// handed over once its handshake is done. Waiting costs a socket and a
/// small task, so a boot storm queues instead of being refused. A failed or
/// timed-out handshake drops its connection, as tonic's own TLS did.
async fn accept_connections(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    accepted: Accepted,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let handshake_permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
    let connection_permits = Arc::new(tokio::sync::Semaphore::new(MAX_GRPC_CONNECTIONS));
    let accepted = Arc::new(accepted);
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let connection = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            connection = listener.accept() => connection,
        };
        let stream = match connection {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of descriptors, or a connection reset before it was
                // accepted: wait a little and go on.
                tracing::debug!("accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, handshake_permits, connection_permits, accepted) = (
            acceptor.clone(),
            handshake_permits.clone(),
            connection_permits.clone(),
            accepted.clone(),
        );
        handshakes.spawn(async move {
            // A connection that has sent nothing yet waits without a
            // permit, so idle sockets cannot hold the others up.
            let Some(watch) = asks_for_watch(&stream).await else {
                return;
            };
            let connection_permit = if watch {
                None
            } else {
                let Ok(permit) = connection_permits.acquire_owned().await else {
                    return;
                };
                Some(permit)
            };
            let Ok(permit) = handshake_permits.acquire_owned().await else {
                return;
            };
            // Boxed: inline, the handshake's state (a whole rustls
            // connection) would size every waiting connection's task.
            let handshake =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, Box::pin(acceptor.accept(stream))).await;
            drop(permit);
            // Boxed too, before waiting to hand it over, for the same reason.
            match (handshake.map(|done| done.map(Box::new)), connection_permit) {
                (Ok(Ok(connection)), None) => {
                    let _ = accepted.watch.send(connection).await;
                }
                (Ok(Ok(connection)), Some(permit)) => {
                    let _ = accepted
                        .grpc
                        .send(GrpcConnection {
                            stream: connection,
                            _permit: permit,
                        })
                        .await;
                }
                (Ok(Err(error)), _) => tracing::debug!("a TLS handshake failed: {error}"),
                (Err(_), _) => tracing::debug!("a TLS handshake timed out"),
            }
        });
    }
}

/// Whether a connection's ClientHello offers the watch channel's ALPN
/// protocol, read with `peek`, so that the handshake reads it again; `None`
/// when nothing arrives within `HANDSHAKE_TIMEOUT` or the peer closes. A
/// ClientHello that does not parse goes to the gRPC side, whose handshake
/// fails with the proper alert.
async fn asks_for_watch(stream: &tokio::net::TcpStream) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut first = [0u8; 1];
    if !matches!(
        tokio::time::timeout_at(deadline, stream.peek(&mut first)).await,
        Ok(Ok(1..))
    ) {
        return None;
    }
    // A ClientHello is a few hundred bytes to a couple of KB (a post-quantum
    // key share is 1.2 KB); one that does not fit here is not ours.
    const LARGEST_HELLO: usize = 8 * 1024;
    loop {
        let mut buffer = vec![0u8; LARGEST_HELLO];
        let read = match tokio::time::timeout_at(deadline, stream.peek(&mut buffer)).await {
            Ok(Ok(read @ 1..)) => read,
            _ => return None,
        };
        match offers_watch(&buffer[..read]) {
            Some(watch) => return Some(watch),
            None if read < LARGEST_HELLO => {
                // The rest of the ClientHello is still on its way.
                drop(buffer);
                tokio::time::sleep(Duration::from_millis(5)).await;
                if tokio::time::Instant::now() >= deadline {
                    return None;
                }
            }
            None => return Some(false),
        }
    }
}

/// Whether the ClientHello at the start of `bytes` offers the watch
/// channel's protocol; `None` while it is incomplete. Not async, so that the
/// parser's state never sits in a waiting connection's task.
fn offers_watch(bytes: &[u8]) -> Option<bool> {
    let mut hello = rustls::server::Acceptor::default();
    if hello.read_tls(&mut &bytes[..]).is_err() {
        return Some(false);
    }
    match hello.accept() {
        Ok(Some(accepted)) => Some(
            accepted
                .client_hello()
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == cms_proto::watch::ALPN)),
        ),
        Ok(None) => None,
        Err(_) => Some(false),
    }
}

/// A gRPC connection and its place among the `MAX_GRPC_CONNECTIONS`, given
/// back when tonic drops the connection.
struct GrpcConnection {
    stream: Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for GrpcConnection {
    type ConnectInfo =
        <tokio_rustls::server::TlsStream<tokio::net::TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl tokio::io::AsyncRead for GrpcConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for GrpcConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.stream).poll_shutdown(cx)
    }
}

/// The HTTP port's TLS: the server certificate and the CA, as on gRPC.
fn http_tls_config(
    certificate_pem: &str,
    ca_pem: &str,
    key_pem: &str,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut chain = Vec::new();
    for pem in [certificate_pem, ca_pem] {
        chain.push(
            CertificateDer::from_pem_slice(pem.as_bytes())
                .context("Failed to read the server certificate")?,
        );
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("Failed to read the server key")?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("Failed to set up TLS on the HTTP port")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A trigger that was running when the server stopped is marked
/// interrupted: no one waits for its reports any more.
fn interrupt_running_triggers(store: &dyn Store) -> anyhow::Result<()> {
    for mut trigger in store.triggers()? {
        if trigger.state == "running" {
            trigger.state = "interrupted".into();
            trigger.message = "the server stopped while the trigger ran".into();
            trigger.finished_unix_ms = Some(now_unix_ms());
            store.put_trigger(&trigger)?;
        }
    }
    Ok(())
}

fn load_or_create_ca(store: &dyn Store) -> anyhow::Result<CertificateAuthority> {
    if let Some(record) = store.ca()? {
        return Ok(CertificateAuthority::from_pem(
            &record.certificate_pem,
            &record.private_key_pem,
        )?);
    }
    let ca = CertificateAuthority::create("server")?;
    store.put_ca(&CaRecord {
        certificate_pem: ca.certificate_pem().to_string(),
        private_key_pem: ca.private_key_pem(),
    })?;
    Ok(ca)
}

/// The admin credential, made once: `admin/admin.pem`, `admin/admin.key`
/// and `admin/ca.pem`, readable by the server's user only.
fn write_admin_credential(ca: &CertificateAuthority, data_dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = admin_dir(data_dir);
    if dir.join("admin.key").exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("Failed to create {}", dir.display()))?;
    let credential = ca.issue_admin_certificate()?;
    for (name, text) in [
        ("ca.pem", ca.certificate_pem().to_string()),
        ("admin.pem", credential.certificate_pem.clone()),
        ("admin.key", credential.private_key_pem.clone()),
    ] {
        write_private_file(&dir, name, text.as_bytes())?;
    }
    Ok(())
}

/// Writes `dir/name` owner-only (0600), atomically: a temporary file in
/// the same folder, synced, renamed over the old one, and the folder synced.
pub(crate) fn write_private_file(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("Failed to write {}", temporary.display()))?;
    std::io::Write::write_all(&mut file, bytes)
        .with_context(|| format!("Failed to write {}", temporary.display()))?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("Failed to write {}", path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// The last good revision of an earlier run, from the store's pointer and
/// the git mirror, so a restart keeps serving it even if the branch now
/// points to a broken commit.
fn restore_revision(store: &dyn Store, source: &RolesSource) -> Option<Revision> {
    let commit = store.current_revision().ok().flatten()?;
    let RolesSource::Git(syncer) = source else {
        // A plain folder has no history to go back to.
        return None;
    };
    let files = syncer.source().read_commit(&commit).ok()?;
    let (repository, diagnostics) = cms_roles::Repository::load(files);
    diagnostics.is_empty().then(|| Revision {
        commit,
        repository: Arc::new(repository),
    })
}

/// Where roles come from: a git repository (the normal case), or a plain
/// folder, for trying the server on a roles repository that is not under
/// git yet (its revision is the sha256 of its files).
pub enum RolesSource {
    Git(Syncer),
    Directory {
        path: PathBuf,
        current: Option<String>,
    },
}

impl RolesSource {
    pub fn for_repo(config: &ServeConfig) -> RolesSource {
        let path = Path::new(&config.repo);
        let is_plain_folder =
            path.is_dir() && !path.join(".git").exists() && !path.join("HEAD").exists();
        if is_plain_folder {
            RolesSource::Directory {
                path: path.to_path_buf(),
                current: None,
            }
        } else {
            RolesSource::Git(Syncer::new(GitSource {
                url: config.repo.clone(),
                branch: config.branch.clone(),
                mirror_dir: config.data_dir.join("git"),
            }))
        }
    }

    fn sync_once(&mut self) -> anyhow::Result<SyncOutcome> {
        match self {
            RolesSource::Git(syncer) => Ok(syncer.sync_once()?),
            RolesSource::Directory { path, current } => {
                let files = cms_roles::RepoFiles::read_dir(path)?;
                let mut digest = Vec::new();
                for (name, entry) in files.under("") {
                    digest.extend_from_slice(name.as_bytes());
                    digest.push(0);
                    if let cms_roles::Entry::File(bytes) = entry {
                        digest.extend_from_slice(crate::store::sha256_hex(bytes).as_bytes());
                    }
                    digest.push(0);
                }
                let commit = format!("dir-{}", crate::store::sha256_hex(&digest));
                if current.as_deref() == Some(commit.as_str()) {
                    return Ok(SyncOutcome::Unchanged { commit });
                }
                let (repository, diagnostics) = crate::git_sync::validate_files(files);
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
                }))
            }
        }
    }
}

type SyncReply = oneshot::Sender<anyhow::Result<pb::SyncResponse>>;

/// Syncs at start, on every interval and on request, until shutdown. git
/// work blocks, so it runs in `spawn_blocking`.
async fn sync_loop(
    state: Arc<ServerState>,
    syncer: RolesSource,
    mut requests: mpsc::Receiver<SyncReply>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let syncer = Arc::new(Mutex::new(syncer));
    let mut interval = tokio::time::interval(state.config.sync_interval);
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
        let outcome = sync_once(&state, syncer.clone()).await;
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
async fn prune_reports(state: &Arc<ServerState>) {
    let cutoff = now_unix_ms().saturating_sub(state.config.report_retention.as_millis() as u64);
    let store = state.store.clone();
    match tokio::task::spawn_blocking(move || store.prune_reports(cutoff)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(pruned)) => tracing::info!(pruned, "pruned run reports past their retention"),
        Ok(Err(error)) => tracing::warn!("Failed to prune run reports: {error}"),
        Err(error) => tracing::warn!("Failed to prune run reports: {error}"),
    }
}

async fn sync_once(
    state: &Arc<ServerState>,
    syncer: Arc<Mutex<RolesSource>>,
) -> anyhow::Result<pb::SyncResponse> {
    let outcome =
        tokio::task::spawn_blocking(move || syncer.lock().expect("syncer lock").sync_once())
            .await
            .context("The sync task panicked")??;
    let store = state.store.clone();
    let response = match outcome {
        SyncOutcome::Unchanged { commit } => pb::SyncResponse {
            revision: commit,
            accepted: true,
            errors: Vec::new(),
        },
        SyncOutcome::Accepted(revision) => {
            let commit = revision.commit.clone();
            let record = RevisionRecord {
                commit: commit.clone(),
                accepted: true,
                errors: Vec::new(),
                synced_unix_ms: now_unix_ms(),
            };
            let pointer = commit.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                store.put_revision(&record)?;
                store.set_current_revision(&pointer)?;
                Ok(())
            })
            .await??;
            *state.revision.write().expect("revision lock") = Some(revision);
            state.catalogs.clear();
            tracing::info!(commit = %commit, "serving a new revision");
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
                synced_unix_ms: now_unix_ms(),
            };
            tokio::task::spawn_blocking(move || store.put_revision(&record)).await??;
            tracing::warn!(commit = %commit, problems = errors.len(), "refused a commit that does not validate; the last good revision stays");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A server TLS config and a client config holding the admin
    /// credential, both from a fresh CA.
    fn tls_pair() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = CertificateAuthority::create("test").unwrap();
        let server = ca
            .issue_server_certificate(&["localhost".into()], &[])
            .unwrap();
        let chain = format!("{}{}", server.certificate_pem, ca.certificate_pem());
        let server_config =
            grpc_tls_config(&chain, &server.private_key_pem, ca.certificate_pem()).unwrap();
        let admin = ca.issue_admin_certificate().unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.certificate_pem().as_bytes()).unwrap())
            .unwrap();
        let client_config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(admin.certificate_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(admin.private_key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        (server_config, Arc::new(client_config))
    }

    /// `accept_connections` on a fresh port, with the channels it hands
    /// gRPC and watch connections to.
    struct Acceptor {
        address: std::net::SocketAddr,
        grpc: mpsc::Receiver<GrpcConnection>,
        watch: mpsc::Receiver<Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>,
        stop: tokio::sync::watch::Sender<bool>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    }

    impl Acceptor {
        async fn start(server_config: Arc<rustls::ServerConfig>) -> Acceptor {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let (grpc_sender, grpc) = mpsc::channel(MAX_GRPC_CONNECTIONS + 8);
            let (watch_sender, watch) = mpsc::channel(8);
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(accept_connections(
                listener,
                server_config,
                Accepted {
                    grpc: grpc_sender,
                    watch: watch_sender,
                },
                stopped,
            ));
            Acceptor {
                address,
                grpc,
                watch,
                stop,
                task,
            }
        }

        async fn stop(self) {
            self.stop.send(true).unwrap();
            self.task.await.unwrap().unwrap();
        }
    }

    fn with_alpn(config: &Arc<rustls::ClientConfig>, protocol: &[u8]) -> Arc<rustls::ClientConfig> {
        let mut config = (**config).clone();
        config.alpn_protocols = vec![protocol.to_vec()];
        Arc::new(config)
    }

    async fn tls_connect(
        address: std::net::SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect("localhost".try_into().unwrap(), stream)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_handshake_limit_do_not_hold_up_a_client() {
        let (server_config, client_config) = tls_pair();
        let mut acceptor = Acceptor::start(server_config).await;
        let address = acceptor.address;
        // More silent connections than there are handshake permits.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONCURRENT_HANDSHAKES + 16 {
            idle.push(tokio::net::TcpStream::connect(address).await.unwrap());
        }
        let client = tokio::spawn(tls_connect(address, with_alpn(&client_config, b"h2")));
        // Well within HANDSHAKE_TIMEOUT: the idle sockets hold no permit.
        let served = tokio::time::timeout(HANDSHAKE_TIMEOUT / 2, acceptor.grpc.recv())
            .await
            .expect("the handshake waited for the idle connections")
            .expect("a connection");
        let certificates = served.stream.get_ref().1.peer_certificates().unwrap();
        let (identity, _) = crate::pki::peer_identity(&certificates[0]).unwrap();
        assert_eq!(identity, crate::pki::PeerIdentity::Admin);
        client.await.unwrap();
        drop(idle);
        acceptor.stop().await;
    }

    #[tokio::test]
    async fn a_client_offering_the_watch_protocol_is_handed_to_the_watch_side() {
        let (server_config, client_config) = tls_pair();
        let mut acceptor = Acceptor::start(server_config).await;
        let client = tls_connect(
            acceptor.address,
            with_alpn(&client_config, cms_proto::watch::ALPN),
        )
        .await;
        assert_eq!(
            client.get_ref().1.alpn_protocol(),
            Some(cms_proto::watch::ALPN)
        );
        let watch = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.watch.recv())
            .await
            .expect("the watch connection arrived")
            .expect("a connection");
        assert_eq!(
            watch.get_ref().1.alpn_protocol(),
            Some(cms_proto::watch::ALPN)
        );
        assert!(acceptor.grpc.try_recv().is_err());
        let _grpc = tls_connect(acceptor.address, with_alpn(&client_config, b"h2")).await;
        let grpc = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.grpc.recv())
            .await
            .expect("the gRPC connection arrived")
            .expect("a connection");
        assert_eq!(grpc.stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        assert!(acceptor.watch.try_recv().is_err());
        acceptor.stop().await;
    }

    #[tokio::test]
    async fn a_grpc_connection_beyond_the_limit_waits_until_one_closes_while_watches_do_not() {
        let (server_config, client_config) = tls_pair();
        let mut acceptor = Acceptor::start(server_config).await;
        let h2 = with_alpn(&client_config, b"h2");
        let mut clients = Vec::new();
        let mut held = Vec::new();
        for _ in 0..MAX_GRPC_CONNECTIONS {
            clients.push(tls_connect(acceptor.address, h2.clone()).await);
            held.push(acceptor.grpc.recv().await.expect("a connection"));
        }
        // One more: accepted by the kernel, but its handshake waits.
        let (address, late_config) = (acceptor.address, h2.clone());
        let late = tokio::spawn(async move { tls_connect(address, late_config).await });
        // A watch channel is not held up by the gRPC connections.
        let _watcher = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tls_connect(
                acceptor.address,
                with_alpn(&client_config, cms_proto::watch::ALPN),
            ),
        )
        .await
        .expect("the watch handshake did not wait for a gRPC place");
        acceptor.watch.recv().await.expect("the watch connection");
        assert!(
            tokio::time::timeout(Duration::from_millis(300), acceptor.grpc.recv())
                .await
                .is_err(),
            "a connection beyond MAX_GRPC_CONNECTIONS was handed over"
        );
        // A connection closes: the one waiting takes its place.
        drop(held.pop());
        let served = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.grpc.recv())
            .await
            .expect("the waiting connection was served once a place was free")
            .expect("a connection");
        assert_eq!(served.stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        late.await.unwrap();
        drop(clients);
        acceptor.stop().await;
    }
}
