//! Attacks on the credentials, against the real server (`cms-server serve`
//! on loopback, its sled store, its TLS) with the real agent's enrollment
//! (`cms_agent::remote::enroll_instance`) and the real admin CLI:
//!
//! - a token holder: a leaked single-use token after the legitimate
//!   enrollment, an expired token, a token's last use raced by two
//!   instances, a token asked to live a month;
//! - operators: a revoked operator's certificate, a replaced (renewed)
//!   one, a node certificate calling the admin methods, an operator's call
//!   found in the audit log under its name;
//! - first contact: a token whose CA fingerprint is wrong, a server whose
//!   chain is another CA's, and an impostor presenting the real CA's
//!   certificate over a server certificate of its own CA. None may leave an
//!   identity behind.

mod serve_process;
use serve_process::ServeProcess;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cms_proto::v1 as pb;

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

    fn address(&self) -> String {
        self.grpc.to_string()
    }

    /// Runs an admin command against this server with the bootstrap
    /// operator's credential, or with `credential` when given.
    fn cli(&self, args: &[&str], credential: Option<&Path>) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cms-server"));
        command
            .args(args)
            .args(["--server", &self.address()])
            .arg("--data")
            .arg(self.data.path())
            .env_remove("CMS_ADMIN_CREDENTIAL");
        if let Some(credential) = credential {
            command.arg("--credential").arg(credential);
        }
        command.output().expect("run cms-server")
    }

    /// `cms-server token create` with `args`; the token it prints.
    fn token(&self, args: &[&str]) -> String {
        let mut line = vec!["token", "create"];
        line.extend_from_slice(args);
        let output = self.cli(&line, None);
        assert!(output.status.success(), "{}", stderr(&output));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// `cms-server admin add NAME --out DIR`; the folder of its credential.
    fn add_operator(&self, name: &str, out: &Path) -> PathBuf {
        let folder = out.join(name);
        let output = self.cli(
            &["admin", "add", name, "--out", folder.to_str().unwrap()],
            None,
        );
        assert!(output.status.success(), "{}", stderr(&output));
        folder
    }

    /// The audit log as `cms-server audit --format json` prints it.
    fn audit(&self) -> Vec<serde_json::Value> {
        let output = self.cli(&["audit", "--limit", "1000", "--format", "json"], None);
        assert!(output.status.success(), "{}", stderr(&output));
        serde_json::from_slice(&output.stdout).expect("audit JSON")
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Enrolls as the agent does, with `role=web`, into `state_dir`; the error
/// with its causes when refused.
fn enroll(server: &str, token: &str, node: &str, state_dir: &Path) -> Result<String, String> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(cms_agent::remote::enroll_instance(
            state_dir,
            server,
            &cms_agent::remote::EnrollWith::Token(token.to_owned()),
            Some(node.to_owned()),
            Some([("role".to_owned(), "web".to_owned())].into()),
            None,
        ))
        .map(|response| response.node_id)
        .map_err(|error| format!("{error:#}"))
}

/// Whether `dir` holds nothing: missing, or an empty folder.
fn holds_nothing(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none())
}

// ---- tokens ----

#[test]
fn a_leaked_single_use_token_is_refused_after_the_legitimate_enrollment() {
    let server = Server::start();
    let token = server.token(&["--tags", "role=web"]);
    let states = tempfile::tempdir().unwrap();
    enroll(
        &server.address(),
        &token,
        "web-1",
        &states.path().join("web-1"),
    )
    .expect("the legitimate instance enrolls");
    // The same token, read later from user data by someone else.
    let thief = states.path().join("thief");
    let refused = enroll(&server.address(), &token, "web-2", &thief).unwrap_err();
    assert!(refused.contains("it has no uses left"), "{refused}");
    assert!(
        holds_nothing(&thief),
        "the refused enrollment left an identity"
    );
}

#[test]
fn a_token_with_two_uses_enrolls_twice_then_is_refused() {
    let server = Server::start();
    let token = server.token(&["--tags", "role=web", "--uses", "2"]);
    let states = tempfile::tempdir().unwrap();
    for node in ["web-1", "web-2"] {
        enroll(&server.address(), &token, node, &states.path().join(node)).expect(node);
    }
    let third = states.path().join("web-3");
    let refused = enroll(&server.address(), &token, "web-3", &third).unwrap_err();
    assert!(refused.contains("it has no uses left"), "{refused}");
    assert!(holds_nothing(&third));
}

#[test]
fn a_refused_enrollment_says_failed_to_enroll_once() {
    let server = Server::start();
    let token = server.token(&["--tags", "role=api"]);
    let state = tempfile::tempdir().unwrap();
    let refused = enroll(
        &server.address(),
        &token,
        "web-1",
        &state.path().join("web-1"),
    )
    .unwrap_err();
    assert!(refused.starts_with("Failed to enroll: "), "{refused}");
    assert_eq!(refused.matches("Failed to enroll").count(), 1, "{refused}");
}

#[test]
fn an_expired_token_is_refused() {
    let server = Server::start();
    let token = server.token(&["--tags", "role=web", "--ttl", "1s"]);
    // Expiry is a lower bound in whole seconds: two seconds later the
    // token has expired, however the test is scheduled.
    std::thread::sleep(Duration::from_millis(2_100));
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("web-1");
    let refused = enroll(&server.address(), &token, "web-1", &dir).unwrap_err();
    assert!(refused.contains("it expired at"), "{refused}");
    assert!(holds_nothing(&dir));
}

#[test]
fn two_instances_racing_for_a_single_use_token_get_one_certificate() {
    let server = Server::start();
    let token = server.token(&["--tags", "role=web"]);
    let states = tempfile::tempdir().unwrap();
    let barrier = std::sync::Barrier::new(2);
    let outcomes: Vec<(PathBuf, Result<String, String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = ["web-1", "web-2"]
            .into_iter()
            .map(|node| {
                let (barrier, server, token) = (&barrier, &server, &token);
                let dir = states.path().join(node);
                scope.spawn(move || {
                    barrier.wait();
                    let outcome = enroll(&server.address(), token, node, &dir);
                    (dir, outcome)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let enrolled: Vec<_> = outcomes.iter().filter(|(_, o)| o.is_ok()).collect();
    assert_eq!(enrolled.len(), 1, "{outcomes:?}");
    for (dir, outcome) in &outcomes {
        if let Err(error) = outcome {
            assert!(error.contains("it has no uses left"), "{error}");
            assert!(holds_nothing(dir));
        }
    }
}

#[test]
fn a_token_is_single_use_and_an_hour_by_default_and_may_not_live_a_month() {
    let server = Server::start();
    let output = server.cli(
        &[
            "token",
            "create",
            "--tags",
            "env=prod,role=*",
            "--ttl",
            "30d",
        ],
        None,
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("longer than the longest a token may live, 24 hours"),
        "{}",
        stderr(&output)
    );
    server.token(&["--tags", "role=web"]);
    let created = server
        .audit()
        .into_iter()
        .filter(|entry| entry["method"] == "CreateToken" && entry["outcome"] == "ok")
        .map(|entry| entry["target"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(created.len(), 1, "{created:?}");
    assert!(
        created[0].starts_with("scope=role=web uses=1 ttl=3600s id="),
        "{}",
        created[0]
    );
}

// ---- operators ----

#[test]
fn a_revoked_operators_certificate_is_refused_at_once() {
    let server = Server::start();
    let folders = tempfile::tempdir().unwrap();
    let alice = server.add_operator("alice", folders.path());
    let allowed = server.cli(&["nodes"], Some(&alice));
    assert!(allowed.status.success(), "{}", stderr(&allowed));
    let revoked = server.cli(&["admin", "revoke", "alice"], None);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    for line in [&["nodes"][..], &["token", "create", "--tags", "role=web"]] {
        let refused = server.cli(line, Some(&alice));
        assert!(!refused.status.success(), "{line:?} was served");
        assert!(
            stderr(&refused).contains("operator alice") && stderr(&refused).contains("is revoked"),
            "{}",
            stderr(&refused)
        );
    }
    let listed = server.cli(&["admin", "list", "--format", "json"], None);
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap();
    let alice_entry = listed.iter().find(|o| o["name"] == "alice").unwrap();
    assert!(alice_entry["revoked_unix"].is_u64(), "{alice_entry}");
    // The refused calls are in the audit log, under alice's name.
    let refusals = server
        .audit()
        .into_iter()
        .filter(|e| e["operator"] == "alice" && e["outcome"] == "permission_denied")
        .count();
    assert_eq!(refusals, 2);
}

#[test]
fn a_renewed_operators_old_certificate_is_refused() {
    let server = Server::start();
    let folders = tempfile::tempdir().unwrap();
    let alice = server.add_operator("alice", folders.path());
    let old = folders.path().join("alice-old");
    std::fs::create_dir(&old).unwrap();
    for file in ["ca.pem", "admin.pem", "admin.key"] {
        std::fs::copy(alice.join(file), old.join(file)).unwrap();
    }
    // Alice renews her own credential in place.
    let renewed = server.cli(&["admin", "renew", "alice"], Some(&alice));
    assert!(renewed.status.success(), "{}", stderr(&renewed));
    assert!(server.cli(&["nodes"], Some(&alice)).status.success());
    let refused = server.cli(&["nodes"], Some(&old));
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("is not the operator's current one"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn the_last_working_operator_cannot_be_revoked_and_the_bootstrap_one_can_once_another_exists() {
    let server = Server::start();
    let lonely = server.cli(&["admin", "revoke", "admin"], None);
    assert!(!lonely.status.success());
    assert!(
        stderr(&lonely).contains("last operator whose credential works"),
        "{}",
        stderr(&lonely)
    );
    let folders = tempfile::tempdir().unwrap();
    let alice = server.add_operator("alice", folders.path());
    let revoked = server.cli(&["admin", "revoke", "admin"], Some(&alice));
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    let refused = server.cli(&["nodes"], None);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("operator admin"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn an_operators_call_appears_in_the_audit_log_with_its_name() {
    let server = Server::start();
    let folders = tempfile::tempdir().unwrap();
    let alice = server.add_operator("alice", folders.path());
    let output = server.cli(&["token", "create", "--tags", "role=web"], Some(&alice));
    assert!(output.status.success(), "{}", stderr(&output));
    let token = String::from_utf8(output.stdout).unwrap();
    let secret = token.trim().split('.').next().unwrap().to_owned();
    let entries = server.audit();
    let alice_calls: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["operator"] == "alice")
        .collect();
    assert_eq!(alice_calls.len(), 1, "{entries:?}");
    assert_eq!(alice_calls[0]["method"], "CreateToken");
    assert_eq!(alice_calls[0]["outcome"], "ok");
    let added = entries
        .iter()
        .find(|e| e["method"] == "AddOperator")
        .expect("the addition is audited");
    assert_eq!(
        (&added["operator"], &added["target"]),
        (&serde_json::json!("admin"), &serde_json::json!("alice"))
    );
    // Newest last: the audit call itself.
    assert_eq!(entries.last().unwrap()["method"], "GetAudit");
    let printed = serde_json::to_string(&entries).unwrap();
    assert!(
        !printed.contains(&secret),
        "the audit log holds a token secret"
    );
    let text = server.cli(&["audit"], None);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("alice"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_certificate_cannot_call_admin_methods() {
    let server = tokio::task::spawn_blocking(Server::start).await.unwrap();
    let token = server.token(&["--tags", "role=web"]);
    let state = tempfile::tempdir().unwrap();
    let (address, dir) = (server.address(), state.path().to_owned());
    tokio::task::spawn_blocking(move || enroll(&address, &token, "web-1", &dir))
        .await
        .unwrap()
        .expect("enrolled");
    let read = |name: &str| std::fs::read_to_string(state.path().join(name)).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.pem")))
        .identity(tonic::transport::Identity::from_pem(
            read("cert.pem"),
            read("key.pem"),
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", server.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a node may connect");
    let mut admin = pb::admin_client::AdminClient::new(channel);
    let (key, csr) = cms_server::pki::operator_key_and_csr("mallory").unwrap();
    drop(key);
    let codes = vec![
        admin
            .create_token(pb::CreateTokenRequest {
                scope: [("role".into(), "*".into())].into(),
                ttl_seconds: 0,
                uses: 0,
            })
            .await
            .map(|_| ()),
        admin
            .revoke_node(pb::RevokeNodeRequest {
                node_id: "web-1".into(),
            })
            .await
            .map(|_| ()),
        admin
            .list_nodes(pb::ListNodesRequest { selector: None })
            .await
            .map(|_| ()),
        admin
            .add_operator(pb::AddOperatorRequest {
                name: "mallory".into(),
                csr_pem: csr,
                renew: false,
                validity_seconds: 0,
            })
            .await
            .map(|_| ()),
        admin
            .revoke_operator(pb::RevokeOperatorRequest {
                name: "admin".into(),
            })
            .await
            .map(|_| ()),
        admin
            .get_audit(pb::GetAuditRequest { limit: 0 })
            .await
            .map(|_| ()),
    ];
    for (index, outcome) in codes.into_iter().enumerate() {
        let status = outcome.expect_err("a node was served an admin call");
        assert_eq!(
            status.code(),
            tonic::Code::PermissionDenied,
            "call {index}: {status:?}"
        );
        assert!(
            status
                .message()
                .contains("node web-1 may not call admin functions"),
            "{status:?}"
        );
    }
    // Nothing changed: no operator mallory, admin still works.
    let listed = server.cli(&["admin", "list", "--format", "json"], None);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("mallory"));
}

// ---- first contact ----

#[test]
fn enrolling_with_a_wrong_ca_fingerprint_fails_and_writes_no_identity() {
    let server = Server::start();
    let token = server.token(&["--tags", "role=web"]);
    let (secret, fingerprint) = token.split_once('.').unwrap();
    let wrong = format!("{secret}.{}", "0".repeat(fingerprint.len()));
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("web-1");
    let refused = enroll(&server.address(), &wrong, "web-1", &dir).unwrap_err();
    assert!(
        refused.contains("Failed to verify the server") || refused.contains("fingerprint"),
        "{refused}"
    );
    assert!(holds_nothing(&dir), "a refused first contact left files");
    // The secret never reached the server: the token still has its use.
    enroll(&server.address(), &token, "web-1", &dir).expect("the real token still enrolls");
}

#[test]
fn enrolling_against_a_server_of_another_ca_fails_and_writes_no_identity() {
    let real = Server::start();
    let other = Server::start();
    let token = real.token(&["--tags", "role=web"]);
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("web-1");
    let refused = enroll(&other.address(), &token, "web-1", &dir).unwrap_err();
    assert!(refused.contains("fingerprint"), "{refused}");
    assert!(holds_nothing(&dir));
    enroll(&real.address(), &token, "web-1", &dir).expect("the token still has its use");
}

#[test]
fn an_impostor_showing_the_real_ca_over_its_own_server_certificate_gets_no_enrollment() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let real = Server::start();
    let token = real.token(&["--tags", "role=web"]);
    // The real CA's certificate is public; the impostor puts it in its
    // chain above a server certificate from a CA of its own.
    let real_ca = std::fs::read_to_string(real.data.path().join("admin/ca.pem")).unwrap();
    let own_ca = cms_server::pki::CertificateAuthority::create("impostor").unwrap();
    let own = own_ca
        .issue_server_certificate(&["localhost".into()], &["127.0.0.1".parse().unwrap()])
        .unwrap();
    use rustls::pki_types::pem::PemObject as _;
    let chain = vec![
        rustls::pki_types::CertificateDer::from_pem_slice(own.certificate_pem.as_bytes()).unwrap(),
        rustls::pki_types::CertificateDer::from_pem_slice(real_ca.as_bytes()).unwrap(),
    ];
    let key =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(own.private_key_pem.as_bytes()).unwrap();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let impostor = listener.local_addr().unwrap();
    let received = std::thread::spawn(move || {
        // The one connection the agent makes before refusing: any bytes of
        // application data (a token would be some) are counted.
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut connection = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::Stream::new(&mut connection, &mut stream);
        let mut buffer = [0u8; 4096];
        std::io::Read::read(&mut tls, &mut buffer).unwrap_or(0)
    });
    let state = tempfile::tempdir().unwrap();
    let dir = state.path().join("web-1");
    let refused = enroll(&impostor.to_string(), &token, "web-1", &dir).unwrap_err();
    assert!(refused.contains("Failed to verify the server"), "{refused}");
    assert!(holds_nothing(&dir));
    assert_eq!(received.join().unwrap(), 0, "the impostor received data");
    enroll(&real.address(), &token, "web-1", &dir).expect("the token still has its use");
}
