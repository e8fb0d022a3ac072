//! The gRPC port's listener: TLS (the server's acceptor, the CA as the
//! only root for client certificates), the accept loop that bounds the
//! handshakes in progress (`MAX_CONCURRENT_HANDSHAKES`) and the gRPC
//! connections open (`MAX_GRPC_CONNECTIONS`), and the split by ALPN
//! between gRPC and the watch channel, which share the port. Also the HTTP
//! port's TLS configuration.
//!
//! TLS is done here rather than by tonic, so that both bounds hold, and so
//! that the watch channel can take a connection's keys over.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::pki::{CertificateAuthority, Credential};

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
/// `auth::identify`), and HTTP/2 or the watch channel (`watch`), which takes
/// the connection's keys over after the handshake.
pub fn grpc_tls_config(
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
    // certificate, which `auth::identify` checks on every call as on a
    // full handshake, its validity period included.
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().context("Failed to set up TLS session tickets")?;
    Ok(Arc::new(config))
}

/// The gRPC port's TLS with `server`, a certificate `ca` issued to the
/// server: its chain ends with the CA, so an enrolling agent sees the CA
/// and can check its fingerprint against its token.
pub fn grpc_tls_from_ca(
    ca: &CertificateAuthority,
    server: &Credential,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let chain = format!("{}{}", server.certificate_pem, ca.certificate_pem());
    grpc_tls_config(&chain, &server.private_key_pem, ca.certificate_pem())
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
pub struct Accepted {
    pub grpc: mpsc::Sender<GrpcConnection>,
    pub watch: mpsc::Sender<Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>>,
}

/// Accepts connections on the gRPC port until shutdown. Each waits (without
/// a permit) for its ClientHello, which says whether it asks for the watch
/// channel or gRPC; a gRPC connection then waits for one of the
/// `MAX_GRPC_CONNECTIONS`, which it holds until it closes. Then it waits
/// for one of the `MAX_CONCURRENT_HANDSHAKES`, in order of arrival, and is
/// handed over once its handshake is done. Waiting costs a socket and a
/// small task, so a boot storm queues instead of being refused. A failed or
/// timed-out handshake drops its connection, as tonic's own TLS did.
pub async fn accept_connections(
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
pub struct GrpcConnection {
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
pub fn http_tls_config(
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
        assert_eq!(
            identity,
            crate::pki::PeerIdentity::Operator(crate::pki::BOOTSTRAP_OPERATOR.into())
        );
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
