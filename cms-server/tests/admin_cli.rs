//! The admin commands as an operator types them, against the real server
//! (`cms-server serve` on loopback) and the real binary: where they find
//! the server when `--server` is not given, and what they say about a node
//! the server does not know.

// A test waits for its server's port in real time; product code reads the
// clock through its clock module.
#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `cms-server serve` process on loopback with a data directory of its
/// own, killed when the test ends however it ends.
struct Server {
    child: Child,
    data: tempfile::TempDir,
    grpc: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free at the moment of asking.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("its address")
}

impl Server {
    fn start() -> Server {
        let data = tempfile::tempdir().expect("tempdir");
        let (grpc, http) = (free_port(), free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_cms-server"))
            .arg("serve")
            .arg("--data")
            .arg(data.path())
            .arg("--repo")
            .arg(cms_server::commands::EXAMPLE_REPOSITORY)
            .args(["--listen", &grpc.to_string(), "--http", &http.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cms-server serve");
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect_timeout(&grpc, Duration::from_millis(200)).is_err() {
            if let Some(status) = child.try_wait().expect("the server's status") {
                panic!("cms-server serve exited before its port answered: {status}");
            }
            assert!(Instant::now() < deadline, "the gRPC port did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
        Server { child, data, grpc }
    }

    /// `cms-server ARGS --data DATA`, without `--server` and with
    /// `CMS_SERVER` as given.
    fn cli(&self, args: &[&str], cms_server: Option<&str>) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cms-server"));
        command
            .args(args)
            .arg("--data")
            .arg(self.data.path())
            .env_remove("CMS_ADMIN_CREDENTIAL")
            .env_remove("CMS_SERVER");
        if let Some(address) = cms_server {
            command.env("CMS_SERVER", address);
        }
        command.output().expect("run cms-server")
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn admin_commands_find_the_server_from_the_address_it_recorded_in_its_data_directory() {
    let server = Server::start();
    let output = server.cli(&["nodes"], None);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("NODE"),
        "{output:?}"
    );
}

#[test]
fn admin_commands_take_the_server_address_from_cms_server() {
    let server = Server::start();
    // Without the recorded address, only CMS_SERVER names the port.
    std::fs::remove_file(server.data.path().join("admin/server")).expect("the recorded address");
    let output = server.cli(&["nodes"], Some(&server.grpc.to_string()));
    assert!(output.status.success(), "{}", stderr(&output));
    // And a wrong one is used, not silently replaced by a default.
    let output = server.cli(&["nodes"], Some(&free_port().to_string()));
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
}

#[test]
fn reports_of_a_node_the_server_does_not_know_is_an_error_naming_it() {
    let server = Server::start();
    let output = server.cli(&["reports", "nosuchnode"], None);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(
        stderr(&output),
        "error: no node nosuchnode\nhint: `cms-server nodes` lists the nodes the server knows\n"
    );
    assert!(output.stdout.is_empty(), "{output:?}");
}
