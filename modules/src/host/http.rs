//! A small blocking HTTP/1.1 client for what providers fetch: a java_app's
//! jar (http or https, streamed into a file as it arrives) and its health
//! URL ([`Host::http_get`], redirects followed, never from https down to
//! http), and for the agent's calls to APIs such as AWS's
//! ([`Host::http_request`]: any method, headers and a body, the answer's
//! status, headers and body, bounded, whatever the status). One request
//! per connection (`Connection: close`), bodies framed by
//! `Content-Length`, chunked encoding or the end of the connection. https
//! trusts the host's CA bundle (`/etc/ssl/certs/ca-certificates.crt`, from
//! the `ca-certificates` package) through rustls.

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

/// A connection whose answer's head is read: the status, the headers, and
/// the reader the body follows in.
type Answered = (BufReader<Box<dyn Stream>>, u16, Vec<(String, String)>);

/// One request for [`Host::http_request`].
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// `GET`, `PUT`, `POST`, …
    pub method: &'a str,
    pub url: &'a str,
    /// Sent as given, after `Host`, `User-Agent`, `Accept-Encoding`,
    /// `Connection` and `Content-Length`.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
    /// Bounds connecting and each wait for data, not the whole exchange.
    pub timeout: Duration,
    /// An answer whose body is longer is an error.
    pub max_body_bytes: usize,
}

/// The answer to an [`HttpRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// As received, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of that name, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Host {
    /// Sends one request and reads the whole answer, whatever its status;
    /// redirects are not followed. Errors are failures to connect, send
    /// or read, and a body over `max_body_bytes`.
    pub fn http_request(&self, request: &HttpRequest<'_>) -> Result<HttpResponse, HostError> {
        let fail = |message: String| HostError::Http {
            url: request.url.to_string(),
            message,
        };
        let url = Url::parse(request.url).map_err(|e| fail(e.to_string()))?;
        let (mut reader, status, headers) = self
            .exchange(
                &url,
                request.method,
                request.headers,
                request.body,
                request.timeout,
            )
            .map_err(fail)?;
        let mut body = BoundedBuffer {
            bytes: Vec::new(),
            limit: request.max_body_bytes,
        };
        let has_body = request.method != "HEAD" && !matches!(status, 100..=199 | 204 | 304);
        if has_body {
            read_body(&mut reader, &headers, &mut body).map_err(fail)?;
        }
        Ok(HttpResponse {
            status,
            headers,
            body: body.bytes,
        })
    }

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
            let (mut reader, status, headers) = self
                .exchange(&current, "GET", &[], &[], timeout)
                .map_err(fail)?;
            if matches!(status, 301 | 302 | 303 | 307 | 308)
                && let Some(location) = header_of(&headers, "location")
            {
                current = current.join(location).map_err(|e| fail(e.to_string()))?;
                continue;
            }
            if !(200..300).contains(&status) {
                return Ok(status);
            }
            read_body(&mut reader, &headers, sink).map_err(fail)?;
            return Ok(status);
        }
        Err(fail(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// Connects, sends the request and reads the answer's head; the body
    /// is left to read from the returned reader.
    fn exchange(
        &self,
        url: &Url,
        method: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<Answered, String> {
        let mut reader = BufReader::new(self.connect(url, timeout).map_err(|e| e.to_string())?);
        let mut head = format!(
            "{method} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cms-agent\r\nAccept-Encoding: identity\r\nConnection: close\r\n",
            url.path,
            url.host_header()
        );
        if !body.is_empty() || !matches!(method, "GET" | "HEAD") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let stream = reader.get_mut();
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .and_then(|()| stream.flush())
            .map_err(|e| format!("Failed to send the request: {e}"))?;
        let (status, headers) = read_head(&mut reader).map_err(|e| e.to_string())?;
        Ok((reader, status, headers))
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

/// The first header of that name, in any case.
fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// Copies the body that follows `headers` into `sink`, however it is
/// framed.
fn read_body(
    reader: &mut impl BufRead,
    headers: &[(String, String)],
    sink: &mut dyn Write,
) -> Result<u64, String> {
    let chunked = header_of(headers, "transfer-encoding")
        .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
    let length = header_of(headers, "content-length")
        .map(|value| {
            value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("invalid Content-Length `{value}`"))
        })
        .transpose()?;
    let copied = if chunked {
        copy_chunked(reader, sink)
    } else if let Some(length) = length {
        io::copy(&mut reader.take(length), sink).and_then(|copied| {
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
        io::copy(reader, sink)
    };
    copied.map_err(|e| format!("Failed to read the body: {e}"))
}

/// A body in memory that refuses to grow past `limit` bytes.
struct BoundedBuffer {
    bytes: Vec<u8>,
    limit: usize,
}

impl Write for BoundedBuffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.bytes.len() + data.len() > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("the answer is larger than {} bytes", self.limit),
            ));
        }
        self.bytes.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
    fn a_post_sends_its_headers_and_body_and_reads_any_answer_bounded() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let port = listener.local_addr().expect("address").port();
        let server = std::thread::spawn(move || {
            let mut received = Vec::new();
            for answer in [
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/xml\r\nContent-Length: 7\r\n\r\n<Error>",
                "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n01234567890123456789",
            ] {
                let (mut stream, _) = listener.accept().expect("accepts");
                let mut reader = BufReader::new(stream.try_clone().expect("clones"));
                let mut head = String::new();
                while !head.ends_with("\r\n\r\n") {
                    reader.read_line(&mut head).expect("reads");
                }
                let mut body = [0u8; 11];
                reader.read_exact(&mut body).expect("body");
                received.push((head, body.to_vec()));
                stream.write_all(answer.as_bytes()).expect("writes");
            }
            received
        });
        let host = Host::system();
        let url = format!("http://127.0.0.1:{port}/");
        let request = HttpRequest {
            method: "POST",
            url: &url,
            headers: &[("Content-Type", "application/x-www-form-urlencoded")],
            body: b"Action=Test",
            timeout: Duration::from_secs(5),
            max_body_bytes: 10,
        };
        let refused = host.http_request(&request).expect("an answer");
        assert_eq!(
            (
                refused.status,
                refused.header("content-type"),
                refused.text()
            ),
            (400, Some("text/xml"), "<Error>".to_string())
        );
        let too_long = host.http_request(&request).expect_err("over the bound");
        assert!(
            crate::error_text(&too_long).contains("larger than 10 bytes"),
            "{}",
            crate::error_text(&too_long)
        );
        let received = server.join().expect("server");
        let (head, body) = &received[0];
        assert!(head.starts_with("POST / HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Content-Length: 11\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: application/x-www-form-urlencoded\r\n"),
            "{head}"
        );
        assert_eq!(body, b"Action=Test");
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
