//! The admin commands as an operator types them, against the real server
//! (`cms-server serve` on loopback) and the real binary: where they find
//! the server when `--server` is not given, and what they say about a node
//! the server does not know.

mod serve_process;
use serve_process::{ServeProcess, free_port};

use std::net::SocketAddr;
use std::process::{Command, Output};

/// A `cms-server serve` process on loopback with a data directory of its
/// own, killed when the test ends however it ends.
struct Server {
    /// Held: the server is killed when the test's `Server` drops.
    _process: ServeProcess,
    data: tempfile::TempDir,
    grpc: SocketAddr,
}

impl Server {
    fn start() -> Server {
        let data = tempfile::tempdir().expect("tempdir");
        let process = ServeProcess::start(data.path(), &[]);
        Server {
            grpc: process.grpc,
            _process: process,
            data,
        }
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
