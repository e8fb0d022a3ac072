//! `cms-server serve` run as a process on loopback, as an operator runs it:
//! its flags, its own sync loop and its HTTP port (webhook, health,
//! metrics). For tests of what only the real binary does from start to
//! stop. Its ports are free ports of this machine, picked at start, so two
//! runs never collide; the process is killed when dropped.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::wait::wait_until_polling_every;

/// How long the server may take from its start to answering on its HTTP
/// port.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `cms-server serve`.
#[derive(Debug)]
pub struct ServerProcess {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub data: PathBuf,
    /// Its stdout and stderr, for the message of a failing test.
    pub log: PathBuf,
    /// Whether the HTTP port speaks TLS (`--http-tls`).
    pub http_tls: bool,
    child: Child,
}

impl ServerProcess {
    /// Starts `binary serve --data DATA --repo REPO` with free loopback
    /// ports, `extra` flags after them, and waits until its HTTP port
    /// answers `GET /healthz`.
    pub fn start(binary: &Path, data: &Path, repo: &Path, extra: &[&str]) -> Result<ServerProcess> {
        ServerProcess::start_with(
            binary,
            data,
            repo,
            std::net::Ipv4Addr::LOCALHOST,
            extra,
            &[],
        )
    }

    /// Like [`ServerProcess::start`], with its gRPC port on `grpc_address`
    /// (the testbed's bridge address, where instances reach the host; the
    /// port is one found free on loopback) and `environment` added to its
    /// own.
    pub fn start_with(
        binary: &Path,
        data: &Path,
        repo: &Path,
        grpc_address: std::net::Ipv4Addr,
        extra: &[&str],
        environment: &[(&str, &str)],
    ) -> Result<ServerProcess> {
        let [grpc_port, http_port] = free_loopback_ports()?;
        let grpc = SocketAddr::from((grpc_address, grpc_port));
        let http = SocketAddr::from(([127, 0, 0, 1], http_port));
        std::fs::create_dir_all(data)?;
        let log = data.with_extension("log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("Failed to create {}", log.display()))?;
        let child = Command::new(binary)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--repo")
            .arg(repo)
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--http")
            .arg(http.to_string())
            .args(extra)
            .env("NO_COLOR", "1")
            .envs(environment.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("Failed to start {}", binary.display()))?;
        let mut server = ServerProcess {
            grpc,
            http,
            data: data.to_path_buf(),
            log,
            http_tls: extra.contains(&"--http-tls"),
            child,
        };
        wait_until_polling_every(
            Duration::from_millis(50),
            START_TIMEOUT,
            "cms-server to answer GET /healthz",
            || {
                if let Some(status) = server.child.try_wait()? {
                    bail!("cms-server exited with {status}");
                }
                Ok(server
                    .get("/healthz", &[])
                    .ok()
                    .filter(|(status, _)| *status == 200)
                    .map(|_| ()))
            },
        )
        .with_context(|| server.log_text())?;
        Ok(server)
    }

    /// `GET path` on the HTTP port: status and body.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
        self.request("GET", path, headers, b"")
    }

    /// `POST path` on the HTTP port with `body`: status and body.
    pub fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<(u16, String)> {
        self.request("POST", path, headers, body)
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, String)> {
        if self.http_tls {
            https_request(self.http, method, path, headers, body)
        } else {
            http_request(self.http, method, path, headers, body)
        }
    }

    /// The revision the server serves, as its metrics say
    /// (`cms_roles_revision{revision="…"} 1`); `None` before its first
    /// accepted sync.
    pub fn serving_revision(&self) -> Result<Option<String>> {
        let (status, text) = self.get("/metrics", &[])?;
        if status != 200 {
            bail!("GET /metrics answered {status}: {text}");
        }
        Ok(text.lines().find_map(|line| {
            let rest = line.strip_prefix("cms_roles_revision{revision=\"")?;
            let (revision, value) = rest.split_once("\"}")?;
            (value.trim() == "1").then(|| revision.to_string())
        }))
    }

    /// A new dashboard login token, made through the server's admin API
    /// with the bootstrap credential of its data directory, as
    /// `cms-server dashboard-token --data DATA` makes it.
    pub fn dashboard_token(&self) -> Result<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut admin = cms_server::admin::connect(&self.grpc.to_string(), &self.data).await?;
            let made = admin
                .create_dashboard_token(cms_proto::v1::CreateDashboardTokenRequest {})
                .await
                .map_err(|status| {
                    anyhow::anyhow!(
                        "the server refused to make a dashboard token: {:?}: {}",
                        status.code(),
                        status.message()
                    )
                })?;
            Ok(made.into_inner().token)
        })
    }

    /// What the server has logged so far.
    pub fn log_text(&self) -> String {
        format!(
            "cms-server's log ({}):\n{}",
            self.log.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on now and that this
/// process has not given out before ([`crate::ports::unused_loopback_port`]).
pub fn free_loopback_port() -> Result<u16> {
    crate::ports::unused_loopback_port().context("Failed to find a free port")
}

/// Two distinct [`free_loopback_port`]s.
pub fn free_loopback_ports() -> Result<[u16; 2]> {
    Ok([free_loopback_port()?, free_loopback_port()?])
}

/// One HTTPS request with the system's `curl`, which trusts any
/// certificate (the server's own CA signs it; what is tested here is what
/// the server answers, not the TLS, which tests of their own cover):
/// status and body.
pub fn https_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    let mut command = Command::new("curl");
    command
        .args([
            "--silent",
            "--insecure",
            "--max-time",
            "30",
            "--request",
            method,
        ])
        .args(["--write-out", "\n%{http_code}"]);
    if !body.is_empty() {
        command.args(["--data-binary", "@-"]);
    }
    for (name, value) in headers {
        command.arg("--header").arg(format!("{name}: {value}"));
    }
    let mut child = command
        .arg(format!("https://{address}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("Failed to run curl")?;
    child
        .stdin
        .take()
        .context("curl's stdin")?
        .write_all(body)?;
    let output = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, status) = text
        .rsplit_once('\n')
        .context("curl prints the status last")?;
    let status: u16 = status.trim().parse()?;
    if status == 0 {
        bail!("nothing answered https://{address}{path}");
    }
    Ok((status, body.to_string()))
}

/// One HTTP/1.0 request (no chunking, the connection closes after the
/// answer): status and body.
pub fn http_request(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("an HTTP response has a head and a body")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("a status line")?
        .parse()?;
    Ok((status, body.to_string()))
}
