//! A real PostgreSQL server for tests of the PostgreSQL store: Debian's
//! `postgresql` binaries, a cluster made with `initdb` in a temporary
//! folder, listening on a free loopback port, run as the `postgres` user
//! (PostgreSQL refuses to run as root). No mock: the store under test talks
//! the real protocol to the real server.
//!
//! Each test takes its own database (`create_database`), so tests of one
//! binary can share one server. The server is started through a small
//! shell watchdog that stops it (immediate shutdown) as soon as the test
//! process is gone and removes the cluster's folder, so a test killed
//! mid-way (or a binary's shared server, a static that is never dropped)
//! leaves neither a `postgres` nor its files behind; dropping
//! [`PostgresServer`] stops it at once.
//!
//! [`PostgresServer::start_with_tls`] starts one with `ssl = on` and a
//! server certificate, made by [`TestCa`] (rcgen) for the TLS tests; the
//! default start has no TLS.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::server_process::free_loopback_port;

/// Where Debian's PostgreSQL binaries are looked for, newest first.
const BINARY_FOLDERS: &[&str] = &[
    "/usr/lib/postgresql/17/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/15/bin",
];

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One running PostgreSQL server in a temporary folder.
#[derive(Debug)]
pub struct PostgresServer {
    bin: PathBuf,
    /// Holds the cluster and the socket folder; removed on drop.
    folder: tempfile::TempDir,
    port: u16,
    uid: u32,
    gid: u32,
    running: Mutex<Option<Child>>,
    databases: AtomicU32,
    /// The `-c` settings of `postgres` beyond the common ones (TLS).
    settings: Vec<String>,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    pub certificate_pem: String,
    pub private_key_pem: String,
}

/// A CA of a test, made fresh (rcgen, ECDSA P-256): it signs the server
/// certificates of [`PostgresServer::start_with_tls`].
#[derive(Debug)]
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    certificate_pem: String,
}

impl TestCa {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> anyhow::Result<TestCa> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params.self_signed(&key)?;
        Ok(TestCa {
            certificate_pem: certificate.pem(),
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// The CA's certificate (what a client names as `sslrootcert`).
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue_server_certificate(&self, names: &[&str]) -> anyhow::Result<CertifiedKey> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>(),
        )?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            certificate_pem: certificate.pem(),
            private_key_pem: key.serialize_pem(),
        })
    }
}

impl PostgresServer {
    /// The server shared by the tests of this process, started on first
    /// use. It stops when the process ends (its watchdog sees to that).
    pub fn shared() -> anyhow::Result<&'static PostgresServer> {
        static SHARED: OnceLock<Result<PostgresServer, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| PostgresServer::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Makes a fresh cluster and starts it on a free loopback port.
    pub fn start() -> anyhow::Result<PostgresServer> {
        PostgresServer::start_with(Vec::new(), None)
    }

    /// As [`PostgresServer::start`], with `ssl = on` and `certificate` as
    /// the server's (clients may still connect without TLS; `sslmode`
    /// decides).
    pub fn start_with_tls(certificate: &CertifiedKey) -> anyhow::Result<PostgresServer> {
        PostgresServer::start_with(vec!["ssl=on".into()], Some(certificate))
    }

    fn start_with(
        mut settings: Vec<String>,
        certificate: Option<&CertifiedKey>,
    ) -> anyhow::Result<PostgresServer> {
        let bin = BINARY_FOLDERS
            .iter()
            .map(PathBuf::from)
            .find(|folder| folder.join("initdb").is_file())
            .with_context(|| {
                format!(
                    "PostgreSQL is not installed (no initdb in {}): apt-get install postgresql",
                    BINARY_FOLDERS.join(", ")
                )
            })?;
        let (uid, gid) = postgres_user()?;
        let folder = tempfile::Builder::new()
            .prefix("cms-postgres-")
            .tempdir()
            .context("Failed to make a folder for the PostgreSQL cluster")?;
        std::fs::set_permissions(folder.path(), std::fs::Permissions::from_mode(0o755))?;
        std::os::unix::fs::chown(folder.path(), Some(uid), Some(gid))?;
        if let Some(certificate) = certificate {
            // PostgreSQL takes a key file only if its owner alone reads it.
            for (name, text, setting) in [
                ("server.crt", &certificate.certificate_pem, "ssl_cert_file"),
                ("server.key", &certificate.private_key_pem, "ssl_key_file"),
            ] {
                let path = folder.path().join(name);
                std::fs::write(&path, text)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
                settings.push(format!("{setting}={}", path.display()));
            }
        }
        let server = PostgresServer {
            bin,
            folder,
            port: free_loopback_port()?,
            uid,
            gid,
            running: Mutex::new(None),
            databases: AtomicU32::new(0),
            settings,
        };
        let output = server
            .command("initdb")
            .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
            .arg("--pgdata")
            .arg(server.data_dir())
            .output()
            .context("Failed to run initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        server.start_again()?;
        Ok(server)
    }

    /// The TCP port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database; its connection URL.
    pub fn create_database(&self) -> anyhow::Result<String> {
        let number = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("cms_test_{}_{number}", std::process::id());
        self.sql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// The connection URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs SQL with `psql` in database `name`; its output (unaligned,
    /// tuples only).
    pub fn sql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let output = self
            .psql(database)
            .args(["-c", sql])
            .output()
            .context("Failed to run psql")?;
        if !output.status.success() {
            bail!(
                "psql {sql:?} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// `psql` on `database` as the superuser, over TCP: no `.psqlrc`,
    /// unaligned tuples only, stopping at the first error.
    fn psql(&self, database: &str) -> Command {
        let mut command = self.command("psql");
        command
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ]);
        command
    }

    /// An interactive psql session on `database`, as the superuser: for a
    /// test that holds a transaction open while the code under test runs.
    pub fn session(&self, database: &str) -> anyhow::Result<SqlSession> {
        let mut child = self
            .psql(database)
            .arg("-q")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("Failed to start psql")?;
        let stdin = child.stdin.take().context("psql's stdin")?;
        let stdout = std::io::BufReader::new(child.stdout.take().context("psql's stdout")?);
        Ok(SqlSession {
            child,
            stdin,
            stdout,
            sent: 0,
        })
    }

    /// The database behind a URL made by [`PostgresServer::url`].
    pub fn database_of(url: &str) -> &str {
        url.rsplit('/').next().unwrap_or(url)
    }

    /// Stops the server at once (as a crash would: no checkpoint), so
    /// clients find the database unreachable until [`start_again`].
    ///
    /// [`start_again`]: PostgresServer::start_again
    pub fn stop(&self) -> anyhow::Result<()> {
        let mut running = self.running.lock().expect("postgres lock");
        if let Some(mut child) = running.take() {
            // The watchdog forwards SIGTERM as an immediate shutdown.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
        // Wait until the port is free again.
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            if Instant::now() > deadline {
                bail!("PostgreSQL on port {} did not stop", self.port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts the server (again) on the same port and waits until it
    /// accepts connections.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let mut running = self.running.lock().expect("postgres lock");
        if running.is_some() {
            return Ok(());
        }
        let log = self.folder.path().join("postgres.log");
        let postgres = self.bin.join("postgres");
        // The watchdog: postgres in the background, stopped at once when
        // the test process (its pid passed in; looked for in /proc, since
        // the postgres user may not signal it) is gone or the watchdog is
        // told to stop. When the test process is gone, nobody will drop
        // the folder (the shared server is a static, never dropped; a
        // killed test drops nothing), so the watchdog removes the cluster
        // itself: a folder of about 400 MB per test binary otherwise.
        let script = r#"
            "$0" "$@" &
            pg=$!
            trap 'kill -QUIT $pg 2>/dev/null; wait $pg; exit 0' TERM INT
            while [ -d "/proc/$WATCHED" ] && kill -0 $pg 2>/dev/null; do sleep 0.2; done
            kill -QUIT $pg 2>/dev/null
            wait $pg
            [ -d "/proc/$WATCHED" ] || rm -rf "$CLUSTER"
        "#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(&postgres)
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1"])
            .arg("-k")
            .arg(self.folder.path())
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=400", "-c", "shared_buffers=64MB"])
            .args(
                self.settings
                    .iter()
                    .flat_map(|setting| ["-c", setting.as_str()]),
            )
            .env("WATCHED", std::process::id().to_string())
            .env("CLUSTER", self.folder.path())
            .uid(self.uid)
            .gid(self.gid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("Failed to start postgres")?;
        *running = Some(child);
        drop(running);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .map(|status| status.success())
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                bail!(
                    "PostgreSQL did not accept connections on port {} within {START_TIMEOUT:?}: {}",
                    self.port,
                    text.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.folder.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        command
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(self.folder.path());
        command
    }

    /// The folder that holds the cluster (for a test's diagnostics).
    pub fn folder(&self) -> &Path {
        self.folder.path()
    }
}

/// One psql process kept open ([`PostgresServer::session`]). Statements
/// are sent, and waited for by a marker psql echoes after them, so that a
/// test can send one that blocks and wait for it later.
pub struct SqlSession {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    sent: u32,
}

impl SqlSession {
    /// Sends `sql` without waiting; [`wait`](Self::wait) with the number
    /// returned waits for it.
    pub fn send(&mut self, sql: &str) -> anyhow::Result<u32> {
        use std::io::Write as _;
        self.sent += 1;
        write!(self.stdin, "{sql}\n\\echo cms-done-{}\n", self.sent)
            .and_then(|()| self.stdin.flush())
            .context("Failed to write to psql")?;
        Ok(self.sent)
    }

    /// Waits for statement `number` to finish; its output.
    pub fn wait(&mut self, number: u32) -> anyhow::Result<String> {
        use std::io::BufRead as _;
        let marker = format!("cms-done-{number}");
        let mut output = String::new();
        loop {
            let mut line = String::new();
            if self
                .stdout
                .read_line(&mut line)
                .context("Failed to read psql")?
                == 0
            {
                bail!("psql ended before {marker} (a failed statement ends it):\n{output}");
            }
            if line.trim_end() == marker {
                return Ok(output.trim_end().to_string());
            }
            output.push_str(&line);
        }
    }

    /// Sends `sql` and waits for it.
    pub fn run(&mut self, sql: &str) -> anyhow::Result<String> {
        let number = self.send(sql)?;
        self.wait(number)
    }
}

impl Drop for SqlSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let user = nix::unistd::User::from_name("postgres")
        .context("Failed to look up the postgres user")?
        .context("There is no postgres user: apt-get install postgresql")?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}
