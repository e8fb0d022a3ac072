//! `cms-server serve` binds its ports only once its CA and admin credential
//! exist: a script that waits for the port to answer and then runs
//! `cms-server token create` at once must succeed (it once failed with
//! "Failed to read the admin credential …/admin/ca.pem").

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod serve_process;

/// The server process, killed when the test ends however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn token_create_works_the_moment_the_grpc_port_answers() {
    let data = tempfile::tempdir().expect("tempdir");
    let (grpc, http) = serve_process::two_free_ports();
    let mut server = Server(
        Command::new(env!("CARGO_BIN_EXE_cms-server"))
            .arg("serve")
            .arg("--data")
            .arg(data.path())
            .arg("--repo")
            .arg(cms_server::commands::EXAMPLE_REPOSITORY)
            .args(["--listen", &grpc.to_string(), "--http", &http.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start cms-server serve"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !serve_process::answers(grpc, Duration::from_millis(200)) {
        if let Some(status) = server.0.try_wait().expect("the server's status") {
            panic!("cms-server serve exited before its port answered: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the gRPC port did not answer within a minute"
        );
        std::thread::yield_now();
    }
    let output = Command::new(env!("CARGO_BIN_EXE_cms-server"))
        .args(["token", "create", "--tags", "role=web"])
        .args(["--server", &grpc.to_string()])
        .arg("--data")
        .arg(data.path())
        .output()
        .expect("run cms-server token create");
    assert!(
        output.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).trim().is_empty(),
        "token create printed no token"
    );
}
