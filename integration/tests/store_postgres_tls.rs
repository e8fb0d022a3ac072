//! TLS between cms-server and PostgreSQL, against real PostgreSQL servers
//! with `ssl = on` (`PostgresServer::start_with_tls`) and certificates of a
//! test CA: what each `sslmode` accepts and refuses, the messages of a
//! refusal, and that the connections really are encrypted (the server's
//! own `pg_stat_ssl` says so), the replicas' bus and lock connections
//! included.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use cms_integration::{
    EXAMPLE_REPOSITORY, GitRepo, PostgresServer, ServerProcess, TestCa, build_workspace_binary,
};
use cms_server::store::{PostgresConfig, PostgresStore, Store as _, StoreKey, conformance};

/// The TLS server every test shares: its certificate is for `localhost`
/// only, signed by the test CA whose certificate is in `ca_file`.
struct TlsServer {
    server: PostgresServer,
    ca_file: PathBuf,
    _folder: tempfile::TempDir,
}

fn tls_server() -> &'static TlsServer {
    static SHARED: OnceLock<TlsServer> = OnceLock::new();
    SHARED.get_or_init(|| {
        let ca = TestCa::new("cms test database CA").expect("make a CA");
        let certificate = ca
            .issue_server_certificate(&["localhost"])
            .expect("issue the server certificate");
        let server = PostgresServer::start_with_tls(&certificate).expect("start postgres with TLS");
        let folder = tempfile::tempdir().unwrap();
        let ca_file = folder.path().join("ca.pem");
        std::fs::write(&ca_file, ca.certificate_pem()).unwrap();
        TlsServer {
            server,
            ca_file,
            _folder: folder,
        }
    })
}

fn key() -> StoreKey {
    StoreKey::parse(&StoreKey::generate_text()).expect("a generated key parses")
}

/// A URL of a new database on `server`, reached as `host`, with `parameters`
/// (the password is there to show it never reaches a message; the test
/// servers trust every local connection).
fn url(server: &PostgresServer, host: &str, parameters: &str) -> String {
    let database = PostgresServer::database_of(&server.create_database().unwrap()).to_string();
    format!(
        "postgres://postgres:s3cret-password@{host}:{}/{database}?{parameters}",
        server.port()
    )
}

fn verify(mode: &str, ca_file: &Path) -> String {
    format!("sslmode={mode}&sslrootcert={}", ca_file.display())
}

fn open(url: &str) -> Result<PostgresStore, String> {
    PostgresStore::open(&PostgresConfig::new(url, key()))
        .map_err(|error| cms_server::store::error_chain(&error))
}

/// Whether each connection of `application` to `url`'s database is TLS, by
/// the server's own account (`pg_stat_ssl`), e.g. `["t", "t"]`.
fn tls_of_connections(server: &PostgresServer, url: &str, application: &str) -> Vec<String> {
    let database = PostgresServer::database_of(url.split('?').next().unwrap());
    let rows = server
        .sql(
            "postgres",
            &format!(
                "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                 WHERE a.datname = '{database}' AND a.application_name = '{application}'"
            ),
        )
        .unwrap();
    rows.lines().map(str::to_string).collect()
}

#[test]
fn the_store_works_with_verify_full_and_its_connections_use_tls() {
    let tls = tls_server();
    let url = url(
        &tls.server,
        "localhost",
        &verify("verify-full", &tls.ca_file),
    );
    let store = open(&url).unwrap();
    store
        .put_token(&conformance::token("t", Some(2), 1_000))
        .unwrap();
    assert_eq!(store.consume_token("t", 10).unwrap().id, "t");

    let connections = tls_of_connections(&tls.server, &url, "cms-server");
    assert!(!connections.is_empty(), "the store holds no connection");
    assert!(
        connections.iter().all(|ssl| ssl == "t"),
        "a store connection without TLS: {connections:?}"
    );
}

/// The attack verify-full exists for: a man in the middle answers at the
/// database's address with a certificate of its own, for the right name.
#[test]
fn a_server_certificate_from_another_ca_is_refused_by_verify_full_as_a_man_in_the_middle() {
    let tls = tls_server();
    let attacker_ca = TestCa::new("attacker CA").unwrap();
    let attacker = PostgresServer::start_with_tls(
        &attacker_ca
            .issue_server_certificate(&["localhost"])
            .unwrap(),
    )
    .expect("start the man in the middle");
    let url = url(&attacker, "localhost", &verify("verify-full", &tls.ca_file));

    let error = open(&url).unwrap_err();
    assert!(
        error.contains("the certificate of the PostgreSQL server localhost (sslmode=verify-full) is not signed by a CA of sslrootcert")
            && error.contains(&tls.ca_file.display().to_string())
            && error.contains("man in the middle"),
        "{error}"
    );
    assert!(!error.contains("s3cret-password"), "{error}");
}

#[test]
fn a_wrong_host_name_is_refused_by_verify_full_and_accepted_by_verify_ca() {
    let tls = tls_server();
    // The certificate is for localhost; 127.0.0.1 is the same server under
    // a name the certificate does not carry.
    let full = url(
        &tls.server,
        "127.0.0.1",
        &verify("verify-full", &tls.ca_file),
    );
    let error = open(&full).unwrap_err();
    assert!(
        error.contains("the certificate of the PostgreSQL server 127.0.0.1 (sslmode=verify-full) is not issued for the host name 127.0.0.1"),
        "{error}"
    );
    assert!(!error.contains("s3cret-password"), "{error}");

    let ca_only = url(&tls.server, "127.0.0.1", &verify("verify-ca", &tls.ca_file));
    let store = open(&ca_only).unwrap();
    store
        .put_token(&conformance::token("t", Some(1), 1_000))
        .unwrap();
    let connections = tls_of_connections(&tls.server, &ca_only, "cms-server");
    assert!(
        !connections.is_empty() && connections.iter().all(|ssl| ssl == "t"),
        "{connections:?}"
    );
}

#[test]
fn sslmode_require_encrypts_without_checking_the_certificate_and_disable_does_not_encrypt() {
    let tls = tls_server();
    // No sslrootcert: any certificate is taken, as libpq does.
    let require = url(&tls.server, "127.0.0.1", "sslmode=require");
    let store = open(&require).unwrap();
    store
        .put_token(&conformance::token("t", Some(1), 1_000))
        .unwrap();
    let connections = tls_of_connections(&tls.server, &require, "cms-server");
    assert!(
        !connections.is_empty() && connections.iter().all(|ssl| ssl == "t"),
        "{connections:?}"
    );

    let disable = url(&tls.server, "localhost", "sslmode=disable");
    let store = open(&disable).unwrap();
    store
        .put_token(&conformance::token("t", Some(1), 1_000))
        .unwrap();
    let connections = tls_of_connections(&tls.server, &disable, "cms-server");
    assert!(
        !connections.is_empty() && connections.iter().all(|ssl| ssl == "f"),
        "{connections:?}"
    );
}

#[test]
fn without_sslmode_tls_is_used_when_the_server_offers_it() {
    let tls = tls_server();
    let url = url(&tls.server, "localhost", "connect_timeout=5");
    let store = open(&url).unwrap();
    store
        .put_token(&conformance::token("t", Some(1), 1_000))
        .unwrap();
    let connections = tls_of_connections(&tls.server, &url, "cms-server");
    assert!(
        !connections.is_empty() && connections.iter().all(|ssl| ssl == "t"),
        "{connections:?}"
    );
}

#[test]
fn sslmode_require_against_a_server_without_tls_is_refused() {
    let plain = PostgresServer::shared().expect("start postgres");
    let url = url(plain, "127.0.0.1", "sslmode=require");
    let error = open(&url).unwrap_err();
    assert!(
        error.contains(&format!("127.0.0.1:{}", plain.port()))
            && error.contains("the server does not support TLS, and the URL's sslmode requires it"),
        "{error}"
    );
    assert!(!error.contains("s3cret-password"), "{error}");
}

#[test]
fn sslmode_disable_and_no_sslmode_still_work_on_a_server_without_tls() {
    let plain = PostgresServer::shared().expect("start postgres");
    for parameters in ["sslmode=disable", "connect_timeout=5"] {
        let url = url(plain, "127.0.0.1", parameters);
        let store = open(&url).unwrap_or_else(|error| panic!("{parameters}: {error}"));
        store
            .put_token(&conformance::token("t", Some(1), 1_000))
            .unwrap();
    }
}

#[test]
fn a_missing_sslrootcert_is_named_before_connecting() {
    let tls = tls_server();
    let missing = tls.ca_file.with_file_name("no-such-ca.pem");
    let url = url(&tls.server, "localhost", &verify("verify-full", &missing));
    let error = open(&url).unwrap_err();
    assert!(
        error.contains(&format!("sslrootcert {}", missing.display())),
        "{error}"
    );
}

/// SCRAM with `tls-server-end-point` channel binding: what password
/// authentication (Aurora's) does over TLS, and what binds the password
/// exchange to this TLS session.
#[test]
fn password_authentication_with_channel_binding_works_over_verified_tls() {
    let tls = tls_server();
    let data = tls.server.folder().join("data");
    let hba = data.join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    if !rules.contains("cms_scram") {
        std::fs::write(
            &hba,
            format!("hostssl all cms_scram 127.0.0.1/32 scram-sha-256\n{rules}"),
        )
        .unwrap();
        tls.server
            .sql(
                "postgres",
                "SET password_encryption = 'scram-sha-256';
                 CREATE ROLE cms_scram LOGIN SUPERUSER PASSWORD 'scram-pw';
                 SELECT pg_reload_conf()",
            )
            .unwrap();
    }
    let database = PostgresServer::database_of(&tls.server.create_database().unwrap()).to_string();
    let url = format!(
        "postgres://cms_scram:scram-pw@localhost:{}/{database}?channel_binding=require&{}",
        tls.server.port(),
        verify("verify-full", &tls.ca_file)
    );
    let store = open(&url).unwrap();
    store
        .put_token(&conformance::token("t", Some(1), 1_000))
        .unwrap();

    let wrong = url.replace("scram-pw@", "wrong-pw@");
    let error = open(&wrong).unwrap_err();
    assert!(error.contains("password authentication failed"), "{error}");
    assert!(!error.contains("wrong-pw"), "{error}");
}

/// `cms-server serve` on a verify-full URL: the store's pool, the fleet
/// message bus and the leader lock session (`cms-server replica`) all run
/// over TLS, and the server serves.
#[test]
fn a_server_on_a_verify_full_url_opens_every_connection_with_tls() {
    let tls = tls_server();
    let binary = build_workspace_binary("cms-server", "cms-server").expect("build cms-server");
    let url = url(
        &tls.server,
        "localhost",
        &verify("verify-full", &tls.ca_file),
    );
    let folder = tempfile::tempdir().unwrap();
    let key_file = folder.path().join("store.key");
    std::fs::write(&key_file, StoreKey::generate_text()).unwrap();
    let key_arg = key_file.display().to_string();
    // A shared store needs its roles in git (a plain folder is refused).
    let roles = GitRepo::copy_of(Path::new(EXAMPLE_REPOSITORY), &folder.path().join("roles"))
        .expect("the example roles in git");
    let server = ServerProcess::start(
        &binary,
        &folder.path().join("data"),
        roles.path(),
        &["--store", &url, "--store-key-file", &key_arg],
    )
    .expect("serve on postgres over TLS");
    let (status, body) = server.get("/healthz", &[]).unwrap();
    assert_eq!(status, 200, "{body}");

    // The bus and the lock session connect in the background: 20 s at most.
    let mut replica = Vec::new();
    for _ in 0..200 {
        replica = tls_of_connections(&tls.server, &url, "cms-server replica");
        if replica.len() >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        replica.len() >= 2 && replica.iter().all(|ssl| ssl == "t"),
        "the bus and the lock session: {replica:?}\n{}",
        server.log_text()
    );
    let store = tls_of_connections(&tls.server, &url, "cms-server");
    assert!(
        !store.is_empty() && store.iter().all(|ssl| ssl == "t"),
        "the store's pool: {store:?}"
    );
}
