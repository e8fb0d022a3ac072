//! A small blocking HTTP/1.1 client for what providers fetch: a java_app's
//! jar (http or https, streamed into a file as it arrives) and its health
//! URL. One request per connection (`Connection: close`), bodies framed by
//! `Content-Length`, chunked encoding or the end of the connection,
//! redirects followed (never from https down to http). https trusts the
//! host's CA bundle (`/etc/ssl/certs/ca-certificates.crt`, from the
//! `ca-certificates` package) through rustls.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use super::{Host, HostError};

/// The CA bundle https is verified against, under the host's root.
pub const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

const MAX_REDIRECTS: usize = 5;
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Why a URL, a redirect or a response head is refused. Shown to the
/// operator inside [`HostError::Http`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("only http:// and https:// URLs are supported")]
    UnsupportedScheme,
    #[error("credentials in the URL are not supported")]
    Credentials,
    #[error("an IPv6 address needs its closing `]`")]
    UnclosedIpv6,
    #[error("invalid port `{0}`")]
    InvalidPort(String),
    #[error("unexpected `{0}` after the address")]
    AfterAddress(String),
    #[error("the URL has no host")]
    NoHost,
    #[error("refusing a redirect from https down to http ({0})")]
    DowngradingRedirect(String),
    #[error("unsupported redirect location `{0}`")]
    UnsupportedRedirect(String),
    #[error("Failed to read the response: {0}")]
    Read(io::Error),
    #[error("the server closed the connection without an answer")]
    NoAnswer,
    #[error("the response headers are larger than 64 KiB")]
    HeadTooLarge,
    #[error("not an HTTP response: {0:?}")]
    NotHttp(String),
}

/// The parts of an http(s) URL a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    pub https: bool,
    /// Without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    pub(crate) fn parse(url: &str) -> Result<Url, HttpError> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(HttpError::UnsupportedScheme);
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let path = if path.is_empty() {
            "/".to_string()
        } else if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        if authority.contains('@') {
            return Err(HttpError::Credentials);
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or(HttpError::UnclosedIpv6)?;
            let port = match after.strip_prefix(':') {
                Some(port) => port
                    .parse()
                    .map_err(|_| HttpError::InvalidPort(port.to_string()))?,
                None if after.is_empty() => default_port,
                None => return Err(HttpError::AfterAddress(after.to_string())),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_string(),
                    port.parse()
                        .map_err(|_| HttpError::InvalidPort(port.to_string()))?,
                ),
                None => (authority.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(HttpError::NoHost);
        }
        Ok(Url {
            https,
            host,
            port,
            path,
        })
    }

    /// Where a redirect's `Location` points, relative to this URL.
    fn join(&self, location: &str) -> Result<Url, HttpError> {
        if location.starts_with("http://") || location.starts_with("https://") {
            let next = Url::parse(location)?;
            if self.https && !next.https {
                return Err(HttpError::DowngradingRedirect(location.to_string()));
            }
            Ok(next)
        } else if location.starts_with('/') {
            Ok(Url {
                path: location.to_string(),
                ..self.clone()
            })
        } else {
            Err(HttpError::UnsupportedRedirect(location.to_string()))
        }
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.https { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl Host {
    /// `GET url`, following redirects. For a 2xx answer the body is written
    /// to `sink` as it arrives; for any other status it is not read.
    /// Returns the final status. `timeout` bounds connecting and each wait
    /// for data, not the whole transfer.
    pub fn http_get(
        &self,
        url: &str,
        timeout: Duration,
        sink: &mut dyn Write,
    ) -> Result<u16, HostError> {
        let fail = |message: String| HostError::Http {
            url: url.to_string(),
            message,
        };
        let mut current = Url::parse(url).map_err(|e| fail(e.to_string()))?;
        for _ in 0..=MAX_REDIRECTS {
            let mut reader = BufReader::new(
                self.connect(&current, timeout)
                    .map_err(|e| fail(e.to_string()))?,
            );
            let request = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cms-agent\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
                current.path,
                current.host_header()
            );
            reader
                .get_mut()
                .write_all(request.as_bytes())
                .and_then(|()| reader.get_mut().flush())
                .map_err(|e| fail(format!("Failed to send the request: {e}")))?;
            let (status, headers) = read_head(&mut reader).map_err(|e| fail(e.to_string()))?;
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(name))
                    .map(|(_, value)| value.as_str())
            };
            if matches!(status, 301 | 302 | 303 | 307 | 308)
                && let Some(location) = header("location")
            {
                current = current.join(location).map_err(|e| fail(e.to_string()))?;
                continue;
            }
            if !(200..300).contains(&status) {
                return Ok(status);
            }
            let chunked = header("transfer-encoding")
                .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
            let length = header("content-length")
                .map(|value| {
                    value
                        .trim()
                        .parse::<u64>()
                        .map_err(|_| fail(format!("invalid Content-Length `{value}`")))
                })
                .transpose()?;
            let copied = if chunked {
                copy_chunked(&mut reader, sink)
            } else if let Some(length) = length {
                io::copy(&mut (&mut reader).take(length), sink).and_then(|copied| {
                    if copied == length {
                        Ok(copied)
                    } else {
                        Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("the connection closed after {copied} of {length} bytes"),
                        ))
                    }
                })
            } else {
                io::copy(&mut reader, sink)
            };
            copied.map_err(|e| fail(format!("Failed to read the body: {e}")))?;
            return Ok(status);
        }
        Err(fail(format!("more than {MAX_REDIRECTS} redirects")))
    }

    fn connect(&self, url: &Url, timeout: Duration) -> io::Result<Box<dyn Stream>> {
        let addresses = (url.host.as_str(), url.port).to_socket_addrs()?;
        let mut last_error = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} has no address", url.host),
        );
        for address in addresses {
            match TcpStream::connect_timeout(&address, timeout) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    if !url.https {
                        return Ok(Box::new(stream));
                    }
                    let config = self.tls_config()?;
                    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    let connection = rustls::ClientConnection::new(config, name)
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    return Ok(Box::new(rustls::StreamOwned::new(connection, stream)));
                }
                Err(error) => {
                    last_error = io::Error::new(
                        error.kind(),
                        format!("Failed to connect to {address}: {error}"),
                    )
                }
            }
        }
        Err(last_error)
    }

    fn tls_config(&self) -> io::Result<Arc<rustls::ClientConfig>> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let bundle = self.path(CA_BUNDLE);
        let mut roots = rustls::RootCertStore::empty();
        let certificates = CertificateDer::pem_file_iter(&bundle).map_err(|e| {
            io::Error::other(format!(
                "Failed to read the CA bundle {}: {e} (is ca-certificates installed?)",
                bundle.display()
            ))
        })?;
        roots.add_parsable_certificates(certificates.filter_map(Result::ok));
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// The status code and headers of a response.
fn read_head(reader: &mut impl BufRead) -> Result<(u16, Vec<(String, String)>), HttpError> {
    let mut total = 0;
    let mut line = String::new();
    let mut read_line = |line: &mut String| -> Result<(), HttpError> {
        line.clear();
        let count = reader.read_line(line).map_err(HttpError::Read)?;
        total += count;
        if count == 0 {
            return Err(HttpError::NoAnswer);
        }
        if total > MAX_HEADER_BYTES {
            return Err(HttpError::HeadTooLarge);
        }
        Ok(())
    };
    read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .filter(|_| line.starts_with("HTTP/"))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| HttpError::NotHttp(line.trim_end().to_string()))?;
    let mut headers = Vec::new();
    loop {
        read_line(&mut line)?;
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        if let Some((key, value)) = trimmed.split_once(':') {
            headers.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    Ok((status, headers))
}

/// Decodes `Transfer-Encoding: chunked` into `sink`.
fn copy_chunked(reader: &mut impl BufRead, sink: &mut dyn Write) -> io::Result<u64> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut total = 0;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid(
                "the connection closed inside a chunked body".into(),
            ));
        }
        let size_text = line.trim().split(';').next().unwrap_or_default();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("invalid chunk size {size_text:?}")))?;
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                    return Ok(total);
                }
            }
        }
        let copied = io::copy(&mut reader.take(size), sink)?;
        if copied != size {
            return Err(invalid(format!(
                "the connection closed after {copied} of a {size}-byte chunk"
            )));
        }
        total += copied;
        line.clear();
        reader.read_line(&mut line)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_path() {
        assert_eq!(
            Url::parse("https://artifacts.internal/orders/orders-1.jar").expect("parses"),
            Url {
                https: true,
                host: "artifacts.internal".into(),
                port: 443,
                path: "/orders/orders-1.jar".into()
            }
        );
        let local = Url::parse("http://127.0.0.1:8080").expect("parses");
        assert_eq!((local.port, local.path.as_str()), (8080, "/"));
        let v6 = Url::parse("http://[::1]:9000/health?full=1#x").expect("parses");
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.path.as_str()),
            ("::1", 9000, "/health?full=1")
        );
        assert_eq!(v6.host_header(), "[::1]:9000");
        assert!(Url::parse("ftp://x/y").is_err());
        assert!(Url::parse("http://user:pw@x/y").is_err());
    }

    #[test]
    fn redirects_never_go_from_https_down_to_http() {
        let secure = Url::parse("https://a.example/x.jar").expect("parses");
        assert!(secure.join("http://b.example/x.jar").is_err());
        assert_eq!(
            secure.join("/mirror/x.jar").expect("joins").path,
            "/mirror/x.jar"
        );
    }

    #[test]
    fn chunked_bodies_are_decoded() {
        let body = b"4\r\nWiki\r\n6;ext=1\r\npedia \r\n0\r\nTrailer: x\r\n\r\n";
        let mut out = Vec::new();
        let copied = copy_chunked(&mut &body[..], &mut out).expect("decodes");
        assert_eq!((copied, out.as_slice()), (10, &b"Wikipedia "[..]));
        assert!(copy_chunked(&mut &b"4\r\nWi"[..], &mut Vec::new()).is_err());
    }

    #[test]
    fn https_is_verified_against_the_hosts_ca_bundle() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        use std::sync::Arc;
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("key");
        let server_cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&server_key, &issuer)
            .expect("certificate");

        // A host whose CA bundle holds the test CA, and one whose bundle
        // does not.
        let trusting = tempfile::tempdir().expect("tempdir");
        let bundle = trusting.path().join(CA_BUNDLE.trim_start_matches('/'));
        std::fs::create_dir_all(bundle.parent().expect("parent")).expect("mkdir");
        std::fs::write(&bundle, ca.pem()).expect("bundle");
        let other = tempfile::tempdir().expect("tempdir");
        let other_bundle = other.path().join(CA_BUNDLE.trim_start_matches('/'));
        std::fs::create_dir_all(other_bundle.parent().expect("parent")).expect("mkdir");
        let unrelated_key = KeyPair::generate().expect("key");
        let unrelated = CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .self_signed(&unrelated_key)
            .expect("ca");
        std::fs::write(&other_bundle, unrelated.pem()).expect("bundle");

        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der())
                .expect("key der"),
        )
        .expect("server config");
        let config = Arc::new(config);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let port = listener.local_addr().expect("address").port();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (stream, _) = listener.accept().expect("accepts");
                let connection =
                    rustls::ServerConnection::new(Arc::clone(&config)).expect("connection");
                let mut tls = rustls::StreamOwned::new(connection, stream);
                let mut request = [0u8; 1024];
                if tls.read(&mut request).is_ok() {
                    let _ = tls.write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\njar\r\n0\r\n\r\n",
                    );
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                }
            }
        });
        let url = format!("https://localhost:{port}/app.jar");
        let mut body = Vec::new();
        let status = Host::new(trusting.path())
            .http_get(&url, Duration::from_secs(5), &mut body)
            .expect("a server whose CA the host trusts");
        assert_eq!((status, body.as_slice()), (200, &b"jar"[..]));
        let refused = Host::new(other.path())
            .http_get(&url, Duration::from_secs(5), &mut Vec::new())
            .expect_err("a server whose CA the host does not trust");
        assert!(
            crate::error_text(&refused).contains("invalid peer certificate"),
            "{}",
            crate::error_text(&refused)
        );
        server.join().expect("server");
    }

    #[test]
    fn bodies_are_streamed_from_a_local_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let port = listener.local_addr().expect("address").port();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 302 Found\r\nLocation: /final\r\nContent-Length: 0\r\n\r\n".to_string(),
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_string(),
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_string(),
            ] {
                let (mut stream, _) = listener.accept().expect("accepts");
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).expect("reads");
                stream.write_all(answer.as_bytes()).expect("writes");
            }
        });
        let host = Host::system();
        let mut body = Vec::new();
        let status = host
            .http_get(
                &format!("http://127.0.0.1:{port}/start"),
                Duration::from_secs(5),
                &mut body,
            )
            .expect("gets");
        assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
        let status = host
            .http_get(
                &format!("http://127.0.0.1:{port}/missing"),
                Duration::from_secs(5),
                &mut Vec::new(),
            )
            .expect("gets");
        assert_eq!(status, 404);
        server.join().expect("server");
    }
}
