//! The PostgreSQL store against a real PostgreSQL (`PostgresServer`: Debian's
//! binaries, a cluster in a temporary folder): every behaviour the `Store`
//! trait promises (`cms_server::store::conformance`), then what only a
//! shared database brings: two replicas on one database, migrations applied
//! once, the CA key encrypted at rest, `store migrate` both ways, and the
//! database going away and coming back (`/healthz`, a dashboard login).

#![allow(clippy::disallowed_methods)]

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use cms_integration::{
    EXAMPLE_REPOSITORY, GitRepo, PostgresServer, ServerProcess, build_workspace_binary,
    free_loopback_port,
};
use cms_server::store::{
    CaRecord, PostgresConfig, PostgresStore, SharedStore, Store, StoreConfig, StoreError, StoreKey,
    StoreLocation, conformance,
};

fn key() -> StoreKey {
    StoreKey::parse(&StoreKey::generate_text()).expect("a generated key parses")
}

fn open(url: &str, key: &StoreKey) -> PostgresStore {
    PostgresStore::open(&PostgresConfig::new(url, key.clone()))
        .unwrap_or_else(|error| panic!("open {url}: {}", cms_server::store::error_chain(&error)))
}

fn new_database() -> String {
    PostgresServer::shared()
        .expect("start postgres")
        .create_database()
        .expect("create a database")
}

/// Each check of the trait, on a database of its own. A failing check is
/// named, and the others still run.
#[test]
fn every_store_conformance_check_holds_on_postgres() {
    let key = key();
    let mut failed = Vec::new();
    for (name, check) in conformance::all() {
        let store = open(&new_database(), &key);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&store)));
        if outcome.is_err() {
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "failed on PostgreSQL: {failed:?}");
}

#[test]
fn two_replicas_using_one_token_at_once_never_use_it_more_than_allowed() {
    const USES: u32 = 10;
    const THREADS: usize = 16;
    const ATTEMPTS: usize = 4;
    let url = new_database();
    let key = key();
    let replicas = [Arc::new(open(&url, &key)), Arc::new(open(&url, &key))];
    replicas[0]
        .put_token(&conformance::token("t", Some(USES), 1_000))
        .unwrap();
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let (store, barrier) = (replicas[i % 2].clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                (0..ATTEMPTS)
                    .map(|_| store.consume_token("t", 10))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outcomes: Vec<Result<_, StoreError>> = handles
        .into_iter()
        .flat_map(|handle| handle.join().expect("thread"))
        .collect();
    let mut left: Vec<u32> = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().ok())
        .map(|token| token.uses_left.expect("limited"))
        .collect();
    left.sort();
    assert_eq!(left, (0..USES).collect::<Vec<_>>());
    for outcome in &outcomes {
        if let Err(error) = outcome {
            assert!(matches!(error, StoreError::TokenUsedUp), "{error}");
        }
    }
    assert_eq!(replicas[1].token("t").unwrap().unwrap().uses_left, Some(0));
}

/// A deadlock between the store and another session: the store's
/// `remove_node` deletes the node's reports, then waits for the node's
/// row, which the other session holds; the other session then waits for a
/// report row the store holds. PostgreSQL ends the transaction that waited
/// longest (the store's: the other session's `deadlock_timeout` is 60 s)
/// with 40P01, and the store makes it again once the other commits.
#[test]
fn a_transaction_postgresql_ends_as_a_deadlock_victim_is_made_again_and_succeeds() {
    let url = new_database();
    let store = Arc::new(open(&url, &key()));
    store.put_node(&conformance::node("n")).unwrap();
    store
        .put_report(&conformance::report("n", "r1", 1_000))
        .unwrap();
    let server = PostgresServer::shared().unwrap();
    let database = PostgresServer::database_of(&url).to_string();
    let mut other = server.session(&database).unwrap();
    other
        .run("SET deadlock_timeout = '60s'; BEGIN; UPDATE nodes SET version = version WHERE id = 'n';")
        .unwrap();
    let remover = {
        let store = store.clone();
        std::thread::spawn(move || store.remove_node("n"))
    };
    // The store's transaction now waits for the node row.
    // Of sessions on this test's database: pg_locks is the whole server's,
    // which the other tests share (a row lock's wait names no database).
    let waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted \
                   AND pid IN (SELECT pid FROM pg_stat_activity WHERE datname = current_database())";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.sql(&database, waiting).unwrap() != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "remove_node never waited for the row lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // This waits for the report row the store holds: a deadlock. It
    // returns once the store's transaction, its victim, was rolled back.
    other
        .run("DELETE FROM reports WHERE node_id = 'n';")
        .unwrap();
    other.run("COMMIT;").unwrap();
    let removed = remover
        .join()
        .expect("thread")
        .map_err(|error| cms_server::store::error_chain(&error));
    assert_eq!(removed, Ok(true), "the deadlock victim was not made again");
    assert!(store.node("n").unwrap().is_none());
    // The deadlock happened (the statistics are flushed within a second
    // or so).
    let deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.sql(&database, deadlocks).unwrap() == "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL counted no deadlock"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn replicas_opening_a_new_database_together_apply_each_migration_once() {
    const REPLICAS: usize = 6;
    let url = new_database();
    let key = key();
    let barrier = Arc::new(Barrier::new(REPLICAS));
    let handles: Vec<_> = (0..REPLICAS)
        .map(|_| {
            let (url, key, barrier) = (url.clone(), key.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                PostgresStore::open(&PostgresConfig::new(url, key))
                    .map(drop)
                    .map_err(|error| cms_server::store::error_chain(&error))
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("thread").expect("every replica opens");
    }
    let server = PostgresServer::shared().unwrap();
    let database = PostgresServer::database_of(&url);
    assert_eq!(
        server
            .sql(
                database,
                "SELECT version || ':' || name FROM schema_migrations ORDER BY version"
            )
            .unwrap(),
        "1:0001_initial\n2:0002_dashboard_sessions\n3:0003_dashboard_tokens\n4:0004_dashboard_session_tokens"
    );
    // A later start applies nothing and still opens.
    open(&url, &key).put_node(&conformance::node("n1")).unwrap();
}

#[test]
fn a_database_migrated_by_a_newer_server_is_refused() {
    let url = new_database();
    let key = key();
    drop(open(&url, &key));
    let server = PostgresServer::shared().unwrap();
    server
        .sql(
            PostgresServer::database_of(&url),
            "INSERT INTO schema_migrations (version, name) VALUES (99, '0099_future')",
        )
        .unwrap();
    let error = PostgresStore::open(&PostgresConfig::new(url, key)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("its schema is at version 99, this server knows versions up to 4"),
        "{error}"
    );
}

#[test]
fn the_ca_key_is_only_ciphertext_in_the_database_and_another_key_is_refused() {
    let url = new_database();
    let key = key();
    let store = open(&url, &key);
    let ca = CaRecord {
        certificate_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        private_key_pem: "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----\n"
            .into(),
    };
    store.put_ca(&ca).unwrap();
    assert_eq!(store.ca().unwrap(), Some(ca.clone()));
    let server = PostgresServer::shared().unwrap();
    let database = PostgresServer::database_of(&url);
    // Anywhere in the database: a dump holds no key material.
    let dump = server
        .sql(
            database,
            "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM ca) AS t",
        )
        .unwrap();
    assert!(dump.contains("BEGIN CERTIFICATE"), "{dump}");
    assert!(
        !dump.contains("PRIVATE KEY") && !dump.contains("MIGHAgEAMBMG"),
        "{dump}"
    );
    let hex = server
        .sql(database, "SELECT encode(private_key_sealed, 'hex') FROM ca")
        .unwrap();
    let plain_hex: String = ca
        .private_key_pem
        .bytes()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!hex.contains(&plain_hex), "{hex}");
    drop(store);

    let error = PostgresStore::open(&PostgresConfig::new(url.clone(), self::key())).unwrap_err();
    assert!(matches!(error, StoreError::WrongKey { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("is not the key its secrets were encrypted with"),
        "{error}"
    );

    // Without a key at all, the start is refused with how to make one.
    let no_key = StoreConfig {
        location: Some(StoreLocation::Postgres(url)),
        key_file: None,
        pool_size: None,
    };
    let error = cms_server::store::open_configured(Path::new("/nonexistent"), &no_key).unwrap_err();
    assert!(
        error.to_string().contains("cms-server store keygen"),
        "{error}"
    );
}

#[test]
fn an_unreachable_database_at_open_is_one_line_naming_host_and_port_but_not_the_password() {
    let port = free_loopback_port().unwrap();
    let url = format!("postgres://cms:hunter2secret@127.0.0.1:{port}/cms");
    let started = cms_server::clock::instant();
    let error = PostgresStore::open(&PostgresConfig::new(url, key())).unwrap_err();
    let text = cms_server::store::error_chain(&error);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(error, StoreError::Unavailable { .. }), "{text}");
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2secret"), "{text}");
    assert!(!text.contains('\n'), "{text}");

    let error = StoreLocation::parse("postgres://cms@db:notaport/cms").unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("Failed to read the store URL"),
        "{error}"
    );
}

#[test]
fn a_stopped_database_fails_calls_as_unavailable_within_seconds_and_the_store_recovers() {
    // A server of its own: stopping the shared one would fail other tests.
    let server = PostgresServer::start().expect("start postgres");
    let url = server.create_database().unwrap();
    let store = open(&url, &key());
    store.put_node(&conformance::node("n1")).unwrap();
    store
        .put_report(&conformance::report("n1", "r1", 1_000))
        .unwrap();

    server.stop().unwrap();
    for attempt in 0..3 {
        let started = cms_server::clock::instant();
        let error = store
            .put_report(&conformance::report("n1", "r2", 2_000))
            .unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_secs(10),
            "attempt {attempt}: {elapsed:?}"
        );
        assert!(matches!(error, StoreError::Unavailable { .. }), "{error}");
        assert!(
            error.to_string().ends_with("retry in a few seconds"),
            "{error}"
        );
        assert_eq!(tonic::Status::from(error).code(), tonic::Code::Unavailable);
    }
    let error = store.node("n1").unwrap_err();
    assert!(matches!(error, StoreError::Unavailable { .. }), "{error}");
    assert!(store.check_writable().is_err());

    server.start_again().unwrap();
    store
        .check_writable()
        .expect("healthy again without a restart");
    assert_eq!(
        store
            .put_report(&conformance::report("n1", "r2", 2_000))
            .unwrap(),
        cms_server::store::ReportWrite::Stored
    );
    assert_eq!(store.reports("n1", 10).unwrap().len(), 2);
}

/// `cms-server store migrate` from sled to PostgreSQL and back to a new
/// sled store: every kind counted equal at each step, and the records the
/// same at the end.
#[test]
fn store_migrate_copies_sled_to_postgres_and_back_with_equal_counts() {
    let binary = build_workspace_binary("cms-server", "cms-server").expect("build cms-server");
    let folder = tempfile::tempdir().unwrap();
    let original = folder.path().join("original");
    {
        let store = cms_server::store::open(&original.join("db")).unwrap();
        conformance::fill_with_every_kind(&*store);
    }
    let key_file = folder.path().join("store.key");
    std::fs::write(&key_file, format!("{}\n", StoreKey::generate_text())).unwrap();
    let url = new_database();
    let copied = folder.path().join("copied");
    let migrate = |from: &str, to: &str| {
        let output = Command::new(&binary)
            .args(["store", "migrate", "--from", from, "--to", to])
            .arg("--store-key-file")
            .arg(&key_file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stdout, stderr)
    };
    let from_sled = format!("sled:{}", original.display());
    let (code, stdout, stderr) = migrate(&from_sled, &url);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("every count matches"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("reports") && line.contains("1203")),
        "{stdout}"
    );
    // Into a store that holds records: refused, nothing written.
    let (code, _, stderr) = migrate(&from_sled, &url);
    assert_eq!(code, Some(cms_server::cli::EXIT_ERROR.into()), "{stderr}");
    assert!(stderr.contains("the target store is not empty"), "{stderr}");

    let (code, stdout, stderr) = migrate(&url, &format!("sled:{}", copied.display()));
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("every count matches"), "{stdout}");

    let a: SharedStore = cms_server::store::open(&original.join("db")).unwrap();
    let b: SharedStore = cms_server::store::open(&copied.join("db")).unwrap();
    assert_eq!(
        cms_server::store::migrate::count(&*a).unwrap(),
        cms_server::store::migrate::count(&*b).unwrap()
    );
    assert_eq!(a.nodes().unwrap(), b.nodes().unwrap());
    assert_eq!(a.ca().unwrap(), b.ca().unwrap());
    assert_eq!(a.tokens().unwrap(), b.tokens().unwrap());
    assert_eq!(a.dashboard_tokens().unwrap(), b.dashboard_tokens().unwrap());
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("revoked dashboard tokens") && line.contains(" 1 ")),
        "{stdout}"
    );
    assert_eq!(a.audit(100).unwrap(), b.audit(100).unwrap());
    assert_eq!(a.settings().unwrap(), b.settings().unwrap());
    assert_eq!(a.certificates().unwrap(), b.certificates().unwrap());
    assert_eq!(
        a.all_reports(None, 2_000).unwrap(),
        b.all_reports(None, 2_000).unwrap()
    );
}

/// `cms-server serve --store postgres://…`: starts on the database, keeps
/// the CA there encrypted, answers `/healthz` 503 while the database is
/// down and 200 again once it is back; without a key file it refuses to
/// start, saying how to make one.
#[test]
fn serve_with_a_postgres_store_reports_the_database_in_healthz() {
    let binary = build_workspace_binary("cms-server", "cms-server").expect("build cms-server");
    let postgres = PostgresServer::start().expect("start postgres");
    let url = postgres.create_database().unwrap();
    let folder = tempfile::tempdir().unwrap();
    let key_file = folder.path().join("store.key");
    std::fs::write(&key_file, StoreKey::generate_text()).unwrap();
    // A shared store needs its roles in git (a plain folder is refused).
    let roles = GitRepo::copy_of(Path::new(EXAMPLE_REPOSITORY), &folder.path().join("roles"))
        .expect("the example roles in git");

    let refused = Command::new(&binary)
        .args(["serve", "--store", &url, "--repo"])
        .arg(roles.path())
        .arg("--data")
        .arg(folder.path().join("refused"))
        .env_remove("CMS_STORE_KEY_FILE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("cms-server store keygen"), "{stderr}");

    let key_arg = key_file.display().to_string();
    let server = ServerProcess::start(
        &binary,
        &folder.path().join("data"),
        roles.path(),
        &["--store", &url, "--store-key-file", &key_arg],
    )
    .expect("serve on postgres");
    let database = PostgresServer::database_of(&url);
    assert_eq!(
        postgres.sql(database, "SELECT count(*) FROM ca").unwrap(),
        "1"
    );
    assert_eq!(
        postgres
            .sql(
                database,
                "SELECT count(*) FROM operators WHERE name = 'admin'"
            )
            .unwrap(),
        "1"
    );

    postgres.stop().unwrap();
    let (status, body) = server.get("/healthz", &[]).unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot be reached"), "{body}");
    postgres.start_again().unwrap();
    let (status, body) = server.get("/healthz", &[]).unwrap();
    assert_eq!(status, 200, "{body}\n{}", server.log_text());
}

/// The dashboard's login asks the store whether a token is valid: while
/// the database cannot answer, a valid token is refused (401, never a
/// session) and the server logs why; once the database is back, the same
/// token signs in.
#[test]
fn a_dashboard_login_while_the_database_is_down_is_refused_with_a_warning_and_works_once_it_is_back()
 {
    let binary = build_workspace_binary("cms-server", "cms-server").expect("build cms-server");
    let postgres = PostgresServer::start().expect("start postgres");
    let url = postgres.create_database().unwrap();
    let folder = tempfile::tempdir().unwrap();
    let key_file = folder.path().join("store.key");
    std::fs::write(&key_file, StoreKey::generate_text()).unwrap();
    let roles = GitRepo::copy_of(Path::new(EXAMPLE_REPOSITORY), &folder.path().join("roles"))
        .expect("the example roles in git");
    let key_arg = key_file.display().to_string();
    let server = ServerProcess::start(
        &binary,
        &folder.path().join("data"),
        roles.path(),
        &["--store", &url, "--store-key-file", &key_arg, "--http-tls"],
    )
    .expect("serve on postgres");
    let token = server.dashboard_token().expect("a dashboard token");
    let login = |server: &ServerProcess| {
        server
            .post("/dashboard/login", &[], format!("token={token}").as_bytes())
            .unwrap()
            .0
    };
    assert_eq!(login(&server), 303, "{}", server.log_text());

    postgres.stop().unwrap();
    assert_eq!(login(&server), 401, "{}", server.log_text());
    assert!(
        server
            .log_text()
            .contains("Failed to read a dashboard token"),
        "{}",
        server.log_text()
    );
    postgres.start_again().unwrap();
    assert_eq!(login(&server), 303, "{}", server.log_text());
}
