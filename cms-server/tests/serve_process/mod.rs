//! `cms-server serve` as a child process on loopback, for the tests that
//! drive the real binary (its admin CLI, its dashboard): started on free
//! gRPC and HTTP ports with the example roles repository, waited for until
//! its gRPC port answers, killed when dropped.

// A test waits for its server's port in real time; product code reads the
// clock through its clock module.
#![allow(clippy::disallowed_methods, dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `cms-server serve`, killed when dropped.
pub struct ServeProcess {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[path = "../../../integration/src/ports.rs"]
mod ports;

/// Two distinct loopback ports, free at the moment of asking and never
/// given before in this process ([`free_port`]).
pub fn two_free_ports() -> (SocketAddr, SocketAddr) {
    (free_port(), free_port())
}

/// A loopback port free at the moment of asking that this process has not
/// given out before ([`ports::unused_loopback_port`]).
pub fn free_port() -> SocketAddr {
    let port = ports::unused_loopback_port().expect("bind a free port");
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether something listens on `address`. A connection to a loopback
/// port in the ephemeral range that nothing listens on can be given that
/// same port as its own and connect to itself; that is not an answer.
pub fn answers(address: SocketAddr, timeout: Duration) -> bool {
    TcpStream::connect_timeout(&address, timeout)
        .is_ok_and(|stream| stream.local_addr().ok() != Some(address))
}

impl ServeProcess {
    /// `cms-server serve --data DATA … EXTRA`, its output dropped.
    pub fn start(data: &Path, extra: &[&str]) -> ServeProcess {
        ServeProcess::start_with_output(data, extra, None)
    }

    /// [`ServeProcess::start`] with its output appended to `log` (so that
    /// two starts share one log), shown when it exits before its port
    /// answers.
    pub fn start_logging(data: &Path, extra: &[&str], log: &Path) -> ServeProcess {
        ServeProcess::start_with_output(data, extra, Some(log.to_path_buf()))
    }

    /// Starts it on two fresh ports; a server that exits while starting
    /// (another process may have taken a port between its choice and the
    /// server's bind) is started again on others, twice at most.
    fn start_with_output(data: &Path, extra: &[&str], log: Option<PathBuf>) -> ServeProcess {
        let mut attempt = 1;
        loop {
            match ServeProcess::try_start(data, extra, log.as_deref()) {
                Ok(server) => return server,
                Err(exited) if attempt < 3 => {
                    eprintln!("{exited}; starting it again on other ports");
                    attempt += 1;
                }
                Err(exited) => panic!("{exited}"),
            }
        }
    }

    /// One start: the server, or why it exited before it served. Once its
    /// gRPC port answers and it still runs, what serve promises holds: the
    /// HTTP port listens and the address is recorded for the admin
    /// commands.
    fn try_start(data: &Path, extra: &[&str], log: Option<&Path>) -> Result<ServeProcess, String> {
        let (grpc, http) = two_free_ports();
        let mut command = Command::new(env!("CARGO_BIN_EXE_cms-server"));
        command
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--repo")
            .arg(cms_server::commands::EXAMPLE_REPOSITORY)
            .args(["--listen", &grpc.to_string(), "--http", &http.to_string()])
            .args(extra)
            .env("NO_COLOR", "1");
        match log {
            Some(log) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .expect("the log");
                command
                    .stdout(file.try_clone().expect("the log"))
                    .stderr(file);
            }
            None => {
                command.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = command.spawn().expect("start cms-server serve");
        let mut server = ServeProcess { child, grpc, http };
        let exited = |server: &mut ServeProcess| {
            let status = server.child.try_wait().expect("the server's status")?;
            let output = log
                .and_then(|log| std::fs::read_to_string(log).ok())
                .unwrap_or_default();
            Some(format!(
                "cms-server serve on {grpc} and {http} exited while starting: {status}\n{output}"
            ))
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !answers(grpc, Duration::from_millis(200)) {
            if let Some(exited) = exited(&mut server) {
                return Err(exited);
            }
            assert!(Instant::now() < deadline, "the gRPC port did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        let http_listens = answers(http, Duration::from_secs(1));
        let recorded = data.join("admin/server").is_file();
        // What answered may have been another process on a port this
        // server then failed to bind.
        if let Some(exited) = exited(&mut server) {
            return Err(exited);
        }
        assert!(
            http_listens,
            "the gRPC port answered before the HTTP port listened"
        );
        assert!(
            recorded,
            "the gRPC port answered before the address was recorded"
        );
        Ok(server)
    }

    /// Stops the server at once (SIGKILL): what it acknowledged is durable.
    pub fn kill(self) {
        drop(self);
    }
}
