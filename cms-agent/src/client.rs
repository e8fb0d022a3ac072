//! Talking to the server: trusting it the first time, enrolling, pulling
//! the catalog, and delivering reports.
//!
//! Before enrollment the agent has no CA to trust. The enrollment token
//! carries the sha256 of the server CA's certificate (`SECRET.FINGERPRINT`),
//! and the server sends its CA in its TLS chain: the agent trusts a chain
//! only when its CA has that fingerprint and the server certificate verifies
//! against it ([`fetch_pinned_ca`]). From then on every call is mTLS with
//! the certificate enrollment gave it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use cms_proto::v1 as pb;
use cms_roles::digest::sha256_hex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::identity::Identity;

/// How long to wait for the server to answer a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may wait for its TLS handshake once the server
/// has accepted it. A busy server queues connections before their handshake
/// rather than refusing them (10,000 instances booting at once waited up to
/// 20 s on two cores), so this is long; a server that is down fails the
/// TCP connect within `CONNECT_TIMEOUT` instead.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(120);

/// `host:port` and the TLS name to expect, from `--server`.
#[derive(Debug, Clone)]
pub struct ServerAddress {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// The local address to connect from; `None` lets the system choose.
    /// A simulated fleet on one host (`cms-storm`) gives each agent its own
    /// loopback address, as each instance has its own: with thousands of
    /// connections from one address to one port, the kernel's search for a
    /// free source port costs more than the TLS handshake.
    pub local_address: Option<std::net::IpAddr>,
}

impl ServerAddress {
    pub fn parse(server: &str) -> anyhow::Result<ServerAddress> {
        let without_scheme = server
            .strip_prefix("https://")
            .unwrap_or(server)
            .trim_end_matches('/');
        let (host, port) = match without_scheme.rsplit_once(':') {
            Some((host, port)) => (
                host.to_string(),
                port.parse::<u16>()
                    .with_context(|| format!("Failed to parse the port of {server}"))?,
            ),
            None => (without_scheme.to_string(), 7470),
        };
        if host.is_empty() {
            bail!("Failed to parse the server address `{server}`: expected host:port");
        }
        Ok(ServerAddress {
            url: format!("https://{host}:{port}"),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            local_address: None,
        })
    }
}

/// Splits a token into its secret and the CA fingerprint it pins.
pub fn split_token(token: &str) -> anyhow::Result<(&str, &str)> {
    match token.trim().rsplit_once('.') {
        Some((secret, fingerprint))
            if fingerprint.len() == 64 && fingerprint.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            Ok((secret, fingerprint))
        }
        _ => bail!(
            "Failed to read the enrollment token: expected SECRET.FINGERPRINT as `cms-server token create` prints it"
        ),
    }
}

/// Connects once with TLS and returns the server's CA certificate (PEM),
/// accepted only if its sha256 is `fingerprint` and the server's
/// certificate verifies against it for `address.host`.
pub fn fetch_pinned_ca(address: &ServerAddress, fingerprint: &str) -> anyhow::Result<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint: fingerprint.to_ascii_lowercase(),
        provider: provider.clone(),
        ca: Mutex::new(None),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(address.host.clone())
        .context("Failed to use the server name for TLS")?;
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name)?;
    let socket_address = (address.host.as_str(), address.port)
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("Failed to resolve {}", address.host))?;
    let mut socket = TcpStream::connect_timeout(&socket_address, CONNECT_TIMEOUT)
        .with_context(|| format!("Failed to connect to the server at {}", address.url))?;
    socket.set_read_timeout(Some(CONNECT_TIMEOUT))?;
    let mut tls = rustls::Stream::new(&mut connection, &mut socket);
    // A handshake is enough; the server may close when no request follows.
    let _ = tls.write_all(b"");
    let _ = tls.flush();
    while tls.conn.is_handshaking() {
        if let Err(error) = tls.conn.complete_io(tls.sock) {
            return Err(error).with_context(|| {
                format!(
                    "Failed to verify the server at {} against the token's CA fingerprint",
                    address.url
                )
            });
        }
    }
    let mut discard = [0u8; 0];
    let _ = tls.read(&mut discard);
    let ca = verifier
        .ca
        .lock()
        .expect("lock")
        .clone()
        .context("the server sent no CA with the token's fingerprint")?;
    Ok(der_to_pem(&ca))
}

/// A handshake that failed because of time (a certificate not valid yet or
/// expired, by one side's clock) says so, with both times: "check the
/// clock". Other errors pass unchanged. The rustls error stays the source.
fn clock_hint(error: std::io::Error, own_not_after: Option<i64>) -> std::io::Error {
    use rustls::CertificateError::{ExpiredContext, NotValidYetContext};
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return error;
    };
    let agent_now = crate::clock::unix_secs();
    let message = match tls {
        rustls::Error::InvalidCertificate(NotValidYetContext { time, not_before }) => format!(
            "the server's certificate is not valid yet by this agent's clock: the agent's clock reads {}, the certificate starts at {}; check the clock (this host's or the server's)",
            show_time(time.as_secs() as i64),
            show_time(not_before.as_secs() as i64)
        ),
        rustls::Error::InvalidCertificate(ExpiredContext { time, not_after }) => format!(
            "the server's certificate has expired by this agent's clock: the agent's clock reads {}, the certificate ended at {}; check the clock (this host's or the server's)",
            show_time(time.as_secs() as i64),
            show_time(not_after.as_secs() as i64)
        ),
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired | rustls::CertificateError::NotValidYet,
        ) => format!(
            "the server's certificate is outside its validity by this agent's clock, which reads {}; check the clock (this host's or the server's)",
            show_time(agent_now)
        ),
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateExpired) => format!(
            "the server refused this node's certificate as expired or not yet valid: the agent's clock reads {}, the certificate ends at {}; check the clock (this host's or the server's)",
            show_time(agent_now),
            own_not_after.map_or_else(|| "an unknown time".to_string(), show_time)
        ),
        _ => return error,
    };
    let kind = error.kind();
    let source = error
        .into_inner()
        .and_then(|inner| inner.downcast::<rustls::Error>().ok())
        .map(|tls| *tls);
    match source {
        Some(source) => std::io::Error::new(kind, ClockError { message, source }),
        None => std::io::Error::new(kind, message),
    }
}

/// A TLS failure caused by time, with the hint and both times.
#[derive(Debug)]
struct ClockError {
    message: String,
    source: rustls::Error,
}

impl std::fmt::Display for ClockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ClockError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Unix seconds as a date people read, with the number itself.
fn show_time(unix: i64) -> String {
    match x509_parser::time::ASN1Time::from_timestamp(unix) {
        Ok(time) => format!("{time} (Unix time {unix})"),
        Err(_) => format!("Unix time {unix}"),
    }
}

fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Trusts a server chain whose CA has the pinned fingerprint, and verifies
/// the server's certificate against that CA as any TLS client would.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
    ca: Mutex<Option<Vec<u8>>>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| sha256_hex(c.as_ref()) == self.fingerprint)
        else {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)?;
        *self.ca.lock().expect("lock") = Some(ca.as_ref().to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A server-authenticated channel, for enrollment (the one call without a
/// client certificate).
async fn channel(address: &ServerAddress, ca_pem: &str) -> anyhow::Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(address.host.clone());
    let endpoint = Endpoint::from_shared(address.url.clone())?
        .local_address(address.local_address)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(Duration::from_secs(300))
        .tls_config(tls)?;
    endpoint
        .connect()
        .await
        .with_context(|| format!("Failed to connect to the server at {}", address.url))
}

/// Sends a CSR and the tags; returns what the server signed.
pub async fn enroll(
    address: &ServerAddress,
    ca_pem: &str,
    request: pb::EnrollRequest,
) -> anyhow::Result<pb::EnrollResponse> {
    let mut client = pb::enrollment_client::EnrollmentClient::new(channel(address, ca_pem).await?);
    let response = client
        .enroll(request)
        .await
        .map_err(|status| enrollment_refused(status.message()))?;
    Ok(response.into_inner())
}

/// The error of a refused enrollment, saying "Failed to enroll" once: the
/// server's messages already open with it ("Failed to enroll: the token
/// is unknown", "Failed to enroll by attestation: …"), a bare reason gets
/// it here.
fn enrollment_refused(message: &str) -> anyhow::Error {
    if message.starts_with("Failed to enroll") {
        anyhow::anyhow!("{message}")
    } else {
        anyhow::anyhow!("Failed to enroll: {message}")
    }
}

/// The watch channel (`WatchEvent` in `cms.proto`): TLS 1.3 to the gRPC
/// port with the node's certificate and the ALPN protocol `cms-watch/1`,
/// over which the server sends events and the agent sends nothing.
#[derive(Debug)]
pub struct WatchChannel {
    stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

/// How one node reaches the server: its TLS settings, built once from its
/// identity, for gRPC (ALPN `h2`) and for the watch channel. Both share one
/// store of TLS sessions, so every connection after the first resumes a
/// session (TLS 1.3 tickets): no certificate signature or verification on
/// either side, which is most of what a connection costs.
#[derive(Clone)]
pub struct Connector {
    address: ServerAddress,
    grpc: Arc<rustls::ClientConfig>,
    watch: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    /// The end of this node's certificate (Unix seconds), for the clock
    /// hint when the server refuses it as expired.
    certificate_not_after: Option<i64>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("server", &self.address.url)
            .finish_non_exhaustive()
    }
}

impl Connector {
    pub fn new(address: &ServerAddress, identity: &Identity) -> anyhow::Result<Connector> {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(identity.ca_certificate_pem.as_bytes()) {
            roots
                .add(certificate.context("Failed to read the CA certificate")?)
                .context("Failed to trust the CA certificate")?;
        }
        let chain = CertificateDer::pem_slice_iter(identity.certificate_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("Failed to read this node's certificate")?;
        let key = PrivateKeyDer::from_pem_slice(identity.private_key_pem.as_bytes())
            .context("Failed to read this node's key")?;
        let mut grpc = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("Failed to set up TLS 1.3")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .context("Failed to use this node's certificate")?;
        let mut watch = grpc.clone();
        grpc.alpn_protocols = vec![b"h2".to_vec()];
        // The clone shares the session store: a ticket from either kind of
        // connection resumes the other.
        watch.alpn_protocols = vec![cms_proto::watch::ALPN.to_vec()];
        let name = ServerName::try_from(address.host.clone())
            .with_context(|| format!("{} is not a valid server name", address.host))?;
        Ok(Connector {
            address: address.clone(),
            grpc: Arc::new(grpc),
            watch: Arc::new(watch),
            name,
            certificate_not_after: crate::identity::certificate_validity(&identity.certificate_pem)
                .ok()
                .map(|(_, not_after)| not_after),
        })
    }

    async fn tls(
        &self,
        config: &Arc<rustls::ClientConfig>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let timed_out = |what: &str, after: Duration| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the server did not {what} within {after:?}"),
            )
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tcp_connect(&self.address))
            .await
            .map_err(|_| timed_out("accept the connection", CONNECT_TIMEOUT))??;
        tcp.set_nodelay(true)?;
        let handshake =
            tokio_rustls::TlsConnector::from(config.clone()).connect(self.name.clone(), tcp);
        tokio::time::timeout(HANDSHAKE_WAIT, handshake)
            .await
            .map_err(|_| timed_out("finish the TLS handshake", HANDSHAKE_WAIT))?
            .map_err(|error| clock_hint(error, self.certificate_not_after))
    }

    /// An mTLS connection to the agent API.
    pub async fn connect(&self) -> anyhow::Result<pb::agent_client::AgentClient<Channel>> {
        // TLS is done here, with the shared session store; tonic speaks
        // HTTP/2 over the stream it is given.
        let url = self.address.url.replacen("https://", "http://", 1);
        let connector = self.clone();
        let channel = Endpoint::from_shared(url)?
            .timeout(Duration::from_secs(300))
            .connect_with_connector(TlsConnect(connector))
            .await
            .with_context(|| format!("Failed to connect to the server at {}", self.address.url))?;
        Ok(pb::agent_client::AgentClient::new(channel)
            .max_decoding_message_size(cms_proto::limits::MAX_AGENT_RESPONSE_BYTES)
            .max_encoding_message_size(cms_proto::limits::MAX_REQUEST_BYTES))
    }

    /// Opens the watch channel.
    pub async fn open_watch(&self) -> anyhow::Result<WatchChannel> {
        let stream = self
            .tls(&self.watch)
            .await
            .with_context(|| format!("Failed to open the watch channel to {}", self.address.url))?;
        if stream.get_ref().1.alpn_protocol() != Some(cms_proto::watch::ALPN) {
            bail!(
                "the server at {} does not offer the watch channel: upgrade cms-server",
                self.address.url
            );
        }
        Ok(WatchChannel { stream })
    }
}

/// The connector of a node's current identity, made anew when the identity
/// or the server changes (after a renewal), so that every connection of a
/// daemon (its runs' gRPC calls and its watch channels) resumes the TLS
/// sessions of the earlier ones. Whoever makes the connections owns one (the
/// daemon makes it at start and passes it down); clones share it.
#[derive(Clone, Default)]
pub struct Connectors {
    last: Arc<Mutex<Option<(String, Connector)>>>,
}

impl std::fmt::Debug for Connectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connectors").finish_non_exhaustive()
    }
}

impl Connectors {
    pub fn new() -> Connectors {
        Connectors::default()
    }

    /// The connector for `identity` at `address`: the one made last when
    /// neither changed, else a new one, which replaces it.
    pub fn for_identity(
        &self,
        address: &ServerAddress,
        identity: &Identity,
    ) -> anyhow::Result<Connector> {
        let mut last = self.last.lock().expect("connector lock");
        if let Some((certificate, connector)) = last.as_ref()
            && *certificate == identity.certificate_pem
            && connector.address.url == address.url
            && connector.address.local_address == address.local_address
        {
            return Ok(connector.clone());
        }
        let connector = Connector::new(address, identity)?;
        *last = Some((identity.certificate_pem.clone(), connector.clone()));
        Ok(connector)
    }
}

/// tonic's connector: a TLS stream from the `Connector`, whatever URI tonic
/// passes (the connector knows its server).
#[derive(Clone)]
struct TlsConnect(Connector);

impl tower_service::Service<tonic::codegen::http::Uri> for TlsConnect {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Uri) -> Self::Future {
        let connector = self.0.clone();
        Box::pin(async move {
            let stream = connector.tls(&connector.grpc).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// A TCP connection to the server, from `local_address` when it is set.
async fn tcp_connect(address: &ServerAddress) -> std::io::Result<tokio::net::TcpStream> {
    let Some(local) = address.local_address else {
        return tokio::net::TcpStream::connect((address.host.as_str(), address.port)).await;
    };
    let server = tokio::net::lookup_host((address.host.as_str(), address.port))
        .await?
        .find(|server| server.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| std::io::Error::other("no server address of the local address's family"))?;
    let socket = if local.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(std::net::SocketAddr::new(local, 0))?;
    socket.connect(server).await
}

impl WatchChannel {
    /// Whether the channel's TLS session was resumed from an earlier
    /// connection's ticket (no certificate signatures on either side).
    pub fn resumed(&self) -> bool {
        self.stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The next event from the server; an error when the channel ends.
    pub async fn next_event(&mut self) -> anyhow::Result<pb::WatchEvent> {
        use tokio::io::AsyncReadExt as _;
        let mut header = [0u8; 4];
        self.stream
            .read_exact(&mut header)
            .await
            .context("the server closed the watch channel")?;
        let len = cms_proto::watch::frame_len(header).map_err(anyhow::Error::msg)?;
        let mut body = vec![0u8; len];
        self.stream
            .read_exact(&mut body)
            .await
            .context("the server closed the watch channel in the middle of an event")?;
        cms_proto::watch::decode_event(&body).map_err(anyhow::Error::msg)
    }
}

/// Fetches from the server every content `catalog` names by hash and does
/// not hold yet, keeps each in `cache` and attaches it. Each arrives in
/// chunks (`GetContent`); more bytes than the catalog names, a short
/// stream or a sha256 that differs is an error naming the content, and
/// nothing of it is kept.
pub async fn fetch_contents(
    client: &mut pb::agent_client::AgentClient<Channel>,
    catalog: &mut cms_roles::Catalog,
    cache: &crate::contents::ContentCache,
) -> anyhow::Result<()> {
    if catalog.to_fetch.is_empty() {
        return Ok(());
    }
    // What an earlier catalog already brought is not fetched again.
    let filled = {
        let (cache, mut catalog) = (cache.clone(), std::mem::replace(catalog, empty_catalog()));
        tokio::task::spawn_blocking(move || {
            cache.fill(&mut catalog);
            catalog
        })
        .await?
    };
    *catalog = filled;
    let wanted: Vec<(String, u64)> = catalog
        .to_fetch
        .iter()
        .map(|(hash, size)| (hash.clone(), *size))
        .collect();
    for (hash, size) in wanted {
        let mut stream = client
            .get_content(pb::ContentRequest {
                sha256: hash.clone(),
            })
            .await
            .map_err(|status| {
                anyhow::anyhow!(
                    "Failed to fetch content {hash} ({size} bytes): {}",
                    status.message()
                )
            })?
            .into_inner();
        let mut bytes = Vec::with_capacity(size as usize);
        while let Some(chunk) = stream.message().await.map_err(|status| {
            anyhow::anyhow!(
                "Failed to fetch content {hash} ({size} bytes) after {} bytes: {}",
                bytes.len(),
                status.message()
            )
        })? {
            if (bytes.len() + chunk.data.len()) as u64 > size {
                bail!(
                    "Failed to fetch content {hash}: the server sent more than the catalog's {size} bytes"
                );
            }
            bytes.extend_from_slice(&chunk.data);
        }
        let cache = cache.clone();
        let key = hash.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            let bytes = crate::contents::verified(&key, size, bytes)?;
            cache.put(&key, &bytes)?;
            anyhow::Ok(bytes)
        })
        .await??;
        crate::contents::attach(catalog, &hash, bytes);
    }
    Ok(())
}

fn empty_catalog() -> cms_roles::Catalog {
    cms_roles::Catalog::new(Vec::new(), Vec::new(), Default::default())
}
