//! How every connection to PostgreSQL is opened: the store's pool, the
//! replicas' message bus, their advisory-lock session and the restart
//! leases all start from [`ConnectionSettings::from_url`], so they share
//! one reading of the URL and one TLS configuration.
//!
//! # TLS
//!
//! `sslmode` means what it means to libpq (`docs/store.md` has the table):
//!
//! - `disable`: no TLS.
//! - `prefer` (the default, as in libpq): TLS when the server offers it,
//!   else plain; the certificate is not checked.
//! - `require`: TLS or no connection; the certificate is not checked, so
//!   it protects against passive eavesdropping only.
//! - `verify-ca`: TLS, and the server's certificate must chain to
//!   `sslrootcert` (a PEM file), or to the system's roots without it.
//! - `verify-full`: as `verify-ca`, and the certificate must also be issued
//!   for the host name connected to.
//!
//! As in libpq, `prefer` and `require` with an `sslrootcert` check the
//! chain as `verify-ca` does. libpq's `prefer` also retries without TLS when
//! the handshake itself fails; here it falls back only when the server
//! declines TLS (a server offering TLS with a broken handshake is an
//! error). `sslrootcert=system` names the system's roots.
//!
//! The connector is rustls with the ring provider (the workspace's one
//! provider), the ALPN name `postgresql` (PostgreSQL 17's direct TLS needs
//! it, older servers ignore it) and `tls-server-end-point` channel binding,
//! so that SCRAM authentication detects a man in the middle even where the
//! certificate is not checked.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr as _;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::store::{BackendError, StoreError};

/// What `sslmode` asks for; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    /// The value as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<TlsMode, StoreError> {
        Ok(match value {
            "disable" => TlsMode::Disable,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(StoreError::InvalidUrl {
                    problem: format!(
                        "sslmode={other} is not one this server knows; write sslmode=disable, prefer, require, verify-ca or verify-full"
                    ),
                });
            }
        })
    }
}

/// Everything a connection is opened with: tokio-postgres's settings (the
/// URL without our TLS parameters) and the TLS connector. Callers may
/// tune `config` (timeouts, application name) before connecting.
#[derive(Clone)]
pub struct ConnectionSettings {
    pub config: tokio_postgres::Config,
    pub tls: PostgresTls,
}

impl fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("target", &super::describe(&self.config))
            .field("tls", &self.tls)
            .finish()
    }
}

/// A connection of ours: tokio-postgres over TCP (or a socket), perhaps
/// wrapped in TLS.
pub type PostgresConnection = tokio_postgres::Connection<tokio_postgres::Socket, PostgresTlsStream>;

/// Why a connection could not be opened: its settings (the URL, the
/// `sslrootcert` file) or the database. Shown with every cause, never the
/// password.
#[derive(Debug)]
pub enum ConnectError {
    Settings(StoreError),
    Database(tokio_postgres::Error),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Settings(error) => f.write_str(&crate::store::error_chain(error)),
            ConnectError::Database(error) => f.write_str(&crate::store::error_chain(error)),
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<tokio_postgres::Error> for ConnectError {
    fn from(error: tokio_postgres::Error) -> ConnectError {
        ConnectError::Database(error)
    }
}

impl From<StoreError> for ConnectError {
    fn from(error: StoreError) -> ConnectError {
        ConnectError::Settings(error)
    }
}

impl ConnectionSettings {
    /// Reads `url` (`postgres://…?sslmode=…&sslrootcert=…` or libpq's
    /// `key=value` form) and loads the CA certificates it names.
    pub fn from_url(url: &str) -> Result<ConnectionSettings, StoreError> {
        let (rest, tls_parameters) = split_tls_parameters(url)?;
        let config =
            tokio_postgres::Config::from_str(&rest).map_err(|error| StoreError::InvalidUrl {
                problem: crate::store::error_chain(&error),
            })?;
        let mut config = config;
        let mode = match &tls_parameters.mode {
            Some(mode) => TlsMode::parse(mode)?,
            None => TlsMode::Prefer,
        };
        config.ssl_mode(match mode {
            TlsMode::Disable => tokio_postgres::config::SslMode::Disable,
            TlsMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = PostgresTls::new(mode, tls_parameters.root_certificates.as_deref())?;
        Ok(ConnectionSettings { config, tls })
    }

    /// Opens one connection; the caller polls the returned connection
    /// (tokio-postgres's contract).
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, PostgresConnection), ConnectError> {
        Ok(self.config.connect(self.tls.clone()).await?)
    }
}

/// Whether `error` is a failed TLS negotiation: tokio-postgres's error
/// kinds have no accessor, its text is the mark.
pub(super) fn is_tls_failure(error: &tokio_postgres::Error) -> bool {
    error.to_string() == "error performing TLS handshake"
}

/// A failed TLS negotiation for a message: our [`HandshakeError`] as it
/// is, tokio-postgres's bare "server does not support TLS" with what to
/// do about it.
pub(super) fn explain_tls_failure(error: tokio_postgres::Error) -> BackendError {
    let ours = std::error::Error::source(&error)
        .is_some_and(|source| source.downcast_ref::<HandshakeError>().is_some());
    if !ours && crate::store::error_chain(&error).contains("server does not support TLS") {
        return BackendError::new(io::Error::other(
            "the server does not support TLS, and the URL's sslmode requires it; turn TLS on in the server (ssl = on), or write sslmode=prefer to allow plain TCP",
        ));
    }
    BackendError::new(error)
}

/// `sslmode` and `sslrootcert` as written, taken out of the URL because
/// tokio-postgres knows neither `verify-ca`/`verify-full` nor
/// `sslrootcert`.
#[derive(Debug, Default)]
pub(super) struct TlsParameters {
    mode: Option<String>,
    root_certificates: Option<String>,
}

/// The URL without `sslmode` and `sslrootcert`, and their values.
pub(super) fn split_tls_parameters(url: &str) -> Result<(String, TlsParameters), StoreError> {
    let mut parameters = TlsParameters::default();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((url.to_string(), parameters));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match percent_decode(key)?.as_str() {
                "sslmode" => parameters.mode = Some(percent_decode(value)?),
                "sslrootcert" => parameters.root_certificates = Some(percent_decode(value)?),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, parameters));
    }
    let mut kept = Vec::new();
    for (key, value) in key_value_pairs(url)? {
        match key.as_str() {
            "sslmode" => parameters.mode = Some(value),
            "sslrootcert" => parameters.root_certificates = Some(value),
            _ => kept.push(format!(
                "{key}='{}'",
                value.replace('\\', "\\\\").replace('\'', "\\'")
            )),
        }
    }
    Ok((kept.join(" "), parameters))
}

/// `%XX` escapes of a URL's query decoded (as tokio-postgres does).
fn percent_decode(text: &str) -> Result<String, StoreError> {
    let invalid = || StoreError::InvalidUrl {
        problem: format!("{text:?} holds an invalid %-escape"),
    };
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).ok_or_else(invalid)?;
            decoded.push(u8::from_str_radix(hex, 16).map_err(|_| invalid())?);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(decoded).map_err(|_| invalid())
}

/// libpq's `key=value key='quoted \' value'` form, as pairs.
fn key_value_pairs(text: &str) -> Result<Vec<(String, String)>, StoreError> {
    let invalid = |problem: &str| StoreError::InvalidUrl {
        problem: problem.to_string(),
    };
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid(&format!("{key:?} has no `=` and value")));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(invalid(&format!("the value of {key} lacks its closing '")));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// Where the trusted CA certificates came from, for messages.
#[derive(Debug, Clone)]
enum Roots {
    /// `sslrootcert=FILE`.
    File(PathBuf),
    /// No `sslrootcert`, or `sslrootcert=system`.
    System,
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Roots::File(path) => write!(f, "sslrootcert {}", path.display()),
            Roots::System => f.write_str("the system's trusted CAs"),
        }
    }
}

/// The TLS connector of our PostgreSQL connections (tokio-postgres's
/// `MakeTlsConnect`), built once per URL and cloned for each connection.
#[derive(Clone)]
pub struct PostgresTls {
    mode: TlsMode,
    /// `None` for `sslmode=disable`.
    config: Option<Arc<ClientConfig>>,
    /// `None` when the certificate's chain is not checked.
    roots: Option<Roots>,
}

impl fmt::Debug for PostgresTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTls")
            .field("mode", &self.mode)
            .field("roots", &self.roots.as_ref().map(ToString::to_string))
            .finish()
    }
}

impl PostgresTls {
    /// The connector for `mode`, trusting the CAs in `root_certificates`
    /// (a PEM file, `system`, or `None` for the system's roots).
    pub fn new(mode: TlsMode, root_certificates: Option<&str>) -> Result<PostgresTls, StoreError> {
        if mode == TlsMode::Disable {
            return Ok(PostgresTls {
                mode,
                config: None,
                roots: None,
            });
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // As in libpq, a root certificate given to prefer or require makes
        // them check the chain (libpq refuses them with `system`; checking
        // is the nearer reading of what was asked).
        let checks_chain =
            matches!(mode, TlsMode::VerifyCa | TlsMode::VerifyFull) || root_certificates.is_some();
        let (verifier, roots): (Arc<dyn ServerCertVerifier>, Option<Roots>) = if checks_chain {
            let roots = match root_certificates {
                Some(value) if value != "system" => Roots::File(PathBuf::from(value)),
                _ => Roots::System,
            };
            let store = match &roots {
                Roots::File(path) => read_root_certificates(path)?,
                Roots::System => system_root_certificates()?,
            };
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|source| StoreError::Backend {
                        action: format!("use {roots} to check PostgreSQL's certificate"),
                        source: BackendError::new(io::Error::other(source.to_string())),
                    })?;
            let checks_name = mode == TlsMode::VerifyFull;
            (
                Arc::new(ChainVerifier {
                    webpki,
                    checks_name,
                }),
                Some(roots),
            )
        } else {
            (
                Arc::new(UncheckedVerifier {
                    provider: provider.clone(),
                }),
                None,
            )
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|source| StoreError::Backend {
                action: "set up TLS for PostgreSQL".into(),
                source: BackendError::new(io::Error::other(source.to_string())),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(PostgresTls {
            mode,
            config: Some(Arc::new(config)),
            roots,
        })
    }

    /// What `sslmode` this connector was made for.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }
}

fn read_root_certificates(path: &Path) -> Result<RootCertStore, StoreError> {
    let failed = |problem: String| StoreError::Backend {
        action: format!(
            "read the CA certificates of sslrootcert {} (named in the store URL)",
            path.display()
        ),
        source: BackendError::new(io::Error::other(problem)),
    };
    let text = std::fs::read(path).map_err(|error| failed(error.to_string()))?;
    let mut store = RootCertStore::empty();
    for (number, certificate) in CertificateDer::pem_slice_iter(&text).enumerate() {
        let certificate =
            certificate.map_err(|error| failed(format!("it is not PEM ({error})")))?;
        store.add(certificate).map_err(|error| {
            failed(format!(
                "its certificate {} is not a CA certificate rustls can use: {error}",
                number + 1
            ))
        })?;
    }
    if store.is_empty() {
        return Err(failed(
            "it holds no PEM certificate (-----BEGIN CERTIFICATE-----); write the CA's certificate there, for Aurora and RDS the region's rds-ca bundle".into(),
        ));
    }
    Ok(store)
}

fn system_root_certificates() -> Result<RootCertStore, StoreError> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _ignored) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let detail = found
            .errors
            .first()
            .map(|error| format!(": {error}"))
            .unwrap_or_default();
        return Err(StoreError::Backend {
            action: "find the system's trusted CAs to check PostgreSQL's certificate".into(),
            source: BackendError::new(io::Error::other(format!(
                "none were found{detail}; name the CA's certificate with sslrootcert=FILE in the store URL"
            ))),
        });
    }
    Ok(store)
}

/// `require` and `prefer` without a root certificate: any certificate is
/// taken (the handshake's signatures are still checked, so the session is
/// with whoever holds the certificate's key).
#[derive(Debug)]
struct UncheckedVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for UncheckedVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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

/// `verify-ca` and `verify-full`: the chain must lead to a trusted root;
/// with `checks_name` the certificate must also be issued for the host.
/// webpki checks the name after the chain, so a name error means the
/// chain was good.
#[derive(Debug)]
struct ChainVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    checks_name: bool,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.checks_name => Ok(ServerCertVerified::assertion()),
            outcome => outcome,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

impl<S> MakeTlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type TlsConnect = PostgresTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> Result<PostgresTlsConnect, io::Error> {
        // tokio-postgres asks for a connector even with sslmode=disable, and
        // with "" for a socket: a bad name fails only if TLS is attempted.
        Ok(PostgresTlsConnect {
            tls: self.clone(),
            host: host.to_string(),
        })
    }
}

/// The connector for one host.
pub struct PostgresTlsConnect {
    tls: PostgresTls,
    host: String,
}

impl<S> TlsConnect<S> for PostgresTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type Error = HandshakeError;
    type Future =
        Pin<Box<dyn Future<Output = Result<PostgresTlsStream<S>, HandshakeError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let PostgresTlsConnect { tls, host } = self;
            let failed = |cause: Cause| HandshakeError {
                host: host.clone(),
                mode: tls.mode,
                roots: tls.roots.clone(),
                cause,
            };
            let Some(config) = tls.config.clone() else {
                return Err(failed(Cause::Disabled));
            };
            let name = ServerName::try_from(host.clone()).map_err(|_| failed(Cause::NoHostName))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|error| failed(Cause::Handshake(error)))?;
            Ok(PostgresTlsStream(stream))
        })
    }
}

/// A TLS handshake with PostgreSQL that failed: the host, the `sslmode`,
/// what was trusted and what went wrong, with a hint where one helps.
#[derive(Debug)]
pub struct HandshakeError {
    host: String,
    mode: TlsMode,
    roots: Option<Roots>,
    cause: Cause,
}

#[derive(Debug)]
enum Cause {
    Disabled,
    NoHostName,
    Handshake(io::Error),
}

impl HandshakeError {
    /// rustls's verdict, when the handshake failed on one.
    fn rustls_error(&self) -> Option<&rustls::Error> {
        match &self.cause {
            Cause::Handshake(error) => error.get_ref()?.downcast_ref::<rustls::Error>(),
            _ => None,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = &self.host;
        let mode = self.mode.as_str();
        let roots = self
            .roots
            .as_ref()
            .map_or_else(|| "no CA".to_string(), ToString::to_string);
        let certificate =
            format!("the certificate of the PostgreSQL server {host} (sslmode={mode})");
        match (&self.cause, self.rustls_error()) {
            (Cause::Disabled, _) => write!(f, "TLS is disabled (sslmode=disable) for {host}"),
            (Cause::NoHostName, _) => write!(
                f,
                "no host name to check {certificate} against: {host:?} is not a DNS name or IP address"
            ),
            (_, Some(rustls::Error::InvalidCertificate(error))) => match error {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => write!(
                    f,
                    "{certificate} is not signed by a CA of {roots}: the server is not the one expected, or a man in the middle answered; hint: if the server is right, name the CA that signed its certificate with sslrootcert=FILE (for Aurora and RDS, the rds-ca bundle)"
                ),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => write!(
                    f,
                    "{certificate} is not issued for the host name {host}: connect by a name the certificate carries (for Aurora, the cluster endpoint, not an IP address or a CNAME of your own)"
                ),
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    write!(f, "{certificate} has expired")
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    write!(
                        f,
                        "{certificate} is not valid yet (is this machine's clock right?)"
                    )
                }
                other => write!(f, "{certificate} was refused: {other:?}"),
            },
            (Cause::Handshake(error), _) => {
                write!(
                    f,
                    "the TLS handshake with the PostgreSQL server {host} (sslmode={mode}) failed: {error}"
                )
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

/// A TLS session with PostgreSQL; tokio-postgres reads and writes through
/// it and takes its channel binding for SCRAM.
pub struct PostgresTlsStream<S = tokio_postgres::Socket>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PostgresTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PostgresTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PostgresTlsStream<S> {
    /// `tls-server-end-point` (RFC 5929): the hash of the server's
    /// certificate with the hash of its signature algorithm, SHA-256 for
    /// MD5, SHA-1 and anything unknown.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        let Some(certificate) = session.peer_certificates().and_then(|all| all.first()) else {
            return ChannelBinding::none();
        };
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate) else {
            return ChannelBinding::none();
        };
        use x509_parser::oid_registry as oid;
        let algorithm = &parsed.signature_algorithm.algorithm;
        let digest = if *algorithm == oid::OID_PKCS1_SHA384WITHRSA
            || *algorithm == oid::OID_SIG_ECDSA_WITH_SHA384
        {
            &ring::digest::SHA384
        } else if *algorithm == oid::OID_PKCS1_SHA512WITHRSA
            || *algorithm == oid::OID_SIG_ECDSA_WITH_SHA512
        {
            &ring::digest::SHA512
        } else {
            &ring::digest::SHA256
        };
        ChannelBinding::tls_server_end_point(
            ring::digest::digest(digest, certificate).as_ref().to_vec(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Option<String>, Option<String>) {
        let (rest, parameters) = split_tls_parameters(url).unwrap();
        (rest, parameters.mode, parameters.root_certificates)
    }

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_a_url_and_the_rest_kept() {
        assert_eq!(
            split(
                "postgres://cms:pw@db:5432/cms?connect_timeout=2&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
            ),
            (
                "postgres://cms:pw@db:5432/cms?connect_timeout=2".to_string(),
                Some("verify-full".into()),
                Some("/etc/ca.pem".into())
            )
        );
        assert_eq!(
            split("postgres://db/cms?sslmode=verify-ca"),
            (
                "postgres://db/cms".to_string(),
                Some("verify-ca".into()),
                None
            )
        );
        assert_eq!(
            split("host=db dbname = 'my db' sslmode=verify-full sslrootcert='/ca dir/ca.pem'"),
            (
                "host='db' dbname='my db'".to_string(),
                Some("verify-full".into()),
                Some("/ca dir/ca.pem".into())
            )
        );
    }

    #[test]
    fn every_libpq_sslmode_is_read_and_another_is_refused_listing_them() {
        for mode in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let settings = ConnectionSettings::from_url(&format!(
                "postgres://db/cms?sslmode={mode}&sslrootcert=system"
            ));
            // verify-* may find no system roots on a bare machine; the mode
            // itself is read either way.
            if let Ok(settings) = settings {
                assert_eq!(settings.tls.mode().as_str(), mode);
            }
        }
        let error =
            ConnectionSettings::from_url("postgres://db/cms?sslmode=verify_full").unwrap_err();
        assert!(
            error.to_string().contains("sslmode=verify_full is not one")
                && error.to_string().contains("verify-full"),
            "{error}"
        );
    }

    #[test]
    fn without_sslmode_tls_is_preferred_as_libpq_does() {
        let settings = ConnectionSettings::from_url("postgres://db/cms").unwrap();
        assert_eq!(settings.tls.mode(), TlsMode::Prefer);
        assert_eq!(
            settings.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
    }

    #[test]
    fn a_missing_or_non_pem_sslrootcert_is_named_in_the_error() {
        let folder = tempfile::tempdir().unwrap();
        let missing = folder.path().join("missing.pem");
        let error = ConnectionSettings::from_url(&format!(
            "postgres://cms:s3cret@db/cms?sslmode=verify-full&sslrootcert={}",
            missing.display()
        ))
        .unwrap_err();
        let text = crate::store::error_chain(&error);
        assert!(text.contains(&missing.display().to_string()), "{text}");
        assert!(!text.contains("s3cret"), "{text}");

        let not_pem = folder.path().join("ca.der");
        std::fs::write(&not_pem, [0x30, 0x82, 0x01, 0x00]).unwrap();
        let error = ConnectionSettings::from_url(&format!(
            "postgres://db/cms?sslmode=verify-ca&sslrootcert={}",
            not_pem.display()
        ))
        .unwrap_err();
        let text = crate::store::error_chain(&error);
        assert!(
            text.contains(&not_pem.display().to_string()) && text.contains("no PEM certificate"),
            "{text}"
        );
    }
}
