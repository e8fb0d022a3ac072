//! The gRPC port's listener: TLS (the server's acceptor, the CA as the
//! only root for client certificates), the accept loop and its bounds
//! ([`ConnectionLimits`]), and the split by ALPN between gRPC and the watch
//! channel, which share the port. Also the HTTP port's TLS configuration.
//!
//! TLS is done here rather than by tonic, so that the bounds hold, so that
//! a connection is placed by whether it presented a client certificate, and
//! so that the watch channel can take a connection's keys over.
//!
//! A connection's way: accepted at once (unless its source address already
//! has `per_source_pending` connections on their way), it waits without a
//! place for its ClientHello (`client_hello_timeout`), then for one of the
//! `max_connections` places and one of the `max_handshakes`, each wait
//! bounded by `place_wait`, and does its handshake (`handshake_timeout`).
//! With a client certificate it keeps its place, open until
//! `max_connection_age` (then closed gracefully by tonic) and at the latest
//! `connection_age_grace` later (closed, whatever is in progress; the admin
//! credential's connections are exempt, a trigger streams its progress for
//! as long as it runs). Without one (enrollment, or anyone on the network)
//! it gives its place up and takes one of the `max_unauthenticated` places
//! (at most `per_source_unauthenticated` per source address, and at most
//! `max_unauthenticated_waiting` waiting for one): it must send its first
//! request within `unauthenticated_first_request` and is closed after
//! `unauthenticated_lifetime`. So a client without a certificate holds a
//! place of the agents and the admin only for the length of a handshake.

use std::collections::HashMap;
use std::future::Future as _;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::pki::{CertificateAuthority, Credential, PeerIdentity};

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
/// its turn): a client that stalls mid-handshake gives its place up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bounds of the gRPC port's connections; `serve`'s flags set them
/// (`docs/server.md` lists them), [`ConnectionLimits::default`] is what
/// they default to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// gRPC connections open or in their handshake at once
    /// (`MAX_GRPC_CONNECTIONS`).
    pub max_connections: usize,
    /// Handshakes in progress at once (`MAX_CONCURRENT_HANDSHAKES`).
    pub max_handshakes: usize,
    /// Connections without a client certificate open at once, apart from
    /// the others: enrollments take a connection for one call.
    pub max_unauthenticated: usize,
    /// Connections without a client certificate waiting for one of the
    /// `max_unauthenticated` places; beyond, they are closed at once.
    pub max_unauthenticated_waiting: usize,
    /// Connections from one source address (an IPv6 /64) that have not
    /// finished their handshake (waiting for their ClientHello, a place,
    /// or in their handshake); beyond, a new one is closed at once.
    pub per_source_pending: usize,
    /// Connections without a client certificate from one source address,
    /// open or waiting for a place; beyond, closed after the handshake.
    pub per_source_unauthenticated: usize,
    /// How long a connection may take to send its whole ClientHello.
    pub client_hello_timeout: Duration,
    /// How long a handshake may take once started (`HANDSHAKE_TIMEOUT`).
    pub handshake_timeout: Duration,
    /// How long a connection may wait for each place (a connection, a
    /// handshake, an unauthenticated one) before it is closed.
    pub place_wait: Duration,
    /// How long a connection without a client certificate may take to
    /// send its first request (HTTP/2 headers).
    pub unauthenticated_first_request: Duration,
    /// How long a connection without a client certificate stays open.
    pub unauthenticated_lifetime: Duration,
    /// When a connection with a client certificate is closed gracefully
    /// (`MAX_CONNECTION_AGE`).
    pub max_connection_age: Duration,
    /// How long after `max_connection_age` a node's connection is closed
    /// whatever is in progress.
    pub connection_age_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: MAX_GRPC_CONNECTIONS,
            max_handshakes: MAX_CONCURRENT_HANDSHAKES,
            max_unauthenticated: 32,
            // A boot storm of 10,000 instances enrolling at once waits
            // here after its handshakes, a few tens of KB of TLS state
            // each (cms-storm: 4,096 turned a third of such a storm away);
            // beyond, a flood from many addresses (at most
            // `per_source_unauthenticated` each) is closed rather than held.
            // Waiting holds no place of the agents or the admin.
            max_unauthenticated_waiting: 16_384,
            per_source_pending: 16,
            per_source_unauthenticated: 4,
            client_hello_timeout: Duration::from_secs(10),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            // A boot storm of 10,000 queues its last connections for about
            // 30 s on two cores (docs/BENCHMARKS.md): well above that.
            place_wait: Duration::from_secs(120),
            unauthenticated_first_request: Duration::from_secs(5),
            unauthenticated_lifetime: Duration::from_secs(30),
            max_connection_age: MAX_CONNECTION_AGE,
            connection_age_grace: Duration::from_secs(300),
        }
    }
}

impl ConnectionLimits {
    /// Refuses limits that would stop the port from serving anyone.
    pub fn check(&self) -> Result<(), String> {
        let counts = [
            ("max connections", self.max_connections),
            ("max handshakes", self.max_handshakes),
            ("max unauthenticated connections", self.max_unauthenticated),
            ("per-source pending connections", self.per_source_pending),
            (
                "per-source unauthenticated connections",
                self.per_source_unauthenticated,
            ),
        ];
        for (name, count) in counts {
            if count == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        let times = [
            ("the ClientHello timeout", self.client_hello_timeout),
            ("the handshake timeout", self.handshake_timeout),
            ("the wait for a place", self.place_wait),
            (
                "the unauthenticated first-request deadline",
                self.unauthenticated_first_request,
            ),
            (
                "the unauthenticated lifetime",
                self.unauthenticated_lifetime,
            ),
            ("the connection age", self.max_connection_age),
        ];
        for (name, time) in times {
            if time.is_zero() {
                return Err(format!("{name} must be longer than 0 s"));
            }
        }
        Ok(())
    }
}

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

/// Who a verified client certificate (its DER) names, if the server
/// accepts it now (`auth::identify` against the store, in the server): a
/// certificate refused (revoked, or of a removed node) is placed as none.
pub type Identify = Arc<dyn Fn(&[u8]) -> Option<PeerIdentity> + Send + Sync>;

/// The places connections wait for, and how many each source holds.
struct Places {
    limits: ConnectionLimits,
    identify: Identify,
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    unauthenticated: Arc<Semaphore>,
    unauthenticated_waiting: Arc<Semaphore>,
    sources: Arc<Sources>,
}

/// Accepts connections on the gRPC port until shutdown, each placed as the
/// module's documentation tells. Waiting for a place costs a socket and a
/// small task, so a boot storm queues instead of being refused; a wait, a
/// ClientHello or a handshake that takes too long, a source over its
/// limits, or a failed handshake drops the connection.
pub async fn accept_connections(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    limits: ConnectionLimits,
    identify: Identify,
    accepted: Accepted,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let places = Arc::new(Places {
        connections: Arc::new(Semaphore::new(limits.max_connections)),
        handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
        unauthenticated: Arc::new(Semaphore::new(limits.max_unauthenticated)),
        unauthenticated_waiting: Arc::new(Semaphore::new(limits.max_unauthenticated_waiting)),
        sources: Arc::new(Sources::default()),
        limits,
        identify,
    });
    let accepted = Arc::new(accepted);
    let mut handshakes = tokio::task::JoinSet::new();
    loop {
        let connection = tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            connection = listener.accept() => connection,
        };
        let (stream, peer) = match connection {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, or a connection reset before it was
                // accepted: wait a little and go on.
                tracing::debug!("accepting a connection failed: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let source = source_of(peer.ip());
        let Some(pending) =
            places
                .sources
                .enter(source, Count::Pending, places.limits.per_source_pending)
        else {
            tracing::debug!(%source, "a connection was refused: its source has too many on their way");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, places, accepted) = (acceptor.clone(), places.clone(), accepted.clone());
        handshakes.spawn(async move {
            if let Err(reason) = place(stream, source, &acceptor, &places, &accepted).await {
                tracing::debug!(%source, "a connection was dropped: {reason}");
            }
            drop(pending);
        });
    }
}

/// One connection's way from its ClientHello to its hand-over (see the
/// module's documentation); why it was dropped otherwise.
async fn place(
    stream: tokio::net::TcpStream,
    source: IpAddr,
    acceptor: &tokio_rustls::TlsAcceptor,
    places: &Places,
    accepted: &Accepted,
) -> Result<(), &'static str> {
    let limits = &places.limits;
    // A connection that has sent nothing yet waits without a place, so
    // idle sockets cannot hold the others up.
    let watch = asks_for_watch(&stream, limits.client_hello_timeout)
        .await
        .ok_or("no ClientHello in time")?;
    let deadline = tokio::time::Instant::now() + limits.place_wait;
    let connection_place = if watch {
        None
    } else {
        Some(wait_for(&places.connections, deadline).await?)
    };
    let handshake_place = wait_for(&places.handshakes, deadline).await?;
    // Boxed: inline, the handshake's state (a whole rustls connection)
    // would size every waiting connection's task; and boxed after it, for
    // the same reason, while it waits to be handed over.
    let handshake =
        tokio::time::timeout(limits.handshake_timeout, Box::pin(acceptor.accept(stream))).await;
    drop(handshake_place);
    let connection = Box::new(
        handshake
            .map_err(|_| "the handshake timed out")?
            .map_err(|_| "the handshake failed")?,
    );
    let Some(connection_place) = connection_place else {
        let _ = accepted.watch.send(connection).await;
        return Ok(());
    };
    let identity = connection
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| (places.identify)(leaf));
    let opened = tokio::time::Instant::now();
    let grpc = match identity {
        Some(PeerIdentity::Operator(_)) => GrpcConnection::new(connection, connection_place, None),
        Some(PeerIdentity::Node(_)) => GrpcConnection::new(
            connection,
            connection_place,
            Some(opened + limits.max_connection_age + limits.connection_age_grace),
        ),
        None => {
            // Without a certificate the server accepts (none, a revoked
            // one, one of a removed node): the place of the agents and the
            // admin is given up before waiting for one of its own.
            drop(connection_place);
            let per_source = places
                .sources
                .enter(
                    source,
                    Count::Unauthenticated,
                    limits.per_source_unauthenticated,
                )
                .ok_or("its source has too many connections without a certificate")?;
            let waiting = places
                .unauthenticated_waiting
                .clone()
                .try_acquire_owned()
                .map_err(|_| "too many connections without a certificate wait")?;
            let deadline = tokio::time::Instant::now() + limits.place_wait;
            let place = wait_for(&places.unauthenticated, deadline).await?;
            drop(waiting);
            let now = tokio::time::Instant::now();
            let mut grpc = GrpcConnection::new(
                connection,
                place,
                Some(now + limits.unauthenticated_lifetime),
            );
            grpc.first_request = Some(Box::new(FirstRequest {
                deadline: Box::pin(tokio::time::sleep_until(
                    now + limits.unauthenticated_first_request,
                )),
                frames: H2Frames::default(),
            }));
            grpc._source = Some(per_source);
            grpc
        }
    };
    let _ = accepted.grpc.send(grpc).await;
    Ok(())
}

/// A place of `places`, waited for until `deadline`.
async fn wait_for(
    places: &Arc<Semaphore>,
    deadline: tokio::time::Instant,
) -> Result<OwnedSemaphorePermit, &'static str> {
    match tokio::time::timeout_at(deadline, places.clone().acquire_owned()).await {
        Ok(Ok(place)) => Ok(place),
        Ok(Err(_)) => Err("the server is stopping"),
        Err(_) => Err("it waited too long for a place"),
    }
}

/// What a source address's connections are counted as.
#[derive(Debug, Clone, Copy)]
enum Count {
    Pending = 0,
    Unauthenticated = 1,
}

/// How many connections each source address has on their way and without
/// a certificate; an address is forgotten when it has none.
#[derive(Debug, Default)]
struct Sources {
    counts: Mutex<HashMap<IpAddr, [usize; 2]>>,
}

impl Sources {
    /// Counts one more connection of `source` as `count`, unless it has
    /// `limit` already.
    fn enter(self: &Arc<Self>, source: IpAddr, count: Count, limit: usize) -> Option<SourceCount> {
        let mut counts = self.counts.lock().expect("sources lock");
        let entry = counts.entry(source).or_default();
        if entry[count as usize] >= limit {
            if *entry == [0, 0] {
                counts.remove(&source);
            }
            return None;
        }
        entry[count as usize] += 1;
        Some(SourceCount {
            sources: self.clone(),
            source,
            count,
        })
    }
}

/// One connection counted for its source; uncounted when dropped.
#[derive(Debug)]
struct SourceCount {
    sources: Arc<Sources>,
    source: IpAddr,
    count: Count,
}

impl Drop for SourceCount {
    fn drop(&mut self) {
        let mut counts = self.sources.counts.lock().expect("sources lock");
        if let Some(entry) = counts.get_mut(&self.source) {
            entry[self.count as usize] -= 1;
            if *entry == [0, 0] {
                counts.remove(&self.source);
            }
        }
    }
}

/// The address a connection is counted under: an IPv4 address (also one
/// mapped into IPv6) as it is, an IPv6 address by its /64, the smallest
/// block a site is given.
fn source_of(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// Whether a connection's ClientHello offers the watch channel's ALPN
/// protocol, read with `peek`, so that the handshake reads it again; `None`
/// when the whole ClientHello has not arrived within `timeout` or the peer
/// closes. A ClientHello that does not parse goes to the gRPC side, whose
/// handshake fails with the proper alert.
async fn asks_for_watch(stream: &tokio::net::TcpStream, timeout: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + timeout;
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

/// A gRPC connection, its place (given back when tonic drops the
/// connection), and when it must end: reading or writing after `ends`, or
/// reading with no request read yet once `first_request` has passed,
/// fails, and tonic closes the connection.
pub struct GrpcConnection {
    stream: Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
    _place: OwnedSemaphorePermit,
    _source: Option<SourceCount>,
    ends: Option<Pin<Box<tokio::time::Sleep>>>,
    first_request: Option<Box<FirstRequest>>,
}

/// The deadline of a connection's first request, and the frames read so
/// far.
struct FirstRequest {
    deadline: Pin<Box<tokio::time::Sleep>>,
    frames: H2Frames,
}

impl GrpcConnection {
    fn new(
        stream: Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        place: OwnedSemaphorePermit,
        ends: Option<tokio::time::Instant>,
    ) -> GrpcConnection {
        GrpcConnection {
            stream,
            _place: place,
            _source: None,
            ends: ends.map(|at| Box::pin(tokio::time::sleep_until(at))),
            first_request: None,
        }
    }

    /// Whether the connection has reached the end of its life; registers
    /// the waker with that deadline otherwise, so that a connection idle in
    /// a read is woken to fail.
    fn ended(&mut self, cx: &mut std::task::Context<'_>) -> Option<std::io::Error> {
        let ends = self.ends.as_mut()?;
        ends.as_mut().poll(cx).is_ready().then(|| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the connection reached the end of its life",
            )
        })
    }
}

/// Where a client's HTTP/2 stream stands, read as it arrives: the preface,
/// then frames; enough to tell when the first request (a HEADERS frame)
/// begins. The frames' contents are hyper's business.
#[derive(Debug)]
struct H2Frames {
    /// Bytes still to pass over: the rest of the preface, or of a frame's
    /// payload.
    skip: usize,
    header: [u8; 9],
    header_len: usize,
}

impl Default for H2Frames {
    fn default() -> H2Frames {
        H2Frames {
            // "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            skip: 24,
            header: [0; 9],
            header_len: 0,
        }
    }
}

impl H2Frames {
    /// Reads `bytes`; true once a HEADERS frame has begun.
    fn read(&mut self, mut bytes: &[u8]) -> bool {
        const HEADERS: u8 = 0x1;
        while !bytes.is_empty() {
            if self.skip > 0 {
                let passed = self.skip.min(bytes.len());
                self.skip -= passed;
                bytes = &bytes[passed..];
                continue;
            }
            let taken = (9 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + taken].copy_from_slice(&bytes[..taken]);
            self.header_len += taken;
            bytes = &bytes[taken..];
            if self.header_len == 9 {
                if self.header[3] == HEADERS {
                    return true;
                }
                self.header_len = 0;
                self.skip = usize::from(self.header[0]) << 16
                    | usize::from(self.header[1]) << 8
                    | usize::from(self.header[2]);
            }
        }
        false
    }
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
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let Some(error) = this.ended(cx) {
            return Poll::Ready(Err(error));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut *this.stream).poll_read(cx, buf);
        // What has arrived is read before the deadline is looked at: a
        // request sent in time counts however late the server reads it.
        if let Some(first) = &mut this.first_request {
            if matches!(read, Poll::Ready(Ok(()))) && first.frames.read(&buf.filled()[before..]) {
                this.first_request = None;
            } else if first.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no request arrived in time",
                )));
            }
        }
        read
    }
}

impl tokio::io::AsyncWrite for GrpcConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(error) = self.ended(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut *self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(error) = self.ended(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut *self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.stream).poll_shutdown(cx)
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
            Acceptor::start_with(server_config, ConnectionLimits::default()).await
        }

        async fn start_with(
            server_config: Arc<rustls::ServerConfig>,
            limits: ConnectionLimits,
        ) -> Acceptor {
            let identify: Identify = Arc::new(|leaf: &[u8]| {
                crate::pki::peer_identity(leaf)
                    .ok()
                    .map(|(identity, _)| identity)
            });
            Acceptor::start_identifying(server_config, limits, identify).await
        }

        /// With `identify` standing for the store's check.
        async fn start_identifying(
            server_config: Arc<rustls::ServerConfig>,
            limits: ConnectionLimits,
            identify: Identify,
        ) -> Acceptor {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let (grpc_sender, grpc) = mpsc::channel(MAX_GRPC_CONNECTIONS + 8);
            let (watch_sender, watch) = mpsc::channel(8);
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(accept_connections(
                listener,
                server_config,
                limits,
                identify,
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

    /// A TCP connection to `server` from the loopback address `local`.
    async fn connect_from(
        local: IpAddr,
        server: std::net::SocketAddr,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        socket.connect(server).await
    }

    /// The `i`th address of 127.0.`block`.1 and on.
    fn loopback(block: u8, i: usize) -> IpAddr {
        IpAddr::from([127, 0, block + (i / 250) as u8, (i % 250 + 1) as u8])
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
        // More silent connections than there are handshake permits, each
        // from its own address.
        let mut idle = Vec::new();
        for i in 0..MAX_CONCURRENT_HANDSHAKES + 16 {
            idle.push(connect_from(loopback(5, i), address).await.unwrap());
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

    /// A client that presents no certificate.
    #[derive(Debug)]
    struct NoCertificate;

    impl rustls::client::ResolvesClientCert for NoCertificate {
        fn resolve(
            &self,
            _: &[&[u8]],
            _: &[rustls::SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            None
        }

        fn has_certs(&self) -> bool {
            false
        }
    }

    /// `client_config` without its client certificate, offering `h2`.
    fn anonymous(client_config: &Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
        let mut config = (**client_config).clone();
        config.client_auth_cert_resolver = Arc::new(NoCertificate);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// Reads from a served connection until it fails or ends; the error.
    async fn read_until_closed(mut connection: GrpcConnection) -> std::io::ErrorKind {
        use tokio::io::AsyncReadExt as _;
        let mut buffer = [0u8; 1024];
        loop {
            match connection.read(&mut buffer).await {
                Ok(0) => return std::io::ErrorKind::UnexpectedEof,
                Ok(_) => {}
                Err(error) => return error.kind(),
            }
        }
    }

    #[test]
    fn the_first_headers_frame_is_found_however_the_bytes_arrive() {
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS with one setting, WINDOW_UPDATE, then HEADERS.
        stream.extend([0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100]);
        stream.extend([0, 0, 4, 0x8, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
        let before_headers = stream.len();
        stream.extend([0, 0, 3, 0x1, 0x4, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
        let mut whole = H2Frames::default();
        assert!(!whole.read(&stream[..before_headers]));
        assert!(whole.read(&stream[before_headers..]));
        for split in [1, 2, 5, 9, 24, 25] {
            let mut frames = H2Frames::default();
            let found = stream
                .chunks(split)
                .enumerate()
                .find(|(_, chunk)| frames.read(chunk))
                .map(|(i, _)| i);
            assert_eq!(found, Some((before_headers + 9 - 1) / split), "{split}");
        }
        // A preface and settings, and nothing more, are no request.
        let mut idle = H2Frames::default();
        assert!(!idle.read(&stream[..before_headers]));
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_bit_prefix() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let same_site: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_of(one), source_of(same_site));
        assert_ne!(source_of(one), source_of(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_of(mapped), IpAddr::from([192, 0, 2, 7]));
    }

    #[tokio::test]
    async fn a_connection_without_a_certificate_that_sends_no_request_is_closed_at_its_deadline() {
        let (server_config, client_config) = tls_pair();
        let limits = ConnectionLimits {
            unauthenticated_first_request: Duration::from_millis(300),
            ..ConnectionLimits::default()
        };
        let mut acceptor = Acceptor::start_with(server_config, limits).await;
        let _client = tls_connect(acceptor.address, anonymous(&client_config)).await;
        let served = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.grpc.recv())
            .await
            .expect("the connection was handed over")
            .expect("a connection");
        let closed = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_until_closed(served))
            .await
            .expect("the silent connection was not closed at its deadline");
        assert_eq!(closed, std::io::ErrorKind::TimedOut);
        acceptor.stop().await;
    }

    #[tokio::test]
    async fn a_connection_without_a_certificate_that_asks_in_time_lives_until_its_lifetime() {
        use tokio::io::AsyncWriteExt as _;
        let (server_config, client_config) = tls_pair();
        let limits = ConnectionLimits {
            unauthenticated_first_request: Duration::from_millis(200),
            unauthenticated_lifetime: Duration::from_millis(1500),
            ..ConnectionLimits::default()
        };
        let mut acceptor = Acceptor::start_with(server_config, limits).await;
        let mut client = tls_connect(acceptor.address, anonymous(&client_config)).await;
        let mut request = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        request.extend([0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        request.extend([0, 0, 1, 0x1, 0x4, 0, 0, 0, 1, 0x82]);
        client.write_all(&request).await.unwrap();
        client.flush().await.unwrap();
        let served = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.grpc.recv())
            .await
            .expect("the connection was handed over")
            .expect("a connection");
        let started = tokio::time::Instant::now();
        let closed = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_until_closed(served))
            .await
            .expect("the connection outlived its lifetime");
        assert_eq!(closed, std::io::ErrorKind::TimedOut);
        // Past the first-request deadline: the request counted.
        assert!(started.elapsed() >= Duration::from_millis(900));
        acceptor.stop().await;
    }

    #[tokio::test]
    async fn connections_without_a_certificate_take_no_place_of_the_authenticated() {
        let (server_config, client_config) = tls_pair();
        let limits = ConnectionLimits {
            max_connections: 2,
            max_unauthenticated: 1,
            ..ConnectionLimits::default()
        };
        let mut acceptor = Acceptor::start_with(server_config, limits).await;
        // Four silent clients without a certificate, from four addresses:
        // one holds the unauthenticated place, three wait for it.
        let mut anonymous_clients = Vec::new();
        for i in 0..4 {
            let tcp = connect_from(loopback(6, i), acceptor.address)
                .await
                .unwrap();
            anonymous_clients.push(
                tokio_rustls::TlsConnector::from(anonymous(&client_config))
                    .connect("localhost".try_into().unwrap(), tcp)
                    .await
                    .unwrap(),
            );
        }
        let unauthenticated = acceptor.grpc.recv().await.expect("one was handed over");
        // Both places of the authenticated are free.
        let h2 = with_alpn(&client_config, b"h2");
        let mut admins = Vec::new();
        for _ in 0..2 {
            admins.push(
                tokio::time::timeout(HANDSHAKE_TIMEOUT, tls_connect(acceptor.address, h2.clone()))
                    .await
                    .expect("an admin connection waited behind clients without a certificate"),
            );
            let served = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.grpc.recv())
                .await
                .expect("the admin connection was handed over")
                .expect("a connection");
            assert!(served.ends.is_none(), "the admin's connection has no end");
        }
        drop(unauthenticated);
        drop(anonymous_clients);
        acceptor.stop().await;
    }

    #[tokio::test]
    async fn a_source_over_its_limit_of_pending_connections_is_closed_at_once() {
        use tokio::io::AsyncReadExt as _;
        let (server_config, client_config) = tls_pair();
        let limits = ConnectionLimits {
            per_source_pending: 2,
            ..ConnectionLimits::default()
        };
        let mut acceptor = Acceptor::start_with(server_config, limits).await;
        let busy = loopback(7, 0);
        let _silent = [
            connect_from(busy, acceptor.address).await.unwrap(),
            connect_from(busy, acceptor.address).await.unwrap(),
        ];
        let mut third = connect_from(busy, acceptor.address).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(HANDSHAKE_TIMEOUT, third.read(&mut byte))
            .await
            .expect("the connection over the limit was not closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        // Another source is served.
        let tcp = connect_from(loopback(7, 1), acceptor.address)
            .await
            .unwrap();
        tokio_rustls::TlsConnector::from(with_alpn(&client_config, b"h2"))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.grpc.recv())
            .await
            .expect("the other source's connection was handed over")
            .expect("a connection");
        acceptor.stop().await;
    }

    #[tokio::test]
    async fn a_wait_for_a_place_ends_at_its_deadline() {
        let (server_config, client_config) = tls_pair();
        let limits = ConnectionLimits {
            max_connections: 1,
            place_wait: Duration::from_millis(300),
            ..ConnectionLimits::default()
        };
        let mut acceptor = Acceptor::start_with(server_config, limits).await;
        let h2 = with_alpn(&client_config, b"h2");
        let _first = tls_connect(acceptor.address, h2.clone()).await;
        let _held = acceptor.grpc.recv().await.expect("the first connection");
        let tcp = tokio::net::TcpStream::connect(acceptor.address)
            .await
            .unwrap();
        let second = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsConnector::from(h2).connect("localhost".try_into().unwrap(), tcp),
        )
        .await
        .expect("the wait for a place did not end");
        assert!(second.is_err(), "the connection beyond the place got one");
        acceptor.stop().await;
    }

    #[tokio::test]
    async fn a_nodes_connection_is_closed_after_its_age_and_grace() {
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
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "web-1");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let node = ca
            .sign_node_csr(&csr, "web-1", Duration::from_secs(3600))
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.certificate_pem().as_bytes()).unwrap())
            .unwrap();
        let mut client_config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(node.certificate_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        client_config.alpn_protocols = vec![b"h2".to_vec()];
        let limits = ConnectionLimits {
            max_connection_age: Duration::from_millis(300),
            connection_age_grace: Duration::from_millis(300),
            ..ConnectionLimits::default()
        };
        let mut acceptor = Acceptor::start_with(server_config, limits).await;
        let _client = tls_connect(acceptor.address, Arc::new(client_config)).await;
        let served = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.grpc.recv())
            .await
            .expect("the node's connection was handed over")
            .expect("a connection");
        assert!(served.first_request.is_none());
        let closed = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_until_closed(served))
            .await
            .expect("the node's connection outlived its age and grace");
        assert_eq!(closed, std::io::ErrorKind::TimedOut);
        acceptor.stop().await;
    }

    #[tokio::test]
    async fn a_certificate_the_store_refuses_is_placed_as_no_certificate() {
        let (server_config, client_config) = tls_pair();
        let limits = ConnectionLimits {
            max_connections: 1,
            ..ConnectionLimits::default()
        };
        // The store refuses every certificate (a revoked one, say).
        let refuses_all: Identify = Arc::new(|_: &[u8]| None);
        let mut acceptor = Acceptor::start_identifying(server_config, limits, refuses_all).await;
        let h2 = with_alpn(&client_config, b"h2");
        let _revoked = tls_connect(acceptor.address, h2.clone()).await;
        let served = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.grpc.recv())
            .await
            .expect("the connection was handed over")
            .expect("a connection");
        assert!(served.first_request.is_some(), "placed as authenticated");
        // It holds no place of the authenticated: the only one is free.
        let tcp = tokio::net::TcpStream::connect(acceptor.address)
            .await
            .unwrap();
        tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            tokio_rustls::TlsConnector::from(h2).connect("localhost".try_into().unwrap(), tcp),
        )
        .await
        .expect("the next connection waited for the refused one's place")
        .unwrap();
        acceptor.stop().await;
    }

    #[test]
    fn limits_that_would_serve_no_one_are_refused() {
        assert_eq!(ConnectionLimits::default().check(), Ok(()));
        let none = ConnectionLimits {
            max_unauthenticated: 0,
            ..ConnectionLimits::default()
        };
        assert!(none.check().unwrap_err().contains("unauthenticated"));
        let instant = ConnectionLimits {
            place_wait: Duration::ZERO,
            ..ConnectionLimits::default()
        };
        assert!(instant.check().unwrap_err().contains("wait for a place"));
    }
}
