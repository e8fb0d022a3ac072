//! A commit built to exhaust the server (a template of 1,500 nested
//! `{{#if}}` blocks, an include chain 6,000 roles deep) is refused by a
//! running `cms-server serve` like any invalid commit: the process stays
//! up, keeps serving the last good revision, and does so again after a
//! restart, when it meets the same commit at the head of the branch.
//!
//! Before the limits, the server aborted with "fatal runtime error: stack
//! overflow" (exit 134) on the sync, and again on every restart.

// A test or benchmark measures real time; product code reads it through its clock module.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod serve_process;

const BASE_ROLE: &str = "[[package]]\nname = \"curl\"\n";

#[test]
fn a_template_nested_1500_deep_is_refused_and_the_server_keeps_serving_across_a_restart() {
    let mut nested = String::new();
    for _ in 0..1500 {
        nested.push_str("{{#if fact.hostname}}");
    }
    nested.push_str("deep");
    for _ in 0..1500 {
        nested.push_str("{{/if}}");
    }
    assert_bad_commit_is_refused_across_restarts(
        &[
            ("templates/deep.hbs", nested),
            (
                "roles/base.toml",
                format!("{BASE_ROLE}[[file]]\npath = \"/etc/deep\"\ntemplate = \"deep.hbs\"\n"),
            ),
        ],
        "templates/deep.hbs:1:1345: blocks nested 65 deep; the limit is 64",
    );
}

#[test]
fn an_include_chain_6000_roles_deep_is_refused_and_the_server_keeps_serving_across_a_restart() {
    let mut files = Vec::new();
    for r in 0..6000 {
        let include = if r + 1 < 6000 {
            format!("include = [\"r{:04}\"]\n", r + 1)
        } else {
            String::new()
        };
        files.push((
            format!("roles/r{r:04}.toml"),
            format!("{include}[[package]]\nname = \"p{r}\"\n"),
        ));
    }
    let files: Vec<(&str, String)> = files.iter().map(|(p, t)| (p.as_str(), t.clone())).collect();
    assert_bad_commit_is_refused_across_restarts(&files, "the limit is 64");
}

fn assert_bad_commit_is_refused_across_restarts(bad: &[(&str, String)], expected_error: &str) {
    let upstream = Upstream::new();
    let good = upstream.head();
    let data = TempDir::new().unwrap();

    let mut server = Server::start(data.path(), &upstream.path());
    server.wait_for_revision(&good);

    for (path, text) in bad {
        upstream.write(path, text);
    }
    let bad_commit = upstream.commit("a commit built to exhaust the server");

    let sync = server.admin_sync();
    let stderr = String::from_utf8_lossy(&sync.stderr);
    assert_eq!(
        sync.status.code(),
        Some(1),
        "sync of {bad_commit}: {stderr}"
    );
    assert!(stderr.contains(expected_error), "{stderr}");
    assert!(
        stderr.contains(&format!("Refused commit {bad_commit}")),
        "{stderr}"
    );
    server.assert_running();
    assert_eq!(server.revision(), good);

    // A restart meets the same commit at the head of the branch.
    drop(server);
    let mut server = Server::start(data.path(), &upstream.path());
    server.wait_for_grpc();
    assert_eq!(
        server.revision(),
        good,
        "the last good revision is restored"
    );
    let sync = server.admin_sync();
    assert_eq!(sync.status.code(), Some(1));
    server.assert_running();
    assert_eq!(server.revision(), good);
}

/// The value of the secret the tests encrypt: found nowhere on disk.
const SECRET_VALUE: &str = "pw-7f3a9c1e-only-in-memory";

#[test]
fn a_secret_for_another_key_or_damaged_is_refused_with_its_line_and_the_server_keeps_serving() {
    let upstream = Upstream::new();
    let data = TempDir::new().unwrap();
    let mut server = Server::start(data.path(), &upstream.path());
    server.wait_for_revision(&upstream.head());

    // The server's public key, and a scratch checkout that encrypts to it.
    let recipient = cms_server(&["secrets", "recipient", "--data"], Some(data.path()), None);
    assert!(recipient.status.success(), "{recipient:?}");
    let recipient = String::from_utf8(recipient.stdout)
        .unwrap()
        .trim()
        .to_string();
    assert!(recipient.starts_with("age1"), "{recipient}");
    let encrypted = |recipient: &str, key: &str, value: &str| -> String {
        let scratch = TempDir::new().unwrap();
        std::fs::write(
            scratch.path().join("cms.toml"),
            format!("[secrets]\nrecipients = [\"{recipient}\"]\n"),
        )
        .unwrap();
        let output = cms_server(
            &["secrets", "encrypt", "--layer", "common", key, "--repo"],
            Some(scratch.path()),
            Some(value.as_bytes()),
        );
        assert!(output.status.success(), "{output:?}");
        std::fs::read_to_string(scratch.path().join("secrets/common.toml")).unwrap()
    };

    let good_file = encrypted(&recipient, "db_password", SECRET_VALUE);
    upstream.write("secrets/common.toml", &good_file);
    let good = upstream.commit("a secret for the server");
    let sync = server.admin_sync();
    assert_eq!(
        sync.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    assert_eq!(server.revision(), good);

    // A secret encrypted for another key.
    let stranger = TempDir::new().unwrap();
    let other = cms_server(
        &["secrets", "new-identity", "--out"],
        Some(&stranger.path().join("key.txt")),
        None,
    );
    let other = String::from_utf8(other.stdout).unwrap().trim().to_string();
    let foreign = encrypted(&other, "other", "not for this server");
    let with_foreign = format!("{good_file}\n{foreign}");
    let line = with_foreign.lines().position(|l| l == "[other]").unwrap() + 1;
    upstream.write("secrets/common.toml", &with_foreign);
    let refused = upstream.commit("a secret for another key");
    let sync = server.admin_sync();
    let stderr = String::from_utf8_lossy(&sync.stderr);
    assert_eq!(sync.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "secrets/common.toml:{line}:2: secret `other`: not encrypted to this server's key"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("Refused commit {refused}")),
        "{stderr}"
    );
    server.assert_running();
    assert_eq!(server.revision(), good);

    // A damaged ciphertext: one character of its body changed.
    let mut lines: Vec<String> = good_file.lines().map(str::to_string).collect();
    let body = lines
        .iter()
        .position(|l| l.starts_with("-----BEGIN AGE"))
        .unwrap()
        + 2;
    let flipped: String = lines[body]
        .chars()
        .enumerate()
        .map(|(i, c)| match (i, c) {
            (10, 'A') => 'B',
            (10, _) => 'A',
            _ => c,
        })
        .collect();
    lines[body] = flipped;
    upstream.write("secrets/common.toml", &(lines.join("\n") + "\n"));
    upstream.commit("a damaged secret");
    let sync = server.admin_sync();
    let stderr = String::from_utf8_lossy(&sync.stderr);
    assert_eq!(sync.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("secrets/common.toml:1:2: secret `db_password`"),
        "{stderr}"
    );
    server.assert_running();
    assert_eq!(server.revision(), good);

    // A restart decrypts the last good revision again and serves it.
    drop(server);
    let mut server = Server::start(data.path(), &upstream.path());
    server.wait_for_grpc();
    assert_eq!(
        server.revision(),
        good,
        "the last good revision is restored"
    );

    // Nothing the server wrote holds the value: store, mirror, log.
    drop(server);
    let mut files = Vec::new();
    every_file(data.path(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("server.log")));
    assert!(files.iter().any(|f| f.starts_with(data.path().join("db"))));
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes
                .windows(SECRET_VALUE.len())
                .any(|w| w == SECRET_VALUE.as_bytes()),
            "{} holds the secret's value",
            file.display()
        );
        if !file.ends_with("secrets/identity.txt") {
            assert!(
                !bytes.windows(14).any(|w| w == b"AGE-SECRET-KEY"),
                "{} holds the server's identity",
                file.display()
            );
        }
    }
}

/// `cms-server ARGS PATH`, with `stdin` as its standard input.
fn cms_server(args: &[&str], path: Option<&Path>, stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cms-server"))
        .args(args)
        .args(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cms-server");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn every_file(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            every_file(&entry.path(), files);
        } else {
            files.push(entry.path());
        }
    }
}

/// `cms-server serve`, killed when dropped.
struct Server {
    child: Child,
    data: std::path::PathBuf,
    grpc: SocketAddr,
    http: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(data: &Path, repo: &Path) -> Server {
        let (grpc, http) = serve_process::two_free_ports();
        // The log is kept in the data directory: a test that looks for a
        // secret there finds it in the log too.
        std::fs::create_dir_all(data).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("server.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cms-server"))
            .arg("serve")
            .arg("--data")
            .arg(data)
            .arg("--repo")
            .arg(repo)
            .args(["--listen", &grpc.to_string(), "--http", &http.to_string()])
            .args(["--sync-interval", "1h"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start cms-server serve");
        Server {
            child,
            data: data.to_path_buf(),
            grpc,
            http,
        }
    }

    #[track_caller]
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("the server's status") {
            panic!("cms-server serve exited: {status}");
        }
    }

    fn wait_for_grpc(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect_timeout(&self.grpc, Duration::from_millis(200)).is_err() {
            self.assert_running();
            assert!(Instant::now() < deadline, "the gRPC port did not answer");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for_revision(&mut self, commit: &str) {
        self.wait_for_grpc();
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.revision() != commit {
            self.assert_running();
            assert!(Instant::now() < deadline, "{commit} was never served");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The revision the server serves, from its metrics.
    fn revision(&mut self) -> String {
        self.assert_running();
        let mut stream = TcpStream::connect(self.http).expect("connect to the HTTP port");
        write!(
            stream,
            "GET /metrics HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        body.lines()
            .find_map(|line| {
                line.strip_prefix("cms_roles_revision{revision=\"")
                    .and_then(|rest| rest.split('"').next())
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }

    fn admin_sync(&mut self) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cms-server"))
            .arg("sync")
            .args(["--server", &self.grpc.to_string()])
            .arg("--data")
            .arg(&self.data)
            .output()
            .expect("run cms-server sync")
    }
}

/// An upstream roles repository with one valid commit on `main`.
struct Upstream {
    dir: TempDir,
}

impl Upstream {
    fn new() -> Upstream {
        let upstream = Upstream {
            dir: TempDir::new().unwrap(),
        };
        upstream.git(&["init", "--quiet", "--initial-branch=main"]);
        upstream.write("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
        upstream.write("roles/base.toml", BASE_ROLE);
        upstream.commit("a base role");
        upstream
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().to_path_buf()
    }

    fn write(&self, path: &str, text: &str) {
        let path = self.dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn commit(&self, message: &str) -> String {
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--message", message]);
        self.head()
    }

    fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    #[track_caller]
    fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .args([
                "-c",
                "user.name=cms tests",
                "-c",
                "user.email=tests@cms.invalid",
            ])
            .args(["-c", "commit.gpgsign=false"])
            .args(args)
            .current_dir(self.dir.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("the git command line is installed");
        assert!(
            output.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }
}
